"""Model variants (one file each) behind one interface (``base.py``) and a registry."""

from .base import LatentVariableModel
from .hvae import HVAE
from .registry import MODELS, build_model, register_model
from .vae import VAE

__all__ = ["HVAE", "MODELS", "VAE", "LatentVariableModel", "build_model", "register_model"]
