"""Datasets: loaders of native on-disk formats, the synthetic benchmark, and the GZSL split tables."""
