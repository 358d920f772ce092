"""latentserve models: PyTorch modules, data, training and evaluation (no web code)."""
