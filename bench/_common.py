"""What the baseline scripts share: the command line `gen bench` calls them with, the thread settings,
and the timing loop (one warm-up call, then the timed ones; one JSON line per item on stdout, logs on
stderr). Usage of every script: [--threads 2] [--only A,B] [--reps N] [--list]."""
import argparse
import json
import os
import sys
import time


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def main(items, reps=2, uses_torch=lambda name: True):
    """items: name -> setup() returning the callable to time, or (setup, most reps for that item)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="")
    ap.add_argument("--reps", type=int, default=reps)
    ap.add_argument("--list", action="store_true")
    a = ap.parse_args()
    if a.list:
        print("\n".join(items))
        return
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(a.threads))
    names = [n for n in a.only.split(",") if n] or list(items)
    for name in names:
        if name not in items:
            log(f"unknown item {name}")
            continue
        setup, most = items[name] if isinstance(items[name], tuple) else (items[name], reps)
        try:
            if uses_torch(name):
                import torch  # imported late: a missing torch skips the item, not the script

                torch.set_num_threads(a.threads)
            run = setup()
        except ImportError as e:
            log(f"{name}: skipped ({e})")
            continue
        run()  # warm-up
        ms = []
        for _ in range(min(a.reps, most)):
            t = time.perf_counter()
            run()
            ms.append((time.perf_counter() - t) * 1e3)
        log(f"{name}: {min(ms):.1f} ms (min)")
        print(json.dumps({"name": name, "ms": ms}), flush=True)
