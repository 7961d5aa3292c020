"""Adafactor against torch.optim.Adafactor (float64, every step) on matrices, vectors, 3-D tensors and scalars."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from oracle_problem import trajectory, worst_relative_difference

import gradwise as gw
from gradwise.optim.adafactor import Adafactor
from gradwise.transforms.factored import clip_by_rms, factored_second_moment, relative_step_size

DT = torch.float64
SHAPES = [(6, 5), (7,), (3, 4, 5), (), (1, 4)]
STEPS = 40


def make_problem(seed=0, dtype=DT):
    """Every SHAPES case with its own target (oracle_problem.trajectory's `problem`): Adafactor's factoring
    depends on the shape, which the shared tanh network does not vary."""
    g = torch.Generator().manual_seed(seed)
    init = [torch.randn(s, generator=g, dtype=dtype) for s in SHAPES]
    targets = [torch.randn(s, generator=g, dtype=dtype) for s in SHAPES]

    def loss_fn(params, step):
        # a gradient that changes from step to step, with different scales per row and column
        total = 0.0
        for p, y in zip(params, targets, strict=True):
            scale = torch.linspace(0.2, 3.0, p.numel(), dtype=dtype).reshape(p.shape) if p.dim() else 1.0
            total = total + (scale * (torch.sin((1 + step % 3) * p) + (p - y) ** 2)).sum()
        return total

    return init, loss_fn


CASES = {
    "defaults": dict(),
    "large_lr_weight_decay": dict(lr=0.05, weight_decay=0.1),
    "loose_clipping_other_decay": dict(lr=0.2, d=2.5, beta2_decay=-0.5, eps=(1e-20, 1e-2)),
    "maximize": dict(lr=0.03, maximize=True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_trajectory_matches_torch_every_step(case):
    hyper = CASES[case]
    ours, init = trajectory(lambda ps: Adafactor(ps, **hyper), STEPS, problem=make_problem)
    theirs, _ = trajectory(lambda ps: torch.optim.Adafactor(ps, **hyper), STEPS, problem=make_problem)
    assert worst_relative_difference(ours, theirs) < 1e-10
    for a, b in zip(theirs[-1], init, strict=True):  # every shape moves well beyond the tolerance
        assert float((a - b).abs().max()) > 1e-3


def test_state_is_factored_for_two_or_more_dimensions():
    params = [torch.nn.Parameter(torch.zeros(s, dtype=DT)) for s in SHAPES]
    opt = Adafactor(params)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    shapes = {tuple(p.shape): {k: tuple(v.shape) for k, v in opt.state[p].items() if k != "step"} for p in params}
    assert shapes[(6, 5)] == {"row_var": (6, 1), "col_var": (1, 5)}
    assert shapes[(3, 4, 5)] == {"row_var": (3, 4, 1), "col_var": (3, 1, 5)}
    assert shapes[(7,)] == {"variance": (7,)}
    assert shapes[()] == {"variance": ()}


def test_factored_estimate_is_exact_for_a_rank_one_square():
    # for g^2 = a b^T the factored estimate R C / mean(R) equals g^2 exactly (at t=1, weight 1)
    a = torch.tensor([1.0, 2.0, 0.5], dtype=DT)
    b = torch.tensor([0.3, 1.0, 4.0, 2.0], dtype=DT)
    u = torch.sqrt(torch.outer(a, b)) * torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=DT)
    transform = factored_second_moment(-0.8, eps1=1e-30)
    p = torch.zeros(3, 4, dtype=DT)
    s = transform.init(p)
    kept = u.clone()
    out = transform.update(u, p, s, 1.0)
    assert torch.equal(u, kept)
    torch.testing.assert_close(out, torch.sign(u), rtol=1e-12, atol=0)


def test_clipping_and_relative_step_transforms():
    u = torch.tensor([3.0, 4.0, 0.0, 0.0], dtype=DT)  # RMS 2.5
    p = torch.full((4,), 0.5, dtype=DT)
    torch.testing.assert_close(clip_by_rms(1.0).update(u, p, {}, 1.0), u / 2.5, rtol=1e-14, atol=0)
    torch.testing.assert_close(clip_by_rms(5.0).update(u, p, {}, 1.0), u, rtol=1e-14, atol=0)
    # alpha_t = max(eps2, RMS(p)) min(lr, 1/sqrt(t))
    torch.testing.assert_close(relative_step_size(1.0, 1e-3).update(u, p, {}, 16.0), u * 0.5 * 0.25)
    torch.testing.assert_close(relative_step_size(0.01, 1e-3).update(u, p, {}, 16.0), u * 0.5 * 0.01)
    torch.testing.assert_close(relative_step_size(0.01, 0.7).update(u, p, {}, 16.0), u * 0.7 * 0.01)


def test_update_clipping_is_active_with_torchs_threshold():
    clipped, _ = trajectory(lambda ps: Adafactor(ps), 20, problem=make_problem)
    free, _ = trajectory(lambda ps: Adafactor(ps, d=1e6), 20, problem=make_problem)
    assert worst_relative_difference(clipped, free) > 1e-3


def test_default_eps1_is_the_machine_epsilon_of_the_dtype():
    for dtype in (torch.float32, torch.float64):
        a = torch.nn.Parameter(torch.zeros(3, 4, dtype=dtype))
        b = torch.nn.Parameter(torch.zeros(3, 4, dtype=dtype))
        eps1 = torch.finfo(dtype).eps
        oa, ob = Adafactor([a]), Adafactor([b], eps=(eps1, 1e-3))
        oc = torch.optim.Adafactor([c := torch.nn.Parameter(torch.zeros(3, 4, dtype=dtype))])
        for _ in range(3):
            for p, o in ((a, oa), (b, ob), (c, oc)):
                p.grad = torch.full_like(p, 1e-9)  # tiny gradients: the floor eps1 decides the step
                o.step()
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c, rtol=1e-5, atol=0)
        assert float(a.detach().abs().max()) > 0


class ReferenceMomentumAdafactor:
    """The paper's Algorithm 4 (factored, matrices only) with the first moment on the clipped update and
    torch's relative step size: the oracle of the beta1 option, which torch does not have."""

    def __init__(self, params, lr, beta1, beta2_decay=-0.8, eps1=1e-30, eps2=1e-3, d=1.0):
        self.params, self.lr, self.beta1, self.decay = list(params), lr, beta1, beta2_decay
        self.eps1, self.eps2, self.d, self.t = eps1, eps2, d, 0
        self.R = [torch.zeros(p.shape[0], 1, dtype=p.dtype) for p in self.params]
        self.C = [torch.zeros(1, p.shape[1], dtype=p.dtype) for p in self.params]
        self.m = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self):
        self.t += 1
        t = self.t
        beta2 = 1 - t**self.decay
        rho = min(self.lr, t**-0.5)
        for i, p in enumerate(self.params):
            g = p.grad
            alpha = max(self.eps2, float(p.pow(2).mean().sqrt())) * rho
            self.R[i] = beta2 * self.R[i] + (1 - beta2) * (g * g).mean(dim=1, keepdim=True)
            self.C[i] = beta2 * self.C[i] + (1 - beta2) * (g * g).mean(dim=0, keepdim=True)
            v = self.R[i] @ self.C[i] / max(float(self.R[i].mean()), self.eps1)
            u = g / torch.sqrt(v.clamp(min=self.eps1**2))
            u = u / max(1.0, float(u.pow(2).mean().sqrt()) / self.d)
            self.m[i] = self.beta1 * self.m[i] + (1 - self.beta1) * u
            p.sub_(alpha * self.m[i])


def test_first_moment_option_matches_the_papers_algorithm():
    g = torch.Generator().manual_seed(4)
    init = [torch.randn(5, 3, generator=g, dtype=DT), torch.randn(2, 6, generator=g, dtype=DT)]
    target = [torch.randn(5, 3, generator=g, dtype=DT), torch.randn(2, 6, generator=g, dtype=DT)]

    def run(make_opt):
        params = [torch.nn.Parameter(w.clone()) for w in init]
        opt = make_opt(params)
        out = []
        for step in range(40):
            for p in params:
                p.grad = None
            pairs = zip(params, target, strict=True)
            loss = sum((torch.cos((1 + step % 2) * p) + (p - y) ** 2).sum() for p, y in pairs)
            loss.backward()
            opt.step()
            out.append([p.detach().clone() for p in params])
        return out

    ours = run(lambda ps: Adafactor(ps, lr=0.05, beta1=0.9, eps=(1e-30, 1e-3)))
    theirs = run(lambda ps: ReferenceMomentumAdafactor(ps, lr=0.05, beta1=0.9))
    plain = run(lambda ps: Adafactor(ps, lr=0.05, eps=(1e-30, 1e-3)))
    assert worst_relative_difference(ours, theirs) < 1e-10
    assert worst_relative_difference(plain, theirs) > 1e-3


def test_registered_with_torchs_defaults_and_one_writing_step():
    assert gw.get("adafactor") is Adafactor
    assert Adafactor.defaults == dict(lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0,
                                      beta1=None)
    assert Adafactor.__doc__ and "arXiv:1804.04235" in Adafactor.__doc__
    opt = Adafactor([torch.nn.Parameter(torch.zeros(2))])
    for beta1 in (None, 0.9):
        chain = opt.chain(SimpleNamespace(**dict(Adafactor.defaults, beta1=beta1)))
        assert [t.writes for t in chain].count(True) == 1 and chain[-1].writes


@pytest.mark.parametrize(
    "name, value, error",
    [("eps", 1e-3, ValueError), ("eps", (None,), ValueError), ("eps", (-1.0, 1e-3), ValueError),
     ("eps", (None, float("nan")), ValueError), ("eps", ("a", 1e-3), TypeError), ("d", 0.5, ValueError),
     ("beta2_decay", 0.1, ValueError), ("beta1", 1.0, ValueError), ("lr", -1.0, ValueError),
     ("weight_decay", -0.1, ValueError)],
)
def test_bad_hyper_parameters_are_refused_with_their_name(name, value, error):
    with pytest.raises(error, match=name):
        Adafactor([torch.nn.Parameter(torch.zeros(2))], **{name: value})


def test_eps_pair_accepts_lists_and_stores_a_tuple():
    opt = Adafactor([torch.nn.Parameter(torch.zeros(2))], eps=[None, 1e-2])
    assert opt.param_groups[0]["eps"] == (None, 1e-2)


def _train_compiled(make_opt, shapes, steps, seed=1):
    """`steps` steps of a seeded problem on parameters of `shapes`; the parameters after each step."""
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=g, dtype=DT)) for s in shapes]
    targets = [torch.randn(s, generator=g, dtype=DT) for s in shapes]
    opt = make_opt(params)
    out = []
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = sum(((1 + i + step % 3) * torch.sin(p) * p + (p - y) ** 2).sum()
                   for i, (p, y) in enumerate(zip(params, targets, strict=True)))
        loss.backward()
        opt.step()
        out.append([p.detach().clone() for p in params])
    return out, opt, params


VECTORS = [(7,), (33,), (), (16,), (1,)]


@pytest.mark.parametrize("hyper", [dict(), dict(lr=0.05, weight_decay=0.1, d=2.5, eps=(1e-20, 1e-2)),
                                   dict(lr=0.03, beta1=0.9, maximize=True)])
def test_compiled_vectors_run_flat_and_match_eager_and_torch(hyper):
    """A bucket of vectors and scalars (full second moment) runs as one flat call; the numbers are eager's and,
    without beta1, torch's, over 40 float64 steps; state_dict keeps torch's per-parameter format."""
    flat, opt, params = _train_compiled(lambda ps: Adafactor(ps, compile="eager", **hyper), VECTORS, STEPS)
    eager, ref, _ = _train_compiled(lambda ps: Adafactor(ps, **hyper), VECTORS, STEPS)
    layouts = list(opt._compiled.layouts.values())
    assert len(layouts) == 1 and layouts[0].members == params
    assert worst_relative_difference(flat, eager) < 1e-12
    if "beta1" not in hyper:
        theirs, _, _ = _train_compiled(lambda ps: torch.optim.Adafactor(ps, **hyper), VECTORS, STEPS)
        assert worst_relative_difference(flat, theirs) < 1e-10
    ours, expected = opt.state_dict()["state"], ref.state_dict()["state"]
    for i, shape in enumerate(VECTORS):
        assert ours[i].keys() == expected[i].keys()
        assert ours[i]["variance"].shape == shape
        torch.testing.assert_close(ours[i]["variance"], expected[i]["variance"], rtol=1e-12, atol=0)


MIXED = {
    "unaligned": SHAPES,  # rows of 5 and 4 elements: the bucket runs per parameter (see FlatLayout.eligible)
    "aligned": [(4, 16), (7,), (2, 3, 32), (), (32, 48), (16,)],  # blocks of 16; a vector's block half padding
}


@pytest.mark.filterwarnings("ignore:.*0-dim float64")  # per parameter, the 0-dim float64 parameter runs eagerly
@pytest.mark.parametrize("shapes", list(MIXED))
@pytest.mark.parametrize("hyper", [dict(), dict(lr=0.05, weight_decay=0.1, d=2.5, eps=(1e-20, 1e-2), beta1=0.9),
                                   dict(lr=0.03, maximize=True, beta2_decay=-0.5)])
def test_compiled_matrices_run_flat_with_factored_state(shapes, hyper):
    """Matrices, 3-D tensors, vectors and scalars in one flat call (row and column factors in two buffers) when
    every matrix's rows are a multiple of ALIGN long, else per parameter: the numbers are eager's and, without
    beta1, torch's, over 40 float64 steps; state_dict keeps torch's format."""
    aligned = shapes == "aligned"
    shapes = MIXED[shapes]
    flat, opt, params = _train_compiled(lambda ps: Adafactor(ps, compile="eager", **hyper), shapes, STEPS)
    eager, ref, _ = _train_compiled(lambda ps: Adafactor(ps, **hyper), shapes, STEPS)
    layouts = list(opt._compiled.layouts.values())
    assert len(layouts) == aligned and all(layout.members == params for layout in layouts)
    assert worst_relative_difference(flat, eager) < 1e-10  # sums in another order
    if "beta1" not in hyper:
        theirs, _, _ = _train_compiled(lambda ps: torch.optim.Adafactor(ps, **hyper), shapes, STEPS)
        assert worst_relative_difference(flat, theirs) < 1e-10
    ours, expected = opt.state_dict()["state"], ref.state_dict()["state"]
    for i in range(len(shapes)):
        assert ours[i].keys() == expected[i].keys()
        for key, value in expected[i].items():
            assert ours[i][key].shape == value.shape
            torch.testing.assert_close(ours[i][key], value, rtol=1e-10, atol=0)


def test_compiled_flat_factored_state_dict_resumes_as_uninterrupted():
    shapes = MIXED["aligned"]
    whole, _, _ = _train_compiled(lambda ps: Adafactor(ps, compile="eager"), shapes, 12)
    _, opt, params = _train_compiled(lambda ps: Adafactor(ps, compile="eager"), shapes, 6)
    state = opt.state_dict()
    resumed = Adafactor(params, compile="eager")
    resumed.load_state_dict(state)
    g = torch.Generator().manual_seed(1)
    [torch.randn(s, generator=g, dtype=DT) for s in shapes]  # the initial values: _train_compiled's stream
    targets = [torch.randn(s, generator=g, dtype=DT) for s in shapes]
    for step in range(6, 12):
        resumed.zero_grad(set_to_none=True)
        loss = sum(((1 + i + step % 3) * torch.sin(p) * p + (p - y) ** 2).sum()
                   for i, (p, y) in enumerate(zip(params, targets, strict=True)))
        loss.backward()
        resumed.step()
    assert len(resumed._compiled.layouts) == 1
    assert worst_relative_difference([[p.detach() for p in params]], [whole[-1]]) < 1e-10


@pytest.mark.filterwarnings("ignore:.*0-dim float64")
def test_compiled_cautious_adafactor_keeps_the_flat_path_with_factored_state():
    """The cautious option wraps the chain in one transform, which must carry the factored tag on: the aligned
    bucket still runs as one flat call, with eager's numbers."""
    shapes = MIXED["aligned"]
    flat, opt, params = _train_compiled(lambda ps: Adafactor(ps, compile="eager", cautious=True), shapes, 12)
    eager, _, _ = _train_compiled(lambda ps: Adafactor(ps, cautious=True), shapes, 12)
    layouts = list(opt._compiled.layouts.values())
    assert len(layouts) == 1 and layouts[0].members == params
    assert worst_relative_difference(flat, eager) < 1e-10
