from .config import GlowConfig
from .model import Glow

__all__ = ["Glow", "GlowConfig"]
