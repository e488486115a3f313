# Stub for the compiled module cnorm._lrn (cnorm/_lrn.pyx); the ISA copies
# cnorm._lrn_x86_64_v3/_v4 have the same signatures. Arrays are C-contiguous
# float32 or float64, all of one dtype, channels last ((M, C) for lrn_forward and
# lrn_backward, any ndim for run); the caller validates them.
from typing import TypeVar

import numpy as np
import numpy.typing as npt

_Float = TypeVar("_Float", np.float32, np.float64)

def n_chunks(n_rows: int, n_channels: int) -> int: ...
def float_square_limit(a: float, k: float, beta: float, width: int) -> float: ...
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
    x: npt.NDArray[_Float],
    dy: npt.NDArray[_Float] | None,
    y: npt.NDArray[_Float],
    before: int,
    after: int,
    a: float,
    k: float,
    beta: float,
    n_threads: int,
) -> None: ...
