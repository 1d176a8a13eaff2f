"""Normalizers that keep their one-device meaning across the ranks of a data-parallel trial.

`convert_sync_norms(module)` makes every batch norm normalize over the global batch (torch's
SyncBatchNorm on CUDA; `SyncBatchNorm2d` below elsewhere, since torch's refuses CPU modules)
and hands every other layer that offers the `synchronize` hook (`Synchronizable`) the
process group. Online Norm offers it: it switches to one chain over the global batch
(norms.sample_chain), so its state buffers come out identical on every rank and equal to one
process's. A plugin normalizer that needs the other ranks offers the same hook. Group, layer,
instance and no normalization work per sample and need nothing.

Each rank's loss is the mean over its own slice and DDP averages the gradients, so the
gradient reaching a layer on a rank is world-size times the one-device one. Batch norm's
backward is linear in it; Online Norm's control state (u, v) would scale with it, so its
chain divides what feeds the state by the world size and multiplies the state's share of
the input gradient back: the buffers, and so a checkpoint, mean the same for any number of
ranks.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
import torch.distributed as dist
from torch import nn

from norms.sample_chain import world_size


class _SyncBatchNormFunction(torch.autograd.Function):
    """Batch norm with statistics over the global batch.

    Each rank reduces its slice with ATen's own batch-norm statistics (one fused pass, x's
    dtype, centred variance) and the ranks combine (count, count*mean, count*var,
    count*mean^2) in float64 by one all-reduce: the variance is the ranks' own variances plus
    the spread of their means, with no large E[x^2] - mean^2 cancellation. The backward's
    per-channel sums of dy and dy*xhat come from ATen's batch-norm backward given the global
    mean and invstd, then one all-reduce. The passes over the activations stay in x's dtype,
    as in BatchNorm2d; only per-channel numbers are float64."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None,
                bias: torch.Tensor | None, running_mean: torch.Tensor,
                running_var: torch.Tensor, eps: float, momentum: float, group: Any
                ) -> torch.Tensor:
        # this rank's mean and biased variance (no running statistics: those need the global)
        mean_local, var_local = torch.batch_norm_update_stats(x, None, None, 0.0)
        n = float(x[:, 0].numel())
        mean_local, var_local = mean_local.double(), var_local.double()
        local = torch.stack([torch.full_like(mean_local, n), n * mean_local, n * var_local,
                             n * mean_local * mean_local])
        dist.all_reduce(local, group=group)
        count, total, within, total_sq = local[0, 0], local[1], local[2], local[3]
        mean = total / count
        var = ((within + total_sq - count * mean * mean) / count).clamp_min_(0)
        invstd = (var + eps).rsqrt()
        with torch.no_grad():
            unbiased = var * (count / (count - 1).clamp_min(1))
            running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
            running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
        scale = invstd * weight.double() if weight is not None else invstd
        shift = (bias.double() if bias is not None else 0) - mean * scale
        out = torch.addcmul(_channels(shift, x), x, _channels(scale, x))
        ctx.save_for_backward(x, mean, invstd, weight, count)
        ctx.group = group
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        x, mean, invstd, weight, count = ctx.saved_tensors
        grad = grad.contiguous()
        # sum(dy * xhat) and sum(dy) per channel, xhat by the global statistics
        _, local_dy_xhat, local_dy = torch.ops.aten.native_batch_norm_backward(
            grad, x, torch.ones_like(mean, dtype=x.dtype), None, None,
            mean.to(x.dtype), invstd.to(x.dtype), True, 0.0, [False, True, True])
        sums = torch.stack([local_dy.double(), local_dy_xhat.double()])
        dist.all_reduce(sums, group=ctx.group)
        sum_dy, sum_dy_xhat = sums
        scale = invstd * weight.double() if weight is not None else invstd
        # dx = scale * (dy - sum_dy/count - xhat * sum_dy_xhat/count), xhat = (x-mean)*invstd:
        # dx = dy * scale + x * a + b, two passes
        a = -scale * invstd * sum_dy_xhat / count
        b = -scale * sum_dy / count - a * mean
        grad_x = torch.addcmul(_channels(b, grad), grad, _channels(scale, grad))
        grad_x.addcmul_(x, _channels(a, grad))
        grad_w = grad_b = None
        if weight is not None:   # this rank's slice: DDP averages them over the ranks
            grad_w, grad_b = local_dy_xhat.to(weight.dtype), local_dy.to(weight.dtype)
        return grad_x, grad_w, grad_b, None, None, None, None, None


def _channels(per_channel: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A float64 per-channel vector as a (C, 1, 1) tensor in `like`'s dtype, to broadcast."""
    return per_channel.to(like.dtype)[:, None, None]


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are over every rank's batch (any device).

    Same parameters and buffers as BatchNorm2d, so checkpoints load either way."""

    process_group: Any = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size(self.process_group) == 1:
            return super().forward(x)
        self.num_batches_tracked.add_(1)
        return _SyncBatchNormFunction.apply(x, self.weight, self.bias, self.running_mean,
                                            self.running_var, self.eps, self.momentum,
                                            self.process_group)


def _sync_batch_norm(bn: nn.BatchNorm2d, group: Any) -> nn.Module:
    on_cuda = any(t.is_cuda for t in (*bn.parameters(), *bn.buffers()))
    if on_cuda:
        synced: nn.Module = nn.SyncBatchNorm(bn.num_features, bn.eps, bn.momentum, bn.affine,
                                             bn.track_running_stats, process_group=group)
    else:
        synced = SyncBatchNorm2d(bn.num_features, bn.eps, bn.momentum, bn.affine,
                                 bn.track_running_stats)
        synced.process_group = group
    like = next(iter((*bn.parameters(), bn.running_mean)))   # the layer's device and dtype
    synced.to(device=like.device, dtype=like.dtype)
    synced.load_state_dict(bn.state_dict())
    return synced


@runtime_checkable
class Synchronizable(Protocol):
    """A layer that needs the other ranks of a data-parallel trial, and says how.

    convert_sync_norms calls `synchronize(process_group)` once, on the layer as built and
    moved to its device, before the trainer builds the optimizer, with the group the
    trial's ranks share (None: torch.distributed's default group). It returns None when the
    layer switched itself in place, or the module to use in its place (one that loads the
    layer's state_dict, so that checkpoints move between one worker and several). The
    layer's children are left to it.
    """

    def synchronize(self, process_group: Any) -> nn.Module | None: ...


def convert_sync_norms(module: nn.Module, process_group: Any = None) -> nn.Module:
    """`module` with every batch norm synchronized and every layer offering the
    `synchronize` hook (Online Norm, and plugins: `Synchronizable`) handed `process_group`;
    returns the (possibly new) root module.

    Batch norms are replaced by synchronized ones holding the same parameters and buffers
    (build the optimizer after converting); Online Norm layers are switched in place.
    """
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, SyncBatchNorm2d):
        return _sync_batch_norm(module, process_group)
    if isinstance(module, Synchronizable):
        replacement = module.synchronize(process_group)
        return module if replacement is None else replacement
    for name, child in module.named_children():
        converted = convert_sync_norms(child, process_group)
        if converted is not child:
            setattr(module, name, converted)
    return module
