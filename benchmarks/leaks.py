"""Resident memory over many calls of each public entry point, error paths included.

For each entry point: a warm-up, then --calls calls alternating a valid call and
one that raises (a bad parameter); the resident set size (VmRSS) is read before
and after. Prints the growth per entry point and fails if any exceeds --limit-mib.
"""
import argparse
import sys

import numpy as np

import cnorm


def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def entries():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8, 16)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    c = x.shape[-1]
    mean, var, gamma = np.zeros(c), np.ones(c), np.ones(c)
    running_mean, running_var = np.zeros(c), np.ones(c)
    return {
        "lrn": (lambda: cnorm.lrn(x), lambda: cnorm.lrn(x, bias=float("nan"))),
        "lrn_backward": (lambda: cnorm.lrn_backward(dy, x),
                         lambda: cnorm.lrn_backward(dy[:1], x)),
        "local_response_norm": (lambda: cnorm.local_response_norm(x, 5),
                                lambda: cnorm.local_response_norm(x, 0)),
        "local_response_norm_backward": (
            lambda: cnorm.local_response_norm_backward(dy, x, 5),
            lambda: cnorm.local_response_norm_backward(dy, x, 4, convention="caffe")),
        "batch_norm_inference": (
            lambda: cnorm.batch_norm_inference(x, mean, var, gamma),
            lambda: cnorm.batch_norm_inference(x, mean, -var)),
        "batch_norm_training": (
            lambda: cnorm.batch_norm_training(x, gamma, running_mean=running_mean,
                                              running_var=running_var),
            lambda: cnorm.batch_norm_training(x, momentum=2.0)),
        "batch_norm_backward": (
            lambda: cnorm.batch_norm_backward(dy, x, mean, var, gamma),
            lambda: cnorm.batch_norm_backward(dy, x, mean, var, gamma, n_threads=0)),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--limit-mib", type=float, default=8.0)
    args = parser.parse_args()
    failed = []
    for name, (ok, bad) in entries().items():
        for _ in range(1000):
            ok()
        before = rss_mib()
        for i in range(args.calls // 2):
            ok()
            try:
                bad()
            except (TypeError, ValueError):
                pass
            else:
                raise AssertionError(f"{name}: the bad call did not raise")
        growth = rss_mib() - before
        print(f"{name:30s} {args.calls} calls: RSS {before:7.1f} MiB -> growth {growth:+.2f} MiB")
        if growth > args.limit_mib:
            failed.append(name)
    if failed:
        print("RSS grew beyond the limit:", ", ".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    main()
