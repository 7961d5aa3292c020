"""gradwise: PyTorch optimizers that read their gradients, composable and proven against their papers."""

__version__ = "0.1.0"

from . import averaging, core, optim, sampling, state, transforms  # noqa: E402
from .core import ChainOptimizer, Transform, available, create, entries, get, register  # noqa: E402
from .optim import *  # noqa: E402,F401,F403
from .optim import __all__ as _optimizers  # noqa: E402
from .param_groups import layer_depths, layerwise_lr_decay, lr_multipliers, no_decay_with_embeddings  # noqa: E402

__all__ = [
    "ChainOptimizer", "Transform", "available", "averaging", "core", "create", "entries", "get", "optim", "register",
    "sampling", "state",
    "transforms", *_optimizers,
    "layer_depths", "layerwise_lr_decay", "lr_multipliers", "no_decay_with_embeddings",
]
