"""Model variants (one file each) and the registry that builds them from a ModelConfig."""

from .registry import MODELS, build_model, register_model
from .vae import VAE

__all__ = ["MODELS", "VAE", "build_model", "register_model"]
