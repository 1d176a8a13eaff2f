"""Benchmark: what synchronizing the normalizers costs a data-parallel ResNet-20 step.

Two gloo processes on the CPU (or NCCL on two GPUs with --device cuda) each train their half
of a global batch through DDP, with the normalizers synchronized (norms.convert_sync_norms:
the one-device meaning) and without (each rank normalizing its own slice), for batch norm
and Online Norm; the ratio is measured in the same run, interleaved. One process on the whole
batch is shown for scale. Each rank runs one torch thread on the CPU, so two ranks use two
cores.
Usage: python -m benchmarks.sync_cost [--quick] [--batch 128] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

NORMS = (("batch", {}), ("online", {"ecm": "ls"}))
WORLD = 2


def build(norm: str, options: dict, synced: bool, device):
    import torch

    import norms
    from trainers.models import build_cifar_resnet

    torch.manual_seed(0)
    model = build_cifar_resnet(20, 10, norms.norm_factory(norm, **options)).to(device)
    return norms.convert_sync_norms(model) if synced else model


def stepper(model, batch: int, device, world: int):
    """A function doing one SGD step of `model` (in DDP when world > 1) on a fixed batch."""
    import torch
    from torch import nn

    net = model if world == 1 else nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        forward_sync_buffers=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(batch // world, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (batch // world,), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(images), labels).backward()
        optimizer.step()
    return step


def timed(fns: dict, repeats: int, sync, barrier) -> dict[str, float]:
    """Median seconds per call, the calls interleaved and every rank starting together."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            barrier()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def rank_main(rank: int, port: int, args: argparse.Namespace, out) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = args.device == "cuda"
    device = torch.device(f"cuda:{rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=WORLD)
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    fns = {(norm, synced): stepper(build(norm, options, synced, device), args.batch, device,
                                   WORLD)
           for norm, options in NORMS for synced in (True, False)}
    for fn in fns.values():   # warm-up
        fn()
    result = timed(fns, args.repeats, sync, dist.barrier)
    if rank == 0:
        out.put(result)
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repeats: a smoke run")
    parser.add_argument("--batch", type=int, default=128, help="global batch (default 128)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args(argv)
    args.repeats = 3 if args.quick else 15
    import torch
    import torch.multiprocessing as mp

    if args.device == "cuda" and torch.cuda.device_count() < WORLD:
        parser.error(f"--device cuda needs {WORLD} GPUs, found {torch.cuda.device_count()}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    mp.start_processes(rank_main, args=(port, args, out), nprocs=WORLD, start_method="spawn")
    two = out.get()
    # one process on the whole batch, for scale (its own threads: one, like each rank)
    torch.set_num_threads(1)
    device = torch.device("cuda:0" if args.device == "cuda" else "cpu")
    sync = (lambda: torch.cuda.synchronize(device)) if args.device == "cuda" else (lambda: None)
    single = {norm: stepper(build(norm, options, False, device), args.batch, device, 1)
              for norm, options in NORMS}
    for fn in single.values():
        fn()
    one = timed(single, args.repeats, sync, lambda: None)
    print(f"ResNet-20 SGD step, global batch {args.batch} on {WORLD} {args.device} ranks "
          f"({args.batch // WORLD} each), median of {args.repeats} interleaved steps")
    print(f"{'norm':<8}{'synchronized':>16}{'per-rank only':>16}{'sync cost':>12}"
          f"{'1 process':>14}")
    for norm, _ in NORMS:
        synced, plain = two[(norm, True)], two[(norm, False)]
        print(f"{norm:<8}{synced * 1e3:>13.1f} ms{plain * 1e3:>13.1f} ms"
              f"{synced / plain:>11.2f}x{one[norm] * 1e3:>11.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
