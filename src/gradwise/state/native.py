"""The native fused 8-bit step: a small C kernel that decodes, updates and re-quantizes one block at a time.

The compiled 8-bit path (`gradwise.core.compiled_state`) lays a bucket's parameters, gradients, codes and block
scales out as flat buffers. Under `compile=True` (inductor) its step runs here when every transform of the
chain has a native form (`Transform.native`): the chain becomes a short program of elementwise ops
(`program`), and `_native8bit.c` runs it over each block of the bucket, in strips that stay in the first-level
cache: decode every state key (a code's value is the exact fraction of its decade, (9 m + P_j) / Q_j, times
the block scale: the table's numbers), copy the gradient, run the ops; then zero the padding, take each key's
block absmax and round to the dynamic map without a table (the decade by a binary search over the decades'
starts, the index from the decade's even grid; the table's exact rule, `round_one`, only within 1/2048 of a
step of a tie). Each byte of state is read and written once. inductor's code for the same step re-runs the
update to round it after the block's maximum is known and loads table entries one vector lane at a time; it
took 6-9 times the compiled 32-bit step, this kernel about 3 times (benchmarks/state_speed.py,
benchmarks/native_breakdown.py; the step is bound by the instructions of decoding and rounding).

The kernel is built on first use with the C compiler that torch.compile already needs on the CPU (`$CC`, else
`cc`, `gcc`, `clang`), with `-O3 -march=native` (AVX2 vector code where the CPU has it, else plain C loops), and
kept in a cache directory (`$GRADWISE_CACHE_DIR`, else `$XDG_CACHE_HOME/gradwise`, else `~/.cache/gradwise`;
a private directory under the temporary one where that cannot be written) under a name that hashes the
source, the flags, the compiler and the CPU, so a home directory shared by different machines never runs a
build made for another CPU. Without a compiler (or with
`GRADWISE_NATIVE_8BIT=0`) the step stays with inductor's generated code, which gives the same codes up to a
rare one-step difference on the edge between two codes.

Numbers. Decoding gives the float32 numbers of eager `dequantize_rows`; rounding gives the codes of
`quantize_rows` for the same values (ties between codes are decided on the exact quotient by the same table);
non-finite blocks are handled as there. The transforms' arithmetic is float32 in the order of their torch
kernels, with a fused multiply-add exactly where torch's CPU kernels use one (`add(alpha=)`, `addcmul`,
`lerp`) and nowhere else (`-ffp-contract=off`). The kernel's square root is correctly rounded; torch's eager
float32 sqrt on the CPU is not (`x.sqrt()` against `x.double().sqrt().float()` on 1M uniform values: 16% one ulp
away, torch 2.13 here), so a step
that goes through sqrt may differ from eager by an ulp, and a state value on the edge between two codes may
then round one step the other way, as with inductor's code. Only float32
parameters take this path (the flat 8-bit path's rule), on the CPU.

Threads: the bucket's blocks are split over `torch.get_num_threads()` threads, at most one per 4 blocks (blocks
are independent, so the result does not depend on the count): through torch's own OpenMP runtime where torch
runs on GNU OpenMP (the library is then built with -fopenmp and joins the libgomp torch loaded), else POSIX
threads. A second pool would compete with torch's threads, which keep spinning for a while after each parallel
region.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import importlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["OPS", "Bound", "NativeUnsupported", "Program", "available", "build_error", "disabled", "library", "load",
           "program", "run_program", "set_enabled"]

_SOURCE = Path(__file__).with_name("_native8bit.c")
_FLAGS = ("-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off", "-fPIC", "-shared", "-pthread")
_NATIVE_FLAGS = ("-march=native",)
_OPENMP_FLAGS = ("-fopenmp",)

# the opcodes of _native8bit.c with the number of state keys each reads or writes
OPS: dict[str, tuple[int, int]] = {
    "scale_u": (1, 0),
    "decay_p": (2, 0),
    "decay_g": (3, 0),
    "div_p": (4, 0),
    "lerp": (5, 1),
    "second": (6, 1),
    "belief": (7, 2),
    "max": (8, 2),
    "adam_step": (9, 2),
    "rect_step": (10, 2),
    "sgd_step": (11, 0),
    "nesterov": (12, 2),
    "adan_step": (13, 3),
    "sign_momentum": (14, 1),
    "set": (15, 1),
    "get": (16, 1),
    "heavy_ball": (17, 1),
    "heavy_ball_nesterov": (18, 1),
    "adopt": (19, 2),
    "adopt_clipped": (20, 2),
    "ema": (21, 1),
    "ademamix_step": (22, 3),
    "ademamix_step_decay": (23, 3),
    "bounded_step": (24, 2),
    "friction_step": (25, 3),
}


MAX_THREADS, MAX_KEYS = 256, 16  # GW_MAX_THREADS, GW_MAX_KEYS of the C source
_COEFFICIENTS = 8  # the length of gw_op.k


class NativeUnsupported(Exception):
    """A chain or a layout that the native kernel does not run (the caller keeps inductor's path)."""


class _Op(ctypes.Structure):
    _fields_ = [("op", ctypes.c_int32), ("a", ctypes.c_int32), ("b", ctypes.c_int32), ("c", ctypes.c_int32),
                ("k", ctypes.c_float * _COEFFICIENTS)]


_build_error: str | None = None
_enabled = True


def _cache_dir() -> Path:
    explicit = os.environ.get("GRADWISE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "gradwise"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _cpu_identity() -> str:
    """What decides which instructions a -march=native build may use."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = [line for line in f if line.startswith(("flags", "model name", "Features", "CPU part"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _compile(compiler: str, flags: Sequence[str], target: Path) -> str | None:
    """Build the library into `target`; None on success, else the compiler's message."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([compiler, *flags, str(_SOURCE), "-o", partial], capture_output=True, text=True,
                              timeout=120, check=False)
        if done.returncode != 0:
            return (done.stderr or done.stdout).strip()[-500:] or f"exit status {done.returncode}"
        os.chmod(partial, 0o755)  # mkstemp's file is private: others sharing the cache must be able to load it
        os.replace(partial, target)  # atomic: processes building at once each install a whole file
        return None
    except (OSError, subprocess.SubprocessError) as error:
        return str(error)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def _definitions() -> tuple[str, ...]:
    """The -D flags that give the C source the constants owned by Python: quantize's rounding table and
    friction's 2^x polynomial."""
    quantize = importlib.import_module("gradwise.state.quantize")  # the package exports a function of that name
    from ..transforms.friction import EXP2_FRACTION

    return (f"-DGW_SHIFT={quantize._SHIFT}", f"-DGW_LOWEST={quantize._LOWEST}", f"-DGW_BUCKETS={quantize._BUCKETS}",
            f"-DGW_SIGNED_ZERO={quantize._SIGNED_ZERO}",
            "-DGW_EXP2_FRACTION={" + ",".join(f"{c!r}f" for c in EXP2_FRACTION) + "}")


def load(flags: Sequence[str]) -> tuple[Any | None, str | None]:
    """(the kernel built with `flags` and loaded through ctypes, None) or (None, why not). Builds into the cache
    directory unless a build with the same source, flags, compiler and CPU is there."""
    compiler = _compiler()
    if compiler is None:
        return None, "no C compiler found ($CC, cc, gcc, clang)"
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30,
                                 check=False).stdout
    except (OSError, subprocess.SubprocessError) as error:
        return None, f"{compiler} --version failed: {error}"
    flags = (*flags, *_definitions())
    digest = hashlib.sha256()
    for part in (_SOURCE.read_bytes(), repr(tuple(flags)).encode(), compiler.encode(), version.encode(),
                 _cpu_identity().encode(), platform.machine().encode()):
        digest.update(part)
    name = f"native8bit-{digest.hexdigest()[:20]}.so"
    # the cache directory, else (not writable: a read-only home) a private one in the temporary directory
    fallback = Path(tempfile.gettempdir()) / f"gradwise-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    for directory in (_cache_dir(), fallback):
        target = directory / name
        if target.exists():
            break
        try:
            failed = _compile(compiler, flags, target)
        except OSError as error:  # the directory cannot be made or written
            failed = f"{directory}: {error}"
            continue
        if failed is not None:
            return None, failed
        break
    else:
        return None, failed
    try:
        lib = ctypes.CDLL(str(target))
    except OSError as error:
        return None, str(error)
    lib.gw8_step.restype = ctypes.c_int
    lib.gw8_step.argtypes = [
        ctypes.POINTER(_Op), ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32,
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p, ctypes.c_int64,
        ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32,
    ]
    lib.gw8_vectorised.restype = ctypes.c_int
    lib.gw8_vectorised.argtypes = []
    lib.gw8_openmp.restype = ctypes.c_int
    lib.gw8_openmp.argtypes = []
    return lib, None


def _torch_openmp() -> bool:
    """Whether torch runs its threads on GNU OpenMP loaded under the name a -fopenmp build asks for: a
    `libgomp.so.1` among the process's mapped files (Linux), which the build's dependency then resolves to,
    joining that runtime instead of starting a second one. (A torch that bundles a renamed copy,
    libgomp-<hash>.so.1, would not be joined: the build then uses POSIX threads.)"""
    if "OpenMP" not in torch.__config__.parallel_info():
        return False
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            return any(os.path.basename(line.split()[-1]) == "libgomp.so.1" for line in f if "/" in line)
    except OSError:
        return False


@functools.cache
def library() -> Any | None:
    """The kernel (ctypes), built on first use with -march=native (without it where the compiler refuses);
    None when it cannot be had (`build_error` says why) or is switched off (GRADWISE_NATIVE_8BIT=0)."""
    global _build_error
    if os.environ.get("GRADWISE_NATIVE_8BIT", "1").strip().lower() in ("0", "false", "no", "off"):
        _build_error = "switched off by GRADWISE_NATIVE_8BIT"
        return None
    errors = []
    for flags in ((*_FLAGS, *_OPENMP_FLAGS, *_NATIVE_FLAGS), (*_FLAGS, *_NATIVE_FLAGS), _FLAGS):
        if _OPENMP_FLAGS[0] in flags and not _torch_openmp():
            continue
        lib, error = load(flags)
        if lib is not None:
            _build_error = None
            return lib
        errors.append(str(error))
    _build_error = "; ".join(errors)[-1000:]
    return None


def set_enabled(flag: bool) -> bool:
    """Let the compiled 8-bit step use the native kernel (True, the default) or keep inductor's generated code
    (False), for this process; returns the previous setting. The two give the same codes up to a rare one-step
    difference (see the module's docstring)."""
    global _enabled
    previous, _enabled = _enabled, bool(flag)
    return previous


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """`set_enabled(False)` inside the block, the previous setting after it."""
    previous = set_enabled(False)
    try:
        yield
    finally:
        set_enabled(previous)


def available() -> bool:
    """Whether the compiled 8-bit step runs on the native kernel: enabled, and the kernel builds here."""
    return _enabled and library() is not None


def build_error() -> str | None:
    """Why `library()` is None (after it was asked for), else None."""
    return _build_error


def _number(value: Any) -> float:
    if isinstance(value, Tensor) and value.numel() != 1:
        raise NativeUnsupported("a coefficient that is not a scalar")
    try:
        return float(value)
    except (TypeError, ValueError) as error:  # None, or an object that is not a number
        raise NativeUnsupported(f"a coefficient that is not a number: {value!r}") from error


class Program:
    """A chain as the kernel's ops, built once per chain structure: op codes and state slots fixed, coefficients
    refilled each step from that step's chain (`at`; a chain is rebuilt each step and may carry new numbers,
    e.g. Adan's clipping factor). Raises NativeUnsupported when a transform has no native form or does not fit
    the layout's keys."""

    def __init__(self, chain: Sequence[Any], keys: Sequence[str]) -> None:
        slot = {key: i for i, key in enumerate(keys)}
        self.positions = []  # the chain's transforms that are ops (identities are left out)
        structure = []
        for i, tr in enumerate(chain):
            native = getattr(tr, "native", None)
            if native is None:
                raise NativeUnsupported("a transform without a native form")
            name, *names = native
            if name == "identity":
                continue
            if name not in OPS:
                raise NativeUnsupported(f"unknown native op {name!r}")
            code, count = OPS[name]
            if len(names) != count or any(k not in slot for k in names):
                raise NativeUnsupported(f"native op {name!r}: state keys {names} not in the layout")
            self.positions.append(i)
            structure.append((code, *[slot[k] for k in names], *[-1] * (3 - len(names))))
        self.count = len(structure)
        self.ops = (_Op * max(1, self.count))()
        for op, (code, a, b, c) in zip(self.ops, structure, strict=False):
            op.op, op.a, op.b, op.c = code, a, b, c

    def at(self, chain: Sequence[Any], t: float) -> Any:
        """The ops array with the coefficients of `chain` (of this program's structure) at step `t`; the array
        is reused, so one program runs at a time."""
        for op, i in zip(self.ops, self.positions, strict=False):
            tr = chain[i]
            values = [_number(v) for v in (tr.coefficients(t) if tr.coefficients is not None else ())]
            if len(values) > _COEFFICIENTS:
                raise NativeUnsupported(f"native op {tr.native[0]!r}: more than {_COEFFICIENTS} coefficients")
            op.k[:] = values + [0.0] * (_COEFFICIENTS - len(values))
        return self.ops


def program(chain: Sequence[Any], keys: Sequence[str], t: float) -> tuple[Any, int]:
    """The chain's ops for step `t` as a ctypes array (one `_Op` per op) and their count, its state keys mapped
    to the slots of `keys` (`Program` built and filled once)."""
    built = Program(chain, keys)
    return built.at(chain, t), built.count


@functools.cache
def _tables() -> tuple[Tensor, ...]:
    """(decode unsigned, decode signed, round unsigned, round signed, codec unsigned, codec signed) on the CPU:
    the 256 code values, the packed rounding tables, and the kernel's `gw_codec` (see the C source): per decade
    its first midpoint, P_j and Q_j, the same at the slots of m's float exponent, the rounding grid's slope and
    offset, and its last magnitude index."""
    quantize = importlib.import_module("gradwise.state.quantize")  # the package exports a function of that name
    cpu = torch.device("cpu")
    codecs = []
    for signed in (False, True):
        _, midpoints = quantize._tables(signed, cpu)
        positive = midpoints[midpoints > 0]  # between magnitude indices k and k + 1
        decades = quantize._DECADES[signed]
        start = [float(positive[int(first) - 1]) for first, _, _ in decades]
        p = [p for _, p, _ in decades]
        q = [q for _, _, q in decades]
        unused = 8 - len(decades)
        start32 = torch.tensor([*start, *[math.inf] * unused], dtype=torch.float32)
        p32 = torch.tensor([*p, *[math.nan] * unused], dtype=torch.float32)
        q32 = torch.tensor([*q, *[1.0] * unused], dtype=torch.float32)
        slot = [(j + 7) % 8 for j in range(8)]  # decade j at the low 3 bits of 127 + j
        rotated_p, rotated_q = torch.empty(8), torch.empty(8)
        rotated_p[slot], rotated_q[slot] = p32, q32
        slope, offset = q32 / 9.0, 0.5 - p32 / 9.0  # float32 arithmetic
        slope[0] = 1.0 / (start32[1] - start32[0])  # decade 0 (the index 1 alone): its starts on 1 and 2
        offset[0] = 1.0 - start32[0] * slope[0]
        high = torch.tensor([2 ** (j + 1) - 1 for j in range(8)], dtype=torch.int32).view(torch.float32)
        codecs.append(torch.cat([start32, p32, q32, rotated_p, rotated_q, slope, offset, high]))
    return (quantize._lookup(False, cpu).contiguous(), quantize._lookup(True, cpu).contiguous(),
            quantize._rounding_table(False, cpu).contiguous(), quantize._rounding_table(True, cpu).contiguous(),
            *codecs)


class Bound:
    """The kernel's arguments for one set of buffers, checked and packed once (a layout's buffers stay in place):
    flat float32 `param` and `grad` (a whole number of blocks), the flat uint8 `codes` and float32 `absmax` of
    each state key, and `valid` (int32, one per block: each block's values before its padding; 0, an empty
    block, left alone). Empty blocks at the end are not handed to the kernel at all, so that they take no
    thread's share. `lib`: a kernel from `load` instead of `library()`."""

    def __init__(self, param: Tensor, grad: Tensor, codes: Sequence[Tensor], absmax: Sequence[Tensor],
                 signed: Sequence[bool], valid: Tensor, block: int, lib: Any = None) -> None:
        self.lib: Any = library() if lib is None else lib
        if self.lib is None:
            raise NativeUnsupported(f"the native 8-bit kernel is not available: {_build_error}")
        n = param.numel()
        blocks = n // block
        for name, tensor, dtype, size in (("param", param, torch.float32, n), ("grad", grad, torch.float32, n),
                                          ("valid", valid, torch.int32, blocks)):
            if tensor.dtype != dtype or tensor.device.type != "cpu" or not tensor.is_contiguous() \
                    or tensor.numel() != size:
                raise NativeUnsupported(f"{name}: needs a contiguous {dtype} CPU tensor of {size} values")
        if blocks * block != n or len(codes) != len(absmax) or len(codes) != len(signed) \
                or not 1 <= len(codes) <= MAX_KEYS:
            raise NativeUnsupported("the buffers do not form whole blocks of every key")
        for c, a in zip(codes, absmax, strict=True):
            if c.dtype != torch.uint8 or c.numel() != n or not c.is_contiguous() or a.dtype != torch.float32 \
                    or a.numel() != blocks or not a.is_contiguous() or c.device.type != "cpu":
                raise NativeUnsupported("codes and scales must be contiguous CPU uint8 / float32 buffers")
        filled = valid.nonzero()
        self.blocks = int(filled[-1]) + 1 if len(filled) else 0  # up to the last block that holds values
        self.block, self.keys = block, len(codes)
        self.tensors = (param, grad, valid, *codes, *absmax)  # kept alive while their pointers are
        self.code_ptrs = (ctypes.c_void_p * len(codes))(*(c.data_ptr() for c in codes))
        self.scale_ptrs = (ctypes.c_void_p * len(absmax))(*(a.data_ptr() for a in absmax))
        self.flags = (ctypes.c_int32 * len(signed))(*(1 if s else 0 for s in signed))
        self.pointers = (param.data_ptr(), grad.data_ptr())
        self.scratch = torch.empty(0)

    def __call__(self, ops: Any, count: int, maximize: bool, threads: int | None = None) -> None:
        """One step of the ops (from `Program.at`) over the buffers, in place."""
        wanted = threads if threads is not None else torch.get_num_threads()
        threads = max(1, min(wanted, MAX_THREADS, self.blocks // 4))
        size = threads * (self.keys + 1) * self.block
        if self.scratch.numel() < size:
            self.scratch = torch.empty(size, dtype=torch.float32)
        status = self.lib.gw8_step(ops, count, *self.pointers, 1 if maximize else 0,
                                   ctypes.cast(self.code_ptrs, ctypes.c_void_p),
                                   ctypes.cast(self.scale_ptrs, ctypes.c_void_p),
                                   ctypes.cast(self.flags, ctypes.c_void_p), self.keys,
                                   self.tensors[2].data_ptr(), self.blocks, self.block,
                                   *(t.data_ptr() for t in _tables()), self.scratch.data_ptr(), threads)
        if status != 0:
            raise NativeUnsupported("the native 8-bit kernel refused its arguments")


def run_program(ops: Any, nops: int, param: Tensor, grad: Tensor, codes: Sequence[Tensor],
                absmax: Sequence[Tensor], signed: Sequence[bool], valid: Tensor, block: int, maximize: bool,
                threads: int | None = None, lib: Any = None) -> None:
    """One step of `ops` over the buffers, in place (`Bound` built for this call)."""
    Bound(param, grad, codes, absmax, signed, valid, block, lib)(ops, nops, maximize, threads)
