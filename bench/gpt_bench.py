#!/usr/bin/env python3
"""Baseline for the `gen bench` GPT items (family `gpt`), timed the same way as torch_bench.py.

The official GPT-LC size (24 layers, 16 heads, width 1024, vocabulary 101,000 = 100,000 codes + 1,000
classes, 257 positions, untied head) as Hugging Face `transformers` GPT-2 with random weights: the
same pre-LN blocks and parameter count up to GPT-2's fused qkv (`c_attn`) and exact-erf GELU
(`activation_function="gelu"`). One image = 256 tokens after a class token (207), plain multinomial
sampling at temperature 1 over the first 100,000 logits, as the official evaluation samples.

  * gpt_kv_{f32,f16,bf16}_b{1,16}: with the KV cache (`past_key_values`), weights in that dtype.
  * gpt_recompute_f32_b1: the official sampler's cost model, the whole prefix every step (no cache).
  * gpt_recompute_f32_b16_1in32: the same at batch 16, 8 of the 256 steps (prefix lengths 16, 48, …,
    240); × 32 estimates the whole batch (see crates/cli/src/commands/bench/gpt.rs).

Needs `pip install torch transformers`. stdout: one JSON line per item, {"name": ..., "ms": [...]};
logs on stderr. Usage: python3 bench/gpt_bench.py [--threads 2] [--only A,B] [--reps N] [--list]
"""
import _common
from _common import log

CODES, CLASSES, STEPS = 100_000, 1000, 256
_MODELS = {}


def model(dtype):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    if dtype not in _MODELS:
        _MODELS.clear()  # one 2 GB copy at a time
        cfg = GPT2Config(vocab_size=CODES + CLASSES, n_positions=257, n_embd=1024, n_layer=24, n_head=16,
                         activation_function="gelu", tie_word_embeddings=False,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        torch.manual_seed(0)
        m = GPT2LMHeadModel(cfg).eval().to(dtype)
        log(f"gpt_bench: {sum(p.numel() for p in m.parameters()):,} parameters in {dtype}")
        _MODELS[dtype] = m
    return _MODELS[dtype]


def kv_setup(dtype_name, b):
    import torch

    dtype = getattr(torch, {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}[dtype_name])
    m = model(dtype)

    def run():
        g = torch.Generator().manual_seed(0)
        x = torch.full((b, 1), CODES + 207, dtype=torch.long)
        past = None
        with torch.no_grad():
            for _ in range(STEPS):
                out = m(input_ids=x, past_key_values=past, use_cache=True)
                past = out.past_key_values
                probs = torch.softmax(out.logits[:, -1, :CODES].float(), dim=-1)
                x = torch.multinomial(probs, 1, generator=g)

    return run


def recompute_setup(b):
    import torch

    m = model(torch.float32)

    def run():
        g = torch.Generator().manual_seed(0)
        seq = torch.full((b, 1), CODES + 207, dtype=torch.long)
        with torch.no_grad():
            for _ in range(STEPS):
                logits = m(input_ids=seq, use_cache=False).logits[:, -1, :CODES]
                seq = torch.cat([seq, torch.multinomial(torch.softmax(logits, -1), 1, generator=g)], 1)

    return run


def recompute_sampled_setup(b):
    import torch

    m = model(torch.float32)

    def run():
        with torch.no_grad():
            for n in (32 * i + 16 for i in range(STEPS // 32)):
                ids = torch.arange(b * n) * 7919 % CODES
                ids[::n] = CODES + 207
                m(input_ids=ids.view(b, n), use_cache=False).logits[:, -1, :CODES].contiguous()

    return run


ITEMS = {
    "gpt_kv_f32_b1": lambda: kv_setup("f32", 1),
    "gpt_kv_f32_b16": lambda: kv_setup("f32", 16),
    "gpt_kv_f16_b1": lambda: kv_setup("f16", 1),
    "gpt_kv_bf16_b1": lambda: kv_setup("bf16", 1),
    "gpt_recompute_f32_b1": lambda: recompute_setup(1),
    "gpt_recompute_f32_b16_1in32": lambda: recompute_sampled_setup(16),
}


if __name__ == "__main__":
    _common.main(ITEMS, reps=2)
