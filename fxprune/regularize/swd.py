"""Selective weight decay (SWD), following the released code (methods.md 4): at every step
(or every ``every`` steps) the units that *would* be pruned now at the final target are found
from the current weights - a global threshold, by bisection, so the kept cost meets the
target under fxprune's cost model - and only they are decayed, with a strength
``mu * a(t) / 2`` that rises exponentially from ``a_min`` to ``a_max`` over training.

Applied as a loss term, as the released code does: under Adam its gradient is normalised
like the task loss's (a gradient hook / decoupled decay would act differently).
"""

from __future__ import annotations

import numpy as np
import torch

from ..cost import CostModel
from ..errors import OptionError
from ..importance.bn_scale import BNScale
from .units import UnitNorms, _trainable, graph_of

GRANULARITIES = ("structured", "structured_full", "unstructured")


class SelectiveWeightDecay:
    """``loss = task_loss + swd()`` once per training step (``swd()`` advances the step).

    ``target``: fraction of the cost removed (0.9 = keep 10 %); ``budget``: "params" or
    "flops"; ``granularity``: "structured" (decay the BN scale and shift of masked units, the
    released code's default), "structured_full" (every slice of a masked unit: filters and
    the consumers' input slices too) or "unstructured" (single weights under a global
    magnitude threshold). Units are ranked by their BN |gamma| (L2 norm where a group has no
    batch norm: our choice for BN-free groups).
    """

    def __init__(self, model_or_graph, target: float, *, example_inputs=None,
                 total_steps: int, mu: float = 5e-4, a_min: float = 0.1, a_max: float = 1e5,
                 granularity: str = "structured", budget: str = "params", every: int = 1,
                 **trace_kw):
        if granularity not in GRANULARITIES:
            raise OptionError(f"granularity {granularity!r}: use one of {GRANULARITIES}")
        if budget not in ("params", "flops"):
            raise OptionError(f"budget {budget!r}: use 'params' or 'flops'")
        if not 0.0 <= target < 1.0:
            raise OptionError(f"target is the fraction removed, in [0, 1): got {target}")
        if granularity == "unstructured" and budget != "params":
            raise OptionError("unstructured SWD counts weights: budget='params' only")
        self.graph = graph_of(model_or_graph, example_inputs, **trace_kw)
        self.target, self.mu, self.a_min, self.a_max = target, mu, a_min, a_max
        self.total_steps, self.granularity, self.every = max(total_steps, 1), granularity, every
        self.step = 0
        self.norms = UnitNorms(self.graph, "bn" if granularity == "structured" else "all")
        self._all = UnitNorms(self.graph) if granularity != "structured" else self.norms
        self.cost = CostModel(self.graph, self._all.local, budget)
        self.keep: np.ndarray | None = None
        self._threshold: float | None = None

    def a(self, step: int | None = None) -> float:
        """a(t) = a_min * (a_max / a_min) ** (t / T), t clipped to T."""
        t = min(self.step if step is None else step, self.total_steps)
        return self.a_min * (self.a_max / self.a_min) ** (t / self.total_steps)

    # ---- the mask ---------------------------------------------------------------------
    def unit_scores(self) -> np.ndarray:
        return BNScale().scores(self.graph)[self._all.units]

    def update_mask(self) -> np.ndarray:
        """Kept units under the target (structured), by bisection over the sorted scores."""
        if self.granularity == "unstructured":
            self._threshold = self._magnitude_threshold()
            return np.ones(self._all.units.size, dtype=bool)
        scores = self.unit_scores()
        order = np.argsort(scores, kind="stable")
        want = (1.0 - self.target) * self.cost(np.ones(scores.size, dtype=bool))
        lo, hi = 0, scores.size  # remove the lo..hi lowest; find the fewest that meet `want`
        keep = np.ones(scores.size, dtype=bool)
        while lo < hi:
            mid = (lo + hi) // 2
            keep[:] = True
            keep[order[:mid]] = False
            if self.cost(keep) <= want:
                hi = mid
            else:
                lo = mid + 1
        keep[:] = True
        keep[order[:lo]] = False
        self.keep = keep
        return keep

    def _magnitude_threshold(self) -> float:
        vals = [t.detach().abs().reshape(-1) for q, t in self.graph.traced.tensors.items()
                if _trainable(t) and "bn" not in q and t.dim() > 1]
        flat = torch.cat(vals)
        k = int(self.target * flat.numel())
        return float(flat.kthvalue(max(k, 1)).values) if k > 0 else -1.0

    def kept_fraction(self) -> float:
        keep = self.keep if self.keep is not None else self.update_mask()
        return self.cost(keep) / self.cost(np.ones_like(keep))

    # ---- the penalty --------------------------------------------------------------------
    def penalty(self) -> torch.Tensor:
        """mu * a(t) / 2 * sum of squares of the masked parameters (no step advance)."""
        if self.keep is None or self.step % self.every == 0:
            self.update_mask()
        if self.granularity == "unstructured":
            total = sum((t * t * (t.detach().abs() < self._threshold)).sum()
                        for t in self.graph.traced.tensors.values() if _trainable(t))
        else:
            total = self._masked_squares()
        return self.mu * self.a() / 2 * total

    def _masked_squares(self) -> torch.Tensor:
        keep = torch.as_tensor(np.append(self.keep, True))  # index -1: not prunable
        kept_elems: dict[str, torch.Tensor] = {}
        for s in self.norms.slices:  # an element is decayed if any of its units is masked
            p = self.norms.params[s.qualname]
            shape = [p.shape[d] if d in s.keep_dims else 1 for d in range(p.dim())]
            k = keep[s.index].reshape(shape)
            kept_elems[s.qualname] = kept_elems[s.qualname] & k if s.qualname in kept_elems \
                else k
        total = None
        for q, k in kept_elems.items():
            p = self.norms.params[q]
            term = (p * p * (~k)).sum()
            total = term if total is None else total + term
        return total if total is not None else torch.zeros(())

    def __call__(self) -> torch.Tensor:
        out = self.penalty()
        self.step += 1
        return out
