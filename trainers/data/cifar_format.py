"""The CIFAR-10/100 python-pickle layout: file names, keys, and a reader that checks them.

The format (https://www.cs.toronto.edu/~kriz/cifar.html): each batch file is a pickled dict
whose b'data' is a uint8 array of N rows x 3072 (1024 red, then green, then blue values, each
plane row-major 32x32) and whose b'labels' (CIFAR-10) or b'fine_labels' (CIFAR-100) is a
list of N ints. No torch here: the synthetic writer uses this module too.

The files are pickles, and unpickling can run any code a file names, so they are read with
an unpickler that builds only what the real files hold: plain containers, strings, numbers,
and numpy arrays with their dtypes. Anything else is refused before it is called.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainers.errors import UserError

IMAGE_SHAPE = (3, 32, 32)


@dataclass(frozen=True)
class CifarLayout:
    dataset: str                 # trial config name
    title: str                   # for messages
    folder: str                  # sub-folder of the data directory
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str               # key of the labels in each batch dict
    num_classes: int

    def expected(self) -> str:
        """What the folder must hold, for error messages."""
        if len(self.train_files) > 1:
            train = f"{self.train_files[0][:-1]}1..{len(self.train_files)}"
        else:
            train = self.train_files[0]
        return f"{self.folder}/{train}, {self.test_file} and {self.meta_file}"


LAYOUTS = {
    "cifar10": CifarLayout("cifar10", "CIFAR-10", "cifar-10-batches-py",
                           tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                           "batches.meta", "labels", 10),
    "cifar100": CifarLayout("cifar100", "CIFAR-100", "cifar-100-python", ("train",), "test",
                            "meta", "fine_labels", 100),
}


def missing_message(root: Path, layout: CifarLayout, problem: str) -> str:
    classes = layout.num_classes
    return (f"{layout.title} data {problem} in {root}: expected {layout.expected()}; run "
            f"`onorm data synth-cifar {root} --classes {classes}` for a synthetic one, or "
            "place the dataset there")


def _str_keys(entry: dict) -> dict:
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


class ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle asked for a global that CIFAR files never hold (it could run code)."""


def _array_globals() -> dict[tuple[str, str], object]:
    """The only callables a CIFAR pickle may name: numpy's array and dtype reconstruction
    (under numpy 1's module names, which the real files use, and numpy 2's), and the codec
    Python 3's protocol-2 pickler writes bytes with."""
    import codecs

    core = getattr(np, "_core", None) or np.core
    return {
        ("numpy.core.multiarray", "_reconstruct"): core.multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): core.multiarray._reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        allowed = _array_globals()
        if (module, name) not in allowed:
            raise ForbiddenGlobal(f"it asks for {module}.{name}, which no CIFAR file holds; "
                                  "refused without running it")
        return allowed[(module, name)]


def load_batch_file(path: Path) -> dict:
    """A CIFAR batch or meta file's dict (str keys), built without running code from it."""
    with open(path, "rb") as f:
        # Files pickled by Python 2 (the real ones) load with bytes keys under encoding="bytes".
        return _str_keys(_CifarUnpickler(f, encoding="bytes").load())


def _read_batch(path: Path, layout: CifarLayout, root: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        entry = load_batch_file(path)
        data = np.asarray(entry["data"])
        labels = np.asarray(entry[layout.label_key], dtype=np.int64)
    except FileNotFoundError:
        raise UserError(missing_message(root, layout,
                                        f"incomplete ({path.name} missing)")) from None
    except ForbiddenGlobal as err:
        raise UserError(f"{layout.title} file {path} is not a CIFAR batch: {err}; replace it "
                        "with the real file or write a synthetic dataset (onorm data "
                        "synth-cifar)") from None
    except Exception as err:   # a damaged pickle can fail in any way (even an import)
        raise UserError(missing_message(
            root, layout, f"unreadable ({path.name}: {type(err).__name__} {err})")) from None
    n = labels.shape[0]
    if data.dtype != np.uint8 or data.shape != (n, 3 * 32 * 32):
        raise UserError(missing_message(
            root, layout, f"malformed ({path.name}: data is {data.dtype} {data.shape}, "
                          f"labels {n}; want uint8 ({n}, 3072))"))
    if n and (labels.min() < 0 or labels.max() >= layout.num_classes):
        raise UserError(missing_message(
            root, layout, f"malformed ({path.name}: labels outside 0..{layout.num_classes - 1})"))
    return data.reshape(n, *IMAGE_SHAPE), labels


def read_split(root: Path, layout: CifarLayout, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images N x 3 x 32 x 32, int64 labels N) of the train or test split."""
    folder = Path(root) / layout.folder
    names = layout.train_files if train else (layout.test_file,)
    parts = [_read_batch(folder / name, layout, Path(root)) for name in names]
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return data, labels
