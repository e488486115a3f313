"""cnorm.dask on a real cluster: a distributed.LocalCluster of two worker processes
(one thread each, 1 GiB of memory each) on the loopback interface.

One cluster for the module (started once: a few seconds); no distributed.utils_test
fixtures here. The out-of-core test (a 4 GiB file on disk) runs when
CNORM_TEST_OUT_OF_CORE=1 (.ci/run sets it); it needs about 4.3 GiB of free disk
in the temporary directory.
"""
import os
import time

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
cnorm_dask = pytest.importorskip("cnorm.dask")

import cnorm  # noqa: E402
from cnorm import reference as ref  # noqa: E402

from helpers import assert_close  # noqa: E402

WORKER_MEMORY = 2**30


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, memory_limit=WORKER_MEMORY,
        host="127.0.0.1", dashboard_address=None, scheduler_port=0)
    with distributed.Client(cluster) as client:
        yield client
    cluster.close()


def assert_same_moments(actual, expected):
    assert actual.count == expected.count
    np.testing.assert_array_equal(actual.mean, expected.mean)
    np.testing.assert_array_equal(actual.m2, expected.m2)


def test_workers_run_cnorm_single_threaded(client):
    # The Nanny starts workers with OMP_NUM_THREADS=1: each worker thread, one task,
    # one OpenMP thread.
    threads = client.run(lambda: (cnorm_dask._task_threads(None),
                                  cnorm._openmp.max_threads()))
    assert len(threads) == 2
    assert all(value == (None, 1) for value in threads.values()), threads


@pytest.mark.parametrize("chunks", [(32, 8, 8, 16), (5, 8, 3, 16), (64, 8, 8, 4)],
                         ids=["batch", "uneven", "channels"])
def test_moments_equal_single_process_and_repeat_bit_for_bit(client, chunks, dtype, rng):
    x = (rng.standard_normal((256, 8, 8, 16)) * 2 + 1e3).astype(dtype)
    lazy = cnorm_dask.moments(da.from_array(x, chunks=chunks))
    first = lazy.compute()
    expected = cnorm.moments(x)
    assert first.count == expected.count
    assert_close(first.mean, expected.mean, scale=np.sqrt(expected.var()), rtol_factor=0.1)
    assert_close(first.m2, expected.m2, rtol_factor=0.1)
    for _ in range(2):
        assert_same_moments(client.compute(lazy).result(), first)
        assert_same_moments(cnorm_dask.moments(da.from_array(x, chunks=chunks)).compute(), first)
    # the same graph on the synchronous scheduler: the same bits
    assert_same_moments(lazy.compute(scheduler="sync"), first)


@pytest.mark.filterwarnings("ignore:Sending large graph")
def test_accuracy_beside_dask_var(client, rng):
    """float32 data at mean 1e5, std 1: cnorm's relative variance error <= 1e-10."""
    x = (rng.standard_normal((1_000_000, 8)) + 1e5).astype(np.float32)
    expected = ref.moments(x).var()
    array = da.from_array(x, chunks=(100_000, 8))
    ours = cnorm_dask.moments(array).compute().var()
    theirs = array.var(axis=0).compute()
    our_error = (np.abs(ours - expected) / expected).max()
    their_error = (np.abs(theirs - expected) / expected).max()
    print(f"relative variance error: cnorm.dask.moments {our_error:.2g}, "
          f"dask x.var() {their_error:.2g}")
    assert our_error <= 1e-10
    assert our_error < their_error


def test_batch_norm_inference_and_lrn_on_the_cluster(client, rng):
    x = (rng.standard_normal((64, 8, 8, 12)) + 3).astype(np.float32)
    mean, var = rng.standard_normal(12), rng.random(12) + 0.5
    y = cnorm_dask.batch_norm_inference(da.from_array(x, chunks=(16, 8, 8, 12)), mean, var)
    np.testing.assert_array_equal(y.compute(), cnorm.batch_norm_inference(x, mean, var))
    split = da.from_array(x, chunks=(16, 8, 8, 5))
    with pytest.raises(ValueError, match="rechunk"):
        cnorm_dask.lrn(split, 2)
    z = cnorm_dask.local_response_norm(split, 5, 1.0, 0.75, 1.0, allow_rechunk=True)
    np.testing.assert_array_equal(z.compute(), cnorm.local_response_norm(x, 5, 1.0, 0.75, 1.0))


def test_recalibrate_on_the_cluster(client, rng):
    x = (rng.standard_normal((128, 4, 4, 6)) * 5 - 20).astype(np.float32)
    running_mean, running_var = np.zeros(6, np.float32), np.zeros(6, np.float32)
    cnorm_dask.recalibrate(da.from_array(x, chunks=(16, 4, 4, 6)), running_mean, running_var)
    rows = x.reshape(-1, 6).astype(np.float64)
    assert_close(running_mean, rows.mean(axis=0), scale=5)
    assert_close(running_var, rows.var(axis=0, ddof=1))
    # the layer form: its axis (NCHW here), its statistics set through its setters
    layer = cnorm.BatchNorm(6, axis=1)
    nchw = np.ascontiguousarray(np.moveaxis(x, -1, 1))
    cnorm_dask.recalibrate(da.from_array(nchw, chunks=(16, 6, 4, 4)), layer)
    assert_close(layer.running_mean, rows.mean(axis=0), scale=5)
    assert_close(layer.running_var, rows.var(axis=0, ddof=1))


def test_bad_input_before_any_task(client):
    with pytest.raises(TypeError, match="dask.array.Array"):
        cnorm_dask.moments(np.ones((4, 2)))
    ones = da.ones((8, 4), chunks=(4, 4))
    with pytest.raises(ValueError, match="unknown chunk sizes"):
        cnorm_dask.lrn(ones[ones[:, 0] > 0], 1, axis=0)


class MemmapFile:
    """A raw float32 file on disk as an array-like for dask.array.from_array: each
    block is read by the worker that needs it through a numpy.memmap opened there
    (a memmap itself would be pickled with all its data into the graph)."""

    def __init__(self, path, shape, dtype):
        self.path, self.shape, self.dtype = str(path), tuple(shape), np.dtype(dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, index):
        mapped = np.memmap(self.path, dtype=self.dtype, mode="r", shape=self.shape)
        try:
            return np.array(mapped[index])
        finally:
            del mapped


@pytest.mark.skipif(os.environ.get("CNORM_TEST_OUT_OF_CORE") != "1",
                    reason="the out-of-core test writes 4 GiB: set CNORM_TEST_OUT_OF_CORE=1")
def test_out_of_core(client, tmp_path):
    # 4 GiB of float32 on disk, 64 blocks of 64 MiB, each worker limited to 1 GiB.
    workers = client.scheduler_info()["workers"].values()
    assert [worker["memory_limit"] for worker in workers] == [WORKER_MEMORY] * 2
    shape, rows_per_block = (16384, 16, 16, 256), 256
    path = tmp_path / "activations.f32"
    start = time.perf_counter()
    mapped = np.memmap(path, dtype=np.float32, mode="w+", shape=shape)
    rng = np.random.default_rng(16)
    scale = (1 + np.arange(256) % 7).astype(np.float32)
    for first in range(0, shape[0], rows_per_block):
        block = rng.standard_normal((rows_per_block,) + shape[1:], dtype=np.float32)
        block *= scale
        block += 100.0
        mapped[first:first + rows_per_block] = block
    mapped.flush()
    written = time.perf_counter() - start
    assert path.stat().st_size == 2**32
    try:
        x = da.from_array(MemmapFile(path, shape, np.float32),
                          chunks=(rows_per_block,) + shape[1:], asarray=True)
        start = time.perf_counter()
        total = cnorm_dask.moments(x).compute()
        computed = time.perf_counter() - start
        print(f"out of core: wrote 4 GiB in {written:.1f} s, moments in {computed:.1f} s")
        assert total.count == shape[0] * 16 * 16
        # the single-process result over the whole file, and an in-memory sample
        expected = cnorm.moments(mapped)
        assert_close(total.mean, expected.mean, scale=np.sqrt(expected.var()), rtol_factor=0.1)
        assert_close(total.m2, expected.m2, rtol_factor=0.1)
        sample = np.array(mapped[:1024])
        sampled = cnorm_dask.moments(x[:1024]).compute()
        in_memory = cnorm.moments(sample)
        assert_close(sampled.m2, in_memory.m2, rtol_factor=0.1)
        y = cnorm_dask.batch_norm_inference(x, total.mean, total.var())
        np.testing.assert_array_equal(
            y[:8].compute(), cnorm.batch_norm_inference(sample[:8], total.mean, total.var()))
    finally:
        del mapped
        path.unlink()
