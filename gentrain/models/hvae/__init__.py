from .config import HVAEConfig
from .model import HVAE

__all__ = ["HVAE", "HVAEConfig"]
