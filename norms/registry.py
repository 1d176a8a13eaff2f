"""The only place that knows the normalizer kinds: mode name -> layer taking channels first.

A mode that is not built in is a plugin (norms/plugins.py): an `onorm.norms` entry point's
name or a `module:attr` path, whose callable is called with the channel count alone. The
classes of the layers it returns count as normalization layers from then on
(`norm_layer_classes`), so the trainer finds them by isinstance, like the built-ins.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from norms.impl import check_impl
from norms.modes import ECM_MODES, NORM_MODES
from norms.plugins import PluginError, load_plugin, plugin_path

# Every option any mode understands; a mode ignores the ones it does not use, so models can
# pass the same options to every mode, but a misspelt key is an error.
NORM_OPTIONS = ("alpha_fwd", "alpha_bkw", "ecm", "eps", "ls_eps", "clamp_val", "gn_num_groups",
                "impl")
_ONLINE_OPTIONS = ("alpha_fwd", "alpha_bkw", "ecm", "eps", "ls_eps", "clamp_val", "impl")
# Classes of the layers plugins have built: normalization layers for norm_layer_classes.
# Containers are left out (a plugin returning nn.Sequential would make every stage a norm).
_PLUGIN_CLASSES: set[type[nn.Module]] = set()
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _check(mode: str, options: dict[str, Any]) -> None:
    if mode not in NORM_MODES:
        plugin_path(mode)   # PluginError (a ValueError) naming the choices when unknown
    unknown = sorted(set(options) - set(NORM_OPTIONS))
    if unknown:
        raise ValueError(f"unknown norm option(s) {', '.join(unknown)}: valid options are "
                         f"{', '.join(NORM_OPTIONS)}")
    if mode == "online" and options.get("ecm", "ls") not in ECM_MODES:
        raise ValueError(f"unknown ecm {options['ecm']!r}: choose one of {', '.join(ECM_MODES)}")
    if mode == "online" and "impl" in options:
        check_impl(options["impl"])


def build_norm(mode: str, num_features: int, **options: Any) -> nn.Module:
    """Build one normalization layer for `num_features` channels.

    options (each used only by the modes it concerns, ignored by the others):
    alpha_fwd, alpha_bkw, ecm, eps, ls_eps, clamp_val, impl (online); gn_num_groups (group).
    """
    _check(mode, options)
    if mode not in NORM_MODES:
        return _plugin_layer(load_plugin(plugin_path(mode)), mode, num_features)
    if mode == "batch":
        return nn.BatchNorm2d(num_features)
    if mode == "group":
        groups = int(options.get("gn_num_groups", 32))
        if groups < 1 or num_features % groups:
            raise ValueError(f"group norm: {num_features} channels are not divisible into "
                             f"gn_num_groups={groups} groups; choose a divisor of "
                             f"{num_features}")
        return nn.GroupNorm(groups, num_features)
    if mode == "instance":
        # Per-channel statistics over H, W with a per-channel affine.
        return nn.GroupNorm(num_features, num_features)
    if mode == "none":
        return nn.Identity()
    if mode == "layer":
        from norms.layer_norm import LayerNorm2d
        return LayerNorm2d(num_features)
    from norms.online import OnlineNorm2d
    return OnlineNorm2d(num_features, **{k: options[k] for k in _ONLINE_OPTIONS if k in options})


def norm_layer_classes() -> tuple[type[nn.Module], ...]:
    """The classes of every normalization layer build_norm makes (and torch's others), for
    telling normalizers apart by isinstance: optimizers exempt their parameters from weight
    decay, models initialize their affine."""
    from norms.layer_norm import LayerNorm2d
    from norms.online import OnlineNorm1d, OnlineNorm2d

    return (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm,
            LayerNorm2d, OnlineNorm1d, OnlineNorm2d, *_PLUGIN_CLASSES)


def norm_factory(mode: str, **options: Any) -> Callable[[int], nn.Module]:
    """A callable `channels -> layer`, what the models take as `norm_layer`. A plugin is
    imported here, once; the options are the built-ins' and a plugin takes none of them."""
    _check(mode, options)
    if mode not in NORM_MODES:
        factory = load_plugin(plugin_path(mode))
        return lambda num_features: _plugin_layer(factory, mode, num_features)
    return lambda num_features: build_norm(mode, num_features, **options)


def _plugin_layer(factory: Callable[..., Any], mode: str, num_features: int) -> nn.Module:
    """factory(num_features), checked to be a module; its class is a normalizer from now on."""
    try:
        layer = factory(num_features)
    except Exception as err:   # the plugin's own error: say whose and where
        raise PluginError(f"normalizer {mode!r} failed to build a layer of {num_features} "
                          f"channels ({type(err).__name__}: {err})") from None
    if not isinstance(layer, nn.Module):
        raise PluginError(f"normalizer {mode!r} returned a {type(layer).__name__} for "
                          f"{num_features} channels, not a torch.nn.Module")
    if not isinstance(layer, _CONTAINERS):
        _PLUGIN_CLASSES.add(type(layer))
    return layer


def materialize(model: nn.Module, example_input: torch.Tensor) -> None:
    """Create parameters whose shape depends on the input (layer norm's per-element affine).

    Runs one eval-mode forward pass so that no running statistic changes; call it before the
    optimizer is built so those parameters are trained.
    """
    from torch.nn.parameter import UninitializedParameter
    if not any(isinstance(p, UninitializedParameter) for p in model.parameters()):
        return
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(example_input)
    model.train(was_training)
