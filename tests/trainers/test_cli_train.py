"""`onorm train`: every seed-script flag parses and takes effect; bad input is one line, exit 2."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import torch

from orchestrator.cli import build_parser, main
from trainers.cli_train import EXIT_DIVERGED, config_from_args, model_dir_of
from trainers.recipe import rescaled_lr_momentum


def _config(*argv):
    args = build_parser().parse_args(["train", *argv])
    return args, config_from_args(args)


def test_every_seed_flag_maps_to_the_config():
    args, c = _config(
        "cifar10", "/data", "--model-dir", "/md", "-d", "32", "-j", "3", "--epochs", "7",
        "--start-epoch", "2", "-b", "32", "--learning-rate", "0.05", "--lr-milestones", "3",
        "5", "--lr-multiplier", "0.2", "--momentum", "0.8", "--weight-decay", "1e-3", "-p",
        "5", "--resume", "/md/checkpoint.pth.tar", "-e", "--seed", "7", "--norm-mode",
        "online", "--decay-factor-forward", "255/256", "--decay-factor-backward", "0.5",
        "--ecm", "ac", "--gn-num-groups", "4", "--norm-weight-decay", "bias", "--device",
        "cpu")
    assert (c.dataset, c.data_dir, c.depth, c.workers, c.epochs, c.batch_size) == \
        ("cifar10", "/data", 32, 3, 7, 32)
    assert (c.lr, c.lr_milestones, c.lr_multiplier, c.momentum, c.weight_decay) == \
        (0.05, (3, 5), 0.2, 0.8, 1e-3)
    assert (c.seed, c.norm, c.afwd, c.abkw, c.ecm, c.gn_num_groups) == \
        (7, "online", 255 / 256, 0.5, "ac", 4)
    assert (c.norm_weight_decay, c.device) == ("bias", "cpu")
    assert (args.model_dir, args.start_epoch, args.print_freq, args.resume, args.evaluate) == \
        ("/md", 2, 5, "/md/checkpoint.pth.tar", True)
    # the short aliases
    _, c = _config("imagenet", "/d", "-a", "resnet50", "--lr", "0.3", "--wd", "0",
                   "--afwd", "0.9", "--abkw", "0.8", "--pretrained")
    assert (c.arch, c.lr, c.weight_decay, c.afwd, c.abkw, c.pretrained) == \
        ("resnet50", 0.3, 0.0, 0.9, 0.8, True)


@pytest.mark.parametrize("dataset, expected", [
    ("cifar10", dict(depth=20, epochs=250, batch_size=128, lr_milestones=(100, 150, 200),
                     weight_decay=2e-4, afwd=1023 / 1024, abkw=127 / 128, gn_num_groups=8)),
    ("cifar100", dict(depth=20, epochs=250, batch_size=128, afwd=511 / 512, abkw=15 / 16,
                      gn_num_groups=8)),
    ("imagenet", dict(arch="resnet18", epochs=90, batch_size=256,
                      lr_milestones=(30, 60, 80, 90), weight_decay=1e-4, afwd=0.999,
                      abkw=0.99, gn_num_groups=32, norm_weight_decay="exempt")),
])
def test_per_dataset_defaults(dataset, expected):
    args, c = _config(dataset, "/d")
    assert {k: getattr(c, k) for k in expected} == expected
    assert (c.lr, c.momentum, c.lr_multiplier, c.norm, c.ecm, c.workers, c.seed) == \
        (0.1, 0.9, 0.1, "batch", "ls", 4, None)
    # ./model_dir unless given (with --resume alone: the checkpoint's folder)
    assert (model_dir_of(args), args.print_freq, args.start_epoch) == ("./model_dir", 10, 0)


def test_training_run_applies_flags_and_writes_model_dir(cifar10_dir, tmp_path, monkeypatch,
                                                         capsys):
    import trainers.models
    built = []
    real_build = trainers.models.build_model
    monkeypatch.setattr(trainers.models, "build_model",
                        lambda *a, **k: built.append(real_build(*a, **k)) or built[-1])
    md = tmp_path / "md"
    code = main(["train", "cifar10", str(cifar10_dir), "--model-dir", str(md), "-d", "8",
                 "--epochs", "3", "-b", "64", "--lr", "0.2", "--lr-milestones", "2",
                 "--lr-multiplier", "0.5", "--momentum", "0.8", "--wd", "1e-3", "-j", "0",
                 "--seed", "1", "--norm-mode", "online", "--afwd", "511/512", "--abkw",
                 "63/64", "--ecm", "ac", "--device", "cpu", "-p", "2"])
    assert code == 0
    assert {p.name for p in md.iterdir()} >= {"checkpoint.pth.tar", "model_best.pth.tar",
                                              "metrics.parquet"}
    df = pd.read_parquet(md / "metrics.parquet")
    assert df.epoch.tolist() == [1, 2, 3]
    lr, momentum = rescaled_lr_momentum(0.2, 0.8, 64, 128)
    assert df.lr.tolist() == pytest.approx([lr, lr, lr * 0.5])   # milestone 2 -> epoch 3
    assert set(df.norm) == {"online"} and set(df.afwd) == {511 / 512}

    state = torch.load(md / "checkpoint.pth.tar", weights_only=True)
    group = state["optimizer"]["param_groups"][0]
    assert group["weight_decay"] == 1e-3 and group["momentum"] == pytest.approx(momentum)
    layers = [m for m in built[0].modules() if type(m).__name__ == "OnlineNorm2d"]
    assert len(layers) == 9   # depth 8: stem + 3 blocks x 2 + 2 projections
    assert {(m.alpha_fwd, m.alpha_bkw, m.ecm) for m in layers} == {(511 / 512, 63 / 64, "ac")}
    out = capsys.readouterr().out
    assert "epoch 1 [2/4]" in out and "best val acc1" in out

    # resume for one more epoch; then evaluate the result
    code = main(["train", "cifar10", str(cifar10_dir), "--model-dir", str(md), "-d", "8",
                 "--epochs", "4", "-b", "64", "--lr", "0.2", "--lr-milestones", "2",
                 "--lr-multiplier", "0.5", "--momentum", "0.8", "--wd", "1e-3", "-j", "0",
                 "--seed", "1", "--norm-mode", "online", "--afwd", "511/512", "--abkw",
                 "63/64", "--ecm", "ac", "--device", "cpu", "-p", "0",
                 "--resume", str(md / "checkpoint.pth.tar")])
    assert code == 0
    assert pd.read_parquet(md / "metrics.parquet").epoch.tolist() == [1, 2, 3, 4]
    capsys.readouterr()
    code = main(["train", "cifar10", str(cifar10_dir), "--model-dir", str(tmp_path / "ev"),
                 "-d", "8", "--norm-mode", "online", "--afwd", "511/512", "--abkw", "63/64",
                 "--ecm", "ac", "-j", "0", "-b", "64", "--device", "cpu", "-e",
                 "--resume", str(md)])
    assert code == 0
    last = pd.read_parquet(md / "metrics.parquet").iloc[-1]
    assert f"acc1 {last.val_acc1:.2f}" in capsys.readouterr().out


def test_depth_and_start_epoch_take_effect(cifar10_dir, tmp_path, capsys):
    md = tmp_path / "md"
    argv = ["train", "cifar10", str(cifar10_dir), "--model-dir", str(md), "-d", "14",
            "--epochs", "3", "--start-epoch", "2", "--lr-milestones", "2", "-b", "128",
            "-j", "0", "--seed", "0", "--device", "cpu", "-p", "0"]
    code = main(argv)
    assert code == 0
    df = pd.read_parquet(md / "metrics.parquet")
    assert df.epoch.tolist() == [3] and df.lr.tolist() == pytest.approx([0.01])
    state = torch.load(md / "checkpoint.pth.tar", weights_only=True)
    blocks = {k.split(".")[1] for k in state["model"] if k.startswith("layer1.")}
    assert len(blocks) == 2    # depth 14 = 6*2+2: two blocks per stage
    # a fresh run into the same model dir is refused: it would mix its rows into these
    capsys.readouterr()
    assert main([*argv[:-6], "--norm-mode", "group", "-p", "0"]) == 2
    assert "--resume" in _one_line_error(capsys)
    pd.testing.assert_frame_equal(pd.read_parquet(md / "metrics.parquet"), df)


def test_imagenet_folders_train(imagenet_dir, tmp_path):
    md = tmp_path / "md"
    code = main(["train", "imagenet", str(imagenet_dir), "--model-dir", str(md), "-a",
                 "resnet18", "--synthetic-image-size", "32", "-b", "32", "--epochs", "1",
                 "-j", "0", "--seed", "0", "--norm-mode", "group", "--gn-num-groups", "4",
                 "--device", "cpu", "-p", "0"])
    assert code == 0
    state = torch.load(md / "checkpoint.pth.tar", weights_only=True)
    assert state["model"]["fc.weight"].shape == (4, 512)
    assert state["config"]["gn_num_groups"] == 4
    # ImageNet's default --norm-weight-decay exempt: group norm parameters get no decay
    groups = state["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [1e-4, 0.0]
    n_norm_params = 2 * (1 + 2 * 8 + 3)   # stem, 8 blocks x 2, 3 projections
    assert len(groups[1]["params"]) == n_norm_params


def test_divergence_has_its_own_exit_code(cifar10_dir, tmp_path, capsys):
    code = main(["train", "cifar10", str(cifar10_dir), "--model-dir", str(tmp_path), "-d",
                 "8", "--epochs", "2", "-b", "64", "--lr", "1e12", "--norm-mode", "none",
                 "-j", "0", "--seed", "0", "--device", "cpu", "-p", "0"])
    assert code == EXIT_DIVERGED == 3
    assert "diverged" in capsys.readouterr().err


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("argv, needle", [
    (["-d", "9"], "depth 9 is not 6n+2"),
    (["--afwd", "1.5"], "afwd must be in (0, 1)"),
    (["-b", "0"], "batch_size must be in [1, 1048576]"),   # was ">= 1": now bounded
    (["-j", "-1"], "workers must be in [0, 1024]"),   # was ">= 0": now bounded
    (["--start-epoch", "-1"], "--start-epoch must be in [0, 250)"),
    (["--start-epoch", "250"], "--start-epoch must be in [0, 250)"),
    (["-a", "resnet50"], "only 'resnet'"),
    (["--device", "cuda:7"], "cuda"),
    (["--pretrained"], "--pretrained"),
])
def test_bad_values_are_one_line_user_errors(argv, needle, cifar10_dir, tmp_path, capsys):
    code = main(["train", "cifar10", str(cifar10_dir), "--model-dir", str(tmp_path),
                 "-j", "0", *argv])
    assert code == 2
    assert needle in _one_line_error(capsys)


@pytest.mark.parametrize("argv, needle", [
    (["--norm-mode", "batchy"], "invalid choice: 'batchy'"),
    (["--lr", "fast"], "expected a number or a fraction like 1023/1024, got 'fast'"),
    (["--afwd", "1023/0"], "fraction like 1023/1024"),
    (["--ecm", "xx"], "invalid choice"),
])
def test_unparsable_flags_are_one_line(argv, needle, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "cifar10", str(tmp_path), *argv])
    assert exit_info.value.code == 2
    assert needle in _one_line_error(capsys)


def test_missing_dataset_and_bad_checkpoint(cifar10_dir, tmp_path, capsys):
    assert main(["train", "imagenet", str(tmp_path / "nowhere"), "--model-dir",
                 str(tmp_path / "md"), "-j", "0", "--device", "cpu"]) == 2
    assert "nowhere" in _one_line_error(capsys)
    bad = tmp_path / "checkpoint.pth.tar"
    bad.write_bytes(b"\x00garbage")
    assert main(["train", "cifar10", str(cifar10_dir), "--model-dir", str(tmp_path / "md"),
                 "-d", "8", "-j", "0", "--device", "cpu", "--resume", str(bad)]) == 2
    assert "corrupt" in _one_line_error(capsys)


def test_cli_module_does_not_import_torch():
    code = ("import sys, orchestrator.cli as c; c.build_parser(); "
            "import trainers.cli_train; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


def test_a_model_dir_that_is_a_file_is_one_line(cifar10_dir, tmp_path, capsys):
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    assert main(["train", "cifar10", str(cifar10_dir), "--model-dir", str(afile), "-d", "8",
                 "-j", "0", "--device", "cpu"]) == 2
    assert "is a file" in _one_line_error(capsys) and afile.read_text() == "mine"


def test_after_ctrl_c_the_hint_is_the_command_that_resumes(cifar10_dir, tmp_path, capsys,
                                                           monkeypatch):
    import shlex

    import trainers.train

    md = tmp_path / "md"
    argv = ["train", "cifar10", str(cifar10_dir), "--model-dir", str(md), "-d", "8",
            "--epochs", "2", "-b", "64", "-j", "0", "--seed", "0", "--device", "cpu", "-p", "0"]
    real_summary = trainers.train._summary

    def interrupt_after_the_first_checkpoint(*args):   # after save_checkpoint: Ctrl-C
        raise KeyboardInterrupt
    monkeypatch.setattr(trainers.train, "_summary", interrupt_after_the_first_checkpoint)
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "onorm train: interrupted; resume with: onorm train " in err
    hint = err.split("resume with: ", 1)[1].strip()
    assert shlex.split(hint)[-2:] == ["--resume", str(md / "checkpoint.pth.tar")]
    monkeypatch.setattr(trainers.train, "_summary", real_summary)
    assert main(shlex.split(hint)[1:]) == 0         # the printed command is accepted
    assert pd.read_parquet(md / "metrics.parquet").epoch.tolist() == [1, 2]
    # with nothing checkpointed yet, the same command starts again
    other = tmp_path / "other"
    monkeypatch.setattr(trainers.train, "save_checkpoint", interrupt_after_the_first_checkpoint)
    argv[argv.index(str(md))] = str(other)
    assert main(argv) == 130
    assert "no epoch was checkpointed yet: re-run the same command" in capsys.readouterr().err
