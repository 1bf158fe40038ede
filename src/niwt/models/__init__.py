"""Backbones, classifier surgery and self-describing checkpoints."""
