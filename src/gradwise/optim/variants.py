"""Named variants: published configurations of the optimizers above, each a class a user can pick by name.

Each is a subclass that changes defaults (a flag switched on, momentum coefficients fixed) or, for Adam
and SGDW, the form of weight decay. Everything not stated in a class's docstring is its base class's.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from ..core import Transform, register
from ..transforms.decay import weight_decay
from ..transforms.momentum import heavy_ball
from ..transforms.steps import sgd_step
from .adamw import AdamW
from .ademamix import AdEMAMix
from .adopt import ADOPT
from .lion import Lion
from .sgd import SGD

CAUTIOUS_PAPER = "Liang, Chen, Liu & Liu, Cautious Optimizers: Improving Training with One Line of Code"
CAUTIOUS_TEST = "tests/optim/test_variants.py"


class _CautiousByDefault:
    """Makes cautious=True the default. `cautious` is an engine option, not one of the optimizer's own
    hyper-parameters, and the engine's option defaults come after a class's `defaults`: so the class
    overrides the merged defaults instead."""

    @classmethod
    def all_defaults(cls) -> dict[str, Any]:
        return {**super().all_defaults(), "cautious": True}  # type: ignore[misc]


@register("cadamw", paper=CAUTIOUS_PAPER, year=2024,
          oracle=f"reference C-AdamW written from the authors' code ({CAUTIOUS_TEST})")
class CAdamW(_CautiousByDefault, AdamW):
    """C-AdamW: AdamW whose step is masked where it disagrees in sign with the gradient (cautious=True).

    d = m_hat / (sqrt(v_hat) + eps);  phi = 1[d g > 0];  p <- p (1 - lr wd);  p <- p - lr d phi numel / (sum(phi) + 1)
    The weight decay is not masked. cautious="mean" gives the mean-normalised mask of timm's `caution` flag.
    Defaults: AdamW's (torch.optim.AdamW) with cautious=True, the configuration of the paper's C-AdamW.
    Liang, Chen, Liu & Liu, "Cautious Optimizers: Improving Training with One Line of Code", 2024,
    arXiv:2411.16085.
    """


@register("clion", paper=CAUTIOUS_PAPER, year=2024,
          oracle=f"reference C-Lion written from the paper's Algorithm 2 and the cautious rule ({CAUTIOUS_TEST})")
class CLion(_CautiousByDefault, Lion):
    """C-Lion: Lion whose sign step is masked where it disagrees with the gradient (cautious=True).

    p <- p (1 - lr wd);  d = sign(b1 m + (1 - b1) g);  phi = 1[d g > 0];  p <- p - lr d phi numel / (sum(phi) + 1);
    m <- b2 m + (1 - b2) g
    Defaults: Lion's (lr=1e-4, betas=(0.9, 0.99), weight_decay=0) with cautious=True, the paper's C-Lion.
    Liang, Chen, Liu & Liu, 2024, arXiv:2411.16085; Lion: Chen et al., 2023, arXiv:2302.06675.
    """


@register("cadopt", paper=CAUTIOUS_PAPER, year=2024, oracle=f"gradwise ADOPT with cautious=True ({CAUTIOUS_TEST})")
class CADOPT(_CautiousByDefault, ADOPT):
    """C-ADOPT: ADOPT whose momentum step is masked where it disagrees with the gradient (cautious=True).

    The cautious rule of Liang et al. (2024) applied to ADOPT's step p <- p - lr m (ADOPT's coupled weight
    decay enters g, and so the mask's gradient, as in the base class). The name and configuration are
    those of timm's `cadopt` (timm masks with the mean-normalised rule: cautious="mean").
    Defaults: ADOPT's with cautious=True. Liang, Chen, Liu & Liu, 2024, arXiv:2411.16085; ADOPT:
    Taniguchi et al., NeurIPS 2024, arXiv:2411.02853.
    """


@register("cademamix", paper=CAUTIOUS_PAPER, year=2024,
          oracle=f"gradwise AdEMAMix with cautious=True ({CAUTIOUS_TEST})")
class CAdEMAMix(_CautiousByDefault, AdEMAMix):
    """C-AdEMAMix: AdEMAMix whose step is masked where it disagrees with the gradient (cautious=True).

    The cautious rule of Liang et al. (2024) applied to AdEMAMix's step. AdEMAMix adds its weight decay
    inside the step (as its authors' code does), so with weight_decay > 0 the mask covers the decay too.
    Defaults: AdEMAMix's with cautious=True. Liang, Chen, Liu & Liu, 2024, arXiv:2411.16085; AdEMAMix:
    Pagliardini, Ablin & Grangier, 2024, arXiv:2409.03137.
    """


@register("amsgrad", paper="Reddi, Kale & Kumar, On the Convergence of Adam and Beyond", year=2018,
          oracle="torch.optim.AdamW(amsgrad=True)")
class AMSGrad(AdamW):
    """AMSGrad: AdamW dividing by the running maximum of the second moment (amsgrad=True).

    v_max <- max(v_max, v);  p <- p (1 - lr wd);  p <- p - lr (m / (1 - b1^t)) / (sqrt(v_max / (1 - b2^t)) + eps)
    The step size never grows back, which restores Adam's convergence on the paper's counter-examples.
    Defaults: torch.optim.AdamW's (decoupled weight decay 0.01) with amsgrad=True, bit for bit its results;
    for the paper's coupled form use `Adam(..., amsgrad=True)`.
    Reddi, Kale & Kumar, "On the Convergence of Adam and Beyond", ICLR 2018, arXiv:1904.09237.
    """

    defaults = {**AdamW.defaults, "amsgrad": True}


@register("adam", paper="Kingma & Ba, Adam: A Method for Stochastic Optimization", year=2015,
          oracle="torch.optim.Adam")
class Adam(AdamW):
    """Adam with coupled (L2) weight decay: the gradient carries wd p, which then enters both moments.

    g <- g + wd p;  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
    p <- p - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    amsgrad=True divides by the running maximum of v (Reddi et al., 2018).
    Defaults: torch.optim.Adam (lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False),
    whose results this class reproduces bit for bit on the CPU.
    Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, arXiv:1412.6980.
    """

    defaults = {**AdamW.defaults, "weight_decay": 0.0}
    decoupled_decay = False


@register("nag", paper="Sutskever, Martens, Dahl & Hinton, On the importance of initialization and momentum in "
          "deep learning", year=2013, oracle="torch.optim.SGD(momentum=0.9, nesterov=True)")
class NAG(SGD):
    """NAG: SGD with Nesterov's accelerated momentum, in the form of Sutskever et al. (torch.optim.SGD's).

    b <- momentum b + g (b_1 = g);  p <- p - lr (g + momentum b)
    Defaults: SGD's (torch.optim.SGD) with momentum=0.9 and nesterov=True; momentum must stay > 0 and
    dampening 0. Sutskever, Martens, Dahl & Hinton, "On the importance of initialization and momentum in
    deep learning", ICML 2013; Nesterov, 1983.
    """

    defaults = {**SGD.defaults, "momentum": 0.9, "nesterov": True}


@register("sgdw", paper="Loshchilov & Hutter, Decoupled Weight Decay Regularization", year=2019,
          oracle="reference: decay p by (1 - lr wd), then torch.optim.SGD without decay (tests/optim/test_variants.py)")
class SGDW(SGD):
    """SGDW: SGD with momentum whose weight decay is decoupled from the gradient, as AdamW's.

    p <- p (1 - lr wd);  b <- momentum b + (1 - dampening) g (b_1 = g);  p <- p - lr b (or Nesterov's form)
    The decay neither enters the momentum buffer nor is scaled by it. As in gradwise's AdamW (and
    torch.optim.AdamW), the decay is multiplied by lr; the paper multiplies it by the schedule multiplier
    only, which is the same when lr's schedule is the multiplier times a constant folded into wd.
    Defaults: SGD's (torch.optim.SGD); only the form of the decay differs.
    Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019, arXiv:1711.05101, Algorithm 1.
    """

    def chain(self, h: SimpleNamespace) -> tuple[Transform, ...]:
        momentum = (heavy_ball(h.momentum, h.dampening, h.nesterov, dampen_first_step=False),) if h.momentum else ()
        return (
            weight_decay(h.lr, h.weight_decay, decoupled=True),
            *momentum,
            sgd_step(h.lr),
        )


_SIGN_PAPER = "Bernstein, Wang, Azizzadenesheli & Anandkumar, signSGD: Compressed Optimisation for Non-Convex Problems"
_SIGN_ORACLE = "reference written from the paper's Algorithms 1 and 3 (tests/optim/test_variants.py)"


@register("signsgd", paper=_SIGN_PAPER, year=2018, oracle=_SIGN_ORACLE)
class SignSGD(Lion):
    """signSGD: every coordinate moves by lr against the sign of its gradient.

    p <- p (1 - lr wd);  p <- p - lr sign(g)      (Lion with betas=(0, 0))
    Defaults: Lion's lr=1e-4 (a sign method's step is lr per coordinate) and weight_decay=0, with betas=(0, 0).
    Bernstein, Wang, Azizzadenesheli & Anandkumar, "signSGD: Compressed Optimisation for Non-Convex
    Problems", ICML 2018, arXiv:1802.04434, Algorithm 1.
    """

    defaults = {**Lion.defaults, "betas": (0.0, 0.0)}


@register("signum", paper=_SIGN_PAPER, year=2018, oracle=_SIGN_ORACLE)
class Signum(Lion):
    """Signum: signSGD with momentum, the sign of an exponential moving average of the gradient.

    m <- b m + (1 - b) g;  p <- p (1 - lr wd);  p <- p - lr sign(m)     (Lion with betas=(b, b))
    Lion with beta1 = beta2 interpolates with the same coefficient it tracks with, so its direction is
    the sign of the updated momentum: Signum. Weight decay is decoupled (Lion's form; the paper's MXNet
    code adds wd p to the gradient instead; the two agree at the default weight_decay=0).
    Defaults: betas=(0.9, 0.9), the paper's momentum 0.9; Lion's lr=1e-4 and weight_decay=0.
    Bernstein, Wang, Azizzadenesheli & Anandkumar, ICML 2018, arXiv:1802.04434, Algorithm 3.
    """

    defaults = {**Lion.defaults, "betas": (0.9, 0.9)}
