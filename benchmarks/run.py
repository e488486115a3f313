"""cnorm's performance suite: cnorm against the NumPy reference, the peers and the copy.

    python benchmarks/run.py                      # every operation, 2 threads
    python benchmarks/run.py --ops lrn --repeat 30 --markdown results.md

For every operation and shape it times, in one run and interleaved call by call
(so that machine noise hits every implementation alike):

* cnorm, with ``out=`` given (no allocation in the timed call);
* the same-run parallel copy of the input (one read and one write of the tensor
  with the same thread count): the memory-bandwidth yardstick;
* each peer framework that is installed (see benchmarks/peers.py), with the same
  thread count;
* the NumPy float64 reference (timed a few times only: it is slow).

Each round runs every implementation in turn as a short block of calls (the
first untimed), so noise is spread over all of them while no implementation is
timed against another's still-spinning thread pool.

It prints (and with --markdown writes) a table of median milliseconds, GB/s of
the least traffic the operation needs, the ratio to the copy (of the medians),
the spread of that ratio over the rounds (the 25th to 75th percentile of each
round's time over the copy's time in the same round: how far one run's ratio
can be trusted on a shared machine) and the ratio to the fastest peer, and
says which peers were missing. On a virtual machine it
also gives, per case, the share of CPU time the host stole from this machine
while the case ran (Linux /proc/stat): a gauge of how far to trust its figures.
"""
import argparse
import os
import sys
import time

# OpenBLAS's spinning worker threads steal the cores cnorm is being timed on.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cases  # noqa: E402
import peers  # noqa: E402


def _interleaved_samples(functions, repeat, block=4, pause=0.02):
    """Seconds of each timed call of each function: {name: [[call, ...] per round]}.

    Each round runs every implementation in turn, as a block of `block` calls of
    which the first is not timed, after a `pause` of idling: machine noise hits
    every implementation alike across rounds, while each block starts once the
    previous implementation's thread pool has stopped spinning (the pause and
    the untimed call absorb the switch).
    """
    for function in functions.values():
        function()  # warm-up: page faults, thread pools, lazy initialisation
    samples = {name: [] for name in functions}
    for _ in range(repeat):
        for name, function in functions.items():
            time.sleep(pause)  # let the previous implementation's thread pool go idle
            function()
            calls = []
            for _ in range(block - 1):
                start = time.perf_counter()
                function()
                calls.append(time.perf_counter() - start)
            samples[name].append(calls)
    return samples


def _median(rounds):
    """Median seconds of all the timed calls of one function."""
    return float(np.median([seconds for calls in rounds for seconds in calls]))


def _round_spread(rounds, copy_rounds):
    """25th and 75th percentiles, over rounds, of the round's median over the copy's
    (or over another implementation's, given its rounds)."""
    ratios = [np.median(calls) / np.median(copy) for calls, copy in zip(rounds, copy_rounds)]
    return tuple(float(q) for q in np.percentile(ratios, [25, 75]))


def _cpu_ticks():
    """(steal, total) jiffies of all CPUs from /proc/stat, or None where it is missing."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice, within user]
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def _steal_share(before, after):
    if before is None or after is None or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def run(ops, n_threads, repeat, reference_repeat, variants=("nhwc",), only_peers=None):
    peers.set_threads(n_threads)
    available, missing = peers.available()
    if only_peers is not None:  # --peers: time these of the installed peers only
        available = [name for name in available if name in only_peers]
    rows = []
    for case in cases.all_cases(ops, variants):
        functions = {"copy": cases.copy_function(case, n_threads),
                     "cnorm": case.cnorm(n_threads)}
        if case.variant in ("float16", "bfloat16"):
            functions["cnorm float32"] = case.float32_copy(n_threads)
        functions.update(case.extras(n_threads))
        for name in available:
            function = peers.function(name, case, n_threads)
            if function is not None:
                functions[name] = function
        ticks = _cpu_ticks()
        samples = _interleaved_samples(functions, repeat)
        steal = _steal_share(ticks, _cpu_ticks())
        medians = {name: _median(rounds) for name, rounds in samples.items()}
        if reference_repeat:
            medians["numpy reference"] = _median(_interleaved_samples(
                {"reference": case.reference()}, reference_repeat, block=2)["reference"])
        peer_times = [t for name, t in medians.items() if name in available]
        for name, seconds in medians.items():
            rows.append({
                "operation": case.label,
                "shape": "x".join(map(str, case.shape)),
                "implementation": name,
                "ms": seconds * 1e3,
                "GB/s": case.traffic_bytes / seconds / 1e9,
                "x copy": seconds / medians["copy"],
                "x copy spread": (_round_spread(samples[name], samples["copy"])
                                  if name in samples and name != "copy" else None),
                "x fastest peer": seconds / min(peer_times) if peer_times else None,
                "x float32": (seconds / medians["cnorm float32"]
                              if "cnorm float32" in medians and name == "cnorm" else None),
                "x plain": (seconds / medians["cnorm plain"]
                            if "cnorm plain" in medians and name == "cnorm" else None),
                "x plain spread": (_round_spread(samples[name], samples["cnorm plain"])
                                   if "cnorm plain" in samples and name == "cnorm" else None),
                "steal": steal,
            })
        print(f"done: {case.label} {case.shape}", file=sys.stderr)
    return rows, available, missing


def markdown(rows, n_threads, available, missing):
    notes = [f"- {problem}" for problem in peers.problems()]
    lines = [
        f"Threads: {n_threads}; float32 unless the operation names a layout (nchw: axis=1, "
        "the peers on NCHW tensors) or a half type (beside cnorm on a float32 copy of the "
        "same values: 'x float32'); median of interleaved calls. GB/s counts the least "
        "traffic of each operation; 'x copy' is the time over the same-run parallel copy of "
        "the input, and 'spread' the 25th to 75th percentile over the rounds of each round's "
        "time over the copy's in that round; for a fused operation (_relu, _residual) 'x plain' "
        "is cnorm's time over the same-run plain operation's ('cnorm plain': BN alone), with "
        "its spread over the rounds likewise. Peers measured: " + (", ".join(available) or "none") +
        ("; missing: " + ", ".join(missing) if missing else "") + ".",
        "",
        "| operation | shape | implementation | ms | GB/s | x copy | spread | x fastest peer"
        " | x float32 | x plain |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    steals = {}
    for row in rows:
        peer = "" if row["x fastest peer"] is None else f"{row['x fastest peer']:.2f}"
        spread = ("" if row["x copy spread"] is None
                  else "{:.2f}-{:.2f}".format(*row["x copy spread"]))
        half = "" if row.get("x float32") is None else f"{row['x float32']:.2f}"
        plain = ("" if row.get("x plain") is None else
                 "{:.3f} ({:.3f}-{:.3f})".format(row["x plain"], *row["x plain spread"]))
        lines.append(
            f"| {row['operation']} | {row['shape']} | {row['implementation']} | "
            f"{row['ms']:.3f} | {row['GB/s']:.1f} | {row['x copy']:.2f} | {spread} | {peer} "
            f"| {half} | {plain} |")
        if row.get("steal") is not None:
            steals[f"{row['operation']} {row['shape']}"] = row["steal"]
    if steals and max(steals.values()) > 0:
        lines += ["", "CPU time stolen by the host while each case ran (/proc/stat): " +
                  ", ".join(f"{case} {share:.0%}" for case, share in steals.items()) + "."]
    if notes:
        lines += ["", "Peers skipped for a case:"] + notes
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", default="all",
                        help="comma-separated: " + ", ".join(cases.OPERATIONS) + " or all")
    parser.add_argument("--variants", default="nhwc",
                        help="comma-separated: " + ", ".join(cases.VARIANTS) + " or all")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peers", default="all",
                        help="comma-separated peers to time (of " + ", ".join(peers.PEERS) +
                        "), all (those installed) or none")
    parser.add_argument("--repeat", type=int, default=10, help="rounds (blocks of 3 timed calls)")
    parser.add_argument("--reference-repeat", type=int, default=1,
                        help="timed calls of the slow NumPy reference (0: skip it)")
    parser.add_argument("--markdown", help="write the table to this file")
    parser.add_argument("--png", help="write a bar chart (needs matplotlib)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    ops = cases.OPERATIONS if args.ops == "all" else args.ops.split(",")
    variants = cases.VARIANTS if args.variants == "all" else args.variants.split(",")
    only_peers = (None if args.peers == "all"
                  else [] if args.peers == "none" else args.peers.split(","))
    rows, available, missing = run(ops, args.threads, args.repeat, args.reference_repeat,
                                   variants, only_peers)
    table = markdown(rows, args.threads, available, missing)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)
    if args.png:
        import chart
        chart.write(rows, args.png, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
