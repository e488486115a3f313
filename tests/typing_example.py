"""A small typed use of cnorm that `mypy` must accept (run by .ci/run).

Checks that the stubs (cnorm/_lrn.pyi, cnorm/_openmp.pyi) and py.typed ship
with the installed package. Not a test module: pytest does not collect it.
"""
import numpy as np
import numpy.typing as npt

import cnorm
from cnorm import _lrn, _openmp


def normalize(x: npt.NDArray[np.float32], n_threads: int | None = None) -> npt.NDArray[np.float32]:
    y: npt.NDArray[np.float32] = cnorm.lrn(x, depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75,
                                           n_threads=n_threads)
    return y


def raw_kernel(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    flat = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))
    out = np.empty_like(flat)
    _lrn.lrn_forward(flat, out, 2, 2, 1e-4, 2.0, 0.75, _openmp.max_threads())
    return out.reshape(x.shape)


threads: int = _openmp.max_threads()
enabled: bool = _openmp.openmp_enabled()
level: int = _openmp.cpu_level()
chunks: int = _lrn.n_chunks(100, 64)
version: str = cnorm.__version__
normalize(np.ones((1, 4, 4, 8), dtype=np.float32))
raw_kernel(np.ones((2, 3, 5)))

from cnorm import _batchnorm  # noqa: E402

bn_chunks: int = _batchnorm.n_chunks(100, 64)


def batch_norm_raw(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    flat = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))
    n_channels = flat.shape[1]
    mean = np.empty(n_channels)
    var = np.empty(n_channels)
    _batchnorm.batch_stats(flat, mean, var, 1, 1, flat.shape[0], n_channels, 1)
    out = np.empty_like(flat)
    _batchnorm.affine(flat, out, mean, 1 / np.sqrt(var + 1e-5), np.zeros(n_channels), True, 1)
    return out.reshape(x.shape)
