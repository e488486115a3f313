"""One OpenMP runtime per process, threadpoolctl, show_config and the version.

cnorm loads the OpenMP runtime its kernels link to into the global symbol
scope at import (cnorm/_openmp_runtime.py), so that beside PyTorch, whichever
is imported first, both use ONE runtime. Tests that depend on import order run
in a fresh interpreter each; tests that need torch skip without it (CI installs
it into the venv that tests the wheel).
"""
import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
import textwrap
import warnings

import numpy as np
import pytest

import cnorm
from cnorm import _config, _openmp, _openmp_runtime

linux_openmp = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and cnorm.openmp_enabled()),
    reason="the global-scope preload is done on Linux builds with OpenMP",
)
PARALLEL_SHAPE = (1, 56, 56, 64)  # 200704 elements: above the serial threshold


def run_python(code, tmp_path, **env):
    """Run `code` in a fresh interpreter outside the source tree; return its JSON."""
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("CNORM_OPENMP_GLOBAL", "OMP_NUM_THREADS")}
    environment.update(env)
    process = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path,
                             env=environment, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr
    return json.loads(process.stdout.strip().splitlines()[-1])


# --- this process -----------------------------------------------------------------------

@linux_openmp
def test_kernels_use_the_preloaded_global_runtime():
    runtimes = _config.openmp_runtimes()
    assert _openmp_runtime.loaded_path is not None, _openmp_runtime.status
    assert runtimes["cnorm"] is not None
    # Whatever else the process loaded, cnorm's kernels are bound to the runtime
    # every library loaded from now on binds to: one runtime in use.
    assert runtimes["cnorm"] == runtimes["global"]
    assert runtimes["cnorm"] in runtimes["loaded"]


@linux_openmp
def test_runtime_found_is_the_one_the_extension_links():
    runtime = _openmp_runtime.runtime_for(_openmp.__file__)
    assert runtime is not None and _openmp_runtime.is_openmp_runtime(runtime)
    if os.sep in runtime:  # vendored by auditwheel: found through the RUNPATH
        assert os.path.realpath(runtime) == _openmp_runtime.loaded_path


def test_version_comes_from_the_package_metadata():
    try:
        expected = importlib.metadata.version("cnorm")
    except importlib.metadata.PackageNotFoundError:
        expected = "0+unknown"
    assert cnorm.__version__ == expected


def test_show_config_lists_version_build_and_runtimes(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one runtime in use here: no warning
        cnorm.show_config()
    out = capsys.readouterr().out
    assert cnorm.__version__ in out
    for key in ("build.compile_args", "openmp.loaded_runtimes", "openmp.runtime_used",
                "openmp.preload", "max_threads"):
        assert key in out
    if sys.platform.startswith("linux") and cnorm.openmp_enabled():
        assert _config.openmp_runtimes()["cnorm"] in out


def test_show_config_dicts_returns_what_it_prints(capsys):
    info = cnorm.show_config(mode="dicts")
    assert capsys.readouterr().out == ""
    assert info["cnorm"] == cnorm.__version__
    assert info["isa_level"] == cnorm._dispatch.ISA_LEVEL
    with pytest.raises(ValueError, match="mode must be"):
        cnorm.show_config(mode="json")


def test_show_config_warns_when_two_runtimes_are_in_use(monkeypatch):
    two = {"loaded": ["/x/libgomp.so.1", "/y/libgomp-abc.so.1.0.0"],
           "cnorm": "/y/libgomp-abc.so.1.0.0", "global": "/x/libgomp.so.1", "preload": "off"}
    monkeypatch.setattr(_config, "openmp_runtimes", lambda: two)
    with pytest.warns(RuntimeWarning, match="2 OpenMP runtimes"):
        cnorm.show_config()
    shared = dict(two, cnorm="/x/libgomp.so.1")
    assert _config._runtime_warning(shared) is None  # the second one is shadowed


# --- threadpoolctl ----------------------------------------------------------------------

@linux_openmp
def test_threadpoolctl_sees_and_limits_cnorms_runtime():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    runtime = _config.openmp_runtimes()["cnorm"]
    openmp = [entry for entry in threadpoolctl.threadpool_info()
              if entry["user_api"] == "openmp"]
    assert runtime in [os.path.realpath(entry["filepath"]) for entry in openmp], openmp
    before = _openmp.max_threads()
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        assert _openmp.max_threads() == 1
        x = np.random.default_rng(1).standard_normal(PARALLEL_SHAPE, dtype=np.float32)
        np.testing.assert_array_equal(cnorm.lrn(x), cnorm.lrn(x, n_threads=1))
    assert _openmp.max_threads() == before


# --- fresh interpreters: opt-out and PyTorch --------------------------------------------

@linux_openmp
def test_opt_out_leaves_the_runtime_private(tmp_path):
    result = run_python("""
        import json, cnorm
        from cnorm import _config, _openmp_runtime
        r = _config.openmp_runtimes()
        print(json.dumps({"status": _openmp_runtime.status, "loaded": _openmp_runtime.loaded_path,
                          "cnorm": r["cnorm"], "global": r["global"]}))
    """, tmp_path, CNORM_OPENMP_GLOBAL="0")
    assert result["status"] == "not done: CNORM_OPENMP_GLOBAL=0"
    assert result["loaded"] is None
    assert result["cnorm"] is not None and result["cnorm"] != result["global"]


TORCH_CHILD = """
    import json, sys, warnings
    if sys.argv[1] == "cnorm-first":
        import cnorm, torch
    else:
        import torch, cnorm
    import numpy as np
    from cnorm import _config, _openmp
    r = _config.openmp_runtimes()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cnorm.show_config()
    default_threads = _openmp.max_threads()
    torch.set_num_threads(1)
    # Alternate a small torch op and a small parallel cnorm op: correct results
    # (the timing is benchmarks/openmp_coexistence.py's business, not a test's).
    t = torch.randn(1, 64, 56, 56)
    x = np.random.default_rng(0).standard_normal((1, 56, 56, 64), dtype=np.float32)
    expected = cnorm.lrn(x, n_threads=1)
    same = True
    for _ in range(20):
        torch.relu(t)
        same &= bool(np.array_equal(cnorm.lrn(x, n_threads=2), expected))
    print(json.dumps({"cnorm": r["cnorm"], "global": r["global"], "loaded": r["loaded"],
                      "warned": [str(w.message) for w in caught],
                      "default_threads": default_threads,
                      "threads_after_torch_limit": _openmp.max_threads(), "same": same}))
"""


@linux_openmp
@pytest.mark.parametrize("order", ["cnorm-first", "torch-first"])
def test_one_runtime_beside_torch(order, tmp_path):
    pytest.importorskip("torch")
    result = run_python(TORCH_CHILD.replace("sys.argv[1]", repr(order)), tmp_path)
    assert result["cnorm"] == result["global"], result
    assert result["warned"] == []
    # One runtime: torch's thread limit is cnorm's too.
    assert result["threads_after_torch_limit"] == 1, result
    assert result["same"]


@linux_openmp
def test_opt_out_beside_torch_gives_two_runtimes_and_a_warning(tmp_path):
    # The state the preload prevents, to show the tests above can fail.
    pytest.importorskip("torch")
    result = run_python(TORCH_CHILD.replace("sys.argv[1]", "'cnorm-first'"), tmp_path,
                        CNORM_OPENMP_GLOBAL="0")
    if len(result["loaded"]) == 1:
        # A build that links the system's libgomp.so.1 (an editable install, not the
        # wheel's vendored copy) shares torch's soname: the loader maps one runtime.
        pytest.skip("cnorm's OpenMP runtime has torch's soname: only one can be loaded")
    assert result["cnorm"] != result["global"], result
    assert len(result["warned"]) == 1 and "OpenMP runtimes" in result["warned"][0]
    if result["default_threads"] > 1:
        assert result["threads_after_torch_limit"] == result["default_threads"]
    assert result["same"]


# --- the installed package --------------------------------------------------------------

@pytest.mark.skipif(not os.environ.get("CNORM_TEST_INSTALLED"),
                    reason="set CNORM_TEST_INSTALLED=1 when testing an installed wheel")
def test_installed_wheel_is_what_is_imported():
    package = os.path.dirname(os.path.realpath(cnorm.__file__))
    site = os.path.realpath(sysconfig.get_paths()["platlib"])
    assert package == os.path.join(site, "cnorm"), (package, site)
    names = os.listdir(package)
    assert not [n for n in names if n.endswith((".pyx", ".pxd", ".c", ".o"))], names
    assert {"py.typed", "_lrn.pyi", "_openmp.pyi"} <= set(names)
    if sys.platform.startswith("linux") and cnorm.openmp_enabled():
        # auditwheel vendored the runtime, and that copy is the one in use.
        assert os.path.dirname(_openmp_runtime.loaded_path) == os.path.join(site, "cnorm.libs")
        assert _config.openmp_runtimes()["cnorm"] == _openmp_runtime.loaded_path
    with pytest.raises(ImportError):
        import Cython  # noqa: F401  (the wheel must work without the build tools)
