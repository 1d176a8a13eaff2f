"""The normalizer kinds, their error-compensation modes and which trial options each takes.

Torch-free, so that configs, experiments.yaml checks, reports and command-line parsers can
use it without importing the layers.
"""

NORM_MODES = ("batch", "group", "layer", "instance", "online", "none")
ECM_MODES = ("ls", "ac", "none")

# The trial settings (trainers.config.TrialConfig fields) that mean something to each kind;
# a kind not listed takes none. They define a setting of that kind (tables, plots, the
# paper's rows), must match on resume, and are refused in a grid cell of another kind.
KIND_OPTIONS: dict[str, tuple[str, ...]] = {
    "online": ("afwd", "abkw", "ecm"),
    "group": ("gn_num_groups",),
}
ALL_KIND_OPTIONS = tuple(k for opts in KIND_OPTIONS.values() for k in opts)


def options_of(norm: str) -> tuple[str, ...]:
    """The trial settings that apply to normalizer `norm` (none for most kinds)."""
    return KIND_OPTIONS.get(norm, ())
