"""The seed scripts' optimizer recipe: SGD with momentum, batch-size rescaling
(trainers/recipe.py), MultiStepLR."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch
from torch import nn

from trainers.models import is_norm_module
from trainers.recipe import effective_lr_momentum

if TYPE_CHECKING:
    from trainers.config import TrialConfig


def param_groups(model: nn.Module, weight_decay: float, norm_weight_decay: str) -> list[dict]:
    """Split parameters into a decayed group and a weight-decay-free group.

    norm_weight_decay: 'exempt' - no decay on any parameter of a normalization layer;
    'bias' - only normalization biases exempt (what the seed scripts' name filter did);
    'none' - decay everywhere. Normalization layers are found by class (is_norm_module).
    """
    exempt: set[int] = set()
    if norm_weight_decay != "none":
        for module in model.modules():
            if not is_norm_module(module):
                continue
            for name, param in module.named_parameters(recurse=False):
                if norm_weight_decay == "exempt" or name == "bias":
                    exempt.add(id(param))
    decay = [p for p in model.parameters() if id(p) not in exempt]
    no_decay = [p for p in model.parameters() if id(p) in exempt]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, config: "TrialConfig") -> torch.optim.SGD:
    lr, momentum = effective_lr_momentum(config)
    groups = param_groups(model, config.weight_decay, config.norm_weight_decay)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


def build_scheduler(optimizer: torch.optim.Optimizer, config: "TrialConfig",
                    epochs_done: int = 0) -> torch.optim.lr_scheduler.MultiStepLR:
    """MultiStepLR stepped once at the start of every epoch after the first.

    After s steps the lr has dropped at every milestone <= s, so milestone k lowers the lr
    from epoch k+1 (1-based) on. `epochs_done` > 0 (a manual --start-epoch without a
    checkpoint) pre-steps so that the training loop's next step lands on the right epoch.
    """
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(config.lr_milestones), gamma=config.lr_multiplier)
    with warnings.catch_warnings():
        # pre-stepping before any optimizer.step() is intended here
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(max(0, epochs_done - 1)):
            scheduler.step()
    return scheduler
