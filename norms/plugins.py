"""Normalizers of other packages: an `onorm.norms` entry point, or a cell's `module:attr` path.

A package declares `mynorm = "mypkg.layers:MyNorm"` in its entry-point group `onorm.norms`,
or a config names `mypkg.layers:MyNorm` directly; either way the object is a callable taking
the channel count first (a layer class, like the built-ins) and returning a torch module.
A path is only ever imported (`importlib.import_module`, then attribute lookups) from a
module installed where the trial runs; it is never evaluated. The built-in names win over an
entry point of the same name.

Torch-free: naming and resolving a plugin (`plugin_path`, `plugin_normalizer`) imports
nothing, so configs, trial ids, experiments.yaml checks and the dry runs stay light;
`load_plugin` imports it when a layer is built (norms/registry.py). A resolved plugin is a
row of the table of normalizers (norms.modes), named and built by its import path.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from typing import Any, Callable

from norms.modes import NORM_MODES, Normalizer, add_normalizer

ENTRY_POINT_GROUP = "onorm.norms"
_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
# module:attr, the entry-point syntax (absolute module names only: no file paths, no dots
# in front, nothing that could be evaluated)
PLUGIN_PATH = re.compile(rf"({_DOTTED}):({_DOTTED})")


class PluginError(ValueError):
    """A plugin normalizer that cannot be named, imported or built; str() says why and how."""


def entry_point_norms() -> dict[str, str]:
    """Installed entry points of group onorm.norms: name -> 'module:attr' (a name that is a
    built-in is left out: the built-in wins)."""
    from importlib.metadata import entry_points

    found = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in NORM_MODES and ep.name not in found and ep.attr:
            found[ep.name] = f"{ep.module}:{ep.attr}"
    return found


def plugin_path(norm: str) -> str:
    """The import path 'module:attr' that the plugin normalizer `norm` (an entry point's name
    or a path itself) resolves to, checked to exist as an installed module without importing
    it; PluginError naming the choices otherwise."""
    if PLUGIN_PATH.fullmatch(norm):
        top = norm.split(":")[0].split(".")[0]
        try:
            found = importlib.util.find_spec(top) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise PluginError(f"normalizer {norm!r}: no module {top!r} is installed: install "
                              "the package that holds it where the trials run")
        return norm
    plugins = entry_point_norms()
    if norm in plugins:
        return plugins[norm]
    installed = f"installed plugins: {', '.join(sorted(plugins))}; " if plugins else ""
    raise PluginError(f"unknown normalizer {norm!r}; choose one of {', '.join(NORM_MODES)}, "
                      f"or a plugin ({installed}an {ENTRY_POINT_GROUP} entry point's name, or "
                      "module:Class of an installed package)")


def plugin_normalizer(norm: str) -> Normalizer:
    """The table's row of the plugin normalizer `norm` (an entry point's name or a path),
    added when first resolved: its name and builder are the import path it resolves to, and
    it takes no options. PluginError naming the choices when there is none."""
    path = plugin_path(norm)
    return add_normalizer(Normalizer(path, path, plugin=True))


def load_plugin(path: str) -> Callable[..., Any]:
    """The callable at 'module:attr', imported from its installed module."""
    match = PLUGIN_PATH.fullmatch(path)
    if match is None:
        raise PluginError(f"normalizer path {path!r} is not module:attr")
    module_name, attr = match.groups()
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as err:   # ImportError, or whatever the module raises when imported
        raise PluginError(f"normalizer {path!r}: importing {module_name} failed "
                          f"({type(err).__name__}: {_first_line(err)})") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PluginError(f"normalizer {path!r}: {module_name} has no attribute "
                              f"{attr!r}") from None
    if not callable(obj):
        raise PluginError(f"normalizer {path!r} is a {type(obj).__name__}, not a callable "
                          "taking the channel count")
    return obj


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else "no message"
