"""Per-layer before/after numbers of a pruned model, as a table, JSON and a bar chart."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.ConvTranspose2d)


@dataclass
class LayerRow:
    name: str
    kind: str
    out_before: int
    out_after: int
    in_before: int
    in_after: int
    params_before: int
    params_after: int

    @property
    def kept(self) -> float:
        return self.out_after / max(self.out_before, 1)


def _channels(m: nn.Module) -> tuple[int, int]:
    if isinstance(m, nn.Linear):
        return m.out_features, m.in_features
    return m.out_channels, m.in_channels


def layer_rows(original: nn.Module, pruned: nn.Module) -> list[LayerRow]:
    """One row per conv / linear layer of ``original`` (in module order), matched by name."""
    after = dict(pruned.named_modules())
    rows = []
    for name, m in original.named_modules():
        if not isinstance(m, _LAYERS):
            continue
        p = after.get(name, m)
        (ob, ib), (oa, ia) = _channels(m), _channels(p)
        rows.append(LayerRow(name, type(m).__name__, ob, oa, ib, ia,
                             sum(t.numel() for t in m.parameters(recurse=False)),
                             sum(t.numel() for t in p.parameters(recurse=False))))
    return rows


def markdown(rows: list[LayerRow]) -> str:
    lines = ["| layer | type | out channels | in channels | params | kept |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.name} | {r.kind} | {r.out_before} -> {r.out_after} | "
                     f"{r.in_before} -> {r.in_after} | {r.params_before:,} -> "
                     f"{r.params_after:,} | {r.kept:.0%} |")
    return "\n".join(lines)


def as_json(rows: list[LayerRow]) -> list[dict]:
    return [asdict(r) for r in rows]


def plot(rows: list[LayerRow], path: str | Path, title: str = "kept output channels") -> Path:
    """A bar per layer: channels kept (solid) over channels before (outline). Needs
    matplotlib (the ``plots`` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("the kept-channel chart needs matplotlib: pip install "
                          "'fxprune[plots]'") from exc
    n = len(rows)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.18 * n + 2), 4.0))
    xs = torch.arange(n).numpy()
    ax.bar(xs, [r.out_before for r in rows], color="none", edgecolor="0.6", label="before")
    ax.bar(xs, [r.out_after for r in rows], color="tab:blue", label="after")
    ax.set_xticks(xs)
    ax.set_xticklabels([r.name for r in rows], rotation=90, fontsize=6)
    ax.set_ylabel("output channels")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
