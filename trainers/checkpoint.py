"""Checkpoints that load with torch.load(weights_only=True): atomic save, RNG capture, checks."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from norms.modes import options_of
from trainers.atomic import replace_atomically
from trainers.errors import CheckpointError, UserError

CHECKPOINT_NAME = "checkpoint.pth.tar"
BEST_NAME = "model_best.pth.tar"
# Settings a resumed run must share with its checkpoint: they shape the model and the
# optimizer's parameter groups, or what an epoch is (the batch size). The normalizer's own
# options (norms.modes: Online Norm's decay factors and error compensation, which the
# checkpoint does not carry; group norm's group count) must match too.
MODEL_KEYS = ("dataset", "arch", "depth", "norm", "batch_size", "norm_weight_decay")


def rng_state() -> dict[str, Any]:
    """Every RNG the trainer may touch, as tensors and plain types (weights_only-safe)."""
    version, mt_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": int(version), "state": torch.tensor(mt_state, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"name": str(np_name), "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss),
                  "gauss": float(np_gauss)},
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["gauss"]))
    if state["cuda"] and torch.cuda.is_available():
        # a checkpoint from a machine with more GPUs restores the ones present
        cuda = state["cuda"][:torch.cuda.device_count()]
        for index, cuda_state in enumerate(cuda):
            torch.cuda.set_rng_state(cuda_state, index)


def save_checkpoint(state: dict[str, Any], model_dir: Path, is_best: bool) -> Path:
    """Write model_dir/checkpoint.pth.tar atomically; copy to model_best.pth.tar if best."""
    path = model_dir / CHECKPOINT_NAME
    replace_atomically(path, lambda tmp: torch.save(state, tmp))
    if is_best:
        replace_atomically(model_dir / BEST_NAME, lambda tmp: shutil.copyfile(path, tmp))
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint without running code from it; UserError if missing or unreadable."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: pass the path of a "
                        f"{CHECKPOINT_NAME} written by onorm train, or drop --resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = str(err).strip().splitlines()[0][:120] if str(err).strip() else ""
        raise CheckpointError(f"checkpoint {path} is corrupt or not an onorm checkpoint "
                              f"({type(err).__name__}: {reason}): delete it or resume from "
                              "another one", f"unreadable ({type(err).__name__})") from None
    needed = ("model", "optimizer", "scheduler", "epoch", "config", "rng")
    if not isinstance(state, dict) or any(k not in state for k in needed):
        raise CheckpointError(f"checkpoint {path} is not an onorm training checkpoint (it "
                              "lacks model/optimizer/epoch entries): resume from a "
                              "checkpoint.pth.tar written by onorm train",
                              "not an onorm training checkpoint")
    return state


def check_compatible(state: dict[str, Any], config_dict: dict[str, Any], path: str | Path) -> None:
    """UserError naming the setting when a checkpoint was saved for another model."""
    saved = dict(state.get("config", {}))
    now = dict(config_dict)
    for values in (saved, now):   # a plugin is its import path, under either of its names
        if values.get("norm_path"):
            values["norm"] = values["norm_path"]
    keys = MODEL_KEYS + options_of(config_dict["norm"])
    diffs = [f"{k}={saved.get(k)!r} (now {now[k]!r})" for k in keys
             if k in saved and saved.get(k) != now[k]
             and not (k == "depth" and config_dict["dataset"] == "imagenet")]
    if diffs:
        raise UserError(f"checkpoint {path} does not match the model: it was saved with "
                        f"{', '.join(diffs)}; use the same settings or another --model-dir")
