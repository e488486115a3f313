"""cnorm.dask on a LocalCluster: statistics and inference against Dask's own.

    python benchmarks/dask_scaling.py [--gib 4] [--repeat 5] [--workers 2]
        [--chunk-rows 256] [--markdown table.md]

A dataset of float32 activations of shape (N, 16, 16, 256), N set by --gib,
mean 1e5 and std 1 (where a float32 variance cancels), is generated on the
workers of a distributed.LocalCluster (--workers processes of one thread each,
on 127.0.0.1) and kept in their memory (persist), in blocks of --chunk-rows
samples (64 MiB at 256). Timed, each --repeat times, the median and the spread
(min to max) given:

- ``cnorm.dask.moments(x)``;
- Dask's ``x.mean(axis)`` and ``x.var(axis)``, computed together;
- single-process ``cnorm.moments`` of the same data gathered into this process
  (all threads, and one: the per-worker ideal is its time over the workers);
- ``cnorm.dask.batch_norm_inference(x, ...)`` and ``x.map_blocks`` of the NumPy
  formula ``gamma * (x - mean) / sqrt(var + eps) + beta`` (in float32), each
  persisted on the workers (not gathered);
- the engine's cost: an empty task per block reduced with the same tree
  (scheduling, transfers and the reduction's own tasks, no arithmetic), and
  the time of cnorm.dask.moments beyond the single-thread time over the
  workers.

GB/s counts x read once (and y written once for inference). The accuracy of
the statistics (relative error of the per-channel variance against a float64
two-pass NumPy reference) is measured on the first 1/16 of the data with the
same blocks.
"""
import argparse
import platform
import statistics
import subprocess
import time

import numpy as np


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def timed(function, repeat, settle=lambda: None):
    function()  # warm: imports in the workers, OpenMP pools, page faults
    times = []
    for _ in range(repeat):
        settle()
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def _scheduler_tasks(dask_scheduler):
    return len(dask_scheduler.tasks)


def settler(client):
    """A wait until the scheduler knows only the tasks it knows now (the persisted
    data): a key still held from the previous run would be reused, not recomputed."""
    baseline = client.run_on_scheduler(_scheduler_tasks)
    tasks = _scheduler_tasks

    def settle():
        deadline = time.perf_counter() + 30
        while client.run_on_scheduler(tasks) > baseline and time.perf_counter() < deadline:
            time.sleep(0.01)
    return settle


def row(name, times, gigabytes):
    median = statistics.median(times)
    return (f"| {name} | {median * 1e3:.0f} | {min(times) * 1e3:.0f}-{max(times) * 1e3:.0f} "
            f"| {gigabytes / median:.2f} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=4.0)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk-rows", type=int, default=256)
    parser.add_argument("--markdown")
    args = parser.parse_args(argv)

    import dask
    import dask.array as da
    import distributed

    import cnorm
    import cnorm.dask

    sample = (16, 16, 256)
    per_row = 4 * np.prod(sample)
    n_rows = int(args.gib * 2**30 // per_row) // args.chunk_rows * args.chunk_rows
    shape = (n_rows,) + sample
    axes = (0, 1, 2)
    nbytes = n_rows * per_row
    gigabytes = nbytes / 1e9

    cluster = distributed.LocalCluster(n_workers=args.workers, threads_per_worker=1,
                                       processes=True, memory_limit=0, host="127.0.0.1",
                                       dashboard_address=None)
    client = distributed.Client(cluster)
    lines = []
    try:
        rng = da.random.default_rng(20261202)
        x = rng.standard_normal(shape, dtype=np.float32,
                                chunks=(args.chunk_rows,) + sample) + np.float32(1e5)
        x = x.persist()
        distributed.wait(x)
        n_channels = sample[-1]
        blocks = x.numblocks[0]
        settle = settler(client)

        results = {}
        results["cnorm.dask.moments"] = timed(lambda: cnorm.dask.moments(x).compute(),
                                              args.repeat, settle)
        results["dask mean + var"] = timed(
            lambda: dask.compute(x.mean(axis=axes), x.var(axis=axes)), args.repeat, settle)

        empty = x.map_blocks(lambda block: np.zeros((1, 1, 1, block.shape[-1]), np.float32),
                             chunks=((1,) * blocks, (1,), (1,), (n_channels,)),
                             dtype=np.float32)
        results["empty tasks, same tree"] = timed(
            lambda: empty.sum(axis=axes, split_every=cnorm.dask._default_split_every(
                empty, axes)).compute(), args.repeat, settle)

        mean = np.full(n_channels, 1e5)
        var = np.ones(n_channels)
        gamma, beta = np.full(n_channels, 2.0), np.full(n_channels, 0.5)
        eps = 1e-5

        runs = iter(range(10**9))

        def persist_and_drop(y):
            y = y.persist()
            distributed.wait(y)
            del y

        # Each run a graph of its own (keys of a persisted result would be reused):
        # eps moves by 2**-40 of itself, the NumPy formula's blocks get a new name.
        results["cnorm.dask.batch_norm_inference"] = timed(
            lambda: persist_and_drop(cnorm.dask.batch_norm_inference(
                x, mean, var, gamma, beta, eps * (1 + next(runs) * 2**-40))),
            args.repeat, settle)
        m32, g32 = mean.astype(np.float32), gamma.astype(np.float32)
        s32, b32 = np.sqrt(var + eps).astype(np.float32), beta.astype(np.float32)
        results["map_blocks of the NumPy formula"] = timed(
            lambda: persist_and_drop(x.map_blocks(lambda b: g32 * (b - m32) / s32 + b32,
                                                  dtype=np.float32,
                                                  name=f"numpy-formula-{next(runs)}")),
            args.repeat, settle)

        # Accuracy on the first 1/16 of the data, same blocks.
        part = x[: max(args.chunk_rows, n_rows // 16 // args.chunk_rows * args.chunk_rows)]
        local = part.compute().reshape(-1, n_channels).astype(np.float64)
        reference = ((local - local.mean(axis=0)) ** 2).mean(axis=0)
        del local
        ours = cnorm.dask.moments(part).compute().var()
        theirs = part.var(axis=axes).compute()
        our_error = float((np.abs(ours - reference) / reference).max())
        their_error = float((np.abs(theirs - reference) / reference).max())

        # Single process, the same data in memory.
        gathered = x.compute()
        threads = cnorm._openmp.max_threads()
        results[f"cnorm.moments, one process, {threads} threads"] = timed(
            lambda: cnorm.moments(gathered), args.repeat)
        results["cnorm.moments, one process, 1 thread"] = timed(
            lambda: cnorm.moments(gathered, n_threads=1), args.repeat)
        del gathered
    finally:
        client.close()
        cluster.close()

    median = {name: statistics.median(times) for name, times in results.items()}
    ideal = median["cnorm.moments, one process, 1 thread"] / args.workers
    lines.append(f"CPU: {cpu_model()}; {args.workers} workers x 1 thread (LocalCluster, "
                 f"processes); x float32 {shape}, {nbytes / 2**30:.2f} GiB in "
                 f"{blocks} blocks of {args.chunk_rows * per_row / 2**20:.0f} MiB; "
                 f"{args.repeat} runs after a warm-up; dask {dask.__version__}, "
                 f"distributed {distributed.__version__}, numpy {np.__version__}")
    lines.append("")
    lines.append("| operation | median ms | spread (min-max) ms | GB/s |")
    lines.append("|---|---|---|---|")
    for name, times in results.items():
        traffic = 2 * gigabytes if ("inference" in name or "formula" in name) else gigabytes
        lines.append(row(name, times, traffic))
    lines.append("")
    lines.append(f"cnorm.dask.moments vs dask mean + var: "
                 f"{median['dask mean + var'] / median['cnorm.dask.moments']:.1f}x faster")
    lines.append(f"cnorm.dask.batch_norm_inference vs map_blocks of the formula: "
                 f"{median['map_blocks of the NumPy formula'] / median['cnorm.dask.batch_norm_inference']:.1f}x faster")
    lines.append(f"engine overhead of cnorm.dask.moments: "
                 f"{(median['cnorm.dask.moments'] - ideal) * 1e3:.0f} ms beyond the one-thread "
                 f"time over {args.workers} workers ({ideal * 1e3:.0f} ms); empty tasks with the "
                 f"same tree {median['empty tasks, same tree'] * 1e3:.0f} ms")
    lines.append(f"relative variance error at mean 1e5, std 1 (float32, first 1/16 of x, same "
                 f"blocks): cnorm.dask.moments {our_error:.1e}, dask x.var() {their_error:.1e} "
                 f"({their_error / max(our_error, 1e-300):.1e}x)")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
