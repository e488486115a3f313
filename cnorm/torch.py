"""cnorm inside a PyTorch model: drop-in modules with autograd, and `convert`.

Imported on its own (``import cnorm.torch``); ``import cnorm`` never imports
torch. Needs torch (and ml_dtypes for bfloat16 tensors): ``pip install
"cnorm[torch]"``.

- `BatchNorm1d`, `BatchNorm2d`, `BatchNorm3d` and `LocalResponseNorm` are
  subclasses of torch's modules of the same names. Their constructor
  arguments, parameters, buffers, ``state_dict`` keys, ``train()``/``eval()``
  and input checks are torch's own, inherited: only ``forward`` differs, and
  it runs cnorm's kernels. A checkpoint of either loads into the other.
- `convert` turns every ``torch.nn.BatchNorm1d/2d/3d`` and
  ``torch.nn.LocalResponseNorm`` of a model into these modules; `restore`
  undoes it.

The forward and the backward run on NumPy views of the tensors (no copy): an
NCHW-contiguous tensor is read with its channels on axis 1, a
``channels_last`` one in its own memory order, and the output has the
input's layout. Any other strides are copied once, inside cnorm. float32,
float64, float16 and bfloat16 CPU tensors are computed in their own storage
type (half data in float32 arithmetic, rounded once), the statistics in
float64. Gradients flow to the input, the weight and the bias; dgamma and
dbeta come back in the parameter's dtype. The running statistics are updated
in place in the module's buffers, as torch does, with torch's momentum
(``momentum=None``: the cumulative average over ``num_batches_tracked``) and
its unbiased running variance.

Threads: each call passes ``torch.get_num_threads()`` to cnorm, so cnorm
follows ``torch.set_num_threads``; cnorm and torch share one OpenMP runtime
(see the threads guide). Results are the same bits for any thread count.

Not supported: CUDA and other devices (a ValueError), double backward (the
backward is ``once_differentiable``), ``torch.jit.script`` (use the eager
model, or ``restore`` before scripting).
"""
import copy

import numpy as np

try:
    import torch
    from torch.autograd.function import once_differentiable
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError('cnorm.torch needs torch: pip install "cnorm[torch]"') from error

import cnorm
from cnorm import _layout
from cnorm._layers import _BatchNormPlan

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LocalResponseNorm", "convert",
           "restore"]

# ---------------------------------------------------------------------------
# Tensors as NumPy views and back

_NUMPY_FLOATS = (torch.float32, torch.float64, torch.float16)
_DTYPE_NAMES = "float32, float64, float16 or bfloat16"


def _bfloat16():
    try:
        import ml_dtypes
    except ImportError as error:
        raise TypeError(
            'bfloat16 tensors need ml_dtypes (cnorm reads them as ml_dtypes.bfloat16 '
            'arrays): pip install "cnorm[torch]"'
        ) from error
    return ml_dtypes.bfloat16


def _array(tensor, name):
    """A NumPy view of a CPU floating tensor, detached (no copy)."""
    if tensor.device.type != "cpu":
        raise ValueError(f"{name} must be a CPU tensor, got one on device {tensor.device}")
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(_bfloat16())
    if tensor.dtype not in _NUMPY_FLOATS:
        raise TypeError(f"{name} must be a {_DTYPE_NAMES} tensor, got {tensor.dtype}")
    return tensor.numpy()


# NumPy asks the kernel for transparent huge pages (madvise MADV_HUGEPAGE) for
# arrays of at least 4 MiB (numpy/_core/src/multiarray/alloc.c); torch's
# allocator does not by default.
_HUGE_PAGE_BYTES = 4 << 20
_NUMPY_STORAGE = {torch.float32: np.float32, torch.float64: np.float64,
                  torch.float16: np.float16, torch.bfloat16: np.int16}


def _like(x):
    """A new tensor for the output of x (y, or dx of the backward), passed to
    cnorm as ``out=``: x's memory layout when x is dense (NCHW,
    channels_last), else contiguous, the order cnorm copies x into.

    torch's allocator below 4 MiB, where torch's empty_like was measured
    faster (a ResNet-50 at batch 1: the BatchNorm2d layers 10.8 -> 9.2-9.9 ms
    a forward against NumPy's new arrays); NumPy's from 4 MiB, for its huge
    pages: 512x fewer page faults in the pass that first writes a fresh
    output, and fewer TLB misses in the ops that read it (measured in a
    ResNet-50 training step at batch 16, 2 threads: the backward 1837 ms with
    torch's empty_like for dx, 1637 with NumPy's, torch's own 1595-1645)."""
    if x.numel() * x.element_size() >= _HUGE_PAGE_BYTES:
        y = _numpy_like(x)
        if y is not None:
            return y
    return torch.empty_like(x)


def _numpy_like(x):
    """A tensor over a new NumPy array in x's layout (contiguous or 4-D
    channels_last), or None for other layouts."""
    if x.is_contiguous():
        return _from_numpy(np.empty(tuple(x.shape), _NUMPY_STORAGE[x.dtype]), x.dtype)
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        n, c, h, w = x.shape
        return _from_numpy(np.empty((n, h, w, c), _NUMPY_STORAGE[x.dtype]),
                           x.dtype).permute(0, 3, 1, 2)
    return None


def _from_numpy(array, dtype):
    tensor = torch.from_numpy(array)
    return tensor.view(dtype) if dtype == torch.bfloat16 else tensor


def _vector(tensor, name):
    """A per-channel parameter or statistic as cnorm reads it: a float32 or
    float64 tensor as a view, a half one widened to float64 (C values)."""
    if tensor is None:
        return None
    if tensor.dtype in (torch.float32, torch.float64):
        return _array(tensor, name)
    return _array(tensor.detach().double(), name)


def _grad(array, like):
    """A per-channel gradient (float64 from cnorm) in `like`'s dtype."""
    return torch.from_numpy(array).to(like.dtype)


# ---------------------------------------------------------------------------
# Batch norm

_REDUCED = (torch.float16, torch.bfloat16)
_STORAGE = {dtype: _layout.STORAGE[str(dtype).split(".")[1]]
            for dtype in (torch.float32, torch.float64) + _REDUCED}
_FLOATS = (torch.float32, torch.float64) + _REDUCED


def _check_dtypes(x, tensors):
    """Raise what torch's CPU batch norm raises for these dtypes: the
    parameters and statistics (the defined ones) of one dtype, x's, or float32
    beside float16/bfloat16 x (torch's mixed type); same errors, same words."""
    dtypes = [t.dtype for t in tensors if t is not None]
    if not dtypes or x.dtype not in _FLOATS:  # (a TypeError later names x's dtype)
        return
    first = dtypes[0]
    if first != x.dtype:
        if first != torch.float32:
            raise RuntimeError("mixed dtype (CPU): expect parameter to have scalar type of Float")
        if x.dtype not in _REDUCED:
            raise RuntimeError("mixed dtype (CPU): all inputs must share same datatype.")
    for dtype in dtypes[1:]:
        if dtype != first:
            raise RuntimeError(f"expected scalar type {_SCALAR_NAMES[first]} but found "
                               f"{_SCALAR_NAMES[dtype]}")


def _input_dtypes(tensors):
    """The dtypes of x that `_check_dtypes` passes beside these tensors."""
    passed = []
    for dtype in _FLOATS:
        try:
            _check_dtypes(torch.empty(0, dtype=dtype), tensors)
        except RuntimeError:
            continue
        passed.append(dtype)
    return tuple(passed)


_SCALAR_NAMES = {torch.float32: "Float", torch.float64: "Double", torch.float16: "Half",
                 torch.bfloat16: "BFloat16"}


def _check_batch(x):
    if x.numel() == x.shape[1]:
        # torch's own check (torch.nn.functional.batch_norm), same message
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {x.size()}"
        )


def _update(buffers, update):
    """Run `update(running_mean, running_var)` on NumPy views of the buffers:
    the buffers themselves when float32/float64, else float64 copies that are
    written back (one rounding into the buffer's dtype)."""
    arrays = [_array(b, name) if b.dtype in (torch.float32, torch.float64)
              else b.detach().double().numpy()
              for b, name in zip(buffers, ("running_mean", "running_var"))]
    result = update(*arrays)
    for buffer, array in zip(buffers, arrays):
        if buffer.dtype not in (torch.float32, torch.float64):
            buffer.copy_(torch.from_numpy(array))
    return result


def _batch_norm(x, vectors, buffers, batch_stats, momentum, eps, for_backward):
    """y, and the (mean, invstd, training) its backward needs (None: x is
    empty, as are y and dx; the statistics are left alone, as torch does).

    `vectors`: gamma, beta, running mean and variance as cnorm reads them (or
    None); `buffers`: the running statistics' tensors, updated in place when
    `batch_stats` (or None: no update)."""
    xa = _array(x, "input")
    if x.numel() == 0:
        return torch.empty_like(x), None
    gamma, beta, mean, var = vectors
    n_threads = torch.get_num_threads()
    if batch_stats:
        _check_batch(x)

        y = _like(x)

        def train(running_mean=None, running_var=None):
            return cnorm.batch_norm_training(
                xa, gamma, beta, eps, running_mean=running_mean, running_var=running_var,
                momentum=momentum, axis=1, out=_array(y, "out"), n_threads=n_threads)

        if buffers is None:
            _, mean, invstd = train()
        elif buffers[0].dtype in (torch.float32, torch.float64):
            _, mean, invstd = train(mean, var)  # views of the buffers
        else:
            _, mean, invstd = _update(buffers, train)
        return y, (mean, invstd, True)
    y = _like(x)
    cnorm.batch_norm_inference(xa, mean, var, gamma, beta, eps, axis=1, n_threads=n_threads,
                               out=_array(y, "out"))
    if not for_backward:
        return y, None
    # Frozen statistics for the backward, copied: a later update of the
    # buffers must not change this call's gradient.
    mean = np.array(mean, np.float64)
    invstd = 1.0 / np.sqrt(np.array(var, np.float64) + eps)
    return y, (mean, invstd, False)


class _BatchNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, vectors, buffers, batch_stats, momentum, eps):
        y, ctx.stats = _batch_norm(x, vectors, buffers, batch_stats, momentum, eps, True)
        ctx.gamma = vectors[0]
        ctx.save_for_backward(x, weight, bias)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight, bias = ctx.saved_tensors
        if ctx.stats is None:  # empty x
            # (zeros of the parameters' shape, as torch's, whatever x's channels)
            dx = torch.zeros_like(x)
            dgamma = np.zeros(x.shape[1] if weight is None else weight.shape[0])
            dbeta = dgamma
        else:
            mean, invstd, training = ctx.stats
            dx = _like(x)
            _, dgamma, dbeta = cnorm.batch_norm_backward(
                _array(dy, "grad_output"), _array(x, "input"), mean, invstd, ctx.gamma,
                training=training, axis=1, out=_array(dx, "out"),
                n_threads=torch.get_num_threads())
        needs = ctx.needs_input_grad
        return (dx if needs[0] else None,
                _grad(dgamma, weight) if needs[1] else None,
                _grad(dbeta, bias) if needs[2] else None,
                None, None, None, None, None)


def _needs_graph(*tensors):
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _batch_norm_needs_graph(x, weight, bias):
    """`_needs_graph` of a batch norm's tensors, written out (a call per forward)."""
    return torch.is_grad_enabled() and (x.requires_grad or weight is not None and (
        weight.requires_grad or bias.requires_grad))


_VECTORS = ("weight", "bias", "running_mean", "running_var")
_CACHE = "_cnorm_vector_cache"
# The cache entry, a list: the tensors (weight, bias, running_mean,
# running_var), their data pointers, the vectors (as _cnorm_vectors returns),
# the plan once made (_cnorm_plan), the input dtypes torch takes beside them.
_TENSORS, _POINTERS, _VECTORS_OF, _PLAN, _DTYPES = range(5)


def _holds(entry, weight, bias, mean, var):
    """Whether the cache entry was made from these tensors over the same
    memory (identity and data pointer; .data = ..., .double() and the like
    give new memory, which the cached views, holding the old, keep apart)."""
    tensors, pointers = entry[_TENSORS], entry[_POINTERS]
    return (weight is tensors[0] and bias is tensors[1] and mean is tensors[2]
            and var is tensors[3]
            and (mean is None or mean.data_ptr() == pointers[2])
            and (var is None or var.data_ptr() == pointers[3])
            and (weight is None or weight.data_ptr() == pointers[0])
            and (bias is None or bias.data_ptr() == pointers[1]))


class _CnormBatchNorm:
    """The forward of torch's ``_BatchNorm`` (momentum, num_batches_tracked,
    which statistics are used and updated), with cnorm's kernels."""

    def forward(self, input):
        """Normalize `input` (channels on axis 1): torch's ``forward``, on cnorm."""
        if not self.training:
            y = self._cnorm_eval(input)
            if y is not None:
                return y
        self._check_input_dim(input)
        # (the dicts nn.Module.__getattr__ reads, read directly: a microsecond each)
        weight, bias = self._parameters["weight"], self._parameters["bias"]
        running_mean, running_var = self._buffers["running_mean"], self._buffers["running_var"]
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)
        batch_stats = self.training or (running_mean is None and running_var is None)
        if input.numel():  # torch's checks, in its order (none for an empty input)
            if batch_stats:
                _check_batch(input)
            _check_dtypes(input, (weight, bias, running_mean, running_var))
        vectors = self._cnorm_vectors(weight, bias, running_mean, running_var)
        buffers = (running_mean, running_var)
        if self.training and not self.track_running_stats or running_mean is None:
            vectors, buffers = vectors[:2] + (None, None), None  # not used, not updated
        elif not batch_stats:
            buffers = None
        args = (vectors, buffers, batch_stats, momentum, self.eps)
        if _batch_norm_needs_graph(input, weight, bias):
            return _BatchNormFunction.apply(input, weight, bias, *args)
        if not batch_stats:
            self._cnorm_plan()
            y = self._cnorm_eval(input)
            if y is not None:
                return y
        return _batch_norm(input, *args, False)[0]

    def _cnorm_plan(self):
        """Give the cached vectors a plan (cnorm._layers._BatchNormPlan: float64
        vectors made from the views of the state, again whenever the state's
        bytes change, as cnorm.BatchNorm's), if they have none."""
        entry = self.__dict__.get(_CACHE)
        if entry is None or entry[_PLAN] is not None:
            return
        vectors = entry[_VECTORS_OF]
        if vectors[2] is None or vectors[3] is None:
            return
        try:
            plan = _BatchNormPlan(vectors, cnorm.batchnorm._bn, 1.0,
                                  vectors[0] is not None, True, 1)
        except ValueError:  # running_var < 0: _batch_norm's error says where
            return
        plan.record = False  # (a record would hold this call's x)
        entry[_PLAN] = plan

    def _cnorm_eval(self, x):
        """The eval forward on the module's plan, or None: take the general
        path (no plan yet, the state's tensors are not those of the cached
        views, a graph to record, half state, x not plain, eps not a float > 0).
        The checks of the general path, in a few microseconds."""
        entry = self.__dict__.get(_CACHE)
        if (entry is None or entry[_PLAN] is None or type(self.eps) is not float
                or self.eps <= 0):
            return None
        parameters, buffers = self._parameters, self._buffers
        weight, bias = parameters["weight"], parameters["bias"]
        dtype = x.dtype
        if (not _holds(entry, weight, bias, buffers["running_mean"], buffers["running_var"])
                or dtype not in entry[_DTYPES] or _batch_norm_needs_graph(x, weight, bias)):
            return None
        self._check_input_dim(x)
        plan = entry[_PLAN]
        plan.eps = self.eps
        # (None: not a contiguous CPU tensor; y is allocated as _like's)
        return plan.infer_tensor(x, torch.empty_like, _STORAGE[dtype], torch.get_num_threads(),
                                 _numpy_like, _HUGE_PAGE_BYTES)

    def _cnorm_vectors(self, *tensors):
        """weight, bias, running_mean, running_var as cnorm reads them. float32
        and float64 ones are views of the tensors (in-place changes are seen),
        kept while the module holds the same tensors over the same memory
        (about 1 us a call instead of 9); half ones are widened every call."""
        cached = self.__dict__.get(_CACHE)
        if cached is not None and _holds(cached, *tensors):
            return cached[_VECTORS_OF]
        vectors = tuple(_vector(t, name) for t, name in zip(tensors, _VECTORS))
        if all(t is None or t.dtype in (torch.float32, torch.float64) for t in tensors):
            # (the views hold their tensors, so their memory is not reused)
            self.__dict__[_CACHE] = [
                tensors, tuple(None if t is None else t.data_ptr() for t in tensors), vectors,
                None, _input_dtypes(tensors)]
        return vectors

    def __getstate__(self):
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        state = dict(state)
        state.pop(_CACHE, None)
        return state


class BatchNorm1d(_CnormBatchNorm, torch.nn.BatchNorm1d):
    """``torch.nn.BatchNorm1d`` on cnorm's kernels: same arguments and state.

    Input ``(N, C)`` or ``(N, C, L)``. See the module docstring.

    Examples
    --------
    >>> import torch, cnorm.torch
    >>> bn = cnorm.torch.BatchNorm1d(4)
    >>> bn(torch.randn(8, 4)).shape
    torch.Size([8, 4])
    """


class BatchNorm2d(_CnormBatchNorm, torch.nn.BatchNorm2d):
    """``torch.nn.BatchNorm2d`` on cnorm's kernels: same arguments and state.

    Input ``(N, C, H, W)``, NCHW-contiguous or ``channels_last``, both
    without a copy. See the module docstring.

    Examples
    --------
    >>> import torch, cnorm.torch
    >>> bn = cnorm.torch.BatchNorm2d(16).eval()
    >>> x = torch.randn(2, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    >>> y = bn(x)
    >>> y.is_contiguous(memory_format=torch.channels_last)
    True
    """


class BatchNorm3d(_CnormBatchNorm, torch.nn.BatchNorm3d):
    """``torch.nn.BatchNorm3d`` on cnorm's kernels: same arguments and state.

    Input ``(N, C, D, H, W)``, contiguous or ``channels_last_3d``. See the
    module docstring.
    """


# ---------------------------------------------------------------------------
# Local response norm

def _lrn(x, size, alpha, beta, k):
    y = _like(x)
    cnorm.local_response_norm(_array(x, "input"), size, alpha, beta, k, axis=1,
                              out=_array(y, "out"), n_threads=torch.get_num_threads())
    return y


class _LocalResponseNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):
        ctx.params = (size, alpha, beta, k)
        ctx.save_for_backward(x)
        return _lrn(x, size, alpha, beta, k)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        dx = _like(x)
        cnorm.local_response_norm_backward(
            _array(dy, "grad_output"), _array(x, "input"), *ctx.params, axis=1,
            out=_array(dx, "out"), n_threads=torch.get_num_threads())
        return dx, None, None, None, None


class LocalResponseNorm(torch.nn.LocalResponseNorm):
    """``torch.nn.LocalResponseNorm`` on cnorm's kernels: same arguments.

    Input ``(N, C, *)`` with at least 3 dimensions, channels on axis 1;
    PyTorch's window for even sizes and its ``alpha / size`` (cnorm's
    ``convention="torch"``). The backward is the gradient PyTorch's autograd
    computes for its own LRN.

    Examples
    --------
    >>> import torch, cnorm.torch
    >>> lrn = cnorm.torch.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)
    >>> lrn(torch.ones(1, 8, 4, 4)).shape
    torch.Size([1, 8, 4, 4])
    """

    def forward(self, input):
        """Normalize `input` (channels on axis 1): torch's ``forward``, on cnorm."""
        if input.dim() < 3:  # torch's check and message
            raise ValueError(
                f"Expected 3D or higher dimensionality input (got {input.dim()} dimensions)")
        if input.numel() == 0:
            return input
        args = (input, self.size, self.alpha, self.beta, self.k)
        if _needs_graph(input):
            return _LocalResponseNormFunction.apply(*args)
        return _lrn(*args)


# ---------------------------------------------------------------------------
# Whole models

_CNORM_OF = {torch.nn.BatchNorm1d: BatchNorm1d, torch.nn.BatchNorm2d: BatchNorm2d,
             torch.nn.BatchNorm3d: BatchNorm3d, torch.nn.LocalResponseNorm: LocalResponseNorm}
_TORCH_OF = {cnorm_class: torch_class for torch_class, cnorm_class in _CNORM_OF.items()}


def _swap_classes(model, classes, inplace):
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be True or False, got {type(inplace).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    for module in model.modules():
        new_class = classes.get(type(module))
        if new_class is not None:
            # The cnorm classes add no state to torch's: changing the class
            # keeps every parameter, buffer, hook and attribute as it is.
            module.__class__ = new_class
            module.__dict__.pop(_CACHE, None)
    return model


def convert(model, *, inplace=False):
    """Run a model's LRN and batch-norm layers on cnorm.

    Every module of `model` (itself included) whose type is exactly
    ``torch.nn.BatchNorm1d``, ``BatchNorm2d``, ``BatchNorm3d`` or
    ``LocalResponseNorm`` becomes the cnorm module of the same name, with
    its parameters, buffers, hooks and training mode unchanged (the same
    tensors: an optimizer built on the model keeps working with
    ``inplace=True``). Subclasses, ``SyncBatchNorm`` and other modules are
    left alone.

    Parameters
    ----------
    model : torch.nn.Module
    inplace : bool, default False
        Change `model` itself; by default a deep copy is converted and `model`
        is not modified.

    Returns
    -------
    torch.nn.Module
        The converted model (`model` itself when ``inplace=True``). Its
        ``state_dict`` has the original's keys, and it pickles and loads as
        the original does.

    See Also
    --------
    restore : the inverse.

    Examples
    --------
    >>> import torch, cnorm.torch
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8),
    ...                             torch.nn.ReLU(), torch.nn.LocalResponseNorm(5))
    >>> fast = cnorm.torch.convert(model)
    >>> type(fast[1]).__module__, type(model[1]).__module__
    ('cnorm.torch', 'torch.nn.modules.batchnorm')
    >>> x = torch.randn(2, 3, 16, 16)
    >>> torch.allclose(fast(x), model(x), rtol=1e-4, atol=1e-5)
    True
    """
    return _swap_classes(model, _CNORM_OF, inplace)


def restore(model, *, inplace=False):
    """Undo `convert`: cnorm's modules in `model` become torch's again.

    Parameters
    ----------
    model : torch.nn.Module
    inplace : bool, default False
        Change `model` itself; by default a deep copy is restored.

    Returns
    -------
    torch.nn.Module
        The model with torch's own ``BatchNorm1d/2d/3d`` and
        ``LocalResponseNorm`` modules, parameters and state unchanged.

    Examples
    --------
    >>> import torch, cnorm.torch
    >>> model = cnorm.torch.convert(torch.nn.Sequential(torch.nn.BatchNorm1d(4)))
    >>> type(cnorm.torch.restore(model)[0]) is torch.nn.BatchNorm1d
    True
    """
    return _swap_classes(model, _TORCH_OF, inplace)
