#!/usr/bin/env python3
"""PyTorch CPU baseline for the `gen bench` harness.

This is our own baseline, written from scratch for this project (it is not the
official VQGAN-LC / taming-transformers code): it times the same workloads that
`gen bench` times in Candle, so the two can be compared on the same machine.

Measured items (float32, CPU, `torch.manual_seed(0)`):
  * conv3x3_{fwd,fwdbwd}, groupnorm_{fwd,fwdbwd}, groupnorm_silu_{fwd,fwdbwd}:
    single ops on x [8,128,64,64]; "fwdbwd" adds the backward of `sum(y * g)` with a fixed g (Candle needs a scalar root; both sides do the same).
  * tok_encoder_b{1,4}: quant_conv(encoder(x)), x [B,3,256,256], no_grad, eval.
  * tok_roundtrip_b{1,4}: encode + quantize + decode, no_grad, eval, with the
    projected codebook P = projector(codebook) computed once before timing.
  * tok_train_step_b4: x [4,3,128,128], train mode, P recomputed in the step,
    loss = L1(x, decode(z_q)) + 0.1 * qloss, backward (no optimizer step).
  * nearest_codes_100k: 64,000 8-d latents against 100,000 codes (the demo
    tokenizer's search over 1,000 images), 4,096 rows per distance block.
The tokenizer is the VQGAN-LC f16 configuration (ch 128, ch_mult 1,1,2,2,4, two
res blocks, attention at resolution 16, z 256, 8-d codes, 100,000 x 768
codebook) with random default-init weights.

Each item: one warm-up run, then N timed runs (time.perf_counter). stdout gets
exactly one JSON line per item, {"name": ..., "ms": [...]}; logs go to stderr.

Usage: python3 bench/torch_bench.py [--threads 2] [--only A,B] [--reps N] [--list]
"""
import argparse
import functools
import json
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------- tokenizer
def norm(c):
    return nn.GroupNorm(32, c, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1, self.conv1 = norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = norm(c)
        self.q, self.k, self.v = (nn.Conv2d(c, c, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x):
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        b, c, hh, ww = q.shape
        q = q.reshape(b, c, hh * ww).permute(0, 2, 1)        # [b, hw, c]
        k = k.reshape(b, c, hh * ww)                         # [b, c, hw]
        w = torch.softmax(torch.bmm(q, k) * c ** -0.5, dim=2)  # [b, hw(q), hw(k)]
        v = v.reshape(b, c, hh * ww)
        h = torch.bmm(v, w.permute(0, 2, 1)).reshape(b, c, hh, ww)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def level_blocks(cin, cout, n, with_attn):
    """n ResnetBlocks cin->cout->...->cout, each optionally followed by an AttnBlock."""
    mods = []
    for j in range(n):
        mods.append(ResnetBlock(cin if j == 0 else cout, cout))
        if with_attn:
            mods.append(AttnBlock(cout))
    return mods


class Encoder(nn.Module):
    def __init__(self, ch=128, ch_mult=(1, 1, 2, 2, 4), nres=2, attn_res=16, res=256, z=256):
        super().__init__()
        in_mult = (1,) + tuple(ch_mult)
        mods = [nn.Conv2d(3, ch, 3, padding=1)]
        for i, m in enumerate(ch_mult):
            mods += level_blocks(ch * in_mult[i], ch * m, nres, (res >> i) == attn_res)
            if i != len(ch_mult) - 1:
                mods.append(Downsample(ch * m))
        c = ch * ch_mult[-1]
        mods += [ResnetBlock(c, c), AttnBlock(c), ResnetBlock(c, c), norm(c), nn.SiLU(),
                 nn.Conv2d(c, z, 3, padding=1)]
        self.layers = nn.Sequential(*mods)

    def forward(self, x):
        return self.layers(x)


class Decoder(nn.Module):
    def __init__(self, ch=128, ch_mult=(1, 1, 2, 2, 4), nres=2, attn_res=16, res=256, z=256):
        super().__init__()
        c = ch * ch_mult[-1]
        mods = [nn.Conv2d(z, c, 3, padding=1), ResnetBlock(c, c), AttnBlock(c), ResnetBlock(c, c)]
        for i in reversed(range(len(ch_mult))):
            mods += level_blocks(c, ch * ch_mult[i], nres + 1, (res >> i) == attn_res)
            c = ch * ch_mult[i]
            if i != 0:
                mods.append(Upsample(c))
        mods += [norm(c), nn.SiLU(), nn.Conv2d(c, 3, 3, padding=1)]  # no tanh
        self.layers = nn.Sequential(*mods)

    def forward(self, x):
        return self.layers(x)


class VQGANLC(nn.Module):
    def __init__(self, n_codes=100_000, code_dim=768, embed_dim=8, z=256):
        super().__init__()
        self.encoder, self.decoder = Encoder(z=z), Decoder(z=z)
        self.quant_conv = nn.Conv2d(z, embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z, 1)
        self.register_buffer("codebook", torch.randn(n_codes, code_dim))  # frozen
        self.projector = nn.Linear(code_dim, embed_dim)

    def encode(self, x):
        return self.quant_conv(self.encoder(x))

    def decode(self, zq):
        return self.decoder(self.post_quant_conv(zq))

    def quantize(self, z, P):
        b, c, h, w = z.shape
        zf = z.permute(0, 2, 3, 1).reshape(-1, c)
        d = zf.pow(2).sum(1, keepdim=True) + P.pow(2).sum(1) - 2.0 * zf @ P.t()
        idx = torch.argmin(d, dim=1)
        zq = P[idx]
        loss = torch.mean((zq.detach() - zf) ** 2) + 0.33 * torch.mean((zq - zf.detach()) ** 2)
        zq = zf + (zq - zf).detach()
        return zq.reshape(b, h, w, c).permute(0, 3, 1, 2), loss, idx


@functools.lru_cache(maxsize=None)
def tokenizer():
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = VQGANLC()
    n = sum(p.numel() for p in model.parameters())
    log(f"built VQGAN-LC tokenizer: {n / 1e6:.1f}M params in {time.perf_counter() - t0:.1f}s")
    return model


# --------------------------------------------------------------------- items
ITEMS = {}  # name -> (setup, default_reps); setup() returns (run, reset-or-None)


def op_item(name, fn, make_params, backward):
    """Op on x [8,128,64,64]: fn(x, params) -> y; backward gives grads for x and params."""
    def setup():
        torch.manual_seed(0)
        x = torch.randn(8, 128, 64, 64)
        params = make_params()
        leaves = [x] + params
        if not backward:
            def run():
                with torch.no_grad():
                    fn(x, params)
            return run, None
        for t in leaves:
            t.requires_grad_(True)
        with torch.no_grad():
            g = torch.randn_like(fn(x, params))

        def run():
            (fn(x, params) * g).sum().backward()  # same loss as the Candle side

        def reset():
            for t in leaves:
                t.grad = None
        return run, reset
    ITEMS[name] = (setup, 5)


def conv_params():  # w [128,128,3,3], b [128]
    return [torch.randn(128, 128, 3, 3) * 0.03, torch.randn(128)]


def gn_params():  # weight, bias [128]
    return [1.0 + 0.1 * torch.randn(128), 0.1 * torch.randn(128)]


def conv(x, p):
    return F.conv2d(x, p[0], p[1], stride=1, padding=1)


def gn(x, p):
    return F.group_norm(x, 32, p[0], p[1], eps=1e-6)


for _name, _fn, _params in [("conv3x3", conv, conv_params), ("groupnorm", gn, gn_params),
                            ("groupnorm_silu", lambda x, p: F.silu(gn(x, p)), gn_params)]:
    op_item(f"{_name}_fwd", _fn, _params, backward=False)
    op_item(f"{_name}_fwdbwd", _fn, _params, backward=True)


def tokenizer_item(name, b, roundtrip):
    """Inference: quant_conv(encoder(x)), or encode + quantize + decode; x [b,3,256,256]."""
    def setup():
        model = tokenizer().eval()
        x = torch.randn(b, 3, 256, 256, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            P = model.projector(model.codebook)  # computed once, as inference caches it

        def run():
            with torch.no_grad():
                z = model.encode(x)
                if roundtrip:
                    model.decode(model.quantize(z, P)[0])
        return run, None
    ITEMS[name] = (setup, 3)


for _b in (1, 4):
    tokenizer_item(f"tok_encoder_b{_b}", _b, roundtrip=False)
for _b in (1, 4):
    tokenizer_item(f"tok_roundtrip_b{_b}", _b, roundtrip=True)


def train_step_setup():
    """x [4,3,128,128], train mode; P recomputed (projector is trained); no optimizer step."""
    model = tokenizer().train()
    x = torch.randn(4, 3, 128, 128, generator=torch.Generator().manual_seed(2))

    def run():
        P = model.projector(model.codebook)
        zq, qloss, _ = model.quantize(model.encode(x), P)
        loss = torch.mean(torch.abs(x - model.decode(zq))) + 0.1 * qloss
        loss.backward()

    def reset():
        model.zero_grad(set_to_none=True)
    return run, reset


ITEMS["tok_train_step_b4"] = (train_step_setup, 3)


def nearest_codes_setup():
    """64,000 8-d latents against 100,000 codes: argmin of ||c||^2 - 2 z c^T (||z||^2 leaves the
    argmin alone), 4,096 rows at a time (the official one-shot [M, N] matrix would need 25.6 GB)."""
    z, c = torch.randn(64_000, 8), torch.randn(100_000, 8)

    def run():
        with torch.no_grad():
            cn = (c * c).sum(1)
            return torch.cat([torch.argmin(cn[None] - 2 * zb @ c.T, 1) for zb in z.split(4096)])
    return run, None


ITEMS["nearest_codes_100k"] = (nearest_codes_setup, 3)


# --- row ops on [4096, 256] (16 heads x 256 tokens of attention scores) -----------------------------
def rows_item(name, fn):
    def setup():
        x, w, b = torch.randn(4096, 256), 1 + 0.1 * torch.randn(256), 0.1 * torch.randn(256)
        return (lambda: fn(x, w, b)), None

    ITEMS[name] = (setup, 5)


rows_item("softmax_fwd", lambda x, w, b: F.softmax(x, dim=-1))
rows_item("layernorm_fwd", lambda x, w, b: F.layer_norm(x, (256,), w, b, eps=1e-5))


# --- GEMM shapes of a [8,128,64,64] conv (torch.mm on dense row-major matrices) ---------------------
def sgemm_item(name, m, n, k):
    def setup():
        a, b = torch.randn(m, k), torch.randn(k, n)
        return (lambda: torch.mm(a, b)), None

    ITEMS[name] = (setup, 5)


sgemm_item("sgemm_conv_tap", 128, 4222, 128)  # one kernel tap of the stride-1 conv
sgemm_item("sgemm_conv_wgrad", 128, 128, 4222)  # one tap of its weight gradient
sgemm_item("sgemm_im2col", 128, 1024, 1152)  # a stride-2 im2col tile
sgemm_item("sgemm_dit_mlp", 512, 4608, 1152)  # DiT-XL/2's fc1 at batch 8 x 64 tokens


def linear_item(name):
    """DiT-XL/2's fc1 as a layer: y = x W^T + b, x [512, 1152], W [4608, 1152]; backward of sum(y * g)."""
    def setup():
        torch.manual_seed(0)
        x = torch.randn(512, 1152, requires_grad=True)
        w = (torch.randn(4608, 1152) * 0.03).requires_grad_(True)
        b = (torch.randn(4608) * 0.1).requires_grad_(True)
        g = torch.randn(512, 4608)

        def run():
            (F.linear(x, w, b) * g).sum().backward()

        def reset():
            for t in (x, w, b):
                t.grad = None
        return run, reset
    ITEMS[name] = (setup, 5)


linear_item("linear_dit_mlp_fwdbwd")


# ---------------------------------------------------------------------- main
def bench(name, reps):
    setup, default_reps = ITEMS[name]
    reps = default_reps if reps is None else reps
    run, reset = setup()
    run()  # warm-up
    times = []
    for _ in range(reps):
        if reset is not None:
            reset()
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1e3)
    if reset is not None:
        reset()
    print(json.dumps({"name": name, "ms": [round(t, 3) for t in times]}), flush=True)
    log(f"{name}: min {min(times):.1f} ms, median {sorted(times)[len(times) // 2]:.1f} ms")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default=None, help="comma-separated item names")
    ap.add_argument("--reps", type=int, default=None,
                    help="timed runs per item (default 5; tokenizer items 3)")
    ap.add_argument("--list", action="store_true", help="print item names and exit")
    args = ap.parse_args(argv)

    if args.list:
        print("\n".join(ITEMS))
        return 0
    names = list(ITEMS)
    if args.only is not None:
        names = list(dict.fromkeys(n.strip() for n in args.only.split(",") if n.strip()))
        unknown = [n for n in names if n not in ITEMS]
        if unknown or not names:
            print(f"torch_bench: unknown item(s): {', '.join(unknown) or '(none given)'}"
                  " (see --list)", file=sys.stderr)
            return 2
    if args.reps is not None and args.reps < 1:
        print("torch_bench: --reps must be >= 1", file=sys.stderr)
        return 2

    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(0)
    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in names:
        bench(name, args.reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
