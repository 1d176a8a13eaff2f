"""Small learnable stand-ins for CIFAR and ImageNet, written in the real on-disk formats.

Machines here have no internet, so tests and the demo read these through the same code that
reads the real datasets. Each class is a mean colour plus a low-frequency colour wave; every
image adds a brightness offset and pixel noise. The class survives crops, flips and rescaling
(the mean colour alone nearly identifies it), so a small ResNet beats chance within an epoch
or two, yet the noise keeps the task from being solved by a single pixel.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np

from trainers.data.cifar_format import LAYOUTS
from trainers.errors import UserError

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck")
_CHUNK = 4096  # images generated at once: bounds float memory to ~50 MB at 32x32


class _Py2Pickler(pickle._Pickler):
    """Pickles bytes as Python 2 `str` (protocol 2), as the real CIFAR files do.

    Then readers see what they see on the real files: str keys under encoding="latin1"
    (torchvision) and bytes keys under encoding="bytes" (the dataset's own instructions).
    The C pickler has no hook for this, hence the pure-Python one; it is fast enough because
    the pixels are one bytes object.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def _dump(obj: dict, path: Path) -> None:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue())


def _class_templates(classes: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(classes, 3, size, size) float32 mean images: a colour plus a slow colour wave."""
    colors = rng.uniform(40.0, 215.0, (classes, 3))
    grid = np.arange(size) / size
    freq = rng.integers(-2, 3, (classes, 2))                      # at most 2 cycles per image
    freq[(freq == 0).all(axis=1), 0] = 1                          # every class has a wave
    phase = rng.uniform(0.0, 2 * np.pi, classes)
    wave = np.cos(2 * np.pi * (freq[:, 0, None, None] * grid[None, None, :]
                               + freq[:, 1, None, None] * grid[None, :, None])
                  + phase[:, None, None])                         # (classes, size, size)
    tint = rng.normal(0.0, 1.0, (classes, 3))
    tint /= np.linalg.norm(tint, axis=1, keepdims=True)
    templates = colors[:, :, None, None] + 35.0 * tint[:, :, None, None] * wave[:, None]
    return templates.astype(np.float32)


def _images(labels: np.ndarray, templates: np.ndarray,
            rng: np.random.Generator) -> np.ndarray:
    """uint8 (N, 3, S, S) noisy samples of each label's template."""
    n, (c, h, w) = labels.shape[0], templates.shape[1:]
    out = np.empty((n, c, h, w), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        lab = labels[start:start + _CHUNK]
        x = templates[lab]
        x += 20.0 * rng.standard_normal((lab.shape[0], 1, 1, 1), dtype=np.float32)  # brightness
        x += 30.0 * rng.standard_normal(x.shape, dtype=np.float32)                  # pixel noise
        out[start:start + _CHUNK] = np.clip(x, 0, 255).round().astype(np.uint8)
    return out


def _balanced_labels(n: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % classes).astype(np.int64)


def _check_counts(**counts: int) -> None:
    for name, value in counts.items():
        if not isinstance(value, int) or value < 1:
            raise UserError(f"{name} must be a positive integer, got {value!r}")


def write_synthetic_cifar(root: str | Path, classes: int = 10, n_train: int = 5000,
                          n_test: int = 1000, seed: int = 0) -> Path:
    """Write ROOT/cifar-10-batches-py (classes=10) or ROOT/cifar-100-python (classes=100).

    Byte layout as the real files: uint8 data rows of 3072 (RGB planes), labels as int lists,
    batch_label/filenames entries, and the meta file of label names. Returns the folder.
    """
    if classes not in (10, 100):
        raise UserError(f"classes must be 10 (CIFAR-10) or 100 (CIFAR-100), got {classes!r}")
    _check_counts(train=n_train, test=n_test)
    layout = LAYOUTS["cifar10" if classes == 10 else "cifar100"]
    folder = Path(root) / layout.folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    templates = _class_templates(classes, 32, rng)

    def batch(labels: np.ndarray, batch_label: str, first: int) -> dict:
        data = _images(labels, templates, rng).reshape(labels.shape[0], 3072)
        entry = {b"batch_label": batch_label.encode(), b"data": data,
                 b"filenames": [f"synthetic_{first + i:06d}.png".encode()
                                for i in range(labels.shape[0])]}
        if classes == 10:
            entry[b"labels"] = labels.tolist()
        else:
            entry[b"fine_labels"] = labels.tolist()
            entry[b"coarse_labels"] = (labels // 5).tolist()   # 20 superclasses of 5
        return entry

    train_labels = _balanced_labels(n_train, classes, rng)
    test_labels = _balanced_labels(n_test, classes, rng)
    if classes == 10:
        parts = np.array_split(train_labels, len(layout.train_files))
        first = 0
        for i, (name, labels) in enumerate(zip(layout.train_files, parts), start=1):
            _dump(batch(labels, f"training batch {i} of 5", first), folder / name)
            first += labels.shape[0]
        _dump(batch(test_labels, "testing batch 1 of 1", n_train), folder / layout.test_file)
        meta = {b"num_cases_per_batch": int(parts[0].shape[0]),
                b"label_names": [s.encode() for s in CIFAR10_NAMES], b"num_vis": 3072}
    else:
        _dump(batch(train_labels, "training batch 1 of 1", 0), folder / "train")
        _dump(batch(test_labels, "testing batch 1 of 1", n_train), folder / "test")
        meta = {b"fine_label_names": [f"class_{i:02d}".encode() for i in range(100)],
                b"coarse_label_names": [f"superclass_{i:02d}".encode() for i in range(20)]}
    _dump(meta, folder / layout.meta_file)
    return folder


def write_synthetic_imagenet(root: str | Path, classes: int = 10, n_train_per_class: int = 20,
                             n_val_per_class: int = 5, image_size: int = 64,
                             seed: int = 0, height: int | None = None) -> Path:
    """Write ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG ImageFolders of images
    `image_size` wide and `height` (default: as wide) tall. Returns ROOT."""
    height = image_size if height is None else height
    _check_counts(classes=classes, train=n_train_per_class, val=n_val_per_class,
                  image_size=image_size, height=height)
    if classes < 2:
        raise UserError(f"classes must be at least 2, got {classes}")
    from PIL import Image  # only the ImageNet writer needs it

    root = Path(root)
    rng = np.random.default_rng(seed)
    # ImageNet's photos are mostly 4:3 (500x375): cut such templates from square ones
    templates = _class_templates(classes, max(image_size, height), rng)[:, :, :height,
                                                                          :image_size]
    templates = np.ascontiguousarray(templates)
    wnids = [f"n{10_000_000 + k:08d}" for k in range(classes)]   # ImageNet-like class ids
    for split, per_class in (("train", n_train_per_class), ("val", n_val_per_class)):
        labels = np.repeat(np.arange(classes), per_class)
        images = _images(labels, templates, rng).transpose(0, 2, 3, 1)   # to HWC for PIL
        for wnid in wnids:
            (root / split / wnid).mkdir(parents=True, exist_ok=True)
        for i, (label, image) in enumerate(zip(labels, images)):
            path = root / split / wnids[label] / f"{wnids[label]}_{i:06d}.JPEG"
            Image.fromarray(image).save(path, format="JPEG", quality=90)
    return root


def ensure_synthetic_cifar(data_dir: str | Path, dataset: str, synthetic: dict[str, int]) -> Path:
    """DATA_DIR/<cifar folder> of an experiment's `synthetic: {n_train, n_test}` dataset,
    written first if it is not there (seed 0: every trial and machine writes the same).

    Several trials may start at once on one machine: each writes into its own temporary
    folder and renames it into place; the first rename wins and the others are discarded.
    An existing folder (real data or an earlier synthetic one) is never overwritten.
    """
    data_dir = Path(data_dir)
    target = data_dir / LAYOUTS[dataset].folder
    if target.exists():
        return target
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".synth-", dir=data_dir))
    try:
        folder = write_synthetic_cifar(tmp, classes=LAYOUTS[dataset].num_classes,
                                       n_train=synthetic["n_train"], n_test=synthetic["n_test"],
                                       seed=0)
        try:
            os.rename(folder, target)
        except OSError:
            if not target.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
