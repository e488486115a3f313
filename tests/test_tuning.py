"""The kernels' tuning numbers (cnorm._tuning): from the machine's caches,
CNORM_TUNING overrides, each path forced and checked, the same bits for any
thread count under any setting."""
import os
import subprocess
import sys

import numpy as np
import pytest

import cnorm
from cnorm import _dispatch, _tuning, reference


def test_sizes_parse_as_sysfs_and_users_write_them():
    assert _tuning.parse_size("491520K\n") == 480 * 2**20
    assert _tuning.parse_size("32M") == 32 * 2**20
    assert _tuning.parse_size("2g") == 2 * 2**30
    assert _tuning.parse_size("4096") == 4096
    assert _tuning.parse_size("32 MiB") is None and _tuning.parse_size("-1") is None


def test_caches_are_level_2_and_the_highest_data_or_unified_level(tmp_path):
    for index, (level, kind, size) in enumerate(
            [(1, "Data", "48K"), (1, "Instruction", "64K"), (2, "Unified", "2048K"),
             (3, "Unified", "32768K")]):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (folder / name).write_text(f"{value}\n")
    assert _tuning.cache_sizes(str(tmp_path / "index*")) == {"l2": 2 * 2**20, "llc": 32 * 2**20}
    assert _tuning.cache_sizes(str(tmp_path / "none*")) == {}


BN_DEFAULTS = {"stream_bytes": 32 * 2**20, "reread_stream_bytes": 16 * 2**20,
               "chunk_elements": 16384, "group_chunk_bytes": 512 * 2**10,
               "planar_tile_values": 65536}


def test_numbers_follow_the_caches_and_the_environment():
    kernels = _dispatch.kernels("_batchnorm")
    assert _tuning.defaults(kernels) == BN_DEFAULTS
    assert _tuning.defaults(_dispatch.kernels("_lrn")) == {
        "lrn_chunk_elements": 16384, "lrn_plane_tile_values": 65536}
    assert _tuning.settings(BN_DEFAULTS, None, {}) == BN_DEFAULTS
    # Larger caches (this Xeon: 2 MiB of L2, 480 MiB of L3) keep the defaults.
    assert _tuning.settings(BN_DEFAULTS, {"l2": 2 * 2**20, "llc": 480 * 2**20}, {}) == BN_DEFAULTS
    # Smaller ones lower them: 256 KiB of L2, 8 MiB of L3.
    assert _tuning.settings(BN_DEFAULTS, {"l2": 256 * 2**10, "llc": 8 * 2**20}, {}) == {
        "stream_bytes": 8 * 2**20, "reread_stream_bytes": 4 * 2**20, "chunk_elements": 8192,
        "group_chunk_bytes": 128 * 2**10, "planar_tile_values": 32768}
    assert _tuning.settings({"lrn_plane_tile_values": 65536}, {"l2": 256 * 2**10}, {}) == {
        "lrn_plane_tile_values": 16384}
    assert _tuning.settings(BN_DEFAULTS, {"llc": 480 * 2**20}, {
        _tuning.ENV_VAR: " stream_bytes = 1M , chunk_elements=4K,lrn_chunk_elements=1"}) == {
        **BN_DEFAULTS, "stream_bytes": 2**20, "chunk_elements": 4096}
    with pytest.raises(ImportError, match="CNORM_TUNING: unknown name 'stream'"):
        _tuning.settings(BN_DEFAULTS, None, {_tuning.ENV_VAR: "stream=1M"})
    with pytest.raises(ImportError, match="CNORM_TUNING: reread_stream_bytes must be a size"):
        _tuning.settings(BN_DEFAULTS, None, {_tuning.ENV_VAR: "reread_stream_bytes=lots"})
    with pytest.raises(ImportError, match="CNORM_TUNING: planar_tile_values .* at least 16"):
        _tuning.settings(BN_DEFAULTS, None, {_tuning.ENV_VAR: "planar_tile_values=8"},
                         _tuning.smallest(kernels))


def test_every_build_is_configured_at_import():
    for kernels in ("_batchnorm", "_lrn"):
        expected = _tuning.settings(_tuning.defaults(_dispatch.kernels(kernels)),
                                    _tuning.cache_sizes(),
                                    least=_tuning.smallest(_dispatch.kernels(kernels)))
        for level in _dispatch.available_levels():
            assert _tuning.current(_dispatch._built(level, kernels)) == expected
        config = cnorm._config.config()
        for name, value in expected.items():
            assert config[f"tuning.{name}"] == value


def test_a_wrong_setting_fails_the_import():
    for setting, message in (("chunk_elements=0", "chunk_elements must be a size"),
                             ("planar_tile_values=2G", "planar_tile_values must be from 16"),
                             ("stream=1", "unknown name 'stream'")):
        result = subprocess.run([sys.executable, "-c", "import cnorm"], capture_output=True,
                                text=True, env=dict(os.environ, CNORM_TUNING=setting))
        assert result.returncode != 0
        assert "ImportError: CNORM_TUNING" in result.stderr and message in result.stderr


def test_any_setting_gives_the_same_bits():
    # A run that streams every float32 output (thresholds of 0 bytes, outputs
    # resident) and one that streams none (1 GiB): training, backward and
    # inference of a tensor with a ragged C, the same bits.
    script = """if True:
        import numpy as np, cnorm, sys
        rng = np.random.default_rng(5)
        x = rng.standard_normal((3000, 37)).astype(np.float32)
        dy = rng.standard_normal(x.shape).astype(np.float32)
        g, b = rng.uniform(0.5, 1.5, 37), rng.standard_normal(37)
        out = [np.full_like(x, np.nan) for _ in range(3)]
        y, mean, invstd = cnorm.batch_norm_training(x, g, b, out=out[0], n_threads=2)
        dx = cnorm.batch_norm_backward(dy, x, mean, invstd, g, out=out[1], n_threads=2)[0]
        z = cnorm.batch_norm_inference(x, mean, 1 / invstd**2, g, b, out=out[2], n_threads=2)
        sys.stdout.buffer.write(b"".join(a.tobytes() for a in (y, mean, invstd, dx, z)))
    """
    results = []
    for setting in ("stream_bytes=0,reread_stream_bytes=0",
                    "stream_bytes=1G,reread_stream_bytes=1G"):
        env = dict(os.environ, CNORM_TUNING=setting)
        results.append(subprocess.run([sys.executable, "-c", script], env=env, check=True,
                                      capture_output=True).stdout)
    assert len(results[0]) > 0 and results[0] == results[1]


def test_set_tuning_refuses_what_the_kernels_cannot_take():
    module = _dispatch.kernels("_batchnorm")
    before = module.tuning()
    with pytest.raises(ValueError, match="stream_bytes must be from 0"):
        _tuning.override(module, stream_bytes=-1)
    with pytest.raises(ValueError, match="chunk_elements must be from 1"):
        _tuning.override(module, chunk_elements=0)
    with pytest.raises(TypeError, match="chunk_elements must be an int, got float"):
        _tuning.override(module, chunk_elements=1.5)
    with pytest.raises(ValueError, match="has no tuning number 'chunk'"):
        _tuning.override(module, chunk=1)
    with pytest.raises(TypeError, match="set_tuning takes 5 values"):
        module.set_tuning(0, 0)
    assert module.tuning() == before


# Settings far from the defaults, each forcing other chunks, tiles, walks and
# stores: tiny chunks and tiles (many partial sums), huge ones (one chunk),
# and the defaults.
SETTINGS = [
    dict(chunk_elements=1, planar_tile_values=16, group_chunk_bytes=0, stream_bytes=0,
         reread_stream_bytes=0, lrn_chunk_elements=1, lrn_plane_tile_values=16),
    dict(chunk_elements=2**30, planar_tile_values=2**20, group_chunk_bytes=2**40,
         stream_bytes=2**40, reread_stream_bytes=2**40, lrn_chunk_elements=2**30,
         lrn_plane_tile_values=2**30),
    {},
]


@pytest.fixture(params=range(len(SETTINGS)), ids=["small", "large", "defaults"])
def setting(request, isa):
    modules = [_dispatch.kernels(kernels) for kernels in ("_batchnorm", "_lrn")]
    saved = []
    for module in modules:
        names = [name for name in SETTINGS[request.param] if name in module.TUNING_NAMES]
        saved.append(_tuning.override(module, **{
            name: SETTINGS[request.param][name] for name in names}))
    try:
        yield SETTINGS[request.param]
    finally:
        for module, previous in zip(modules, saved):
            _tuning.override(module, **previous)


@pytest.mark.parametrize("shape, axis", [((300, 37), -1), ((4, 24, 9, 11), 1),
                                         ((2, 7, 130), 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_every_setting_computes_the_reference_with_any_thread_count(setting, shape, axis,
                                                                    dtype):
    rng = np.random.default_rng(11)
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    n_channels = shape[axis]
    gamma = rng.uniform(0.5, 1.5, n_channels)
    beta = rng.standard_normal(n_channels)
    tolerance = {np.float64: 1e-12, np.float32: 2e-5, np.float16: 2e-3}[dtype]
    results = []
    for n_threads in (1, 2, 3):
        y, mean, invstd = cnorm.batch_norm_training(x, gamma, beta, axis=axis,
                                                    n_threads=n_threads)
        dx, dgamma, dbeta = cnorm.batch_norm_backward(dy, x, mean, invstd, gamma, axis=axis,
                                                      n_threads=n_threads)
        z = cnorm.lrn(x, depth_radius=2, bias=1.0, alpha=1.0, beta=0.75, axis=axis,
                      n_threads=n_threads)
        dz = cnorm.lrn_backward(dy, x, depth_radius=2, bias=1.0, alpha=1.0, beta=0.75,
                                axis=axis, n_threads=n_threads)
        results.append([np.asarray(a) for a in (y, mean, invstd, dx, dgamma, dbeta, z, dz)])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert a.tobytes() == b.tobytes()
    y, mean, invstd, dx, dgamma, dbeta, z, dz = results[0]
    ref_y, ref_mean, ref_invstd = reference.batch_norm_training(x, gamma, beta, axis=axis)
    ref_dx, ref_dgamma, ref_dbeta = reference.batch_norm_backward(dy, x, ref_mean, ref_invstd,
                                                                  gamma, axis=axis)
    np.testing.assert_allclose(mean, ref_mean, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(invstd, ref_invstd, rtol=tolerance)
    np.testing.assert_allclose(y.astype(np.float64), ref_y, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(dx.astype(np.float64), ref_dx, rtol=tolerance,
                               atol=tolerance * 10)
    np.testing.assert_allclose(dgamma, ref_dgamma, rtol=tolerance, atol=tolerance * 10)
    np.testing.assert_allclose(dbeta, ref_dbeta, rtol=tolerance, atol=tolerance * 10)
    ref_z = reference.lrn(x, depth_radius=2, bias=1.0, alpha=1.0, beta=0.75, axis=axis)
    ref_dz = reference.lrn_backward(dy, x, depth_radius=2, bias=1.0, alpha=1.0, beta=0.75,
                                    axis=axis)
    np.testing.assert_allclose(z.astype(np.float64), ref_z, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(dz.astype(np.float64), ref_dz, rtol=tolerance,
                               atol=tolerance * 10)


def test_lrn_tiles_do_not_change_a_bit(isa):
    # LRN's value at a point does not depend on its chunk or tile.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 40, 17, 19)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    module = _dispatch.kernels("_lrn")
    results = []
    for values in ({}, {"lrn_chunk_elements": 1, "lrn_plane_tile_values": 16},
                   {"lrn_chunk_elements": 2**30, "lrn_plane_tile_values": 2**30}):
        previous = _tuning.override(module, **values)
        try:
            results.append(b"".join(np.asarray(a).tobytes() for axis in (1, -1) for a in (
                cnorm.lrn(x, depth_radius=3, alpha=1.0, bias=0.5, axis=axis),
                cnorm.lrn_backward(dy, x, depth_radius=3, alpha=1.0, bias=0.5, axis=axis))))
        finally:
            _tuning.override(module, **previous)
    assert results[0] == results[1] == results[2]
