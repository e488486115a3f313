"""Shared test settings: per-dtype tolerances, thread counts, hypothesis profile."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# Two cores: keep hypothesis modest, and without deadlines (the machine is shared).
settings.register_profile(
    "cnorm", max_examples=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("ci", parent=settings.get_profile("cnorm"), max_examples=60)
settings.load_profile("ci" if os.environ.get("CI") else "cnorm")

# Thread counts every determinism test uses: 3 oversubscribes a 2-core machine,
# which is the point (chunks must not depend on the thread count).
THREAD_COUNTS = (1, 2, 3)


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request):
    return request.param


@pytest.fixture(params=THREAD_COUNTS, ids=lambda n: f"{n}threads")
def n_threads(request):
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(20261123)


@pytest.fixture(params=__import__("cnorm._dispatch", fromlist=["_"]).available_levels())
def isa(request):
    """Run the test with the kernels of each ISA build this CPU can run (one process)."""
    from cnorm import _dispatch

    with _dispatch.using(request.param):
        yield request.param


@pytest.fixture
def measured_tuning():
    """The kernels' tuning numbers of the machine the decision tests pin
    (cnorm._tuning's compiled defaults: thresholds of 32 and 16 MiB, ...), in
    every ISA build of both kernel modules, whatever this machine's caches;
    restored afterwards."""
    from cnorm import _dispatch

    modules = [_dispatch._built(level, kernels) for level in _dispatch.available_levels()
               for kernels in ("_batchnorm", "_lrn")]
    saved = [module.set_tuning(*module.DEFAULT_TUNING) for module in modules]
    try:
        yield
    finally:
        for module, previous in zip(modules, saved):
            module.set_tuning(*previous)
