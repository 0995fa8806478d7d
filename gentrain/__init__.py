"""gentrain: train and evaluate image generative models (Glow, VAE) in PyTorch."""

__version__ = "0.1.0"
