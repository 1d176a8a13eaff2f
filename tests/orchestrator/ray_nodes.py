"""Real Ray nodes on this machine for the cluster tests: `ray start` processes with token
authentication, one RAY_TMPDIR per cluster, a node optionally in its own mount namespace
(a tmpfs over a folder, so it sees other files than the head) or with its own PYTHONPATH.
Everything is stopped by process id: never `ray stop`, which would stop other clusters."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).with_name("ray"))
ONORM = str(Path(sys.executable).with_name("onorm"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayNodes:
    """A head and any number of nodes; `env` is what a driver joining them needs."""

    def __init__(self):
        # short: Ray's unix socket paths under it must stay below 108 characters
        self.tmpdir = Path(tempfile.mkdtemp(prefix="onorm-ray-", dir="/tmp"))
        self.port = free_port()
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.env.update(RAY_TMPDIR=str(self.tmpdir), RAY_AUTH_MODE="token",
                        PYTHONUNBUFFERED="1")
        self.procs: dict[str, subprocess.Popen] = {}
        self.dashboard_port: int | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self, name: str, *args: str, head: bool = False, hide: Path | None = None,
              pythonpath: Path | None = None, dashboard: bool = False,
              env: dict[str, str] | None = None) -> None:
        command = [RAY, "start", "--block", "--disable-usage-stats", "--node-name", name,
                   "--dashboard-agent-listen-port", str(free_port()), *args]
        if head:
            command += ["--head", "--port", str(self.port)]
            if dashboard:
                self.dashboard_port = free_port()
                command += ["--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                            "--dashboard-port", str(self.dashboard_port)]
            else:
                command += ["--include-dashboard", "false"]
        else:
            command += ["--address", self.address]
        if hide is not None:   # this node sees an empty folder where the others see `hide`
            command = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                       f"mount -t tmpfs onorm-test {shlex.quote(str(hide))} && exec "
                       + shlex.join(command)]
        env = {**self.env, **(env or {})}
        if pythonpath is not None:
            env["PYTHONPATH"] = str(pythonpath)
        log = open(self.tmpdir / f"{name}.log", "w")
        self.procs[name] = subprocess.Popen(command, env=env, stdout=log,
                                            stderr=subprocess.STDOUT)

    def alive_nodes(self) -> int:
        out = subprocess.run([RAY, "status", "--address", self.address], env=self.env,
                             capture_output=True, text=True, timeout=60).stdout
        active = out.split("Active:", 1)[-1].split("Pending:", 1)[0] if "Active:" in out else ""
        # one line per node ("1 node_ID"), or per node type under an autoscaler ("2 gpu_node")
        return sum(int(m) for m in re.findall(r"^\s*(\d+) \S+$", active, re.M))

    def wait_for(self, count: int, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while self.alive_nodes() != count:
            for name, proc in self.procs.items():
                assert proc.poll() is None, self.log(name)
            assert time.time() < deadline, {n: self.log(n) for n in self.procs}
            time.sleep(1)

    def log(self, name: str) -> str:
        return (self.tmpdir / f"{name}.log").read_text()[-3000:]

    def stop(self, name: str) -> None:
        """Stop one node: its `ray start --block` stops what it started on SIGTERM; what
        is left after that is killed."""
        proc = self.procs.pop(name)
        try:
            tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        except psutil.Error:
            tree = []
        for p in tree:
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass
        _, left = psutil.wait_procs(tree, timeout=20)
        for p in left:
            try:
                p.kill()
            except psutil.Error:
                pass
        proc.wait(timeout=30)

    def shutdown(self) -> None:
        for name in list(self.procs)[::-1]:
            self.stop(name)
        # anything of this cluster still running (workers of a killed driver): found by the
        # cluster's own temporary folder in its command line
        mine = str(self.tmpdir)
        left = []
        for p in psutil.process_iter(["cmdline"]):
            if any(mine in part for part in (p.info["cmdline"] or [])):
                try:
                    p.kill()
                    left.append(p)
                except psutil.Error:
                    pass
        psutil.wait_procs(left, timeout=20)
        shutil.rmtree(self.tmpdir, ignore_errors=True)


def onorm(args: list[str], env: dict[str, str], log: Path, timeout: float = 600,
          cwd: Path | None = None) -> tuple[int, str]:
    """`onorm ARGS` to the end; (exit code, output)."""
    with open(log, "w") as f:
        code = subprocess.run([ONORM, *args], env=env, stdout=f, stderr=subprocess.STDOUT,
                              timeout=timeout, cwd=cwd).returncode
    return code, log.read_text()
