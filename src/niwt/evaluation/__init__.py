"""Generalized zero-shot evaluation: metrics (S, U, H, AUSUC, calibrated stacking), scoring of injected
classifiers, comparison tables and plots. Pure NumPy/PyTorch/matplotlib."""
