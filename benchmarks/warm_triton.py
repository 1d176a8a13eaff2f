"""Fill Triton's on-disk kernel cache for the GPU benchmarks, in parallel processes.

Triton compiles each kernel variant the first time a process launches it (on one CPU core),
and a variant is specific to the shapes' divisibility, the dtype, the ecm and the layout.
A cold cache made benchmarks/cuda_checks.sh spend its minutes compiling inside timed steps.
Each workload below runs one training step of what gpu_speed and the `onorm train` check
run, with Online Norm's Triton kernels: run the workloads as separate processes at once
(`--workload K`) and every later process finds its kernels compiled.
Usage: python -m benchmarks.warm_triton [--workload K | --list]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

# gpu_speed's shapes, which the cache is warmed for
from benchmarks.gpu_speed import CIFAR_BATCH, IMAGENET_RANK_BATCH, LAYER_SHAPES

# Where and by which impl the workloads run (tests run them on the CPU, eagerly).
DEVICE, IMPL = "cuda", "triton"


def _step(model, images, labels, amp: bool = False) -> None:
    import torch
    from torch import nn
    model.zero_grad(set_to_none=True)
    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=amp):
        loss = nn.functional.cross_entropy(model(images), labels)
    loss.backward()


def _resnet(depth_or_arch, batch: int, size: int, classes: int, channels_last: bool,
            amp: bool = False) -> None:
    import torch

    import norms
    from trainers.models import build_cifar_resnet, build_imagenet_resnet
    factory = norms.norm_factory("online", impl=IMPL)
    model = (build_cifar_resnet(depth_or_arch, classes, factory) if isinstance(depth_or_arch, int)
             else build_imagenet_resnet(depth_or_arch, classes, factory))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(DEVICE, memory_format=fmt).train()
    images = torch.randn(batch, 3, size, size, device=DEVICE).contiguous(memory_format=fmt)
    labels = torch.randint(0, classes, (batch,), device=DEVICE)
    _step(model, images, labels, amp)


def _layers() -> None:
    import torch

    from norms import OnlineNorm2d
    for shape in LAYER_SHAPES:
        x = torch.randn(shape, device=DEVICE, requires_grad=True)
        OnlineNorm2d(shape[1], impl=IMPL).to(DEVICE)(x).backward(torch.randn_like(x))
        del x


WORKLOADS: tuple[tuple[str, Callable[[], None]], ...] = (
    ("resnet20 float32 contiguous", lambda: _resnet(20, CIFAR_BATCH, 32, 10, False)),
    ("resnet20 float32 channels_last", lambda: _resnet(20, CIFAR_BATCH, 32, 10, True)),
    ("resnet20 bfloat16 channels_last", lambda: _resnet(20, CIFAR_BATCH, 32, 10, True, True)),
    ("resnet50 float32 channels_last", lambda: _resnet("resnet50", IMAGENET_RANK_BATCH, 224,
                                                       1000, True)),
    ("layers float32", _layers),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", type=int, help=f"run workload K (0..{len(WORKLOADS) - 1})")
    parser.add_argument("--list", action="store_true", help="print the workloads' count")
    args = parser.parse_args(argv)
    if args.list:
        print(len(WORKLOADS))
        return 0
    if args.workload is None or not 0 <= args.workload < len(WORKLOADS):
        parser.error(f"--workload: give one of 0..{len(WORKLOADS) - 1}")
    import torch
    if not torch.cuda.is_available():
        print("warm_triton: no CUDA device: nothing to compile", file=sys.stderr)
        return 2
    name, run = WORKLOADS[args.workload]
    start = time.perf_counter()
    run()
    torch.cuda.synchronize()
    print(f"warm_triton: {name}: {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
