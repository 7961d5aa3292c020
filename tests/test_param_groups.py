"""Param-group helpers: exact learning rate and weight decay per parameter, schedulers, errors."""

import pytest
import torch
from torch import nn

import gradwise as gw


class TinyViT(nn.Module):
    """The layout layer-wise decay was made for: embedding, a stack of blocks, final norm, head."""

    def __init__(self, depth=3, width=8):
        super().__init__()
        self.embed = nn.Linear(4, width)
        self.pos = nn.Parameter(torch.zeros(1, 5, width))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(width, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        h = self.embed(x) + self.pos
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h).mean(1))


def lr_and_wd(groups, model):
    """{parameter name: (lr, weight_decay or None)} from a list of groups."""
    by_id = {id(p): name for name, p in model.named_parameters()}
    out = {}
    for g in groups:
        for p in g["params"]:
            assert by_id[id(p)] not in out, "a parameter is in two groups"
            out[by_id[id(p)]] = (g["lr"], g.get("weight_decay"))
    assert set(out) == set(by_id.values()), "every trainable parameter is in a group"
    return out


def test_layerwise_decay_gives_vit_beit_numbering():
    torch.manual_seed(0)
    model = TinyViT(depth=3)
    got = lr_and_wd(gw.layerwise_lr_decay(model, lr=1.0, decay=0.5, weight_decay=0.05), model)
    # 3 blocks: head and final norm at depth 0, blocks 2, 1, 0 at depths 1, 2, 3, embeddings at depth 4
    assert got["head.weight"] == (1.0, 0.05)
    assert got["head.bias"] == (1.0, 0.0)
    assert got["norm.weight"] == (1.0, 0.0)
    assert got["blocks.2.linear1.weight"] == (0.5, 0.05)
    assert got["blocks.2.norm1.weight"] == (0.5, 0.0)
    assert got["blocks.1.self_attn.in_proj_weight"] == (0.25, 0.05)
    assert got["blocks.0.linear2.bias"] == (0.125, 0.0)
    assert got["embed.weight"] == (0.0625, 0.05)
    assert got["pos"] == (0.0625, 0.05)
    depths = gw.layer_depths(model)
    assert {depths[n] for n in depths if n.startswith("blocks.0.")} == {3}


def test_layerwise_decay_on_sequential_counts_only_layers_with_parameters():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.LayerNorm(4), nn.Linear(4, 2))
    got = lr_and_wd(gw.layerwise_lr_decay(model, lr=2.0, decay=0.5), model)
    assert got == {
        "0.weight": (0.5, None), "0.bias": (0.5, 0.0),
        "2.weight": (1.0, 0.0), "2.bias": (1.0, 0.0),
        "3.weight": (2.0, None), "3.bias": (2.0, 0.0),
    }


def test_blocks_by_name_and_multipliers_compose():
    model = TinyViT(depth=2)
    groups = gw.layerwise_lr_decay(model, lr=1.0, decay=0.5, blocks="blocks", multipliers={"head.*": 10.0})
    got = lr_and_wd(groups, model)
    assert got["head.weight"][0] == 10.0
    assert got["norm.weight"][0] == 1.0
    assert got["blocks.0.linear1.weight"][0] == 0.25
    assert got["embed.bias"][0] == 0.125


def test_lr_multipliers_first_pattern_wins_and_the_rest_keep_lr():
    model = TinyViT(depth=1)
    got = lr_and_wd(
        gw.lr_multipliers(model, {"head.*": 10.0, "embed*": 0.1, "*.bias": 0.5}, lr=0.01, weight_decay=0.1), model
    )
    assert got["head.weight"] == (0.01 * 10.0, 0.1)
    assert got["head.bias"] == (0.01 * 10.0, 0.0)
    assert got["embed.weight"] == (0.01 * 0.1, 0.1)
    assert got["blocks.0.linear1.bias"] == (0.01 * 0.5, 0.0)
    assert got["blocks.0.linear1.weight"] == (0.01, 0.1)
    assert got["pos"] == (0.01, 0.1)


def test_embeddings_can_be_excluded_from_weight_decay():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))
    got = lr_and_wd(gw.lr_multipliers(model, {}, lr=1.0, weight_decay=0.1, exclude=gw.no_decay_with_embeddings), model)
    assert got == {"0.weight": (1.0, 0.0), "1.weight": (1.0, 0.1), "1.bias": (1.0, 0.0)}


def test_frozen_and_shared_parameters():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3))
    model[2].weight = model[0].weight  # tied
    model[1].bias.requires_grad_(False)
    groups = gw.layerwise_lr_decay(model, lr=1.0, decay=0.5)
    params = [p for g in groups for p in g["params"]]
    assert len(params) == len({id(p) for p in params}) == 4
    assert all(p is not model[1].bias for p in params)


def test_groups_drive_an_optimizer_and_the_decay_reaches_the_step():
    """A parameter at lr * decay^k moves decay^k as far as the head in one SGD step with equal gradients."""
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False))
    opt = gw.create("sgd", gw.layerwise_lr_decay(model, lr=0.1, decay=0.5), lr=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    moved = [(b - p.detach()).abs().max().item() for b, p in zip(before, model.parameters(), strict=True)]
    assert moved == pytest.approx([0.05, 0.1])


def test_create_keeps_the_bias_exclusion_and_fills_the_default_weight_decay():
    model = TinyViT(depth=1)
    opt = gw.create("adamw", gw.layerwise_lr_decay(model, lr=1e-3), weight_decay=0.05)
    decays = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decays[id(model.head.weight)] == 0.05
    assert decays[id(model.head.bias)] == 0.0
    assert decays[id(model.norm.weight)] == 0.0


@pytest.mark.parametrize("make", [
    lambda m: torch.optim.lr_scheduler.StepLR(m, step_size=1, gamma=0.1),
    lambda m: torch.optim.lr_scheduler.CosineAnnealingLR(m, T_max=4),
    lambda m: torch.optim.lr_scheduler.LambdaLR(m, lambda step: 1.0 / (step + 1)),
])
def test_schedulers_scale_every_group_and_keep_the_ratios(make):
    model = TinyViT(depth=2)
    groups = gw.layerwise_lr_decay(model, lr=1e-2, decay=0.5)
    start = [g["lr"] for g in groups]
    opt = gw.create("adamw", groups)
    sched = make(opt)
    for _ in range(3):
        opt.step()
        sched.step()
    now = [g["lr"] for g in opt.param_groups]
    factor = now[0] / start[0]
    assert 0 < factor < 1
    assert now == pytest.approx([lr * factor for lr in start], rel=1e-12)


def test_errors_name_the_argument():
    model = TinyViT(depth=2)
    with pytest.raises(ValueError, match="decay"):
        gw.layerwise_lr_decay(model, lr=1.0, decay=0.0)
    with pytest.raises(ValueError, match="decay"):
        gw.layerwise_lr_decay(model, lr=1.0, decay=1.5)
    with pytest.raises(ValueError, match="lr"):
        gw.layerwise_lr_decay(model, lr=-1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        gw.layerwise_lr_decay(model, lr=1.0, weight_decay=-0.1)
    with pytest.raises(ValueError, match="blocks='layers'.*containers it has: blocks"):
        gw.layerwise_lr_decay(model, lr=1.0, blocks="layers")
    with pytest.raises(ValueError, match="blocks=None"):
        gw.layerwise_lr_decay(nn.Linear(2, 2), lr=1.0)
    with pytest.raises(ValueError, match=r"multipliers\['haed\.\*'\] matches no trainable parameter"):
        gw.lr_multipliers(model, {"haed.*": 10.0}, lr=1.0)
    with pytest.raises(ValueError, match=r"multipliers\['head\.\*'\]"):
        gw.lr_multipliers(model, {"head.*": -1.0}, lr=1.0)
    with pytest.raises(TypeError, match="multipliers must be a mapping"):
        gw.lr_multipliers(model, [("head.*", 2.0)], lr=1.0)
    with pytest.raises(TypeError, match="lr must be a real number"):
        gw.lr_multipliers(model, {}, lr="1e-3")


def settings_of(opt, model):
    """{parameter name: (lr, weight_decay, state_bits)} of an optimizer built by create."""
    by_id = {id(p): name for name, p in model.named_parameters()}
    return {by_id[id(p)]: (g["lr"], g["weight_decay"], g["state_bits"]) for g in opt.param_groups for p in g["params"]}


def test_create_layer_decay_builds_the_layerwise_groups_with_the_weight_decay_split():
    model = TinyViT(depth=3)
    opt = gw.create("adamw", model, lr=1.0, weight_decay=0.05, layer_decay=0.5)
    got = settings_of(opt, model)
    expected = lr_and_wd(gw.layerwise_lr_decay(model, lr=1.0, decay=0.5, weight_decay=0.05), model)
    assert {name: (lr, wd) for name, (lr, wd, _) in got.items()} == expected
    assert got["head.bias"][:2] == (1.0, 0.0) and got["embed.weight"][:2] == (0.0625, 0.05)
    plain = settings_of(gw.create("adamw", model, lr=1.0, weight_decay=0.05), model)
    assert all(wd == plain[name][1] for name, (_, wd, _) in got.items())  # the same split as without layer_decay


def test_create_layer_decay_combines_with_state_bits_exclude_and_keeps_the_default_lr():
    model = TinyViT(depth=2)
    opt = gw.create("adamw", model, weight_decay=0.1, layer_decay=0.75, state_bits=8, state_bits_exclude="embed.*")
    got = settings_of(opt, model)
    lr = gw.AdamW.defaults["lr"]
    assert got["embed.weight"] == (pytest.approx(lr * 0.75**3), 0.1, 32)
    assert got["embed.bias"] == (pytest.approx(lr * 0.75**3), 0.0, 32)
    assert got["pos"] == (pytest.approx(lr * 0.75**3), 0.1, 8)  # same depth as the embedding, 8-bit state
    assert got["blocks.1.linear1.weight"] == (pytest.approx(lr * 0.75), 0.1, 8)
    assert got["head.weight"] == (lr, 0.1, 8)
    assert all(len(g["params"]) > 0 for g in opt.param_groups)


def test_create_layer_decay_of_one_without_weight_decay_is_the_plain_optimizer():
    torch.manual_seed(0)
    model = TinyViT(depth=1)
    twin = TinyViT(depth=1)
    twin.load_state_dict(model.state_dict())
    opts = [gw.create("sgd", m, lr=0.1, **extra) for m, extra in ((model, {"layer_decay": 1.0}), (twin, {}))]
    assert {g["lr"] for g in opts[0].param_groups} == {0.1}
    assert all("weight_decay" not in g or g["weight_decay"] == 0.0 for g in opts[0].param_groups)
    x = torch.randn(2, 5, 4)
    for m, opt in zip((model, twin), opts, strict=True):
        m(x).square().sum().backward()
        opt.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


def test_create_layer_decay_errors_name_the_argument():
    model = TinyViT(depth=1)
    for bad in (0.0, 1.5, -0.5, float("nan")):
        with pytest.raises(ValueError, match=r"layer_decay.*\(0, 1\]"):
            gw.create("adamw", model, lr=1e-3, layer_decay=bad)
    with pytest.raises(TypeError, match="layer_decay needs the model"):
        gw.create("adamw", list(model.parameters()), lr=1e-3, layer_decay=0.75)
