"""Build and runtime facts: show_config() and openmp_enabled()."""
import platform
import sys
import warnings

from cnorm import _dispatch, _openmp, _openmp_runtime, _tuning


def openmp_enabled():
    """Return True if cnorm's kernels were built with OpenMP."""
    return _openmp.openmp_enabled()


def _build_info():
    try:
        from cnorm._build_info import BUILD_INFO
    except ImportError:  # built by something other than setup.py
        return {}
    return dict(BUILD_INFO)


def openmp_runtimes():
    """The OpenMP runtimes of this process, as cnorm sees them.

    Returns
    -------
    dict
        ``loaded``: real paths of the OpenMP runtime libraries mapped in the
        process (libgomp, libomp, libiomp; None where that cannot be read, i.e.
        not on Linux); ``cnorm``: the one cnorm's kernels are bound to (None
        without OpenMP); ``global``: the one that defines OpenMP's symbols in the
        global scope, which libraries loaded from now on bind to (None if none);
        ``preload``: what cnorm's global-scope preload did.
    """
    return {
        "loaded": _openmp_runtime.loaded_runtimes(),
        "cnorm": _openmp_runtime.library_of(_openmp.openmp_symbol_address()),
        "global": _openmp_runtime.global_runtime(),
        "preload": _openmp_runtime.status,
    }


def config():
    """Return the facts show_config prints, as a dict."""
    import numpy

    import cnorm

    runtimes = openmp_runtimes()
    loaded = runtimes["loaded"]
    info = {
        "cnorm": cnorm.__version__,
        "python": sys.version.split()[0],
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "isa_level": _dispatch.ISA_LEVEL,
        "cpu_level": _openmp.cpu_level(),
        "openmp": openmp_enabled(),
        "max_threads": _openmp.max_threads(),
        "openmp.runtime_used": runtimes["cnorm"],
        "openmp.global_runtime": runtimes["global"],
        "openmp.loaded_runtimes": "unknown" if loaded is None else loaded,
        "openmp.preload": runtimes["preload"],
    }
    for kernels in ("_batchnorm", "_lrn"):
        numbers = _tuning.current(_dispatch.kernels(kernels))
        info.update({f"tuning.{name}": value for name, value in numbers.items()})
    build = _build_info()
    flags = build.pop("isa_flags", {})
    info["isa_flags"] = flags.get(_dispatch.ISA_LEVEL.replace("-", "_"), "unknown")
    info.update({f"build.{key}": value for key, value in build.items()})
    return info


def _runtime_warning(runtimes):
    """The warning text for two OpenMP runtimes in use at once, or None.

    More than one runtime being mapped is normal beside PyTorch: the one loaded
    second is shadowed (its users bind to the global one). Two are in use when
    cnorm's kernels are bound to a runtime other than the global one, which is
    what the preload prevents and what CNORM_OPENMP_GLOBAL=0 brings back.
    """
    loaded = runtimes["loaded"] or []
    if len(loaded) < 2 or runtimes["cnorm"] is None:
        return None
    if runtimes["global"] is None or runtimes["cnorm"] == runtimes["global"]:
        return None
    return (
        f"{len(loaded)} OpenMP runtimes are loaded and cnorm uses {runtimes['cnorm']} "
        f"while other libraries bind to {runtimes['global']}: their worker threads "
        "spin against each other and alternating operations can run many times "
        "slower. Import cnorm without CNORM_OPENMP_GLOBAL=0 (see the documentation, "
        "User guide, 'Threads, and OpenMP beside PyTorch')."
    )


def show_config(mode="stdout"):
    """Print cnorm's version, ISA level, build flags and OpenMP state.

    Lists the OpenMP runtimes loaded in the process and the one cnorm uses, and
    warns (RuntimeWarning) when cnorm runs on a runtime of its own while
    another one is the process-global one: two runtimes in use at once.

    Parameters
    ----------
    mode : {"stdout", "dicts"}, default "stdout"
        "stdout" prints the facts; "dicts" returns them instead, as
        ``numpy.show_config`` does.

    Returns
    -------
    dict or None
        With ``mode="dicts"``: the facts by name, among them ``"cnorm"`` (the
        version), ``"isa_level"`` (the kernel build in use: ``"baseline"``,
        ``"x86-64-v3"`` or ``"x86-64-v4"``), ``"cpu_level"`` (the best the
        CPU runs), ``"openmp"``, ``"max_threads"`` and the OpenMP runtimes.
        None otherwise.

    Examples
    --------
    >>> import cnorm
    >>> info = cnorm.show_config(mode="dicts")
    >>> info["isa_level"] in ("baseline", "x86-64-v3", "x86-64-v4")
    True
    """
    if mode not in ("stdout", "dicts"):
        raise ValueError(f'mode must be "stdout" or "dicts", got {mode!r}')
    info = config()
    message = _runtime_warning(openmp_runtimes())
    if mode == "dicts":
        if message:
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        return info
    for key, value in info.items():
        if isinstance(value, list):
            print(f"{key:24s} {len(value)}")
            for item in value:
                print(f"{'':24s}   {item}")
        else:
            print(f"{key:24s} {value}")
    if message:
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    return None
