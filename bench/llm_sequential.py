"""Sequential reconstruction on the tiny Llama's decoder layers, next to FLAP's bias
compensation: held-out perplexity at ~20 % and 50 % of MLP + attention removed, no
fine-tune, every row through ``hf_config="uniform"`` (no bias is created where the config
has none). Same model, data and calibration as ``bench/llm_ppl.py``.

    python bench/llm_sequential.py [--calib 32] [--out bench/results/llm_sequential.md]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import llm_data  # noqa: E402
from llm_ppl import TARGETS, block_params, run_fxprune  # noqa: E402

ROWS = [("l2", "none"), ("l2", "sequential"), ("wanda_sp", "mean"), ("wanda_sp", "sequential"),
        ("flap", "mean"), ("flap", "sequential")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calib", type=int, default=32, help="calibration windows of 128 tokens")
    ap.add_argument("--out", default="bench/results/llm_sequential.md")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    model = llm_data.trained_model()
    train = llm_data.windows(llm_data.tokens("train"))
    held = llm_data.windows(llm_data.tokens("heldout"))
    g = torch.Generator().manual_seed(1)  # the calibration windows of llm_ppl.py
    pick = train[torch.randperm(train.shape[0], generator=g)[:args.calib]]
    calib = [{"input_ids": pick[i:i + 8], "attention_mask": torch.ones_like(pick[i:i + 8])}
             for i in range(0, args.calib, 8)]
    dense, blocks = llm_data.perplexity(model, held), block_params(model)
    lines = ["| importance | compensation | target | MLP+attn removed | held-out ppl | "
             "increase over dense | prune s |", "|---|---|---|---|---|---|---|"]
    for target in TARGETS:
        for method, comp in ROWS:
            pruned, secs, _ = run_fxprune(model, method, target, comp, calib)
            ppl = llm_data.perplexity(pruned, held)
            lines.append(f"| {method} | {comp} | {target:.0%} | "
                         f"{1 - block_params(pruned) / blocks:.1%} | {ppl:.3f} | "
                         f"+{ppl - dense:.3f} | {secs:.1f} |")
            print(lines[-1], flush=True)
    lines.append(f"\nDense held-out ppl {dense:.3f}; calibration {args.calib} windows of 128 "
                 "tokens; no fine-tune.")
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
