"""A synchronized (data-parallel) batch norm with cnorm, over several processes.

Each of K ranks holds a shard of one batch (uneven sizes; one shard may be
empty). The steps, with the transport in between:

    forward   local = cnorm.moments(x)                       this rank's statistics
              all-gather local.to_array()                    every rank gets all K
              total = Moments.merge_all(gathered)            in rank order
              y, mean, invstd = cnorm.batch_norm_training(x, gamma, beta,
                  running_mean=..., running_var=..., moments=total)
    backward  sums = cnorm.batch_norm_backward_sums(dy, x, mean, invstd)
              all-gather the sums, add them in rank order (an all-reduce)
              dx, dgamma, dbeta = cnorm.batch_norm_backward(dy, x, mean, invstd,
                  gamma, sums=total_sums, count=total.count)

The all-gather is real: shared memory between processes and a barrier
(``--backend shm``, the default; the standard library only), or
torch.distributed's gloo backend on 127.0.0.1 (``--backend gloo``; needs torch).
Merging in rank order makes every rank's result bit-identical; the parent
checks them against the single-process batch_norm_training and
batch_norm_backward of the whole batch.

    python examples/sync_batchnorm.py --ranks 3 [--backend gloo]
"""
import argparse
import multiprocessing
import os
import queue
import sys
import tempfile
import time
import traceback

import numpy as np

import cnorm
from cnorm import Moments

SHAPE, N_CHANNELS = (4, 4), 8  # per-sample H, W; channels last

# How long one rank may wait for the others (at a barrier, or for their first
# message), and the parent for all of them. Generous: on a loaded machine the
# ranks' start (spawn, importing NumPy and cnorm) alone can take tens of
# seconds. A rank that fails reports its traceback and breaks the barrier, and
# the parent stops waiting as soon as a rank dies, so these are only reached
# when something hangs.
PEER_TIMEOUT = float(os.environ.get("SYNC_BN_PEER_TIMEOUT", "300"))


def shard_bounds(batch, ranks):
    """Uneven shards, the second one empty when there are three ranks or more."""
    weights = np.arange(1, ranks + 1, dtype=float)
    if ranks >= 3:
        weights[1] = 0
    bounds = np.concatenate(([0], np.cumsum(weights / weights.sum() * batch)))
    return np.round(bounds).astype(int)


def problem(batch, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((batch, *SHAPE, N_CHANNELS)) * 3 + 1e3).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    gamma, beta = rng.standard_normal(N_CHANNELS), rng.standard_normal(N_CHANNELS)
    return x, dy, gamma, beta


# ---------------------------------------------------------------------------
# Transports: all_gather(array) -> list of every rank's array, in rank order

class SharedMemoryGroup:
    """An all-gather of float64 vectors through one shared buffer and a barrier."""

    def __init__(self, rank, ranks, buffer, barrier):
        self.rank, self.ranks, self.buffer, self.barrier = rank, ranks, buffer, barrier

    def all_gather(self, vector):
        table = np.frombuffer(self.buffer.get_obj(), dtype=np.float64).reshape(self.ranks, -1)
        # A timeout (or a rank that failed and aborted the barrier) raises
        # threading.BrokenBarrierError in every waiting rank instead of a hang.
        self.barrier.wait(PEER_TIMEOUT)  # everyone has read the previous round
        table[self.rank, :vector.size] = vector
        self.barrier.wait(PEER_TIMEOUT)  # everyone has written this round
        return [table[k, :vector.size].copy() for k in range(self.ranks)]


class GlooGroup:
    """torch.distributed's all_gather on the gloo backend (CPU, TCP on loopback)."""

    def __init__(self, rank, ranks, store_path):
        import datetime

        import torch.distributed as dist

        # A file store for the rendezvous: no port chosen in advance that
        # another process could take before rank 0 binds it.
        dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank,
                                world_size=ranks,
                                timeout=datetime.timedelta(seconds=PEER_TIMEOUT))
        self.dist = dist

    def all_gather(self, vector):
        import torch

        local = torch.from_numpy(np.ascontiguousarray(vector, dtype=np.float64))
        gathered = [torch.empty_like(local) for _ in range(self.dist.get_world_size())]
        self.dist.all_gather(gathered, local)
        return [part.numpy() for part in gathered]

    def close(self):
        self.dist.destroy_process_group()


# ---------------------------------------------------------------------------
# One rank

def sync_batch_norm_step(group, x, dy, gamma, beta, running_mean, running_var):
    """Forward and backward of a synchronized batch norm on this rank's shard."""
    local = cnorm.moments(x)
    total = Moments.merge_all(Moments.from_array(a) for a in group.all_gather(local.to_array()))
    y, mean, invstd = cnorm.batch_norm_training(
        x, gamma, beta, running_mean=running_mean, running_var=running_var, momentum=0.1,
        moments=total)
    sums = np.concatenate(cnorm.batch_norm_backward_sums(dy, x, mean, invstd))
    gathered = group.all_gather(sums)
    total_sums = gathered[0].copy()
    for part in gathered[1:]:  # rank order: the same bits on every rank
        total_sums += part
    dx, dgamma, dbeta = cnorm.batch_norm_backward(
        dy, x, mean, invstd, gamma, sums=(total_sums[:N_CHANNELS], total_sums[N_CHANNELS:]),
        count=total.count)
    return y, dx, dgamma, dbeta


def rank_main(rank, ranks, batch, backend, transport, results):
    try:
        x, dy, gamma, beta = problem(batch)
        a, b = shard_bounds(batch, ranks)[rank:rank + 2]
        if backend == "gloo":
            group = GlooGroup(rank, ranks, transport)
        else:
            group = SharedMemoryGroup(rank, ranks, *transport)
        running_mean, running_var = np.zeros(N_CHANNELS), np.ones(N_CHANNELS)
        y, dx, dgamma, dbeta = sync_batch_norm_step(group, x[a:b], dy[a:b], gamma, beta,
                                                    running_mean, running_var)
        if backend == "gloo":
            group.close()
    except BaseException:
        if backend != "gloo":
            transport[1].abort()  # the other ranks stop waiting for this one
        results.put((rank, "failed", traceback.format_exc()))
        raise
    results.put((rank, y, dx, dgamma, dbeta, running_mean, running_var))


def gather_results(processes, results, deadline):
    """Every rank's message, stopping at the first failure or a rank that died."""
    outputs = {}
    while len(outputs) < len(processes):
        try:
            item = results.get(timeout=1.0)
        except queue.Empty:
            dead = [rank for rank, process in enumerate(processes)
                    if rank not in outputs and process.exitcode is not None]
            if dead:  # exited without a message (killed, or a crash in C)
                time.sleep(1.0)  # its message may still be in the pipe
                if results.empty():
                    raise RuntimeError(f"rank {dead[0]} exited with "
                                       f"{processes[dead[0]].exitcode} before reporting")
            if time.monotonic() > deadline:
                raise RuntimeError(f"ranks {sorted(set(range(len(processes))) - set(outputs))} "
                                   f"did not report within {PEER_TIMEOUT:.0f} s")
            continue
        if isinstance(item[1], str):  # (rank, "failed", traceback)
            raise RuntimeError(f"rank {item[0]} failed:\n{item[2]}")
        outputs[item[0]] = item[1:]
    return outputs


def run(ranks, batch=23, backend="shm"):
    """Run the ranks; return the largest differences from the single-process results."""
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as scratch:
        if backend == "gloo":
            transport = os.path.join(scratch, "store")
        else:
            transport = (context.Array("d", ranks * (2 * N_CHANNELS + 1)),
                         context.Barrier(ranks))
        results = context.Queue()
        # daemon: a rank left hanging never keeps the parent from exiting
        processes = [context.Process(target=rank_main, daemon=True,
                                     args=(rank, ranks, batch, backend, transport, results))
                     for rank in range(ranks)]
        for process in processes:
            process.start()
        try:
            outputs = gather_results(processes, results, time.monotonic() + 2 * PEER_TIMEOUT)
            for process in processes:
                process.join(PEER_TIMEOUT)
                if process.exitcode != 0:
                    raise RuntimeError(f"a rank exited with {process.exitcode}")
        finally:
            for process in processes:
                if process.is_alive():
                    process.terminate()
                    process.join(5)

    x, dy, gamma, beta = problem(batch)
    running_mean, running_var = np.zeros(N_CHANNELS), np.ones(N_CHANNELS)
    y, mean, invstd = cnorm.batch_norm_training(x, gamma, beta, running_mean=running_mean,
                                                running_var=running_var, momentum=0.1)
    dx, dgamma, dbeta = cnorm.batch_norm_backward(dy, x, mean, invstd, gamma)
    bounds = shard_bounds(batch, ranks)
    worst = dict.fromkeys(["y", "dx", "dgamma", "dbeta", "running_mean", "running_var"], 0.0)
    for rank in range(ranks):
        y_k, dx_k, dgamma_k, dbeta_k, mean_k, var_k = outputs[rank]
        a, b = bounds[rank:rank + 2]
        for name, got, expected in [("y", y_k, y[a:b]), ("dx", dx_k, dx[a:b]),
                                    ("dgamma", dgamma_k, dgamma), ("dbeta", dbeta_k, dbeta),
                                    ("running_mean", mean_k, running_mean),
                                    ("running_var", var_k, running_var)]:
            scale = max(np.abs(expected).max(initial=0.0), 1.0)
            difference = np.abs(got.astype(np.float64) - expected).max(initial=0.0) / scale
            worst[name] = max(worst[name], difference)
        # every rank merged in rank order: the same bits everywhere
        assert np.array_equal(dgamma_k, outputs[0][2]) and np.array_equal(mean_k, outputs[0][4])
    return worst


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=3)
    parser.add_argument("--batch", type=int, default=23)
    parser.add_argument("--backend", choices=["shm", "gloo"], default="shm")
    args = parser.parse_args(argv)
    worst = run(args.ranks, args.batch, args.backend)
    print(f"{args.ranks} ranks ({args.backend}), shards {np.diff(shard_bounds(args.batch, args.ranks)).tolist()}:")
    for name, difference in worst.items():
        print(f"  {name:13s} largest difference from one process (relative to its max): {difference:.1e}")
    # float32 tensors: a float32 rounding or two; float64 statistics: float64 rounding
    limits = {"y": 1e-5, "dx": 1e-5}
    failed = [name for name, value in worst.items() if value > limits.get(name, 1e-12)]
    if failed:
        print("beyond rounding:", ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
