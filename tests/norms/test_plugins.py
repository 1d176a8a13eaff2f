"""Plugin normalizers: an entry point or a module:Class path builds, trains and is a norm."""

from __future__ import annotations

import pytest
import torch
from norm_plugin import PATH

import norms
from norms.modes import Normalizer, normalizers, options_of
from norms.plugins import PluginError, entry_point_norms, plugin_normalizer, plugin_path
from orchestrator.plan.trial_id import make_trial_id
from trainers.config import make_config
from trainers.models import build_model, is_norm_module
from trainers.optim import param_groups


def test_names_resolve_to_import_paths_without_importing(norm_plugin):
    import sys

    # a built-in's name is never a plugin's, even when an entry point claims it
    assert entry_point_norms() == {"mynorm": PATH, "othernorm": "mypkg.layers:other_norm"}
    assert plugin_path("mynorm") == PATH == plugin_path(PATH)
    assert "mypkg.layers" not in sys.modules
    with pytest.raises(PluginError, match="unknown normalizer 'mynrom'; choose one of batch, "
                                          "group, layer, instance, online, none, or a plugin "
                                          r"\(installed plugins: mynorm, othernorm;"):
        plugin_path("mynrom")
    with pytest.raises(PluginError, match="no module 'nopkg' is installed"):
        plugin_path("nopkg.layers:X")
    for not_a_path in ("../mypkg/layers.py:MyNorm", "os.system('x')", ".layers:MyNorm"):
        with pytest.raises(PluginError, match="unknown normalizer"):
            plugin_path(not_a_path)


def test_a_resolved_plugin_is_a_row_of_the_table(norm_plugin):
    import sys

    row = plugin_normalizer("mynorm")
    assert row == Normalizer(PATH, PATH, plugin=True) and plugin_normalizer(PATH) is row
    assert row in normalizers() and options_of(PATH) == ()
    assert "mypkg.layers" not in sys.modules   # resolved, not imported
    with pytest.raises(PluginError, match="unknown normalizer 'mynrom'"):
        plugin_normalizer("mynrom")
    assert [r.name for r in normalizers()].count(PATH) == 1


def test_a_plugin_layer_is_a_normalizer_for_init_and_weight_decay(norm_plugin):
    layer = norms.build_norm("mynorm", 16)
    assert type(layer).__module__ == "mypkg.layers" and type(layer).__name__ == "MyNorm"
    assert norms.norm_factory(PATH)(8).weight.shape == (8,)
    config = make_config("cifar10", "/d", depth=8, norm="mynorm", seed=0)
    model = build_model(config, 10, 32)
    found = [m for m in model.modules() if is_norm_module(m)]
    assert len(found) == 9 and all(type(m).__name__ == "MyNorm" for m in found)
    for m in found:   # the trainer's init, not the plugin's 3 and 0.5
        assert torch.equal(m.weight, torch.ones_like(m.weight))
        assert torch.equal(m.bias, torch.zeros_like(m.bias))
    decayed, exempt = param_groups(model, 1e-4, "exempt")
    assert {id(p) for p in exempt["params"]} == {id(p) for m in found for p in m.parameters()}
    assert exempt["weight_decay"] == 0.0 and len(decayed["params"]) == 9 + 1 + 1  # convs, fc
    # a plugin that returns a torch layer of its own: that class counts too
    other = build_model(make_config("cifar10", "/d", depth=8, norm="othernorm"), 10, 32)
    assert sum(isinstance(m, torch.nn.GroupNorm) and is_norm_module(m)
               for m in other.modules()) == 9


def test_the_import_path_is_the_trial_id(norm_plugin):
    by_name = make_config("cifar10", "/d", norm="mynorm", seed=0)
    by_path = make_config("cifar10", "/d", norm=PATH, seed=0)
    assert (by_name.norm_path, by_path.norm_path) == (PATH, PATH)
    assert make_trial_id(by_name) == make_trial_id(by_path)
    other = make_config("cifar10", "/d", norm="othernorm", seed=0)
    moved = by_name.replace(norm_path="mypkg.layers:other_norm")   # the entry point moved
    assert make_trial_id(other) == make_trial_id(moved) != make_trial_id(by_name)
    assert make_trial_id(by_name) != make_trial_id(make_config("cifar10", "/d", seed=0))


@pytest.mark.parametrize("norm, needle", [
    ("mypkg.fails_on_import:X", "importing mypkg.fails_on_import failed (ImportError: needs "
                                "a GPU library)"),
    ("mypkg.layers:Missing", "mypkg.layers has no attribute 'Missing'"),
    ("mypkg.layers:NOT_CALLABLE", "is a int, not a callable taking the channel count"),
    ("mypkg.layers:broken", "failed to build a layer of 16 channels (RuntimeError: no layer "
                            "today)"),
    ("mypkg.layers:not_a_module", "returned a int for 16 channels, not a torch.nn.Module"),
])
def test_a_plugin_that_cannot_build_says_why(norm, needle, norm_plugin):
    with pytest.raises(PluginError) as err:
        norms.build_norm(norm, 16)
    assert needle in str(err.value)
