"""Build and runtime facts: show_config() and openmp_enabled()."""
import platform
import sys

from cnorm import _dispatch, _openmp


def openmp_enabled():
    """Return True if cnorm's kernels were built with OpenMP."""
    return _openmp.openmp_enabled()


def _build_info():
    try:
        from cnorm._build_info import BUILD_INFO
    except ImportError:  # built by something other than setup.py
        return {}
    return dict(BUILD_INFO)


def config():
    """Return the facts show_config prints, as a dict."""
    import numpy

    import cnorm

    info = {
        "cnorm": cnorm.__version__,
        "python": sys.version.split()[0],
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "isa_level": _dispatch.ISA_LEVEL,
        "cpu_level": _openmp.cpu_level(),
        "openmp": openmp_enabled(),
        "max_threads": _openmp.max_threads(),
    }
    info.update({f"build.{key}": value for key, value in _build_info().items()})
    return info


def show_config():
    """Print cnorm's version, build flags and OpenMP state."""
    for key, value in config().items():
        print(f"{key:24s} {value}")
