"""Counting what a budget or a report counts: parameters, and FLOPs as flop_counter does."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..util import eval_mode


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: torch.nn.Module, example_inputs: tuple) -> int:
    """FLOPs of one forward pass, by torch.utils.flop_counter (2 per multiply-add), in eval
    mode (each module's own mode restored after)."""
    with torch.no_grad(), eval_mode(model), FlopCounterMode(display=False) as counter:
        model(*example_inputs)
    return int(counter.get_total_flops())


def count_cost(model: torch.nn.Module, example_inputs: tuple, kind: str) -> float:
    """What a budget counts: ``kind`` "params" or "flops" (flop_counter's)."""
    if kind == "params":
        return float(count_params(model))
    return float(count_flops(model, example_inputs))
