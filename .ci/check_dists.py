"""Check the sdist and the repaired wheel hold what they must and nothing else.

    python .ci/check_dists.py dist/cnorm-X.tar.gz wheelhouse/cnorm-X-...whl

Expected contents come from the source tree, so new kernel modules are covered:
every cnorm/*.pyx and *.pxd must be in the sdist and not in the wheel, every
cnorm/*.pyx must be compiled in the wheel, every cnorm/*.pyi must ship. Prints
a summary (tag, size, listing) and exits non-zero with the problems found.
"""
import glob
import os
import platform
import re
import sys
import tarfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def source(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def check_sdist(path, problems):
    with tarfile.open(path) as tar:
        names = [name.split("/", 1)[1] for name in tar.getnames() if "/" in name]
    required = (source("cnorm/*.pyx") + source("cnorm/*.pxd") + source("cnorm/*.pyi")
                + source("cnorm/*.h") + ["cnorm/py.typed", "docs/design.md", "docs/conf.py", "docs/index.md",
                   "benchmarks/results/latest.png", "setup.py", "pyproject.toml", "MANIFEST.in",
                   "tests/conftest.py", "tests/typing_example.py"])
    for name in required:
        if name not in names:
            problems.append(f"sdist lacks {name}")
    for name in names:
        if (name.endswith((".c", ".so", ".o", ".pyc", ".html")) or name.startswith("build/")
                or "__pycache__" in name or name == "cnorm/_build_info.py"):
            problems.append(f"sdist holds build output {name}")
    print(f"sdist {os.path.basename(path)}: {os.path.getsize(path)} bytes, {len(names)} entries; "
          f"{sum(n.endswith('.pyx') for n in names)} .pyx, {sum(n.endswith('.pxd') for n in names)} "
          f".pxd, {sum(n.endswith('.c') for n in names)} .c, "
          f"{sum(n.startswith('tests/') for n in names)} under tests/")


def check_wheel(path, problems):
    filename = os.path.basename(path)
    match = re.fullmatch(r"cnorm-[^-]+-(cp\d+)-(cp\d+)-(.+)\.whl", filename)
    if not match:
        problems.append(f"unexpected wheel name {filename}")
        return
    tag = match.group(3)
    if not re.fullmatch(rf"manylinux_2_\d+_{platform.machine()}(\.manylinux.*)?", tag):
        problems.append(f"wheel platform tag {tag} is not manylinux_2_*_{platform.machine()}")
    with zipfile.ZipFile(path) as wheel:
        names = wheel.namelist()
        build_info = wheel.read("cnorm/_build_info.py").decode() if "cnorm/_build_info.py" in names else ""
    for name in names:
        top = name.split("/", 1)[0]
        if top not in ("cnorm", "cnorm.libs") and not top.endswith(".dist-info"):
            problems.append(f"wheel holds {name} outside the package")
        if (name.endswith((".c", ".h", ".pyx", ".pxd", ".o", ".html", ".pyc"))
                or "__pycache__" in name or "/build/" in name or name.startswith("build/")):
            problems.append(f"wheel holds build leftover or source {name}")
    for pyx in source("cnorm/*.pyx"):
        module = pyx[:-len(".pyx")]
        if not any(re.fullmatch(re.escape(module) + r"\.cpython-[^/]+\.so", n) for n in names):
            problems.append(f"wheel lacks the compiled {module}")
    for stub in source("cnorm/*.pyi") + ["cnorm/py.typed", "cnorm/_build_info.py"]:
        if stub not in names:
            problems.append(f"wheel lacks {stub}")
    if "'openmp': True" in build_info and not any(
            re.fullmatch(r"cnorm\.libs/libgomp-[0-9a-f]+\.so[.\d]*", n) for n in names):
        problems.append("wheel built with OpenMP but no libgomp vendored in cnorm.libs/")
    print(f"wheel {filename}: tag {tag}, {os.path.getsize(path)} bytes, {len(names)} entries")


def main(sdist, wheel):
    problems = []
    check_sdist(sdist, problems)
    check_wheel(wheel, problems)
    for problem in problems:
        print("PROBLEM:", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
