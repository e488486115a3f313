"""Pick, once at import, the kernel build that matches this CPU.

setup.py compiles each kernel module (``cnorm._lrn``, ...) at the baseline ISA
and, on x86-64, again with ``-march=x86-64-v3`` (AVX2, FMA) and
``-march=x86-64-v4`` (AVX-512) as ``cnorm._lrn_x86_64_v3`` and so on. This
module imports the best one the CPU runs. ``CNORM_ISA`` in the environment
overrides the choice: ``baseline``, ``x86-64-v3`` or ``x86-64-v4`` (a level the
CPU lacks falls back, with a warning, to the best it has).

The ISA levels give the same results within the documented tolerance but not
bit for bit (v3 and v4 contract multiply-adds into FMA); each is bit-identical
across thread counts.
"""
import contextlib
import importlib
import os
import warnings

from cnorm import _openmp, _tuning

LEVELS = ("baseline", "x86-64-v3", "x86-64-v4")
_SUFFIX = {"baseline": "", "x86-64-v3": "_x86_64_v3", "x86-64-v4": "_x86_64_v4"}
_CPU_LEVEL = {"baseline": 0, "x86-64-v3": 3, "x86-64-v4": 4}


def _built(level, module):
    try:
        built = importlib.import_module(f"cnorm.{module}{_SUFFIX[level]}")
    except ImportError:
        return None
    return _tuning.configure(built) if hasattr(built, "TUNING_NAMES") else built


def _choose():
    """Return the ISA level kernels are loaded for, honouring CNORM_ISA."""
    cpu = _openmp.cpu_level()
    runnable = [level for level in LEVELS if _CPU_LEVEL[level] <= cpu]
    requested = os.environ.get("CNORM_ISA", "auto").strip().lower() or "auto"
    if requested == "auto":
        candidates = runnable
    elif requested in LEVELS:
        candidates = [level for level in runnable if LEVELS.index(level) <= LEVELS.index(requested)]
        if requested not in runnable:
            warnings.warn(f"CNORM_ISA={requested}: this CPU does not support it; using "
                          f"the best level it supports", RuntimeWarning, stacklevel=3)
    else:
        raise ImportError(f"CNORM_ISA must be one of auto, {', '.join(LEVELS)}; got {requested!r}")
    for level in reversed(candidates):
        if _built(level, "_lrn") is not None:
            return level
    return "baseline"


ISA_LEVEL = _choose()


def kernels(module):
    """Return the kernel module `module` (e.g. "_lrn") built for ISA_LEVEL."""
    built = _built(ISA_LEVEL, module) or _built("baseline", module)
    return built if built is not None else importlib.import_module(f"cnorm.{module}")


def cpu_best_level():
    """The best of LEVELS that this CPU runs, built or not."""
    cpu = _openmp.cpu_level()
    return [level for level in LEVELS if _CPU_LEVEL[level] <= cpu][-1]


def available_levels():
    """The ISA levels that are built and that this CPU runs, lowest first."""
    cpu = _openmp.cpu_level()
    return [level for level in LEVELS if _CPU_LEVEL[level] <= cpu
            and _built(level, "_lrn") is not None and _built(level, "_batchnorm") is not None]


@contextlib.contextmanager
def using(level):
    """Within the block, the public functions call the kernels built for `level`.

    For the tests, which run every build the CPU can run in one process (not
    thread-safe: the public modules' kernel bindings are swapped).
    """
    lrn = importlib.import_module("cnorm.lrn")  # the modules, not cnorm's functions of the name
    batchnorm = importlib.import_module("cnorm.batchnorm")
    saved = lrn._lrn, batchnorm._bn
    lrn._lrn, batchnorm._bn = _built(level, "_lrn"), _built(level, "_batchnorm")
    try:
        yield level
    finally:
        lrn._lrn, batchnorm._bn = saved
