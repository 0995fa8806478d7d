from .config import AEConfig
from .model import AE
from .pca import PCA

__all__ = ["AE", "PCA", "AEConfig"]
