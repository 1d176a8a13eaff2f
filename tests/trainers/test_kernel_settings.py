"""The settings of how kernels run: norm_impl (Online Norm's eager ops or Triton kernels),
tf32 (the recipe's float32 GPU math) and what a seeded run turns on and off."""

from __future__ import annotations

import pytest
import torch

import norms
from trainers.cli_train import add_parser
from trainers.config import ConfigError, SettingError, make_config, parse_setting
from trainers.errors import UserError
from trainers.models import build_model
from trainers.train import train


@pytest.fixture(scope="module")
def cifar64(tmp_path_factory):
    from trainers.data.synthetic import write_synthetic_cifar

    root = tmp_path_factory.mktemp("cifar64")
    write_synthetic_cifar(root, classes=10, n_train=64, n_test=32, seed=0)

    def make(**overrides):
        values = dict(depth=8, epochs=1, batch_size=32, seed=0, workers=0, device="cpu",
                      norm="online")
        values.update(overrides)
        return make_config("cifar10", str(root), **values)
    return make


def _train(config, model_dir, report=None):
    return train(config, report or (lambda m, p: None), model_dir=model_dir, progress=False,
                 print_freq=0, log=lambda line: None)


def test_norm_impl_reaches_every_online_layer(cifar64):
    for impl in ("auto", "eager"):
        model = build_model(cifar64(norm_impl=impl), 10, 32)
        layers = [m for m in model.modules() if isinstance(m, norms.OnlineNorm2d)]
        assert layers and all(layer.impl == impl for layer in layers)


def test_norm_impl_and_tf32_are_settings_with_flags():
    assert parse_setting("norm_impl", "eager") == "eager"
    assert parse_setting("tf32", "none") == "none"
    with pytest.raises(SettingError, match="auto, triton, eager"):
        parse_setting("norm_impl", "cuda")
    import argparse
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "cifar10", "/data", "--norm-impl", "eager",
                              "--tf32", "all"])
    assert (args.norm_impl, args.tf32) == ("eager", "all")


def test_triton_on_the_cpu_is_refused_in_one_line(cifar64, tmp_path):
    with pytest.raises(ConfigError, match="norm_impl triton needs a CUDA device") as err:
        cifar64(norm_impl="triton")
    assert err.value.field == "norm_impl" and "\n" not in str(err.value)


class _FailingKernels(torch.autograd.Function):
    """An Online Norm op whose kernels fail as Triton's do on a GPU without the resources."""

    @staticmethod
    def forward(ctx, x, *args):
        from triton.runtime.errors import OutOfResources
        raise OutOfResources(232448, 101376, "shared memory")


def test_a_triton_failure_at_the_first_step_names_norm_impl(cifar64, tmp_path, monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setattr("norms.online.training_function", lambda impl, device: _FailingKernels)
    with pytest.raises(UserError) as err:
        _train(cifar64(), tmp_path)
    message = str(err.value)
    assert "Triton kernels failed at the first step (OutOfResources" in message
    assert "--norm-impl eager" in message and "\n" not in message


def test_other_failures_at_the_first_step_are_not_blamed_on_triton(cifar64, tmp_path,
                                                                   monkeypatch):
    class Broken(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, *args):
            raise ZeroDivisionError("not a kernel")
    monkeypatch.setattr("norms.online.training_function", lambda impl, device: Broken)
    with pytest.raises(ZeroDivisionError):
        _train(cifar64(), tmp_path)


@pytest.mark.parametrize("tf32,conv,matmul", [("conv", "tf32", "ieee"), ("none", "ieee", "ieee"),
                                              ("all", "tf32", "tf32")])
def test_a_seeded_run_fills_no_memory_and_sets_tf32_as_the_recipe_says(cifar64, tmp_path,
                                                                       tf32, conv, matmul):
    if not hasattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision"):
        pytest.skip("torch without the per-backend fp32_precision flags")
    seen = []

    def report(metrics, path):
        seen.append((torch.utils.deterministic.fill_uninitialized_memory,
                     torch.are_deterministic_algorithms_enabled(),
                     torch.backends.cudnn.conv.fp32_precision,
                     torch.backends.cuda.matmul.fp32_precision))
    before = (torch.utils.deterministic.fill_uninitialized_memory,
              torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
    _train(cifar64(tf32=tf32, norm="none"), tmp_path, report)
    assert seen == [(False, True, conv, matmul)]
    assert (torch.utils.deterministic.fill_uninitialized_memory,
            torch.backends.cudnn.conv.fp32_precision,
            torch.backends.cuda.matmul.fp32_precision) == before



def test_each_trial_records_its_tf32_choice(cifar64, monkeypatch):
    # trials.parquet's device column (the attempt's provenance) names the GPU and the
    # float32 math the recipe ran it in; config_json holds the setting itself.
    from orchestrator.execute.attempt import device_name
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA H200")
    assert device_name(cifar64(device="auto")) == "NVIDIA H200 (tf32 conv)"
    assert device_name(cifar64(device="auto", tf32="none")) == "NVIDIA H200 (tf32 none)"
    assert device_name(cifar64(device="cpu")) == "cpu"
    assert cifar64(tf32="all").to_dict()["tf32"] == "all"
