"""The vocabulary of gradient transforms: one small function per idea, each returning a `Transform`."""

from .decay import weight_decay
from .moments import first_moment, running_max, second_moment
from .steps import adam_step, sgd_step

__all__ = ["adam_step", "first_moment", "running_max", "second_moment", "sgd_step", "weight_decay"]
