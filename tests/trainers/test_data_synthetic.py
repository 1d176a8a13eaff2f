"""Synthetic datasets: deterministic, balanced, learnable, and written by `onorm data`."""

from __future__ import annotations

import pickle

import pytest
import torch

from orchestrator.cli import main
from trainers.config import make_config
from trainers.data import build_data
from trainers.data.synthetic import write_synthetic_cifar
from trainers.errors import UserError

CPU = torch.device("cpu")


def _read(path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        write_synthetic_cifar(tmp_path / name, classes=10, n_train=40, n_test=10, seed=seed)
    batch = "cifar-10-batches-py/data_batch_2"
    a, b, c = ((tmp_path / n / batch).read_bytes() for n in "abc")
    assert a == b and a != c


def test_cifar_is_learnable_by_a_nearest_class_mean(tmp_path):
    """Class means of augmented training images classify held-out images far above chance;
    a ResNet has more to go on than that."""
    write_synthetic_cifar(tmp_path, classes=10, n_train=1000, n_test=500, seed=0)
    data = build_data(make_config("cifar10", str(tmp_path), batch_size=100, workers=0), CPU)
    sums, counts = torch.zeros(10, 3 * 32 * 32), torch.zeros(10)
    for images, labels in data.train_batches(0):
        sums.index_add_(0, labels, images.flatten(1))
        counts += torch.bincount(labels, minlength=10)
    means = sums / counts[:, None]
    correct = sum(int((torch.cdist(x.flatten(1), means).argmin(1) == y).sum())
                  for x, y in data.val_batches())
    assert correct / data.val_images > 0.5                          # chance is 0.1


def test_cli_writes_cifar_and_imagenet(tmp_path, capsys):
    assert main(["data", "synth-cifar", str(tmp_path / "c"), "--classes", "100",
                 "--train", "30", "--test", "7", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "30 train + 7 test" in out and str(tmp_path / "c" / "cifar-100-python") in out
    entry = _read(tmp_path / "c" / "cifar-100-python" / "train")
    assert entry[b"data"].shape == (30, 3072) and max(entry[b"fine_labels"]) < 100
    assert main(["data", "synth-imagenet", str(tmp_path / "i"), "--classes", "2",
                 "--train", "3", "--val", "1", "--image-size", "24"]) == 0
    assert "2 classes x (3 train + 1 val)" in capsys.readouterr().out
    files = sorted(p.relative_to(tmp_path / "i").as_posix()
                   for p in (tmp_path / "i").rglob("*.JPEG"))
    assert len(files) == 8 and files[0].startswith("train/n10000000/")
    from PIL import Image
    assert Image.open(tmp_path / "i" / files[-1]).size == (24, 24)


def test_cli_rejects_bad_counts(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["data", "synth-cifar", str(tmp_path), "--classes", "20"])
    assert exit_.value.code == 2
    with pytest.raises(SystemExit):
        main(["data", "synth-imagenet", str(tmp_path), "--train", "0"])
    assert main(["data", "synth-imagenet", str(tmp_path), "--classes", "1"]) == 2
    assert "--classes must be at least 2" in capsys.readouterr().err
    with pytest.raises(UserError, match="classes must be 10 .* or 100"):
        write_synthetic_cifar(tmp_path, classes=12)


def test_cli_module_does_not_import_torch():
    import subprocess
    import sys
    code = ("import sys, trainers.cli_data, argparse; "
            "p = argparse.ArgumentParser(); trainers.cli_data.add_parser(p.add_subparsers()); "
            "print('torch' in sys.modules, 'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["False", "False"]
