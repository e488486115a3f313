# Stub for the compiled module cnorm._batchnorm (cnorm/_batchnorm.pyx); the ISA
# copies cnorm._batchnorm_x86_64_v3/_v4 have the same signatures. Tensors are
# C-contiguous float32 or float64, all of one dtype, channels last (affine: (M, C);
# the others: any ndim); per-channel arrays are float64 of shape (C,); the caller
# validates them.
from typing import TypeVar

import numpy as np
import numpy.typing as npt

_Float = TypeVar("_Float", np.float32, np.float64)
_Channels = npt.NDArray[np.float64]

def n_chunks(n_rows: int, n_channels: int) -> int: ...
def streams(tensors: int, n_rows: int, n_channels: int, item_size: int,
            reread: bool = ...) -> bool: ...
def reduction_order(stats: bool, n_rows: int, n_channels: int, item_size: int) -> str: ...
def affine(
    x: npt.NDArray[_Float],
    y: npt.NDArray[_Float],
    center: _Channels,
    scale: _Channels,
    shift: _Channels,
    reverse: bool,
    n_threads: int,
) -> None: ...
def batch_stats(x: npt.NDArray[_Float], mean: _Channels, var: _Channels, n_threads: int) -> None: ...
def normalize(
    x: npt.NDArray[_Float],
    y: npt.NDArray[_Float],
    mean: _Channels,
    var: _Channels,
    gamma: _Channels | None,
    beta: _Channels | None,
    eps: float,
    invstd: _Channels | None,
    reverse: bool,
    n_threads: int,
) -> None: ...
def backward(
    dy: npt.NDArray[_Float],
    x: npt.NDArray[_Float],
    dx: npt.NDArray[_Float],
    mean: _Channels,
    invstd: _Channels,
    gamma: _Channels | None,
    training: bool,
    dgamma: _Channels,
    dbeta: _Channels,
    n_threads: int,
) -> None: ...
