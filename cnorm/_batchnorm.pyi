# Stub for the compiled module cnorm._batchnorm (cnorm/_batchnorm.pyx); the ISA
# copies cnorm._batchnorm_x86_64_v3/_v4 have the same signatures. Tensors are
# C-contiguous, all of one storage type (``storage``: the codes of
# cnorm/_storage.h; float16 as is, bfloat16 as a uint16 view), seen as
# (outer, n_channels, inner) (affine: float32/float64 (M, C)); per-channel arrays
# are float64 of shape (C,); the caller validates them.
from typing import TypeVar

import numpy as np
import numpy.typing as npt

_Float = TypeVar("_Float", np.float32, np.float64)
_Tensor = npt.NDArray[np.float64] | npt.NDArray[np.float32] | npt.NDArray[np.float16] | npt.NDArray[np.uint16]
_Channels = npt.NDArray[np.float64]

TUNING_NAMES: tuple[str, ...]  # see cnorm._tuning
DEFAULT_TUNING: tuple[int, ...]
TUNING_RANGES: tuple[tuple[int, int], ...]
NORMALIZE_PLAIN: object  # a PyCapsule: the address of _normalize_plain, for cnorm._layers

def set_tuning(*values: int) -> tuple[int, ...]: ...
def tuning() -> tuple[int, ...]: ...
def pages_resident(array: npt.NDArray[np.generic]) -> bool: ...
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
def grid(storage: int, outer: int, channels: int, inner: int) -> tuple[int, int, int]: ...
def batch_stats(x: _Tensor, mean: _Channels, var: _Channels, n_threads: int, storage: int,
                outer: int, n_channels: int, inner: int) -> bool: ...
def normalize(
    x: _Tensor,
    y: _Tensor,
    mean: _Channels,
    var: _Channels,
    gamma: _Channels | None,
    beta: _Channels | None,
    eps: float,
    invstd: _Channels | None,
    reverse: bool,
    n_threads: int,
    storage: int,
    outer: int,
    n_channels: int,
    inner: int,
    residual: _Tensor | None = ...,
    relu: bool = ...,
) -> None: ...
def backward(
    dy: _Tensor,
    x: _Tensor,
    dx: _Tensor | None,
    mean: _Channels,
    invstd: _Channels,
    gamma: _Channels | None,
    training: bool,
    dgamma: _Channels,
    dbeta: _Channels,
    n_threads: int,
    storage: int,
    outer: int,
    n_channels: int,
    inner: int,
    sums_given: bool = ...,
    count: int = ...,
    relu: bool = ...,
    beta: _Channels | None = ...,
) -> bool: ...
