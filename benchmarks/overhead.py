"""Per-call overhead of each public function: the time of a call on a tiny input.

    python benchmarks/overhead.py [--calls 2000] [--rounds 20]

A 2x8 float32 input (16 values, serial path, no OpenMP region) with every
argument ready (`out=` given, float64 per-channel arrays), so what is timed is
the Python wrapper, the argument checks and the entry into the kernel. Reports
the minimum over rounds of the mean time per call (the minimum is the least
disturbed by other work on a shared machine) and, for scale, an empty Python
call and a 16-value `numpy.multiply(x, 2, out=...)`.
"""
import argparse
import time

import numpy as np

import cnorm


def _per_call(function, calls, rounds):
    best = float("inf")
    function()
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            function()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def cases():
    """{name: zero-argument function} for every public function, on a tiny input."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8)).astype(np.float32)
    dy = rng.standard_normal((2, 8)).astype(np.float32)
    out = np.empty_like(x)
    mean, var = np.zeros(8), np.ones(8)
    gamma, beta = np.ones(8), np.zeros(8)
    _, batch_mean, invstd = cnorm.batch_norm_training(x, gamma, beta)
    return {
        "empty Python call": lambda: None,
        "numpy.multiply(x, 2, out=out)": lambda: np.multiply(x, 2, out=out),
        "lrn": lambda: cnorm.lrn(x, out=out),
        "lrn_backward": lambda: cnorm.lrn_backward(dy, x, out=out),
        "local_response_norm": lambda: cnorm.local_response_norm(x, 5, out=out),
        "batch_norm_inference": lambda: cnorm.batch_norm_inference(x, mean, var, gamma, beta,
                                                                   out=out),
        "batch_norm_training": lambda: cnorm.batch_norm_training(x, gamma, beta, out=out),
        "batch_norm_backward": lambda: cnorm.batch_norm_backward(dy, x, batch_mean, invstd,
                                                                 gamma, out=out),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    print("| function (2x8 float32, out= given) | us per call |")
    print("|---|---:|")
    for name, function in cases().items():
        print(f"| {name} | {_per_call(function, args.calls, args.rounds) * 1e6:.2f} |")


if __name__ == "__main__":
    main()
