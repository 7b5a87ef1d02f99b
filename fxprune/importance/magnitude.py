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
        labs: list[np.ndarray] = []
        vals_all: list[np.ndarray] = []
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
                labs.append(graph.labels[ax.comp.ids])
                vals_all.append(vals.double().numpy())
        for c in graph.ctx.consumers:
            t = params.get(c.qualname)
            if t is None or len(c.dims) < 2:
                continue
            w = t.detach().float().abs() ** self.p
            other = [d for d in range(w.dim()) if d not in c.dims]
            vals = (w.sum(dim=other) if other else w).double().numpy()
            labs.append(graph.labels[c.ids.reshape(-1)])
            vals_all.append(vals.reshape(-1))
        if not labs:
            return np.zeros(n)
        acc = np.bincount(np.concatenate(labs), np.concatenate(vals_all), n)  # one pass
        return acc ** (1.0 / self.p)


register("l1", lambda: GroupMagnitude(1))
register("l2", lambda: GroupMagnitude(2))
