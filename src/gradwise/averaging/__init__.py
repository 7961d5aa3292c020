"""Weight averaging on top of torch.optim.swa_utils.AveragedModel: EMA, Switch EMA, LAWA and SWA.

Each averager is an `AveragedModel` (evaluate it by calling it, or load it into the model with
`copy_to`), is updated with `update(model)` after every optimizer step without any host-device
synchronisation, accepts `torch.compile`d models, and round-trips through `state_dict`.
"""

from .base import WeightAverager
from .ema import EMA, SwitchEMA
from .lawa import LAWA
from .swa import SWA, SWALR, update_bn

__all__ = ["EMA", "LAWA", "SWA", "SWALR", "SwitchEMA", "WeightAverager", "update_bn"]
