"""Collecting posterior samples from a stochastic-gradient MCMC chain, and the loss such a chain needs.

`neg_log_posterior` turns the mean loss of a mini-batch into the full-data negative log posterior whose
gradient the samplers in `gradwise.optim.langevin` expect. `SampleCollector` keeps snapshots of the
parameters after a burn-in, every `thin` steps, in a memory budget fixed at construction.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

WHEN_FULL = ("thin", "latest")


def neg_log_posterior(
    batch_mean_loss: Tensor, dataset_size: int, neg_log_prior: Tensor | float = 0.0
) -> Tensor:
    """U = N * batch_mean_loss + neg_log_prior: the full-data negative log posterior, estimated.

    `batch_mean_loss` is the mean negative log likelihood of a mini-batch (what a training loop usually
    computes: `F.cross_entropy(...)`, or for a Gaussian likelihood of known noise sigma, the mean of
    (y - f(x))^2 / (2 sigma^2)); its expectation over random mini-batches times N is the full-data
    negative log likelihood. Note that `F.mse_loss` is the mean of (y - f(x))^2, without the
    1 / (2 sigma^2). `neg_log_prior` is -log p(theta) up to a constant, e.g. `gaussian_neg_log_prior`.
    """
    if isinstance(dataset_size, bool) or not isinstance(dataset_size, int) or dataset_size < 1:
        raise ValueError(f"dataset_size={dataset_size!r} is out of range: dataset_size must be an integer >= 1")
    return batch_mean_loss * dataset_size + neg_log_prior


def gaussian_neg_log_prior(params: Iterable[Tensor], std: float = 1.0) -> Tensor:
    """sum_i ||theta_i||^2 / (2 std^2): -log of an isotropic N(0, std^2) prior, up to a constant."""
    if not std > 0:
        raise ValueError(f"std={std!r} is out of range: std must be > 0")
    params = list(params)
    if not params:
        raise ValueError("gaussian_neg_log_prior got no parameters")
    total = params[0].square().sum()
    for p in params[1:]:
        total = total + p.square().sum()
    return total / (2.0 * std**2)


class SampleCollector:
    """Keeps parameter snapshots of a sampler's chain: after `burn_in` steps, one every `thin` steps.

    Call `step()` once after every sampler step. Memory is bounded: at most `max_samples` snapshots are
    stored, in buffers allocated at construction (max_samples times the size of the tracked
    parameters). When the buffers are full, `when_full` decides:
      "thin" (default): drop every other stored snapshot and double `thin`, so the kept samples stay
        evenly spaced over the whole chain after burn-in;
      "latest": a ring buffer of the most recent `max_samples` snapshots.
    Snapshots are copied with `copy_` into buffers on `device` (default: each parameter's own device);
    nothing reads a tensor value on the host, so collecting on the parameters' device never waits for
    the device, while device="cpu" for GPU parameters costs one transfer per stored snapshot.

    `params` is an `nn.Module` (its named parameters are tracked), a mapping from names to tensors, or
    an iterable of tensors (named "0", "1", ...). Iterating yields the stored snapshots in chain order,
    each a dict from names to tensors; `samples()` stacks them, `steps` tells the step each was taken
    at (counting sampler steps from 1).
    """

    def __init__(
        self,
        params: nn.Module | Mapping[str, Tensor] | Iterable[Tensor],
        *,
        burn_in: int = 0,
        thin: int = 1,
        max_samples: int = 1000,
        when_full: str = "thin",
        device: torch.device | str | None = None,
    ) -> None:
        for name, value, low in (("burn_in", burn_in, 0), ("thin", thin, 1), ("max_samples", max_samples, 2)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an integer >= {low}, got {value!r} ({type(value).__name__})")
            if value < low:
                raise ValueError(f"{name}={value!r} is out of range: {name} must be an integer >= {low}")
        if when_full not in WHEN_FULL:
            raise ValueError(f"when_full={when_full!r} is not accepted: when_full must be one of {WHEN_FULL}")
        self.tracked = _named_tensors(params)
        self.burn_in, self.thin, self.max_samples, self.when_full = burn_in, thin, max_samples, when_full
        self.buffers = {
            name: torch.empty((max_samples, *p.shape), dtype=p.dtype, device=p.device if device is None else device)
            for name, p in self.tracked.items()
        }
        self.count = 0  # sampler steps seen
        self.steps: list[int] = []  # the step of each stored snapshot, in chain order
        self._start = 0  # slot of the oldest snapshot ("latest" mode)

    def __len__(self) -> int:
        return len(self.steps)

    def step(self) -> bool:
        """Count one sampler step; store a snapshot if it is due. Returns whether one was stored."""
        self.count += 1
        after = self.count - self.burn_in
        if after <= 0 or after % self.thin:
            return False
        n = len(self.steps)
        if n == self.max_samples:  # only in "latest" mode: "thin" compacts as soon as the buffer fills
            slot = self._start
            self._start = (self._start + 1) % self.max_samples
            self.steps.pop(0)
        else:
            slot = n
        with torch.no_grad():
            for name, p in self.tracked.items():
                self.buffers[name][slot].copy_(p.detach())
        self.steps.append(self.count)
        if self.when_full == "thin" and len(self.steps) == self.max_samples:
            self._halve()
        return True

    def _halve(self) -> None:
        # keep the snapshots at (step - burn_in) divisible by 2 thin: slots 1, 3, 5, ...
        keep = list(range(1, self.max_samples, 2))
        index = torch.tensor(keep)
        for buffer in self.buffers.values():
            buffer[: len(keep)] = buffer.index_select(0, index.to(buffer.device))
        self.steps = [self.steps[i] for i in keep]
        self.thin *= 2

    def _order(self) -> list[int]:
        n = len(self.steps)
        return [(self._start + i) % self.max_samples for i in range(n)]

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        for slot in self._order():
            yield {name: buffer[slot] for name, buffer in self.buffers.items()}

    def samples(self) -> dict[str, Tensor]:
        """The stored snapshots stacked in chain order: name -> tensor of shape (len(self), *shape)."""
        index = self._order()
        if index == list(range(len(index))):
            return {name: buffer[: len(index)] for name, buffer in self.buffers.items()}
        order = torch.tensor(index)
        return {name: buffer.index_select(0, order.to(buffer.device)) for name, buffer in self.buffers.items()}

    def mean(self) -> dict[str, Tensor]:
        """The posterior mean estimated from the stored snapshots."""
        if not self.steps:
            raise RuntimeError("SampleCollector.mean: no sample stored yet (burn-in not over, or step() not called)")
        return {name: stacked.mean(0) for name, stacked in self.samples().items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "samples": {name: s.clone() for name, s in self.samples().items()},
            "steps": list(self.steps),
            "count": self.count,
            "thin": self.thin,
            "burn_in": self.burn_in,
            "max_samples": self.max_samples,
            "when_full": self.when_full,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        for key in ("burn_in", "max_samples", "when_full"):
            if state_dict[key] != getattr(self, key):
                raise ValueError(
                    f"SampleCollector.load_state_dict: saved {key}={state_dict[key]!r} differs from this "
                    f"collector's {key}={getattr(self, key)!r}"
                )
        if set(state_dict["samples"]) != set(self.buffers):
            raise ValueError(
                f"SampleCollector.load_state_dict: saved parameters {sorted(state_dict['samples'])} differ from "
                f"the tracked ones {sorted(self.buffers)}"
            )
        n = len(state_dict["steps"])
        for name, saved in state_dict["samples"].items():
            self.buffers[name][:n].copy_(saved)
        self.steps = list(state_dict["steps"])
        self.count = int(state_dict["count"])
        self.thin = int(state_dict["thin"])
        self._start = 0


def _named_tensors(params: nn.Module | Mapping[str, Tensor] | Iterable[Tensor]) -> dict[str, Tensor]:
    named: dict[str, Tensor]
    if isinstance(params, nn.Module):
        named = dict(params.named_parameters())
    elif isinstance(params, Mapping):
        named = dict(params)
    else:
        named = {str(i): p for i, p in enumerate(params)}
    if not named:
        raise ValueError("SampleCollector got no parameters to track")
    for name, p in named.items():
        if not isinstance(p, Tensor):
            raise TypeError(f"SampleCollector tracks tensors: {name!r} is a {type(p).__name__}")
    return named
