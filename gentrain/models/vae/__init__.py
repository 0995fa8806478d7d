from .config import VAEConfig
from .model import VAE, means_to_uint8

__all__ = ["VAE", "VAEConfig", "means_to_uint8"]
