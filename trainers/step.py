"""One training step (forward, loss, backward, SGD), eager or replayed from a CUDA graph.

The graph holds the whole step, so a step is one launch from the host instead of one per op
(Online Normalization's small per-channel ops made eager GPU steps launch-bound). It is
captured at the start of every epoch, after WARMUP_STEPS eager steps: the lr is a Python
float baked into the captured optimizer step, and the schedule changes it only between
epochs; and since every epoch begins with the same eager steps whether the run started
fresh or resumed, a resumed run replays exactly the steps an uninterrupted one does. The
eager steps also make the lazy state (momentum buffers, cached constants, cuDNN handles)
exist before capture, which capture requires.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Callable

import torch
from torch import nn

from trainers.metrics import EpochMeter

# Eager steps at the start of each epoch before the graph is captured (three, as PyTorch's
# CUDA-graph guide warms up a side stream).
WARMUP_STEPS = 3


def autocast_context(device: torch.device, amp_dtype: torch.dtype | None
                     ) -> Callable[[], AbstractContextManager]:
    """A factory of the forward pass's autocast context (a no-op without AMP)."""
    if amp_dtype is None:
        return nullcontext
    # No cast cache: casts made inside a graph capture must not outlive it (PyTorch's
    # guidance for AMP with CUDA graphs); the values are the same either way.
    return lambda: torch.autocast(device.type, dtype=amp_dtype, cache_enabled=False)


class EagerStep:
    """step(images, labels): one SGD step, its loss and predictions added to `meter`."""

    def __init__(self, model: nn.Module, criterion: nn.Module,
                 optimizer: torch.optim.Optimizer, meter: EpochMeter,
                 autocast: Callable[[], AbstractContextManager],
                 scaler: torch.amp.GradScaler | None = None) -> None:
        self.model, self.criterion, self.optimizer = model, criterion, optimizer
        self.meter, self.autocast, self.scaler = meter, autocast, scaler

    def forward_backward(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        with self.autocast():
            logits = self.model(images)
            loss = self.criterion(logits, labels)
        self.meter.update(logits, labels, loss)
        if self.scaler is not None:   # float16: scale the loss so small gradients survive
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.forward_backward(images, labels)
        self.meter.count(labels.shape[0])


class GraphedStep(EagerStep):
    """The same step, captured once per epoch in a CUDA graph and replayed on static copies
    of each batch. Needs a step that never waits for the device (no GradScaler)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.scaler is not None:
            raise ValueError("a CUDA-graph step cannot use a GradScaler")
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: tuple[torch.Tensor, torch.Tensor] | None = None
        self.side_stream = torch.cuda.Stream()
        self.steps = 0

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.steps += 1
        if self.steps <= WARMUP_STEPS:
            self._on_side_stream(images, labels)
            return
        if self.graph is None:
            self._capture(images, labels)
        static_images, static_labels = self.static
        static_images.copy_(images)
        static_labels.copy_(labels)
        self.graph.replay()
        self.meter.count(labels.shape[0])

    def _on_side_stream(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        # eager steps on a side stream, as before a capture, so that what capture needs
        # (allocator pools, library handles) is set up on a stream other than the default
        stream = self.side_stream
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            super().__call__(images, labels)
        torch.cuda.current_stream().wait_stream(stream)

    def _capture(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.static = (images.clone(), labels.clone())
        self.optimizer.zero_grad(set_to_none=True)   # the graph's backward writes fresh grads
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.forward_backward(*self.static)


def make_train_step(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    meter: EpochMeter, device: torch.device, amp_dtype: torch.dtype | None,
                    scaler: torch.amp.GradScaler | None, cuda_graph: bool) -> EagerStep:
    """This epoch's step function; graph capture only on CUDA (on the CPU a graph option
    trains eagerly: it changes how fast a step runs, never what it computes)."""
    autocast = autocast_context(device, amp_dtype)
    if cuda_graph and device.type == "cuda":
        return GraphedStep(model, criterion, optimizer, meter, autocast, scaler)
    return EagerStep(model, criterion, optimizer, meter, autocast, scaler)
