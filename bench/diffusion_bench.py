#!/usr/bin/env python3
"""Baseline for the `gen bench` diffusion items (family `diffusion`), timed the same way as gpt_bench.py.

diffusers' models in the official VQGAN-LC configurations, random weights, float32, batch 8:
  * dit_xl2_*: `DiTTransformer2DModel` as DiT-XL/2 on the DiT-LC latent (8 channels, 16x16, patch 2,
    28 layers, 16 heads x 72, 1,000 classes, learned sigma: 16 output channels).
  * ldm_f16_*: `UNet2DConditionModel` closest to the LDM-LC f16 UNet (8 -> 8 channels, 16x16, blocks
    (256, 1024) with 3 ResNets each, cross-attention transformers on the first level and in the middle,
    heads of 32 channels, context 512 from one class token).
  * *_train_b8: forward and backward of the eps MSE (no optimizer); *_sample_b8: one no-grad network
    call on the guided batch of 16 ([cond; uncond]).

Needs `pip install torch diffusers`. stdout: one JSON line per item, {"name": ..., "ms": [...]};
logs on stderr. Usage: python3 bench/diffusion_bench.py [--threads 2] [--only A,B] [--reps N] [--list]
"""
import _common
from _common import log

B = 8
_MODELS = {}


def dit():
    import torch
    from diffusers import DiTTransformer2DModel

    if "dit" not in _MODELS:
        _MODELS.clear()
        torch.manual_seed(0)
        m = DiTTransformer2DModel(num_attention_heads=16, attention_head_dim=72, in_channels=8, out_channels=16,
                                  num_layers=28, sample_size=16, patch_size=2, num_embeds_ada_norm=1000)
        log(f"diffusion_bench: DiT-XL/2 {sum(p.numel() for p in m.parameters()):,} parameters")
        _MODELS["dit"] = m
    return _MODELS["dit"]


def unet():
    import torch
    from diffusers import UNet2DConditionModel

    if "unet" not in _MODELS:
        _MODELS.clear()
        torch.manual_seed(0)
        m = UNet2DConditionModel(sample_size=16, in_channels=8, out_channels=8, block_out_channels=(256, 1024),
                                 layers_per_block=3, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=512,
                                 attention_head_dim=(8, 32), norm_num_groups=32)
        log(f"diffusion_bench: UNet {sum(p.numel() for p in m.parameters()):,} parameters")
        _MODELS["unet"] = m
    return _MODELS["unet"]


def inputs(n):
    import torch

    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 8, 16, 16, generator=g)
    noise = torch.randn(n, 8, 16, 16, generator=g)
    t = torch.tensor([(i * 997) % 1000 for i in range(n)])
    y = torch.tensor([(i * 131) % 1000 for i in range(n)])
    return x, noise, t, y


def call(kind, m, x, t, y):
    import torch

    if kind == "dit":
        return m(x, timestep=t, class_labels=y).sample
    ctx = torch.randn(x.shape[0], 1, 512, generator=torch.Generator().manual_seed(2))
    return m(x, t, encoder_hidden_states=ctx).sample


def setup(kind, train):
    import torch

    m = dit() if kind == "dit" else unet()
    if train:
        m.train()
        x, noise, t, y = inputs(B)

        def run():
            m.zero_grad(set_to_none=True)
            out = call(kind, m, x, t, y)[:, :8]
            torch.nn.functional.mse_loss(out, noise).backward()
    else:
        m.eval()
        x, _, t, y = inputs(2 * B)

        def run():
            with torch.no_grad():
                call(kind, m, x, t, y)

    return run


ITEMS = {
    "dit_xl2_train_b8": lambda: setup("dit", True),
    "dit_xl2_sample_b8": lambda: setup("dit", False),
    "ldm_f16_train_b8": lambda: setup("unet", True),
    "ldm_f16_sample_b8": lambda: setup("unet", False),
}


if __name__ == "__main__":
    _common.main(ITEMS, reps=2)
