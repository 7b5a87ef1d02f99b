"""Real English text that ships with Python: the ``pydoc_data`` help topics (~0.47 MB),
byte-level tokens (vocab 256, nothing to download or train), a fixed split by topic: every
tenth topic (sorted by name) is held out. And a tiny Llama-style model trained on it."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
log = logging.getLogger(__name__)
CACHE = Path(__file__).parent / ".cache" / "tiny_llama"
SEQ = 128


def tokens(split: str) -> torch.Tensor:
    """The byte tokens of the train or held-out topics, as one long int64 stream."""
    import pydoc_data.topics as topics

    names = sorted(topics.topics)
    chosen = [n for i, n in enumerate(names) if (i % 10 == 9) == (split == "heldout")]
    text = "\n\n".join(topics.topics[n] for n in chosen)
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)


def windows(stream: torch.Tensor, seq: int = SEQ) -> torch.Tensor:
    """Non-overlapping (n, seq) windows (the tail that does not fill one is dropped)."""
    n = stream.numel() // seq
    return stream[: n * seq].reshape(n, seq)


def config():
    import transformers

    return transformers.LlamaConfig(
        vocab_size=256, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=SEQ,
        tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)


def train(model, data: torch.Tensor, seconds: float, *, lr: float = 3e-3, batch: int = 16,
          seed: int = 0, max_steps: int | None = None) -> dict:
    """AdamW with cosine decay over a wall-clock budget (``max_steps`` caps it); returns
    steps and the last loss. Trains in place."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    model.train()
    t0, step, loss = time.perf_counter(), 0, float("nan")
    est = max_steps or 10**9
    while (max_steps is None or step < max_steps) and time.perf_counter() - t0 < seconds:
        frac = min(1.0, (time.perf_counter() - t0) / seconds) if max_steps is None else \
            step / est
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + torch.cos(torch.tensor(frac * 3.14159)).item())
        idx = torch.randint(0, data.shape[0], (batch,), generator=g)
        ids = data[idx]
        out = model(input_ids=ids, labels=ids, use_cache=False)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step, loss = step + 1, float(out.loss)
    model.eval()
    return {"steps": step, "loss": loss, "seconds": time.perf_counter() - t0}


@torch.no_grad()
def perplexity(model, data: torch.Tensor, batch: int = 32) -> float:
    """exp(mean next-token loss) over every window of ``data``."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, data.shape[0], batch):
        ids = data[i:i + batch]
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                 ids[:, 1:].reshape(-1), reduction="sum")
        total, count = total + float(loss), count + ids[:, 1:].numel()
    return float(torch.exp(torch.tensor(total / count)))


def trained_model(seconds: float = 540.0):
    """The cached tiny Llama, trained on the train split the first time (<= 10 minutes)."""
    import transformers

    if (CACHE / "config.json").exists():
        return transformers.LlamaForCausalLM.from_pretrained(CACHE).eval()
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config())
    info = train(model, windows(tokens("train")), seconds)
    log.info("trained tiny llama: %s", info)
    model.save_pretrained(CACHE)
    (CACHE / "train.txt").write_text(f"{info}\n")
    return model.eval()
