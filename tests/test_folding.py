"""cnorm.fold_batch_norm: against the formula, PyTorch's fusion helpers, and end to
end (a float64 convolution with the folded weights equals batch norm after the
original convolution)."""
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

import cnorm
from cnorm import reference

C_OUT, C_IN, K = 5, 3, 3


def _bn(rng, n=C_OUT):
    return dict(running_mean=rng.normal(0.0, 2.0, n), running_var=rng.uniform(0.1, 4.0, n),
                gamma=rng.normal(1.0, 0.5, n), beta=rng.normal(0.0, 1.0, n))


def _conv_nchw(x, weight_oihw, bias):
    """Valid 2-D cross-correlation, float64, as torch.nn.functional.conv2d."""
    windows = sliding_window_view(x, weight_oihw.shape[2:], axis=(2, 3))  # N, I, H', W', kh, kw
    return np.einsum("nihwab,oiab->nohw", windows, weight_oihw) + bias[None, :, None, None]


# Each layout as a transposition of the OIHW weight (or OI for linear).
TO_LAYOUT = {
    "OIHW": lambda w: w,
    "IOHW": lambda w: w.transpose(1, 0, 2, 3),
    "HWIO": lambda w: w.transpose(2, 3, 1, 0),
    "OHWI": lambda w: w.transpose(0, 2, 3, 1),
}


@pytest.mark.parametrize("layout", sorted(TO_LAYOUT))
def test_conv_end_to_end_every_layout(layout, rng):
    weight = rng.normal(size=(C_OUT, C_IN, K, K))
    bias = rng.normal(size=C_OUT)
    bn = _bn(rng)
    x = rng.normal(size=(2, C_IN, 7, 6))
    expected = reference.batch_norm_inference(_conv_nchw(x, weight, bias), axis=1,
                                              eps=1e-3, **bn)
    w2, b2 = cnorm.fold_batch_norm(TO_LAYOUT[layout](weight), bias, eps=1e-3, layout=layout,
                                   **bn)
    assert w2.shape == TO_LAYOUT[layout](weight).shape and w2.dtype == np.float64
    back = {"OIHW": w2, "IOHW": w2.transpose(1, 0, 2, 3), "HWIO": w2.transpose(3, 2, 0, 1),
            "OHWI": w2.transpose(0, 3, 1, 2)}[layout]
    np.testing.assert_allclose(_conv_nchw(x, back, b2), expected, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("layout", ["OI", "IO"])
def test_linear_end_to_end(layout, rng):
    weight = rng.normal(size=(C_OUT, C_IN))  # OI
    bn = _bn(rng)
    x = rng.normal(size=(4, C_IN))
    expected = reference.batch_norm_inference(x @ weight.T, **bn)
    given = weight if layout == "OI" else weight.T
    w2, b2 = cnorm.fold_batch_norm(given, None, layout=layout, **bn)
    w_oi = w2 if layout == "OI" else w2.T
    np.testing.assert_allclose(x @ w_oi.T + b2, expected, rtol=1e-13, atol=1e-13)


def test_conv1d_and_conv3d_weights(rng):
    bn = _bn(rng)
    for shape in [(C_OUT, C_IN, 3), (C_OUT, C_IN, 3, 3, 3)]:
        weight = rng.normal(size=shape)
        w2, _ = cnorm.fold_batch_norm(weight, None, layout="OIHW", **bn)
        s = bn["gamma"] / np.sqrt(bn["running_var"] + 1e-5)
        np.testing.assert_array_equal(w2, weight * s.reshape((-1,) + (1,) * (len(shape) - 1)))


def test_formula_and_defaults(rng):
    weight = rng.normal(size=(C_OUT, C_IN, 1, 1)).astype(np.float32)
    mean, var = rng.normal(size=C_OUT), rng.uniform(0.5, 2, C_OUT)
    w2, b2 = cnorm.fold_batch_norm(weight, None, mean, var, layout="OIHW")
    s = 1.0 / np.sqrt(var + 1e-5)
    assert w2.dtype == b2.dtype == np.float32
    np.testing.assert_array_equal(w2, (weight * s[:, None, None, None]).astype(np.float32))
    np.testing.assert_array_equal(b2, (-mean * s).astype(np.float32))


def test_inputs_unchanged_and_layer_object(rng):
    weight = rng.normal(size=(C_OUT, C_IN)).astype(np.float32)
    bias = rng.normal(size=C_OUT).astype(np.float32)
    copies = weight.copy(), bias.copy()
    layer = cnorm.BatchNorm(C_OUT, eps=1e-3, dtype=np.float64)
    bn = _bn(rng)
    layer.running_mean[:] = bn["running_mean"]
    layer.running_var[:] = bn["running_var"]
    layer.gamma[:] = bn["gamma"]
    layer.beta[:] = bn["beta"]
    from_layer = cnorm.fold_batch_norm(weight, bias, layer, layout="OI")
    from_arrays = cnorm.fold_batch_norm(weight, bias, eps=1e-3, layout="OI", **bn)
    for a, b in zip(from_layer, from_arrays):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(weight, copies[0])
    np.testing.assert_array_equal(bias, copies[1])
    with pytest.raises(TypeError, match="layer"):
        cnorm.fold_batch_norm(weight, bias, layer, bn["running_var"], layout="OI")
    with pytest.raises(ValueError, match="track_running_stats"):
        cnorm.fold_batch_norm(weight, bias, cnorm.BatchNorm(C_OUT, track_running_stats=False),
                              layout="OI")


def test_bad_input(rng):
    weight = rng.normal(size=(C_OUT, C_IN, K, K))
    bn = _bn(rng)
    with pytest.raises(ValueError, match="layout must be one of"):
        cnorm.fold_batch_norm(weight, None, layout="NCHW", **bn)
    with pytest.raises(TypeError, match="layout must be a str"):
        cnorm.fold_batch_norm(weight, None, layout=0, **bn)
    with pytest.raises(TypeError):
        cnorm.fold_batch_norm(weight, None, **bn)  # layout is required
    with pytest.raises(ValueError, match=r"running_mean must have shape \(3,\)"):
        cnorm.fold_batch_norm(weight, None, layout="HWIO", **bn)  # output axis is C_IN... K
    with pytest.raises(ValueError, match="4 axes"):
        cnorm.fold_batch_norm(weight[:, :, 0, 0], None, layout="OIHW", **bn)
    with pytest.raises(ValueError, match="2 axes"):
        cnorm.fold_batch_norm(weight, None, layout="OI", **bn)
    with pytest.raises(ValueError, match="bias must have shape"):
        cnorm.fold_batch_norm(weight, np.zeros(C_OUT + 1), layout="OIHW", **bn)
    with pytest.raises(TypeError, match="weight must have dtype"):
        cnorm.fold_batch_norm(weight.astype(np.int32), None, layout="OIHW", **bn)
    bad = dict(bn, running_var=-bn["running_var"])
    with pytest.raises(ValueError, match="running_var must be >= 0"):
        cnorm.fold_batch_norm(weight, None, layout="OIHW", **bad)
    with pytest.raises(ValueError, match="eps"):
        cnorm.fold_batch_norm(weight, None, eps=0.0, layout="OIHW", **bn)



def _torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_against_torch_fuse_conv_bn_weights(dtype, rng):
    torch = _torch()
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    weight = rng.normal(size=(C_OUT, C_IN, K, K)).astype(dtype)
    bias = rng.normal(size=C_OUT).astype(dtype)
    bn = {k: v.astype(dtype) for k, v in _bn(rng).items()}
    t = {k: torch.from_numpy(v) for k, v in bn.items()}
    w_t, b_t = fuse_conv_bn_weights(torch.from_numpy(weight), torch.from_numpy(bias),
                                    t["running_mean"], t["running_var"], 1e-5, t["gamma"],
                                    t["beta"])
    w2, b2 = cnorm.fold_batch_norm(weight, bias, layout="OIHW", **bn)
    tol = dict(rtol=2e-6, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(w2, w_t.detach().numpy(), **tol)
    np.testing.assert_allclose(b2, b_t.detach().numpy(), **tol)
    # ConvTranspose: torch's transpose=True is cnorm's IOHW
    weight = np.ascontiguousarray(weight.transpose(1, 0, 2, 3))  # (C_in, C_out, kh, kw)
    w_t, b_t = fuse_conv_bn_weights(torch.from_numpy(weight), None, t["running_mean"],
                                    t["running_var"], 1e-5, t["gamma"], t["beta"],
                                    transpose=True)
    w2, b2 = cnorm.fold_batch_norm(weight, None, layout="IOHW", **bn)
    np.testing.assert_allclose(w2, w_t.detach().numpy(), **tol)
    np.testing.assert_allclose(b2, b_t.detach().numpy(), **tol)


def test_against_torch_fuse_linear_bn_weights(rng):
    torch = _torch()
    from torch.nn.utils.fusion import fuse_linear_bn_weights

    weight = rng.normal(size=(C_OUT, C_IN))
    bias = rng.normal(size=C_OUT)
    bn = _bn(rng)
    t = {k: torch.from_numpy(v) for k, v in bn.items()}
    w_t, b_t = fuse_linear_bn_weights(torch.from_numpy(weight), torch.from_numpy(bias),
                                      t["running_mean"], t["running_var"], 1e-5, t["gamma"],
                                      t["beta"])
    w2, b2 = cnorm.fold_batch_norm(weight, bias, layout="OI", **bn)
    np.testing.assert_allclose(w2, w_t.detach().numpy(), rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(b2, b_t.detach().numpy(), rtol=1e-14, atol=1e-14)


def test_float64_gain_on_a_large_dynamic_range(rng):
    """float32 weights and statistics spanning many decades: cnorm's folded
    values are the exact ones rounded once, so never farther from them than
    torch's float32 arithmetic (and strictly closer somewhere)."""
    torch = _torch()
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    n = 64
    weight = (rng.normal(size=(n, 4, 3, 3)) * 10.0 ** rng.uniform(-20, 20, (n, 4, 3, 3))
              ).astype(np.float32)
    bias = (rng.normal(size=n) * 10.0 ** rng.uniform(-10, 10, n)).astype(np.float32)
    mean = (rng.normal(size=n) * 10.0 ** rng.uniform(-10, 10, n)).astype(np.float32)
    var = (10.0 ** rng.uniform(-12, 12, n)).astype(np.float32)
    gamma = (rng.normal(size=n) * 10.0 ** rng.uniform(-6, 6, n)).astype(np.float32)
    beta = (rng.normal(size=n) * 10.0 ** rng.uniform(-6, 6, n)).astype(np.float32)
    eps = 1e-5
    s = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    exact_w = weight.astype(np.float64) * s[:, None, None, None]
    exact_b = (bias.astype(np.float64) - mean) * s + beta
    w2, b2 = cnorm.fold_batch_norm(weight, bias, mean, var, gamma, beta, eps, layout="OIHW")
    w_t, b_t = fuse_conv_bn_weights(*(torch.from_numpy(a) for a in (weight, bias, mean, var)),
                                    eps, torch.from_numpy(gamma), torch.from_numpy(beta))
    w_t, b_t = w_t.detach().numpy(), b_t.detach().numpy()

    def error(got, exact):
        return np.abs(got.astype(np.float64) - exact) / np.abs(exact)

    assert (error(w2, exact_w) <= error(w_t, exact_w)).all()
    assert (error(b2, exact_b) <= error(b_t, exact_b) * (1 + 1e-12) + 1e-300).all()
    assert error(w2, exact_w).max() <= 2.0 ** -24 * 1.0000001   # half an ulp: rounded once
    assert error(w_t, exact_w).max() > error(w2, exact_w).max()
