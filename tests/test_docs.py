"""Every example of the documentation runs: the docstrings' doctests, and the
code of README.md and of every page under docs/.

In the Markdown pages a ```pycon block is a doctest (its outputs are
checked), and a ```python block is executed (its asserts are the checks).
The blocks of a page run in order in one namespace, so a page reads as one
session. A block whose first line is ``# not run: <reason>`` is shown, not
run (a cluster's address, say). Pages that
use an optional framework are skipped when it is missing (``NEEDS``), and
fail instead with CNORM_REQUIRE_FRAMEWORKS=1, as in the documentation step of
``.ci/run``, which installs them all.
"""
import doctest
import importlib
import os
import pathlib
import re

import pytest

from helpers import need

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
OPTIONS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS
FENCE = re.compile(r"^```(python|pycon)[ \t]*\n(.*?)^```", re.M | re.S)
NOT_RUN = "# not run:"

# Keras 3.15's variables warn under NumPy 2 when converted (np.array(variable)).
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

# Modules a page's examples import, beyond cnorm and NumPy.
NEEDS = {
    "README.md": ["torch"],
    "index.md": ["torch"],
    "quickstart/pytorch.md": ["torch"],
    "quickstart/keras.md": ["keras"],
    "quickstart/onnx.md": ["onnx", "onnxruntime"],
    "guide/layers.md": ["torch"],
    "guide/distributed.md": ["dask", "distributed"],
}


@pytest.mark.parametrize("module", ["cnorm.lrn", "cnorm.batchnorm", "cnorm.layers",
                                    "cnorm.moments", "cnorm._config", "cnorm.torch"])
def test_docstring_examples(module):
    if module == "cnorm.torch":
        need("torch")
    result = doctest.testmod(importlib.import_module(module), optionflags=OPTIONS)
    assert result.attempted > 0 and result.failed == 0, result


def _pages():
    if not DOCS.is_dir():  # the suite run from a copy of tests/ (the installed wheel)
        return []
    return ["README.md"] + sorted(str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md")
                                  if "_build" not in path.parts)


def blocks(text):
    """The (language, code, line number) of each python or pycon fence."""
    return [(match.group(1), match.group(2), text.count("\n", 0, match.start(2)) + 1)
            for match in FENCE.finditer(text)]


def run_page(path, name):
    """Run the page's blocks in order; return the number not run."""
    text = path.read_text(encoding="utf-8")
    namespace = {"__name__": "__docs__"}
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    shown_only = 0
    for language, code, line in blocks(text):
        if code.lstrip().startswith(NOT_RUN):
            shown_only += 1
            continue
        if language == "pycon":
            test = parser.get_doctest(code, namespace, f"{name}:{line}", str(path), line)
            result = runner.run(test, clear_globs=False)
            namespace.update(test.globs)  # DocTest works on a copy of the namespace
            assert result.failed == 0, f"{name}, block at line {line}: a doctest failed (above)"
        else:
            exec(compile("\n" * (line - 1) + code, str(path), "exec"), namespace)
    return shown_only


@pytest.mark.parametrize("page", _pages())
def test_page_examples(page, monkeypatch):
    for module in NEEDS.get(page, []):
        if module == "keras":
            monkeypatch.setenv("KERAS_BACKEND", os.environ.get("KERAS_BACKEND", "torch"))
        need(module)
    monkeypatch.chdir(ROOT)
    run_page(_path(page), page)


def _path(page):
    return ROOT / page if page == "README.md" else DOCS / page


def test_every_page_in_needs_exists():
    for page in NEEDS:
        assert _path(page).is_file() or not DOCS.is_dir(), page


def test_fence_parser():
    text = "a\n```python\nx = 1\n```\n\n```pycon\n>>> x + 1\n2\n```\n```sh\nls\n```\n"
    assert [(language, line) for language, _, line in blocks(text)] == [("python", 3), ("pycon", 7)]


def test_readme_commands_are_the_ci_commands():
    # The README's first two shell blocks are the set-up commands; .ci/run runs the
    # second (the test command) exactly as written, so neither can drift alone.
    ci = ROOT / ".ci" / "run"
    if not ci.is_file():  # the suite run from a copy of tests/ (the installed wheel)
        pytest.skip("no .ci/run beside the tests")
    shell = re.findall(r"^```sh[ \t]*\n(.*?)^```", (ROOT / "README.md").read_text(), re.M | re.S)
    main_job, test_command = shell[0].strip(), shell[1].strip()
    assert main_job.endswith("pip install -e . && python -m cnorm"), main_job
    assert any(line.startswith(test_command + " ")
               or line == test_command for line in ci.read_text().splitlines()), test_command
