"""Benchmark on a CUDA device: Online Normalization's Triton kernels, its eager ops, batch norm.

Runs named sections (all by default; --sections picks some, comma-separated):
  layers  forward+backward time of one layer, Online Norm with impl='triton', Online Norm
          with impl='eager' and nn.BatchNorm2d, at CIFAR ResNet and ImageNet ResNet shapes
          (float32), as ratios to batch norm measured in the same run; and each layer's
          CUDA kernel launches per direction with their summed device time (torch.profiler).
Another section is a function `section(args, device) -> None` added to SECTIONS (ResNet-20
training images/s in several modes, multi-process throughput, projected GPU-hours, ...).
Timing is benchmarks.norm_speed's: medians of calls interleaved between the variants, each
call waited for. Without a CUDA device it exits with status 2 and one line saying so.
Usage: python -m benchmarks.gpu_speed [--sections layers] [--quick]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from benchmarks.norm_speed import _interleaved_medians, _layer_step, _sync

LAYER_SHAPES = ((128, 16, 32, 32), (128, 32, 16, 16), (128, 64, 8, 8), (32, 256, 56, 56),
                (256, 64, 56, 56))
# (label, how to build the layer for C channels); batch norm is the baseline.
LAYERS: tuple[tuple[str, Callable[[int], Any]], ...] = (
    ("online triton", lambda c: _online(c, "triton")),
    ("online eager", lambda c: _online(c, "eager")),
    ("batch", lambda c: _batch(c)),
)
BASELINE = "batch"


def _online(channels: int, impl: str):
    from norms import OnlineNorm2d
    return OnlineNorm2d(channels, impl=impl)


def _batch(channels: int):
    from torch import nn
    return nn.BatchNorm2d(channels)


def _device_kernels(prof) -> tuple[int, float]:
    """(kernels, their summed device time in microseconds) of a profiled region; copies
    and memsets are not kernels."""
    from torch.autograd import DeviceType
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA
               and not e.name.startswith(("Memcpy", "Memset", "[memory]"))]
    return len(kernels), sum(e.time_range.elapsed_us() for e in kernels)


def launches_per_direction(layer, x, grad) -> str:
    """'F/B launches (f/b us)': the CUDA kernels one forward and one backward launch, as the
    profiler sees them on the device; '?' where it cannot tell."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
    try:
        x.grad = None
        layer.zero_grad(set_to_none=True)     # no gradient accumulation kernels counted
        torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            out = layer(x)
            torch.cuda.synchronize()
        fwd = _device_kernels(prof)
        with profile(activities=activities) as prof:
            out.backward(grad)
            torch.cuda.synchronize()
        bwd = _device_kernels(prof)
    except Exception as err:   # a profiler without CUPTI, say: the timings still stand
        return f"? ({type(err).__name__})"
    if fwd[0] == 0 and bwd[0] == 0:
        return "? (the profiler recorded no kernels)"
    return f"{fwd[0]}/{bwd[0]} ({fwd[1]:.0f}/{bwd[1]:.0f} us)"


def section_layers(args: argparse.Namespace, device) -> None:
    import torch
    warmup, repeats = (1, 3) if args.quick else (3, 15)
    print(f"== layers: forward+backward of one layer, float32, train mode, median of "
          f"{repeats} interleaved repeats (fewer for the largest shapes); ratio to "
          f"{BASELINE} norm; kernel launches forward/backward (their device time)")
    width = 22
    print(f"{'shape':<20}" + "".join(f"{label:>{width}}" for label, _ in LAYERS))
    for shape in LAYER_SHAPES:
        torch.manual_seed(0)
        x = torch.randn(shape, device=device, requires_grad=True)
        grad = torch.randn(shape, device=device)
        layers = {label: build(shape[1]).to(device).train() for label, build in LAYERS}
        big = x.numel() > 10_000_000
        times = _interleaved_medians({label: _layer_step(layer, x, grad)
                                      for label, layer in layers.items()},
                                     warmup, max(3, repeats // 3) if big else repeats,
                                     _sync(device))
        base = times[BASELINE]
        print(f"{shape!s:<20}" + "".join(
            f"{f'{times[label] * 1e3:.3f}ms {times[label] / base:.2f}x':>{width}}"
            for label, _ in LAYERS))
        counts = {label: launches_per_direction(layer, x, grad)
                  for label, layer in layers.items()}
        print(f"{'  launches':<20}" + "".join(f"{counts[label]:>{width}}" for label, _ in LAYERS))
        del x, grad, layers
        torch.cuda.empty_cache()


SECTIONS: dict[str, Callable[[argparse.Namespace, Any], None]] = {"layers": section_layers}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated, of: {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="few repeats: a smoke run")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = [name for name in names if name not in SECTIONS]
    if unknown or not names:
        parser.error(f"--sections: unknown section(s) {', '.join(unknown) or '(none given)'}; "
                     f"choose from {', '.join(SECTIONS)}")
    import torch
    if not torch.cuda.is_available():
        print("gpu_speed: no CUDA device (torch.cuda.is_available() is False): run it on a "
              "machine with an NVIDIA GPU", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(device)}, sections: "
          f"{', '.join(names)}")
    for name in names:
        SECTIONS[name](args, device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
