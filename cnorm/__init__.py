"""cnorm: local response and batch normalization for channels-last tensors.

Kernels in Cython with OpenMP; NumPy is the only runtime dependency.
"""
from cnorm._config import openmp_enabled, show_config
from cnorm.batchnorm import batch_norm_backward, batch_norm_inference, batch_norm_training
from cnorm.lrn import local_response_norm, local_response_norm_backward, lrn, lrn_backward

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "batch_norm_backward",
    "batch_norm_inference",
    "batch_norm_training",
    "local_response_norm",
    "local_response_norm_backward",
    "lrn",
    "lrn_backward",
    "openmp_enabled",
    "show_config",
]
