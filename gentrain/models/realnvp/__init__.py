from .config import RealNVPConfig
from .model import RealNVP

__all__ = ["RealNVP", "RealNVPConfig"]
