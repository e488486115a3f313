# Stub for the compiled module cnorm._layers (cnorm/_layers.pyx): the fast paths
# of cnorm.layers. `infer` returns the output, or None when the caller must take
# the checked path of the public functions.
from typing import Any, Callable

import numpy as np
import numpy.typing as npt

class _BatchNormPlan:
    eps: float
    affine: bool
    fast: bool
    relu: bool
    axis: int
    vectors: tuple[Any, ...] | None
    last: tuple[Any, ...] | None
    record: bool
    def __init__(self, state: Any, kernels: Any, eps: float, affine: bool, fast: bool,
                 axis: int) -> None: ...
    def refresh(self) -> tuple[Any, ...]: ...
    def infer(self, x: Any, out: Any, n_threads: Any) -> Any: ...
    def infer_tensor(self, x: Any, empty_like: Callable[[Any], Any], storage: int,
                     n_threads: Any, large: Callable[[Any], Any] | None = ...,
                     large_bytes: int = ...) -> Any: ...


class _LocalResponseNormPlan:
    before: int
    after: int
    a: float
    k: float
    beta: float
    axis: int
    last: tuple[Any] | None
    def __init__(self, run: Callable[..., None], before: int, after: int, a: float, k: float,
                 beta: float, axis: int) -> None: ...
    def infer(self, x: Any, out: Any, n_threads: Any) -> Any: ...
