"""python -m cnorm: run cnorm's main job on made-up data and print a timing table.

LRN forward and backward on an AlexNet-shaped tensor (16x55x55x96 float32,
depth_radius 2, bias 2, alpha 1e-4, beta 0.75), checked against the NumPy
reference, timed with 1 thread and with all threads beside the reference and a
parallel copy of the tensor (the memory-bandwidth yardstick). GB/s counts the
least traffic each operation needs: forward 1 read + 1 write, backward 2 reads
+ 1 write.
"""
import argparse
import sys
import time

import numpy as np

import cnorm
from cnorm import _openmp, reference


def _median_seconds(function, repeat):
    function()  # warm up: page faults, OpenMP threads
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _copy(x, out, n_threads):
    rows = x.reshape(-1, x.shape[-1]).view(np.uint8)
    _openmp.parallel_copy(rows, out.reshape(rows.shape[0], -1).view(np.uint8), n_threads)


def _check(name, actual, expected, rtol, scale=None):
    bound = rtol * (np.abs(expected) + (0 if scale is None else scale))
    worst = float(np.max(np.abs(actual - expected) - bound))
    if worst > 0:
        sys.exit(f"{name}: cnorm differs from the reference beyond rtol={rtol}")
    return float(np.max(np.abs(actual - expected) / (np.abs(expected) + (0 if scale is None else scale) + 1e-30)))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cnorm", description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10, help="timed calls per row (median)")
    parser.add_argument("--shape", type=int, nargs=4, default=[16, 55, 55, 96], metavar=("N", "H", "W", "C"))
    args = parser.parse_args(argv)

    params = dict(depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(args.shape, dtype=np.float32)
    dy = rng.standard_normal(args.shape, dtype=np.float32)
    y = np.empty_like(x)
    dx = np.empty_like(x)
    all_threads = _openmp.max_threads()
    print(f"cnorm {cnorm.__version__}: LRN on {'x'.join(map(str, args.shape))} float32, "
          f"depth_radius=2 bias=2 alpha=1e-4 beta=0.75 ({x.nbytes / 1e6:.1f} MB)")

    start = time.perf_counter()
    expected_y = reference.lrn(x, **params)
    reference_forward = time.perf_counter() - start
    start = time.perf_counter()
    expected_dx = reference.lrn_backward(dy, x, **params)
    reference_backward = time.perf_counter() - start
    error_y = _check("forward", cnorm.lrn(x, **params), expected_y, 2e-5)
    d = 2.0 + 1e-4 * reference._window_sum(x.astype(np.float64) ** 2, 2, 2)
    scale = np.abs(dy * d ** -0.75) + 2e-4 * 0.75 * np.abs(x) * reference._window_sum(
        np.abs(dy * x * d ** -1.75), 2, 2)
    error_dx = _check("backward", cnorm.lrn_backward(dy, x, **params), expected_dx, 2e-5, scale)
    print(f"checked against cnorm.reference: max relative error forward {error_y:.1e}, "
          f"backward {error_dx:.1e}\n")

    rows = [("NumPy reference (float64)", 1, reference_forward, reference_backward)]
    thread_counts = sorted({1, all_threads})
    for n in thread_counts:
        copy = _median_seconds(lambda: _copy(x, y, n), args.repeat)
        forward = _median_seconds(lambda: cnorm.lrn(x, **params, out=y, n_threads=n), args.repeat)
        backward = _median_seconds(
            lambda: cnorm.lrn_backward(dy, x, **params, out=dx, n_threads=n), args.repeat)
        rows.append((f"parallel copy (yardstick)", n, copy, None))
        rows.append(("cnorm", n, forward, backward))

    print(f"{'implementation':28s} {'threads':>7s} {'forward ms':>11s} {'GB/s':>6s} "
          f"{'backward ms':>12s} {'GB/s':>6s}")
    for name, n, forward, backward in rows:
        line = f"{name:28s} {n:7d} {forward * 1e3:11.3f} {2 * x.nbytes / forward / 1e9:6.1f} "
        if backward is not None:
            line += f"{backward * 1e3:12.3f} {3 * x.nbytes / backward / 1e9:6.1f}"
        print(line)
    print(f"\n(copy row: one read + one write of x; ISA level {cnorm._dispatch.ISA_LEVEL}, "
          f"OpenMP {'on' if cnorm.openmp_enabled() else 'off'}, {all_threads} threads available)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
