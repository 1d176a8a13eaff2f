"""Compile every Triton kernel launch of Online Norm steps for a GPU, without a GPU.

The interpreter (which the CPU tests use) runs the kernels' Python but never compiles them,
so type errors, unsupported ops or layouts that only the compiler meets would first show on
a GPU machine. This records the launches that training steps of several configurations
make (without running them; the kernels must not be interpreted), specializes their
arguments as the JIT would, and compiles each distinct kernel to a cubin for the target
(sm_90 by default, Triton's own ptxas). Usage: python tests/norms/triton_compile.py [--arch 90]
[--ptxas-info] [--cases K | --all]; prints one line per compiled variant, exits 1 if any fails.
Each case runs once alone and once as rank 1 of a chain over 2 ranks (norms.sample_chain), whose
backward launches kernels of its own.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from typing import Any

# (shape, dtype name, ecm, affine, channels_last): the layouts and modes the layers meet.
# The first four reach every kernel and every ecm branch, float64 'ac' included (a clamp
# that Triton 3.8 once lowered to an instruction without a float64 form on sm_90); the
# special shapes follow, then every other dtype x ecm x affine x layout (`--all`).
DTYPES = ("float32", "bfloat16", "float16", "float64")
SMALL = (8, 4, 5, 6)
CASES = [(SMALL, "float32", "ls", True, False),
         (SMALL, "bfloat16", "ac", True, True),
         (SMALL, "float16", "none", False, False),
         (SMALL, "float64", "ac", False, True),
         (SMALL, "float64", "ls", True, True),
         ((300, 6, 1, 1), "float32", "ls", True, False),      # 1d layer, chunked scan
         ((32, 256, 56, 56), "float32", "ls", True, False),   # split reductions
         ((32, 256, 56, 56), "float32", "ac", True, True)]
ALL_CASES = CASES + [(SMALL, dtype, ecm, affine, channels_last)
                     for dtype in DTYPES for ecm in ("ls", "ac", "none")
                     for affine in (True, False) for channels_last in (False, True)
                     if (SMALL, dtype, ecm, affine, channels_last) not in CASES]


class _Chain:
    """Rank 1 of 2 for the launches' shapes (nothing runs: the gathered data are never read)."""

    world, rank = 2, 1

    def gather(self, t):
        import torch
        return torch.cat([t, t], dim=1)


def record_launches(cases: list | None = None) -> list[tuple[Any, tuple, dict]]:
    import torch

    from norms import online_triton, triton_kernels
    from norms.online_inputs import OnlineNormConstants, OnlineNormState
    assert not triton_kernels.INTERPRETED, "unset TRITON_INTERPRET: the kernels must compile"
    launches: list[tuple[Any, tuple, dict]] = []
    online_triton._launch = lambda kernel, grid, *args, **meta: launches.append(
        (kernel, args, meta))
    for shape, dtype, ecm, affine, channels_last in (CASES if cases is None else cases):
        c = shape[1]
        x = torch.zeros(shape, dtype=getattr(torch, dtype))   # never read: nothing runs
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        weight = torch.ones(c, requires_grad=True) if affine else None
        bias = torch.zeros(c, requires_grad=True) if affine else None
        state = [torch.zeros(c), torch.ones(c), torch.zeros(c), torch.zeros(c)]
        for chain in (None, _Chain()):
            out = online_triton.OnlineNormTritonFunction.apply(
                x, weight, bias, OnlineNormState(*state),
                OnlineNormConstants(0.999, 0.99, 1e-5, ecm, 1e-5, 5.0), chain)
            out.backward(torch.zeros_like(out))
    return launches


def compile_all(arch: int, ptxas_info: bool, cases: list | None = None) -> int:
    import triton
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, 32)
    backend = CUDABackend(target)
    seen, failures = set(), 0
    for kernel, args, meta in record_launches(cases):
        names = list(kernel.arg_names)
        bound = dict(zip(names, args)) | meta
        signature, constexprs, attrs = {}, {}, {}
        for i, param in enumerate(kernel.params):
            value = bound[param.name]
            if param.is_constexpr:
                signature[param.name], constexprs[(i,)] = "constexpr", value
                continue
            # As the JIT specializes: on value 1 and 16-divisibility, unless told not to.
            kind, attr = native_specialize_impl(CUDABackend, value, False,
                                                not param.do_not_specialize,
                                                not param.do_not_specialize_on_alignment)
            signature[param.name] = kind
            if kind == "constexpr":
                constexprs[(i,)] = attr
            elif isinstance(attr, str):
                attrs[(i,)] = backend.parse_attr(attr)
        key = repr((kernel.fn.__name__, signature, constexprs, attrs))
        if key in seen:
            continue
        seen.add(key)
        label = f"{kernel.fn.__name__} " + " ".join(
            f"{names[i[0]]}={v}" for i, v in constexprs.items() if names[i[0]].isupper())
        try:
            compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs),
                                      target=target)
        except Exception as err:   # report every failing variant, not just the first
            failures += 1
            print(f"FAIL {label}: {type(err).__name__}: {str(err).splitlines()[0][:300]}")
            continue
        line = f"ok   {label} shared={compiled.metadata.shared}"
        if ptxas_info:
            line += " " + _ptxas_info(compiled.asm["ptx"], arch)
        print(line, flush=True)
    print(f"{len(seen)} variants, {failures} failed to compile for sm_{arch}")
    return 1 if failures else 0


def _ptxas_info(ptx: str, arch: int) -> str:
    """Registers and spills of the compiled kernel (ptxas -v)."""
    from triton.backends.nvidia.compiler import get_ptxas
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        result = subprocess.run([get_ptxas(arch).path, "-v", f"--gpu-name=sm_{arch}a", src,
                                 "-o", os.path.join(tmp, "k.o")], capture_output=True,
                                text=True, check=False)
    info = [line.split("info    : ")[-1] for line in result.stderr.splitlines()
            if "registers" in line or "spill" in line]
    return " | ".join(info)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 80, 90")
    parser.add_argument("--ptxas-info", action="store_true", help="print registers and spills")
    parser.add_argument("--cases", type=int, default=len(CASES),
                        help=f"compile the launches of the first CASES cases (of {len(CASES)})")
    parser.add_argument("--all", action="store_true",
                        help=f"every dtype x ecm x affine x layout besides ({len(ALL_CASES)} "
                             "cases)")
    args = parser.parse_args(argv)
    cases = ALL_CASES if args.all else CASES[:args.cases]
    return compile_all(args.arch, args.ptxas_info, cases)


if __name__ == "__main__":
    sys.exit(main())
