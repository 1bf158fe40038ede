"""Injection of unseen-class classifier rows (NIWT)."""
