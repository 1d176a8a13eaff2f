"""Benchmark on a CUDA device: Online Normalization's Triton kernels, its eager ops, batch norm.

Runs named sections (all by default; --sections picks some, comma-separated):
  layers      forward+backward time of one layer, Online Norm with impl='triton', Online
              Norm with impl='eager' and nn.BatchNorm2d, at CIFAR ResNet and ImageNet ResNet
              shapes (float32), as ratios to batch norm measured in the same run; and each
              layer's CUDA kernel launches per direction with their summed device time.
  resnet20    ResNet-20 training images/s through the trainer's own step (trainers/step.py),
              every normalizer, in (a) eager float32, (b) channels_last with the step
              captured in a CUDA graph, (g) the grids' own configuration: (b) seeded, so
              deterministic (as trainers/train.py runs a seeded trial), (c) (b) plus bfloat16
              autocast; each mode's rate over (a), and each normalizer's step time over batch
              norm's in each mode (--modes picks modes).
  resnet50    ImageNet ResNet-50 training images/s per GPU at the imagenet grid's per-rank
              batch (32 of 256 on 8 ranks), channels_last, seeded (a multi-worker trial
              trains eagerly: DDP's all-reduce runs outside a graph).
  packing     aggregate images/s of 1, 2 and 4 trial processes sharing the GPU in mode (g),
              as the CIFAR grids pack them (gpu: 0.25 per trial); --short: 1 and 4, briefly.
  projection  the GPU-hours the cifar10, cifar100 and imagenet grids of experiments.yaml
              take at the rates measured above (measuring what is missing).
Each section prints its key figures on lines starting "summary:" (benchmarks/cuda_checks.sh
collects them). --tiny shrinks every shape, batch and window, so that the whole script runs
on a CPU in seconds: a smoke test (tests/benchmarks), never a measurement.
A section is a function `section(args, device, measured) -> None` in SECTIONS; `measured`
carries rates from one section to the next (projection measures what it lacks).
Timing is benchmarks.norm_speed's: medians of calls interleaved between the variants, each
call waited for. Without a CUDA device it exits with status 2 and one line saying so
(`--device cpu` runs the sections anyway, as a smoke test of the script).
Usage: python -m benchmarks.gpu_speed [--sections layers,resnet20,...] [--modes a,g] [--quick]
       [--short] [--tiny] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
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


TINY_LAYER_SHAPES = ((4, 8, 4, 4), (2, 16, 2, 2))


def section_layers(args: argparse.Namespace, device, measured: dict) -> None:
    import torch
    warmup, repeats = (1, 3) if args.quick or args.tiny else (3, 15)
    shapes = TINY_LAYER_SHAPES if args.tiny else LAYER_SHAPES
    print(f"== layers: forward+backward of one layer, float32, train mode, median of "
          f"{repeats} interleaved repeats (fewer for the largest shapes); ratio to "
          f"{BASELINE} norm; kernel launches forward/backward (their device time)")
    width = 22
    print(f"{'shape':<20}" + "".join(f"{label:>{width}}" for label, _ in LAYERS))
    from norms.impl import triton_runs_on
    # Triton runs on CUDA, and on the CPU only in its interpreter (TRITON_INTERPRET=1).
    runs = [label for label, _ in LAYERS if label != "online triton" or triton_runs_on(device)]
    ratios = []
    for shape in shapes:
        torch.manual_seed(0)
        x = torch.randn(shape, device=device, requires_grad=True)
        grad = torch.randn(shape, device=device)
        layers = {label: build(shape[1]).to(device).train() for label, build in LAYERS
                  if label in runs}
        big = x.numel() > 10_000_000
        times = _interleaved_medians({label: _layer_step(layer, x, grad)
                                      for label, layer in layers.items()},
                                     warmup, max(3, repeats // 3) if big else repeats,
                                     _sync(device))
        base = times[BASELINE]
        cell = {label: f"{times[label] * 1e3:.3f}ms {times[label] / base:.2f}x"
                for label in times}
        print(f"{shape!s:<20}" + "".join(f"{cell.get(label, '-'):>{width}}"
                                         for label, _ in LAYERS))
        ratios.append(f"{shape[1]}x{shape[2]}x{shape[3]} "
                      + "/".join(f"{times[label] / base:.2f}" if label in times else "-"
                                 for label, _ in LAYERS if label != BASELINE))
        counts = ({label: launches_per_direction(layer, x, grad)
                   for label, layer in layers.items()} if device.type == "cuda"
                  else {label: "-" for label in layers})
        print(f"{'  launches':<20}" + "".join(f"{counts.get(label, '-'):>{width}}"
                                              for label, _ in LAYERS))
        del x, grad, layers
        _free(device)
    labels = "/".join(label for label, _ in LAYERS if label != BASELINE)
    print(f"summary: layer time over batch norm's ({labels}): " + ", ".join(ratios))


# ------------------------------------------------------------------ ResNet-20 training

NORM_MODES = ("batch", "online", "layer", "instance", "group")
# (label, TrialConfig settings): the trainer's own options; a seed makes the run seeded
# and so deterministic, as the grids' trials are (seeds: 5 in experiments.yaml).
MODES = (
    ("a eager fp32", {}),
    ("b nhwc+graph", {"channels_last": True, "cuda_graph": True}),
    ("g (b) seeded", {"channels_last": True, "cuda_graph": True, "seed": 0}),
    ("c (b)+bf16", {"channels_last": True, "cuda_graph": True, "amp": True}),
)
GRID_MODE = "g (b) seeded"
CIFAR_BATCH = 128
TINY_BATCH, TINY_DEPTH = 4, 8   # --tiny: a ResNet-8 on 4 images
# The imagenet grid: a global batch of 256 on 8 ranks, channels_last, seeded, eager.
IMAGENET_RANK_BATCH = 32
IMAGENET_MODE = {"channels_last": True, "seed": 0}


def seeded(config):
    """The context a trial of `config` trains in (trainers/train.py): seeded and
    deterministic when it has a seed, with the recipe's TF32 choice."""
    from contextlib import ExitStack

    from trainers.train import _reproducible, _tf32
    stack = ExitStack()
    stack.enter_context(_reproducible(config.seed))
    stack.enter_context(_tf32(config.tf32))
    return stack


class StepRunner:
    """The trainer's training step for one config, on random CIFAR-sized batches already on
    the device: `run(steps)` trains that many steps (a CUDA graph's capture happens during
    warm-up)."""

    def __init__(self, config, device, batch: int, image_size: int = 32, classes: int = 10):
        import torch
        from torch import nn

        from trainers.metrics import EpochMeter
        from trainers.models import build_model
        from trainers.optim import build_optimizer
        from trainers.step import make_train_step
        from trainers.train import AMP_DTYPES

        torch.manual_seed(0)
        fmt = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model = build_model(config, classes, image_size).to(device, memory_format=fmt)
        self.model.train()
        self.meter = EpochMeter(device)
        amp = AMP_DTYPES[config.amp_dtype] if config.amp else None
        self.step = make_train_step(self.model, nn.CrossEntropyLoss(),
                                    build_optimizer(self.model, config), self.meter, device,
                                    amp, None, config.cuda_graph)
        gen = torch.Generator(device=device).manual_seed(0)
        self.images = [torch.randn(batch, 3, image_size, image_size, device=device,
                                   generator=gen).contiguous(memory_format=fmt)
                       for _ in range(4)]
        self.labels = [torch.randint(0, classes, (batch,), device=device, generator=gen)
                       for _ in range(4)]
        self.batch, self.done = batch, 0

    def run(self, steps: int) -> None:
        for _ in range(steps):
            i = self.done % len(self.images)
            self.step(self.images[i], self.labels[i])
            self.done += 1

    def eval_run(self, steps: int) -> None:
        import torch
        self.model.eval()
        with torch.no_grad():
            for i in range(steps):
                self.model(self.images[i % len(self.images)])
        self.model.train()


def cifar_config(norm: str, device, **options):
    from trainers.config import make_config
    return make_config("cifar10", ".", **{"depth": 20, "norm": norm, "batch_size": CIFAR_BATCH,
                                          "device": str(device), "workers": 0, **options})


def _modes(args: argparse.Namespace) -> list[tuple[str, dict]]:
    """The ResNet-20 modes --modes picks (by their letters), in MODES' order."""
    letters = {m.split()[0] for m in args.modes.split(",") if m.strip()} if args.modes else None
    return [(m, o) for m, o in MODES if letters is None or m.split()[0] in letters]


def section_resnet20(args: argparse.Namespace, device, measured: dict) -> None:
    steps, repeats = (1, 1) if args.tiny else (2, 3) if args.quick else (20, 7)
    norms = ("batch", "online") if args.quick or args.tiny else NORM_MODES
    batch = TINY_BATCH if args.tiny else CIFAR_BATCH
    tiny = {"depth": TINY_DEPTH} if args.tiny else {}
    modes = _modes(args)
    print(f"== resnet20: ResNet-20 training images/s, batch {batch}, 32x32, the "
          f"trainer's step; median of {repeats} interleaved runs of {steps} steps")
    rates: dict[tuple[str, str], float] = {}
    for mode, options in modes:
        configs = {norm: cifar_config(norm, device, batch_size=batch, **tiny, **options)
                   for norm in norms}
        with seeded(configs["batch"]):
            runners = {norm: StepRunner(config, device, batch)
                       for norm, config in configs.items()}
            for runner in runners.values():
                # warm-up: the eager steps, the capture, cuDNN's choices
                runner.run(1 if args.tiny else 8)
            times = _interleaved_medians({n: (lambda r=r: r.run(steps))
                                          for n, r in runners.items()},
                                         1, repeats, _sync(device))
            if "eval_rate" not in measured:   # for the projection's validation passes
                r = runners["batch"]
                eval_time = _interleaved_medians({"eval": lambda r=r: r.eval_run(steps)}, 1,
                                                 repeats, _sync(device))["eval"]
                measured["eval_rate"] = steps * batch / eval_time
        for norm in norms:
            rates[(norm, mode)] = steps * batch / times[norm]
        online, base = rates[("online", mode)], rates[("batch", mode)]
        print(f"summary: resnet20 {mode}: online step {base / online:.2f}x batch norm's "
              f"({online:,.0f} vs {base:,.0f} images/s)")
        del runners
        _free(device)
    width = 16
    first = modes[0][0]
    print(f"{'images/s':<10}" + "".join(f"{m:>{width}}" for m, _ in modes)
          + "".join(f"{'/' + m.split()[0]:>8}" for m, _ in modes[1:]) + f"  (over {first})")
    for norm in norms:
        print(f"{norm:<10}" + "".join(f"{rates[(norm, m)]:>{width},.0f}" for m, _ in modes)
              + "".join(f"{rates[(norm, m)] / rates[(norm, first)]:>7.2f}x"
                        for m, _ in modes[1:]))
    print("step time over batch norm's, per mode:")
    for norm in norms:
        print(f"  {norm:<8}" + "".join(
            f"{rates[('batch', m)] / rates[(norm, m)]:>{width}.2f}x" for m, _ in modes))
    # The projection prices the grids as they run: the seeded mode when it was measured.
    chosen = GRID_MODE if any(m == GRID_MODE for m, _ in modes) else modes[-1][0]
    if "cifar_rates" not in measured or chosen == GRID_MODE:
        measured["cifar_rates"] = {norm: rates[(norm, chosen)] for norm in norms}
        measured["cifar_mode"] = chosen


def _free(device) -> None:
    import gc

    import torch
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------ several trials, one GPU

PACKING = (1, 2, 4)
SHORT_PACKING = (1, 4)


def section_packing(args: argparse.Namespace, device, measured: dict) -> None:
    """Aggregate images/s of P processes training at once, each a mode-(b) Online Norm
    ResNet-20 trial; they warm up, then all time the same wall-clock window."""
    import subprocess
    import time

    if args.tiny:
        seconds, warm, counts = 0.3, 0.0, (1,)
    elif args.short:
        seconds, warm, counts = 3.0, 20.0, SHORT_PACKING
    else:
        seconds, warm, counts = (2.0, 30.0) if args.quick else (5.0, 25.0)
        counts = PACKING
    print(f"== packing: P trial processes on one {device.type} device, Online Norm ResNet-20 "
          f"in mode {GRID_MODE}, each timing the same {seconds:g} s window")
    aggregate = {}
    tiny = ["--tiny"] if args.tiny else []
    for procs in counts:
        start_at = time.time() + warm   # after every process's imports, warm-up and capture
        workers = [subprocess.Popen(
            [sys.executable, "-m", "benchmarks.gpu_speed", "--worker", f"{start_at}",
             f"{seconds}", "--device", str(device), *tiny], stdout=subprocess.PIPE, text=True)
            for _ in range(procs)]
        rates = []
        for w in workers:
            out, _ = w.communicate()
            rates.append(float(out.strip().splitlines()[-1]))
        aggregate[procs] = sum(rates)
        print(f"  {procs} process(es): {aggregate[procs]:>10,.0f} images/s in all "
              f"({', '.join(f'{r:,.0f}' for r in rates)}), "
              f"{aggregate[procs] / aggregate[1]:.2f}x one process")
    measured["packing_gain"] = aggregate[max(counts)] / aggregate[1]
    measured["packed"] = max(counts)
    print(f"summary: packing {max(counts)} trials per GPU: {measured['packing_gain']:.2f}x one "
          "trial's images/s")


def packing_worker(start_at: float, seconds: float, device, tiny: bool = False) -> None:
    import time

    import torch
    batch = TINY_BATCH if tiny else CIFAR_BATCH
    config = cifar_config("online", device, batch_size=batch, **dict(MODES)[GRID_MODE],
                          **({"depth": TINY_DEPTH} if tiny else {}))
    with seeded(config):
        runner = StepRunner(config, device, batch)
        runner.run(1)
        while time.time() < start_at:   # keep warming until the common window opens
            runner.run(1)
        _sync(device)()
        done, begin = runner.done, time.perf_counter()
        while time.perf_counter() - begin < seconds:
            runner.run(5)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        print((runner.done - done) * batch / (time.perf_counter() - begin))


# ------------------------------------------------------------------ what the grids cost

# Training and validation images per epoch of each dataset.
IMAGES = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000),
          "imagenet": (1_281_167, 50_000)}


def section_projection(args: argparse.Namespace, device, measured: dict) -> None:
    """GPU-hours of each paper grid: per trial, epochs x (training images / its normalizer's
    rate + validation images / the evaluation rate), CIFAR trials packed as the grid packs
    them (the packing gain measured above); ImageNet from ResNet-50 rates per GPU."""
    if "cifar_rates" not in measured:
        section_resnet20(args, device, measured)
    if "packing_gain" not in measured:
        section_packing(args, device, measured)
    if "imagenet_rates" not in measured:
        section_resnet50(args, device, measured)
    from orchestrator.plan.experiments import load_experiments
    from orchestrator.plan.trials import expand

    experiments = load_experiments()
    print(f"== projection: GPU-hours of the paper grids at the rates above (mode "
          f"{measured['cifar_mode']}); CIFAR trials packed {measured['packed']} per GPU with "
          f"{measured['packing_gain']:.2f}x one trial's throughput")
    total = {}
    for name in ("cifar10", "cifar100", "imagenet"):
        trials = expand(experiments[name])
        train_images, val_images = IMAGES[name]
        rates = measured["imagenet_rates"] if name == "imagenet" else measured["cifar_rates"]
        eval_rate = (measured["imagenet_eval_rate"] if name == "imagenet"
                     else measured["eval_rate"])
        seconds = 0.0
        for t in trials:
            rate = rates.get(t.config.norm, rates["batch"])
            seconds += t.config.epochs * (train_images / rate + val_images / eval_rate)
        if name != "imagenet":
            seconds /= measured["packing_gain"]
        total[name] = seconds / 3600
        print(f"  {name:<9} {len(trials):>3} trials x {trials[0].config.epochs} epochs: "
              f"{total[name]:8.1f} GPU-hours")
    print(f"  cifar10 + cifar100: {total['cifar10'] + total['cifar100']:.2f} GPU-hours; "
          f"imagenet as one GPU's ResNet-50 rate, on 8 GPUs about "
          f"{total['imagenet'] / 8:.1f} hours of wall time at perfect scaling")
    print("summary: projection GPU-hours: " + ", ".join(f"{name} {hours:.1f}"
                                                       for name, hours in total.items()))


def section_resnet50(args: argparse.Namespace, device, measured: dict) -> None:
    from trainers.config import make_config

    tiny = args.tiny or device.type != "cuda"
    batch, size = (2, 32) if tiny else (IMAGENET_RANK_BATCH, 224)
    steps, repeats = (1, 1) if args.tiny else (1, 2) if args.quick or tiny else (5, 5)
    print(f"== resnet50: ImageNet ResNet-50 training images/s per GPU, batch {batch} (the "
          f"imagenet grid's per rank), {size}x{size}, channels_last, seeded")
    runners = {}
    configs = {norm: make_config("imagenet", ".", arch="resnet50", norm=norm,
                                 batch_size=batch, device=str(device), workers=0,
                                 **IMAGENET_MODE) for norm in ("batch", "online")}
    with seeded(configs["batch"]):
        for norm, config in configs.items():
            runners[norm] = StepRunner(config, device, batch, image_size=size, classes=1000)
            runners[norm].run(1 if tiny else 6)
        times = _interleaved_medians({n: (lambda r=r: r.run(steps))
                                      for n, r in runners.items()}, 1, repeats, _sync(device))
        measured["imagenet_rates"] = {n: steps * batch / t for n, t in times.items()}
        r = runners["batch"]
        eval_time = _interleaved_medians({"eval": lambda r=r: r.eval_run(steps)}, 1, repeats,
                                         _sync(device))["eval"]
    measured["imagenet_eval_rate"] = steps * batch / eval_time
    rates = measured["imagenet_rates"]
    print("  " + ", ".join(f"{n} {v:,.0f} images/s" for n, v in rates.items())
          + f"; evaluation {measured['imagenet_eval_rate']:,.0f} images/s")
    print(f"summary: resnet50 batch {batch}: online step {rates['batch'] / rates['online']:.2f}x "
          f"batch norm's ({rates['online']:,.0f} vs {rates['batch']:,.0f} images/s)")
    del runners
    _free(device)


SECTIONS: dict[str, Callable[[argparse.Namespace, Any, dict], None]] = {
    "layers": section_layers, "resnet20": section_resnet20, "resnet50": section_resnet50,
    "packing": section_packing, "projection": section_projection,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated, of: {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="few repeats: a smoke run")
    parser.add_argument("--device", default="cuda",
                        help="cuda (default); cpu runs the sections as a smoke test only")
    parser.add_argument("--modes", default="",
                        help="ResNet-20 modes by letter, comma-separated, of: "
                             f"{', '.join(m.split()[0] for m, _ in MODES)} (default: all)")
    parser.add_argument("--short", action="store_true",
                        help="packing: 1 and 4 processes, a short window")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny shapes and batches: a smoke test of the script (CPU)")
    parser.add_argument("--state", metavar="FILE",
                        help="JSON file of the rates measured so far: read at the start, "
                             "written after each section (so that sections run as separate "
                             "steps, and the projection prices what they measured)")
    parser.add_argument("--worker", nargs=2, type=float, metavar=("START_AT", "SECONDS"),
                        help=argparse.SUPPRESS)   # one process of the packing section
    args = parser.parse_args(argv)
    if args.worker:
        import torch
        if args.device == "cpu":
            torch.set_num_threads(1)
        packing_worker(args.worker[0], args.worker[1], torch.device(args.device), args.tiny)
        return 0
    known = {m.split()[0] for m, _ in MODES}
    bad_modes = [m for m in args.modes.split(",") if m.strip() and m.strip() not in known]
    if bad_modes:
        parser.error(f"--modes: unknown mode(s) {', '.join(bad_modes)}; choose from "
                     f"{', '.join(sorted(known))}")
    names = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = [name for name in names if name not in SECTIONS]
    if unknown or not names:
        parser.error(f"--sections: unknown section(s) {', '.join(unknown) or '(none given)'}; "
                     f"choose from {', '.join(SECTIONS)}")
    # Before cuBLAS first runs, as a seeded trial's process sets it (trainers/train.py): the
    # seeded mode is deterministic only with it, and the others are not slowed by it.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_speed: no CUDA device (torch.cuda.is_available() is False): run it on a "
              "machine with an NVIDIA GPU", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        # a smoke run: one thread, so that other jobs on the machine cannot stall each op
        torch.set_num_threads(1)
    try:
        return _run_sections(args, names, device)
    finally:
        torch.set_num_threads(threads)


def _run_sections(args: argparse.Namespace, names: list[str], device) -> int:
    import torch
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke)"
    print(f"torch {torch.__version__}, {where}, sections: {', '.join(names)}")
    measured: dict = _load_state(args.state)
    for name in names:
        SECTIONS[name](args, device, measured)
        if args.state:
            Path(args.state).write_text(json.dumps(measured, indent=1, sort_keys=True))
    return 0


def _load_state(path: str | None) -> dict:
    if not path or not Path(path).exists():
        return {}
    try:
        return json.loads(Path(path).read_text())
    except ValueError:
        print(f"gpu_speed: --state {path} is not JSON; starting from nothing", file=sys.stderr)
        return {}


if __name__ == "__main__":
    raise SystemExit(main())
