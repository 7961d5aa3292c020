"""AdamW: the baseline chain, equal to torch.optim.AdamW."""

from __future__ import annotations

from types import SimpleNamespace

from ..core import Betas, ChainOptimizer, Flag, NonNegative, register
from ..transforms import adam_step, first_moment, running_max, second_moment, weight_decay


@register("adamw", paper="Loshchilov & Hutter, Decoupled Weight Decay Regularization", year=2019,
          oracle="torch.optim.AdamW")
class AdamW(ChainOptimizer):
    """AdamW: Adam with weight decay decoupled from the gradient-based update.

    p <- p (1 - lr wd);  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
    p <- p - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    With amsgrad=True, v is replaced by its running maximum (Reddi et al., 2018).

    Defaults: torch.optim.AdamW (lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01), whose
    results this class reproduces bit for bit on the CPU.
    Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019, arXiv:1711.05101.
    """

    defaults = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False)
    ranges = dict(lr=NonNegative, betas=Betas(2), eps=NonNegative, weight_decay=NonNegative, amsgrad=Flag())

    decoupled_decay = True  # False: the L2 penalty of Adam (gradwise.optim.variants.Adam)

    def chain(self, h: SimpleNamespace):
        beta1, beta2 = h.betas
        second = "max_exp_avg_sq" if h.amsgrad else "exp_avg_sq"
        return (
            weight_decay(h.lr, h.weight_decay, decoupled=self.decoupled_decay),
            first_moment(beta1),
            second_moment(beta2),
            *((running_max(),) if h.amsgrad else ()),
            adam_step(h.lr, beta1, beta2, h.eps, second=second),
        )
