"""The compiled step of 8-bit state (`state_bits=8`) over flat buffers: one call per bucket, as the 32-bit flat path.

Eligible: a group whose storage is `gradwise.state.QuantizedStorage`, whose transforms are all elementwise, and
whose float32 parameters (of one device) with at least `state_min_size` elements share one step count and keep
every state tensor but "step" in the 8-bit form (uint8 codes shaped like the parameter plus one float32 scale
per block). Those parameters form the bucket; the rest (small tensors, other dtypes, state just loaded from a
32-bit checkpoint, which the eager rule uses unrounded for one step) return to the per-parameter path.

Layout: each parameter starts at a block boundary of one flat buffer and is padded with zeros to a whole
number of blocks, so that its blocks are rows of the bucket's (blocks, block) matrix. The parameters, their
gradients, the codes of each state key and the block scales of each key become views of flat buffers
(`p.data`, `p.grad`, `state[p][key]`, `state[p][key + "_absmax"]` are re-pointed; `state_dict` is unchanged:
one tensor per parameter in the stored form). One compiled function dequantizes every key, runs the chain's
kernels, and quantizes again with `gradwise.state.quantize.quantize_rows`, the arithmetic of the eager
storage. The padding holds the code of 0; whatever the kernels write into it (AdaBelief adds eps to its
variance) is zeroed before the block maxima are taken, exactly as eager quantization pads with zeros, so the
codes and scales are those of the eager 8-bit step.

Under the inductor backend on the CPU, a chain whose transforms all have a native form (`Transform.native`)
runs instead on the native fused kernel (`gradwise.state.native`): one C call over the same buffers, decoding,
updating and re-quantizing each block while it is in cache, with the same codes as eager quantization of the
values it computes (its float32 update may differ from eager by an ulp, as inductor's does). Other backends,
devices and chains, or a machine without a C compiler, keep the compiled function.

Every step checks that the views are still in place (identity and data pointer), and gathers the buffers
again when they are not (after `load_state_dict`, `model.to`, a change of the parameters with a gradient),
as `gradwise.core.compiled.FlatLayout` does for 32-bit state.
"""

from __future__ import annotations

import importlib
import itertools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.autograd.graph import increment_version

from .compiled import Unsupported, _BucketViews, _fresh, coefficient_pattern, coefficient_slots, fill, first_line_of

__all__ = ["QuantizedLayout", "run_quantized"]

_names = itertools.count()
# Values per compiled call. The intermediates that inductor keeps (decoded and new state, one float32 buffer each)
# are allocated on each call; above glibc's mmap threshold (32 MiB at most) every call maps fresh pages and
# faults them in, which took about a third of the step on 10M values. Chunks of 2^19 values keep them at 2 MiB.
_CHUNK_VALUES = 1 << 19


def _storage() -> Any:
    """gradwise.state.storage (imported on use: it builds on core, which must not import it while loading)."""
    return importlib.import_module("gradwise.state.storage")


def _quantize() -> Any:
    """gradwise.state.quantize, imported on use as `_storage`."""
    return importlib.import_module("gradwise.state.quantize")


class QuantizedLayout(_BucketViews):
    """One bucket's parameters, gradients, codes and block scales as views of flat buffers."""

    def __init__(self, members: list[Tensor], states: list[dict], keys: tuple[tuple[str, bool], ...], block: int,
                 t: float) -> None:
        absmax_suffix = _storage().ABSMAX
        p0 = members[0]
        device = p0.device
        sizes = [p.numel() for p in members]
        offsets, total = [], 0
        for n in sizes:
            offsets.append(total)
            total += -(-n // block) * block
        # one compiled call per chunk of `chunk` blocks, all of one shape: the bucket is padded with empty blocks
        # to a whole number of chunks (see `_CHUNK_VALUES`)
        self.chunk = chunk = max(1, min(total // block, _CHUNK_VALUES // block))
        total = -(-total // (chunk * block)) * chunk * block
        blocks = total // block
        self.members = members
        self.states = states
        self.keys = keys
        self.block = block
        self.t = t
        self.param = torch.zeros(total, dtype=p0.dtype, device=device)
        self.grad = torch.zeros(total, dtype=p0.dtype, device=device)
        self.param.grad = self.grad  # for kernels that read p.grad, as they may in eager
        self.codes = {k: torch.full((total,), _zero_code(signed), dtype=torch.uint8, device=device)
                      for k, signed in keys}
        self.absmax = {k: torch.zeros(blocks, dtype=torch.float32, device=device) for k, _ in keys}
        valid = torch.full((blocks,), block, dtype=torch.int32)
        valid[sum(-(-n // block) for n in sizes):] = 0  # the empty blocks that complete the last chunk
        self.steps = torch.full((len(members),), t, dtype=torch.float32)
        self.grads: list[Tensor] = []
        self.views: dict[str, list[Tensor]] = {"step": []}
        for k, _ in keys:
            self.views[k], self.views[k + absmax_suffix] = [], []
        for i, (p, st, off, n) in enumerate(zip(members, states, offsets, sizes, strict=True)):
            first, count = off // block, -(-n // block)
            valid[first + count - 1] = n - (count - 1) * block
            view = self.param[off : off + n].view(p.shape)
            view.copy_(p.detach())
            p.data = view
            g = self.grad[off : off + n].view(p.shape)
            g.copy_(p.grad)  # type: ignore[arg-type]  # members have a gradient
            p.grad = g
            self.grads.append(g)
            for k, _ in keys:
                codes = self.codes[k][off : off + n].view(p.shape)
                codes.copy_(st[k])
                scales = self.absmax[k][first : first + count]
                scales.copy_(st[k + absmax_suffix])
                st[k], st[k + absmax_suffix] = codes, scales
                self.views[k].append(codes)
                self.views[k + absmax_suffix].append(scales)
            st["step"] = self.steps[i]
            self.views["step"].append(st["step"])
        self.valid_counts = valid.to(device)  # int32, for the native kernel (gradwise.state.native)
        self.native_call: Any = None  # its arguments over these buffers (native.Bound), made on first use
        self.valid = valid.to(device=device, dtype=torch.float32)  # exact: a block holds fewer than 2^24 values
        # what the compiled function receives: (blocks, block) views of the flat buffers, or (blocks, block / 8, 8)
        # when the block is a multiple of 8, so that the codes are read as int32 words (`dequantize_rows`)
        rows = (blocks, block // 8, 8) if block % 8 == 0 else (blocks, block)
        param_rows, grad_rows = self.param.view(rows), self.grad.view(rows)
        code_rows = {k: codes.view(rows) for k, codes in self.codes.items()}
        positions = torch.arange(block, dtype=torch.float32, device=device).view(rows[1:])  # 0, 1, ... in a block
        self.chunks = []  # per chunk: the arguments of the compiled function but the coefficients
        for first in range(0, blocks, chunk):
            part = slice(first, first + chunk)
            param_part, grad_part = param_rows[part], grad_rows[part]
            param_part.grad = grad_part
            self.chunks.append((grad_part, param_part, {k: c[part] for k, c in code_rows.items()},
                                {k: a[part] for k, a in self.absmax.items()}, self.valid[part], positions))
        self.ptrs = [p.data_ptr() for p in members]

    @staticmethod
    def eligible(members: list[Tensor], states: list[dict], block: int) -> tuple[tuple, float] | None:
        """(the quantized keys with their signedness, the common step count) if the bucket can be laid out
        flat, else None."""
        storage = _storage()
        keys = set(states[0])
        coded = sorted(k for k in keys if k != "step" and not k.endswith(storage.ABSMAX))
        if not coded or keys != {"step", *coded, *(k + storage.ABSMAX for k in coded)}:
            return None
        steps = set()
        for p, st in zip(members, states, strict=True):
            if p.dtype != torch.float32 or not p.is_contiguous() or set(st) != keys:
                return None
            step = st["step"]
            if not isinstance(step, Tensor) or step.numel() != 1:
                return None
            steps.add(float(step))
            for k in coded:
                codes, scales = st[k], st[k + storage.ABSMAX]
                if not (isinstance(codes, Tensor) and codes.dtype == torch.uint8 and codes.shape == p.shape
                        and codes.device == p.device and isinstance(scales, Tensor)
                        and scales.dtype == torch.float32 and scales.dim() == 1
                        and scales.numel() == -(-p.numel() // block) and scales.device == p.device):
                    return None
        if len(steps) != 1:
            return None
        return tuple((k, k not in storage.NON_NEGATIVE) for k in coded), steps.pop()


def _zero_code(signed: bool) -> int:
    """The index of the code 0 in the dynamic map: the middle of the signed map, the first of the unsigned."""
    return 127 if signed else 0


def _quantized_chain(kernels: tuple[Callable, ...], maximize: bool, keys: tuple[tuple[str, bool], ...],
                     block: int) -> Callable:
    quantize = _quantize()

    def run_chain_quantized(g: Tensor, p: Tensor, codes: dict, absmax: dict, valid: Tensor, positions: Tensor,
                            cs: tuple) -> None:
        words = g.dim() == 3  # (blocks, block / 8, 8): the codes start on a block boundary, read as int32 words
        # everything is shaped (blocks, ...): the compiled loops run over blocks, one scale per block
        s = {k: quantize.dequantize_rows(codes[k], absmax[k], signed, words) for k, signed in keys}
        u = -g if maximize else g
        for i, kernel in enumerate(kernels):
            u = kernel(u, p, s, cs[i])
        if set(s) != {k for k, _ in keys}:
            raise Unsupported("a kernel added a state tensor")
        # the padding of each parameter reads 0. The positions in a block are an input, loaded as a vector: an arange
        # is rebuilt lane by lane from the loop index in every loop that reads it (int64 masks are slower still)
        inside = positions < valid.view(-1, *(1 for _ in g.shape[1:]))
        for k, signed in keys:
            new_codes, new_absmax = quantize.quantize_rows(torch.where(inside, s[k], 0.0), signed)
            codes[k].copy_(new_codes)
            absmax[k].copy_(new_absmax)

    return run_chain_quantized


class _Quantized:
    """What one CompiledStep keeps for this path: layouts per (group, bucket), compiled functions, slots."""

    def __init__(self) -> None:
        self.layouts: dict[tuple, list[QuantizedLayout]] = {}
        self.functions: dict[tuple, Callable | None] = {}
        self.slots: dict[tuple, list] = {}
        # per chain: its native program (gradwise.state.native.Program), or False where it has no native form
        self.native: dict[tuple, Any] = {}


def _holder(step: Any) -> _Quantized:
    holder = getattr(step, "_gradwise_quantized", None)
    if holder is None:
        holder = step._gradwise_quantized = _Quantized()
    return holder


def run_quantized(step: Any, gi: int, key: tuple, members: list[Tensor], chain: tuple, signature: tuple,
                  storage: Any) -> list[Tensor]:
    """Update the bucket's eligible 8-bit parameters in one compiled call; return the members left for the
    per-parameter path (all of them when the bucket is not eligible or compiling failed)."""
    quantized_storage = _storage().QuantizedStorage
    if type(storage) is not quantized_storage or key[0] != torch.float32 or not chain:
        return members
    if not all(tr.elementwise and tr.kernel is not None for tr in chain):
        return members
    big = [p for p in members if p.numel() >= storage.min_size and p.numel() > 0]
    if not big:
        return members
    rest = [p for p in members if p.numel() < storage.min_size or p.numel() == 0]
    holder = _holder(step)
    state = step.optimizer.state
    cached = holder.layouts.get((gi, key), [])
    if len(cached) == 1 and cached[0].block == storage.block and cached[0].matches(big, state):
        cached[0].attach_grads()
        layouts = cached
    else:  # gather again: one layout per step count (parameters that missed steps count fewer)
        layouts, left = _lay_out(step.optimizer, big, chain, storage, cached)
        rest.extend(left)
        holder.layouts[(gi, key)] = layouts
    for i, layout in enumerate(layouts):
        if not _run_layout(step, holder, gi, key, layout, chain, signature):
            del holder.layouts[(gi, key)]
            return rest + [p for other in layouts[i:] for p in other.members]
    return rest


def _lay_out(optimizer: Any, big: list[Tensor], chain: tuple, storage: Any,
             cached: list[QuantizedLayout]) -> tuple[list[QuantizedLayout], list[Tensor]]:
    """The layouts of `big` (reusing those still in place) and the parameters that cannot be laid out."""
    state = optimizer.state
    by_step: dict[float, list[Tensor]] = {}
    left = []
    for p in big:
        st = state[p]
        if "step" not in st:
            optimizer._init_state(p, st, chain)
            storage.init(p, st)
        step = st["step"]
        if isinstance(step, Tensor) and step.numel() == 1 and p.is_contiguous():  # a transposed view: alone
            by_step.setdefault(float(step), []).append(p)
        else:
            left.append(p)
    layouts = []
    for members in by_step.values():
        reuse = [layout for layout in cached if layout.block == storage.block and layout.matches(members, state)]
        if reuse:
            reuse[0].attach_grads()
            layouts.append(reuse[0])
            continue
        states = [state[p] for p in members]
        found = QuantizedLayout.eligible(members, states, storage.block)
        if found is None:
            left.extend(members)
        else:
            layouts.append(QuantizedLayout(members, states, found[0], storage.block, found[1]))
    return layouts, left


def _native() -> Any:
    """gradwise.state.native, imported on use as `_storage`."""
    return importlib.import_module("gradwise.state.native")


def _run_native(step: Any, holder: _Quantized, gi: int, key: tuple, layout: QuantizedLayout, chain: tuple,
                signature: tuple) -> bool:
    """The step as one call of the native fused kernel (`gradwise.state.native`) under the inductor backend on
    the CPU; False (nothing written) when the kernel is not available or the chain has no native form. The
    chain's program is built once per chain signature, the kernel's arguments once per layout."""
    if step.backend != "inductor" or layout.param.device.type != "cpu":
        return False
    native = _native()
    nkey = (gi, key, signature, layout.keys)
    built = holder.native.get(nkey)
    if built is False or not native.available():
        return False
    try:
        if built is None:
            built = holder.native[nkey] = native.Program(chain, [k for k, _ in layout.keys])
        ops = built.at(chain, layout.t + 1)
        if layout.native_call is None:
            layout.native_call = native.Bound(
                layout.param, layout.grad, [layout.codes[k] for k, _ in layout.keys],
                [layout.absmax[k] for k, _ in layout.keys], [signed for _, signed in layout.keys],
                layout.valid_counts, layout.block)
        layout.native_call(ops, built.count, maximize=bool(signature[0]))
    except native.NativeUnsupported:  # refused before anything is written: inductor's code takes over for good
        holder.native[nkey] = False
        return False
    # written behind torch's back: tell autograd, as an in-place op would (the state's views share their buffer's
    # counter, moved here too)
    increment_version([layout.param, *layout.codes.values(), *layout.absmax.values()])
    _stepped(layout)
    return True


def _stepped(layout: QuantizedLayout) -> None:
    """After a step over the layout: count it, and move the parameters' autograd version counters, which the
    flat buffer's writes do not reach (p.data was re-pointed to a view, which keeps its own counter)."""
    increment_version(layout.members)
    layout.steps.add_(1)
    layout.t += 1


def _run_layout(step: Any, holder: _Quantized, gi: int, key: tuple, layout: QuantizedLayout, chain: tuple,
                signature: tuple) -> bool:
    """One compiled call over the layout's buffers (or one call of the native kernel, `_run_native`); False
    (nothing written) when it cannot run."""
    if _run_native(step, holder, gi, key, layout, chain, signature):
        return True
    try:
        values = [tr.coefficients(layout.t + 1) for tr in chain]
        pattern = coefficient_pattern(values)
    except Unsupported:
        return False
    fkey = (gi, key, signature, pattern, layout.keys, layout.block)
    if fkey not in holder.functions:
        made = _quantized_chain(tuple(tr.kernel for tr in chain), signature[0], layout.keys, layout.block)
        fresh = _fresh(made, f"gradwise_8bit_{key[1].type}_group{gi}_{next(_names)}")
        holder.functions[fkey] = torch.compile(fresh, backend=step.backend, fullgraph=True)
    fn = holder.functions[fkey]
    if fn is None:
        return False
    slots = holder.slots.get(fkey)
    if slots is None:
        slots = holder.slots[fkey] = coefficient_slots(pattern, *key)
    quantize = _quantize()
    for _, signed in layout.keys:  # filled before tracing, the table is a constant of the graph (decoding
        quantize._rounding_table(signed, key[1])  # is arithmetic there: it reads no table)
    coefficients = fill(slots, values)
    first, *rest = layout.chunks
    try:
        fn(*first, coefficients)  # traces and compiles: every chunk has the first one's shapes
    except Exception as error:  # tracing or compiling failed: nothing was written yet
        holder.functions[fkey] = None
        first_line = first_line_of(error)
        step._warn(gi, f"the flat 8-bit path failed to compile ({type(error).__name__}: {first_line})")
        return False
    for chunk in rest:  # outside the fallback: after the first chunk is written, the eager path would step it again
        fn(*chunk, coefficients)
    _stepped(layout)
    return True
