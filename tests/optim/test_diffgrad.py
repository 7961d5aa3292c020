"""diffGrad against a plain reference written from the paper's update rule (no package of the authors exists)."""

import math

import pytest
import torch

import gradwise as gw

STEPS = 50


class ReferenceDiffGrad:
    """Dubey et al. (2019), the update of the authors' diffGrad_v2.py, one parameter at a time, out of place.

    g = grad + wd p;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  xi = 1 / (1 + exp(-|g_prev - g|));
    g_prev = g;  p = p - lr sqrt(1 - b2^t) / (1 - b1^t) xi m / (sqrt(v) + eps),  g_prev = 0 at t = 0.
    friction=0.5 replaces xi by the constant that the first script's aliased g_prev produced.
    """

    def __init__(self, params, lr, betas, eps, weight_decay, friction=None):
        self.params, self.lr, self.betas, self.eps, self.wd = list(params), lr, betas, eps, weight_decay
        self.friction, self.t = friction, 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.prev = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self):
        b1, b2 = self.betas
        self.t += 1
        for i, p in enumerate(self.params):
            g = p.grad + self.wd * p
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
            xi = 1 / (1 + torch.exp(-(self.prev[i] - g).abs())) if self.friction is None else self.friction
            self.prev[i] = g.clone()
            size = self.lr * math.sqrt(1 - b2**self.t) / (1 - b1**self.t)
            p.copy_(p - size * xi * self.m[i] / (self.v[i].sqrt() + self.eps))

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()


def model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()


def relative_difference(p, q):
    return float((p - q).detach().norm() / q.detach().norm())


def batches(steps, seed=1):
    data = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        yield torch.randn(16, 5, generator=data, dtype=torch.float64), torch.randn(16, 1, generator=data,
                                                                                    dtype=torch.float64)


def train_step(net, opt, x, y, set_to_none=True):
    opt.zero_grad(set_to_none=set_to_none)
    torch.nn.functional.mse_loss(net(x), y).backward()
    opt.step()


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("betas,eps", [((0.9, 0.999), 1e-8), ((0.8, 0.99), 1e-3)])
def test_trajectory_equals_the_papers_rule_at_every_step(weight_decay, betas, eps):
    ours, theirs = model(0), model(0)
    a = gw.DiffGrad(ours.parameters(), lr=2e-2, betas=betas, eps=eps, weight_decay=weight_decay)
    b = ReferenceDiffGrad(theirs.parameters(), lr=2e-2, betas=betas, eps=eps, weight_decay=weight_decay)
    for x, y in batches(STEPS):
        train_step(ours, a, x, y)
        train_step(theirs, b, x, y)
        for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
            assert relative_difference(p, q) < 1e-10  # measured: below 4e-16 (the brief asks < 1e-4)
    moved = [relative_difference(p, q) for p, q in zip(ours.parameters(), model(0).parameters(), strict=True)]
    assert min(moved) > 1e-2


def test_remembers_a_copy_of_the_gradient_not_the_tensor_that_backward_overwrites():
    # zero_grad(set_to_none=False) keeps one gradient tensor that every backward pass overwrites in place:
    # the authors' first script, which kept a reference to it, then saw g_prev == g and xi == 0.5.
    ours, copying, aliased = model(2), model(2), model(2)
    a = gw.DiffGrad(ours.parameters(), lr=2e-2)
    b = ReferenceDiffGrad(copying.parameters(), lr=2e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    c = ReferenceDiffGrad(aliased.parameters(), lr=2e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                          friction=0.5)
    for k, (x, y) in enumerate(batches(30, seed=3)):
        for net, opt in ((ours, a), (copying, b), (aliased, c)):
            train_step(net, opt, x, y, set_to_none=False)
        if k == 0:
            grads = [p.grad for p in ours.parameters()]
        for p, grad in zip(ours.parameters(), grads, strict=True):
            assert p.grad is grad  # the same tensor, overwritten by every backward pass
            assert a.state[p]["previous_grad"].data_ptr() != grad.data_ptr()
            assert torch.equal(a.state[p]["previous_grad"], grad)  # a copy of the gradient just used
    for p, q, r in zip(ours.parameters(), copying.parameters(), aliased.parameters(), strict=True):
        assert relative_difference(p, q) < 1e-4
        assert relative_difference(p, r) > 1e-3  # the friction is not the constant 0.5


def test_first_step_friction_is_the_sigmoid_of_the_gradient():
    # g_prev = 0 on the first step, so xi = sigmoid(|g|) and the step is lr xi g / (|g| + eps / sqrt(1 - b2)).
    grad = torch.tensor([2.0, -0.5, 0.0, 1e-3], dtype=torch.float64)
    p = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    p.grad = grad.clone()
    lr, eps = 0.1, 1e-8
    gw.DiffGrad([p], lr=lr, eps=eps).step()
    friction = torch.sigmoid(grad.abs())
    expected = -lr * friction * grad / (grad.abs() + eps / math.sqrt(1 - 0.999))
    torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=0)
    assert friction[0] > 0.85 and friction[1] > 0.6  # not the 0.5 of an aliased previous gradient


def test_a_constant_gradient_halves_the_adam_step():
    # Once g_prev == g the friction is sigmoid(0) = 1/2: with eps = 0 each step is Adam's at lr / 2.
    ours = torch.ones(3, dtype=torch.float64, requires_grad=True)
    adam = torch.ones(3, dtype=torch.float64, requires_grad=True)
    grad = torch.tensor([0.3, -2.0, 5.0], dtype=torch.float64)
    a = gw.DiffGrad([ours], lr=0.1, eps=0.0)
    b = torch.optim.Adam([adam], lr=0.05, eps=0.0)
    ours.grad, adam.grad = grad.clone(), grad.clone()
    a.step(), b.step()
    for _ in range(10):
        before_ours, before_adam = ours.detach().clone(), adam.detach().clone()
        a.step(), b.step()
        torch.testing.assert_close(ours - before_ours, adam - before_adam, rtol=1e-10, atol=0)


def test_authors_one_dimensional_analysis_reaches_the_global_minimum():
    # diffGrad_analytical.ipynb in github.com/shivram1987/diffGrad: a piecewise function with local minima
    # at x = -0.5 and 0.5 and its global minimum at x = 0, started at x = -1 with lr=0.1,
    # betas=(0.95, 0.999), 300 iterations. diffGrad passes the local minimum and settles around 0.
    def slope(x):
        if x <= -0.5:
            return 2 * x
        if x <= -0.4:
            return 1.0
        if x <= 0.0:
            return -7 / 8
        if x <= 0.4:
            return 7 / 8
        if x <= 0.5:
            return -1.0
        return 2 * x

    x = torch.tensor([-1.0], dtype=torch.float64, requires_grad=True)
    opt = gw.DiffGrad([x], lr=0.1, betas=(0.95, 0.999), eps=1e-8)
    late = []
    for k in range(300):
        x.grad = torch.tensor([slope(x.item())], dtype=torch.float64)
        opt.step()
        if k >= 200:
            late.append(abs(x.item()))
    assert max(late) < 0.05


def test_converges_on_a_small_regression():
    torch.manual_seed(5)
    x = torch.randn(64, 5, dtype=torch.float64)
    y = torch.sin(x.sum(dim=1, keepdim=True))
    net = model(5)
    opt = gw.DiffGrad(net.parameters(), lr=1e-2, weight_decay=1e-4)
    start = torch.nn.functional.mse_loss(net(x), y).item()
    for _ in range(300):
        train_step(net, opt, x, y)
    assert torch.nn.functional.mse_loss(net(x), y).item() < 0.1 * start


def test_defaults_are_the_authors():
    defaults = gw.DiffGrad([torch.zeros(1, requires_grad=True)]).defaults
    own = {k: defaults[k] for k in gw.DiffGrad.defaults}
    assert own == dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    assert defaults["maximize"] is False


def test_float32_step_matches_the_two_division_sigmoid_form():
    # The step divides once, by (1 + 2^(-|g_prev - g| log2 e)) (sqrt(v) + eps): in float32 it stays within a few
    # units in the last place of p - lr xi m / (sqrt(v) + eps) computed with torch.sigmoid and two divisions
    # (|p| < 4 here: 2 units in the last place are 4.8e-7).
    torch.manual_seed(7)
    p = torch.zeros(4096, requires_grad=True)
    opt = gw.DiffGrad([p], lr=1.0, eps=1e-8)
    previous = torch.zeros(4096)
    grads = [torch.randn(4096) * scale for scale in (1.0, 3.0, 0.01, 20.0)]
    for t, grad in enumerate(grads, start=1):
        before = p.detach().clone()
        p.grad = grad
        opt.step()
        m, v = opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"]
        friction = torch.sigmoid((previous - grad).abs())
        size = math.sqrt(1 - 0.999**t) / (1 - 0.9**t)
        expected = before - size * (friction * m) / (v.sqrt() + 1e-8)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=4.8e-7)
        previous = grad


def test_compiled_friction_power_of_two_is_within_one_float32_unit():
    # the compiled float32 step computes 2^x (x <= 0) from a polynomial and the exponent's bits instead of exp2
    from gradwise.transforms.friction import exp2_nonpositive

    compiled = torch.compile(exp2_nonpositive, backend="aot_eager", fullgraph=True)
    x = torch.cat([-torch.rand(100_000, generator=torch.Generator().manual_seed(0)) * 130,
                   torch.tensor([0.0, -0.0, -1e-30, -1.0, -126.0, -200.0, -float("inf"), float("nan")])])
    got, exact = compiled(x).double(), torch.exp2(x.double())
    normal = x >= -126
    assert float(((got - exact).abs() / exact)[normal].max()) < 1.2e-7
    assert (got[~normal & ~x.isnan()] <= 2.0**-126).all() and got[-1].isnan()
    assert torch.equal(compiled(x[:-1].double()), torch.exp2(x[:-1].double()))  # float64: exp2 itself
    assert (compiled(x[:-1]) != torch.exp2(x[:-1])).any()  # float32: the polynomial, not exp2
    assert torch.equal(exp2_nonpositive(x[:-1]), torch.exp2(x[:-1]))  # eager: exp2 itself


def test_fused_friction_step_equals_the_composable_friction_then_folded_adam_step():
    # gradwise.transforms keeps diffGrad's two building blocks (diff_friction, folded_adam_step) for users who
    # compose chains; the optimizer runs friction_adam_step, which claims the same numbers within rounding
    from gradwise.transforms import diff_friction, first_moment, folded_adam_step, second_moment
    from gradwise.transforms.friction import friction_adam_step

    def run(chain):
        g = torch.Generator().manual_seed(3)
        p = torch.randn(50, generator=g, dtype=torch.float64)
        state: dict = {}
        for tr in chain:
            state.update(tr.init(p))
        trajectory = []
        for t in range(1, 41):
            u = torch.randn(50, generator=g, dtype=torch.float64) * (1 + t % 4)
            for tr in chain:
                u = tr.update(u, p, state, float(t))
            trajectory.append(p.clone())
        return torch.stack(trajectory)

    moments = (first_moment(0.9), second_moment(0.999))
    fused = run((*moments, friction_adam_step(1e-2, 0.9, 0.999, 1e-8)))
    composed = run((*moments, diff_friction(), folded_adam_step(1e-2, 0.9, 0.999, 1e-8)))
    assert not torch.equal(fused[0], fused[-1])  # the parameters moved
    torch.testing.assert_close(fused, composed, rtol=1e-13, atol=1e-15)
