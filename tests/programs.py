"""Random programs for the fuzzer (tests/test_fuzz.py, bench/fuzz.py).

A program is a list of op specs over a list of live (N, C, 8, 8) tensors; ``Program`` builds
the layers at construction and unrolls the list in ``forward``, so torch.fx traces it. Ops
cover, in combination: conv, depthwise, grouped and transposed convs; BN, GroupNorm and
LayerNorm (over channels; its approximate groups left alone with ``exact_only``);
residual add and mul; SE gates; chunk, uneven split, cat (nested, and of passthrough halves
with computed ones); channel shuffles written with ``F.channel_shuffle`` and by hand with
view/transpose/reshape from ``x.size()`` or literals; slicing; reshape-based group sums;
attention over the pixels with a literal head count; functional convs on parameters; and
weights computed from parameters (standardisation, scaling). ``run_case(seed)`` prunes one
program and classifies the outcome, checking exactness with ``verify`` on a fresh input and
with the independent value oracle (tests/oracle.py).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from oracle import check_by_values, distinct_values

import fxprune

N, H, W, C_IN, CLASSES = 2, 8, 8, 3, 5
WIDTHS = (4, 6, 8, 12, 16)
MAX_C = 32


def _out_channels(op: tuple, chans: list[int]) -> list[int]:
    kind, c = op[0], chans[op[1]]
    if kind in ("conv", "tconv", "fconv", "wstd", "wscale"):
        return [op[2]]
    if kind == "gconv":
        return [op[3]]
    if kind == "dw":
        return [c * op[2]]
    if kind == "cat":
        return [c + chans[op[2]]]
    if kind == "split":
        return [op[2], c - op[2]]
    if kind == "chunk":
        return [c // 2, c // 2]
    if kind == "slice":
        return [op[3] - op[2]]
    if kind == "gsum":
        return [c // op[2]]
    return [c]  # bnrelu, gn, add, mul, se, shuffles, attn, pool


class Program(nn.Module):
    def __init__(self, program: list[tuple], seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.program = [tuple(op) for op in program]
        self.layers = nn.ModuleList()
        chans = [C_IN]
        for op in self.program:
            self.layers.append(self._layer(op, chans[op[1]]))
            chans.extend(_out_channels(op, chans))
        self.chans = chans
        self.fc = nn.Linear(chans[-1] * H * W, CLASSES)  # flatten -> linear, literal width

    @staticmethod
    def _layer(op: tuple, c: int) -> nn.Module:
        kind = op[0]
        if kind == "conv":
            return nn.Conv2d(c, op[2], 3, padding=1)
        if kind == "tconv":
            return nn.ConvTranspose2d(c, op[2], 3, padding=1)
        if kind == "gconv":
            return nn.Conv2d(c, op[3], 3, padding=1, groups=op[2])
        if kind == "dw":
            return nn.Conv2d(c, c * op[2], 3, padding=1, groups=c)
        if kind == "bnrelu":
            return nn.Sequential(nn.BatchNorm2d(c), nn.ReLU())
        if kind == "gn":
            return nn.GroupNorm(op[2], c)
        if kind == "ln":
            return nn.LayerNorm(c)
        if kind == "se":
            return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, max(1, c // 2), 1),
                                 nn.ReLU(), nn.Conv2d(max(1, c // 2), c, 1))
        if kind == "attn":
            return nn.ModuleDict({"qkv": nn.Linear(c, 3 * c), "proj": nn.Linear(c, c)})
        if kind in ("fconv", "wstd", "wscale"):
            m = nn.Module()
            m.weight = nn.Parameter(torch.randn(op[2], c, 3, 3) * 0.2)
            m.bias = nn.Parameter(torch.randn(op[2]) * 0.1)
            m.scale = nn.Parameter(torch.rand(op[2]) + 0.5)
            return m
        return nn.Identity()  # ops without parameters keep layers[i] <-> program[i]

    def forward(self, x):
        live = [x]
        for op, layer in zip(self.program, self.layers):
            kind, t = op[0], live[op[1]]
            if kind in ("conv", "tconv", "gconv", "dw", "bnrelu"):
                live.append(layer(t))
            elif kind == "gn":
                live.append(F.relu(layer(t)))
            elif kind == "ln":  # over the channels, channels-last as ConvNeXt writes it
                live.append(layer(t.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
            elif kind == "add":
                live.append(t + live[op[2]])
            elif kind == "mul":
                live.append(t * torch.sigmoid(live[op[2]]))
            elif kind == "cat":
                live.append(torch.cat([t, live[op[2]]], 1))
            elif kind == "split":
                a, b = torch.split(t, [op[2], self.chans[op[1]] - op[2]], 1)
                live.extend([a, b])
            elif kind == "chunk":
                a, b = t.chunk(2, 1)
                live.extend([a, b])
            elif kind == "slice":
                live.append(t[:, op[2]:op[3]])
            elif kind == "shuffle_fn":
                live.append(F.channel_shuffle(t, op[2]))
            elif kind == "shuffle_size":
                n, c, h, w = t.size()
                live.append(t.view(n, op[2], c // op[2], h, w).transpose(1, 2).contiguous()
                            .view(n, c, h, w))
            elif kind == "shuffle_lit":
                c = self.chans[op[1]]
                live.append(t.reshape(N, op[2], c // op[2], H, W).transpose(1, 2)
                            .reshape(N, c, H, W))
            elif kind == "gsum":
                n, c, h, w = t.size()
                live.append(t.reshape(n, op[2], c // op[2], h, w).sum(1))
            elif kind == "se":
                live.append(t * torch.sigmoid(layer(t)))
            elif kind == "attn":
                live.append(t + self._attention(layer, t, op[2]))
            elif kind == "fconv":
                live.append(F.conv2d(t, layer.weight, layer.bias, padding=1))
            elif kind == "wstd":
                w = layer.weight
                w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
                live.append(F.conv2d(t, w, layer.bias, padding=1))
            elif kind == "wscale":
                w = layer.weight * layer.scale.view(-1, 1, 1, 1)
                live.append(F.conv2d(t, w, layer.bias, padding=1))
            else:
                raise AssertionError(kind)
        return self.fc(torch.flatten(live[-1], 1))

    @staticmethod
    def _attention(layer: nn.ModuleDict, t: torch.Tensor, heads: int) -> torch.Tensor:
        n, c, h, w = t.shape  # recorded as literals for the heads, as many models write it
        tokens = t.flatten(2).transpose(1, 2)
        qkv = layer["qkv"](tokens).reshape(n, h * w, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        out = layer["proj"](out.transpose(1, 2).reshape(n, h * w, c))
        return out.transpose(1, 2).reshape(n, c, h, w)


def random_program(rng: random.Random) -> list[tuple]:
    """A valid program: channel counts are tracked so every op is shape-consistent."""
    chans = [C_IN]
    program = [("conv", 0, rng.choice(WIDTHS))]  # the input is never pruned
    chans.extend(_out_channels(program[0], chans))
    for _ in range(rng.randint(1, 9)):
        live = len(chans)
        src = live - 1 if rng.random() < 0.6 else rng.randint(1, live - 1)
        c = chans[src]
        same = [j for j in range(1, live) if j != src and chans[j] == c]
        fits = [j for j in range(1, live) if c + chans[j] <= MAX_C]
        divisors = [g for g in (2, 3, 4) if c % g == 0 and c // g >= 1]
        options = ["conv", "tconv", "bnrelu", "ln", "dw", "se", "fconv", "wstd", "wscale"]
        options += ["gconv", "gn", "shuffle_fn", "shuffle_size", "shuffle_lit",
                    "gsum"] if divisors else []
        options += ["add", "mul"] if same else []
        options += ["cat"] if fits else []
        options += ["split", "slice"] if c >= 2 else []
        options += ["chunk"] if c % 2 == 0 else []
        options += ["attn"] if [h for h in (1, 2, 4) if c % h == 0 and c // h >= 2] else []
        kind = rng.choice(options)
        if kind in ("conv", "tconv", "fconv", "wstd", "wscale"):
            op = (kind, src, rng.choice(WIDTHS))
        elif kind == "gconv":
            g = rng.choice(divisors)
            op = (kind, src, g, rng.choice([o for o in WIDTHS if o % g == 0] or [g]))
        elif kind == "dw":
            op = (kind, src, 2 if 2 * c <= MAX_C and rng.random() < 0.3 else 1)
        elif kind in ("gn", "shuffle_fn", "shuffle_size", "shuffle_lit", "gsum"):
            op = (kind, src, rng.choice(divisors))
        elif kind in ("add", "mul"):
            op = (kind, src, rng.choice(same))
        elif kind == "cat":
            op = (kind, src, rng.choice(fits))
        elif kind == "split":
            op = (kind, src, rng.randint(1, c - 1))
        elif kind == "slice":
            a = rng.randint(0, c - 1)
            op = (kind, src, a, rng.randint(a + 1, c))
        elif kind == "attn":
            op = (kind, src, rng.choice([h for h in (1, 2, 4) if c % h == 0 and c // h >= 2]))
        else:
            op = (kind, src)
        program.append(op)
        chans.extend(_out_channels(op, chans))
    return program


@dataclass
class Outcome:
    kind: str  # exact | unchanged | clear error | WRONG | RAW | MUTATED
    detail: str = ""
    fallbacks: int = 0
    program: list = field(default_factory=list)


def run_case(seed: int) -> Outcome:
    """Prune one random program (ratio and importance drawn too) and classify the result."""
    rng = random.Random(seed)
    program = random_program(rng)
    ratio, importance = rng.choice([0.25, 0.5, 0.75]), rng.choice(["l2", "l1", "random"])
    # LayerNorm groups are approximate (their deviation is reported, not exact): kept here
    exact_only = any(op[0] == "ln" for op in program)
    model = distinct_values(Program(program, seed).eval(), seed)
    x = torch.randn(N, C_IN, H, W, generator=torch.Generator().manual_seed(seed))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        gm = fxprune.compress(model, x, ratio=ratio, importance=importance,
                              exact_only=exact_only)
    except fxprune.VerificationError as exc:
        return Outcome("WRONG", str(exc)[:300], program=program)
    except fxprune.FxPruneError as exc:
        return Outcome("clear error", f"{type(exc).__name__}: {str(exc)[:200]}", program=program)
    except Exception as exc:  # noqa: BLE001 - what the fuzzer is here to find
        return Outcome("RAW", f"{type(exc).__name__}: {str(exc)[:300]}", program=program)
    if any(not torch.equal(before[k], v) for k, v in model.state_dict().items()):
        return Outcome("MUTATED", "the caller's model changed", program=program)
    report = gm.meta["fxprune"].report
    fresh = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 1))
    try:
        result = fxprune.verify(gm, fresh)
        if not result.ok:
            return Outcome("WRONG", f"verify on a fresh input: {result}", program=program)
        check_by_values(model, gm, (fresh,))
    except AssertionError as exc:
        return Outcome("WRONG", f"independent oracle: {exc}", program=program)
    kind = "exact" if report.params_after < report.params_before else "unchanged"
    return Outcome(kind, "; ".join(report.fallbacks)[:300], len(report.fallbacks), program)


def tally(outcomes: list[Outcome]) -> Counter:
    counts = Counter(o.kind for o in outcomes)
    counts["fallbacks"] = sum(o.fallbacks for o in outcomes)
    counts["programs with a fallback"] = sum(1 for o in outcomes if o.fallbacks)
    for o in outcomes:
        if o.kind == "clear error":
            counts[f"clear error: {o.detail.split(':')[0]}"] += 1
    return counts
