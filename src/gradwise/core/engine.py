"""The engine: a `torch.optim.Optimizer` that runs a chain of small gradient transforms on each parameter.

An optimizer subclass declares `defaults` (its hyper-parameters and their paper values), `ranges` (what
each accepts) and `chain(h)`, which turns one param group's hyper-parameters `h` into a tuple of
`Transform`s. The engine owns the rest: validation at construction, param groups, state allocation,
step counts, closures, `maximize`, the non-finite gradient policy and torch's `state_dict` format.

A transform sees the running update `u` (it starts as the gradient), the parameter `p`, the parameter's
state dict `s` and its step count `t` (1 on the first step), and returns the new `u`. Transforms that
accumulate statistics write them into `s` under a fixed name; the last transform of a chain writes the
parameter. `u` may be the caller's `p.grad`: a transform never modifies `u` in place.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable
from types import FunctionType, SimpleNamespace
from typing import Any, ClassVar, NamedTuple, Protocol

import torch
from torch import Tensor
from torch.optim import optimizer as _torch_optimizer
from torch.optim.optimizer import required

from .compiled import COMPILE_CHOICES, CompiledStep, backend_of
from .validation import Flag, OneOf, Range

State = dict[str, Any]
UpdateFn = Callable[[Tensor, Tensor, State, float], Tensor]
InitFn = Callable[[Tensor], dict[str, Tensor]]
CoefficientsFn = Callable[[float], tuple[Any, ...]]
KernelFn = Callable[[Tensor, Tensor, State, tuple[Any, ...]], Tensor]

NONFINITE_POLICIES = ("skip", "raise", "ignore")
_profiler_enabled: Callable[[], bool] = torch._C._autograd._profiler_enabled


def _no_state(p: Tensor) -> dict[str, Tensor]:
    return {}


class Transform(NamedTuple):
    """One idea of an optimizer: `init(p)` allocates its state, `update(u, p, s, t)` maps the update.

    `writes=True` marks the step: the transform that moves the parameter along the gradient-based update
    (weight decay and other writes that are not the step leave it False). Engine options that act on the
    step itself, such as the cautious mask, find it by this mark.

    The compiled engine needs each transform split in two (build it with `kernel_transform`):
    `coefficients(t) -> tuple` is the host part, run once per step, which turns the step count and the
    hyper-parameters into the numbers the update multiplies by (step sizes, bias corrections, 1 - beta);
    `kernel(u, p, s, c)` is the tensor part, which receives those numbers as `c`. `update` is then
    `kernel(u, p, s, coefficients(t))`, so eager and compiled run the same code: eager passes Python
    floats, compiled passes 0-dim tensors, so that a changing lr or step never recompiles. A kernel
    therefore captures no numbers (only state keys, flags and other kernels) and branches on a
    coefficient with `torch.where`, never with `if`. `elementwise=True` says the kernel treats every
    element on its own (no reduction over the tensor, no shape-dependent state), so that the compiled
    engine may run it over many parameters concatenated into one flat buffer. `segmented=True` says the
    same of a kernel whose only reductions over the tensor go through `gradwise.core.segments` (per
    parameter, also on a flat buffer); `segmented="rows"`, of one that also reduces over the rows of
    parameters of two or more dimensions (the segments' ROW_* tensors); `segmented="factored"`, of one that
    keeps factored state (Adafactor's row and column factors: the segments' FACTOR_* tensors).

    `direction(u, p, s, c)`, optional on a step (`writes=True`): a kernel that returns, before the step runs
    and from the same arguments, a tensor d with the sign of what the step subtracts (the step moves p by a
    positive multiple of -d: Adam's step, d = m; SGD's, d = u). The cautious mask reads the sign of d instead
    of the parameter's change; it is cheaper to compute (the mask's sum must be known before any parameter
    is written), and it is the authors' rule also where the change rounds away.

    `native`, optional on an elementwise transform: the same kernel as an op of the fused 8-bit C kernel
    (`gradwise.state.native.OPS`): (op name, the state keys it reads or writes...), its numbers in the order
    of `coefficients(t)`. A chain whose transforms all have one runs its compiled 8-bit step there.
    """

    update: UpdateFn
    init: InitFn = _no_state
    writes: bool = False
    coefficients: CoefficientsFn | None = None
    kernel: KernelFn | None = None
    elementwise: bool = False
    segmented: bool | str = False
    direction: KernelFn | None = None
    native: tuple[str, ...] | None = None


def no_coefficients(t: float) -> tuple[()]:
    return ()


def kernel_transform(
    kernel: KernelFn,
    coefficients: CoefficientsFn = no_coefficients,
    init: InitFn = _no_state,
    *,
    writes: bool = False,
    elementwise: bool = False,
    segmented: bool | str = False,
    direction: KernelFn | None = None,
    native: tuple[str, ...] | None = None,
) -> Transform:
    """A transform in the split form the compiled engine runs (see `Transform`); its eager `update` is
    `kernel(u, p, s, coefficients(t))`."""

    def update(u: Tensor, p: Tensor, s: State, t: float) -> Tensor:
        return kernel(u, p, s, coefficients(t))

    return Transform(update, init, writes, coefficients, kernel, elementwise, segmented, direction, native)


class Storage(Protocol):
    """How the state tensors of one param group are kept between steps (see `gradwise.state`).

    `init` converts freshly allocated state to the stored form; `open` returns the working state the
    transforms read and write (float tensors); `close` writes a working state back to the stored form.
    """

    def init(self, p: Tensor, state: State) -> None: ...

    def open(self, p: Tensor, state: State) -> State: ...

    def close(self, p: Tensor, state: State, work: State) -> None: ...


Work = list[tuple[dict[str, Any], list[Tensor]]]


class EngineOption(NamedTuple):
    """An option every ChainOptimizer accepts, contributed by a module above `core` (gradwise.transforms,
    gradwise.state) through `extend`, so that core never imports them.

    defaults/ranges: the per-group hyper-parameters it adds (validated like the optimizer's own).
    prepare(optimizer, work) -> context: once per step, after the non-finite check (e.g. a global norm).
    wrap(h, chain, context) -> chain: rewrites one group's chain (prepend a filter, mask the step, ...).
    storage(h) -> Storage | None: the state storage of a group, if this option decides it.
    """

    name: str
    defaults: dict[str, Any]
    ranges: dict[str, Range]
    prepare: Callable[[Any, Work], Any] | None = None
    wrap: Callable[[SimpleNamespace, tuple[Transform, ...], Any], tuple[Transform, ...]] | None = None
    storage: Callable[[SimpleNamespace], Storage | None] | None = None


_EXTENSIONS: dict[str, EngineOption] = {}


def extend(option: EngineOption) -> None:
    """Add an option to every ChainOptimizer (idempotent per name; the last registration wins)."""
    _EXTENSIONS[option.name] = option


def engine_options() -> list[EngineOption]:
    return list(_EXTENSIONS.values())


def zeros_state(*names: str) -> InitFn:
    """An `init` that allocates one zero tensor shaped like the parameter per name."""

    def init(p: Tensor) -> dict[str, Tensor]:
        return {name: torch.zeros_like(p, memory_format=torch.preserve_format) for name in names}

    return init


class _HyperSignature(type):
    """Gives each optimizer class the signature help() and IDEs show, built from its hyper-parameters and
    the engine options registered at the time it is asked for."""

    @property
    def __signature__(cls) -> inspect.Signature:
        return cls._signature()  # type: ignore[attr-defined]  # defined on ChainOptimizer, the one user


class ChainOptimizer(torch.optim.Optimizer, metaclass=_HyperSignature):
    """Base class of every gradwise optimizer: a chain of transforms run per parameter.

    Engine options shared by every optimizer:
      maximize (bool, per group): ascend the objective instead of descending it.
      nonfinite ("skip" | "raise" | "ignore", per optimizer): what a step does when any gradient holds
        NaN or infinity. The default, "skip", leaves every parameter and every state tensor untouched and
        counts the step in `skipped_steps`: one bad batch (an overflow in mixed precision, a division by
        zero in a loss) would otherwise write NaN into the moment estimates, from which Adam-like methods
        never recover. The check reads each gradient once more (one reduction per tensor, or per flat
        gradient buffer under compile, and one host synchronisation per step); "ignore" removes it and
        behaves as torch.optim does, "raise" stops with an error that names the parameter.
      compile (False | True | "inductor" | "aot_eager" | "eager", per optimizer, keyword-only, default False):
        run each param group's chain under torch.compile (True: the inductor backend), with the numbers
        that change every step passed as 0-dim tensors, so one graph serves every step; elementwise chains
        update each (group, dtype, device) bucket in one call over flat buffers that the parameters,
        gradients and state become views of (see `gradwise.core.compiled`). A chain that cannot be compiled
        runs eagerly, with a warning. A runtime choice: not saved in the state_dict.
    """

    defaults: dict[str, Any] = {}  # per class (read as cls.defaults); torch.optim also sets self.defaults
    ranges: ClassVar[dict[str, Range]] = {}
    engine_defaults: ClassVar[dict[str, Any]] = {"maximize": False}
    engine_ranges: ClassVar[dict[str, Range]] = {"maximize": Flag()}

    keyword_only: ClassVar[dict[str, Any]] = {"nonfinite": "skip", "compile": False}

    @classmethod
    def all_defaults(cls) -> dict[str, Any]:
        """Every per-group hyper-parameter with its default: the optimizer's, then the engine's options."""
        merged = {**cls.defaults, **cls.engine_defaults}
        for option in engine_options():
            merged.update(option.defaults)
        return merged

    @classmethod
    def all_ranges(cls) -> dict[str, Range]:
        merged = {**cls.ranges, **cls.engine_ranges}
        for option in engine_options():
            merged.update(option.ranges)
        return merged

    @classmethod
    def _signature(cls) -> inspect.Signature:
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        parameters = [inspect.Parameter("params", kind)]
        parameters += [inspect.Parameter(name, kind, default=value) for name, value in cls.all_defaults().items()]
        parameters += [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=value)
            for name, value in cls.keyword_only.items()
        ]
        return inspect.Signature(parameters)

    def __init__(
        self, params: Iterable[Any], *args: Any, nonfinite: str = "skip", compile: bool | str = False, **hyper: Any
    ) -> None:
        name = type(self).__name__
        accepted = type(self).all_defaults()
        if len(args) > len(accepted):
            raise TypeError(f"{name} takes at most {len(accepted)} positional hyper-parameters, got {len(args)}")
        for key, value in zip(accepted, args, strict=False):
            if key in hyper:
                raise TypeError(f"{name} got multiple values for argument {key!r}")
            hyper[key] = value
        unknown = [key for key in hyper if key not in accepted]
        if unknown:
            raise TypeError(unknown_argument_message(name, unknown[0], accepted))
        missing = [key for key, value in {**accepted, **hyper}.items() if value is required]
        if missing:
            raise TypeError(f"{name} needs a value for {missing[0]!r} (it has no default in the paper's code)")
        self.nonfinite = OneOf(NONFINITE_POLICIES).check("nonfinite", nonfinite)
        self.skipped_steps = 0
        self.compile = OneOf(COMPILE_CHOICES).check("compile", compile)
        backend = backend_of(self.compile)
        self._compiled = None if backend is None else CompiledStep(self, backend)
        self._state_layouts = {}
        super().__init__(params, {**accepted, **hyper})

    # -- what a subclass provides ------------------------------------------------------------------
    def chain(self, h: SimpleNamespace) -> tuple[Transform, ...]:
        """The transforms of one param group, given its hyper-parameters `h`."""
        raise NotImplementedError

    def prepare(self, work: list[tuple[dict[str, Any], list[Tensor]]]) -> None:
        """Compute values shared by all parameters of this step (e.g. a global gradient norm) before any
        chain runs; `work` lists each group with its parameters that have gradients. Default: nothing."""

    # -- param groups ------------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        where = f" (param group {len(self.param_groups) - 1})" if len(self.param_groups) > 1 else ""
        try:
            for index, p in enumerate(group["params"]):
                if not p.is_floating_point():
                    raise TypeError(
                        f"{type(self).__name__} optimizes floating-point tensors only: parameter {index}"
                        f"{where} has dtype {p.dtype}"
                    )
            for key, rng in type(self).all_ranges().items():
                group[key] = rng.check(key + where, group[key])
        except (TypeError, ValueError):
            self.param_groups.pop()
            raise

    # -- the step ----------------------------------------------------------------------------------
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter with a gradient; `closure` re-evaluates the model and returns the loss.

        torch.optim wraps each optimizer class's `step` to run the step hooks inside a profiler range; that
        wrapper costs 50-80 us a step (its record_function is two operator calls even when no profiler runs:
        a few percent of a compiled step over 1000 small tensors), so this one, marked `hooked` to keep torch
        from wrapping it, does the same itself and opens the profiler range only while a profiler is on. A
        subclass that overrides `step` is wrapped by torch as usual, and its call of this one runs no hooks."""
        if type(self).step is not ChainOptimizer.step:
            return self._chain_step(closure)
        pre = (*_torch_optimizer._global_optimizer_pre_hooks.values(), *self._optimizer_step_pre_hooks.values())
        post = (*self._optimizer_step_post_hooks.values(), *_torch_optimizer._global_optimizer_post_hooks.values())
        if not pre and not post and not _profiler_enabled():
            loss = self._chain_step(closure)
            self._optimizer_step_code()
            return loss
        with torch.autograd.profiler.record_function(f"Optimizer.step#{type(self).__name__}.step"):
            args: tuple[Any, ...] = (self,) if closure is None else (self, closure)
            kwargs: dict[str, Any] = {}
            for pre_hook in pre:  # as in torch.optim.Optimizer.profile_hook_step
                result = pre_hook(self, args, kwargs)
                if result is not None:
                    if not (isinstance(result, tuple) and len(result) == 2):
                        raise RuntimeError(f"{pre_hook} must return None or a tuple of (new_args, new_kwargs), "
                                           f"but got {result}.")
                    args, kwargs = result
            loss = self._chain_step(*args[1:], **kwargs)
            self._optimizer_step_code()
            for post_hook in post:
                post_hook(self, args, kwargs)
            return loss

    step.hooked = True  # type: ignore[attr-defined]  # read by torch.optim.Optimizer._patch_step_function

    @torch.no_grad()
    def _chain_step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        compiled = getattr(self, "_compiled", None)
        # compiled: the same list, without the per-parameter loop when nothing changed since the last step
        work = self._params_with_grad() if compiled is None else compiled.params_with_grad()
        check = self._gradients_finite if compiled is None else compiled.gradients_finite
        if self.nonfinite != "ignore" and not check(work):
            self.skipped_steps += 1
            return loss
        self.prepare(work)
        options = engine_options()
        contexts = [option.prepare(self, work) if option.prepare else None for option in options]
        for gi, (group, params) in enumerate(work):
            if not params:
                continue
            h = hyper_parameters(group)
            chain = self.chain(h)
            storage = None
            for option, context in zip(options, contexts, strict=True):
                if option.wrap is not None:
                    chain = option.wrap(h, chain, context)
                if storage is None and option.storage is not None:
                    storage = option.storage(h)
            known = self._state_layouts.get(gi)
            if known is None or known[0] is not group or known[3] or not _same_values(known[1], h.__dict__):
                if known is not None and known[0] is group and not known[3] and _rescaled(known[1], h.__dict__):
                    self._state_layouts[gi] = (group, h.__dict__, known[2], known[3])  # an lr schedule's step
                else:
                    self._grow_state(gi, group, h.__dict__, chain, storage)
            if compiled is not None:  # returns what it could not compile, for the eager loop below
                params = compiled.run_group(gi, params, h, chain, storage, work)
            for p in params:
                state = self.state[p]
                if "step" not in state:
                    self._init_state(p, state, chain)
                    if storage is not None:
                        storage.init(p, state)
                state["step"] += 1
                t = float(state["step"])
                s = state if storage is None else storage.open(p, state)
                u = -p.grad if h.maximize else p.grad
                for transform in chain:
                    u = transform.update(u, p, s, t)
                if storage is not None:
                    storage.close(p, state, s)
        return loss

    def _init_state(self, p: Tensor, state: State, chain: tuple[Transform, ...]) -> None:
        state["step"] = torch.tensor(0.0, dtype=torch.float32)
        for transform in chain:
            state.update(transform.init(p))

    # per param group index, at its last check: the group, its hyper-parameters, its chain's init structure and
    # the parameters whose state still lacks keys of that structure (they had no gradient then)
    _state_layouts: dict[int, tuple[dict[str, Any], dict[str, Any], tuple[Any, ...], list[Tensor]]]

    def _grow_state(
        self, gi: int, group: dict[str, Any], values: dict[str, Any], chain: tuple[Transform, ...],
        storage: Storage | None,
    ) -> None:
        """A group whose hyper-parameters changed (or that is checked for the first time, or after
        load_state_dict) may now run a chain that reads state its parameters lack: SGD whose momentum is raised
        from 0, AdamW with amsgrad switched on, an engine option that adds a transform. When the structure of the
        chain's inits changed too, each parameter of the group that has state gets the keys it lacks, as the
        transforms' `init` makes them (a storage converts them with its `init`, as at a first step); keys
        present keep their values. A parameter without a gradient now gets them at its next step with one
        (an init may read the gradient). The compiled step then gathers its flat layouts again.

        Assumes the chain's init structure is a function of the group's hyper-parameters (and the class); a
        subclass whose chain depends on anything else clears `_state_layouts` when that changes."""
        structure = _init_structure(chain)
        known = self._state_layouts.get(gi)
        if known is not None and known[0] is group and known[2] == structure:
            candidates = known[3]
        else:
            candidates = group["params"]
        pending: list[Tensor] = []
        added = False
        for p in candidates:
            state = self.state.get(p)
            if not state or "step" not in state:  # allocated whole at its first step
                continue
            if p.grad is None:
                pending.append(p)
                continue
            fresh: State = {}
            for transform in chain:
                fresh.update(transform.init(p))
            fresh = {key: value for key, value in fresh.items() if key not in state}
            if not fresh:
                continue
            if storage is not None:
                storage.init(p, fresh)  # converts these keys only: the others are in stored form already
            # a new dict: every compiled layout that holds the old one (the 8-bit path's too) gathers it again
            self.state[p] = {**state, **fresh}
            added = True
        self._state_layouts[gi] = (group, values, structure, pending)
        compiled = getattr(self, "_compiled", None)
        if added and compiled is not None:
            compiled.invalidate()  # its flat layouts hold the state gathered without the new keys

    def _params_with_grad(self) -> list[tuple[dict[str, Any], list[Tensor]]]:
        work = []
        for gi, group in enumerate(self.param_groups):
            params = []
            for pi, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(
                        f"{type(self).__name__} does not support sparse gradients (parameter {pi} of param "
                        f"group {gi}); use torch.optim.SparseAdam for sparse embeddings"
                    )
                params.append(p)
            work.append((group, params))
        return work

    def _gradients_finite(self, work: list[tuple[dict[str, Any], list[Tensor]]]) -> bool:
        grads = [p.grad for _, params in work for p in params if p.grad is not None and p.grad.numel() > 0]
        if not grads:
            return True
        device = grads[0].device
        # min and max of each gradient in one pass: both finite exactly when every element is finite
        # (a NaN propagates into both); cheaper than a norm, which squares or takes abs first.
        peaks = torch.stack([torch.stack(torch.aminmax(g)).to(device=device, dtype=torch.float32) for g in grads])
        finite = torch.isfinite(peaks)
        if bool(finite.all()):
            return True
        if self.nonfinite == "raise":
            bad = grads[int((~finite.all(dim=1)).nonzero()[0])]
            for gi, (group, _) in enumerate(work):
                for pi, p in enumerate(group["params"]):
                    if p.grad is bad:
                        raise FloatingPointError(
                            f"{type(self).__name__}: non-finite gradient in parameter {pi} of param group "
                            f"{gi} (shape {tuple(p.shape)}); nonfinite='raise'. Use nonfinite='skip' to skip "
                            f"such steps"
                        )
        return False

    # -- saving and loading ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["gradwise"] = {"skipped_steps": self.skipped_steps}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        # torch casts floating state to the parameter's dtype and lets loaded tensors alias the caller's
        # dict; gradwise keeps every tensor exactly as saved (dtype and bits) in memory of its own.
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, p in zip(saved_ids, params, strict=True):
            saved = state_dict["state"].get(saved_id)
            if saved is not None:
                self.state[p] = {k: _own_copy(v, p.device, k) for k, v in saved.items()}
        self.skipped_steps = int(state_dict.get("gradwise", {}).get("skipped_steps", 0))
        self._state_layouts = {}  # the checkpoint may come from a run whose chains kept other state
        compiled = getattr(self, "_compiled", None)
        if compiled is not None:
            compiled.invalidate()  # the loaded state is not in the flat buffers: gather again
        # a checkpoint written before an engine option existed lacks its key: the option's default applies
        for group in self.param_groups:
            for key, value in type(self).all_defaults().items():
                group.setdefault(key, value)


def _own_copy(value: Any, device: torch.device, key: str) -> Any:
    if not isinstance(value, Tensor):
        return value
    if key == "step":  # stays on the host, as in torch.optim
        return value.detach().clone()
    return value.detach().to(device=device, copy=True)


def _same_values(last: dict[str, Any], values: dict[str, Any]) -> bool:
    """Whether a group's hyper-parameters are those of the last check: one dict comparison, by identity first
    (values are the group's own objects); a tensor that compares ambiguously counts as a change."""
    try:
        return last == values
    except (RuntimeError, TypeError, ValueError):
        return False


def _rescaled(last: dict[str, Any], values: dict[str, Any]) -> bool:
    """Whether the only hyper-parameters that changed since the last check are numbers that were and are non-zero
    (what an lr or momentum schedule does at each step): such a change keeps the chain's init structure, which
    hyper-parameters decide by switches (flags, None, a rate of 0), so the state cannot lack keys."""
    if last.keys() != values.keys():
        return False
    for key, value in values.items():
        old = last[key]
        if old is value:
            continue
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v != 0 for v in (old, value)):
            return False
    return True


def _init_structure(chain: tuple[Transform, ...]) -> tuple[Any, ...]:
    """What decides the state keys a chain's inits allocate: each init's code and what it captures (key
    names, flags, the inits of the transforms a wrapper holds), recursively; other objects by identity.
    Not `gradwise.core.compiled.chain_signature`: that keys the kernels, not the inits, and refuses a
    captured object it cannot describe, where this falls back to the object's identity."""
    return tuple(_structure_of(transform.init) for transform in chain)


def _structure_of(value: Any) -> Any:
    if isinstance(value, FunctionType):
        cells = value.__closure__
        if not cells:
            return value.__code__
        contents = []
        for cell in cells:
            try:
                contents.append(_structure_of(cell.cell_contents))
            except ValueError:  # an empty cell
                contents.append(None)
        return (value.__code__, tuple(contents))
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Transform):
        return _structure_of(value.init)
    if isinstance(value, (tuple, list)):
        return tuple(map(_structure_of, value))
    return (type(value), id(value))


def hyper_parameters(group: dict[str, Any]) -> SimpleNamespace:
    """A param group's hyper-parameters as attributes (`h.lr`), without its parameters."""
    return SimpleNamespace(**{k: v for k, v in group.items() if k != "params"})


def unknown_argument_message(owner: str, key: str, accepted: Iterable[str]) -> str:
    accepted = list(accepted)
    close = difflib.get_close_matches(key, accepted, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"{owner} got an unknown hyper-parameter {key!r}.{hint} Accepted: {', '.join(accepted)}"


def bias_correction(beta: float, t: float) -> float:
    """1 - beta^t: the factor that un-biases an EMA started at zero after t steps."""
    return 1.0 - beta**t
