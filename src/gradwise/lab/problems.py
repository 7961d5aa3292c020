"""The lab's problems: small, offline, deterministic given a seed.

A `Problem` declares how long it trains (`steps`), how often it is evaluated (`eval_every`), the
learning-rate range every optimizer is tuned over (`lr_range`, log-uniform), the metric the tuner
minimises (`objective`) and the metric the target is set on (`target`, with `higher_is_better`).
`problem.instance(seed)` builds a fresh model and data stream; the seed fixes the initialisation, the
mini-batch order and, for the 2-D functions, a small jitter of the starting point. Data come from
scikit-learn's bundled sets (never downloaded) and are split once, with a fixed seed, into train /
validation / test: the tuner sees validation loss, the report shows test accuracy.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

SPLIT_SEED = 20240607  # fixes the train / validation / test split of every data set, whatever the run seed


class Instance:
    """One problem built for one seed: a model, the loss of step k's batch, and an evaluation."""

    model: nn.Module

    def train_loss(self, step: int) -> Tensor:
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        raise NotImplementedError

    def point(self) -> tuple[float, float] | None:
        """The current (x, y) of a 2-D function; None for other problems."""
        return None


@dataclass(frozen=True)
class Problem:
    """A benchmark problem; see the module docstring for the fields' meaning."""

    name: str
    description: str
    kind: str  # "function" (2-D test function), "classification" or "language-model"
    steps: int
    eval_every: int
    lr_range: tuple[float, float]
    objective: str  # metric the tuner minimises (its final value)
    target: str  # metric the time-to-target is measured on
    higher_is_better: bool
    build: Callable[[int], Instance] = field(repr=False, compare=False)
    weight_decay: float = 0.0  # used when weight decay is not tuned (grokking needs some to happen at all)
    goal: float | None = None  # a fixed target for `target` (grokking: 95 % validation accuracy); None: AdamW's
    extra_metrics: tuple[str, ...] = ()

    def instance(self, seed: int) -> Instance:
        torch.manual_seed(seed)
        return self.build(seed)

    @property
    def metrics(self) -> tuple[str, ...]:
        base = ("loss",) if self.kind == "function" else ("loss", "val_loss", "test_loss", "accuracy")
        return base + self.extra_metrics


# -- 2-D test functions ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Surface:
    """A 2-D function with its minimum, a starting point and the window its plots show."""

    f: Callable[[Tensor, Tensor], Tensor]
    start: tuple[float, float]
    minimum: tuple[float, float]
    window: tuple[float, float, float, float]  # x_min, x_max, y_min, y_max
    jitter: float = 0.05


class Point(nn.Module):
    def __init__(self, xy: Tensor) -> None:
        super().__init__()
        self.xy = nn.Parameter(xy)


class FunctionInstance(Instance):
    model: Point

    def __init__(self, surface: Surface, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        start = torch.tensor(surface.start) + surface.jitter * torch.randn(2, generator=g)
        self.surface = surface
        self.model = Point(start)

    def train_loss(self, step: int) -> Tensor:
        x, y = self.model.xy.unbind()
        return self.surface.f(x, y)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        x, y = self.model.xy.unbind()
        return {"loss": float(self.surface.f(x, y))}

    def point(self) -> tuple[float, float]:
        x, y = self.model.xy.tolist()
        return (x, y)


def rosenbrock(x: Tensor, y: Tensor) -> Tensor:
    """(1 - x)^2 + 100 (y - x^2)^2: a curved valley, minimum 0 at (1, 1)."""
    return (1 - x) ** 2 + 100 * (y - x * x) ** 2


def beale(x: Tensor, y: Tensor) -> Tensor:
    """(1.5 - x + xy)^2 + (2.25 - x + xy^2)^2 + (2.625 - x + xy^3)^2: flat plateaus, minimum 0 at (3, 0.5)."""
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def rastrigin(x: Tensor, y: Tensor) -> Tensor:
    """20 + sum(z^2 - 10 cos(2 pi z)): a grid of local minima, global minimum 0 at (0, 0)."""
    tau = 2 * math.pi
    return 20 + x * x - 10 * torch.cos(tau * x) + y * y - 10 * torch.cos(tau * y)


def belief_abs(x: Tensor, y: Tensor) -> Tensor:
    """|x| + |y|: AdaBelief paper, Fig. 3 (a); gradients of constant size, minimum 0 at (0, 0)."""
    return x.abs() + y.abs()


def belief_skew_abs(x: Tensor, y: Tensor) -> Tensor:
    """|x + y| + |x - y| / 10: AdaBelief paper, Fig. 3 (b); a skewed, non-smooth valley."""
    return (x + y).abs() + (x - y).abs() / 10


def belief_skew_quadratic(x: Tensor, y: Tensor) -> Tensor:
    """(x + y)^2 + (x - y)^2 / 10: AdaBelief paper, Fig. 3 (c); an ill-conditioned quadratic."""
    return (x + y) ** 2 + (x - y) ** 2 / 10


SURFACES: dict[str, tuple[Surface, str]] = {
    "rosenbrock": (Surface(rosenbrock, (-1.5, 2.0), (1.0, 1.0), (-2.0, 2.0, -1.0, 3.0)),
                   "Rosenbrock's banana valley (2-D)"),
    "beale": (Surface(beale, (1.0, 1.0), (3.0, 0.5), (-1.0, 4.5, -1.5, 2.0)),
              "Beale's function: plateaus and steep walls (2-D), start (1, 1) as in Moré et al. 1981"),
    "rastrigin": (Surface(rastrigin, (-2.3, 2.6), (0.0, 0.0), (-3.5, 3.5, -3.5, 3.5)),
                  "Rastrigin's function: many local minima (2-D)"),
    "belief-abs": (Surface(belief_abs, (-1.5, 1.0), (0.0, 0.0), (-2.0, 2.0, -2.0, 2.0)),
                   "|x| + |y| (AdaBelief paper toy function a)"),
    "belief-skew-abs": (Surface(belief_skew_abs, (-1.5, 1.0), (0.0, 0.0), (-2.0, 2.0, -2.0, 2.0)),
                        "|x + y| + |x - y| / 10 (AdaBelief paper toy function b)"),
    "belief-quadratic": (Surface(belief_skew_quadratic, (-1.5, 1.0), (0.0, 0.0), (-2.0, 2.0, -2.0, 2.0)),
                         "(x + y)^2 + (x - y)^2 / 10 (AdaBelief paper toy function c)"),
}


def _function_problem(name: str, steps: int = 200) -> Problem:
    surface, description = SURFACES[name]
    return Problem(
        name=name, description=description, kind="function", steps=steps, eval_every=1,
        lr_range=(1e-4, 1.0), objective="loss", target="loss", higher_is_better=False,
        build=functools.partial(FunctionInstance, surface),
    )


# -- 1-D test functions of the diffGrad paper ------------------------------------------------------------
@dataclass(frozen=True)
class Curve:
    """A 1-D function with its global minimum, a starting point and the x-range its plots show."""

    f: Callable[[Tensor], Tensor]
    start: float
    minimum: float
    window: tuple[float, float]
    jitter: float = 0.02


class Scalar(nn.Module):
    def __init__(self, x: Tensor) -> None:
        super().__init__()
        self.x = nn.Parameter(x)


class CurveInstance(Instance):
    model: Scalar

    def __init__(self, curve: Curve, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        start = torch.tensor([curve.start]) + curve.jitter * torch.randn(1, generator=g)
        self.curve = curve
        self.model = Scalar(start)

    def train_loss(self, step: int) -> Tensor:
        return self.curve.f(self.model.x).sum()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        return {"loss": float(self.curve.f(self.model.x).sum())}

    def point(self) -> tuple[float, float]:
        """(x, f(x)): a 1-D run's path is drawn on the graph of f."""
        with torch.no_grad():
            return (float(self.model.x[0]), float(self.curve.f(self.model.x).sum()))


def diffgrad_f1(x: Tensor) -> Tensor:
    """(x + 0.3)^2 for x <= 0, (x - 0.2)^2 + 0.05 for x > 0: diffGrad paper, F1; global minimum 0 at
    x = -0.3, a local minimum 0.05 at x = 0.2."""
    return torch.where(x <= 0, (x + 0.3) ** 2, (x - 0.2) ** 2 + 0.05)


def diffgrad_f2(x: Tensor) -> Tensor:
    """-40 x - 35.15 for x <= -0.9, x^3 + x sin(8x) + 0.85 for x > -0.9: diffGrad paper, F2 (the definition of the
    toy functions' code published by the same group with AngularGrad, analytical/main.py; its F1 and F3 are the
    ones here). A steep linear slope on the left drops into a wiggly cubic: global minimum about 0.0001 at
    x = -0.6429, local minima 0.85 at x = 0 and 0.465 at x = 0.588; the two pieces meet at -0.9 with a small
    step (0.85 against 0.835)."""
    return torch.where(x <= -0.9, -40 * x - 35.15, x**3 + x * torch.sin(8 * x) + 0.85)


def diffgrad_f3(x: Tensor) -> Tensor:
    """diffGrad paper, F3: x^2 for |x| >= 0.5, 0.75 - |x| for 0.4 <= |x| < 0.5, 7|x|/8 for |x| < 0.4 (the
    slopes of the authors' notebook, diffGrad_analytical.ipynb); global minimum 0 at x = 0, local minima
    0.25 at x = +-0.5 behind bumps of height 0.35 at x = +-0.4."""
    a = x.abs()
    return torch.where(a >= 0.5, x * x, torch.where(a >= 0.4, 0.75 - a, 0.875 * a))


CURVES: dict[str, tuple[Curve, str]] = {
    "diffgrad-f1": (Curve(diffgrad_f1, -1.0, -0.3, (-1.2, 1.0)),
                    "diffGrad paper F1 (1-D): (x + 0.3)^2 left of 0, (x - 0.2)^2 + 0.05 right of it; start -1"),
    "diffgrad-f2": (Curve(diffgrad_f2, -1.0, -0.6429, (-1.2, 1.0)),
                    "diffGrad paper F2 (1-D): a slope of -40 left of -0.9, x^3 + x sin(8x) + 0.85 right of it; "
                    "global minimum at -0.643, local minima at 0 and 0.588; start -1"),
    "diffgrad-f3": (Curve(diffgrad_f3, -1.0, 0.0, (-1.2, 1.2)),
                    "diffGrad paper F3 (1-D): a V-shaped global minimum at 0 between two local minima at "
                    "+-0.5; start -1"),
}


def _curve_problem(name: str, steps: int = 300) -> Problem:
    curve, description = CURVES[name]
    return Problem(
        name=name, description=description, kind="function", steps=steps, eval_every=1,
        lr_range=(1e-3, 1.0), objective="loss", target="loss", higher_is_better=False,
        build=functools.partial(CurveInstance, curve),
    )


# -- classification on scikit-learn's bundled data --------------------------------------------------
@functools.cache
def dataset(name: str) -> dict[str, Tensor]:
    """A bundled scikit-learn data set split 60 / 20 / 20 with a fixed seed; features standardised."""
    from sklearn import datasets  # imported here: scikit-learn is a lab-only dependency

    loaders = {"digits": datasets.load_digits, "cancer": datasets.load_breast_cancer}
    if name not in loaders:
        raise ValueError(f"dataset={name!r} is not bundled: choose one of {sorted(loaders)}")
    bunch = loaders[name]()
    x = torch.tensor(bunch.data, dtype=torch.float32)
    y = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    x, y = x[order], y[order]
    n_train, n_val = int(0.6 * len(y)), int(0.2 * len(y))
    train = slice(0, n_train)
    mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-6)
    if name == "digits":  # pixels: one scale for the whole image keeps the 8x8 layout meaningful
        mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    parts = {"train": train, "val": slice(n_train, n_train + n_val), "test": slice(n_train + n_val, None)}
    out = {}
    for part, where in parts.items():
        out[f"x_{part}"], out[f"y_{part}"] = x[where].contiguous(), y[where].contiguous()
    out["classes"] = torch.tensor(int(y.max()) + 1)
    return out


class ClassificationInstance(Instance):
    def __init__(self, data: str, make_model: Callable[[int, int], nn.Module], batch_size: int,
                 seed: int, image: bool = False, train_eval: int | None = None) -> None:
        self.data = dataset(data)
        features, classes = self.data["x_train"].shape[1], int(self.data["classes"])
        self.model = make_model(features, classes)
        self.batch_size = batch_size
        self.image = image
        # The training loss is measured on the first `train_eval` examples of the (shuffled) training split,
        # or on all of it (None): a fixed subset makes a quick-suite evaluation cheaper.
        self.train_eval = slice(0, train_eval)
        self.generator = torch.Generator().manual_seed(seed)
        self.order, self.position = torch.empty(0, dtype=torch.long), 0

    def _inputs(self, x: Tensor) -> Tensor:
        return x.view(-1, 1, 8, 8) if self.image else x

    def train_loss(self, step: int) -> Tensor:
        """The loss of the next mini-batch: epochs of a seeded permutation, the ragged tail dropped."""
        n = len(self.data["y_train"])
        if self.position + self.batch_size > len(self.order):
            self.order, self.position = torch.randperm(n, generator=self.generator), 0
        index = self.order[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        x, y = self.data["x_train"][index], self.data["y_train"][index]
        return F.cross_entropy(self.model(self._inputs(x)), y)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        was_training = self.model.training
        self.model.eval()
        out = {}
        for part, key in (("train", "loss"), ("val", "val_loss"), ("test", "test_loss")):
            where = self.train_eval if part == "train" else slice(None)
            logits = self.model(self._inputs(self.data[f"x_{part}"][where]))
            out[key] = float(F.cross_entropy(logits, self.data[f"y_{part}"][where]))
            if part == "test":
                out["accuracy"] = float((logits.argmax(1) == self.data["y_test"]).float().mean())
        self.model.train(was_training)
        return out


def linear(features: int, classes: int) -> nn.Module:
    return nn.Linear(features, classes)


def mlp(features: int, classes: int) -> nn.Module:
    return nn.Sequential(nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, classes))


def cnn(features: int, classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 8 x 4 x 4
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 16 x 2 x 2
        nn.Flatten(), nn.Linear(64, classes),
    )


def _classification(name: str, description: str, data: str, model: Callable[[int, int], nn.Module],
                    steps: int, image: bool = False, eval_every: int = 20, train_eval: int | None = None) -> Problem:
    def build(seed: int) -> Instance:
        return ClassificationInstance(data, model, 32, seed, image=image, train_eval=train_eval)

    return Problem(
        name=name, description=description, kind="classification", steps=steps, eval_every=eval_every,
        lr_range=(1e-4, 1.0), objective="val_loss", target="accuracy", higher_is_better=True, build=build,
    )


# -- character-level language model -----------------------------------------------------------------
@functools.cache
def corpus() -> dict[str, Tensor]:
    """Python's reference documentation as characters: the `pydoc_data.topics` module of the standard
    library (about 465,000 characters; Python Software Foundation License, the licence of Python's
    documentation), so every Python installation has it offline. Printable ASCII and newline are
    kept (96 symbols), anything else becomes one "unknown" symbol; the first 90 % of the text is
    for training, the next 5 % for validation, the last 5 % for test."""
    from pydoc_data.topics import topics

    text = "".join(topics[key] for key in sorted(topics))
    codes = torch.tensor([ord(c) - 31 if 32 <= ord(c) < 127 else (0 if c == "\n" else 96) for c in text])
    n = len(codes)
    cut1, cut2 = int(0.9 * n), int(0.95 * n)
    return {"train": codes[:cut1], "val": codes[cut1:cut2], "test": codes[cut2:], "vocab": torch.tensor(97)}


class CharTransformer(nn.Module):
    """A small pre-norm causal transformer over characters: learned positions, tied nothing."""

    mask: Tensor

    def __init__(self, vocab: int, context: int, width: int = 64, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.randn(context, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(context), persistent=False)

    def forward(self, codes: Tensor) -> Tensor:
        t = codes.shape[1]
        h = self.embed(codes) + self.position[:t]
        h = self.blocks(h, mask=self.mask[:t, :t], is_causal=True)
        return self.head(self.norm(h))


class LanguageModelInstance(Instance):
    context, batch_size, eval_windows = 64, 16, 64

    def __init__(self, seed: int) -> None:
        self.data = corpus()
        self.model = CharTransformer(int(self.data["vocab"]), self.context)
        self.generator = torch.Generator().manual_seed(seed)
        fixed = torch.Generator().manual_seed(SPLIT_SEED)  # the same evaluation windows for every run
        self.eval_batches = {part: self._windows(part, self.eval_windows, fixed) for part in ("train", "val", "test")}

    def _windows(self, part: str, count: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        codes = self.data[part]
        starts = torch.randint(0, len(codes) - self.context - 1, (count,), generator=generator)
        index = starts[:, None] + torch.arange(self.context + 1)
        windows = codes[index]
        return windows[:, :-1], windows[:, 1:]

    def _loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.model(x)
        return F.cross_entropy(logits.flatten(0, 1), y.flatten()), logits

    def train_loss(self, step: int) -> Tensor:
        return self._loss(*self._windows("train", self.batch_size, self.generator))[0]

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        out = {}
        for part, key in (("train", "loss"), ("val", "val_loss"), ("test", "test_loss")):
            x, y = self.eval_batches[part]
            loss, logits = self._loss(x, y)
            out[key] = float(loss)
            if part == "test":
                out["accuracy"] = float((logits.argmax(-1) == y).float().mean())
        return out


# -- modular-arithmetic grokking ----------------------------------------------------------------------------
@functools.cache
def modular_data(p: int, train_fraction: float, operation: str = "+") -> dict[str, Tensor]:
    """Every pair (a, b) of residues mod p with label (a + b) mod p (or a * b), split once with a fixed seed:
    `train_fraction` of the pairs for training, the rest halved into validation and test."""
    if operation not in ("+", "*"):
        raise ValueError(f"operation={operation!r} is not supported: choose '+' or '*'")
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    y = (a + b) % p if operation == "+" else (a * b) % p
    order = torch.randperm(p * p, generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_train = int(train_fraction * p * p)
    n_val = (p * p - n_train) // 2
    parts = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    out = {}
    for part, index in parts.items():
        out[f"x_{part}"] = torch.stack([a[index], b[index]], 1)
        out[f"y_{part}"] = y[index]
    return out


class PairMLP(nn.Module):
    """Embeds a and b (one shared table), concatenates them and maps them through one hidden ReLU layer to
    the p residues: the MLP form of the Grokfast paper's algorithmic toy."""

    def __init__(self, p: int, width: int, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(p, width)
        self.hidden = nn.Linear(2 * width, hidden)
        self.out = nn.Linear(hidden, p)

    def forward(self, pairs: Tensor) -> Tensor:
        return self.out(F.relu(self.hidden(self.embed(pairs).flatten(1))))


class GrokkingInstance(Instance):
    """Training on the training pairs: full batch (batch_size None; the seed fixes only the initialisation)
    or mini-batches drawn with replacement by a seeded generator."""

    def __init__(self, p: int, train_fraction: float, width: int, hidden: int, seed: int,
                 batch_size: int | None = None) -> None:
        self.data = modular_data(p, train_fraction)
        self.model = PairMLP(p, width, hidden)
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def train_loss(self, step: int) -> Tensor:
        x, y = self.data["x_train"], self.data["y_train"]
        if self.batch_size is not None:
            index = torch.randint(0, len(y), (self.batch_size,), generator=self.generator)
            x, y = x[index], y[index]
        return F.cross_entropy(self.model(x), y)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        out = {}
        for part, key in (("train", "loss"), ("val", "val_loss"), ("test", "test_loss")):
            logits = self.model(self.data[f"x_{part}"])
            out[key] = float(F.cross_entropy(logits, self.data[f"y_{part}"]))
            right = float((logits.argmax(1) == self.data[f"y_{part}"]).float().mean())
            if part == "val":
                out["val_accuracy"] = right
            elif part == "test":
                out["accuracy"] = right
        return out


# Chosen so that grokking shows within a few thousand steps on a CPU. Mini-batches matter: with full-batch
# gradients Grokfast's filter has no fast (noise) component to separate from the slow one, and at these
# sizes we measured no speed-up (lr 1e-3: 95 % not reached by either within 6000 steps, Grokfast behind).
GROKKING: dict[str, Any] = dict(p=47, train_fraction=0.5, width=32, hidden=64, batch_size=64)
GROKKING_WEIGHT_DECAY = 1.0


def _all_problems() -> dict[str, Problem]:
    problems = [_function_problem(name) for name in SURFACES]
    problems += [_curve_problem(name) for name in CURVES]
    problems += [
        _classification("logreg-digits", "logistic regression on digits (64 features, 10 classes)",
                        "digits", linear, 200),
        _classification("logreg-cancer", "logistic regression on breast cancer (30 features, 2 classes)",
                        "cancer", linear, 200),
        _classification("mlp-digits", "MLP 64-64-64-10 (ReLU) on digits", "digits", mlp, 300),
        _classification("mlp-cancer", "MLP 30-64-64-2 (ReLU) on breast cancer", "cancer", mlp, 200),
        _classification("cnn-digits", "two-layer CNN (8, 16 channels) on the 8x8 digit images",
                        "digits", cnn, 300, image=True),
        # The quick suite's versions of the two networks: the same model and data, a third (CNN) or 40 % (MLP) of
        # the steps, evaluated every 10 steps; the CNN's training loss is measured on a fixed 256 of its
        # training images. Tuned AdamW's median test accuracy: 94 % on both (QUICK_VARIANTS).
        _classification("mlp-digits-quick", "MLP 64-64-64-10 (ReLU) on digits, quick-suite length: 120 steps "
                        "(mlp-digits: 300)", "digits", mlp, 120, eval_every=10),
        _classification("cnn-digits-quick", "two-layer CNN (8, 16 channels) on the 8x8 digit images, quick-suite "
                        "length: 100 steps (cnn-digits: 300), training loss on a fixed 256 training images",
                        "digits", cnn, 100, image=True, eval_every=10, train_eval=256),
    ]
    problems.append(Problem(
        name="grokking", description=f"modular addition mod {GROKKING['p']} (Grokfast paper's toy, MLP form: "
        f"embedding {GROKKING['width']}, hidden {GROKKING['hidden']}), {GROKKING['train_fraction']:.0%} of the "
        f"pairs for training, batches of {GROKKING['batch_size']}, weight decay {GROKKING_WEIGHT_DECAY:g}; "
        "target 95 % validation accuracy",
        kind="classification", steps=8000, eval_every=50, lr_range=(3e-4, 3e-2), objective="val_loss",
        target="val_accuracy", higher_is_better=True, weight_decay=GROKKING_WEIGHT_DECAY, goal=0.95,
        extra_metrics=("val_accuracy",),
        build=lambda seed: GrokkingInstance(seed=seed, **GROKKING),
    ))
    problems.append(Problem(
        name="char-lm", description="character-level transformer (2 layers, width 64, context 64) on Python's "
        "reference documentation (pydoc_data, PSF License)", kind="language-model", steps=300, eval_every=25,
        lr_range=(1e-4, 1e-1), objective="val_loss", target="accuracy", higher_is_better=True,
        build=LanguageModelInstance,
    ))
    return {p.name: p for p in problems}


PROBLEMS: dict[str, Problem] = _all_problems()
# Shortened copies of full problems that only the quick suite runs (the standard suite runs the full ones).
QUICK_VARIANTS: dict[str, str] = {"mlp-digits-quick": "mlp-digits", "cnn-digits-quick": "cnn-digits"}


@dataclass(frozen=True)
class Suite:
    """A named selection of problems with its tuning budget and number of seeds."""

    name: str
    problems: tuple[str, ...]
    trials: int
    seeds: int
    tune_weight_decay: bool
    description: str
    variants: tuple[str, ...] = ()  # optimizer variants ("adamw+grokfast") the suite adds to the optimizers


SUITES: dict[str, Suite] = {
    "quick": Suite("quick", ("rosenbrock", "beale", "rastrigin", "belief-abs", "belief-skew-abs",
                             "belief-quadratic", "logreg-cancer", "mlp-digits-quick", "cnn-digits-quick"),
                   trials=10, seeds=3, tune_weight_decay=False,
                   description="minutes on a laptop CPU: every 2-D function, logistic regression and two small "
                               "networks cut to quick-suite length (100-120 steps instead of 300), 10 trials "
                               "(learning rate), 3 seeds; about 30 CPU-seconds per optimizer, report included "
                               "(13 CPU-minutes for 27 optimizers)"),
    "standard": Suite("standard", tuple(p for p in PROBLEMS if p not in QUICK_VARIANTS), trials=30, seeds=10,
                      tune_weight_decay=True,
                      description="every problem, 30 trials (learning rate and weight decay), 10 seeds"),
    "paper": Suite("paper", ("belief-abs", "belief-skew-abs", "belief-quadratic", "diffgrad-f1", "diffgrad-f2",
                             "diffgrad-f3", "grokking", "char-lm"),
                   trials=10, seeds=3, tune_weight_decay=False,
                   description="the problems behind the papers' headline claims; the report says per claim "
                               "whether it held (gradwise.lab.claims)",
                   variants=("adamw+grokfast", "adamw+cautious", "adamw+8bit")),
}


def problem(name: str) -> Problem:
    if name not in PROBLEMS:
        raise ValueError(f"problem={name!r} is unknown: choose from {', '.join(PROBLEMS)}")
    return PROBLEMS[name]


def suite(name: str) -> Suite:
    if name not in SUITES:
        raise ValueError(f"suite={name!r} is unknown: choose from {', '.join(SUITES)}")
    return SUITES[name]
