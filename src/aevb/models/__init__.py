"""Model variants (one file each) behind one interface (``base.py``) and a registry."""

from .base import Chart, LatentVariableModel
from .cvae import CVAE
from .gumbel import GumbelVAE
from .hvae import HVAE
from .registry import MODELS, build_model, register_model
from .vae import VAE
from .vqvae import VQVAE

__all__ = [
    "CVAE",
    "HVAE",
    "MODELS",
    "VAE",
    "VQVAE",
    "Chart",
    "GumbelVAE",
    "LatentVariableModel",
    "build_model",
    "register_model",
]
