"""A bar chart of the benchmark table: time over the same-run copy, log scale."""


def write(rows, path, n_threads):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = []
    for row in rows:
        key = f"{row['operation']}\n{row['shape']}"
        if key not in groups:
            groups.append(key)
    names = []
    for row in rows:
        if row["implementation"] not in names and row["implementation"] != "copy":
            names.append(row["implementation"])
    width = 0.8 / max(len(names), 1)
    figure, axes = plt.subplots(figsize=(max(8, 1.3 * len(groups)), 4.5))
    for i, name in enumerate(names):
        xs, ys = [], []
        for row in rows:
            if row["implementation"] == name:
                xs.append(groups.index(f"{row['operation']}\n{row['shape']}") + i * width)
                ys.append(row["x copy"])
        axes.bar(xs, ys, width, label=name)
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_yscale("log")
    axes.set_ylabel("time / parallel copy (lower is better)")
    axes.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], groups, fontsize=7)
    axes.set_title(f"cnorm benchmarks, float32, {n_threads} threads")
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
