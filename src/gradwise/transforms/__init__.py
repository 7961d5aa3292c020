"""The vocabulary of gradient transforms: one small function per idea, each returning a `Transform`.

Importing this package also registers the engine options every optimizer accepts, in the order that
makes their chain clip first, then filter (Grokfast), then mask the step (cautious): each option's wrap
prepends to the chain, so the last registered runs first.
"""

# isort: off
# registration order is application order, innermost first: cautious, then grokfast, then clipping
from . import cautious as _cautious  # noqa: F401
from . import grokfast as _grokfast  # noqa: F401
from . import clipping as _clipping  # noqa: F401
# isort: on
from .decay import weight_decay
from .moments import first_moment, running_max, second_moment
from .steps import adam_step, sgd_step

__all__ = ["adam_step", "first_moment", "running_max", "second_moment", "sgd_step", "weight_decay"]
