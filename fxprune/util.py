"""Small idioms every stage needs, written once: inputs as a tuple, tensors out of any output
structure, and evaluation mode that restores each module's own flag."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch


def as_inputs(example_inputs: Sequence[Any] | torch.Tensor) -> tuple:
    """One tensor or a sequence of inputs, as the tuple a forward call takes."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    return tuple(example_inputs)


def owner_of(node) -> str | None:
    """The innermost module whose forward made an fx ``node`` (export's nn_module_stack)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    return path.removeprefix("L['self'].").removeprefix("L__self__")


def flat_tensors(out: Any) -> list[torch.Tensor]:
    """Every tensor in a model output (tensor, dict, list, tuple, nested), in a fixed order;
    numpy arrays (onnxruntime's outputs) become tensors."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, np.ndarray):
        return [torch.from_numpy(out)]
    if isinstance(out, dict):
        return [t for v in out.values() for t in flat_tensors(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in flat_tensors(v)]
    return []


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``module`` in eval mode for the block, then every submodule's own ``training`` flag
    back as it was (``train(was)`` would overwrite a BN the user froze on purpose)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, mode in modes:
            m.training = mode
