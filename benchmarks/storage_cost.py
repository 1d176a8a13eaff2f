"""Benchmark: the demo grid with its results on local disk and on an S3 server, in one run.

Prints each one's wall time and the bytes written to the results per epoch, and their ratio.
The S3 server is moto's on loopback (benchmarks/s3_loopback.py): it measures what onorm
sends (requests, whole-object PUTs, no appends) without a network's latency, so real
buckets add their round trips on top. Bytes are counted where they enter the results
filesystem (orchestrator/storage.py) in every process, the trials' Ray workers included (a
worker setup hook wraps its writes), plus the local TensorBoard files, which the trackers
write directly when the results are local.
Each run's own output goes to a log file, named at the end. Usage:
python -m benchmarks.storage_cost [--quick] [--experiment demo]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TALLY_VARIABLE = "ONORM_BENCH_TALLY"


def count_writes() -> None:
    """Wrap the results filesystem's writes so each appends its byte count to the tally file
    (in this process; Ray runs it in every worker as its setup hook)."""
    from orchestrator import storage

    tally = os.environ.get(TALLY_VARIABLE)
    if not tally or getattr(storage, "_bench_counted", False):
        return

    def note(n: int) -> None:
        with open(tally, "a") as f:   # O_APPEND: lines of several processes do not mix
            f.write(f"{n}\n")

    write_bytes, write_parquet, write_with = (storage.write_bytes, storage.write_parquet,
                                              storage.write_with)

    def counted_bytes(loc, data):
        write_bytes(loc, data)
        note(len(data))

    def counted_parquet(loc, df):   # remote: counted by write_bytes underneath
        write_parquet(loc, df)
        if not storage.is_remote(loc):
            note(loc.stat().st_size)

    def counted_with(loc, write):
        write_with(loc, write)
        if not storage.is_remote(loc):
            note(loc.stat().st_size)

    storage.write_bytes, storage.write_parquet, storage.write_with = (
        counted_bytes, counted_parquet, counted_with)
    storage._bench_counted = True


class RequestCount(logging.Handler):
    """Counts the S3 server's requests (werkzeug logs one line per request)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1

    def take(self) -> int:
        count, self.count = self.count, 0
        return count


def take_tally(path: Path) -> int:
    total = sum(int(line) for line in path.read_text().split()) if path.exists() else 0
    path.write_text("")
    return total


def run_grid(experiment: str, results: str, data_dir: Path, extra: list[str], log: Path
             ) -> tuple[float, int]:
    """(wall seconds, epochs recorded) of `onorm run EXPERIMENT *extra` into `results`, its
    output appended to `log`."""
    from orchestrator import storage
    from orchestrator.cli import main
    from orchestrator.layout import ExperimentLayout

    argv = ["run", experiment, "--config", str(REPO / "experiments.yaml"), "--results", results,
            "--data-dir", str(data_dir), *extra]
    with open(log, "a") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        start = time.perf_counter()
        code = main(argv)
        wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"onorm run into {results} exited {code}: see {log}")
    metrics = storage.read_parquet(ExperimentLayout.of(storage.results_root(results),
                                                       experiment).metrics)
    return wall, len(metrics)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="demo")
    parser.add_argument("--quick", action="store_true",
                        help="2 epochs of the online and batch cells only")
    args = parser.parse_args()
    quick = ["--set", "settings.epochs=2", "--only", "norm=online", "--only", "norm=batch"]
    log = Path(tempfile.gettempdir()) / "onorm-storage-cost.log"
    log.write_text("")

    import ray

    from benchmarks.s3_loopback import loopback_s3
    from orchestrator.execute.attempt import STORE_NAMESPACE
    from orchestrator.execute.runner import quiet_ray_notices

    with tempfile.TemporaryDirectory(prefix="onorm-bench-") as tmp, loopback_s3() as s3:
        tmp = Path(tmp)
        tally = tmp / "tally"
        os.environ.update(s3.env)
        os.environ[TALLY_VARIABLE] = str(tally)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        requests = RequestCount()
        server_log = logging.getLogger("werkzeug")
        for handler in server_log.handlers:   # werkzeug's own, printing each request
            handler.setLevel(logging.ERROR)
        server_log.setLevel(logging.INFO)
        server_log.addHandler(requests)
        server_log.propagate = False
        quiet_ray_notices()
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                 namespace=STORE_NAMESPACE, log_to_driver=False,
                 runtime_env={"worker_process_setup_hook": "benchmarks.storage_cost.count_writes"})
        count_writes()
        rows = []
        try:
            data = tmp / "data"
            # the synthetic dataset is written and the workers' imports warmed once, before
            # either run is timed
            run_grid(args.experiment, str(tmp / "warm-up"), data,
                     ["--set", "settings.epochs=1", "--only", "norm=none"], log)
            take_tally(tally)
            requests.take()
            for label, results in (("local disk", str(tmp / "local")),
                                   ("S3 (moto, loopback)", s3.uri("bench"))):
                wall, epochs = run_grid(args.experiment, results, data,
                                        quick if args.quick else [], log)
                written = take_tally(tally)
                if not results.startswith("s3://"):
                    written += folder_bytes(Path(results) / args.experiment / "tensorboard")
                rows.append((label, wall, epochs, written, requests.take()))
        finally:
            ray.shutdown()

    print(f"\n{args.experiment} grid{' (--quick)' if args.quick else ''}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'results':<22}{'wall s':>9}{'epochs':>8}{'bytes written':>15}{'per epoch':>12}"
          f"{'S3 requests/epoch':>19}")
    for label, wall, epochs, written, count in rows:
        print(f"{label:<22}{wall:>9.1f}{epochs:>8}{written:>15,}{written / epochs:>12,.0f}"
              f"{count / epochs if count else 0:>19.1f}")
    (_, wall_l, ep_l, w_l, _), (_, wall_s, ep_s, w_s, _) = rows
    print(f"{'ratio S3 / local':<22}{wall_s / wall_l:>9.2f}{'':>8}{'':>15}"
          f"{(w_s / ep_s) / (w_l / ep_l):>12.2f}")
    print(f"(onorm's output: {log})")


if __name__ == "__main__":
    main()
