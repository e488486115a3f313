"""A fuzzer over cnorm.torch: each module beside torch's own, on drawn inputs.

For each example hypothesis draws a module (BatchNorm1d on 2-D and 3-D input,
BatchNorm2d, BatchNorm3d with every flag: affine, track_running_stats,
momentum None, 0.1 or 1, two eps; LocalResponseNorm of size 1 to 7 with drawn
alpha, beta and k), an input (float32, float64, float16 or bfloat16; shapes
with zero-size axes and C = 1; values of several scales and offsets, at times
with NaN or inf; NCHW-contiguous, channels_last, a strided slice or a permuted
view), train or eval mode, with or without a gradient, for one or two steps;
and at times a hostile input instead (an integer tensor, the wrong ndim, the
wrong channel count, or a float tensor of a dtype torch refuses beside the
module's parameters).

The property, against torch's module in the same dtype and a float64 copy of
it as the reference: if torch's module raises, so does cnorm's, and cnorm's
module state is what torch's is after its error; if torch's succeeds, so does cnorm's, with
outputs, gradients and running statistics equal to the float64 reference
within the dtype's rounding (NaN where the reference has NaN), and
num_batches_tracked equal. Where torch fails on its own account (no float16
LRN on the CPU, its LRN's view of a permuted 4-D+ input), cnorm's result is
held to the reference. (An empty integer tensor, which torch's modules
pass through, may get cnorm's TypeError naming its dtype instead.)

Examples: CNORM_FUZZ_EXAMPLES // 4 (at least 30) when set, else 30.
"""
import copy
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import need

torch = need("torch")
import cnorm.torch as ct  # noqa: E402

EXAMPLES = max(30, int(os.environ.get("CNORM_FUZZ_EXAMPLES", "0")) // 4)
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# Error of a result relative to the reference's largest magnitude (plus one).
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10, torch.float16: 2e-2,
             torch.bfloat16: 6e-2}
KINDS = {"BatchNorm1d (N, C)": (ct.BatchNorm1d, 0), "BatchNorm1d (N, C, L)": (ct.BatchNorm1d, 1),
         "BatchNorm2d": (ct.BatchNorm2d, 2), "BatchNorm3d": (ct.BatchNorm3d, 3),
         "LocalResponseNorm": (ct.LocalResponseNorm, None)}


@st.composite
def cases(draw):
    kind = draw(st.sampled_from(sorted(KINDS)))
    cnorm_class, n_spatial = KINDS[kind]
    if n_spatial is None:
        n_spatial = draw(st.integers(1, 3))
        config = dict(size=draw(st.integers(1, 7)),
                      alpha=draw(st.sampled_from([1e-4, 0.1, 1.0])),
                      beta=draw(st.sampled_from([0.5, 0.75, 1.0])),
                      k=draw(st.sampled_from([0.5, 1.0, 2.0])))
    else:
        config = dict(eps=draw(st.sampled_from([1e-5, 1e-2])),
                      momentum=draw(st.sampled_from([None, 0.1, 1.0])),
                      affine=draw(st.booleans()),
                      track_running_stats=draw(st.booleans()))
    channels = draw(st.integers(1, 6))
    shape = (draw(st.integers(0, 4)), channels,
             *draw(st.lists(st.integers(0, 4), min_size=n_spatial, max_size=n_spatial)))
    hostile = draw(st.sampled_from([None] * 6 + ["int32", "ndim", "channels", "dtype"]))
    return dict(kind=kind, cnorm_class=cnorm_class, config=config, shape=shape,
                dtype=draw(st.sampled_from(DTYPES)),
                parameter_dtype=draw(st.sampled_from(["x's", "float32"])),
                layout=draw(st.sampled_from(["contiguous", "channels_last", "strided",
                                             "permuted"])),
                scale=draw(st.sampled_from([1e-3, 1.0, 1e3])),
                offset=draw(st.sampled_from([0.0, 10.0])),
                special=draw(st.sampled_from([None] * 4 + [float("nan"), float("inf")])),
                training=draw(st.booleans()), grad=draw(st.booleans()),
                steps=draw(st.integers(1, 2)), seed=draw(st.integers(0, 2 ** 16)),
                hostile=hostile)


def _input(case, generator):
    shape = case["shape"]
    if case["hostile"] == "ndim":
        shape = shape[:2] if len(shape) > 2 else shape + (2, 2, 2)
    elif case["hostile"] == "channels":
        shape = (shape[0], shape[1] + 1) + shape[2:]
    values = torch.randn(shape, generator=generator, dtype=torch.float64)
    values = values * case["scale"] + case["offset"]
    if case["special"] is not None and values.numel():
        values.view(-1)[0] = case["special"]
    dtype = torch.int32 if case["hostile"] == "int32" else case["dtype"]
    layout = case["layout"]
    if layout == "channels_last" and len(shape) in (4, 5):
        memory = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
        return values.to(dtype).contiguous(memory_format=memory)
    if layout == "strided":
        wide = torch.zeros(shape[:-1] + (2 * shape[-1],), dtype=torch.float64)
        wide[..., ::2] = values
        return wide.to(dtype)[..., ::2]
    if layout == "permuted" and len(shape) >= 3:
        return values.transpose(-1, -2).contiguous().to(dtype).transpose(-1, -2)
    return values.to(dtype)


def _modules(case):
    """(torch's module, cnorm's, the float64 reference), the same state."""
    config = case["config"]
    torch_class = ct._TORCH_OF[case["cnorm_class"]]
    module = torch_class(case["shape"][1], **config) if "eps" in config else torch_class(
        **config)
    generator = torch.Generator().manual_seed(case["seed"] + 1)
    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
    if case["parameter_dtype"] == "x's" or case["dtype"] not in (torch.float16, torch.bfloat16):
        target = torch.float64 if case["hostile"] == "dtype" and case["dtype"] != (
            torch.float64) else case["dtype"]
        module = module.to(target)
    reference = copy.deepcopy(module).double()
    return module, ct.convert(module), reference


def _run(module, x, case, dy):
    """(y, input gradient, parameter gradients) of the drawn steps, or the error."""
    module.train(case["training"])
    results = []
    for _ in range(case["steps"]):
        for parameter in module.parameters():
            parameter.grad = None
        x_step = x.detach().clone().requires_grad_(case["grad"]) if (
            case["grad"] and x.is_floating_point()) else x
        if case["grad"]:
            y = module(x_step)
            y.backward(dy.to(y.dtype))
            results.append((y.detach(), x_step.grad,
                            [p.grad for p in module.parameters()]))
        else:
            with torch.no_grad():
                results.append((module(x_step), None, []))
    return results


def _torch_lacks(error):
    """Whether torch's error is a gap of its own (no float16 LRN kernel on the
    CPU; its LRN views 4-D and wider input, which fails on a permuted or
    strided one) rather than a bad input: cnorm's result is then held to the
    reference."""
    return isinstance(error, NotImplementedError) or (
        isinstance(error, RuntimeError) and "view size is not compatible" in str(error))


def _state(module):
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def _close(got, want, dtype, what):
    got = got.detach().double()
    want = want.detach().to(dtype).double()  # (beyond float16's range: inf, as torch's)
    assert got.shape == want.shape, what
    finite = torch.isfinite(want)
    assert torch.equal(torch.isnan(got), torch.isnan(want)) or not finite.all(), what
    if finite.any():
        scale = want[finite].abs().max().item() + 1.0
        error = (got[finite] - want[finite]).abs().max().item()
        assert error <= TOLERANCE[dtype] * scale, f"{what}: error {error:.3g}, scale {scale:.3g}"


@SETTINGS
@given(cases())
def test_cnorm_modules_behave_as_torch(case):
    generator = torch.Generator().manual_seed(case["seed"])
    x = _input(case, generator)
    torch_module, cnorm_module, reference = _modules(case)
    dy = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    try:
        expected, lacking = _run(torch_module, x, case, dy), False
    except Exception as error:  # noqa: BLE001 - any error of torch's
        expected, lacking = None, _torch_lacks(error)
        if not lacking:  # cnorm's must raise too
            with pytest.raises(Exception):
                _run(cnorm_module, x, case, dy)
            # and leave the state as torch's leaves it (torch counts the batch
            # in num_batches_tracked before its checks)
            for name, tensor in _state(cnorm_module).items():
                assert torch.equal(tensor, _state(torch_module)[name]), name
            return
    if not x.is_floating_point():
        # torch passes an empty integer tensor through where nothing is
        # computed; cnorm does too, or names the dtype it cannot take
        try:
            got = _run(cnorm_module, x, case, dy)
        except TypeError as error:
            assert "input must be a float32" in str(error)
        else:
            assert [(r[0].dtype, r[0].shape) for r in got] == [
                (r[0].dtype, r[0].shape) for r in expected]
        return
    got = _run(cnorm_module, x, case, dy)
    wanted = _run(reference, x.double().contiguous(), case, dy)  # (see _torch_lacks)
    dtype = case["dtype"]
    for step, ((y, dx, grads), (y_ref, dx_ref, grads_ref)) in enumerate(zip(got, wanted)):
        assert y.dtype == (x.dtype if expected is None else expected[step][0].dtype)
        assert y.shape == x.shape
        _close(y, y_ref, dtype, f"y, step {step}")
        if dx_ref is not None:
            _close(dx, dx_ref, dtype, f"input gradient, step {step}")
            for grad, grad_ref in zip(grads, grads_ref):
                _close(grad, grad_ref, dtype, f"parameter gradient, step {step}")
    for name, tensor in _state(cnorm_module).items():
        want = _state(reference)[name]
        if name == "num_batches_tracked":
            assert torch.equal(tensor, want)
        else:
            _close(tensor, want, dtype, name)
