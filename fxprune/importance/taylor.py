"""First-order Taylor (Molchanov et al. 2019): a unit's importance is the squared
first-order change of the loss when all of its parameter slices are zeroed,
``(sum over slices of w * dL/dw)^2``, averaged over labelled calibration batches.

Gradients come from ``torch.autograd.grad`` on the traced graph in eval mode, so neither
the caller's ``.grad`` fields nor its BN statistics change."""

from __future__ import annotations

import numpy as np
import torch

from ..calibrate import batches
from ..errors import OptionError
from ..util import eval_mode
from .base import Calibration, Importance, register, require
from .magnitude import slice_sums


class Taylor(Importance):
    name = "taylor"
    needs = "labels"

    def scores(self, graph, calib: Calibration | None = None) -> np.ndarray:
        calib = require(self, calib)
        gm = graph.traced.gm
        names = [q for q, t in graph.traced.tensors.items()  # frozen ones have no gradient
                 if isinstance(t, torch.nn.Parameter) and t.is_floating_point()
                 and t.requires_grad]
        params = [graph.traced.tensors[q] for q in names]
        total, count = np.zeros(len(graph.labels)), 0
        with eval_mode(gm):
            for inputs, target in batches(calib.data, len(graph.traced.example_inputs),
                                          calib.max_batches, graph.traced.split_batch):
                if target is None:
                    raise OptionError("taylor needs calibration batches of (inputs, target)")
                loss = calib.loss_fn(gm(*inputs), target)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                wg = {q: (p.detach() * g).double() for q, p, g in zip(names, params, grads)
                      if g is not None}
                total += slice_sums(graph, lambda q, t, wg=wg: wg.get(q)) ** 2
                count += 1
        return total / max(count, 1)


register("taylor", Taylor)
