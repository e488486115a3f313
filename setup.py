"""Build script for cnorm's Cython extensions.

Everything that decides how the kernels are compiled lives here, in one place:
the Cython compiler directives (with a debug switch), the C compiler flags and
the OpenMP probe.

Environment switches
--------------------
CNORM_CYTHON_DEBUG=1
    Compile with boundscheck, wraparound and initializedcheck on, and with the
    kernel entry points checking the arrays and sizes they are given
    (CNORM_DEBUG_CHECKS; see cnorm/_buffers.pyx): a debug build that CI runs
    the tests against once.
CNORM_SANITIZE=1
    Compile and link the extensions with AddressSanitizer and
    UndefinedBehaviorSanitizer (-fsanitize=address,undefined
    -fno-omit-frame-pointer -g). Python itself is not instrumented: run with
    LD_PRELOAD of the compiler's libasan and ASAN_OPTIONS=detect_leaks=0 (see
    .ci/run). For CI, never for a release.
CNORM_DISABLE_OPENMP=1
    Build without OpenMP even where the compiler supports it.
CNORM_BASELINE_ONLY=1
    Build the kernels for the baseline ISA only (no x86-64-v3/v4 copies).
"""
import os
import shutil
import subprocess
import tempfile
import textwrap
import warnings

from setuptools import Extension, setup

# Plain extensions, built once.
EXTENSIONS = ["cnorm._openmp", "cnorm._buffers", "cnorm._layers"]
# Kernel modules, built once per ISA level on x86-64 and picked at import time
# by cnorm._dispatch (see docs/install.md, "Which kernels run"). The suffixed copies are
# generated under build/ from the one .pyx source.
KERNELS = ["cnorm._lrn", "cnorm._batchnorm"]
# GCC's x86-64-v4 tuning keeps to 256-bit vectors; 512-bit ones double the
# throughput of the double-precision sums and the LRN power loops on cores with
# full-width AVX-512 units (measured on AMD Zen 5: batch-norm statistics
# ~1.3x, LRN forward ~1.3x faster than at 256 bits).
ISA_LEVELS = {"x86_64_v3": ["-march=x86-64-v3"],
              "x86_64_v4": ["-march=x86-64-v4", "-mprefer-vector-width=512"]}

# -O2 does not vectorise with GCC 12, -O3 does; -fno-math-errno lets GCC inline
# and vectorise sqrt. Never -ffast-math or -march=native: see docs/install.md, "Build switches".
BASE_COMPILE_ARGS = ["-O3", "-fno-math-errno"]
OPENMP_FLAG = "-fopenmp"
SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]

RELEASE_DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "initializedcheck": False,
    "cdivision": True,
    "embedsignature": True,
}
DEBUG_DIRECTIVES = dict(
    RELEASE_DIRECTIVES, boundscheck=True, wraparound=True, initializedcheck=True
)


def _env_flag(name):
    return os.environ.get(name, "0").strip().lower() not in ("", "0", "false", "no")


def _openmp_works():
    """Compile, link and run a tiny OpenMP program with the build's compiler."""
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.sysconfig import customize_compiler

    program = textwrap.dedent(
        """
        #include <omp.h>
        #include <stdio.h>
        int main(void) {
            int n = 0;
            #pragma omp parallel reduction(+:n)
            n += 1;
            printf("%d %d\\n", n, omp_get_max_threads());
            return n == omp_get_max_threads() ? 0 : 1;
        }
        """
    )
    compiler = new_compiler()
    customize_compiler(compiler)
    tmp = tempfile.mkdtemp(prefix="cnorm-openmp-")
    cwd = os.getcwd()
    try:
        os.chdir(tmp)
        with open("probe.c", "w") as f:
            f.write(program)
        objects = compiler.compile(["probe.c"], extra_postargs=[OPENMP_FLAG])
        compiler.link_executable(objects, "probe", extra_postargs=[OPENMP_FLAG])
        subprocess.run([os.path.join(tmp, "probe")], check=True, capture_output=True)
        return True
    except Exception as exc:  # any failure means: build serially
        warnings.warn(
            f"OpenMP probe failed ({type(exc).__name__}: {exc}); cnorm is built "
            "without OpenMP and runs single-threaded."
        )
        return False
    finally:
        os.chdir(cwd)
        shutil.rmtree(tmp, ignore_errors=True)


def _compiler_version():
    """First line of `<CC> --version` for the compiler setuptools will use."""
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.sysconfig import customize_compiler

    compiler = new_compiler()
    customize_compiler(compiler)
    command = getattr(compiler, "compiler", None) or ["cc"]
    try:
        output = subprocess.run([command[0], "--version"], capture_output=True, text=True,
                                check=True).stdout
        return output.splitlines()[0].strip()
    except Exception:
        return command[0]


def _cython_version():
    import Cython

    return Cython.__version__


def extensions():
    from Cython.Build import cythonize

    debug = _env_flag("CNORM_CYTHON_DEBUG")
    sanitize = _env_flag("CNORM_SANITIZE")
    openmp = not _env_flag("CNORM_DISABLE_OPENMP") and _openmp_works()
    compile_args = BASE_COMPILE_ARGS + ([OPENMP_FLAG] if openmp else [])
    link_args = [OPENMP_FLAG] if openmp else []
    if debug:
        compile_args.append("-DCNORM_DEBUG_CHECKS=1")
    if sanitize:
        compile_args += SANITIZE_FLAGS
        link_args += SANITIZE_FLAGS
    build_info = {
        "compiler": _compiler_version(),
        "cython": _cython_version(),
        "compile_args": " ".join(compile_args),
        "openmp": openmp,
        "debug_directives": debug,
        "sanitize": sanitize,
    }
    isa_levels = _isa_levels()
    build_info["isa_levels"] = ["baseline"] + list(isa_levels)
    build_info["isa_flags"] = {"baseline": "", **{level: " ".join(flags)
                                                  for level, flags in isa_levels.items()}}

    def extension(name, source, extra=()):
        return Extension(
            name,
            [source],
            extra_compile_args=compile_args + list(extra),
            extra_link_args=link_args,
            libraries=["m"],
            include_dirs=["."],  # cnorm/_storage.h, from the kernel copies under build/ too
        )

    modules = [extension(name, _source(name)) for name in EXTENSIONS + KERNELS]
    for name in KERNELS:
        for suffix, flags in isa_levels.items():
            modules.append(extension(f"{name}_{suffix}", _isa_copy(name, suffix), flags))
    with open(os.path.join("cnorm", "_build_info.py"), "w") as f:
        f.write('"""Written by setup.py at build time."""\n')
        f.write(f"BUILD_INFO = {build_info!r}\n")
    return cythonize(
        modules,
        compiler_directives=DEBUG_DIRECTIVES if debug else RELEASE_DIRECTIVES,
        build_dir=os.path.join("build", "cython"),
        include_path=["."],
        force=debug or sanitize,
    )


def _source(name):
    return name.replace(".", os.sep) + ".pyx"


def _isa_copy(name, suffix):
    """Write build/isa/<module>_<suffix>.pyx, the kernel source under another name."""
    target = os.path.join("build", "isa", _source(f"{name}_{suffix}"))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(_source(name)) as f:
        text = f"# Generated by setup.py from {_source(name)}; do not edit.\n" + f.read()
    if not os.path.exists(target) or open(target).read() != text:
        with open(target, "w") as f:
            f.write(text)
    return target


def _isa_levels():
    """The -march levels to build kernel copies for: x86-64 with GCC or clang only."""
    import platform

    if _env_flag("CNORM_BASELINE_ONLY") or platform.machine().lower() not in ("x86_64", "amd64"):
        return {}
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.sysconfig import customize_compiler

    compiler = new_compiler()
    customize_compiler(compiler)
    tmp = tempfile.mkdtemp(prefix="cnorm-isa-")
    levels = {}
    try:
        source = os.path.join(tmp, "probe.c")
        with open(source, "w") as f:
            f.write("int probe(float *x) { return x[0] > 0; }\n")
        for suffix, flags in ISA_LEVELS.items():
            try:
                compiler.compile([source], output_dir=tmp, extra_postargs=flags)
                levels[suffix] = flags
            except Exception:
                warnings.warn(f"compiler rejects {' '.join(flags)}: no {suffix} kernels")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return levels


setup(ext_modules=extensions())
