"""Time cnorm beside PyTorch: one OpenMP runtime or two.

For each import order (cnorm first, torch first) and with cnorm's global-scope
OpenMP preload on and off (``CNORM_OPENMP_GLOBAL=0``), a fresh interpreter times

* a small torch op alone (``torch.relu`` on a 1x64x56x56 float32 tensor, which
  torch runs on its OpenMP threads),
* a small cnorm op alone (``cnorm.lrn`` on a 1x56x56x64 float32 array with
  n_threads=2: 200704 elements, above the 32768 below which cnorm stays serial),
* a loop alternating the two,

and prints microseconds per op and the ratio of the alternating loop to the sum
of the two alone (about 1 when they share one runtime). Each configuration runs
in its own process because the runtimes are set up at import.

    python benchmarks/openmp_coexistence.py [--repeat 200] [--rounds 5]

Needs torch and an installed cnorm; run it from outside the source tree.
"""
import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, sys, time
order, repeat, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if order == "cnorm-first":
    import cnorm, torch
else:
    import torch, cnorm
import numpy as np
from cnorm import _config

t = torch.randn(1, 64, 56, 56)
x = np.random.default_rng(0).standard_normal((1, 56, 56, 64), dtype=np.float32)
y = np.empty_like(x)

def torch_op():
    torch.relu(t)

def cnorm_op():
    cnorm.lrn(x, depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75, out=y, n_threads=2)

def both():
    torch_op()
    cnorm_op()

def per_call(function):
    # Best of `rounds` rounds of `repeat` calls: the least disturbed estimate.
    function()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeat):
            function()
        best = min(best, (time.perf_counter() - start) / repeat)
    return best

result = {"torch": per_call(torch_op), "cnorm": per_call(cnorm_op), "alternating": per_call(both)}
runtimes = _config.openmp_runtimes()
result["two_in_use"] = runtimes["cnorm"] != runtimes["global"]
result["n_loaded"] = len(runtimes["loaded"] or [])
print(json.dumps(result))
"""


def run(order, preload, repeat, rounds):
    env = dict(os.environ)
    env.pop("CNORM_OPENMP_GLOBAL", None)
    if not preload:
        env["CNORM_OPENMP_GLOBAL"] = "0"
    output = subprocess.run(
        [sys.executable, "-c", CHILD, order, str(repeat), str(rounds)],
        env=env, check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200, help="calls per timing round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the best is kept")
    args = parser.parse_args(argv)
    print(f"{'import order':12s} {'preload':8s} {'runtimes in use':15s} {'torch us':>9s} "
          f"{'cnorm us':>9s} {'alternating us':>15s} {'ratio':>7s}")
    for preload in (True, False):
        for order in ("cnorm-first", "torch-first"):
            r = run(order, preload, args.repeat, args.rounds)
            alone = r["torch"] + r["cnorm"]
            print(f"{order:12s} {'on' if preload else 'off':8s} "
                  f"{2 if r['two_in_use'] else 1:<15d} {r['torch'] * 1e6:9.1f} "
                  f"{r['cnorm'] * 1e6:9.1f} {r['alternating'] * 1e6:15.1f} "
                  f"{r['alternating'] / alone:7.2f}")
    print("\nratio: alternating loop per iteration / (torch alone + cnorm alone); "
          "about 1 means one shared OpenMP runtime.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
