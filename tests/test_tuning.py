"""The kernels' cache thresholds (cnorm._tuning): from the machine's
last-level cache, CNORM_TUNING overrides, and the same bits under any."""
import os
import subprocess
import sys

import numpy as np
import pytest

import cnorm
from cnorm import _dispatch, _tuning


def test_sizes_parse_as_sysfs_and_users_write_them():
    assert _tuning.parse_size("491520K\n") == 480 * 2**20
    assert _tuning.parse_size("32M") == 32 * 2**20
    assert _tuning.parse_size("2g") == 2 * 2**30
    assert _tuning.parse_size("4096") == 4096
    assert _tuning.parse_size("32 MiB") is None and _tuning.parse_size("-1") is None


def test_last_level_cache_is_the_highest_data_or_unified_level(tmp_path):
    for index, (level, kind, size) in enumerate(
            [(1, "Data", "48K"), (1, "Instruction", "64K"), (2, "Unified", "2048K"),
             (3, "Unified", "32768K")]):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (folder / name).write_text(f"{value}\n")
    assert _tuning.last_level_cache_bytes(str(tmp_path / "index*")) == 32 * 2**20
    assert _tuning.last_level_cache_bytes(str(tmp_path / "none*")) is None


def test_thresholds_follow_the_cache_and_the_environment():
    defaults = (32 * 2**20, 16 * 2**20)
    assert _tuning.thresholds(defaults, None, {}) == {
        "stream_bytes": 32 * 2**20, "reread_stream_bytes": 16 * 2**20}
    assert _tuning.thresholds(defaults, 480 * 2**20, {}) == {
        "stream_bytes": 32 * 2**20, "reread_stream_bytes": 16 * 2**20}
    assert _tuning.thresholds(defaults, 8 * 2**20, {}) == {
        "stream_bytes": 8 * 2**20, "reread_stream_bytes": 4 * 2**20}
    assert _tuning.thresholds(defaults, 480 * 2**20, {_tuning.ENV_VAR: " stream_bytes = 1M "}) == {
        "stream_bytes": 2**20, "reread_stream_bytes": 16 * 2**20}
    with pytest.raises(ImportError, match="CNORM_TUNING: unknown name 'stream'"):
        _tuning.thresholds(defaults, None, {_tuning.ENV_VAR: "stream=1M"})
    with pytest.raises(ImportError, match="CNORM_TUNING: reread_stream_bytes must be a size"):
        _tuning.thresholds(defaults, None, {_tuning.ENV_VAR: "reread_stream_bytes=lots"})


def test_every_build_is_configured_at_import():
    expected = _tuning.thresholds(_dispatch.kernels("_batchnorm").DEFAULT_TUNING,
                                  _tuning.last_level_cache_bytes())
    for level in _dispatch.available_levels():
        module = _dispatch._built(level, "_batchnorm")
        assert module.tuning() == (expected["stream_bytes"], expected["reread_stream_bytes"])
    config = cnorm._config.config()
    assert config["tuning.stream_bytes"] == expected["stream_bytes"]


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


def test_set_tuning_refuses_negative_sizes():
    module = _dispatch.kernels("_batchnorm")
    with pytest.raises(ValueError, match=">= 0 bytes"):
        module.set_tuning(-1, 0)
    assert np.all(np.array(module.tuning()) >= 0)
