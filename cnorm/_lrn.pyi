# Stub for the compiled module cnorm._lrn (cnorm/_lrn.pyx); the ISA copies
# cnorm._lrn_x86_64_v3/_v4 have the same signatures. Arrays are C-contiguous, all
# of one dtype: float32 or float64 (M, C) for lrn_forward and lrn_backward; for
# run, any storage type (``storage``: the codes of cnorm/_storage.h; bfloat16 as
# a uint16 view) seen as (outer, n_channels, inner). The caller validates them.
from typing import TypeVar

import numpy as np
import numpy.typing as npt

_Float = TypeVar("_Float", np.float32, np.float64)
_Tensor = npt.NDArray[np.float64] | npt.NDArray[np.float32] | npt.NDArray[np.float16] | npt.NDArray[np.uint16]

TUNING_NAMES: tuple[str, ...]  # see cnorm._tuning
DEFAULT_TUNING: tuple[int, ...]
TUNING_RANGES: tuple[tuple[int, int], ...]

def set_tuning(*values: int) -> tuple[int, ...]: ...
def tuning() -> tuple[int, ...]: ...
def n_chunks(n_rows: int, n_channels: int) -> int: ...
def float_square_limit(a: float, k: float, beta: float, width: int) -> float: ...
def plane_block(n_channels: int, inner: int, outer: int = ...) -> int: ...
def power_float32(d: npt.NDArray[np.float32], exponent: float, out: npt.NDArray[np.float32]) -> None: ...
def lrn_forward(
    x: npt.NDArray[_Float],
    y: npt.NDArray[_Float],
    before: int,
    after: int,
    a: float,
    k: float,
    beta: float,
    n_threads: int,
) -> None: ...
def lrn_backward(
    dy: npt.NDArray[_Float],
    x: npt.NDArray[_Float],
    dx: npt.NDArray[_Float],
    before: int,
    after: int,
    a: float,
    k: float,
    beta: float,
    n_threads: int,
) -> None: ...
def run(
    x: _Tensor,
    dy: _Tensor | None,
    y: _Tensor,
    before: int,
    after: int,
    a: float,
    k: float,
    beta: float,
    n_threads: int,
    storage: int,
    outer: int,
    n_channels: int,
    inner: int,
) -> None: ...
