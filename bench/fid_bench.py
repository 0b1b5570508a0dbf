#!/usr/bin/env python3
"""Baseline for the `gen bench` evaluator items (family `fid`), timed the same way as torch_bench.py.

  * fid_inception_b8: pytorch-fid 0.3.0's InceptionV3([3]) (the FID variant, random weights: the real
    ones are a download), pool3 of x [8,3,299,299] already resized (resize_input=False,
    normalize_input=False), no_grad, eval. Needs `pip install torch pytorch-fid==0.3.0`.
  * fid_frechet_2048: pytorch-fid's calculate_frechet_distance (scipy.linalg.sqrtm) between the
    statistics of two sets of 4096 random 2048-d features. Needs numpy and scipy only.

stdout: one JSON line per item, {"name": ..., "ms": [...]}; logs on stderr.
Usage: python3 bench/fid_bench.py [--threads 2] [--only A,B] [--reps N] [--list]
"""
import _common
from _common import log


def inception_setup(b):
    import torch
    from pytorch_fid import inception as pfi

    # pytorch-fid's fid_inception_v3() with random weights (its constructor downloads the real ones)
    inc = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
    inc.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    inc.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    inc.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    inc.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    inc.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    inc.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    inc.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    inc.Mixed_7b = pfi.FIDInceptionE_1(1280)
    inc.Mixed_7c = pfi.FIDInceptionE_2(2048)
    # InceptionV3.blocks for output block 3, as pytorch-fid assembles them
    net = torch.nn.Sequential(
        inc.Conv2d_1a_3x3, inc.Conv2d_2a_3x3, inc.Conv2d_2b_3x3, torch.nn.MaxPool2d(3, 2),
        inc.Conv2d_3b_1x1, inc.Conv2d_4a_3x3, torch.nn.MaxPool2d(3, 2),
        inc.Mixed_5b, inc.Mixed_5c, inc.Mixed_5d, inc.Mixed_6a, inc.Mixed_6b, inc.Mixed_6c, inc.Mixed_6d, inc.Mixed_6e,
        inc.Mixed_7a, inc.Mixed_7b, inc.Mixed_7c, torch.nn.AdaptiveAvgPool2d((1, 1)),
    ).eval()
    torch.manual_seed(0)
    x = torch.randn(b, 3, 299, 299) * 0.5

    def run():
        with torch.no_grad():
            net(x)

    return run


def frechet_setup(d):
    import numpy as np
    from scipy import linalg

    rng = np.random.default_rng(2)

    def stats(shift):
        f = rng.standard_normal((4096, d)) + shift
        return f.mean(0), np.cov(f, rowvar=False)

    (mu1, s1), (mu2, s2) = stats(0.0), stats(0.1)

    def run():  # pytorch_fid.fid_score.calculate_frechet_distance, eps 1e-6
        diff = mu1 - mu2
        covmean, _ = linalg.sqrtm(s1.dot(s2), disp=False)
        if not np.isfinite(covmean).all():
            offset = np.eye(s1.shape[0]) * 1e-6
            covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
        if np.iscomplexobj(covmean):
            covmean = covmean.real
        return diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)

    return run


ITEMS = {"fid_inception_b8": (lambda: inception_setup(8), 3), "fid_frechet_2048": (lambda: frechet_setup(2048), 3)}


if __name__ == "__main__":
    _common.main(ITEMS, reps=3, uses_torch=lambda name: name.startswith("fid_inception"))
