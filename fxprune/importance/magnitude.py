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
        n = len(graph.labels)
        acc = np.zeros(n, dtype=np.float64)
        gm = graph.traced.gm
        params = dict(gm.named_parameters())
        for info in graph.params.values():
            t = params.get(info.qualname)
            if t is None:
                continue
            w = t.detach().float().abs() ** self.p
            for dim, ax in enumerate(info.axes):
                if dim not in info.roles or info.shape[dim] == 0:
                    continue
                other = [d for d in range(w.dim()) if d != dim]
                vals = w.sum(dim=other) if other else w
                acc += np.bincount(graph.labels[ax.comp.ids], vals.double().numpy(), n)
        for c in graph.ctx.consumers:
            t = params.get(c.qualname)
            if t is None or len(c.dims) < 2:
                continue
            w = t.detach().float().abs() ** self.p
            other = [d for d in range(w.dim()) if d not in c.dims]
            vals = (w.sum(dim=other) if other else w).double().numpy()
            acc += np.bincount(graph.labels[c.ids.reshape(-1)], vals.reshape(-1), n)
        return acc ** (1.0 / self.p)


register("l1", lambda: GroupMagnitude(1))
register("l2", lambda: GroupMagnitude(2))
