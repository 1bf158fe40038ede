"""Domain knowledge -> neuron importance maps."""
