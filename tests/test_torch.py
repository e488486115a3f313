"""cnorm.torch: the modules against torch's own, autograd, layouts, half
tensors, convert/restore, pickling, threads. Skipped without torch (failing
instead under CNORM_REQUIRE_FRAMEWORKS=1)."""
import copy
import io
import pickle
import subprocess
import sys

import numpy as np
import pytest

from helpers import RTOL, need

torch = need("torch")
import cnorm  # noqa: E402
import cnorm.torch as ct  # noqa: E402
from cnorm import reference  # noqa: E402

FLOAT_RTOL = {torch.float32: 1e-5, torch.float64: 1e-12}
SHAPES = {ct.BatchNorm1d: [(16, 6), (4, 6, 9)], ct.BatchNorm2d: [(4, 6, 5, 7)],
          ct.BatchNorm3d: [(2, 6, 3, 4, 5)]}
BN_CASES = [(cls, shape) for cls, shapes in SHAPES.items() for shape in shapes]
BN_OPTIONS = [dict(), dict(momentum=None), dict(affine=False),
              dict(track_running_stats=False), dict(eps=1e-3, momentum=0.3)]


def _torch_class(cls):
    return cls.__mro__[2] if cls.__mro__[1] is ct._CnormBatchNorm else cls.__mro__[1]


def _pair(cls, *args, dtype=torch.float32, **kwargs):
    """A torch module and the cnorm one with the same (randomized) state."""
    torch_module = _torch_class(cls)(*args, **kwargs).to(dtype)
    with torch.no_grad():
        for name, tensor in torch_module.state_dict().items():
            if name.endswith(("weight", "bias", "running_mean")):
                tensor.uniform_(-1, 1)
            elif name.endswith("running_var"):
                tensor.uniform_(0.5, 2)
    cnorm_module = cls(*args, **kwargs).to(dtype)
    cnorm_module.load_state_dict(torch_module.state_dict())
    return torch_module, cnorm_module


def _close(actual, expected, rtol, what):
    actual, expected = actual.detach(), expected.detach()
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    error = float((actual.double() - expected.double()).abs().max()) if actual.numel() else 0.0
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    assert error <= rtol * max(scale, 1.0), f"{what}: max error {error:g} (scale {scale:g})"


def _steps(torch_module, cnorm_module, shape, dtype, steps=3, layout=None, rtol=None):
    """Run both modules for `steps` forward/backward passes on the same data;
    compare outputs, input and parameter gradients and the state."""
    rtol = FLOAT_RTOL[dtype] if rtol is None else rtol
    generator = torch.Generator().manual_seed(0)
    for step in range(steps):
        x = torch.randn(shape, generator=generator, dtype=torch.float64).mul(3).add(1).to(dtype)
        if layout is not None:
            x = layout(x)
        inputs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
        outputs = [m(i) for m, i in zip((torch_module, cnorm_module), inputs)]
        _close(outputs[1], outputs[0], rtol, f"output, step {step}")
        dy = torch.randn(outputs[0].shape, generator=generator, dtype=dtype)
        for output in outputs:
            output.backward(dy)
        _close(inputs[1].grad, inputs[0].grad, rtol, f"input gradient, step {step}")
        for (name, a), (_, b) in zip(torch_module.named_parameters(),
                                     cnorm_module.named_parameters()):
            _close(b.grad, a.grad, rtol, f"{name} gradient, step {step}")
        for name, a in torch_module.state_dict().items():
            b = cnorm_module.state_dict()[name]
            if a.is_floating_point():
                _close(b, a, rtol, f"{name}, step {step}")
            else:
                assert torch.equal(a, b), name
        for module in (torch_module, cnorm_module):
            module.zero_grad()


# ---------------------------------------------------------------------------
# Against torch's modules

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("options", BN_OPTIONS, ids=str)
@pytest.mark.parametrize("cls, shape", BN_CASES, ids=str)
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_against_torch(cls, shape, options, dtype, training):
    torch_module, cnorm_module = _pair(cls, shape[1], dtype=dtype, **options)
    torch_module.train(training)
    cnorm_module.train(training)
    _steps(torch_module, cnorm_module, shape, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size, shape", [(5, (2, 7, 4, 6)), (4, (3, 6, 9)), (2, (2, 5, 3, 2, 2)),
                                         (9, (2, 3, 4, 4))])
def test_lrn_against_torch(size, shape, dtype):
    kwargs = dict(alpha=1.0, beta=0.75, k=0.5)
    _steps(torch.nn.LocalResponseNorm(size, **kwargs), ct.LocalResponseNorm(size, **kwargs),
           shape, dtype)


def test_gradcheck_float64():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 3, 2, dtype=torch.float64, generator=generator).requires_grad_()
    for track in (False, True):  # batch statistics; frozen ones (eval)
        bn = ct.BatchNorm2d(4, track_running_stats=track).double().train(not track)
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5, generator=generator)
            bn.bias.uniform_(-1, 1, generator=generator)
        assert torch.autograd.gradcheck(bn, (x,))
        weight, bias = bn.weight, bn.bias

        def functional(x, weight, bias, bn=bn):
            return torch.func.functional_call(bn, {"weight": weight, "bias": bias}, (x,))

        assert torch.autograd.gradcheck(functional, (x, weight, bias))
    lrn = ct.LocalResponseNorm(3, alpha=1.0, beta=0.75, k=0.1)
    assert torch.autograd.gradcheck(lrn, (x.abs().detach().requires_grad_(),))


# ---------------------------------------------------------------------------
# Layouts, autograd modes, inputs left alone

LAYOUTS = {
    "nchw": lambda x: x.contiguous(),
    "channels_last": lambda x: x.contiguous(memory_format=torch.channels_last),
    "strided": lambda x: torch.cat([x, x], dim=3)[..., ::2],
    "permuted": lambda x: x.permute(0, 1, 3, 2).contiguous().transpose(2, 3),
}


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_layouts(layout):
    make = LAYOUTS[layout]
    torch_module, cnorm_module = _pair(ct.BatchNorm2d, 6)
    _steps(torch_module, cnorm_module, (4, 6, 5, 8), torch.float32, steps=2, layout=make)
    _steps(torch.nn.LocalResponseNorm(3), ct.LocalResponseNorm(3), (4, 6, 5, 8),
           torch.float32, steps=1, layout=make)
    x = make(torch.randn(4, 6, 5, 8))
    if layout in ("nchw", "channels_last"):
        for module in (cnorm_module.eval(), ct.LocalResponseNorm(3)):
            y = module(x)
            assert y.stride() == x.stride()  # the output has the input's layout


def test_channels_last_is_read_in_place(monkeypatch):
    # cnorm sees an array over the tensor's own memory, with torch's axis 1.
    seen = []
    original = cnorm.batch_norm_inference

    def spy(x, *args, **kwargs):
        seen.append((x.__array_interface__["data"][0], kwargs["axis"]))
        return original(x, *args, **kwargs)

    monkeypatch.setattr(cnorm, "batch_norm_inference", spy)
    x = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    ct.BatchNorm2d(8).eval()(x)
    assert seen == [(x.data_ptr(), 1)]


def test_grad_modes_and_requires_grad():
    torch_module, cnorm_module = _pair(ct.BatchNorm2d, 4)
    x = torch.randn(3, 4, 2, 2)
    for mode in (torch.no_grad, torch.inference_mode, torch.enable_grad):
        for requires_grad in (False, True):
            for training in (True, False):
                outputs = []
                for module in (torch_module, cnorm_module):
                    module.train(training)
                    with mode():
                        outputs.append(module(x.clone().requires_grad_(requires_grad)))
                _close(outputs[1], outputs[0], 1e-5, f"{mode.__name__} {requires_grad}")
                assert outputs[1].requires_grad == outputs[0].requires_grad
                for name, value in torch_module.state_dict().items():
                    _close(cnorm_module.state_dict()[name].double(), value.double(), 1e-5, name)


def test_parameters_only_require_grad():
    torch_module, cnorm_module = _pair(ct.BatchNorm2d, 4)
    x = torch.randn(3, 4, 2, 2)
    for module in (torch_module, cnorm_module):
        module(x).pow(2).sum().backward()
    _close(cnorm_module.weight.grad, torch_module.weight.grad, 1e-5, "weight gradient")
    _close(cnorm_module.bias.grad, torch_module.bias.grad, 1e-5, "bias gradient")


def test_inputs_are_not_modified():
    for module in (ct.BatchNorm2d(4), ct.BatchNorm2d(4).eval(), ct.LocalResponseNorm(2)):
        x = torch.randn(3, 4, 2, 2, requires_grad=True)
        saved = x.detach().clone()
        y = module(x)
        dy = torch.randn_like(y)
        saved_dy = dy.clone()
        y.backward(dy)
        assert torch.equal(x.detach(), saved) and torch.equal(dy, saved_dy)


def test_eval_backward_uses_the_statistics_of_its_forward():
    bn = ct.BatchNorm2d(4).eval()
    reference_bn = torch.nn.BatchNorm2d(4).eval()
    x = torch.randn(3, 4, 2, 2, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = bn(x), reference_bn(x_ref)
    with torch.no_grad():
        bn.running_var.fill_(9.0)  # changed after the forward
    y.sum().backward()
    y_ref.sum().backward()
    _close(x.grad, x_ref.grad, 1e-6, "dx")


def test_empty_batch_as_torch():
    torch_module, cnorm_module = _pair(ct.BatchNorm2d, 3)
    for training in (True, False):
        outputs = []
        for module in (torch_module, cnorm_module):
            module.train(training)
            x = torch.randn(0, 3, 2, 2, requires_grad=True)
            y = module(x)
            y.sum().backward()
            outputs.append((y.shape, x.grad.shape, module.weight.grad.clone()))
        assert outputs[0][:2] == outputs[1][:2]
        assert torch.equal(outputs[0][2], outputs[1][2])
    for name, value in torch_module.state_dict().items():
        assert torch.equal(cnorm_module.state_dict()[name], value), name
    assert ct.LocalResponseNorm(3)(torch.randn(0, 3, 2)).shape == (0, 3, 2)


# ---------------------------------------------------------------------------
# float16 and bfloat16

HALF = [torch.float16, torch.bfloat16]


def _reference_bn(x, weight, bias, eps):
    rows = np.moveaxis(x.double().numpy(), 1, -1)
    y, mean, invstd = reference.batch_norm_training(rows, weight.double().numpy(),
                                                    bias.double().numpy(), eps)
    return torch.from_numpy(np.moveaxis(y, -1, 1).copy()), mean, invstd


@pytest.mark.parametrize("param_dtype", [None, torch.float32])
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_tensors(dtype, param_dtype):
    need("ml_dtypes")
    bn = ct.BatchNorm2d(6).to(param_dtype or dtype)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    x = (torch.randn(4, 6, 5, 5) * 2 + 1).to(dtype).requires_grad_()
    y = bn(x)
    assert y.dtype == dtype
    expected, mean, _ = _reference_bn(x.detach(), bn.weight.detach(), bn.bias.detach(), bn.eps)
    rtol = RTOL[np.dtype("float16")] if dtype == torch.float16 else 2.0 ** -6
    _close(y.double(), expected, 2 * rtol, "y")
    assert bn.running_mean.dtype == (param_dtype or dtype)
    _close(bn.running_mean.double(), torch.from_numpy(0.1 * mean), 2 * rtol, "running_mean")
    y.backward(torch.ones_like(y))
    assert bn.weight.grad.dtype == bn.weight.dtype and bn.bias.grad.dtype == bn.bias.dtype
    assert x.grad.dtype == dtype
    # the same data in float32, for the scale of the gradients
    bn32 = torch.nn.BatchNorm2d(6)
    bn32.load_state_dict({k: v.float() for k, v in bn.state_dict().items()})
    x32 = x.detach().float().requires_grad_()
    bn32(x32).backward(torch.ones_like(x32))
    _close(bn.bias.grad.double(), bn32.bias.grad.double(), 2 * rtol, "dbeta")
    lrn = ct.LocalResponseNorm(3, alpha=1.0, k=1.0)
    z = lrn(x)
    expected = torch.nn.LocalResponseNorm(3, alpha=1.0, k=1.0)(x.detach().float())
    assert z.dtype == dtype
    _close(z.float(), expected, 2 * rtol, "LRN")


# ---------------------------------------------------------------------------
# State, conversion, pickling

def test_state_dict_keys_and_checkpoints_are_torchs():
    for cls, options in [(ct.BatchNorm2d, {}), (ct.BatchNorm1d, dict(momentum=None)),
                         (ct.BatchNorm3d, dict(affine=False)),
                         (ct.BatchNorm2d, dict(track_running_stats=False))]:
        torch_module, cnorm_module = _pair(cls, 5, **options)
        assert list(cnorm_module.state_dict()) == list(torch_module.state_dict())
        assert isinstance(cnorm_module, _torch_class(cls))
        back = _torch_class(cls)(5, **options)
        back.load_state_dict(cnorm_module.state_dict())
        assert repr(back) == repr(cnorm_module)


def _nested_model():
    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                                torch.nn.ReLU())
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.LocalResponseNorm(5, k=2.0),
        torch.nn.Sequential(block, torch.nn.ModuleList([torch.nn.BatchNorm2d(8)])[0]),
        torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 10), torch.nn.BatchNorm1d(10),
    )


def _kinds(model):
    return [type(m) for m in model.modules()]


def test_convert_and_restore_a_nested_model():
    model = _nested_model()
    kinds = _kinds(model)
    converted = ct.convert(model)
    assert _kinds(model) == kinds  # the original is left alone
    cnorm_kinds = [k for k in _kinds(converted) if k.__module__ == "cnorm.torch"]
    assert cnorm_kinds == [ct.LocalResponseNorm, ct.BatchNorm2d, ct.BatchNorm2d, ct.BatchNorm1d]
    assert list(converted.state_dict()) == list(model.state_dict())
    x = torch.randn(4, 3, 6, 6)
    for training in (True, False):
        model.train(training)
        converted.train(training)
        _close(converted(x), model(x), 1e-4, f"training={training}")
    _close(converted[5].running_var, model[5].running_var, 1e-5, "running_var")
    restored = ct.restore(converted)
    assert _kinds(restored) == kinds
    assert _kinds(converted)[1:] != kinds[1:]  # restore copied
    same = ct.convert(model, inplace=True)
    assert same is model and model[2][0][1].weight is same[2][0][1].weight
    assert ct.restore(model, inplace=True) is model and _kinds(model) == kinds


def test_converted_model_pickles_and_loads_state():
    converted = ct.convert(_nested_model()).eval()
    x = torch.randn(2, 3, 6, 6)
    y = converted(x)
    again = pickle.loads(pickle.dumps(converted))
    assert torch.equal(again(x), y)
    buffer = io.BytesIO()
    torch.save(converted, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer, weights_only=False)(x), y)
    original = _nested_model().eval()
    original.load_state_dict(copy.deepcopy(converted.state_dict()))
    _close(original(x), y, 1e-5, "torch model with the converted one's state")


def test_convert_checks_its_arguments():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got list"):
        ct.convert([])
    with pytest.raises(TypeError, match="inplace must be True or False, got int"):
        ct.convert(torch.nn.ReLU(), inplace=1)
    sync = torch.nn.SyncBatchNorm(3)
    assert type(ct.convert(torch.nn.Sequential(sync))[0]) is torch.nn.SyncBatchNorm


def test_bad_tensors():
    bn = ct.BatchNorm2d(3)
    with pytest.raises(TypeError, match="input must be a float32, float64, float16 or "
                                        "bfloat16 tensor, got torch.int32"):
        bn(torch.zeros(2, 3, 2, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        bn(torch.zeros(1, 3, 1, 1))
    with pytest.raises(ValueError, match="expected 4D input"):
        bn(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="Expected 3D or higher"):
        ct.LocalResponseNorm(2)(torch.zeros(2, 3))


_FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("x_dtype", _FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("parameter_dtype", _FLOAT_DTYPES, ids=str)
def test_dtype_combinations_as_torch(training, x_dtype, parameter_dtype):
    # torch's CPU batch norm takes x of its parameters' dtype, or float16 and
    # bfloat16 x beside float32 parameters; anything else raises a RuntimeError.
    # The cnorm module does exactly what torch's does, with torch's message.
    outcomes = []
    for make in (torch.nn.BatchNorm2d, ct.BatchNorm2d):
        module = make(3).to(parameter_dtype).train(training)
        x = torch.randn(2, 3, 4, 4).to(x_dtype)
        for _ in range(2):  # (the second eval call runs on the module's plan)
            with torch.no_grad():
                try:
                    module(x)
                    outcome = "ok"
                except RuntimeError as error:
                    outcome = str(error)
        outcomes.append(outcome)
    assert outcomes[1] == outcomes[0]


def test_statistics_of_another_dtype_as_torch():
    outcomes = []
    for make in (torch.nn.BatchNorm2d, ct.BatchNorm2d):
        module = make(3)
        module.running_mean = module.running_mean.double()
        with pytest.raises(RuntimeError) as error:
            module(torch.randn(2, 3, 4, 4))
        outcomes.append(str(error.value))
    assert outcomes[1] == outcomes[0]


# ---------------------------------------------------------------------------
# Threads

def test_follows_torch_threads_with_the_same_bits(monkeypatch):
    seen = []
    original = cnorm.batch_norm_training

    def spy(*args, **kwargs):
        seen.append(kwargs["n_threads"])
        return original(*args, **kwargs)

    monkeypatch.setattr(cnorm, "batch_norm_training", spy)
    x = torch.randn(16, 8, 24, 24)
    saved = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            bn = ct.BatchNorm2d(8)
            xg = x.clone().requires_grad_()
            y = bn(xg)
            y.backward(x)
            results.append((y, xg.grad, bn.weight.grad, bn.running_var))
    finally:
        torch.set_num_threads(saved)
    assert seen == [1, 2, 3]
    for result in results[1:]:
        for a, b in zip(result, results[0]):
            assert torch.equal(a, b)


def test_import_cnorm_does_not_import_torch():
    code = "import sys, cnorm; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_parameter_changes_are_seen():
    # The module keeps NumPy views of its parameters and buffers between calls:
    # in-place changes, .data, new tensors and dtype changes must all be seen.
    torch_module, cnorm_module = _pair(ct.BatchNorm2d, 4)
    x = torch.randn(3, 4, 2, 2)
    changes = [
        lambda m: m.weight.data.mul_(2),
        lambda m: setattr(m.bias, "data", torch.full((4,), 3.0)),
        lambda m: setattr(m, "weight", torch.nn.Parameter(torch.linspace(-1, 1, 4))),
        lambda m: m.running_var.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0])),
        lambda m: m.register_buffer("running_mean", torch.ones(4)),
        lambda m: np.copyto(m.running_mean.numpy(), 0.5),  # behind torch's back
        lambda m: setattr(m, "eps", 0.25),
        lambda m: m.load_state_dict({**m.state_dict(), "running_var": torch.full((4,), 9.0)}),
        lambda m: m.double(),
    ]
    for change in changes:
        for module in (torch_module.eval(), cnorm_module.eval()):
            module(x.to(module.weight.dtype))
            change(module)
        with torch.no_grad():
            x_now = x.to(torch_module.weight.dtype)
            _close(cnorm_module(x_now), torch_module(x_now), 1e-5, "after a change")
    # (eval under no_grad runs on the module's plan: the changes were seen there)
    assert cnorm_module.__dict__["_cnorm_vector_cache"][ct._PLAN] is not None


@pytest.mark.parametrize("x_dtype, parameter_dtype", [
    (torch.float32, torch.float32), (torch.float64, torch.float64),
    (torch.float16, torch.float32), (torch.bfloat16, torch.float32),
    (torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16)], ids=str)
@pytest.mark.parametrize("make, shape", [
    (ct.BatchNorm1d, (5, 6)), (ct.BatchNorm1d, (2, 6, 7)), (ct.BatchNorm2d, (2, 6, 3, 5)),
    (ct.BatchNorm3d, (1, 6, 2, 3, 4))], ids=lambda v: getattr(v, "__name__", str(v)))
def test_eval_plan_gives_the_general_paths_bits(make, shape, x_dtype, parameter_dtype):
    # The eval forward on the module's plan (cnorm._layers._BatchNormPlan.
    # infer_tensor: contiguous CPU tensors read at data_ptr()) writes the bits
    # of the general path (the graph-recording one, which takes NumPy views
    # and cnorm.batch_norm_inference); other layouts, and half parameters
    # (widened every call, never cached), are left to that path.
    torch.manual_seed(1)
    module = make(6).to(parameter_dtype).eval()
    with torch.no_grad():
        module.running_mean.uniform_(-1, 1)
        module.running_var.uniform_(0.5, 2)
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-1, 1)
    x = (torch.randn(shape) * 3).to(x_dtype)
    with torch.enable_grad():
        general = module(x).detach()  # (the parameters require grad: a graph)
    with torch.no_grad():
        module(x)  # (makes the plan)
        assert (module._cnorm_eval(x) is not None) == (
            parameter_dtype in (torch.float32, torch.float64))
        fast = module(x)
    assert fast.dtype == general.dtype and fast.stride() == general.stride()
    assert torch.equal(fast.view(torch.int16 if fast.element_size() == 2 else fast.dtype),
                       general.view(torch.int16 if general.element_size() == 2
                                    else general.dtype))
    if len(shape) == 4:
        with torch.no_grad():
            for other in (x.to(memory_format=torch.channels_last), x.transpose(2, 3)):
                assert module._cnorm_eval(other) is None
                torch.testing.assert_close(module(other), module(other.contiguous()),
                                           rtol=0, atol=0)


def test_eval_plan_leaves_misaligned_tensors_to_the_general_path():
    # torch.from_numpy of a float32 view at an odd byte offset: a data pointer
    # that is not a multiple of 4 is never read as float* (the general path
    # copies it).
    module = ct.BatchNorm2d(3).eval()
    buffer = np.zeros(2 * 3 * 4 * 4 * 4 + 1, np.uint8)
    values = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    misaligned = buffer[1:].view(np.float32).reshape(2, 3, 4, 4)
    misaligned[...] = values
    x = torch.from_numpy(misaligned)
    with torch.no_grad():
        module(x)
        assert x.data_ptr() % 4 != 0 and module._cnorm_eval(x) is None
        torch.testing.assert_close(module(x), module(torch.from_numpy(values)), rtol=0, atol=0)


def x_size(dtype):
    return torch.empty(0, dtype=dtype).element_size()


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_outputs_of_4_mib_and_more_are_numpy_memory_in_the_layout_of_x(layout, dtype):
    # From 4 MiB, y and dx are NumPy arrays (huge pages, see cnorm.torch._like)
    # in x's layout: the same values and strides as torch's, every path.
    torch.manual_seed(2)
    x = torch.randn(2 * 4 // x_size(dtype), 64, 128, 64).to(dtype)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    assert x.numel() * x.element_size() >= 4 << 20
    ours, theirs = ct.BatchNorm2d(64).to(dtype), torch.nn.BatchNorm2d(64).to(dtype)
    tolerance = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else {}
    for training in (True, False):
        ours.train(training)
        theirs.train(training)
        inputs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
        outputs = [module(a) for module, a in zip((ours, theirs), inputs)]
        assert outputs[0].stride() == outputs[1].stride()
        torch.testing.assert_close(outputs[0], outputs[1], **tolerance)
        grad = torch.randn_like(outputs[1])
        for output in outputs:
            output.backward(grad)
        assert inputs[0].grad.stride() == inputs[1].grad.stride()
        torch.testing.assert_close(inputs[0].grad, inputs[1].grad, **tolerance)
        with torch.no_grad():
            for _ in range(2):  # (the second eval call runs on the plan)
                fast = ours(x)
            assert fast.stride() == theirs(x).stride()
            torch.testing.assert_close(fast, theirs(x), **tolerance)
