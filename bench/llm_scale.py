"""A >= 1 B-parameter Llama (random init, bfloat16: hidden 2048, 22 layers, 32 query / 8 KV
heads, intermediate 5632: TinyLlama-1.1B's shape, 1.1 B parameters) pruned at 0.3 on this
2-core machine: wall time and peak RSS of fxprune and of Torch-Pruning's LLM recipe, each in
its own process.

    python bench/llm_scale.py [--layers 22] [--verify] [--out bench/results/llm_scale.md]

Each tool runs in a fresh child process (the peak RSS is that process's ``ru_maxrss``, model
construction included, so the baseline row gives what building the model alone costs).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).parent


def build(layers: int):
    import torch
    import transformers

    cfg = transformers.LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                                   num_hidden_layers=layers, num_attention_heads=32,
                                   num_key_value_heads=8, max_position_embeddings=2048,
                                   torch_dtype="bfloat16")
    torch.manual_seed(0)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():  # cheap random init: normal(0, 0.02) in place, norms at one
        for p in model.parameters():
            if p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0, 0.02)
    model.model.rotary_emb.__init__(cfg)  # its buffer was left empty by to_empty
    return model.eval()


def child(tool: str, layers: int, verify: bool) -> dict:
    import torch

    t0 = time.perf_counter()
    model = build(layers)
    built = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, 32000, (1, 64))
    out: dict = {"tool": tool, "params": params, "build_s": built}
    t0 = time.perf_counter()
    try:
        if tool == "fxprune":
            import fxprune

            pruned = fxprune.compress(model, (), example_kwargs={"input_ids": ids}, ratio=0.3,
                                      verify=verify, hf_config="uniform")
            rep = fxprune.result_of(pruned).report
            out["verify"] = str(rep.verify) if rep.verify is not None else "off"
            out["timings"] = {k: round(v, 2) for k, v in rep.timings.items()}
        elif tool == "torch-pruning":
            sys.path.insert(0, str(HERE))
            from tp_llm import tp_prune_llama

            pruned, info = tp_prune_llama(model, ids, 0.3, timeout_s=60)
            out["error"] = info.get("error")
            if info.get("attempt") not in (None, "recipe"):  # its own call hung: say so
                out["error"] = (f"recipe call hung for 60 s (TP issue #527), then attempt "
                                f"{info['attempt']!r} took {info.get('seconds', 0):.1f} s")
        else:
            pruned = model
        out["params_after"] = sum(p.numel() for p in pruned.parameters())
        out["pruned_gb"] = sum(t.numel() * t.element_size() for t in {
            id(t): t for t in list(pruned.parameters()) + list(pruned.buffers())}.values()
        ) / 2**30 if pruned is not model else 0.0
        with torch.no_grad():
            out["runs"] = bool(torch.isfinite(pruned(input_ids=ids, use_cache=False)
                                              .logits.float()).all())
    except Exception as exc:  # noqa: BLE001 - the row says what failed
        out["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    out["model_gb"] = params * 2 / 2**30
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=22)  # 1.1 B parameters
    ap.add_argument("--verify", action="store_true")
    ap.add_argument("--child", default=None)
    ap.add_argument("--out", default="bench/results/llm_scale.md")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.layers, args.verify)))
        return
    rows = []
    for tool in ("build only", "fxprune", "torch-pruning"):
        cmd = [sys.executable, __file__, "--child", tool, "--layers", str(args.layers)]
        if args.verify:
            cmd.append("--verify")
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            rows.append({"tool": tool, "error": f"exit {res.returncode}: "
                         f"{res.stderr.strip().splitlines()[-1:] }"})
        print(rows[-1], flush=True)
    lines = ["| tool | params | params after | seconds | peak RSS GB | RSS / bf16 model | "
             "above both models GB | runs | note |", "|---|---|---|---|---|---|---|---|---|"]
    base = rows[0].get("peak_rss_gb", float("nan"))  # the caller's model, built and run
    for r in rows:
        gb, model_gb = r.get("peak_rss_gb", float("nan")), r.get("model_gb", float("nan"))
        note = (r.get("error") or r.get("verify") or "").replace("|", "\\|")
        if r.get("timings"):
            note += f" {r['timings']}"
        extra = gb - base - r.get("pruned_gb", 0.0)  # beyond the caller's and the pruned model
        lines.append(f"| {r['tool']} | {r.get('params', 0):,} | {r.get('params_after', 0):,} "
                     f"| {r.get('seconds', float('nan')):.1f} | {gb:.2f} | "
                     f"{gb / model_gb:.2f} | {extra:.2f} | {r.get('runs', '')} | {note} |")
    lines.append(f"\n{args.layers} layers, bfloat16, ratio 0.3, 64 tokens, verify "
                 f"{'on' if args.verify else 'off'}; one process per row. 'above both models': "
                 "peak RSS minus the build-only row (the caller's model, built and run) minus "
                 "the pruned model's own tensors.")
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
