"""A/B: this build of cnorm against another one (an older commit), runs interleaved.

    git worktree add /tmp/old <commit> && (cd /tmp/old && python setup.py build_ext --inplace)
    python benchmarks/ab.py --old /tmp/old --pairs 5 --ops bn_inference,lrn_forward

Two builds of cnorm cannot share one process, so the suite (benchmarks/run.py,
this checkout's cases, no peers) runs in turn against each: the old build (its
source tree first on PYTHONPATH) and the new one (the cnorm this Python
imports), ``--pairs`` times, alternating. Each run times cnorm beside its
same-run copy of the input, so its ``x copy`` ratio cancels what the shared
machine was doing during that run; the table gives, per case, the median over
the pairs of new ``x copy`` over old ``x copy`` (below 1: the new build is
faster) with its spread (lowest and highest pair), and both builds' median
milliseconds. Pass any other run.py option after the ones below.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def _table(path):
    """{(operation, shape): (ms, x copy)} of cnorm's rows in a run.py markdown table."""
    rows = {}
    with open(path) as f:
        for line in f:
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if len(cells) >= 6 and cells[2] == "cnorm":
                rows[cells[0], cells[1]] = (float(cells[3]), float(cells[5]))
    return rows


def _run(old, options, workdir, index):
    env = dict(os.environ)
    if old is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [old, env.get("PYTHONPATH")]))
    path = os.path.join(workdir, f"{'old' if old else 'new'}-{index}.md")
    subprocess.run([sys.executable, os.path.join(HERE, "run.py"), "--peers", "none",
                    "--reference-repeat", "0", "--markdown", path, *options],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    return _table(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="source tree of the old build, built in place")
    parser.add_argument("--pairs", type=int, default=5, help="old/new runs (alternating)")
    args, options = parser.parse_known_args(argv)
    old = os.path.abspath(args.old)
    runs = {"old": [], "new": []}
    with tempfile.TemporaryDirectory() as workdir:
        for index in range(args.pairs):
            for name in ("old", "new") if index % 2 == 0 else ("new", "old"):
                runs[name].append(_run(old if name == "old" else None, options, workdir, index))
                print(f"done: pair {index + 1} {name}", file=sys.stderr)
    lines = [f"A/B, {args.pairs} pairs of runs alternating (old: {old}); run.py options: "
             f"{' '.join(options) or 'defaults'}. 'new/old' is new x copy over old x copy per "
             "pair: median (lowest-highest).", "",
             "| operation | shape | old ms | new ms | new/old | range |",
             "|---|---|---:|---:|---:|---:|"]
    for key in runs["new"][0]:
        if not all(key in run for run in runs["old"] + runs["new"]):
            continue
        ratios = [new[key][1] / old[key][1] for old, new in zip(runs["old"], runs["new"])]
        old_ms = statistics.median(run[key][0] for run in runs["old"])
        new_ms = statistics.median(run[key][0] for run in runs["new"])
        lines.append(f"| {key[0]} | {key[1]} | {old_ms:.3f} | {new_ms:.3f} | "
                     f"{statistics.median(ratios):.2f} | {min(ratios):.2f}-{max(ratios):.2f} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
