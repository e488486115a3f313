"""One OpenMP runtime per process: load cnorm's into the global symbol scope.

Why
---
PyTorch ships its own libgomp and loads it into the process's GLOBAL symbol
scope. Python loads extension modules with RTLD_LOCAL, so if cnorm is imported
first its kernels bind to the libgomp they link to (the copy vendored in the
wheel, ``cnorm.libs/libgomp-<hash>.so*``) privately, and when torch comes
second the process runs two OpenMP runtimes whose worker threads spin-wait
against each other: alternating small torch and cnorm ops was measured 36x to
250x slower. If torch comes first there is no penalty, because symbol lookup
searches the global scope first and cnorm binds to torch's runtime.

What
----
`preload()`, called at the top of ``cnorm/__init__.py`` before any extension
module is imported, finds the OpenMP library cnorm's extensions link to and
loads it with ``RTLD_GLOBAL``. Whichever of cnorm and torch comes first then
provides the one runtime both use, and ``torch.set_num_threads``,
``OMP_NUM_THREADS`` and threadpoolctl limit both.

The library is found the way the dynamic loader finds it for the extension:
the extension's DT_NEEDED entry naming an OpenMP runtime, looked up in its
RPATH/RUNPATH (where auditwheel points it at ``cnorm.libs``), then by name in
the loader's default search path (a source or editable build linking the
system ``libgomp.so.1``). Nothing is loaded that the extension would not load
anyway.

``CNORM_OPENMP_GLOBAL=0`` in the environment turns this off (the extensions
then bind to their runtime privately, as any RTLD_LOCAL library would). Only
Linux is handled; elsewhere this module does nothing.
"""
import ctypes
import importlib.util
import os
import struct
import sys

ENV_VAR = "CNORM_OPENMP_GLOBAL"
# Library-name stems of the OpenMP runtimes: GNU, LLVM, Intel.
RUNTIME_STEMS = ("libgomp", "libomp", "libiomp")

# Set by preload(): the path loaded globally (or None) and a one-line reason.
loaded_path = None
status = "not attempted"


def is_openmp_runtime(name):
    """True if the file name `name` is that of an OpenMP runtime library."""
    base = os.path.basename(name)
    return any(base.startswith(stem) and ".so" in base for stem in RUNTIME_STEMS)


def _disabled():
    return os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "false", "no", "off")


def _elf_dynamic(path):
    """Return (needed, search_dirs) from the ELF dynamic section of `path`.

    needed: the DT_NEEDED names; search_dirs: the DT_RPATH and DT_RUNPATH
    directories, ``$ORIGIN`` expanded. A minimal reader of ELF32/ELF64 of
    either byte order; raises ValueError on anything it cannot read.
    """
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF":
        raise ValueError(f"{path} is not an ELF file")
    is64 = data[4] == 2
    order = "<" if data[5] == 1 else ">"
    if is64:
        shoff, = struct.unpack_from(order + "Q", data, 0x28)
        shentsize, shnum = struct.unpack_from(order + "HH", data, 0x3A)
        section = order + "IIQQQQIIQQ"  # name type flags addr offset size link info align entsize
        dyn = order + "qQ"
    else:
        shoff, = struct.unpack_from(order + "I", data, 0x20)
        shentsize, shnum = struct.unpack_from(order + "HH", data, 0x2E)
        section = order + "IIIIIIIIII"
        dyn = order + "iI"
    sections = [struct.unpack_from(section, data, shoff + i * shentsize) for i in range(shnum)]
    SHT_DYNAMIC, DT_NULL, DT_NEEDED, DT_RPATH, DT_RUNPATH = 6, 0, 1, 15, 29
    for _, kind, _, _, offset, size, link, _, _, _ in sections:
        if kind != SHT_DYNAMIC:
            continue
        strtab = sections[link][4]

        def string(index):
            end = data.index(b"\0", strtab + index)
            return data[strtab + index:end].decode("utf-8", "surrogateescape")

        needed, dirs = [], []
        for entry in range(offset, offset + size, struct.calcsize(dyn)):
            tag, value = struct.unpack_from(dyn, data, entry)
            if tag == DT_NULL:
                break
            if tag == DT_NEEDED:
                needed.append(string(value))
            elif tag in (DT_RPATH, DT_RUNPATH):
                origin = os.path.dirname(os.path.abspath(path))
                for entry_dir in string(value).split(":"):
                    if entry_dir:
                        dirs.append(entry_dir.replace("${ORIGIN}", origin).replace("$ORIGIN", origin))
        return needed, dirs
    return [], []


def runtime_for(extension_path):
    """The OpenMP library `extension_path` loads: a path, a bare soname, or None."""
    needed, dirs = _elf_dynamic(extension_path)
    for name in needed:
        if is_openmp_runtime(name):
            for directory in dirs:
                candidate = os.path.join(directory, name)
                if os.path.exists(candidate):
                    return os.path.realpath(candidate)
            return name  # the loader's default search, as for the extension
    return None


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def library_of(address):
    """The real path of the shared object holding `address` (dladdr), or None."""
    if not address:
        return None
    try:
        dladdr = ctypes.CDLL(None).dladdr
    except (OSError, AttributeError):
        return None
    dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
    info = _DlInfo()
    if not dladdr(address, ctypes.byref(info)) or not info.dli_fname:
        return None
    return os.path.realpath(os.fsdecode(info.dli_fname))


def global_runtime():
    """The library that defines OpenMP's symbols in the global scope, or None.

    This is the runtime any library loaded from now on binds to (the first
    definition of ``omp_get_max_threads`` in load order among the main program
    and the RTLD_GLOBAL libraries).
    """
    try:
        symbol = ctypes.CDLL(None).omp_get_max_threads
    except (OSError, AttributeError):
        return None
    return library_of(ctypes.cast(symbol, ctypes.c_void_p).value)


def loaded_runtimes():
    """Real paths of the OpenMP runtime libraries mapped in this process, in map order.

    Read from /proc/self/maps; None where that does not exist (not Linux).
    """
    try:
        with open("/proc/self/maps") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    paths = []
    for line in lines:
        fields = line.split(None, 5)
        if len(fields) == 6 and is_openmp_runtime(fields[5]):
            path = os.path.realpath(fields[5].strip())
            if path not in paths:
                paths.append(path)
    return paths


def preload():
    """Load the OpenMP runtime of cnorm's extensions with RTLD_GLOBAL, once.

    Never raises: a failure is recorded in `status` (and the extension import
    that follows reports a missing library in its own words).
    """
    global loaded_path, status
    if status != "not attempted":
        return
    if not sys.platform.startswith("linux"):
        status = f"not done: only on Linux (this is {sys.platform})"
        return
    if _disabled():
        status = f"not done: {ENV_VAR}={os.environ[ENV_VAR]}"
        return
    try:
        spec = importlib.util.find_spec("cnorm._openmp")
        if spec is None or not spec.origin or not os.path.isfile(spec.origin):
            status = "not done: cnorm._openmp extension not found"
            return
        runtime = runtime_for(spec.origin)
        if runtime is None:
            status = "not done: cnorm is built without OpenMP"
            return
        mode = getattr(os, "RTLD_NOW", 2) | getattr(os, "RTLD_GLOBAL", 0x100)
        library = ctypes.CDLL(runtime, mode=mode)
        loaded_path = library_of(ctypes.cast(library.omp_get_max_threads, ctypes.c_void_p).value) or runtime
        status = f"loaded {loaded_path} with RTLD_GLOBAL"
    except Exception as exc:  # never let the preload break `import cnorm`
        status = f"failed: {type(exc).__name__}: {exc}"
