"""Write the small synthetic CIFAR-format dataset an experiment asks for, once, race-free."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

CLASSES = {"cifar10": 10, "cifar100": 100}


def ensure_synthetic_cifar(data_dir: str | Path, dataset: str, synthetic: dict[str, int]) -> Path:
    """Return DATA_DIR/<cifar folder>, writing it first if it is not there.

    Several trials may start at once on one machine: each writes into its own temporary
    folder and renames it into place; the first rename wins and the others are discarded.
    An existing folder (real data or an earlier synthetic one) is never overwritten.
    """
    from trainers.data.cifar_format import LAYOUTS
    from trainers.data.synthetic import write_synthetic_cifar

    data_dir = Path(data_dir)
    target = data_dir / LAYOUTS[dataset].folder
    if target.exists():
        return target
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".synth-", dir=data_dir))
    try:
        folder = write_synthetic_cifar(tmp, classes=CLASSES[dataset], n_train=synthetic["n_train"],
                                       n_test=synthetic["n_test"], seed=0)
        try:
            os.rename(folder, target)
        except OSError:
            if not target.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
