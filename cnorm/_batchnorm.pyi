# Stub for the compiled module cnorm._batchnorm (cnorm/_batchnorm.pyx); the ISA
# copies cnorm._batchnorm_x86_64_v3/_v4 have the same signatures. Tensors are
# C-contiguous (M, C) float32 or float64, all of one dtype; per-channel arrays are
# float64 of shape (C,); the caller validates them.
from typing import TypeVar

import numpy as np
import numpy.typing as npt

_Float = TypeVar("_Float", np.float32, np.float64)
_Channels = npt.NDArray[np.float64]

def n_chunks(n_rows: int, n_channels: int) -> int: ...
def affine(
    x: npt.NDArray[_Float],
    y: npt.NDArray[_Float],
    center: _Channels,
    scale: _Channels,
    shift: _Channels,
    reverse: bool,
    n_threads: int,
) -> None: ...
def backward_apply(
    dy: npt.NDArray[_Float],
    x: npt.NDArray[_Float],
    dx: npt.NDArray[_Float],
    center: _Channels,
    dy_scale: _Channels,
    x_scale: _Channels,
    shift: _Channels,
    n_threads: int,
) -> None: ...
def batch_stats(x: npt.NDArray[_Float], mean: _Channels, var: _Channels, n_threads: int) -> None: ...
def backward_sums(
    dy: npt.NDArray[_Float],
    x: npt.NDArray[_Float],
    center: _Channels,
    sum_dy: _Channels,
    sum_dy_centered: _Channels,
    n_threads: int,
) -> None: ...
