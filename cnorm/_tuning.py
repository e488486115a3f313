"""The kernels' cache thresholds, from this machine's caches, set once at import.

What
----
The batch-norm passes write their float32 outputs with streaming stores
(non-temporal: not read into the cache first) when the pass's tensors do not
fit in the last-level cache, and the backward picks its reductions' walk by
the same test. The thresholds, in bytes of the pass's tensors together:

``stream_bytes``
    a pass that reads its inputs for the first time (inference; default:
    32 MiB, or the last-level cache's size if it is smaller);
``reread_stream_bytes``
    the second pass of training and backward, which re-reads what the first
    pass left in the cache (default: 16 MiB, or half the cache if smaller).

The defaults were measured on an AMD Zen 5 (32 MiB of L3 per CCD). The
last-level cache's size is read from Linux's sysfs
(``/sys/devices/system/cpu/cpu0/cache/index*/size``, the highest level).
A larger cache does not raise them: on the Intel Xeon VM with 480 MiB of L3,
thresholds of 480 and 240 MiB made the benchmark suite's batch norms over
25.7 MB tensors 1.2-1.95x slower (out= given, A/B against the 32 MiB build,
2 threads); in a network the outputs cnorm.torch allocates are mostly fresh
memory, which is not streamed (see cn_pages_resident).

``CNORM_TUNING`` in the environment overrides them, as comma-separated
``name=bytes`` pairs (suffixes K, M, G: powers of 1024), e.g.
``CNORM_TUNING=stream_bytes=32M,reread_stream_bytes=16M``; a wrong name or
size raises ImportError at ``import cnorm``, naming the variable. The
thresholds decide how a pass stores and walks its data, not what each thread
computes: results are the same bits for any thread count under any setting
(though a different reduction walk may change the last bits of statistics
across settings, as across ISA levels).
"""
import functools
import glob
import os
import re

ENV_VAR = "CNORM_TUNING"
NAMES = ("stream_bytes", "reread_stream_bytes")
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]?)\s*$", re.IGNORECASE)
_SYSFS = "/sys/devices/system/cpu/cpu0/cache/index*"


def parse_size(text):
    """Bytes of a size such as ``491520K`` (sysfs) or ``32M``; None if it is not one."""
    match = _SIZE.match(text)
    if match is None:
        return None
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def last_level_cache_bytes(pattern=_SYSFS):
    """The size of the highest-level data or unified cache of CPU 0, or None."""
    best = None
    for index in glob.glob(pattern):
        try:
            with open(os.path.join(index, "level")) as f:
                level = int(f.read())
            with open(os.path.join(index, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(index, "size")) as f:
                size = parse_size(f.read())
        except (OSError, ValueError):
            continue
        if kind in ("Data", "Unified") and size and (best is None or level > best[0]):
            best = (level, size)
    return None if best is None else best[1]


def thresholds(defaults, cache_bytes=None, environ=None):
    """The thresholds, as a dict of NAMES: from `cache_bytes` (the last-level
    cache; `defaults` when None), then CNORM_TUNING of `environ`."""
    values = dict(zip(NAMES, defaults))
    if cache_bytes:  # (a smaller cache streams sooner; a larger one keeps the defaults)
        values = {"stream_bytes": min(cache_bytes, defaults[0]),
                  "reread_stream_bytes": min(cache_bytes // 2, defaults[1])}
    setting = (os.environ if environ is None else environ).get(ENV_VAR, "").strip()
    for item in filter(None, (part.strip() for part in setting.split(","))):
        name, _, size = item.partition("=")
        name = name.strip()
        if name not in NAMES:
            raise ImportError(f"{ENV_VAR}: unknown name {name!r} in {setting!r}; the names "
                              f"are {', '.join(NAMES)}")
        value = parse_size(size)
        if value is None:
            raise ImportError(f"{ENV_VAR}: {name} must be a size in bytes such as 32M, "
                              f"got {size.strip()!r}")
        values[name] = value
    return values


_configured = set()


@functools.lru_cache(maxsize=None)
def _values(defaults):
    return thresholds(defaults, last_level_cache_bytes())


def configure(module):
    """Set the thresholds of a kernel module (cnorm._batchnorm at any ISA
    level) the first time it is loaded; later calls leave it as it is."""
    if module.__name__ not in _configured:
        values = _values(tuple(module.DEFAULT_TUNING))
        module.set_tuning(*(values[name] for name in NAMES))
        _configured.add(module.__name__)
    return module
