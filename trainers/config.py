"""The trial config: every setting of one training run, with its type, default and range.

`TrialConfig`'s type hints and field metadata are the one source that the experiments.yaml
checks (`parse_setting`), `validate` and the `onorm train` flags (trainers/cli_train.py) all
read. A field marked `launch_only` says how a trial runs, not what it computes: it never
enters the trial id (orchestrator/plan/trial_id.py). Torch-free.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from norms.modes import ECM_MODES, NORM_MODES
from norms.plugins import PLUGIN_PATH, PluginError, plugin_path
from trainers.decay import OutOfRange, parse_fraction
from trainers.errors import UserError

DATASETS = ("cifar10", "cifar100", "imagenet")
IMAGENET_ARCHS = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "resnext101_32x8d",
)
# "bias" exempts only normalization biases from weight decay: what the seed scripts'
# name filter actually did; "none" applies weight decay to every parameter.
NORM_WD_MODES = ("exempt", "bias", "none")

# Per-dataset defaults of the seed scripts (cifar10_main.py, cifar100_main.py, imagenet_main.py).
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "cifar10": dict(arch="resnet", depth=20, epochs=250, batch_size=128,
                    lr_milestones=(100, 150, 200), weight_decay=2e-4,
                    afwd=1023 / 1024, abkw=127 / 128, gn_num_groups=8,
                    norm_weight_decay="none"),
    "cifar100": dict(arch="resnet", depth=20, epochs=250, batch_size=128,
                     lr_milestones=(100, 150, 200), weight_decay=2e-4,
                     afwd=511 / 512, abkw=15 / 16, gn_num_groups=8,
                     norm_weight_decay="none"),
    "imagenet": dict(arch="resnet18", depth=0, epochs=90, batch_size=256,
                     lr_milestones=(30, 60, 80, 90), weight_decay=1e-4,
                     afwd=0.999, abkw=0.99, gn_num_groups=32,
                     norm_weight_decay="exempt"),
}
# Batch size the recipe's lr and momentum were tuned for; other sizes rescale both
# (trainers/optim.py).
BASE_BATCH_SIZE = {"cifar10": 128, "cifar100": 128, "imagenet": 256}

# The channel counts that each network's normalization layers see (trainers/models.py builds
# them; tests/trainers/test_models.py checks the two agree). Group norm's group count must
# divide every one of them, which the plan checks before anything starts.
NORM_CHANNELS: dict[str, tuple[int, ...]] = {
    "resnet": (16, 32, 64),
    "resnet18": (64, 128, 256, 512),
    "resnet34": (64, 128, 256, 512),
    "resnet50": (64, 128, 256, 512, 1024, 2048),
    "resnet101": (64, 128, 256, 512, 1024, 2048),
    "resnet152": (64, 128, 256, 512, 1024, 2048),
    "resnext50_32x4d": (64, 128, 256, 512, 1024, 2048),
    "resnext101_32x8d": (64, 256, 512, 1024, 2048),
}

# Upper bounds of the integer settings: far beyond any real run, small enough that nothing
# downstream overflows (Parquet's int64 columns, numpy's 32-bit seeds) or tries to allocate
# or loop for ever before the first epoch.
MAX_SEED = 2**32 - 1          # numpy.random.seed takes [0, 2^32 - 1]
MAX_EPOCHS = 100_000          # also bounds lr_milestones
MAX_RESNET_DEPTH = 10_000     # the deepest published CIFAR ResNet has 1202 layers
MAX_BATCH_SIZE = 2**20
MAX_WORKERS = 1024
MAX_IMAGE_SIZE = 1024         # synthetic ImageNet-style images; the real crops are 224
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:[0-9]{1,3})?")
MAX_GROUPS = max(max(channels) for channels in NORM_CHANNELS.values())   # the widest layer


def setting(default: Any = dataclasses.MISSING, help: str = "", *, low: float | None = None,
            high: float | None = None, open_low: bool = False, open_high: bool = False,
            hint: str = "", launch_only: bool = False, derived: bool = False) -> Any:
    """A TrialConfig field: `help` says what it is (shown by `onorm train --help`);
    [low, high] (or open ends) bound numbers and list items; `hint` follows a range error;
    launch_only fields change how a trial runs, never what it computes; derived fields are
    filled in by make_config from the others, never given (no flag, no yaml key)."""
    meta = dict(help=help, low=low, high=high, open_low=open_low, open_high=open_high,
                hint=hint, launch_only=launch_only, derived=derived)
    return field(default=default, metadata=meta)


Dataset = Literal[DATASETS]
EcmMode = Literal[ECM_MODES]
NormWeightDecay = Literal[NORM_WD_MODES]
AmpDtype = Literal["bfloat16", "float16"]
ImageDecoder = Literal["pil", "gpu"]
# Online Norm's training op: Triton kernels on CUDA (auto), or either one forced.
NormImpl = Literal["auto", "triton", "eager"]
# Which float32 GPU math may run in TF32: cuDNN convolutions (PyTorch's default), none, or
# convolutions and matmuls.
Tf32 = Literal["conv", "none", "all"]


@dataclass(frozen=True)
class TrialConfig:
    """Everything that determines one training run; its hash is the trial_id.

    Defaults are CIFAR-10's; `make_config` applies each dataset's own (DATASET_DEFAULTS).
    """

    dataset: Dataset = setting(help="which dataset")
    # Where the data lives says nothing about the run: moving it keeps the trial id.
    data_dir: str = setting(help="dataset folder", launch_only=True)
    # The paper's CIFAR network is the 6n+2 ResNet; ImageNet takes a torchvision name.
    arch: str = setting("resnet", "network: 'resnet' (CIFAR, 6n+2) or an ImageNet "
                                  f"architecture ({', '.join(IMAGENET_ARCHS)})")
    # ResNet-20 is the paper's CIFAR network (n = 3); ImageNet ignores it.
    depth: int = setting(20, "depth of the CIFAR ResNet, 6n+2", low=0, high=MAX_RESNET_DEPTH)
    # The paper trains CIFAR for 250 epochs.
    epochs: int = setting(250, "total epochs", low=1, high=MAX_EPOCHS)
    # The seed scripts' CIFAR batch; the lr and momentum below were tuned for it.
    batch_size: int = setting(128, "mini-batch size (the global batch)", low=1,
                              high=MAX_BATCH_SIZE)
    # SGD with lr 0.1 and momentum 0.9: the seed scripts' recipe on every dataset.
    lr: float = setting(0.1, "initial learning rate", low=0, open_low=True)
    # CIFAR: x0.1 after epochs 100, 150 and 200, as in the paper.
    lr_milestones: tuple[int, ...] = setting(
        (100, 150, 200), "epochs after which the lr is multiplied by lr_multiplier", low=1,
        high=MAX_EPOCHS)
    # A tenfold drop at each milestone, the seed scripts' step schedule.
    lr_multiplier: float = setting(0.1, "factor applied at each milestone", low=0,
                                   open_low=True)
    # Rescaled with lr for other batch sizes (trainers/optim.py), 0.9 at the base batch.
    momentum: float = setting(0.9, "SGD momentum", low=0, high=1, open_high=True)
    # The paper's CIFAR weight decay (ImageNet: 1e-4).
    weight_decay: float = setting(2e-4, "weight decay", low=0)
    # Batch norm is the seed scripts' default normalizer; a name that is not built in is a
    # plugin (norms/plugins.py): an onorm.norms entry point's name, or module:Class.
    norm: str = setting("batch", f"normalizer: {', '.join(NORM_MODES)}, or a plugin (an "
                                 "onorm.norms entry point's name, or module:Class)")
    # The paper's CIFAR-10 decay factors, 1 - 2^-10 and 1 - 2^-7.
    afwd: float = setting(1023 / 1024, "Online Norm forward decay factor", low=0, high=1,
                          open_low=True, open_high=True, hint=", e.g. 1023/1024")
    # (ImageNet: 0.999 and 0.99, the layers' own defaults.)
    abkw: float = setting(127 / 128, "Online Norm backward decay factor", low=0, high=1,
                          open_low=True, open_high=True, hint=", e.g. 127/128")
    # Layer scaling is the error compensation the paper used for its ResNets.
    ecm: EcmMode = setting("ls", "Online Norm error compensation")
    # The seed scripts' CIFAR group count (ImageNet: 32).
    gn_num_groups: int = setting(8, "groups of group norm; must divide every layer's channel "
                                    "count", low=1, high=MAX_GROUPS)
    # CIFAR's seed scripts decay every parameter; ImageNet's meant to exempt norms.
    norm_weight_decay: NormWeightDecay = setting(
        "none", "weight decay on normalization parameters: exempt (none on any), bias (only "
                "biases exempt, as the seed scripts did), none (decay everywhere)")
    # No seed: not reproducible, as the seed scripts without --seed.
    seed: int | None = setting(None, "seed for initializing training; also makes kernels "
                                     "deterministic", low=0, high=MAX_SEED)
    # The seed scripts' loader workers; CIFAR augments on the device and ignores it.
    workers: int = setting(4, "data loading workers", low=0, high=MAX_WORKERS,
                           hint="(0 loads data in the main process)", launch_only=True)
    # The paper trains from scratch.
    pretrained: bool = setting(False, "start from torchvision's ImageNet weights (batch "
                                      "norm only; the file must be in the torch hub cache)")
    # 0 means the real 224-pixel ImageNet crops; small sizes serve generated test data.
    synthetic_image_size: int = setting(0, "ImageNet-style folders with images of this "
                                           "many pixels instead of 224", low=0,
                                        high=MAX_IMAGE_SIZE,
                                        hint="(0: the real 224-pixel crops)")
    # pil: the seed scripts' pixels. gpu decodes with nvJPEG and resizes on the device: its
    # pixels differ slightly, so it is part of the recipe (docs/imagenet.md).
    image_decoder: ImageDecoder = setting("pil", "ImageNet JPEG decoding: pil (CPU workers) "
                                                 "or gpu (nvJPEG and resizes on the CUDA "
                                                 "device)")
    # auto picks CUDA when present: where a trial runs, not what it computes.
    device: str = setting("auto", "auto, cpu, cuda or cuda:N", launch_only=True)
    # float32 is the paper's precision; mixed precision changes what a trial computes, so it
    # is part of the recipe (and of the trial id when on).
    amp: bool = setting(False, "mixed precision: the forward pass in amp_dtype (autocast)")
    # bfloat16 keeps float32's range, so it needs no loss scaling (float16 does).
    amp_dtype: AmpDtype = setting("bfloat16", "autocast dtype with amp (float16 scales the "
                                              "loss)")
    # Off by default: how fast a trial runs, never what it computes (launch options).
    channels_last: bool = setting(False, "channels-last (NHWC) memory format for the model "
                                         "and its inputs: faster convolutions on GPUs",
                                  launch_only=True)
    cuda_graph: bool = setting(False, "replay each training step from a CUDA graph (one "
                                      "launch per step); on the CPU it trains eagerly",
                               launch_only=True)
    # PyTorch's own defaults, the precision every trial so far ran in: cuDNN convolutions in
    # TF32 on GPUs that have it (Ampere on), matmuls (the fc layer) in full float32. It
    # changes what a trial computes, so it is part of the recipe (and of the id when not conv).
    tf32: Tf32 = setting("conv", "float32 GPU math in TF32: conv (cuDNN convolutions, "
                                 "PyTorch's default), none, or all (convolutions and matmuls)")
    # Both implementations compute the same step (to rounding): how a trial runs, not what.
    norm_impl: NormImpl = setting("auto", "Online Norm's training op: auto (Triton kernels on "
                                          "CUDA, eager ops elsewhere), triton, or eager (the "
                                          "PyTorch ops; use it where Triton fails)",
                                  launch_only=True)
    # What a plugin norm imports (module:attr), resolved from its name once, when the trial is
    # planned: the trial id hashes it, and every node imports this path, never the name.
    norm_path: str = setting("", "import path of a plugin normalizer (from norm)",
                             derived=True)

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["lr_milestones"] = list(self.lr_milestones)
        return out

    def replace(self, **changes: Any) -> "TrialConfig":
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------- the schema, read off the hints

@dataclass(frozen=True)
class FieldSpec:
    """What one TrialConfig field accepts, read off its type hint and metadata."""

    name: str
    kind: str                        # int | float | str | bool | choice | int_list
    optional: bool                   # None allowed
    choices: tuple[str, ...]
    default: Any
    meta: dict[str, Any]

    @property
    def launch_only(self) -> bool:
        return bool(self.meta.get("launch_only"))

    @property
    def derived(self) -> bool:
        return bool(self.meta.get("derived"))

    def range_text(self) -> str:
        low, high = self.meta.get("low"), self.meta.get("high")
        if low is not None and high is not None:
            left = "(" if self.meta["open_low"] else "["
            right = ")" if self.meta["open_high"] else "]"
            return f"in {left}{_bound(low)}, {_bound(high)}{right}"
        if low is not None:
            return f"{'>' if self.meta['open_low'] else '>='} {_bound(low)}"
        if high is not None:
            return f"{'<' if self.meta['open_high'] else '<='} {_bound(high)}"
        return ""

    def expected(self) -> str:
        """What a valid value looks like, for messages ("an integer >= 1")."""
        bounds = self.range_text()
        text = {"int": "an integer", "float": "a number", "str": "a string",
                "bool": "true or false", "int_list": "a list of integers",
                "choice": "one of " + ", ".join(self.choices)}[self.kind]
        text += f" {bounds}" if bounds and self.kind in ("int", "float", "int_list") else ""
        return text + (" or null" if self.optional else "")

    def in_range(self, number: float) -> bool:
        m = self.meta
        low, high = m.get("low"), m.get("high")
        if low is not None and (number < low or (m["open_low"] and number == low)):
            return False
        return high is None or not (number > high or (m["open_high"] and number == high))


def _bound(value: float) -> str:
    """A range end as written: integers in full (4294967295, not 4.29497e+09)."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _spec(f: dataclasses.Field, hint: Any) -> FieldSpec:
    optional = False
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        optional = type(None) in args
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    choices: tuple[str, ...] = ()
    if typing.get_origin(hint) is Literal:
        kind, choices = "choice", tuple(args)
    elif typing.get_origin(hint) is tuple:
        kind = "int_list"
    else:
        kind = {int: "int", float: "float", str: "str", bool: "bool"}[hint]
    default = None if f.default is dataclasses.MISSING else f.default
    return FieldSpec(f.name, kind, optional, choices, default, dict(f.metadata))


_SPECS: dict[str, FieldSpec] = {}


def config_specs() -> dict[str, FieldSpec]:
    """Every TrialConfig field's spec, in declaration order."""
    if not _SPECS:
        hints = typing.get_type_hints(TrialConfig)
        _SPECS.update({f.name: _spec(f, hints[f.name]) for f in fields(TrialConfig)})
    return _SPECS


def launch_only_fields() -> tuple[str, ...]:
    return tuple(name for name, s in config_specs().items() if s.launch_only)


class SettingError(ValueError):
    """A setting's value does not fit its field; str() is the expectation, e.g. 'an integer'."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _has_type(spec: FieldSpec, value: Any) -> bool:
    kind = spec.kind
    if kind == "int":
        return _is_int(value)
    if kind == "float":
        return _is_int(value) or isinstance(value, float)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "choice":
        return isinstance(value, str) and value in spec.choices
    return isinstance(value, (list, tuple)) and all(_is_int(v) for v in value)


def _in_range(spec: FieldSpec, value: Any) -> bool:
    if spec.kind == "int_list":
        return all(spec.in_range(v) for v in value)
    if spec.kind in ("int", "float"):
        return spec.in_range(value)
    return True


def check_value(spec: FieldSpec, value: Any) -> Any:
    """`value` if it fits the field (ints promote to floats, lists to tuples), else a
    SettingError saying what is expected."""
    if value is None and spec.optional:
        return None
    if not _has_type(spec, value):
        raise SettingError(spec.expected())
    if spec.kind == "float" and not _finite(value):
        raise SettingError("a finite number")
    if not _in_range(spec, value):
        raise SettingError(spec.expected())
    if spec.kind == "float":
        return float(value)
    return tuple(value) if spec.kind == "int_list" else value


def _finite(value: float) -> bool:
    """Finite as a float; an integer too large for one (10**400) is not."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


_NUMBER = 'a number or a fraction like "1023/1024"'


def parse_setting(name: str, raw: Any) -> Any:
    """A value as written in experiments.yaml for field `name`: numbers may be exact fraction
    strings ("1023/1024", parsed, never evaluated). SettingError says what is expected."""
    spec = config_specs()[name]
    if spec.kind == "float":
        if isinstance(raw, str):
            try:
                raw = parse_fraction(raw)
            except OutOfRange:
                raise SettingError("a finite number") from None
            except ValueError:
                raise SettingError(_NUMBER) from None
        elif isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise SettingError(_NUMBER)
    return check_value(spec, raw)


def make_config(dataset: str, data_dir: str, **overrides: Any) -> TrialConfig:
    """Seed-script defaults for `dataset`, then `overrides`; unknown keys are errors."""
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    known = config_specs()
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise UserError(f"unknown trial setting(s) {', '.join(unknown)}: "
                        f"valid settings are {', '.join(sorted(known))}")
    values = dict(DATASET_DEFAULTS[dataset])
    values.update(overrides)
    if isinstance(values.get("lr_milestones"), list):
        values["lr_milestones"] = tuple(values["lr_milestones"])
    norm = values.get("norm", "batch")
    if "norm_path" not in values and isinstance(norm, str) and norm not in NORM_MODES:
        try:
            values["norm_path"] = plugin_path(norm)
        except PluginError as err:
            raise ConfigError(str(err), "norm") from None
    return TrialConfig(dataset=dataset, data_dir=str(data_dir), **values)


class ConfigError(UserError):
    """A TrialConfig value that is not allowed; `field` names the setting at fault, so that
    experiments.yaml checks can point at the key that set it."""

    def __init__(self, message: str, field: str = ""):
        super().__init__(message)   # one argument: it pickles (Ray ships it from workers)
        self.field = field


def check_cifar_depth(depth: int) -> None:
    """The CIFAR ResNet has 6n+2 layers: 3 stages of n two-conv blocks, a stem and the fc."""
    if not (depth >= 8 and (depth - 2) % 6 == 0):
        raise ConfigError(f"depth {depth} is not 6n+2 (n >= 1): use e.g. 8, 14, 20, 32, 44, "
                          "56, 110", "depth")


def check_group_count(c: TrialConfig) -> None:
    """Group norm splits each layer's channels into gn_num_groups equal groups."""
    channels = NORM_CHANNELS.get(c.arch if c.dataset == "imagenet" else "resnet")
    if c.norm != "group" or channels is None:
        return
    bad = [n for n in channels if n % c.gn_num_groups]
    if bad:
        divisors = [g for g in range(1, min(channels) + 1)
                    if all(n % g == 0 for n in channels)]
        network = c.arch if c.dataset == "imagenet" else "the CIFAR ResNet"
        raise ConfigError(f"gn_num_groups {c.gn_num_groups} does not divide {bad[0]}, a "
                          f"channel count of {network} ({'/'.join(map(str, channels))}): use "
                          f"one of {', '.join(map(str, divisors))}", "gn_num_groups")


def check_norm(c: TrialConfig) -> None:
    """A built-in normalizer has no import path; a plugin has the one its name resolved to
    (make_config resolves it; a recorded config carries it)."""
    if c.norm in NORM_MODES:
        if c.norm_path:
            raise ConfigError(f"norm_path {c.norm_path!r} is only for plugin normalizers, not "
                              f"{c.norm}", "norm_path")
        return
    if not c.norm_path:
        raise ConfigError(f"norm {c.norm!r}: choose one of {', '.join(NORM_MODES)}, or a "
                          "plugin (an onorm.norms entry point's name, or module:Class)", "norm")
    if not PLUGIN_PATH.fullmatch(c.norm_path):
        raise ConfigError(f"norm_path {c.norm_path!r} is not module:attr", "norm_path")


def validate(c: TrialConfig) -> None:
    """Every field against its spec, then the checks between fields; each message names the
    setting and what is allowed (ConfigError.field: which one)."""
    for name, spec in config_specs().items():
        value = getattr(c, name)
        if value is None and spec.optional:
            continue
        if spec.kind == "choice" and not _has_type(spec, value):
            raise ConfigError(f"{name} {value!r}: choose one of {', '.join(spec.choices)}",
                              name)
        if not _has_type(spec, value):
            raise ConfigError(f"{name} must be {spec.expected()}, got {value!r}", name)
        if spec.kind == "float" and not _finite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}", name)
        if not _in_range(spec, value):
            hint = f" {spec.meta['hint']}" if spec.meta.get("hint") else ""
            shown = list(value) if spec.kind == "int_list" else value
            raise ConfigError(f"{name} must be {spec.range_text()}{hint}; got {shown!r}", name)
    check_norm(c)
    if not DEVICE_PATTERN.fullmatch(c.device):
        raise ConfigError(f"device {c.device!r} is not a device: use auto, cpu, cuda or cuda:N",
                          "device")
    if c.amp_dtype != "bfloat16" and not c.amp:
        raise ConfigError(f"amp_dtype {c.amp_dtype!r} applies only with amp on: set amp (--amp) "
                          "or drop amp_dtype", "amp_dtype")
    if c.norm_impl == "triton" and c.device == "cpu":
        raise ConfigError("norm_impl triton needs a CUDA device (Triton's kernels do not run "
                          "on the cpu): use norm_impl auto or eager, or a cuda device",
                          "norm_impl")
    if c.cuda_graph and c.amp and c.amp_dtype == "float16":
        raise ConfigError("cuda_graph with float16 amp: float16 needs dynamic loss scaling, "
                          "which waits for the GPU every step; use amp_dtype bfloat16, or drop "
                          "cuda_graph", "cuda_graph")
    if c.dataset == "imagenet":
        if c.arch not in IMAGENET_ARCHS:
            raise ConfigError(f"arch {c.arch!r} for imagenet: choose one of "
                              f"{', '.join(IMAGENET_ARCHS)}", "arch")
    else:
        if c.arch != "resnet":
            raise ConfigError(f"arch {c.arch!r} for {c.dataset}: only 'resnet' (the CIFAR "
                              "ResNet, sized by depth)", "arch")
        check_cifar_depth(c.depth)
    check_group_count(c)
    if c.image_decoder != "pil" and (c.dataset != "imagenet" or c.device == "cpu"):
        why = "only ImageNet decodes JPEGs" if c.dataset != "imagenet" else "device is cpu"
        raise ConfigError(f"image_decoder {c.image_decoder!r} needs ImageNet on a CUDA device "
                          f"({why}): use image_decoder pil", "image_decoder")
