"""A corpus of malformed experiments files, each run with `onorm run` (no --dry-run): one
line on stderr naming the experiment and key path (or the file), exit 2, nothing written,
and Ray never started (ray.init is made to fail the test, so a check that moved after Ray
would show here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from orch_helpers import GOOD

from orchestrator.cli import main

TUNE = """\
tiny:
  kind: tune
  dataset: cifar10
  data_dir: data
  synthetic: {n_train: 128, n_test: 64}
  settings: {depth: 8, epochs: 3, batch_size: 64, workers: 0, device: cpu}
  space: {afwd: {dyadic: [8, 9]}, abkw: {dyadic: [4, 5]}}
"""
K = "experiment 'tiny', key "

# (id, file text or bytes, expected part of the line)
CASES = [
    # found by fault injection: refused only after Ray started, or a traceback, or a hang
    ("groups", GOOD.replace("{norm: batch, seeds: 2}", "{norm: group, gn_num_groups: 7}"),
     K + "'cells[0].gn_num_groups': gn_num_groups 7 does not divide 16, a channel count of "
         "the CIFAR ResNet (16/32/64): use one of 1, 2, 4, 8, 16"),
    ("seed_2_32", GOOD.replace("seeds: 2", "seeds: [4294967296]"),
     K + "'cells[0].seeds[0]': expected an integer in [0, 4294967295], got 4294967296"),
    ("seed_2_64", GOOD.replace("seeds: 2", f"seeds: [{2**64}]"),
     K + "'cells[0].seeds[0]': expected an integer in [0, 4294967295], got "
         "18446744073709551616"),
    ("epochs_1e30", GOOD.replace("epochs: 3", "epochs: 1e30"),
     K + "'settings.epochs': expected an integer in [1, 100000], got '1e30'"),
    ("epochs_10_30", GOOD.replace("epochs: 3", f"epochs: {10**30}"),
     K + "'settings.epochs': expected an integer in [1, 100000], got an integer of 31 digits"),
    ("lr_1e1000", GOOD.replace("epochs: 3", 'epochs: 3, lr: "1e1000"'),
     K + "'settings.lr': expected a finite number, got '1e1000'"),
    ("lr_10_400", GOOD.replace("epochs: 3", f"epochs: 3, lr: {10**400}"),
     K + "'settings.lr': expected a finite number, got an integer of 401 digits"),
    ("synthetic_1e15", GOOD.replace("n_train: 128", f"n_train: {10**15}"),
     K + "'synthetic.n_train': expected an integer in [1, 100000], got 1000000000000000"),
    ("not_utf8", GOOD.encode().replace(b"data_dir: data", b"data_dir: d\xffta"),
     "is not UTF-8 text (byte 0xff at line 3): save it as UTF-8"),
    ("nested", "tiny: " + "[" * 20_000,
     "is not valid YAML at line 1: nested more than 50 levels deep"),
    ("million_seeds", GOOD.replace("seeds: 2", "seeds: 1000000"),
     K + "'cells[0].seeds': the experiment would have 1,000,000 trials, more than 10,000: a "
         "typo? If it is the plan, split it into several experiments"),
    ("grid_total", GOOD.replace("    - {norm: batch, seeds: 2}",
                                "\n".join(f"    - {{norm: batch, lr: 0.{i + 1}, seeds: 5000}}"
                                          for i in range(3))),
     K + "'cells': the experiment would have 15,000 trials, more than 10,000"),
    ("lr_negative", GOOD.replace("epochs: 3", "epochs: 3, lr: -1"),
     K + "'settings.lr': expected a number > 0, got -1"),
    ("huge_literal", GOOD.replace("epochs: 3", "epochs: " + "9" * 5000),
     "holds a value that cannot be read (Exceeds the limit (4300 digits) for integer string "
     "conversion): no setting takes a number that long; correct it"),
    ("depth", GOOD.replace("depth: 8", "depth: 10"),
     K + "'settings.depth': depth 10 is not 6n+2"),
    ("batch_vs_synthetic", GOOD.replace("batch_size: 64", "batch_size: 256"),
     K + "'settings.batch_size': batch_size 256 is larger than the 128 synthetic training "
         "images: lower batch_size or raise synthetic.n_train"),
    ("device_name", GOOD.replace("device: cpu", "device: gpu"),
     K + "'settings.device': device 'gpu' is not a device: use auto, cpu, cuda or cuda:N"),
    ("max_failures", GOOD.replace("  cells:", f"  max_failures: {10**9}\n  cells:"),
     K + "'max_failures': expected an integer in [-1, 1000], got 1000000000"),
    ("data_dir_nul", GOOD.replace("data_dir: data", 'data_dir: "da\\0ta"'),
     K + "'data_dir': expected a folder path, got 'da\\x00ta'"),
    ("kind_list", GOOD.replace("  dataset:", "  kind: [grid]\n  dataset:"),
     K + "'kind': unknown kind ['grid']; choose one of grid, tune"),
    ("tune_samples", TUNE + "  searcher: random\n  num_samples: 100000000\n",
     K + "'num_samples': expected an integer in [1, 10000], got 100000000"),
    ("tune_seed", TUNE + f"  search_seed: {2**40}\n",
     K + "'search_seed': expected an integer in [0, 4294967295], got 1099511627776"),
    ("tune_depth", TUNE.replace("depth: 8", "depth: 9"),
     K + "'settings.depth': depth 9 is not 6n+2"),
    # refused before this issue too
    ("wrong_type", GOOD.replace("epochs: 3", "epochs: three"),
     K + "'settings.epochs': expected an integer in [1, 100000], got 'three'"),
    ("unknown_key", GOOD.replace("  settings:", "  setings: {}\n  settings:"),
     "experiment 'tiny': unknown key 'setings' in the experiment"),
    ("negative_seed", GOOD.replace("seeds: 2", "seeds: [-1]"),
     K + "'cells[0].seeds[0]': expected an integer in [0, 4294967295], got -1"),
    ("empty_cells", GOOD.replace("    - {norm: batch, seeds: 2}\n", ""),
     K + "'cells': empty grid: add a `cells:` list"),
    ("empty_cell", GOOD.replace("{norm: batch, seeds: 2}", "{}"),
     K + "'cells[0].norm': unknown normalizer None"),
    ("python_tag", GOOD.replace("data_dir: data", 'data_dir: !!python/object/apply:os.system '
                                                  '["echo pwned"]'),
     "is not valid YAML at line 3: could not determine a constructor for the tag "
     "'tag:yaml.org,2002:python/object/apply:os.system'"),
    ("syntax", GOOD.replace("depth: 8,", "depth: 8"),
     "is not valid YAML at line 6: "),
    ("empty_file", "",
     "expected a mapping of experiment names to experiments"),
    ("not_a_mapping", "tiny: [1, 2]\n",
     K + "'(experiment)': expected a mapping, got list [1, 2]"),
]

@pytest.mark.parametrize("case, text, expected", CASES, ids=[c[0] for c in CASES])
def test_malformed_file_is_one_line_exit_2_nothing_written_no_ray(
        case, text, expected, tmp_path, capsys, no_ray):
    path = tmp_path / "e.yaml"
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    command = "tune" if isinstance(text, str) and "kind: tune" in text else "run"
    before = set(tmp_path.rglob("*"))
    code = main([command, "tiny", "--config", str(path), "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert expected in err, err
    if not expected.startswith(K) and not expected.startswith("experiment 'tiny'"):
        assert str(path) in err   # a file-level problem names the file
    assert set(tmp_path.rglob("*")) == before   # nothing written


def test_cuda_on_a_machine_without_it_is_refused_before_ray(tmp_path, capsys, no_ray,
                                                             monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = tmp_path / "e.yaml"
    path.write_text(GOOD.replace("{norm: batch, seeds: 2}", "{norm: batch, seeds: 2, "
                                                            "device: cuda}"))
    code = main(["run", "tiny", "--config", str(path), "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert (K + "'cells[0].device': 'cuda', but this machine has no CUDA device: use device "
            "auto or cpu, --cpu-only, or --address to run on a cluster whose nodes have it") in err
    assert not (tmp_path / "r").exists() and not (tmp_path / "data").exists()
    # on a cluster the driver may have no GPU: there the trial's node decides
    from orchestrator.cli.launch import check_devices
    from orchestrator.plan.experiments import load_experiments
    from orchestrator.plan.trials import expand

    experiment = load_experiments(path)["tiny"]
    check_devices(experiment, expand(experiment), address="head:6379")


def test_a_config_that_is_a_folder_or_unreadable(tmp_path, capsys, no_ray):
    assert main(["run", "tiny", "--config", str(tmp_path), "--results", str(tmp_path)]) == 2
    assert f"experiments file {str(tmp_path)!r} is a folder" in capsys.readouterr().err
    unreadable = Path("/proc/self/mem")   # a regular file that no one can read from offset 0
    if unreadable.is_file() and os.name == "posix":
        assert main(["run", "tiny", "--config", str(unreadable)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "cannot be read (Input/output error)" in err, err


def test_an_experiment_name_that_is_no_folder_name(tmp_path, capsys, no_ray):
    path = tmp_path / "e.yaml"
    path.write_text(GOOD.replace("tiny:", "../up:"))
    assert main(["run", "../up", "--config", str(path), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "experiment '../up': a name must be a folder name" in err
    assert not (tmp_path / "r").exists() and not (tmp_path.parent / "up").exists()
