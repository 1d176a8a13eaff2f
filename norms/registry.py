"""Normalization layers from the table of normalizers (norms.modes): name -> layer taking
channels first.

Every mode is a row of the table: a built-in's, or a plugin's (norms/plugins.py: an
`onorm.norms` entry point's name or a `module:attr` path, whose callable is called with the
channel count alone). Nothing here branches on a kind: each row names its builder, the
options it takes and its layers' classes. The classes of the layers a plugin returns count
as normalization layers from then on (`norm_layer_classes`), so the trainer finds them by
isinstance, like the built-ins.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any, Callable

import torch
from torch import nn

from norms.modes import BUILT_IN, NORM_MODES, Normalizer, normalizers
from norms.plugins import PluginError, load_plugin, plugin_normalizer

# Every option any mode understands; a mode ignores the ones it does not use, so models can
# pass the same options to every mode, but a misspelt key is an error.
NORM_OPTIONS = tuple(dict.fromkeys(k for row in BUILT_IN for k in row.layer_options))
_BUILT_IN = {row.name: row for row in BUILT_IN}
# torch's normalizers that no row builds, counted as normalizers all the same (a model may
# bring its own, like torchvision's)
_OTHER_NORM_CLASSES = (nn.LayerNorm, nn.LocalResponseNorm)
# Classes of the layers plugins have built: normalization layers for norm_layer_classes.
# Containers are left out (a plugin returning nn.Sequential would make every stage a norm).
_PLUGIN_CLASSES: set[type[nn.Module]] = set()
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


@functools.cache
def _resolve(path: str) -> Any:
    """The object at a built-in row's 'module:attr' (the project's or torch's own)."""
    module, attr = path.split(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _check(mode: str, options: dict[str, Any]) -> Normalizer:
    """The row of `mode`, with `options` checked against it."""
    # An unknown mode: PluginError (a ValueError) naming the choices
    row = _BUILT_IN[mode] if mode in NORM_MODES else plugin_normalizer(mode)
    unknown = sorted(set(options) - set(NORM_OPTIONS))
    if unknown:
        raise ValueError(f"unknown norm option(s) {', '.join(unknown)}: valid options are "
                         f"{', '.join(NORM_OPTIONS)}")
    if row.check:
        _resolve(row.check)(**_layer_options(row, options))
    return row


def _layer_options(row: Normalizer, options: dict[str, Any]) -> dict[str, Any]:
    return {k: options[k] for k in row.layer_options if k in options}


def build_norm(mode: str, num_features: int, **options: Any) -> nn.Module:
    """Build one normalization layer for `num_features` channels.

    options (each used only by the modes it concerns, ignored by the others):
    alpha_fwd, alpha_bkw, ecm, eps, ls_eps, clamp_val, impl (online); gn_num_groups (group).
    """
    row = _check(mode, options)
    return _build(row, _builder(row), num_features, options)


def norm_factory(mode: str, **options: Any) -> Callable[[int], nn.Module]:
    """A callable `channels -> layer`, what the models take as `norm_layer`. A plugin is
    imported here, once; the options are the built-ins' and a plugin takes none of them."""
    row = _check(mode, options)
    builder = _builder(row)
    return lambda num_features: _build(row, builder, num_features, options)


def norm_layer_classes() -> tuple[type[nn.Module], ...]:
    """The classes of every normalization layer the rows build (and torch's others), for
    telling normalizers apart by isinstance: optimizers exempt their parameters from weight
    decay, models initialize their affine."""
    declared = (_resolve(path) for row in normalizers() for path in row.layer_classes)
    return tuple(dict.fromkeys((*_OTHER_NORM_CLASSES, *declared, *_PLUGIN_CLASSES)))


def _builder(row: Normalizer) -> Callable[..., Any]:
    return load_plugin(row.builder) if row.plugin else _resolve(row.builder)


def _build(row: Normalizer, builder: Callable[..., Any], num_features: int,
           options: dict[str, Any]) -> nn.Module:
    if not row.plugin:
        return builder(num_features, **_layer_options(row, options))
    try:
        layer = builder(num_features)
    except Exception as err:   # the plugin's own error: say whose and where
        raise PluginError(f"normalizer {row.name!r} failed to build a layer of {num_features} "
                          f"channels ({type(err).__name__}: {err})") from None
    if not isinstance(layer, nn.Module):
        raise PluginError(f"normalizer {row.name!r} returned a {type(layer).__name__} for "
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
