import inspect
import re

import pytest
import torch
from torch import nn

import gradwise as gw


def test_available_lists_registered_names_and_get_returns_the_class():
    assert "adamw" in gw.available()
    assert gw.get("AdamW") is gw.AdamW


def test_unknown_name_suggests_the_nearest():
    with pytest.raises(ValueError, match="Did you mean 'adamw'"):
        gw.create("adamww", [torch.zeros(1, requires_grad=True)])


def test_unknown_hyper_parameter_lists_accepted_and_suggests():
    with pytest.raises(TypeError, match="Did you mean 'weight_decay'.*Accepted: lr, betas"):
        gw.create("adamw", [torch.zeros(1, requires_grad=True)], weight_decy=0.1)


def test_create_puts_biases_and_norm_weights_in_a_group_without_decay():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2, bias=False))
    opt = gw.create("adamw", model, weight_decay=0.1)
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert {id(p) for p in decayed["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert {id(p) for p in plain["params"]} == {id(model[0].bias), id(model[1].weight), id(model[1].bias)}


def test_create_skips_frozen_parameters_and_passes_param_lists_through():
    model = nn.Linear(3, 1)
    model.bias.requires_grad_(False)
    opt = gw.create("adamw", model, weight_decay=0.0)
    assert [id(p) for p in opt.param_groups[0]["params"]] == [id(model.weight)]
    groups = [{"params": [model.weight], "lr": 0.5}]
    assert gw.create("adamw", groups).param_groups[0]["lr"] == 0.5


def test_signature_shows_hyper_parameters_with_defaults():
    sig = inspect.signature(gw.AdamW)
    assert sig.parameters["lr"].default == 1e-3
    assert sig.parameters["nonfinite"].default == "skip"


def test_positional_hyper_parameters_follow_the_signature_order():
    opt = gw.AdamW([torch.zeros(1, requires_grad=True)], 0.5, (0.8, 0.9))
    assert opt.param_groups[0]["lr"] == 0.5 and opt.param_groups[0]["betas"] == (0.8, 0.9)
    with pytest.raises(TypeError, match="multiple values"):
        gw.AdamW([torch.zeros(1, requires_grad=True)], 0.5, lr=0.1)


def test_nonfinite_policy_is_validated():
    with pytest.raises(ValueError, match="nonfinite"):
        gw.AdamW([torch.zeros(1, requires_grad=True)], nonfinite="warn")


def test_every_entry_documents_its_paper():
    for e in gw.entries():
        assert e.paper and e.year > 1950 and e.oracle
        doc = inspect.getdoc(e.cls)
        assert doc and str(e.year) in doc, f"{e.name}: the docstring must cite the paper with its year"


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.body = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
        self.head = nn.Linear(8, 3)


def ids(group):
    return {id(p) for p in group["params"]}


def test_state_bits_exclude_by_module_type_keeps_embeddings_in_32_bit_state_within_the_decay_split():
    model = Tagger()
    opt = gw.create("adamw", model, weight_decay=0.1, state_bits=8, state_bits_exclude=nn.Embedding)
    groups = opt.param_groups
    assert [(g["weight_decay"], g["state_bits"]) for g in groups] == [(0.1, 8), (0.1, 32), (0.0, 8)]
    assert ids(groups[1]) == {id(model.embed.weight)} and groups[1]["state_dtype"] is None
    assert ids(groups[0]) == {id(model.body[0].weight), id(model.head.weight)}
    assert len(groups[2]["params"]) == 4  # biases and the norm's weight and bias
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    model.embed.weight.grad = torch.ones(50, 8)
    opt.step()
    assert opt.state[model.embed.weight]["exp_avg"].dtype == torch.float32


def test_state_bits_exclude_by_pattern_regex_function_and_list():
    model = Tagger()
    by_pattern = gw.create("adamw", model, state_bits=8, state_bits_exclude="head.*")
    assert [g["state_bits"] for g in by_pattern.param_groups] == [8, 32, 8, 32]  # weight decay 0.01 by default
    assert ids(by_pattern.param_groups[1]) | ids(by_pattern.param_groups[3]) == {id(model.head.weight),
                                                                                    id(model.head.bias)}
    by_regex = gw.create("lion", model, state_bits=8, state_bits_exclude=re.compile(r"^body\.\d+\.weight$"))
    full = [g for g in by_regex.param_groups if g["state_bits"] == 32]
    assert set().union(*map(ids, full)) == {id(model.body[0].weight), id(model.body[1].weight)}
    by_list = gw.create("sgd", model, lr=0.1, state_dtype=torch.bfloat16,
                        state_bits_exclude=[nn.LayerNorm, lambda module, name, p: p.ndim == 2 and p.shape[0] == 3])
    full = [g for g in by_list.param_groups if g["state_bits"] == 32 and g["state_dtype"] is None]
    assert set().union(*map(ids, full)) == {id(model.head.weight), id(model.body[1].weight), id(model.body[1].bias)}
    narrow = [g for g in by_list.param_groups if g["state_dtype"] is torch.bfloat16]
    assert "weight_decay" not in by_list.param_groups[0] or by_list.param_groups[0]["weight_decay"] == 0.0
    assert len(narrow) == 1 and len(narrow[0]["params"]) == 4


def test_state_bits_exclude_refuses_typos_unknown_rules_and_plain_parameter_lists():
    model = Tagger()
    with pytest.raises(ValueError, match="'embedding.*' matches no trainable parameter.*embed.weight"):
        gw.create("adamw", model, state_bits=8, state_bits_exclude="embedding.*")
    with pytest.raises(ValueError, match="matches no trainable"):
        gw.create("adamw", model, state_bits=8, state_bits_exclude=[nn.Embedding, re.compile("^wte")])
    with pytest.raises(TypeError, match="state_bits_exclude: 3 is not accepted"):
        gw.create("adamw", model, state_bits_exclude=3)
    with pytest.raises(TypeError, match="needs the model"):
        gw.create("adamw", list(model.parameters()), state_bits_exclude=nn.Embedding)


def test_parameter_groups_keeps_the_split_of_weight_decay_none_for_param_group_helpers():
    model = Tagger()
    groups = gw.core.parameter_groups(model, None)
    assert [g["weight_decay"] for g in groups] == [None, 0.0]
    groups = gw.core.parameter_groups(model, None, None, state_bits_exclude="embed.weight")
    assert [set(g) for g in groups] == [{"params"}, {"params", "state_bits", "state_dtype"}]
