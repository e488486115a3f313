"""The NumPy reference against the worked examples of docs/guide/conventions.md."""
import numpy as np
import pytest

from cnorm import reference
from helpers import numerical_gradient


def test_tf_example_constant_input():
    x = 2 * np.ones((2, 2, 2, 3))
    y = reference.lrn(x, depth_radius=1, bias=0.0, alpha=1.0, beta=1.0)
    np.testing.assert_allclose(y, np.broadcast_to([0.25, 1 / 6, 0.25], x.shape), rtol=1e-15)


def test_tf_example_arange():
    x = np.arange(1, 33, dtype=np.float64).reshape(2, 2, 2, 4)
    y = reference.lrn(x, depth_radius=2, bias=0.0, alpha=1.0, beta=1.0)
    assert y[1, 1, 0, 1] == pytest.approx(26 / (25**2 + 26**2 + 27**2 + 28**2), rel=1e-15)
    assert y[1, 1, 0, 1] == pytest.approx(0.00923952, abs=5e-9)


@pytest.mark.parametrize(
    "size, convention, expected",
    [
        (2, "torch", [0.666667, 0.571429, 0.4, 0.296296, 0.232558]),
        (2, "onnx", [0.285714, 0.266667, 0.222222, 0.186047, 0.37037]),
        (4, "torch", [0.444444, 0.444444, 0.352941, 0.275862, 0.37037]),
        (4, "onnx", [0.222222, 0.235294, 0.206897, 0.296296, 0.444444]),
        (3, "torch", [0.375, 0.352941, 0.28125, 0.226415, 0.340909]),
        (3, "onnx", [0.375, 0.352941, 0.28125, 0.226415, 0.340909]),
        (3, "caffe", [0.375, 0.352941, 0.28125, 0.226415, 0.340909]),
    ],
)
def test_size_based_examples(size, convention, expected):
    x = np.arange(1.0, 6.0)
    y = reference.local_response_norm(x, size, alpha=1.0, beta=1.0, k=1.0, convention=convention)
    np.testing.assert_allclose(y, expected, atol=5e-7)


def test_windows_of_each_convention():
    assert reference.lrn_window(4, "torch") == (2, 1)  # front-heavy
    assert reference.lrn_window(4, "onnx") == (1, 2)  # back-heavy
    assert reference.lrn_window(5, "caffe") == (2, 2)
    with pytest.raises(ValueError):
        reference.lrn_window(4, "caffe")


@pytest.mark.parametrize("size, convention", [(1, "torch"), (2, "torch"), (3, "onnx"),
                                              (4, "onnx"), (4, "torch"), (5, "caffe")])
@pytest.mark.parametrize("beta", [0.5, 0.75, 1.0, 0.6])
def test_backward_matches_finite_differences(size, convention, beta):
    """alpha = 1 and k small, so that a wrong cross term cannot hide."""
    rng = np.random.default_rng(size * 10 + int(beta * 100))
    x = rng.standard_normal((2, 3, 7))
    dy = rng.standard_normal(x.shape)
    params = dict(alpha=1.0 * size, beta=beta, k=0.5, convention=convention)  # a = 1

    numeric = numerical_gradient(
        lambda: np.sum(dy * reference.local_response_norm(x, size, **params)), x)
    analytic = reference.local_response_norm_backward(dy, x, size, **params)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-7)
