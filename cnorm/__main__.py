"""python -m cnorm: run cnorm's main job on made-up data and print a timing table.

LRN forward and backward on an AlexNet-shaped tensor (16x55x55x96 float32,
depth_radius 2, bias 2, alpha 1e-4, beta 0.75) and batch norm inference,
training forward and backward on a ResNet-50-shaped one (32x56x56x64 float32),
each checked against the NumPy reference and timed with 1 thread and with all
threads beside the reference and a parallel copy of the tensor (the
memory-bandwidth yardstick). GB/s counts the least traffic of each operation:
each input read once and the output written once.
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
        sys.exit(f"CHECK FAILED: {name}: cnorm differs from the float64 reference beyond "
                 f"rtol={rtol} (worst excess {worst:.3g}); please report it with the output "
                 "of cnorm.show_config()")
    return float(np.max(np.abs(actual - expected) / (np.abs(expected) + (0 if scale is None else scale) + 1e-30)))


def _table(title, x, operations, repeat, all_threads):
    """Time each (name, cnorm call(n_threads), reference seconds, tensors touched)."""
    print(f"\n{title}")
    print(f"{'operation':22s} {'implementation':26s} {'threads':>7s} {'ms':>10s} {'GB/s':>7s} {'x copy':>7s}")
    copy_target = np.empty_like(x)
    for name, call, reference_seconds, tensors in operations:
        nbytes = tensors * x.nbytes
        print(f"{name:22s} {'NumPy reference (float64)':26s} {1:7d} {reference_seconds * 1e3:10.2f} "
              f"{nbytes / reference_seconds / 1e9:7.2f}")
        for n in sorted({1, all_threads}):
            copy = _median_seconds(lambda: _copy(x, copy_target, n), repeat)
            seconds = _median_seconds(lambda: call(n), repeat)
            print(f"{name:22s} {'cnorm':26s} {n:7d} {seconds * 1e3:10.3f} "
                  f"{nbytes / seconds / 1e9:7.1f} {seconds / copy:7.2f}")


def _timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cnorm", description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10, help="timed calls per row (median)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    all_threads = _openmp.max_threads()
    print(f"cnorm {cnorm.__version__}: kernels for ISA level {cnorm._dispatch.ISA_LEVEL} "
          f"(best this CPU runs: {cnorm._dispatch.cpu_best_level()}; built and runnable: "
          f"{', '.join(cnorm._dispatch.available_levels())}), OpenMP "
          f"{'on' if cnorm.openmp_enabled() else 'off'}, {all_threads} "
          f"thread{'s' if all_threads != 1 else ''} available.")
    print("Each operation is checked against cnorm.reference (NumPy, float64) and then timed.\n"
          "Columns: threads = the n_threads of the call; ms = the median time of one call\n"
          "(the reference's: of its single checking call); GB/s = the least traffic of the\n"
          "operation (each input read once, the output written once) over that time; x copy =\n"
          "the time over a parallel copy of the same tensor with as many threads, measured in\n"
          "the same run (1.0 = as fast as moving the data once; lower is better).")

    # --- LRN, AlexNet ---------------------------------------------------------------
    params = dict(depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75)
    x = rng.standard_normal((16, 55, 55, 96), dtype=np.float32)
    dy = rng.standard_normal(x.shape, dtype=np.float32)
    out = np.empty_like(x)
    expected_y, reference_forward = _timed(lambda: reference.lrn(x, **params))
    expected_dx, reference_backward = _timed(lambda: reference.lrn_backward(dy, x, **params))
    error_y = _check("LRN forward", cnorm.lrn(x, **params), expected_y, 2e-5)
    d = 2.0 + 1e-4 * reference._window_sum(x.astype(np.float64) ** 2, 2, 2)
    scale = np.abs(dy * d ** -0.75) + 2e-4 * 0.75 * np.abs(x) * reference._window_sum(
        np.abs(dy * x * d ** -1.75), 2, 2)
    error_dx = _check("LRN backward", cnorm.lrn_backward(dy, x, **params), expected_dx, 2e-5, scale)
    _table(f"LRN on 16x55x55x96 float32, depth_radius=2 bias=2 alpha=1e-4 beta=0.75 "
           f"(max relative error: forward {error_y:.1e}, backward {error_dx:.1e})", x, [
               ("LRN forward", lambda n: cnorm.lrn(x, **params, out=out, n_threads=n),
                reference_forward, 2),
               ("LRN backward", lambda n: cnorm.lrn_backward(dy, x, **params, out=out, n_threads=n),
                reference_backward, 3),
           ], args.repeat, all_threads)

    # --- batch norm, ResNet-50 -----------------------------------------------------------
    shape = (32, 56, 56, 64)
    x = rng.standard_normal(shape, dtype=np.float32) + rng.uniform(-2, 2, 64).astype(np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    out = np.empty_like(x)
    gamma, beta = rng.uniform(0.5, 1.5, 64), rng.uniform(-1, 1, 64)
    running_mean, running_var = rng.uniform(-1, 1, 64), rng.uniform(0.5, 2, 64)
    (ref_y), ref_inference = _timed(lambda: reference.batch_norm_inference(
        x, running_mean, running_var, gamma, beta))
    (ref_train, ref_mean, ref_invstd), ref_training = _timed(
        lambda: reference.batch_norm_training(x, gamma, beta))
    (ref_dx, _, _), ref_backward = _timed(
        lambda: reference.batch_norm_backward(dy, x, ref_mean, ref_invstd, gamma))
    y_scale = np.abs(gamma) + np.abs(beta)
    errors = [
        _check("BN inference", cnorm.batch_norm_inference(x, running_mean, running_var, gamma, beta),
               ref_y, 2e-5, y_scale),
        _check("BN training", cnorm.batch_norm_training(x, gamma, beta)[0], ref_train, 2e-5, y_scale),
        _check("BN backward", cnorm.batch_norm_backward(dy, x, ref_mean, ref_invstd, gamma)[0],
               ref_dx, 2e-5, np.abs(gamma * ref_invstd) * 4),
    ]
    _, mean, invstd = cnorm.batch_norm_training(x, gamma, beta)
    _table(f"batch norm on 32x56x56x64 float32 (max relative error: inference {errors[0]:.1e}, "
           f"training {errors[1]:.1e}, backward {errors[2]:.1e})", x, [
               ("BN inference", lambda n: cnorm.batch_norm_inference(
                   x, running_mean, running_var, gamma, beta, out=out, n_threads=n), ref_inference, 2),
               ("BN training forward", lambda n: cnorm.batch_norm_training(
                   x, gamma, beta, out=out, n_threads=n), ref_training, 2),
               ("BN backward", lambda n: cnorm.batch_norm_backward(
                   dy, x, mean, invstd, gamma, out=out, n_threads=n), ref_backward, 3),
           ], args.repeat, all_threads)
    print(f"\nAll 5 checks passed: every result within rtol=2e-5 of the float64 reference "
          f"(largest relative errors: LRN {max(error_y, error_dx):.1e}, batch norm "
          f"{max(errors):.1e}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
