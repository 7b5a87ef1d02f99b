"""L1/L2 group magnitude: every parameter slice of a unit counts (producer rows, consumer
columns, norm scales), so coupled layers rank their shared channels together."""

from __future__ import annotations

import numpy as np

from .base import Importance, register


class GroupMagnitude(Importance):
    def __init__(self, p: int = 2):
        self.p = p
        self.name = f"l{p}"

    def scores(self, graph) -> np.ndarray:
        acc = np.zeros(len(graph.labels), dtype=np.float64)
        gm = graph.traced.gm
        params = dict(gm.named_parameters())
        for info in graph.params.values():
            t = params.get(info.qualname)
            if t is None:
                continue
            w = t.detach().double().abs() ** self.p
            for dim, ax in enumerate(info.axes):
                if dim not in info.roles or info.shape[dim] == 0:
                    continue
                other = [d for d in range(w.dim()) if d != dim]
                vals = w.sum(dim=other).numpy() if other else w.numpy()
                np.add.at(acc, graph.labels[ax.comp.ids], vals)
        for c in graph.ctx.consumers:
            t = params.get(c.qualname)
            if t is None or len(c.dims) < 2:
                continue
            w = t.detach().double().abs() ** self.p
            other = [d for d in range(w.dim()) if d not in c.dims]
            vals = (w.sum(dim=other) if other else w).numpy()
            np.add.at(acc, graph.labels[c.ids.reshape(-1)], vals.reshape(-1))
        return acc ** (1.0 / self.p)


register("l1", lambda: GroupMagnitude(1))
register("l2", lambda: GroupMagnitude(2))
