"""The compiled step (`compile=True` on any ChainOptimizer): each param group's chain of kernels under torch.compile.

Eager is the reference; this module runs the same kernels (see `Transform`) with the per-step numbers as
0-dim tensors, so that one graph serves every step whatever the lr schedule does:

- Coefficients: each transform's `coefficients(t)` runs on the host; its numbers are written with `fill_`
  into preallocated 0-dim tensors (float64 for float64 parameters, float32 otherwise) passed as arguments;
  the flat path packs them instead into one tensor of numbers and one of flags (`PackedCoefficients`), which
  the graph indexes: two inputs for dynamo to guard and two array writes per step, whatever the chain.
  A changing Python float never reaches a graph (it would recompile, or, with torch's FX graph cache,
  silently reuse the first value: benchmarks/README.md, compile_study part d).
- Cache: one compiled function per (param group, dtype, device, path), keyed by the chain's structure:
  each kernel's code plus the contents of its closure, recursively. A kernel that captures a number puts it
  in the key, so a change of that number compiles again (and after MAX_SIGNATURES, the group runs eagerly).
- Flat path, when every transform is elementwise or segmented (its reductions per parameter go through
  `gradwise.core.segments`, which the flat call's state dict tells where each parameter lies: the cautious
  mask, AdamP's projection), the group keeps plain state (no `state_bits`/`state_dtype`),
  and the parameters of a (group, dtype, device) bucket that have a gradient this step are contiguous and
  share one step count: those parameters, their gradients and their state become views of one flat buffer
  each (`p.data`, `p.grad` and `state[p][key]` are re-pointed), and one compiled call updates the bucket.
  State of one number per parameter (0-dim: AdaGrad-Norm's b^2, SGD-SaI's gsnr) is one column per key,
  each `state[p][key]` a 0-dim view of its row; a segmented chain reads it per element with
  `gradwise.core.segments.segment_value` (a chain that is not segmented keeps such a bucket per parameter).
  Factored state (Adafactor's row and column factors of matrices, `segmented="factored"`) is two buffers, one
  of every matrix's rows and one of every matrix's columns and every vector's full second moment, each state
  entry a view of its region (`gradwise.core.segments.factor_layout`).
  When the set of parameters with a gradient changes, the buffers are gathered again (the old ones live on
  while a parameter still views them); step counts that drift apart send the bucket to the next path.
  `state_dict` still hands out one tensor per parameter in torch's format. Every step checks, by identity
  and data pointer, that the views are still in place (`load_state_dict`, `model.to`,
  `zero_grad(set_to_none=True)` replace them); a gradient that is not the view is copied in and the view
  attached as `p.grad`, so that backward accumulates straight into the flat buffer from then on (with
  `zero_grad(set_to_none=False)`). When the gradients are those very views, the step's fingerprint
  (`_Fingerprint`: the groups, parameters, gradient objects, and the state's keys and dicts, of the last step)
  replaces the engine's per-parameter scan and the bucketing: its checks are map() calls over precomputed
  lists, in C: a pass over the parameters for their gradients, one for their data pointers, two over the
  state (keys, dicts) and one per state key for the views. Their cost is memory latency more than Python:
  with cold caches (1000 x 1k after a 384 MB triad) they take 0.7-1 ms, of which `p.grad` (five dependent
  loads per parameter: the tensor, its TensorImpl, autograd meta, the gradient's TensorImpl and its Python
  object) is about 0.45 ms.
- Per-parameter path otherwise: one function compiled with dynamic shapes, called for each parameter, with
  the group's storage `open`/`close` inside it.
- Fallback: a chain with a transform that has no kernel, a kernel capturing something the key cannot
  describe, or a compilation error runs eagerly, with one warning per group and reason: never wrong numbers.
  So do parameters that are, or keep state that is, 0-dim float64 on the per-parameter path (SCALAR_DOUBLE).
"""

from __future__ import annotations

import array
import collections
import enum
import itertools
import math
import operator
import os
import sys
import types
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.autograd.graph import increment_version

from .segments import (
    COLUMN_FACTOR,
    FACTOR_KEYS,
    FACTOR_STATE_KEYS,
    ROW_FACTOR,
    ROW_KEYS,
    factor_layout,
    factor_shapes,
    row_layout,
    segment_layout,
)
from .segments import KEYS as SEGMENT_KEYS

BACKENDS = ("inductor", "aot_eager", "eager")
COMPILE_CHOICES = (False, True, *BACKENDS)
MAX_SIGNATURES = 8  # distinct chain structures per param group before the group runs eagerly
ALIGN = 16  # elements: each view in a flat buffer starts on a 64-byte boundary (float32)
# inductor options of flat graphs with segment reductions: inductor keeps an intermediate in a buffer of its own
# when it reads more than realize_reads_threshold (4) inputs; the cautious step's delta (read by the mask's
# reduction and by the final write) then costs a parameter-sized allocation every step, which the OS faults in
# page by page (half the step's time on 100 x 100k). Recomputed from the updated state instead, its producer
# also fuses into the reduction's loop: 2 passes over memory, no allocation (cadamw 100 x 100k: 57 -> 28 ms).
# Longer chains (cademamix) reach the threshold on the number of ops (30) instead (65 -> 33 ms). Since the
# coefficients are packed into one tensor (PackedCoefficients), each coefficient read counts toward
# realize_acc_reads_threshold (12 on the CPU): AdEMAMix's direction crossed it and was again stored in a fresh buffer
# every step (cademamix 100 x 100k, 1 thread: 45 -> 24 ms, benchmarks/README.md; other flat chains gain nothing).
SEGMENTED_INDUCTOR_OPTIONS: dict[str, str | int | bool | Callable] = {
    "realize_reads_threshold": 64,
    "realize_opcount_threshold": 1000,
    "realize_acc_reads_threshold": 64,
}

_names = itertools.count()
_grad_of = operator.attrgetter("grad")
_INTERNAL = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep, f"{os.sep}torch{os.sep}")


def first_line_of(error: BaseException) -> str:
    """The first line of an error's message, at most 200 characters: what a fallback warning quotes."""
    return (str(error).strip().splitlines() or [""])[0][:200]


def backend_of(flag: bool | str) -> str | None:
    """The torch.compile backend a `compile=` value asks for (True: inductor), or None for eager."""
    if flag is False:
        return None
    return "inductor" if flag is True else flag


class Unsupported(Exception):
    """The chain cannot be compiled safely; the message says why (it goes into the fallback warning)."""


# -- the structural key of a chain --------------------------------------------------------------------------
def chain_signature(chain: Sequence[Any]) -> tuple:
    return tuple((_value_key(tr.kernel, frozenset()), tr.elementwise, tr.segmented) for tr in chain)


def _value_key(v: Any, seen: frozenset[int]) -> Any:
    if v is None or isinstance(v, (bool, int, float, complex, str, bytes)):
        return (type(v).__name__, v)
    if isinstance(v, (torch.dtype, torch.device, torch.layout, torch.memory_format, enum.Enum)):
        return v
    if isinstance(v, types.FunctionType):
        if id(v) in seen:
            return ("cycle", v.__code__)
        inner = seen | {id(v)}
        cells = tuple(_cell_key(cell, inner) for cell in v.__closure__ or ())
        return ("fn", v.__code__, cells, _value_key(v.__defaults__, inner), _value_key(v.__kwdefaults__, inner))
    if isinstance(v, (tuple, list)):
        return (type(v).__name__, tuple(_value_key(x, seen) for x in v))
    if isinstance(v, dict):
        return ("dict", tuple((_value_key(k, seen), _value_key(x, seen)) for k, x in v.items()))
    if isinstance(v, (frozenset, set)):
        return ("set", frozenset(_value_key(x, seen) for x in v))
    if isinstance(v, (type, types.BuiltinFunctionType, types.ModuleType, torch._ops.OpOverloadPacket)):
        return ("object", v)
    # the message names the type only: it keys the one-warning-per-reason set, and a repr may change each step
    raise Unsupported(f"a kernel captures a {type(v).__module__}.{type(v).__qualname__}, which cannot key a "
                      "compiled graph")


def _cell_key(cell: Any, seen: frozenset[int]) -> Any:
    try:
        contents = cell.cell_contents
    except ValueError:
        return ("empty",)
    return _value_key(contents, seen)


# -- coefficients as 0-dim tensors ---------------------------------------------------------------------------
def coefficient_pattern(values: Sequence[tuple]) -> tuple:
    """What each coefficient is: a bool flag, a number, or a tensor passed through (part of the cache key)."""
    return tuple(tuple(_kind(x) for x in c) for c in values)


def _kind(x: Any) -> Any:
    if isinstance(x, Tensor):
        return ("tensor", x.dtype, x.device, x.dim())
    if isinstance(x, bool):
        return "bool"
    if isinstance(x, (int, float)):
        return "number"
    raise Unsupported(f"a coefficient is a {type(x).__name__} ({x!r:.60}); coefficients must be numbers or tensors")


def coefficient_slots(pattern: tuple, dtype: torch.dtype, device: torch.device) -> list[tuple[Tensor | None, ...]]:
    """Preallocated 0-dim tensors for the numbers of `pattern` (None where a tensor passes through)."""
    cdtype = torch.float64 if dtype == torch.float64 else torch.float32

    def slot(kind: Any) -> Tensor | None:
        if kind == "bool":
            return torch.zeros((), dtype=torch.bool, device=device)
        if kind == "number":
            return torch.zeros((), dtype=cdtype, device=device)
        return None

    return [tuple(slot(kind) for kind in c) for c in pattern]


def fill(slots: list[tuple[Tensor | None, ...]], values: Sequence[tuple]) -> tuple[tuple[Any, ...], ...]:
    return tuple(
        tuple(x if s is None else s.fill_(x) for s, x in zip(cs, c, strict=True))
        for cs, c in zip(slots, values, strict=True)
    )


class PackedCoefficients:
    """A chain's coefficients packed for the flat path: the numbers in one 1-D tensor (float64 for float64
    parameters, float32 otherwise), the flags in one bool tensor, and the tensors passed through, so that
    the graph has two inputs for dynamo to guard and the host writes two arrays per step, however long the
    chain. On the CPU the tensors view Python arrays that each step overwrites in place (a fill_ per number
    cost 13 us a step for AdamW; this, 2 us); on other devices the arrays are copied in.

    `where[i]` says where transform i's coefficients are: (argument, index) pairs, argument 0 the numbers,
    1 the flags, 2 the tuple of tensors passed through."""

    def __init__(self, pattern: tuple, dtype: torch.dtype, device: torch.device) -> None:
        self.kinds = tuple("tensor" if isinstance(kind, tuple) else kind for c in pattern for kind in c)
        counts = [0, 0, 0]
        where = []
        for c in pattern:
            row = []
            for kind in c:
                arg = 0 if kind == "number" else 1 if kind == "bool" else 2
                row.append((arg, counts[arg]))
                counts[arg] += 1
            where.append(tuple(row))
        self.where = tuple(where)
        self.numbers_only = counts[1] == counts[2] == 0
        double = dtype == torch.float64
        self._host_numbers, host_numbers = _host_array("d" if double else "f", counts[0],
                                                       torch.float64 if double else torch.float32)
        self._host_flags, host_flags = _host_array("B", counts[1], torch.bool)
        self.on_host = device.type == "cpu"
        self.numbers = host_numbers if self.on_host else host_numbers.to(device)
        self.flags = host_flags if self.on_host else host_flags.to(device)
        self._sources = (host_numbers, host_flags)
        # torch.frombuffer does not pin the arrays; these memoryviews do: an array exporting a buffer cannot be
        # resized, so writing the wrong number of values raises BufferError instead of moving what the tensors read
        self._pins = (memoryview(self._host_numbers), memoryview(self._host_flags))

    def __call__(self, values: Sequence[tuple]) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        """The arguments (numbers, flags, tensors) that carry this step's `values`."""
        flat = [x for c in values for x in c]
        tensors: tuple[Tensor, ...] = ()
        if self.numbers_only:
            if flat:
                self._host_numbers[:] = array.array(self._host_numbers.typecode, flat)
        else:
            kinds = self.kinds
            if self._host_numbers:
                numbers = [x for x, kind in zip(flat, kinds, strict=True) if kind == "number"]
                self._host_numbers[:] = array.array(self._host_numbers.typecode, numbers)
            if self._host_flags:
                flags = [x for x, kind in zip(flat, kinds, strict=True) if kind == "bool"]
                self._host_flags[:] = array.array("B", flags)
            tensors = tuple(x for x, kind in zip(flat, kinds, strict=True) if kind == "tensor")
        if not self.on_host:
            self.numbers.copy_(self._sources[0])
            self.flags.copy_(self._sources[1])
        return self.numbers, self.flags, tensors


def _host_array(typecode: str, n: int, dtype: torch.dtype) -> tuple[array.array, Tensor]:
    """A Python array of n zeros and a tensor viewing its memory."""
    host = array.array(typecode, bytes(n * array.array(typecode).itemsize))
    return host, (torch.frombuffer(host, dtype=dtype) if n else torch.zeros(0, dtype=dtype))


# -- the functions handed to torch.compile -------------------------------------------------------------------
def _fresh(fn: Callable, name: str) -> Callable:
    """`fn` with a code object of its own: dynamo keeps its graphs and recompile count per code object, so
    each bucket gets a cache of its own."""
    code = fn.__code__.replace(co_name=name, co_qualname=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


def _chain_function(kernels: tuple[Callable, ...], maximize: bool) -> Callable:
    def run_chain(g: Tensor, p: Tensor, s: dict, cs: tuple) -> None:
        u = -g if maximize else g
        for i, kernel in enumerate(kernels):
            u = kernel(u, p, s, cs[i])

    return run_chain


def _packed_chain_function(kernels: tuple[Callable, ...], maximize: bool,
                           where: tuple[tuple[tuple[int, int], ...], ...]) -> Callable:
    """`_chain_function` for coefficients packed by `PackedCoefficients`: each transform's tuple is rebuilt
    inside the graph (indexing the numbers tensor gives the same 0-dim tensors a filled slot would). The
    bucket's step counts are counted inside the graph too: an eager add_ right after the compiled call cost
    20-30 us (1000 x 1k), against 3 us on its own, the kernel having pushed the dispatcher's code and data out
    of the caches."""

    def run_chain_packed(g: Tensor, p: Tensor, s: dict, numbers: Tensor, flags: Tensor, tensors: tuple,
                         steps: Tensor) -> None:
        u = -g if maximize else g
        args = (numbers, flags, tensors)
        for i, kernel in enumerate(kernels):
            u = kernel(u, p, s, tuple(args[arg][j] for arg, j in where[i]))
        steps.add_(1)

    return run_chain_packed


def _storage_function(kernels: tuple[Callable, ...], maximize: bool, storage: Any) -> Callable:
    def run_chain_stored(g: Tensor, p: Tensor, state: dict, cs: tuple) -> None:
        s = storage.open(p, state)
        u = -g if maximize else g
        for i, kernel in enumerate(kernels):
            u = kernel(u, p, s, cs[i])
        storage.close(p, state, s)

    return run_chain_stored


# torch 2.13: an in-place update of a 0-dim float64 tensor passed to a compiled function is lost (with the
# aot_eager and inductor backends, dynamic or not: `b.add_(c); p.sub_(b)` leaves b unchanged and reads its old
# value). Such parameters (and parameters with such state, AdaGrad-Norm's float64 b^2) run eagerly.
SCALAR_DOUBLE = "0-dim float64 tensors updated in place are miscompiled by torch.compile (their update is lost)"


def _sum_dtype(dtype: torch.dtype) -> torch.dtype:
    """Float32 or float64 for the finiteness sum (a half-precision sum overflows at 65504)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# -- the non-finite check's sum of a flat gradient buffer -----------------------------------------------------
# One thread summing a buffer larger than the cache waits on memory: torch's eager sum reads it as one stream
# (40 MB float32: 1.33 ms), a compiled sum of its quarters added elementwise reads 4 at once (0.94-1.0 ms; 8
# streams or g.view(4, -1).sum(0).sum() the same within noise). A compiled call costs ~45 us more than an
# eager one, and a buffer that fits the cache sums as fast eagerly (16 MB: 0.30 eager, 0.36 ms compiled; 24
# MB: even; 32 MB: 0.97 against 0.76-0.82): CPU buffers of 24 MB and more take the streams, under inductor
# (the only backend that fuses them). Measured with 1 thread, 32 MB of L3.
STREAMS = 4
STREAMED_MIN_BYTES = 24 << 20
STREAMED_BACKENDS = frozenset({"inductor"})
MAX_STREAMED_LENGTHS = 8  # compiles (one per buffer dtype and length, shared by every optimizer) at most
_streamed: dict[tuple, Callable | None] = {}


def _streamed_sum_function(dtype: torch.dtype) -> Callable:
    def streamed_sum(g: Tensor) -> Tensor:
        rows = g.view(STREAMS, -1).to(dtype)
        total = rows[0]
        for i in range(1, STREAMS):
            total = total + rows[i]  # NaN and infinity still propagate; an overflow gives infinity
        return total.sum()

    return streamed_sum


def _buffer_sum(g: Tensor, backend: str) -> Tensor:
    """The sum of a flat gradient buffer in `_sum_dtype`: compiled as STREAMS streams where that is faster
    (see STREAMED_MIN_BYTES), else torch's eager sum. Each (dtype, length) compiles once, static; past
    MAX_STREAMED_LENGTHS lengths, or if compiling fails (warned once), the eager sum."""
    dtype = _sum_dtype(g.dtype)
    n = g.numel()
    if (
        backend not in STREAMED_BACKENDS
        or g.device.type != "cpu"
        or n % STREAMS
        or n * g.element_size() < STREAMED_MIN_BYTES
        or not g.is_contiguous()
    ):
        return g.sum(dtype=dtype)
    key = (backend, g.dtype, n)
    if key not in _streamed:
        if len(_streamed) >= MAX_STREAMED_LENGTHS:
            return g.sum(dtype=dtype)
        streamed_sum = _fresh(_streamed_sum_function(dtype), f"gradwise_finite_sum_{n}_{next(_names)}")
        _streamed[key] = torch.compile(streamed_sum, backend=backend, fullgraph=True, dynamic=False)
    fn = _streamed[key]
    if fn is not None:
        try:
            return fn(g)
        except Exception as error:  # compiling failed: the eager sum from now on, for this length
            _streamed[key] = None
            first_line = first_line_of(error)
            warnings.warn(f"gradwise: the non-finite check sums eagerly: torch.compile failed "
                          f"({type(error).__name__}: {first_line})", stacklevel=_user_level())
    return g.sum(dtype=dtype)


def _user_level() -> int:
    """The warnings stacklevel of the first frame outside gradwise and torch, seen from the caller."""
    frame: types.FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and any(part in frame.f_code.co_filename for part in _INTERNAL):
        frame, level = frame.f_back, level + 1
    return level


def _scalar_double(v: Any) -> bool:
    return isinstance(v, Tensor) and v.dim() == 0 and v.dtype == torch.float64


# -- flat buffers ----------------------------------------------------------------------------------------------
class _BucketViews:
    """What every flat layout shares: `members` (the parameters), `ptrs` (their data pointers), `states` (their
    state dicts), `views` (state key -> one view per member) and `grads` (the gradient buffer's views)."""

    members: list[Tensor]
    ptrs: list[int]
    states: list[dict]
    views: dict[str, list[Tensor]]
    grads: list[Tensor]
    _view_check: list[tuple[Callable[[dict], Any], list[dict], list[Tensor]]]  # built on first use by views_in_place

    def matches(self, members: list[Tensor], state: dict) -> bool:
        """Whether `members` are this layout's parameters, still views of its buffers, with its state."""
        # map/operator keep these per-parameter checks out of the interpreter loop (1000 tensors: ~0.5 ms)
        return (
            len(members) == len(self.members)
            and all(map(operator.is_, members, self.members))
            and list(map(Tensor.data_ptr, members)) == self.ptrs
            and all(map(operator.is_, map(state.get, members), self.states))
            and self.views_in_place()
        )

    def views_in_place(self) -> bool:
        """Whether each state dict still holds its views under every key: per key, one map() of an itemgetter
        over the state dicts that hold it, compared by identity (a KeyError: a key was removed)."""
        check = self.__dict__.get("_view_check")
        if check is None:
            check = self._view_check = [(operator.itemgetter(k), held, views) for k, held, views in self.held_views()]
        try:
            return all(all(map(operator.is_, map(get, held), views)) for get, held, views in check)
        except KeyError:
            return False

    def held_views(self) -> list[tuple[str, list[dict], list[Tensor]]]:
        """(key, the state dicts, their views under it): every member holds a view under each key of `views`."""
        return [(k, self.states, views) for k, views in self.views.items()]

    def attach_grads(self) -> None:
        """Make each p.grad the view of the flat gradient buffer, copying the gradients that are not."""
        grads = list(map(_grad_of, self.members))
        if all(map(operator.is_, grads, self.grads)):
            return
        if not any(map(operator.is_, grads, self.grads)):
            # every gradient is new (zero_grad(set_to_none=True) then backward, each step): one call copies them
            # all and map() re-points them, without a Python loop over the parameters
            torch._foreach_copy_(self.grads, grads)  # type: ignore[arg-type]  # members have gradients
            collections.deque(map(setattr, self.members, itertools.repeat("grad"), self.grads), maxlen=0)
            return
        pairs = [(p, view, g) for p, view, g in zip(self.members, self.grads, grads, strict=True) if g is not view]
        torch._foreach_copy_([view for _, view, _ in pairs], [g for _, _, g in pairs])
        for p, view, _ in pairs:
            p.grad = view


class FlatLayout(_BucketViews):
    """One bucket's parameters, gradients and state as views of flat buffers (see the module docstring)."""

    def __init__(self, members: list[Tensor], states: list[dict], t: float) -> None:
        p0 = members[0]
        dtype, device = p0.dtype, p0.device
        sizes = [p.numel() for p in members]
        offsets, total = [], 0
        for n in sizes:
            offsets.append(total)
            total += -(-n // ALIGN) * ALIGN
        # factored state (gradwise.core.segments.factor_layout): when some member keeps a row factor, the
        # factor keys of every member live in a row buffer and a column buffer, not per element
        factored = any(ROW_FACTOR in st for st in states)
        keys = [k for k in states[0] if k != "step" and not (factored and k in FACTOR_STATE_KEYS)]
        # a key of 0-dim state where some parameter is not 0-dim: one number per parameter (see eligible)
        self.scalar_keys = frozenset(k for k in _scalar_keys(members, states) if k in keys)
        self.members = members
        self.offsets = offsets
        self.sizes = sizes
        self._segments: dict[str, Tensor] | None = None
        self._rows: dict[str, Tensor] | None = None
        self._factors: dict[str, Tensor] = {}
        self.factor_views: dict[str, tuple[list[dict], list[Tensor]]] = {}  # key -> the states holding it, views
        self.factor_places: list[tuple[dict, str, str, int, tuple[int, ...]]] = []  # (state, key, buffer, start)
        self.states = states
        self.t = t
        self.param = torch.zeros(total, dtype=dtype, device=device)
        self.grad = torch.zeros(total, dtype=dtype, device=device)
        self.param.grad = self.grad  # for kernels that read p.grad, as they may in eager
        # per-parameter numbers: a column with a row per parameter and one for the padding-only blocks
        # (gradwise.core.segments.segment_value reads it per element)
        self.state = {
            k: torch.zeros((len(members) + 1, 1) if k in self.scalar_keys else total, dtype=states[0][k].dtype,
                           device=device)
            for k in keys
        }
        self.steps = torch.full((len(members),), t, dtype=torch.float32)
        self.grads: list[Tensor] = []
        self.views: dict[str, list[Tensor]] = {k: [] for k in (*keys, "step")}
        for i, (p, st, off, n) in enumerate(zip(members, states, offsets, sizes, strict=True)):
            view = self.param[off : off + n].view(p.shape)
            view.copy_(p.detach())
            p.data = view
            g = self.grad[off : off + n].view(p.shape)
            g.copy_(p.grad)  # type: ignore[arg-type]  # members have gradients
            p.grad = g
            self.grads.append(g)
            for k in keys:
                sv = self.state[k][i, 0] if k in self.scalar_keys else self.state[k][off : off + n].view(p.shape)
                sv.copy_(st[k])
                st[k] = sv
                self.views[k].append(sv)
            st["step"] = self.steps[i]
            self.views["step"].append(st["step"])
        if factored:
            self._lay_out_factors(dtype, device)
        self.ptrs = [p.data_ptr() for p in members]

    def _lay_out_factors(self, dtype: torch.dtype, device: torch.device) -> None:
        """The row and column buffers of factored state, each member's factor keys re-pointed to views."""
        shapes = [p.shape for p in self.members]
        self._factors, row_count, width, places = factor_layout(shapes, self.offsets, self.param.numel(), device,
                                                                ALIGN)
        self.state[ROW_FACTOR] = torch.zeros(row_count, dtype=dtype, device=device)
        self.state[COLUMN_FACTOR] = torch.zeros(width, dtype=dtype, device=device)
        for p, st, starts in zip(self.members, self.states, places, strict=True):
            for k, shape in factor_shapes(p.shape).items():
                buffer = ROW_FACTOR if k == ROW_FACTOR else COLUMN_FACTOR
                view = self.state[buffer][starts[k] : starts[k] + math.prod(shape)].view(shape)
                view.copy_(st[k])
                st[k] = view
                self.factor_places.append((st, k, buffer, starts[k], shape))
                held, views = self.factor_views.setdefault(k, ([], []))
                held.append(st)
                views.append(view)

    def held_views(self) -> list[tuple[str, list[dict], list[Tensor]]]:
        """`_BucketViews.held_views`, and the factored state: each factor key held by the members that keep it."""
        return [*super().held_views(), *((k, held, views) for k, (held, views) in self.factor_views.items())]

    def segments(self, rows: bool, factored: bool = False) -> dict[str, Tensor]:
        """The per-block parameter index and per-parameter sizes that `gradwise.core.segments` reduces by,
        with the rows of parameters of two or more dimensions if `rows` (built on first use: only chains with
        a segmented transform need them)."""
        total, device = self.param.numel(), self.param.device
        if self._segments is None:
            self._segments = segment_layout(self.sizes, self.offsets, total, device, ALIGN)
        factors = self._factors if factored else {}
        if not rows:
            return {**{k: v for k, v in self._segments.items() if k not in ROW_KEYS}, **factors}
        if self._rows is None:
            self._rows = row_layout([p.shape for p in self.members], self.offsets, total, device, ALIGN)
        return {**self._segments, **self._rows, **factors}

    def keep_new_state(self, buffers: dict[str, Tensor]) -> None:
        """Hand the tensors a kernel put in the flat state dict to each parameter's state, as views."""
        for st, k, buffer, start, shape in self.factor_places:
            if buffers.get(buffer) is not self.state[buffer]:
                st[k] = self.state[buffer][start : start + math.prod(shape)].view(shape)
        for k, flat in self.state.items():
            if buffers.get(k) is flat or any(place[2] == k for place in self.factor_places):
                continue
            for i, (p, st, off) in enumerate(zip(self.members, self.states, self.offsets, strict=True)):
                st[k] = flat[i, 0] if k in self.scalar_keys else flat[off : off + p.numel()].view(p.shape)

    @staticmethod
    def eligible(members: list[Tensor], states: list[dict], scalars: bool = False,
                 factored: bool = False) -> float | None:
        """The common step count if the bucket can be laid out flat, else None. Each state tensor must be
        shaped like its parameter, or, if `scalars` (the chain reads such state through segment_value), be
        0-dim for every parameter: one number per parameter. If `factored` (the chain keeps factored state,
        gradwise.core.segments.factor_layout) and some member keeps a row factor, the factor keys of each
        member must be those of `factor_shapes` for its non-empty parameter, and each matrix's rows a multiple
        of ALIGN long (else the layout's blocks would be single elements: an index per element, four times
        the parameter's memory, and a gather per element); the other keys as above."""
        factored = factored and any(ROW_FACTOR in st for st in states)
        if factored:
            for p, st in zip(members, states, strict=True):
                expected = factor_shapes(p.shape)
                own = {k: v for k, v in st.items() if k in FACTOR_STATE_KEYS}
                if p.numel() == 0 or own.keys() != expected.keys() or (p.dim() >= 2 and p.shape[-1] % ALIGN):
                    return None
                if any(not isinstance(v, Tensor) or tuple(v.shape) != expected[k] or v.device != p.device
                       or v.dtype != p.dtype for k, v in own.items()):
                    return None
            states = [{k: v for k, v in st.items() if k not in FACTOR_STATE_KEYS} for st in states]
        scalar = set(_scalar_keys(members, states))
        if scalar and not scalars:
            return None
        keys = {k for k in states[0]}
        steps = set()
        dtypes: dict[str, torch.dtype] = {}
        for p, st in zip(members, states, strict=True):
            if not p.is_contiguous() or set(st) != keys:
                return None
            step = st.get("step")
            if not isinstance(step, Tensor) or step.numel() != 1:
                return None
            steps.add(float(step))
            for k, v in st.items():
                if k == "step":
                    continue
                shape = () if k in scalar else p.shape
                if not isinstance(v, Tensor) or v.shape != shape or v.device != p.device:
                    return None
                if dtypes.setdefault(k, v.dtype) != v.dtype:
                    return None
        return steps.pop() if len(steps) == 1 else None

    def still_in_place(self) -> bool:
        """`matches` for members known to be the same parameters with the same state dicts (the step's
        fingerprint says so): their data has not moved and their state still holds the views."""
        return list(map(Tensor.data_ptr, self.members)) == self.ptrs and self.views_in_place()


def _scalar_keys(members: list[Tensor], states: list[dict]) -> list[str]:
    """The state keys that hold one number per parameter: 0-dim where a parameter is not (a bucket of 0-dim
    parameters keeps all its state per element, where a number per parameter is one per element)."""
    return [
        k for k, v in states[0].items()
        if k != "step" and isinstance(v, Tensor) and v.dim() == 0
        and any(p.dim() != 0 and isinstance(st.get(k), Tensor) and st[k].dim() == 0
                for p, st in zip(members, states, strict=True))
    ]


# -- the engine's entry points ---------------------------------------------------------------------------------
Plan = dict[int, dict[tuple, tuple[list[Tensor], FlatLayout | None]]]
_params_of = operator.itemgetter("params")
_is_sparse = operator.attrgetter("is_sparse")


class _Fingerprint:
    """What one step's `params_with_grad` saw, to tell the next step that nothing changed in O(1) Python
    calls: the param groups, their parameters, each parameter's gradient object (None included: a
    gradient that appears or goes away changes the work) and the state's per-parameter dicts, in order."""

    __slots__ = ("groups", "lists", "params", "grads", "full", "work", "plan", "state", "keys", "values", "layouts",
                 "buffers")

    def __init__(self, optimizer: Any, work: list, plan: Plan | None) -> None:
        self.groups = list(optimizer.param_groups)
        self.lists = list(map(_params_of, self.groups))
        self.params = list(itertools.chain.from_iterable(self.lists))
        self.grads = list(map(_grad_of, self.params))
        self.full = all(map(operator.is_not, self.grads, itertools.repeat(None)))  # every parameter in work
        self.work = work
        self.plan = plan
        self.state = optimizer.state
        # the state's keys and values in order: together they say that state[p] is the same dict for every p,
        # without hashing a parameter (Tensor.__hash__ is a Python function)
        self.keys = list(self.state)
        self.values = list(self.state.values())
        # the plan's layouts under their self.layouts keys, and their flat gradient buffers (when complete)
        self.layouts = [((gi, key), layout) for gi, buckets in (plan or {}).items()
                        for key, (_, layout) in buckets.items()]
        self.buffers = [layout.grad for _, layout in self.layouts if layout is not None]

    def same_state(self, state: dict) -> bool:
        """Whether `state` maps the same parameters to the same dicts as when this fingerprint was taken."""
        return (
            state is self.state
            and len(state) == len(self.values)
            and all(map(operator.is_, state.values(), self.values))
            and all(map(operator.is_, state, self.keys))
        )

    def same_parameters(self, optimizer: Any) -> bool:
        groups = optimizer.param_groups
        if len(groups) != len(self.groups) or not all(map(operator.is_, groups, self.groups)):
            return False
        lists = list(map(_params_of, groups))
        if not all(map(operator.is_, lists, self.lists)) or sum(map(len, lists)) != len(self.params):
            return False
        return all(map(operator.is_, itertools.chain.from_iterable(lists), self.params))


class CompiledStep:
    """The compiled part of one optimizer's step; created by ChainOptimizer when compile= is not False."""

    def __init__(self, optimizer: Any, backend: str) -> None:
        self.optimizer = optimizer
        self.backend = backend
        self.layouts: dict[tuple, FlatLayout] = {}
        self.functions: dict[tuple, Callable | None] = {}
        self.slots: dict[tuple, list] = {}
        self.packings: dict[tuple, PackedCoefficients] = {}
        self.signatures: dict[int, set] = {}
        self.warned: set[tuple[int, str]] = set()
        self._plan: tuple[Any, Plan] | None = None
        self._last: _Fingerprint | None = None

    def invalidate(self) -> None:
        """Forget every flat layout, the 8-bit path's too (after load_state_dict, or when state grows): the next
        step gathers the buffers again."""
        self.layouts.clear()
        quantized = getattr(self, "_gradwise_quantized", None)  # gradwise.core.compiled_state's, once used
        if quantized is not None:
            quantized.layouts.clear()
        self._plan = None
        self._last = None

    # step, part 0: which parameters have a gradient
    def params_with_grad(self) -> list[tuple[dict, list[Tensor]]]:
        """The engine's `_params_with_grad` followed by `begin`, both skipped when the last step's
        fingerprint still holds: the same groups and parameters, each gradient the very tensor it was (the
        view of a flat buffer, for laid-out parameters), the same state dicts, and every layout in place.
        The checks are identity and data-pointer comparisons run by map() in C, not a Python loop."""
        last = self._last
        if last is not None and last.same_parameters(self.optimizer):
            if all(map(operator.is_, map(_grad_of, last.params), last.grads)):
                if last.plan is not None and self._plan_holds(last):
                    self._plan = (last.work, last.plan)
                    return last.work
                self.begin(last.work)
                return last.work
            grads = list(map(_grad_of, last.params))
            if (
                last.plan is not None
                and last.full
                and all(map(operator.is_not, grads, itertools.repeat(None)))
                and not any(map(_is_sparse, grads))
                and self._plan_holds(last)
            ):  # every parameter has a new gradient (zero_grad(set_to_none=True), backward): copy them in
                for buckets in last.plan.values():
                    for _, layout in buckets.values():
                        layout.attach_grads()  # type: ignore[union-attr]  # a plan is kept when complete
                last.grads = list(map(_grad_of, last.params))
                self._plan = (last.work, last.plan)
                return last.work
        work = self.optimizer._params_with_grad()
        self.begin(work)
        return work

    def _plan_holds(self, last: _Fingerprint) -> bool:
        if not last.same_state(self.optimizer.state):
            return False
        layouts = self.layouts
        for key, layout in last.layouts:  # callers check that last.plan is not None: no layout is None
            if layouts.get(key) is not layout or not layout.still_in_place():  # type: ignore[union-attr]
                return False
        return True

    # step, part 1: before the non-finite check
    def begin(self, work: list[tuple[dict, list[Tensor]]]) -> None:
        """Bucket each group's parameters and attach gradients to the flat layouts still in place, so that
        the non-finite check reads one flat buffer per bucket."""
        state = self.optimizer.state
        plan: Plan = {}
        for gi, (_, params) in enumerate(work):
            plan[gi] = {}
            only = self._single_layout(gi)
            if only is not None and only[1].matches(params, state):  # the common case: no bucketing needed
                only[1].attach_grads()
                plan[gi][only[0]] = (params, only[1])
                continue
            buckets: dict[tuple, list[Tensor]] = {}
            for p in params:
                buckets.setdefault((p.dtype, p.device), []).append(p)
            for key, members in buckets.items():
                layout = self.layouts.get((gi, key))
                if layout is not None and layout.matches(members, state):
                    layout.attach_grads()
                else:
                    layout = None
                plan[gi][key] = (members, layout)
        self._plan = (work, plan)
        complete = all(layout is not None for buckets in plan.values() for _, layout in buckets.values())
        self._last = _Fingerprint(self.optimizer, work, plan if complete else None)

    def _single_layout(self, gi: int) -> tuple[tuple, FlatLayout] | None:
        found = [(key[1], layout) for key, layout in self.layouts.items() if key[0] == gi]
        return found[0] if len(found) == 1 else None

    def gradients_finite(self, work: list[tuple[dict, list[Tensor]]]) -> bool:
        """The engine's check: one sum per flat gradient buffer or per gradient outside one, one scalar read."""
        if self._plan is None or self._plan[0] is not work:
            self.begin(work)
        assert self._plan is not None  # begin sets it
        backend = self.backend
        buffers = self.flat_gradients(work)
        if buffers is not None:
            sums = [_buffer_sum(g, backend) for g in buffers]
        else:
            sums = []  # a sum per flat gradient buffer of a laid-out bucket, per gradient of the others
            for buckets in self._plan[1].values():
                for members, layout in buckets.values():
                    if layout is not None:
                        sums.append(_buffer_sum(layout.grad, backend))
                    else:
                        sums.extend(g.sum(dtype=_sum_dtype(g.dtype)) for g in map(_grad_of, members)
                                    if g is not None and g.numel() > 0)
        if not sums:
            return True
        # a sum is finite only if every element is (NaN and infinity propagate; +inf and -inf give NaN): one
        # reduction per tensor and one scalar read, cheaper than aminmax (1000 x 1k flat: 0.29 against 0.46 ms,
        # cold cache). A sum that overflows sends the step to the exact check. One buffer: its sum is the total.
        if len(sums) == 1:
            total = sums[0]
        else:
            device = sums[0].device
            total = torch.stack([t.to(device, torch.float32) for t in sums]).sum()
        if math.isfinite(float(total)):
            return True
        return self.optimizer._gradients_finite(work)  # exact, and finds the parameter for "raise"

    def flat_gradients(self, work: list[tuple[dict, list[Tensor]]]) -> list[Tensor] | None:
        """The flat gradient buffers that hold every gradient of `work` when each of its buckets has a layout in
        place (its gradients are then the views; the alignment padding between them is zero), else None: a
        reduction over all gradients (AdaGrad-Norm's ||G||^2) then reads a few buffers, not a tensor each."""
        last = self._last
        if self._plan is None or self._plan[0] is not work or last is None or last.plan is not self._plan[1]:
            return None  # a plan is kept with the fingerprint only when every bucket has its layout
        return last.buffers or None

    # step, part 2: per group, after the chain is built
    def run_group(
        self, gi: int, params: list[Tensor], h: Any, chain: tuple, storage: Any, work: Any = None
    ) -> list[Tensor]:
        """Update what can be compiled; return the parameters left for the eager loop."""
        missing = [i for i, tr in enumerate(chain) if tr.kernel is None]
        if missing:
            name = getattr(chain[missing[0]].update, "__qualname__", "?")
            return self._eager(gi, params, f"transform {missing[0]} of the chain ({name}) has no kernel yet")
        try:
            signature = (bool(h.maximize), chain_signature(chain))
            hash(storage)
        except Unsupported as error:
            return self._eager(gi, params, str(error))
        except TypeError:
            return self._eager(gi, params, f"its state storage {type(storage).__name__} is not hashable")
        known = self.signatures.setdefault(gi, set())
        if signature not in known and len(known) >= MAX_SIGNATURES:
            return self._eager(gi, params, f"the chain changed structure more than {MAX_SIGNATURES} times (a "
                               "kernel captures a number that changes; move it into coefficients)")
        known.add(signature)
        if self._plan is not None and self._plan[0] is work and gi in self._plan[1]:
            buckets = self._plan[1][gi]
        else:
            buckets = {}
            for p in params:
                buckets.setdefault((p.dtype, p.device), ([], None))[0].append(p)
        for stale in [k for k in self.layouts if k[0] == gi and k[1] not in buckets]:
            old = self.layouts[stale]
            if any(p.data_ptr() != ptr for p, ptr in zip(old.members, old.ptrs, strict=True)):
                del self.layouts[stale]  # its parameters moved (model.to): free the old buffers
        flat = storage is None and all(tr.elementwise or tr.segmented for tr in chain)
        rest: list[Tensor] = []
        for key, (members, layout) in buckets.items():
            if flat and self._run_flat(gi, key, members, layout, chain, signature):
                continue
            self.layouts.pop((gi, key), None)
            if storage is not None and all(tr.elementwise for tr in chain):  # 8-bit state: flat too, if it can
                from .compiled_state import run_quantized

                members = run_quantized(self, gi, key, members, chain, signature, storage)
            rest.extend(self._run_each(gi, key, members, chain, signature, storage))
        return rest

    def _eager(self, gi: int, params: list[Tensor], reason: str) -> list[Tensor]:
        self._warn(gi, reason)
        for key in [k for k in self.layouts if k[0] == gi]:
            del self.layouts[key]
        return params

    def _warn(self, gi: int, reason: str) -> None:
        """One warning per group and reason, attributed to the first frame outside gradwise and torch."""
        if (gi, reason) in self.warned:
            return
        self.warned.add((gi, reason))
        name = type(self.optimizer).__name__
        warnings.warn(f"{name}(compile={self.backend!r}): param group {gi} runs eagerly: {reason}",
                      stacklevel=_user_level())

    def _function(self, key: tuple, make: Callable[[], Callable], dynamic: bool | None,
                  options: dict[str, str | int | bool | Callable] | None = None) -> Callable | None:
        if key not in self.functions:
            fn = _fresh(make(), f"gradwise_{key[1]}_group{key[0]}_{next(_names)}")
            inductor_options = options if self.backend == "inductor" else None  # the others accept none
            self.functions[key] = torch.compile(fn, backend=self.backend, fullgraph=True, dynamic=dynamic,
                                                options=inductor_options)
        return self.functions[key]

    def _call(self, fkey: tuple, gi: int, fn: Callable, args: tuple) -> bool:
        try:
            fn(*args)
        except Exception as error:  # tracing or compiling failed: nothing was written yet
            self.functions[fkey] = None
            first_line = first_line_of(error)
            self._warn(gi, f"torch.compile failed ({type(error).__name__}: {first_line})")
            return False
        return True

    def _run_flat(self, gi: int, key: tuple, members: list[Tensor], layout: FlatLayout | None, chain: tuple,
                  signature: tuple) -> bool:
        state = self.optimizer.state
        if layout is None:
            states = []
            for p in members:
                st = state[p]
                if "step" not in st:
                    self.optimizer._init_state(p, st, chain)
                states.append(st)
            t = FlatLayout.eligible(members, states, any(tr.segmented for tr in chain),
                                    any(tr.segmented == "factored" for tr in chain))
            if t is None:
                return False
            layout = FlatLayout(members, states, t)
            self.layouts[(gi, key)] = layout
        try:
            values = [tr.coefficients(layout.t + 1) for tr in chain]
            pattern = coefficient_pattern(values)
        except Unsupported as error:
            self._eager(gi, [], str(error))
            return False
        fkey = (gi, "flat", key, signature, pattern)
        kernels = tuple(tr.kernel for tr in chain)
        segmented = any(tr.segmented for tr in chain)
        options = SEGMENTED_INDUCTOR_OPTIONS if segmented else None
        packed = self.packings.get(fkey)
        if packed is None:
            packed = self.packings[fkey] = PackedCoefficients(pattern, *key)
        fn = self._function(fkey, lambda: _packed_chain_function(kernels, signature[0], packed.where), dynamic=None,
                            options=options)
        if fn is None:
            return False
        buffers = dict(layout.state)
        rows = any(tr.segmented == "rows" for tr in chain)
        factored = any(tr.segmented == "factored" for tr in chain)
        s = {**layout.state, **layout.segments(rows, factored)} if segmented else layout.state
        if not self._call(fkey, gi, fn, (layout.grad, layout.param, s, *packed(values), layout.steps)):
            return False
        # the graph wrote the flat buffer, whose version counter the parameters (p.data re-pointed) do not share:
        # tell autograd, as torch.optim's in-place steps do (a graph that saved p before the step must refuse
        # its backward afterwards); about 60 us per 1000 parameters
        increment_version(layout.members)
        if segmented:
            for k in (*SEGMENT_KEYS, *ROW_KEYS, *FACTOR_KEYS):
                s.pop(k, None)
            layout.state = s
        if len(layout.state) != len(buffers) or any(layout.state.get(k) is not v for k, v in buffers.items()):
            # a kernel replaced or added a state tensor instead of updating in place
            layout.keep_new_state(buffers)
            del self.layouts[(gi, key)]
        layout.t += 1  # layout.steps counted in the graph
        return True

    def _run_each(self, gi: int, key: tuple, members: list[Tensor], chain: tuple, signature: tuple,
                  storage: Any) -> list[Tensor]:
        """The per-parameter path; returns the members it did not update."""
        state = self.optimizer.state
        kernels = tuple(tr.kernel for tr in chain)
        rest = []
        for i, p in enumerate(members):
            st = state[p]
            if "step" not in st:  # before the check below: the state a chain allocates may be 0-dim float64
                self.optimizer._init_state(p, st, chain)
                if storage is not None:
                    storage.init(p, st)
            if _scalar_double(p) or any(_scalar_double(v) for k, v in st.items() if k != "step"):
                self._warn(gi, SCALAR_DOUBLE)
                rest.append(p)
                continue
            try:
                values = [tr.coefficients(float(st["step"]) + 1) for tr in chain]
                pattern = coefficient_pattern(values)
            except Unsupported as error:
                return rest + self._eager(gi, members[i:], str(error))
            fkey = (gi, "each", key, signature, pattern, storage)
            if storage is None:
                fn = self._function(fkey, lambda: _chain_function(kernels, signature[0]), dynamic=True)
                s = {k: v for k, v in st.items() if k != "step"}
            else:
                fn = self._function(fkey, lambda: _storage_function(kernels, signature[0], storage), dynamic=True)
                s = st
            if fn is None:
                return rest + members[i:]
            slots = self.slots.get(fkey)
            if slots is None:
                slots = self.slots[fkey] = coefficient_slots(pattern, *key)
            before = dict(s)
            if not self._call(fkey, gi, fn, (p.grad, p, s, fill(slots, values))):
                return rest + members[i:]
            if s is not st:  # a kernel that put a new tensor in the state: keep it, as eager would
                st.update((k, v) for k, v in s.items() if before.get(k) is not v)
            st["step"] += 1
        return rest
