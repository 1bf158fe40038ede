"""Explanations of a (zero-shot) prediction: visual (Grad-CAM), textual (importance -> attributes),
and neuron names (which attributes each neuron of the importance layer stands for).

Pure PyTorch/NumPy/matplotlib; no MLflow, DVC or Prefect here (the ``explain`` stage and
``niwt.integration.registry`` do the I/O and tracking).
"""
