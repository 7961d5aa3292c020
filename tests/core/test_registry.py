import inspect

import pytest
import torch
from torch import nn

import gradwise as gw


def test_available_lists_registered_names_and_get_returns_the_class():
    assert "adamw" in gw.available()
    assert gw.get("AdamW") is gw.AdamW


def test_unknown_name_suggests_the_nearest():
    with pytest.raises(ValueError, match="Did you mean 'adamw'"):
        gw.create("adamv", [torch.zeros(1, requires_grad=True)])


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
