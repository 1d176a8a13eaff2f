"""Benchmark: images/s of the ImageNet loader's decoders against today's loader, in one run
(`python -m benchmarks.data_speed --imagenet`).

All read the same synthetic ImageNet folder of 500x375 JPEGs (ImageNet's typical size) at
224-pixel crops, batch 32, 2 workers by default; epochs alternate between the loaders (in a
rotating order) so that load from other processes hits all of them alike, and the median
epoch is reported.
- today: benchmarks/imagenet_reference.py, the loader before issue 21 (float32 out of the
  workers, new worker processes every epoch);
- pil: the default decoder (uint8 out of persistent workers, normalized on the device);
- gpu: nvJPEG decoding and resizes on the CUDA device, when there is one; on the CPU its
  path is timed too, with torchvision's CPU decoder in the main process standing in for
  nvJPEG, to show what the workers' part costs and that the device then sets the pace.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

WIDTH, HEIGHT, SIZE = 500, 375, 224


def _epoch_rate(batches, device) -> float:
    import torch

    start = time.perf_counter()
    n = 0
    for images, _labels in batches:
        n += images.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n / (time.perf_counter() - start)


def write_images(root: Path, images: int, classes: int = 4) -> None:
    from trainers.data.synthetic import write_synthetic_imagenet

    write_synthetic_imagenet(root, classes=classes, n_train_per_class=images // classes,
                             n_val_per_class=2, image_size=WIDTH, height=HEIGHT, seed=0)


def loaders(root: Path, batch: int, workers: int, device) -> dict:
    """name -> a function running one more epoch and returning its images/s."""
    import torch

    from benchmarks.imagenet_reference import ReferenceImageNet
    from trainers.data.imagenet import ImageFolderData

    cpu = torch.device("cpu")
    made = {"today": (ReferenceImageNet(root, SIZE, batch, 0, workers, device), device),
            "pil": (ImageFolderData(root, SIZE, batch, 0, workers, device), device)}
    if device.type == "cuda":
        made["gpu"] = (ImageFolderData(root, SIZE, batch, 0, workers, device, decoder="gpu"),
                       device)
    made["gpu path, cpu decode"] = (
        ImageFolderData(root, SIZE, batch, 0, workers, cpu, decoder="gpu"), cpu)
    runs = {}
    for name, (data, where) in made.items():
        epochs = iter(range(10**9))
        runs[name] = (lambda d=data, e=epochs, w=where: _epoch_rate(d.train_batches(next(e)), w))
    return runs


def run(images: int, batch: int, workers: int, epochs: int, device) -> dict[str, float]:
    import tempfile

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_images(root, images)
        print(f"synthetic ImageNet: {images} train JPEGs of {WIDTH}x{HEIGHT}, crops {SIZE}, "
              f"batch {batch}, {workers} workers, device {device}, torch threads "
              f"{torch.get_num_threads()}")
        runs = loaders(root, batch, workers, device)
        for go in runs.values():
            go()                                  # warm-up: workers start, files cached
        rates: dict[str, list[float]] = {name: [] for name in runs}
        names = list(runs)
        for round_ in range(epochs):
            # each round starts with the next loader, so none always follows the same one
            for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                time.sleep(0.2)                   # let the previous loader's threads settle
                rates[name].append(runs[name]())
    return {name: statistics.median(r) for name, r in rates.items()}


def report(rates: dict[str, float]) -> None:
    today = rates["today"]
    for name, rate in rates.items():
        print(f"{name:>22}: {rate:8,.0f} images/s  {rate / today:5.2f}x today's")
    print(f"default (pil) vs today: {rates['pil'] / today:.2f}x (target >= 1.25x)")
