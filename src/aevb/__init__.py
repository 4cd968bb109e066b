"""aevb — Auto-Encoding Variational Bayes: train, evaluate and use VAEs with PyTorch."""

from .checkpoint import load_model as load
from .config import DataConfig, ModelConfig, RunConfig, TrainConfig
from .data import Dataset, DatasetInfo, from_tensor, from_torch_dataset, load_dataset
from .errors import AevbError, CheckpointError, ConfigError, DataError
from .evaluate import evaluate, evaluate_elbo, markdown_report
from .models import VAE, build_model
from .objectives import VAEOutput
from .train import TrainResult, resume, train

__version__ = "0.1.0"

__all__ = [
    "AevbError",
    "CheckpointError",
    "ConfigError",
    "DataConfig",
    "DataError",
    "Dataset",
    "DatasetInfo",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "TrainResult",
    "VAE",
    "VAEOutput",
    "__version__",
    "build_model",
    "evaluate",
    "evaluate_elbo",
    "from_tensor",
    "from_torch_dataset",
    "load",
    "load_dataset",
    "markdown_report",
    "resume",
    "train",
]
