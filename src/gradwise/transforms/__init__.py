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
from .belief import belief_second_moment, rectified_step
from .bounds import bounded_adam_step, dynamic_bounds
from .decay import proximal_weight_decay, scale_by, weight_decay
from .factored import clip_by_rms, factored_second_moment, relative_step_size
from .friction import diff_friction
from .moments import adam_direction, first_moment, running_max, second_moment
from .momentum import heavy_ball
from .nesterov import nesterov_adaptive_step, nesterov_gradient
from .noise import langevin_step, preconditioned_langevin_step, sghmc_friction
from .projection import radial_projection
from .sign import sign_momentum
from .steps import adam_step, bias_corrected_step, folded_adam_step, sgd_step

__all__ = [
    "adam_direction", "adam_step", "belief_second_moment", "bias_corrected_step", "bounded_adam_step",
    "clip_by_rms", "diff_friction", "dynamic_bounds", "factored_second_moment", "first_moment", "folded_adam_step",
    "heavy_ball", "langevin_step", "nesterov_adaptive_step", "nesterov_gradient", "preconditioned_langevin_step",
    "proximal_weight_decay", "radial_projection", "rectified_step", "relative_step_size", "running_max",
    "scale_by", "second_moment", "sgd_step", "sghmc_friction", "sign_momentum", "weight_decay",
]
