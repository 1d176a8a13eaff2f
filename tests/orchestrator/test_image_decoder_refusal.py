"""image_decoder gpu without CUDA: refused in one line before Ray starts (onorm run) and
before training (onorm train), exit 2, nothing written."""

from __future__ import annotations

import pytest

from orchestrator.cli import main

IMAGENET = """\
tiny:
  dataset: imagenet
  data_dir: {data}
  settings: {{synthetic_image_size: 32, epochs: 1, batch_size: 4, workers: 0,
              image_decoder: gpu}}
  cells:
    - {{norm: batch, seeds: 1}}
"""


@pytest.fixture
def no_cuda_no_ray(no_ray, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory):
    from trainers.data.synthetic import write_synthetic_imagenet

    root = tmp_path_factory.mktemp("imagenet")
    return write_synthetic_imagenet(root, classes=2, n_train_per_class=4, n_val_per_class=1,
                                    image_size=40, seed=0)


def test_onorm_run_refuses_the_gpu_decoder_before_ray(tmp_path, capsys, no_cuda_no_ray,
                                                      imagenet_dir):
    path = tmp_path / "e.yaml"
    path.write_text(IMAGENET.format(data=imagenet_dir))
    code = main(["run", "tiny", "--config", str(path), "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert ("experiment 'tiny', key 'settings.image_decoder': 'gpu' decodes JPEGs with nvJPEG "
            "on a CUDA device, and this machine has none: use image_decoder pil") in err
    assert not (tmp_path / "r").exists()
    # on a cluster the driver may have no GPU: there the trial's node decides
    from orchestrator.cli.launch import check_devices
    from orchestrator.plan.experiments import load_experiments
    from orchestrator.plan.trials import expand

    experiment = load_experiments(path)["tiny"]
    check_devices(experiment, expand(experiment), address="head:6379")
    # --cpu-only moves trials off the GPU: it cannot keep a gpu decoder's trial
    assert main(["run", "tiny", "--config", str(path), "--results", str(tmp_path / "r"),
                 "--cpu-only", "--address", "head:6379"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ("experiment 'tiny': --cpu-only, but image_decoder gpu "
                                     "decodes on a CUDA device: drop --cpu-only") in err, err


def test_onorm_train_refuses_the_gpu_decoder_before_training(tmp_path, capsys,
                                                             no_cuda_no_ray, imagenet_dir):
    code = main(["train", "imagenet", str(imagenet_dir), "--image-decoder", "gpu",
                 "--synthetic-image-size", "32", "-b", "4", "--epochs", "1", "-j", "0",
                 "--model-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "image_decoder gpu decodes with nvJPEG on a CUDA device, but this trial runs on cpu: "\
           "use image_decoder pil" in err
    assert not (tmp_path / "run" / "metrics.parquet").exists()
