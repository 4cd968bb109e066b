"""Model variants (one file each) behind one interface (``base.py``) and a registry."""

from .base import LatentVariableModel
from .cvae import CVAE
from .hvae import HVAE
from .registry import MODELS, build_model, register_model
from .vae import VAE

__all__ = ["CVAE", "HVAE", "MODELS", "VAE", "LatentVariableModel", "build_model", "register_model"]
