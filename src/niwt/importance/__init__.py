"""Neuron-importance capture (hooks) and pooling."""
