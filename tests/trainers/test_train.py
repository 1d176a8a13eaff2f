"""train(): reports, checkpoints, Parquet rows, divergence, bad checkpoints, evaluation."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from trainers.errors import UserError
from trainers.records import EPOCH_METRIC_KEYS, METRIC_COLUMNS
from trainers.train import TrainOutcome, train


def _quiet(config, model_dir, **kw):
    reports = []
    lines = []
    outcome = train(config, lambda m, p: reports.append((m, p)), model_dir=model_dir,
                    progress=False, print_freq=0, log=lines.append, **kw)
    return outcome, reports, lines


@pytest.fixture(scope="module")
def three_epochs(tmp_path_factory, cifar10_dir):
    from trainers.config import make_config
    config = make_config("cifar10", str(cifar10_dir), depth=8, epochs=3, batch_size=64,
                         seed=0, workers=0, device="cpu", lr_milestones=[2],
                         lr_multiplier=0.1)
    model_dir = tmp_path_factory.mktemp("run")
    outcome, reports, lines = _quiet(config, model_dir)
    return config, model_dir, outcome, reports, lines


def test_reports_exact_keys_once_per_epoch(three_epochs):
    _, model_dir, outcome, reports, lines = three_epochs
    assert [m["epoch"] for m, _ in reports] == [1, 2, 3]
    for metrics, path in reports:
        assert list(metrics) == EPOCH_METRIC_KEYS
        assert path == model_dir / "checkpoint.pth.tar"
        assert all(math.isfinite(v) for v in metrics.values())
        assert 0 <= metrics["val_acc1"] <= metrics["val_acc5"] <= 100
        assert metrics["images_per_s"] > 0 and metrics["epoch_time_s"] > 0
    # first what batch 64 makes of the recipe's lr and momentum, then one line per epoch
    assert lines[0].startswith("batch size 64: effective lr 0.02566 (lr 0.1) and momentum")
    assert len(lines) == 4 and lines[1].startswith("epoch 1 ")
    assert outcome.status == "completed" and outcome.epochs_done == 3
    best = max(reports, key=lambda r: r[0]["val_acc1"])[0]
    assert outcome.best_val_acc1 == best["val_acc1"]
    assert outcome.final_metrics == reports[-1][0]


def test_lr_column_follows_milestones_and_batch_rescaling(three_epochs):
    _, model_dir, _, reports, _ = three_epochs
    # batch 64 against the CIFAR base of 128: momentum 0.9**0.5, lr scaled to keep the step
    m = 0.9 ** 0.5
    lr = 0.1 * 0.5 * (1 - m) / (1 - 0.9)
    df = pd.read_parquet(model_dir / "metrics.parquet")
    assert df.lr.tolist() == pytest.approx([lr, lr, lr * 0.1])
    assert [r[0]["lr"] for r in reports] == pytest.approx([lr, lr, lr * 0.1])


def test_metrics_parquet_matches_reports(three_epochs):
    config, model_dir, _, reports, _ = three_epochs
    df = pd.read_parquet(model_dir / "metrics.parquet")
    assert list(df.columns) == METRIC_COLUMNS
    assert df.epoch.tolist() == [1, 2, 3]
    assert df.val_acc1.tolist() == [m["val_acc1"] for m, _ in reports]
    assert set(df.norm) == {"batch"} and set(df.depth) == {8} and set(df.seed) == {0}


def test_checkpoint_loads_with_weights_only_and_holds_everything(three_epochs):
    config, model_dir, outcome, reports, _ = three_epochs
    state = torch.load(model_dir / "checkpoint.pth.tar", weights_only=True)
    assert state["epoch"] == 3 and state["config"] == config.to_dict()
    assert state["best_acc1"] == outcome.best_val_acc1
    assert state["best_epoch"] == outcome.best_epoch
    assert "bn1.running_mean" in state["model"]        # normalizer buffers included
    assert state["optimizer"]["state"]                   # momentum buffers
    assert state["scheduler"]["last_epoch"] == 2
    assert set(state["rng"]) == {"torch", "python", "numpy", "cuda"}
    best = torch.load(model_dir / "model_best.pth.tar", weights_only=True)
    assert best["epoch"] == outcome.best_epoch
    assert best["metrics"]["val_acc1"] == outcome.best_val_acc1


def test_resume_of_finished_run_does_nothing(three_epochs, tmp_path):
    config, model_dir, outcome, _, _ = three_epochs
    again, reports, _ = _quiet(config, tmp_path, resume=model_dir / "checkpoint.pth.tar")
    assert reports == [] and again.epochs_done == 3
    assert again.best_val_acc1 == outcome.best_val_acc1


def test_evaluate_only_reproduces_last_validation(three_epochs, tmp_path):
    config, model_dir, outcome, _, _ = three_epochs
    result, reports, lines = _quiet(config, tmp_path, resume=model_dir / "checkpoint.pth.tar",
                                    evaluate_only=True)
    assert reports == [] and not list(tmp_path.iterdir())   # evaluation writes nothing
    assert result.final_metrics["val_acc1"] == outcome.final_metrics["val_acc1"]
    assert result.final_metrics["val_loss"] == pytest.approx(outcome.final_metrics["val_loss"])
    assert "val loss" in lines[-1]


def test_divergence_stops_and_reports_nan(tiny_cifar, tmp_path):
    config = tiny_cifar(norm="none", lr=1e12, epochs=3)
    outcome, reports, _ = _quiet(config, tmp_path)
    assert outcome.status == "diverged"
    assert len(reports) == outcome.epochs_done <= 2
    last = reports[-1][0]
    assert math.isnan(last["train_loss"]) and math.isnan(last["val_acc1"])
    df = pd.read_parquet(tmp_path / "metrics.parquet")
    assert len(df) == outcome.epochs_done and math.isnan(df.val_loss.iloc[-1])
    assert isinstance(outcome, TrainOutcome)


def test_checkpoint_of_another_model_is_a_user_error(tiny_cifar, three_epochs, tmp_path):
    _, model_dir, _, _, _ = three_epochs
    with pytest.raises(UserError, match="does not match the model.*norm='batch'.*online"):
        train(tiny_cifar(norm="online"), model_dir=tmp_path, progress=False,
              resume=model_dir / "checkpoint.pth.tar", log=lambda s: None)
    with pytest.raises(UserError, match="does not match the model.*depth=8"):
        train(tiny_cifar(depth=14), model_dir=tmp_path, progress=False,
              resume=model_dir, log=lambda s: None)
    # what an epoch is, or the optimizer's parameter groups, must not change either
    with pytest.raises(UserError, match="does not match the model.*batch_size=64 .now 32"):
        train(tiny_cifar(batch_size=32), model_dir=tmp_path, progress=False,
              resume=model_dir, log=lambda s: None)
    with pytest.raises(UserError, match="does not match the model.*norm_weight_decay"):
        train(tiny_cifar(norm_weight_decay="exempt"), model_dir=tmp_path, progress=False,
              resume=model_dir, log=lambda s: None)
    # group count matters only to group norm: this batch-norm checkpoint resumes
    train(tiny_cifar(gn_num_groups=4, epochs=4), model_dir=tmp_path / "gn", progress=False,
          resume=model_dir, log=lambda s: None)
    assert pd.read_parquet(tmp_path / "gn" / "metrics.parquet").epoch.tolist() == [4]
    # Online Norm's decay factors are not in its checkpoint: a change would go unseen
    online = tiny_cifar(norm="online", epochs=1)
    train(online, model_dir=tmp_path / "on", progress=False, log=lambda s: None)
    with pytest.raises(UserError, match="does not match the model.*afwd="):
        train(online.replace(afwd=0.5, epochs=2), model_dir=tmp_path / "on2", progress=False,
              resume=tmp_path / "on", log=lambda s: None)


def test_corrupt_or_missing_checkpoint_is_a_user_error(tiny_cifar, tmp_path):
    bad = tmp_path / "checkpoint.pth.tar"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="corrupt") as err:
        train(tiny_cifar(), model_dir=tmp_path, resume=bad, progress=False, log=lambda s: None)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="does not exist"):
        train(tiny_cifar(), model_dir=tmp_path, resume=tmp_path / "nope.pth.tar",
              progress=False, log=lambda s: None)


def test_progress_bar_and_print_freq_lines(tiny_cifar, tmp_path):
    lines: list[str] = []
    train(tiny_cifar(epochs=1), model_dir=tmp_path, progress=False, print_freq=2,
          log=lines.append)
    # 256 images / batch 64 = 4 batches: lines at batches 2 and 4, then the summary (after
    # the line on the effective lr and momentum)
    assert lines[0].startswith("batch size 64: effective lr")
    assert [line.split(" [")[1][:3] for line in lines[1:3]] == ["2/4", "4/4"]
    assert lines[3].startswith("epoch 1 lr")
    lines.clear()
    train(tiny_cifar(epochs=1), model_dir=tmp_path / "p", progress=True, print_freq=2,
          log=lines.append)
    assert len(lines) == 2   # the live bar replaces the per-batch lines


def test_resume_with_another_recipe_says_the_checkpoint_wins(three_epochs, tmp_path):
    config, model_dir, _, _, _ = three_epochs
    lines: list[str] = []
    train(config.replace(lr=0.5, epochs=4), model_dir=tmp_path, progress=False, print_freq=0,
          resume=model_dir / "checkpoint.pth.tar", log=lines.append)
    # the effective lr is the checkpoint's (0.1 at batch 64), not 0.5's, then why
    assert lines[0].startswith("batch size 64: effective lr 0.02566 (lr 0.1)")
    assert "checkpoint's lr" in lines[1]
    assert lines[2] == "resumed from epoch 3's checkpoint: training epoch 4 of 4"
    df = pd.read_parquet(tmp_path / "metrics.parquet")
    saved_lr = pd.read_parquet(model_dir / "metrics.parquet").lr.iloc[-1]
    assert df.epoch.tolist() == [4] and df.lr.tolist() == [saved_lr]
