"""Which implementation runs an Online Norm layer's training step: eager ops or Triton kernels.

'eager' is the closed form in norms.online_function (the CPU path, and the fallback);
'triton' the kernels in norms.triton_kernels; 'auto' picks Triton for CUDA tensors when
triton is installed, eager otherwise. The choice is made per call from the input's device.
Nothing here imports triton until a Triton path is asked for, so norms imports without it.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

import torch

IMPLS = ("auto", "eager", "triton")


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}: choose one of {', '.join(IMPLS)} "
                         f"('auto' runs Triton kernels on CUDA tensors and eager ops "
                         f"elsewhere)")
    return impl


@functools.cache
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_runs_on(device: torch.device) -> bool:
    """Whether the Triton kernels can run on tensors of `device`: compiled on CUDA, or in
    Triton's interpreter on CPU tensors (TRITON_INTERPRET=1 when the kernels were first
    imported)."""
    if not triton_installed():
        return False
    if device.type == "cuda":
        return True
    if device.type == "cpu":
        from norms import triton_kernels
        return triton_kernels.INTERPRETED
    return False


def training_function(impl: str, device: torch.device) -> Any:
    """The autograd Function that runs a training step of `impl` on `device`."""
    if impl == "triton" or (impl == "auto" and device.type == "cuda" and triton_installed()):
        if impl == "triton" and not triton_runs_on(device):
            raise ValueError(_cannot_run(device))
        from norms.online_triton import OnlineNormTritonFunction
        return OnlineNormTritonFunction
    from norms.online_function import OnlineNormFunction
    return OnlineNormFunction


def _cannot_run(device: torch.device) -> str:
    if not triton_installed():
        return ("impl='triton' needs the triton package, which is not installed: install "
                "it, or use impl='auto' or impl='eager'")
    return (f"impl='triton' cannot run on a {device.type} tensor: Triton kernels run on "
            f"CUDA tensors, and on CPU tensors only in Triton's interpreter "
            f"(TRITON_INTERPRET=1 set before the kernels are first used); move the layer "
            f"to CUDA or use impl='auto' or impl='eager'")


def triton_failure(err: BaseException) -> bool:
    """Whether `err` was raised in Triton or in this package's Triton path (compiling or
    launching a kernel), judged by the frames it passed through."""
    if type(err).__module__.split(".")[0] == "triton":
        return True
    tb = err.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename.replace("\\", "/")
        if "/triton/" in name or name.endswith(("norms/online_triton.py",
                                                "norms/triton_kernels.py")):
            return True
        tb = tb.tb_next
    return False
