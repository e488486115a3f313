"""A bar chart of the benchmark table: time over the same-run copy, log scale.

    python benchmarks/chart.py benchmarks/results/latest.md benchmarks/results/latest.png

draws the chart of a table written by ``run.py --markdown`` (``run.py --png``
draws it directly). One panel per operation, labelled by shape, so that the
labels stay legible at the width of a documentation page.
"""
import re
import sys


TITLES = {"lrn_forward": "LRN forward", "lrn_forward_beta0.6": "LRN forward, beta 0.6",
          "lrn_backward": "LRN backward", "bn_inference": "batch-norm inference",
          "bn_training": "batch-norm training forward", "bn_backward": "batch-norm backward"}


def _panels(rows):
    """Rows split into (title, rows) by operation, in table order."""
    panels = {}
    for row in rows:
        panels.setdefault(row["operation"], []).append(row)
    return [(TITLES.get(operation, operation), panel_rows) for operation, panel_rows in panels.items()]


def write(rows, path, n_threads):
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    names = []
    for row in rows:
        if row["implementation"] not in names and row["implementation"] != "copy":
            names.append(row["implementation"])
    colours = {name: f"C{i}" for i, name in enumerate(names)}
    panels = _panels(rows)
    n_rows = math.ceil(len(panels) / 2)
    figure, all_axes = plt.subplots(n_rows, 2, figsize=(9, 2.7 * n_rows + 0.5), squeeze=False)
    for axes, (title, panel_rows) in zip(all_axes.flat, panels):
        shapes = list(dict.fromkeys(row["shape"] for row in panel_rows))
        present = [name for name in names if any(row["implementation"] == name for row in panel_rows)]
        width = 0.8 / max(len(present), 1)
        for i, name in enumerate(present):
            xs = [shapes.index(row["shape"]) + i * width for row in panel_rows
                  if row["implementation"] == name]
            ys = [row["x copy"] for row in panel_rows if row["implementation"] == name]
            axes.bar(xs, ys, width, color=colours[name])
        axes.axhline(1.0, color="black", linewidth=0.8)
        axes.set_yscale("log")
        axes.set_xticks([g + 0.4 - width / 2 for g in range(len(shapes))], shapes, fontsize=8)
        axes.tick_params(axis="y", labelsize=8)
        axes.set_title(title, fontsize=10, loc="left")
        axes.grid(axis="y", which="major", linewidth=0.3)
    for axes in all_axes.flat[len(panels):]:
        axes.set_visible(False)
    for axes in all_axes[:, 0]:
        axes.set_ylabel("time / copy", fontsize=9)
    figure.legend(handles=[Patch(color=colours[name], label=name) for name in names],
                  loc="upper center", ncol=len(names), fontsize=9, frameon=False)
    figure.suptitle(f"float32, {n_threads} threads: time over a parallel copy, log scale "
                    "(lower is better)", fontsize=10, y=0.955)
    figure.tight_layout(rect=(0, 0, 1, 0.93))
    figure.savefig(path, dpi=150)


def read_markdown(path):
    """(rows, n_threads) of a table written by ``run.py --markdown``."""
    text = open(path, encoding="utf-8").read()
    threads = re.search(r"Threads: (\d+)", text)
    rows = []
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 6 and cells[0] not in ("operation", "") and not cells[0].startswith("-"):
            try:
                rows.append({"operation": cells[0], "shape": cells[1], "implementation": cells[2],
                             "x copy": float(cells[5])})
            except ValueError:
                continue
    return rows, int(threads.group(1)) if threads else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    table_rows, threads = read_markdown(sys.argv[1])
    write(table_rows, sys.argv[2], threads)
