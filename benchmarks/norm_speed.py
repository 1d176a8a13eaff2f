"""Benchmark: forward+backward time of each normalizer against nn.BatchNorm2d, and a ResNet-20
training step with Online Normalization against the same step with batch norm, in both
memory layouts (contiguous NCHW, and channels_last as the paper grids run).

Every ratio is measured against a baseline timed in the same run, interleaved with it so
machine noise hits both alike. The C library's allocator is tuned as the trainer tunes it
(trainers/allocator.py), for every normalizer alike; --system-malloc keeps its defaults.
The targets are for the CPU; `--device cuda` prints the same table for a GPU (each timed
call then waits for the device).
Usage: python -m benchmarks.norm_speed [--quick] [--threads N] [--system-malloc] [--device D]
       [--layout {both,contiguous,channels_last}] [--shapes K] [--cpu-time]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable

SHAPES = ((128, 16, 32, 32), (128, 32, 16, 16), (128, 64, 8, 8), (32, 256, 56, 56))
# (label, registry mode, options); group norm uses 8 groups so that 16 channels divide.
NORMS = (("batch", "batch", {}), ("group", "group", {"gn_num_groups": 8}),
         ("layer", "layer", {}), ("instance", "instance", {}),
         ("online ls", "online", {"ecm": "ls"}), ("online none", "online", {"ecm": "none"}),
         ("none", "none", {}))


# What the timings read: wall-clock time, or (--cpu-time) this process's CPU time, which
# other processes on a shared machine disturb far less (for single-threaded CPU runs).
CLOCK: Callable[[], float] = time.perf_counter


def _interleaved_medians(fns: dict[str, Callable[[], None]], warmup: int, repeats: int,
                         sync: Callable[[], None] = lambda: None) -> dict[str, float]:
    """Median seconds per call of each function, calls alternating between functions;
    `sync` waits for an asynchronous device before and after each timed call."""
    clock = CLOCK
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            start = clock()
            fn()
            sync()
            times[name].append(clock() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _layer_step(layer, x, grad) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        layer(x).backward(grad)
    return step


def _sync(device):
    import torch
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


LAYOUTS = ("contiguous", "channels_last")


def _memory_format(layout: str):
    import torch
    return torch.channels_last if layout == "channels_last" else torch.contiguous_format


def bench_layers(shape: tuple[int, ...], warmup: int, repeats: int,
                 device, layout: str = "contiguous") -> dict[str, float]:
    import torch

    import norms
    torch.manual_seed(0)
    fmt = _memory_format(layout)
    x = torch.randn(shape, device=device).contiguous(memory_format=fmt).requires_grad_()
    grad = torch.randn(shape, device=device).contiguous(memory_format=fmt)
    fns = {}
    for label, mode, options in NORMS:
        layer = norms.build_norm(mode, shape[1], **options).to(device).train()
        norms.materialize(layer, x.detach())
        fns[label] = _layer_step(layer, x, grad)
    return _interleaved_medians(fns, warmup, repeats, _sync(device))


def bench_resnet20(warmup: int, repeats: int, device, layout: str = "contiguous"
                   ) -> dict[str, float]:
    import torch

    import norms
    from trainers.models import build_cifar_resnet
    torch.manual_seed(0)
    fmt = _memory_format(layout)
    images = torch.randn(128, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    labels = torch.randint(0, 10, (128,), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()
    fns = {}
    for label, mode, options in (("batch", "batch", {}), ("online ls", "online", {"ecm": "ls"})):
        model = build_cifar_resnet(20, 10, norms.norm_factory(mode, **options))
        model.to(device, memory_format=fmt).train()
        norms.materialize(model, images[:1])
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

        def step(model=model, opt=opt) -> None:
            opt.zero_grad(set_to_none=True)
            loss_fn(model(images), labels).backward()
            opt.step()
        fns[label] = step
    return _interleaved_medians(fns, warmup, repeats, _sync(device))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repeats: a smoke run")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (default: torch's own choice)")
    parser.add_argument("--system-malloc", action="store_true",
                        help="keep the C library's allocator defaults (the trainer raises "
                             "its thresholds; see trainers/allocator.py)")
    parser.add_argument("--device", default="cpu", help="cpu (the targets' device) or cuda")
    parser.add_argument("--layout", choices=("both",) + LAYOUTS, default="both",
                        help="memory layout of the activations (default: both, in turn)")
    parser.add_argument("--shapes", type=int, default=len(SHAPES),
                        help=f"time the layers on the first SHAPES shapes (of {len(SHAPES)})")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time by this process's CPU time, not the wall clock: steadier "
                             "on a machine other jobs share (CPU, with --threads 1)")
    args = parser.parse_args(argv)
    global CLOCK
    if args.cpu_time:
        if args.device != "cpu":
            parser.error("--cpu-time times the CPU: use it with --device cpu")
        CLOCK = time.process_time
    from trainers.allocator import retain_freed_memory
    tuned = not args.system_malloc and retain_freed_memory()
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = torch.device(args.device)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as err:
        parser.error(f"--device {args.device}: {str(err).splitlines()[0]}")
    warmup, repeats = (1, 3) if args.quick else (3, 15)
    where = (f"{torch.get_num_threads()} threads" if device.type == "cpu"
             else torch.cuda.get_device_name(device))
    clock = "process CPU time" if args.cpu_time else "wall clock"
    print(f"torch {torch.__version__}, {where}, float32, train mode, "
          f"forward+backward, median of {repeats} interleaved repeats ({clock})")
    # Other processes competing for the cores distort multithreaded timings badly.
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
          "allocator: " + ("freed memory retained (as in training)" if tuned
                           else "C library defaults"))
    layouts = LAYOUTS if args.layout == "both" else (args.layout,)
    header = f"{'shape':<20}" + "".join(f"{label:>20}" for label, _, _ in NORMS)
    ratios = {}
    for layout in layouts:
        print(f"-- {layout}")
        print(header)
        for shape in SHAPES[:args.shapes]:
            big = shape[0] * shape[1] * shape[2] * shape[3] > 10_000_000
            times = bench_layers(shape, warmup, max(3, repeats // 3) if big else repeats,
                                 device, layout)
            base = times["batch"]
            cells = "".join(f"{times[label] * 1e3:>9.2f}ms {times[label] / base:>5.2f}x  "
                            for label, _, _ in NORMS)
            print(f"{str(shape):<20}{cells}")
        steps = bench_resnet20(warmup, repeats, device, layout)
        ratios[layout] = ratio = steps["online ls"] / steps["batch"]
        print(f"ResNet-20 SGD step, batch 128, 32x32, {layout}: batch norm "
              f"{steps['batch'] * 1e3:.1f} ms, online (ecm ls) {steps['online ls'] * 1e3:.1f} "
              f"ms, ratio {ratio:.3f}x")
    if len(ratios) > 1:
        print("ResNet-20 step ratio online/batch: " + ", ".join(
            f"{layout} {ratio:.3f}x" for layout, ratio in ratios.items()))
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
