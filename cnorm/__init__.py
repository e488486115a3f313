"""cnorm: local response and batch normalization for channels-last tensors.

Kernels in Cython with OpenMP; NumPy is the only runtime dependency.
"""
# First, before any extension module: put cnorm's OpenMP runtime into the
# global symbol scope so that cnorm and PyTorch (or any other OpenMP user)
# share one runtime whichever is imported first. CNORM_OPENMP_GLOBAL=0 opts
# out. See cnorm/_openmp_runtime.py.
from cnorm import _openmp_runtime

_openmp_runtime.preload()

from cnorm._config import openmp_enabled, show_config  # noqa: E402
from cnorm.batchnorm import (  # noqa: E402
    batch_norm_backward,
    batch_norm_backward_sums,
    batch_norm_inference,
    batch_norm_training,
)
from cnorm.folding import fold_batch_norm  # noqa: E402
from cnorm.lrn import local_response_norm, local_response_norm_backward, lrn, lrn_backward  # noqa: E402
from cnorm.layers import BatchNorm, LocalResponseNorm  # noqa: E402
from cnorm.moments import Moments, moments  # noqa: E402


def _version():
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cnorm")
    except PackageNotFoundError:  # a source checkout that was never installed
        return "0+unknown"


__version__ = _version()

__all__ = [
    "Moments",
    "__version__",
    "BatchNorm",
    "LocalResponseNorm",
    "batch_norm_backward",
    "batch_norm_backward_sums",
    "batch_norm_inference",
    "batch_norm_training",
    "fold_batch_norm",
    "local_response_norm",
    "local_response_norm_backward",
    "lrn",
    "lrn_backward",
    "moments",
    "openmp_enabled",
    "show_config",
]
