"""The kernels' tuning numbers, from this machine's caches, set once at import.

What
----
The numbers that decide how a kernel walks and stores its data, by the size
of the caches it targets. Each is its compiled default (measured on an AMD
Zen 5: 1 MiB of L2 per core, 32 MiB of L3 per CCD), lowered in proportion
where this machine's cache is smaller (never raised: see below):

``stream_bytes``
    batch norm: a pass that reads its inputs for the first time (inference)
    writes its float32 output with streaming stores (non-temporal: not read
    into the cache first) when its tensors together exceed this many bytes
    (default 32 MiB; at most the last-level cache);
``reread_stream_bytes``
    the same for the second pass of training and backward, which re-reads
    what the first pass left in the cache (16 MiB; at most half the
    last-level cache); the backward picks its reductions' walk by these too;
``chunk_elements``
    batch norm over rows of channels (``inner == 1``): values per chunk of
    the reductions (16384: 64 KiB of float32, with its partials in L2; at most
    an eighth of L2);
``group_chunk_bytes``
    the largest chunk reduced by channel groups in several sweeps (512 KiB;
    at most half of L2);
``planar_tile_values``
    batch norm over planes (``inner > 1``): values per tile of whole plane
    sets (65536; at most half of L2 in float32);
``lrn_chunk_elements``
    LRN over rows of channels: values per chunk (16384; at most an eighth of
    L2);
``lrn_plane_tile_values``
    LRN over planes: values per tile, whose squares and products are kept in
    double (65536; at most half of L2 in doubles).

The cache sizes are read from Linux's sysfs
(``/sys/devices/system/cpu/cpu0/cache/index*/size``: level 2, and the
highest level). A larger cache does not raise them: on the Intel Xeon VM with
480 MiB of L3, stream thresholds of 480 and 240 MiB made the benchmark suite's
batch norms over 25.7 MB tensors 1.2-1.95x slower (out= given, A/B against
the 32 MiB build, 2 threads); in a network the outputs cnorm.torch allocates
are mostly fresh memory, which is not streamed (see cn_pages_resident).

``CNORM_TUNING`` in the environment overrides any of them, as comma-separated
``name=value`` pairs (sizes in bytes or values, suffixes K, M, G: powers of
1024), e.g. ``CNORM_TUNING=stream_bytes=32M,chunk_elements=8K``; a wrong name
or number raises ImportError at ``import cnorm``, naming the variable.

What the numbers change
-----------------------
None changes what a thread computes from what the shape and the numbers
give it, so the results are the same bits for any thread count under any
setting. The stream thresholds and ``group_chunk_bytes`` decide how a pass
stores and walks its data; the LRN numbers only how it is cut into tiles
(LRN's result at a value does not depend on its tile): neither changes a bit.
``chunk_elements`` and ``planar_tile_values`` set where the batch-norm
statistics' partial sums begin and end, so a setting other than the default
(a machine with less than 512 KiB of L2, or CNORM_TUNING) can change the
last bits of the statistics, as a different ISA level can.
"""
import functools
import glob
import os
import re

ENV_VAR = "CNORM_TUNING"
# name: (cache, fraction of it, bytes per unit): a number is at most fraction
# * the cache's bytes / bytes per unit. Its range (what the kernels can take)
# is the kernel module's TUNING_RANGES.
RULES = {
    "stream_bytes": ("llc", 1, 1),
    "reread_stream_bytes": ("llc", 1 / 2, 1),
    "chunk_elements": ("l2", 1 / 8, 4),
    "group_chunk_bytes": ("l2", 1 / 2, 1),
    "planar_tile_values": ("l2", 1 / 2, 4),
    "lrn_chunk_elements": ("l2", 1 / 8, 4),
    "lrn_plane_tile_values": ("l2", 1 / 2, 8),
}
NAMES = tuple(RULES)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]?)\s*$", re.IGNORECASE)
_SYSFS = "/sys/devices/system/cpu/cpu0/cache/index*"


def parse_size(text):
    """Bytes of a size such as ``491520K`` (sysfs) or ``32M``; None if it is not one."""
    match = _SIZE.match(text)
    if match is None:
        return None
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def cache_sizes(pattern=_SYSFS):
    """{"l2": bytes, "llc": bytes} of CPU 0's level-2 and highest-level data or
    unified caches, from sysfs; a cache it does not find is left out."""
    levels = {}
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
        if kind in ("Data", "Unified") and size:
            levels[level] = size
    sizes = {}
    if 2 in levels:
        sizes["l2"] = levels[2]
    if levels:
        sizes["llc"] = levels[max(levels)]
    return sizes


def settings(defaults, caches=None, environ=None, least=None):
    """The numbers of a kernel module, as a dict: `defaults` (a dict of some
    of NAMES), each lowered to its rule's share of `caches` (see cache_sizes)
    but not below its `least` value (a dict, see smallest; 0 when None), then
    CNORM_TUNING of `environ` (os.environ when None) for the names of
    `defaults`; names of other modules are checked and left to them."""
    values = dict(defaults)
    least = least or {}
    for name, default in defaults.items():
        cache, fraction, unit = RULES[name]
        if caches and caches.get(cache):
            values[name] = max(least.get(name, 0),
                               min(default, int(caches[cache] * fraction) // unit))
    setting = (os.environ if environ is None else environ).get(ENV_VAR, "").strip()
    for item in filter(None, (part.strip() for part in setting.split(","))):
        name, _, size = item.partition("=")
        name = name.strip()
        if name not in RULES:
            raise ImportError(f"{ENV_VAR}: unknown name {name!r} in {setting!r}; the names "
                              f"are {', '.join(NAMES)}")
        value = parse_size(size)
        if value is None or value < least.get(name, 0):
            raise ImportError(f"{ENV_VAR}: {name} must be a size such as 32M, at least "
                              f"{least.get(name, 0)}, got {size.strip()!r}")
        if name in values:
            values[name] = value
    return values


_configured = set()


@functools.lru_cache(maxsize=None)
def _values(defaults, least):
    return settings(dict(defaults), cache_sizes(), least=dict(least))


def checked(names, ranges, values):
    """`values`, one int for each of `names` within its (least, most) of
    `ranges`, as a tuple; TypeError or ValueError naming the number otherwise."""
    if len(values) != len(names):
        raise TypeError(f"cnorm: set_tuning takes {len(names)} values ({', '.join(names)}), "
                        f"got {len(values)}")
    for name, value, (least, most) in zip(names, values, ranges):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"cnorm: the tuning number {name} must be an int, got "
                            f"{type(value).__name__}")
        if not least <= value <= most:
            raise ValueError(f"cnorm: the tuning number {name} must be from {least} to "
                             f"{most}, got {value}")
    return tuple(values)


def current(module):
    """A kernel module's numbers in use, as a dict."""
    return dict(zip(module.TUNING_NAMES, module.tuning()))


def override(module, **values):
    """Set some of a kernel module's numbers (names of its TUNING_NAMES);
    returns the previous ones, all of them, as a dict."""
    previous = current(module)
    unknown = sorted(name for name in values if name not in previous)
    if unknown:
        raise ValueError(f"cnorm: {module.__name__} has no tuning number "
                         f"{', '.join(map(repr, unknown))}; it has "
                         f"{', '.join(module.TUNING_NAMES)}")
    module.set_tuning(*(values.get(name, previous[name]) for name in module.TUNING_NAMES))
    return previous


def defaults(module):
    """A kernel module's compiled defaults, as a dict."""
    return dict(zip(module.TUNING_NAMES, module.DEFAULT_TUNING))


def smallest(module):
    """The least value of each of a kernel module's numbers, as a dict."""
    return {name: least for name, (least, _) in zip(module.TUNING_NAMES,
                                                     module.TUNING_RANGES)}


def configure(module):
    """Set the numbers of a kernel module (cnorm._batchnorm or cnorm._lrn at
    any ISA level) the first time it is loaded; later calls leave it as it is."""
    if module.__name__ not in _configured:
        values = _values(tuple(defaults(module).items()), tuple(smallest(module).items()))
        try:
            module.set_tuning(*(values[name] for name in module.TUNING_NAMES))
        except ValueError as error:
            raise ImportError(f"{ENV_VAR}: {error}") from None
        _configured.add(module.__name__)
    return module
