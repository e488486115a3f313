"""Per-call overhead of each public function and layer: the time of a call on a tiny input.

    python benchmarks/overhead.py [--calls 2000] [--rounds 20]

A 2x8 float32 input (16 values, serial path, no OpenMP region) with every
argument ready (`out=` given, float64 per-channel arrays for the functions), so
what is timed is the Python wrapper, the argument checks and the entry into the
kernel. The layers (`cnorm.BatchNorm`, `cnorm.LocalResponseNorm`) are timed in
inference, `layer(x, out=out)`, in the same run. Each round times `--calls`
calls of every case in turn (so a disturbance of the shared machine hits all
cases alike); the table gives, per case, the median over rounds of the mean
time per call, the spread (25th-75th percentile over rounds) and the minimum,
and for scale an empty Python call and a 16-value `numpy.multiply(x, 2, out=...)`.
"""
import argparse
import platform
import time

import numpy as np

import cnorm


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cases():
    """{name: zero-argument function} for every public function and layer, on a tiny input."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8)).astype(np.float32)
    dy = rng.standard_normal((2, 8)).astype(np.float32)
    out = np.empty_like(x)
    mean, var = np.zeros(8), np.ones(8)
    gamma, beta = np.ones(8), np.zeros(8)
    _, batch_mean, invstd = cnorm.batch_norm_training(x, gamma, beta)
    batch_norm = cnorm.BatchNorm(8)
    local_response_norm = cnorm.LocalResponseNorm(5)
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
        "BatchNorm(8) layer, inference": lambda: batch_norm(x, out=out),
        "LocalResponseNorm(5) layer": lambda: local_response_norm(x, out=out),
    }


def measure(functions, calls, rounds):
    """{name: [mean seconds per call, one per round]}, the cases interleaved in each round."""
    times = {name: [] for name in functions}
    for function in functions.values():
        function()
    for _ in range(rounds):
        for name, function in functions.items():
            start = time.perf_counter()
            for _ in range(calls):
                function()
            times[name].append((time.perf_counter() - start) / calls)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    print(f"CPU: {_cpu_model()}; cnorm {cnorm.__version__}, numpy {np.__version__}, "
          f"Python {platform.python_version()}; {args.rounds} rounds of {args.calls} calls")
    print("| call (2x8 float32, out= given) | median us | spread (25-75 %) | min us |")
    print("|---|---:|---:|---:|")
    for name, seconds in measure(cases(), args.calls, args.rounds).items():
        low, median, high = np.percentile(np.array(seconds) * 1e6, [25, 50, 75])
        print(f"| {name} | {median:.2f} | {low:.2f}-{high:.2f} | {min(seconds) * 1e6:.2f} |")


if __name__ == "__main__":
    main()
