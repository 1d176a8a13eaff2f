"""The table of normalizers: one row per kind with its name, builder, trial options, layer
options and layer classes; the built-in rows, and a plugin's row once it is resolved.

Torch-free, so that configs, experiments.yaml checks, reports and command-line parsers can
read it without importing the layers: builders and classes are named by import path
('module:attr'), which norms.registry imports when it builds a layer. A built-in normalizer
is its layer (under norms/, or torch's) and one row of BUILT_IN below; NORM_MODES,
KIND_OPTIONS and the registry's options and classes follow from the rows, and
tests/norms/test_registry.py tests every row.
"""

from __future__ import annotations

import dataclasses

ECM_MODES = ("ls", "ac", "none")


@dataclasses.dataclass(frozen=True)
class Normalizer:
    """One kind of normalizer: how to build its layers and what it means to a trial."""

    name: str   # what a cell, --set or --norm-mode calls it (a plugin: its import path)
    # 'module:attr' of a callable (channels, **layer options) -> the layer
    builder: str
    # The trial settings (trainers.config.TrialConfig fields) that define a setting of this
    # kind: tables, plots and the paper's rows tell settings apart by them, they must match
    # on resume, and a grid cell of another kind refuses them.
    trial_options: tuple[str, ...] = ()
    # The build_norm options the builder takes (it is passed only those given)
    layer_options: tuple[str, ...] = ()
    # 'module:attr' of the classes of its layers: what the trainer counts as normalizers by
    # isinstance (init, the weight-decay exemption). A plugin's row names none: the classes
    # of the layers it builds count from when they are built (norms.registry).
    layer_classes: tuple[str, ...] = ()
    # 'module:attr' of a callable(**layer options) that raises ValueError for a bad value,
    # so that a norm factory refuses it before any layer is built ('' when nothing to check)
    check: str = ""
    plugin: bool = False   # built by a plugin: takes no options, its errors are the plugin's


_ONLINE_LAYER_OPTIONS = ("alpha_fwd", "alpha_bkw", "ecm", "eps", "ls_eps", "clamp_val", "impl")

BUILT_IN: tuple[Normalizer, ...] = (
    Normalizer("batch", "torch.nn:BatchNorm2d",
               layer_classes=("torch.nn.modules.batchnorm:_NormBase",)),   # SyncBatchNorm too
    Normalizer("group", "norms.group_norm:group_norm", trial_options=("gn_num_groups",),
               layer_options=("gn_num_groups",), layer_classes=("torch.nn:GroupNorm",)),
    Normalizer("layer", "norms.layer_norm:LayerNorm2d",
               layer_classes=("norms.layer_norm:LayerNorm2d",)),
    Normalizer("instance", "norms.group_norm:instance_norm",
               layer_classes=("torch.nn:GroupNorm",)),
    Normalizer("online", "norms.online:OnlineNorm2d", trial_options=("afwd", "abkw", "ecm"),
               layer_options=_ONLINE_LAYER_OPTIONS,
               layer_classes=("norms.online:OnlineNorm1d", "norms.online:OnlineNorm2d"),
               check="norms.online:check_options"),
    Normalizer("none", "torch.nn:Identity"),
)

NORM_MODES = tuple(row.name for row in BUILT_IN)
# kind -> its trial options, for the kinds that have any
KIND_OPTIONS: dict[str, tuple[str, ...]] = {
    row.name: row.trial_options for row in BUILT_IN if row.trial_options}
ALL_KIND_OPTIONS = tuple(k for opts in KIND_OPTIONS.values() for k in opts)

# Every row, by name: the built-ins, then plugins as norms.plugins resolves them.
_ROWS: dict[str, Normalizer] = {row.name: row for row in BUILT_IN}


def normalizers() -> tuple[Normalizer, ...]:
    """Every row of the table: the built-ins, then the plugins resolved so far."""
    return tuple(_ROWS.values())


def add_normalizer(row: Normalizer) -> Normalizer:
    """Add a row (a plugin's), unless one of its name is there already; the table's row."""
    return _ROWS.setdefault(row.name, row)


def options_of(norm: str) -> tuple[str, ...]:
    """The trial settings that apply to normalizer `norm` (none for most kinds)."""
    row = _ROWS.get(norm)
    return row.trial_options if row is not None else ()
