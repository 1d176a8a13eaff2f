"""Benchmark: images/s of the device-side CIFAR pipeline against the seed scripts' DataLoader,
and one synthetic-CIFAR training epoch of ResNet-20 with batch norm and with online norm.

Both pipelines read the same synthetic CIFAR-10 folder in the same run. The seed pipeline is
torchvision's CIFAR10 dataset with PIL transforms Pad(4), RandomCrop(32), RandomHorizontalFlip,
ToTensor, Normalize, batch 128, 2 workers, shuffled. Usage:
python -m benchmarks.data_speed [--quick] [--no-train] [--threads T] [--device cpu|cuda]
With --imagenet it times the ImageNet loader's decoders instead (benchmarks/imagenet_speed.py):
python -m benchmarks.data_speed --imagenet [--quick] [--workers W] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

BATCH = 128


def _sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _epoch_rate(batches, device) -> float:
    """Images per second of draining one epoch's iterable, batches landing on `device`."""
    start = time.perf_counter()
    n = 0
    for images, _labels in batches:
        n += images.shape[0]
    _sync(device)
    return n / (time.perf_counter() - start)


def device_pipeline(root: Path, device):
    """A function running one epoch of the device-side pipeline, returning images/s."""
    from trainers.config import make_config
    from trainers.data import build_data

    data = build_data(make_config("cifar10", str(root), batch_size=BATCH, seed=0, workers=0),
                      device)
    epochs = iter(range(10**9))
    return lambda: _epoch_rate(data.train_batches(next(epochs)), device)


def seed_pipeline(root: Path, device):
    """A function running one epoch of the seed scripts' loader, returning images/s."""
    from torch.utils.data import DataLoader
    from torchvision import transforms as T
    from torchvision.datasets import CIFAR10

    from trainers.data.augment import CIFAR_MEAN, CIFAR_STD

    class Unchecked(CIFAR10):
        """torchvision's reader minus its md5 check, which only the real files pass."""

        def _check_integrity(self) -> bool:
            return True

        def _load_meta(self) -> None:
            self.classes = [str(i) for i in range(10)]

    transform = T.Compose([T.Pad(4), T.RandomCrop(32), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(CIFAR_MEAN, CIFAR_STD)])
    dataset = Unchecked(str(root), train=True, transform=transform)
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=2,
                        pin_memory=device.type == "cuda")

    def epoch():
        for images, labels in loader:
            yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    return lambda: _epoch_rate(epoch(), device)


def interleaved_rates(pipelines: dict, epochs: int) -> dict[str, float]:
    """Median images/s per pipeline over `epochs`, alternating so load noise hits both."""
    for run in pipelines.values():
        run()                                                       # warm-up
    rates: dict[str, list[float]] = {name: [] for name in pipelines}
    for _ in range(epochs):
        for name, run in pipelines.items():
            rates[name].append(run())
    return {name: statistics.median(r) for name, r in rates.items()}


def training_epoch(root: Path, norm: str, device) -> dict:
    from trainers.config import make_config
    from trainers.train import train

    config = make_config("cifar10", str(root), epochs=1, norm=norm, seed=0, workers=0,
                         device=str(device))
    with tempfile.TemporaryDirectory() as model_dir:
        outcome = train(config, None, model_dir=model_dir, progress=False, log=lambda s: None)
    return outcome.final_metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller dataset, fewer epochs")
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda")
    parser.add_argument("--no-train", action="store_true",
                        help="time the data pipelines only, not the ResNet-20 epochs")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--imagenet", action="store_true",
                        help="time the ImageNet decoders against today's loader instead")
    parser.add_argument("--workers", type=int, default=2, help="ImageNet loader workers")
    args = parser.parse_args(argv)

    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)

    from trainers.data.synthetic import write_synthetic_cifar

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if args.imagenet:
        from benchmarks import imagenet_speed

        # 448 images: the measurement; --quick halves it and the epochs
        images, epochs = (224, 2) if args.quick else (448, 4)
        imagenet_speed.report(imagenet_speed.run(images, 32, args.workers, epochs, device))
        return
    n_train, n_test, epochs = (2000, 500, 2) if args.quick else (10000, 2000, 3)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_synthetic_cifar(root, classes=10, n_train=n_train, n_test=n_test, seed=0)
        print(f"synthetic CIFAR-10: {n_train} train / {n_test} test images, device {device}, "
              f"torch threads {torch.get_num_threads()}")
        rates = interleaved_rates({"ours": device_pipeline(root, device),
                                   "seed": seed_pipeline(root, device)}, epochs)
        ours, seed = rates["ours"], rates["seed"]
        print(f"device-side pipeline (uint8 on {device.type}, batched crop/flip): "
              f"{ours:12,.0f} images/s")
        print(f"seed pipeline (DataLoader, PIL transforms, 2 workers):     "
              f"{seed:12,.0f} images/s")
        print(f"speed-up: {ours / seed:.1f}x (target >= 10x)")
        for norm in () if args.no_train else ("batch", "online"):
            try:
                m = training_epoch(root, norm, device)
            except Exception as err:  # report a broken norm and still time the other one
                print(f"ResNet-20 {norm:>6} norm: failed: {type(err).__name__}: "
                      f"{str(err).splitlines()[0]}")
                continue
            print(f"ResNet-20 {norm:>6} norm, 1 epoch of {n_train} images: "
                  f"{m['epoch_time_s']:.1f} s ({m['images_per_s']:.0f} train img/s), "
                  f"val acc@1 {m['val_acc1']:.1f}%")


if __name__ == "__main__":
    main()
