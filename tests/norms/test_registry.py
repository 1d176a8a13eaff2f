"""The norm registry: every row of the table of normalizers builds a working layer of its
classes from its options; bad modes and options are refused; the table reads without torch."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest
import torch
from devices import DEVICES
from torch import nn

import norms
from norms import LayerNorm2d, OnlineNorm2d
from norms.modes import BUILT_IN, Normalizer
from trainers.config import config_specs

ALL_OPTIONS = {"alpha_fwd": 0.99, "alpha_bkw": 0.9, "ecm": "ac", "eps": 1e-4, "ls_eps": 1e-4,
               "clamp_val": 3.0, "gn_num_groups": 4}
ROWS = pytest.mark.parametrize("row", BUILT_IN, ids=[row.name for row in BUILT_IN])


def imported(path: str):
    module, attr = path.split(":")
    return getattr(importlib.import_module(module), attr)


@pytest.mark.parametrize("device", DEVICES)
@ROWS
def test_every_mode_runs_forward_and_backward(row: Normalizer, device: str) -> None:
    mode = row.name
    layer = norms.build_norm(mode, 16, **ALL_OPTIONS).to(device)  # unused options ignored
    x = torch.randn(4, 16, 8, 8, device=device, requires_grad=True)
    norms.materialize(layer, x.detach())
    out = layer.train()(x)
    assert out.shape == x.shape
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for param in layer.parameters():
        assert param.grad is not None


@ROWS
def test_every_row_builds_layers_of_its_classes_which_count_as_normalizers(row) -> None:
    layer = norms.norm_factory(row.name, **ALL_OPTIONS)(16)
    classes = tuple(imported(path) for path in row.layer_classes)
    if classes:
        assert isinstance(layer, classes)
        assert isinstance(layer, norms.norm_layer_classes())
    else:   # 'none': nothing there to initialize or exempt
        assert not isinstance(layer, norms.norm_layer_classes())
    assert set(classes) <= set(norms.norm_layer_classes())


@ROWS
def test_every_row_names_options_that_exist(row) -> None:
    # its trial options are trial settings, its builder takes its layer options
    assert set(row.trial_options) <= set(config_specs())
    assert set(row.trial_options) <= set(norms.modes.ALL_KIND_OPTIONS)
    assert norms.modes.options_of(row.name) == row.trial_options
    parameters = inspect.signature(imported(row.builder)).parameters
    assert set(row.layer_options) <= set(parameters), row.layer_options
    assert set(row.layer_options) <= set(norms.registry.NORM_OPTIONS)
    if row.check:   # refuses a bad value before any layer is built
        for option in ("ecm", "impl"):
            if option in row.layer_options:
                with pytest.raises(ValueError, match=f"unknown {option} 'bogus'"):
                    norms.norm_factory(row.name, **{option: "bogus"})


def test_the_table_reads_without_torch() -> None:
    script = """
import sys
from norms.modes import KIND_OPTIONS, NORM_MODES, normalizers, options_of
from norms.plugins import plugin_path
assert [row.name for row in normalizers()] == list(NORM_MODES), normalizers()
assert options_of("online") == ("afwd", "abkw", "ecm") and options_of("batch") == ()
assert KIND_OPTIONS == {"group": ("gn_num_groups",), "online": ("afwd", "abkw", "ecm")}
assert "torch" not in sys.modules, "the table imported torch"
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_modes_are_the_expected_layers() -> None:
    assert isinstance(norms.build_norm("batch", 8), nn.BatchNorm2d)
    group = norms.build_norm("group", 8, gn_num_groups=4)
    assert isinstance(group, nn.GroupNorm) and group.num_groups == 4
    assert norms.build_norm("group", 64).num_groups == 32  # the default
    instance = norms.build_norm("instance", 8)
    assert instance.num_groups == 8 and instance.weight.shape == (8,)
    assert isinstance(norms.build_norm("none", 8), nn.Identity)
    online = norms.build_norm("online", 8, **ALL_OPTIONS)
    assert isinstance(online, OnlineNorm2d)
    assert (online.alpha_fwd, online.alpha_bkw, online.ecm, online.eps, online.ls_eps,
            online.clamp_val) == (0.99, 0.9, "ac", 1e-4, 1e-4, 3.0)
    assert isinstance(norms.norm_factory("layer")(8), LayerNorm2d)


def test_instance_norm_normalizes_each_channel_of_each_sample() -> None:
    x = 3 * torch.randn(2, 4, 5, 5) + 7
    out = norms.build_norm("instance", 4)(x)
    assert torch.allclose(out.mean((2, 3)), torch.zeros(2, 4), atol=1e-5)
    assert torch.allclose(out.var((2, 3), unbiased=False), torch.ones(2, 4), atol=1e-3)


@pytest.mark.parametrize("call", [lambda: norms.build_norm("bogus", 8),
                                  lambda: norms.norm_factory("bogus")])
def test_unknown_mode_lists_choices(call) -> None:
    with pytest.raises(ValueError, match="batch, group, layer, instance, online, none"):
        call()


@pytest.mark.parametrize("call", [lambda: norms.build_norm("online", 8, ecm="xx"),
                                  lambda: norms.norm_factory("online", ecm="xx"),
                                  lambda: OnlineNorm2d(8, ecm="xx")])
def test_unknown_ecm_lists_choices(call) -> None:
    with pytest.raises(ValueError, match="ls, ac, none"):
        call()


def test_misspelt_option_is_refused() -> None:
    with pytest.raises(ValueError, match="alpha_fw.*valid options are"):
        norms.build_norm("batch", 8, alpha_fw=0.9)


def test_group_norm_needs_divisible_channels() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        norms.build_norm("group", 16)  # 32 groups by default


def test_layer_norm_matches_definition() -> None:
    layer = norms.build_norm("layer", 3)
    x = 2 * torch.randn(4, 3, 5, 6) + 1
    norms.materialize(layer, x)
    assert layer.weight.shape == (3, 5, 6) and torch.equal(layer.weight, torch.ones(3, 5, 6))
    with torch.no_grad():
        layer.weight.copy_(torch.rand(3, 5, 6))
        layer.bias.copy_(torch.rand(3, 5, 6))
    mean = x.mean((1, 2, 3), keepdim=True)
    var = x.var((1, 2, 3), unbiased=False, keepdim=True)
    expected = (x - mean) / (var + 1e-5).sqrt() * layer.weight + layer.bias
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_layer_norm_parameters_are_trained_after_materialize() -> None:
    # The paper's code created these after building the optimizer, so they never changed.
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), norms.build_norm("layer", 4),
                          nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    x = torch.randn(8, 3, 6, 6)
    norms.materialize(model, x[:1])
    layer = model[1]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    before = layer.weight.detach().clone(), layer.bias.detach().clone()
    nn.functional.cross_entropy(model(x), torch.randint(0, 2, (8,))).backward()
    optimizer.step()
    assert not torch.equal(layer.weight, before[0])
    assert not torch.equal(layer.bias, before[1])


def test_materialize_changes_no_running_statistics() -> None:
    model = nn.Sequential(norms.build_norm("online", 4), norms.build_norm("layer", 4),
                          norms.build_norm("batch", 4))
    norms.materialize(model, torch.randn(2, 4, 3, 3) + 5)
    assert torch.equal(model[0].m, torch.zeros(4)) and torch.equal(model[2].running_mean,
                                                                  torch.zeros(4))
    assert model.training
