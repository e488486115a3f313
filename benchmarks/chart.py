"""A bar chart of the benchmark table: time over the same-run copy, log scale.

    python benchmarks/chart.py benchmarks/results/latest.md benchmarks/results/latest.png

draws the chart of a table written by ``run.py --markdown`` (``run.py --png``
draws it directly). One panel per operator family (LRN, batch norm), so that
the labels stay legible at the width of a documentation page.
"""
import re
import sys


def _panels(rows):
    """Rows split into (title, rows) by the operation's family, in table order."""
    panels = {}
    for row in rows:
        family = "LRN" if row["operation"].startswith("lrn") else "batch norm"
        panels.setdefault(family, []).append(row)
    return list(panels.items())


def _label(row):
    """Two short lines: the operation without its family's prefix, and the shape."""
    operation = row["operation"].removeprefix("lrn_").removeprefix("bn_")
    return operation.replace("_beta", " beta ").replace("_", " ") + "\n" + row["shape"]


def write(rows, path, n_threads):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for row in rows:
        if row["implementation"] not in names and row["implementation"] != "copy":
            names.append(row["implementation"])
    colours = {name: f"C{i}" for i, name in enumerate(names)}
    panels = _panels(rows)
    figure, all_axes = plt.subplots(len(panels), 1, figsize=(11, 3.6 * len(panels)), squeeze=False)
    for axes, (title, panel_rows) in zip(all_axes[:, 0], panels):
        groups = []
        for row in panel_rows:
            key = _label(row)
            if key not in groups:
                groups.append(key)
        present = [name for name in names if any(row["implementation"] == name for row in panel_rows)]
        width = 0.8 / max(len(present), 1)
        for i, name in enumerate(present):
            xs, ys = [], []
            for row in panel_rows:
                if row["implementation"] == name:
                    xs.append(groups.index(_label(row)) + i * width)
                    ys.append(row["x copy"])
            axes.bar(xs, ys, width, label=name, color=colours[name])
        axes.axhline(1.0, color="black", linewidth=0.8)
        axes.set_yscale("log")
        axes.set_ylabel("time / parallel copy\n(lower is better)")
        axes.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], groups, fontsize=7.5)
        axes.set_title(f"{title}: float32, {n_threads} threads", fontsize=10, loc="left")
        axes.grid(axis="y", which="major", linewidth=0.3)
    from matplotlib.patches import Patch

    figure.legend(handles=[Patch(color=colours[name], label=name) for name in names],
                  loc="upper center", ncol=len(names), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0, 1, 0.95))
    figure.savefig(path, dpi=110)


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
