"""Resident memory over many calls of each public entry point, error paths included.

The entry points: the seven functions and batch_norm_backward_sums, the fused
(activation=, residual=, beta=) and synchronized (moments=, sums=/count=)
keywords, cnorm.moments and Moments.merge / merge_all / to_array / from_array,
cnorm.BatchNorm (a call in inference and in training, backward),
cnorm.LocalResponseNorm (a call, backward) and fold_batch_norm.

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
    residual = rng.standard_normal(x.shape).astype(np.float32)
    beta = np.zeros(c)
    y, batch_mean, invstd = cnorm.batch_norm_training(x)
    sums = cnorm.batch_norm_backward_sums(dy, x, batch_mean, invstd)
    count = x.size // c
    part = cnorm.moments(x[:2])
    other = cnorm.moments(x[2:])
    array = part.to_array()
    weight = rng.standard_normal((c, 3, 3, 3)).astype(np.float32)
    bias = np.zeros(c)
    bn_layer = cnorm.BatchNorm(c, axis=-1)
    lrn_layer = cnorm.LocalResponseNorm(5)

    def bn_backward():
        bn_layer(x, training=True)
        return bn_layer.backward(dy)

    def lrn_backward():
        lrn_layer(x)
        return lrn_layer.backward(dy)

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
        "batch_norm_backward_sums": (
            lambda: cnorm.batch_norm_backward_sums(dy, x, batch_mean, invstd),
            lambda: cnorm.batch_norm_backward_sums(dy, x, batch_mean[:-1], invstd)),
        # the fused and synchronized keywords
        "batch_norm_inference(relu, residual)": (
            lambda: cnorm.batch_norm_inference(x, mean, var, gamma, activation="relu",
                                               residual=residual),
            lambda: cnorm.batch_norm_inference(x, mean, var, gamma, activation="tanh",
                                               residual=residual)),
        "batch_norm_training(relu)": (
            lambda: cnorm.batch_norm_training(x, gamma, activation="relu"),
            lambda: cnorm.batch_norm_training(x, gamma, activation=1)),
        "batch_norm_training(moments)": (
            lambda: cnorm.batch_norm_training(x, gamma, moments=part.merge(other)),
            lambda: cnorm.batch_norm_training(x, gamma, moments=cnorm.Moments.empty(c))),
        "batch_norm_backward(beta, relu)": (
            lambda: cnorm.batch_norm_backward(dy, x, batch_mean, invstd, gamma, beta=beta,
                                              activation="relu"),
            lambda: cnorm.batch_norm_backward(dy, x, batch_mean, invstd, gamma,
                                              beta=beta[:-1], activation="relu")),
        "batch_norm_backward(sums, count)": (
            lambda: cnorm.batch_norm_backward(dy, x, batch_mean, invstd, gamma, sums=sums,
                                              count=count),
            lambda: cnorm.batch_norm_backward(dy, x, batch_mean, invstd, gamma, sums=sums,
                                              count=0)),
        # statistics
        "moments": (lambda: cnorm.moments(x), lambda: cnorm.moments(x, axis=3)),
        "Moments.merge": (lambda: part.merge(other), lambda: part.merge(array)),
        "Moments.merge_all": (lambda: cnorm.Moments.merge_all([part, other, part]),
                              lambda: cnorm.Moments.merge_all([part, None])),
        "Moments.to_array/from_array": (
            lambda: cnorm.Moments.from_array(part.to_array()),
            lambda: cnorm.Moments.from_array(array[:-1])),
        # the layers
        "BatchNorm (inference)": (lambda: bn_layer(x),
                                  lambda: bn_layer(x[..., :-1])),
        "BatchNorm (training)": (lambda: bn_layer(x, training=True),
                                 lambda: bn_layer(x[..., :-1], training=True)),
        "BatchNorm.backward": (bn_backward, lambda: bn_layer.backward(dy[:1])),
        "LocalResponseNorm": (lambda: lrn_layer(x), lambda: lrn_layer(x, n_threads=0)),
        "LocalResponseNorm.backward": (lrn_backward, lambda: lrn_layer.backward(dy[:1])),
        "fold_batch_norm": (
            lambda: cnorm.fold_batch_norm(weight, bias, mean, var, gamma, layout="OIHW"),
            lambda: cnorm.fold_batch_norm(weight, bias, mean, var, gamma, layout="NCHW")),
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
        print(f"{name:36s} {args.calls} calls: RSS {before:7.1f} MiB -> growth {growth:+.2f} MiB")
        if growth > args.limit_mib:
            failed.append(name)
    if failed:
        print("RSS grew beyond the limit:", ", ".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    main()
