"""`onorm train` says what the recipe became and where a run resumed; --resume alone continues."""

from __future__ import annotations

import pandas as pd
import pytest

from orchestrator.cli import main
from trainers.recipe import rescale_note, rescaled_lr_momentum

TIMING = ["epoch_time_s", "images_per_s"]


def _flags(data_dir, model_dir, *extra):
    return ["train", "cifar10", str(data_dir), "--model-dir", str(model_dir), "-d", "8",
            "--epochs", "2", "-b", "64", "--norm-mode", "online", "--afwd", "511/512",
            "--lr", "0.2", "--lr-milestones", "1", "-j", "0", "--seed", "3", "--device", "cpu",
            "-p", "0", *extra]


def test_the_first_line_is_the_effective_lr_and_momentum(cifar10_dir, tmp_path, capsys):
    assert main(_flags(cifar10_dir, tmp_path / "md", "--epochs", "1")) == 0
    lr, momentum = rescaled_lr_momentum(0.2, 0.9, 64, 128)
    assert (round(lr, 5), round(momentum, 4)) == (0.05132, 0.9487)
    assert capsys.readouterr().out.splitlines()[0] == (
        "batch size 64: effective lr 0.05132 (lr 0.2) and momentum 0.9487 (momentum 0.9), "
        "rescaled from the recipe's batch 128 as the seed scripts do")
    # the demo's numbers (docs/train.md), and nothing to say at the recipe's own batch size
    from trainers.config import make_config

    demo = make_config("cifar10", "/d", batch_size=64)
    assert "effective lr 0.02566 (lr 0.1) and momentum 0.9487" in rescale_note(demo)
    assert rescale_note(make_config("cifar10", "/d")) is None
    assert rescale_note(make_config("imagenet", "/d", batch_size=256)) is None


def test_resume_alone_continues_exactly_and_says_from_which_epoch(cifar10_dir, tmp_path,
                                                                   capsys, monkeypatch):
    import trainers.train

    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(_flags(cifar10_dir, straight)) == 0
    real_summary = trainers.train._summary

    def interrupt(*args):   # right after epoch 1's checkpoint: Ctrl-C
        raise KeyboardInterrupt
    monkeypatch.setattr(trainers.train, "_summary", interrupt)
    assert main(_flags(cifar10_dir, split)) == 130
    monkeypatch.setattr(trainers.train, "_summary", real_summary)
    capsys.readouterr()

    # no dataset, folder, model or recipe flag: all of it from the checkpoint, into its folder
    assert main(["train", "--resume", str(split / "checkpoint.pth.tar")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("batch size 64: effective lr 0.05132 (lr 0.2)")
    assert out[1] == "resumed from epoch 1's checkpoint: training epoch 2 of 2"
    a = pd.read_parquet(straight / "metrics.parquet").drop(columns=TIMING)
    b = pd.read_parquet(split / "metrics.parquet").drop(columns=TIMING)
    pd.testing.assert_frame_equal(a, b, check_exact=True)   # online 511/512, lr 0.2, seed 3

    # again: nothing left; a model flag given must agree with the checkpoint
    assert main(["train", "--resume", str(split)]) == 0
    assert ("resumed from epoch 2's checkpoint: all 2 epochs are done (pass --epochs N, "
            "N > 2, to train further)") in capsys.readouterr().out
    assert main(["train", "--resume", str(split), "-d", "14"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "depth=8 (now 14)" in err


@pytest.mark.parametrize("argv", [["train"], ["train", "cifar10"]])
def test_without_resume_the_dataset_and_folder_are_needed(argv, capsys):
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        "onorm train: error: give the dataset and its folder (onorm train DATASET DIR ...), "
        "or --resume CHECKPOINT to continue a run\n")
