"""A comparison of finished runs: `report.md`, `report.csv` and PNG figures.

Reads what mtlrec-train leaves in each MODEL_DIR (`metrics.json`,
`diagnostics.json`); trains nothing. Runs of one model with the same
settings except the seed form one row: the mean and the sample standard
deviation (n - 1 in the denominator; blank for a single run) over them.

Figures (matplotlib, headless), linked from the report:
- `figures/test_auc.png`: test AUC per task and model, error bars = std;
- `figures/learning_curves.png`: validation AUC and logloss per epoch;
- `figures/reliability.png`: predicted vs observed rate per test bin;
- `figures/gates_<model>.png`: mean gate weight per gate and expert, per level.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from absl import logging

from mtlrec import diagnostics, outputs
from mtlrec import io as mio
from mtlrec.rundir import flatten, read_status

DPI = 100
# Settings that do not make two runs different models.
_NOT_SETTINGS = ("seed", "model_dir", "verbose", "tensorboard", "overwrite", "devices", "eval_batch_size")
TASK_METRICS = ("auc", "logloss", "calibration", "gauc")


@dataclasses.dataclass
class Run:
    path: str
    metrics: dict[str, Any]
    diagnostics: dict[str, Any] | None

    @property
    def tasks(self) -> list[str]:
        return [t["name"] for t in self.metrics["tasks"]]

    @property
    def settings(self) -> dict[str, Any]:
        return {k: v for k, v in self.metrics.get("config", {}).items() if k not in _NOT_SETTINGS}


@dataclasses.dataclass
class Group:
    label: str
    runs: list[Run]

    @property
    def tasks(self) -> list[str]:
        return self.runs[0].tasks


def _read_json(path: str) -> Any:
    return mio.read_json(path)


def load_run(path: str) -> Run:
    """A finished run; ValueError naming what is missing otherwise."""
    metrics_path = mio.join(path, "metrics.json")
    if not mio.exists(metrics_path):
        status = read_status(path) if mio.exists(mio.join(path, "run.json")) else None
        what = f"its status is '{status}'" if status else "it holds no metrics.json"
        raise ValueError(f"{path}: not a finished mtlrec-train run ({what}); finish it with mtlrec-train first")
    try:
        metrics = _read_json(metrics_path)
        metrics["test"], metrics["model"], metrics["tasks"]  # noqa: B018 - the keys the report needs
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{metrics_path}: not an mtlrec-train metrics.json ({e})") from None
    diag_path = mio.join(path, diagnostics.FILE)
    diag = _read_json(diag_path) if mio.exists(diag_path) else None
    return Run(path, metrics, diag)


def find_runs(paths: Iterable[str]) -> list[Run]:
    """Each path is a run, or a folder searched for finished runs below it
    (an mtlrec-bench output, a tuner directory); unfinished runs found while
    searching are skipped with a log line, a named unfinished run is an error."""
    runs: list[Run] = []
    for path in paths:
        if not mio.isdir(path):
            raise ValueError(f"{path}: no such run directory")
        if mio.exists(mio.join(path, "metrics.json")) or mio.exists(mio.join(path, "run.json")):
            runs.append(load_run(path))
            continue
        found = _search(path)
        if not found:
            raise ValueError(f"{path}: holds no mtlrec-train run (no metrics.json in it or below it)")
        runs.extend(found)
    return runs


def _search(path: str, depth: int = 4) -> list[Run]:
    out: list[Run] = []
    for name in sorted(mio.listdir(path)):
        child = mio.join(path, name)
        if not mio.isdir(child):
            continue
        if mio.exists(mio.join(child, "run.json")):
            try:
                out.append(load_run(child))
            except ValueError as e:
                logging.info("skipping %s", e)
        elif depth > 1:
            out.extend(_search(child, depth - 1))
    return out


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Runs with equal settings (seed aside) form a group; labels are the
    model names, with the settings that tell groups of one model apart."""
    keyed: dict[str, list[Run]] = {}
    for run in runs:
        keyed.setdefault(json.dumps(run.settings, sort_keys=True, default=str), []).append(run)
    groups = list(keyed.values())
    labels = []
    for runs_ in groups:
        model = runs_[0].metrics["model"]
        same_model = [g[0].settings for g in groups if g[0].metrics["model"] == model]
        if len(same_model) == 1:
            labels.append(model)
            continue
        flat = [flatten(s) for s in same_model]
        mine = flatten(runs_[0].settings)
        differing = sorted(k for k in mine if any(f.get(k) != mine[k] for f in flat))
        labels.append(model + " [" + ", ".join(f"{k.split('.')[-1]}={mine[k]}" for k in differing[:3]) + "]")
    return [Group(label, sorted(r, key=lambda r: r.metrics.get("config", {}).get("seed", 0)))
            for label, r in zip(labels, groups)]


def mean_std(values: Sequence[float | None]) -> tuple[float, float]:
    """Mean and sample std (ddof=1) of the finite values; std NaN for fewer than 2."""
    v = np.array([x for x in values if x is not None and math.isfinite(x)], np.float64)
    if not len(v):
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan


def _run_values(run: Run) -> dict[str, float | None]:
    m = run.metrics
    out: dict[str, float | None] = {
        "auc_mean": m["test"].get("auc_mean"),
        "best_epoch": m.get("best_epoch"),
        "params": m.get("params"),
        "examples_per_sec": m.get("train_examples_per_sec"),
        "train_seconds": m.get("train_seconds"),
        "wall_seconds": m.get("wall_seconds"),
        "peak_rss_mb": m.get("peak_rss_mb"),
    }
    for t in run.tasks:
        for k in TASK_METRICS:
            out[f"{t}/{k}"] = m["test"].get(t, {}).get(k)
    return out


def summary(groups: Sequence[Group]) -> list[dict[str, Any]]:
    """One row per group: `<value>_mean` and `<value>_std` of every number."""
    rows = []
    for g in groups:
        per_run = [_run_values(r) for r in g.runs]
        row: dict[str, Any] = {"model": g.label, "runs": len(g.runs),
                               "seeds": " ".join(str(r.metrics.get("config", {}).get("seed", "")) for r in g.runs),
                               "best_epochs": " ".join(str(r.metrics.get("best_epoch")) for r in g.runs)}
        for key in per_run[0]:
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std([v.get(key) for v in per_run])
        rows.append(row)
    return rows


# ---------------------------------------------------------------- figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)  # no tight bbox: the size is figsize x DPI
    _pyplot().close(fig)
    return buf.getvalue()


def _task_order(groups: Sequence[Group]) -> list[str]:
    tasks: list[str] = []
    for g in groups:
        tasks += [t for t in g.tasks if t not in tasks]
    return tasks


def _over(groups: Sequence[Group]) -> str:
    """What each bar or line is: `mean over 3 seeds`, `mean over 1-3 seeds`, or `one run each`."""
    counts = sorted({len(g.runs) for g in groups})
    if counts[-1] <= 1:
        return "one run each"
    n = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"mean over {n} seeds"


def test_auc_figure(groups: Sequence[Group]) -> bytes:
    """A panel per task: a horizontal bar per model, the mean test AUC over
    its seeds, the error bar one sample standard deviation over them."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    tasks = _task_order(groups)
    rows = max(len(groups), 1)
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.0 * len(tasks) + 1.6, 0.32 * rows + 1.9), squeeze=False,
                             layout="constrained")
    colors = plt.get_cmap("tab10").colors
    for j, (ax, task) in enumerate(zip(axes[0], tasks)):
        shown = [g for g in groups if task in g.tasks]
        stats = [mean_std([r.metrics["test"][task]["auc"] for r in g.runs]) for g in shown]
        means = [m for m, _ in stats]
        errors = [0.0 if math.isnan(s) else s for _, s in stats]
        y = np.arange(len(shown))[::-1]  # the first model on top
        ax.barh(y, means, xerr=errors, capsize=3, height=0.7,
                color=[colors[groups.index(g) % 10] for g in shown])
        finite = [m for m in means if math.isfinite(m)]
        if finite:
            low, high = min(finite) - max(errors + [0]), max(finite) + max(errors + [0])
            pad = max(0.005, 0.15 * (high - low))
            ax.set_xlim(max(0.0, low - pad), min(1.0, high + pad))
            for yy, m in zip(y, means):
                if math.isfinite(m):
                    ax.text(ax.get_xlim()[0], yy, f" {m:.4f}", va="center", ha="left", fontsize=7, color="white")
        ax.set_yticks(y, [g.label for g in shown] if j == 0 or len(shown) != len(groups) else [""] * len(shown),
                      fontsize=8)
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("test AUC")
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.grid(axis="x", alpha=0.3)
    spread = ("error bars: ± one standard deviation over seeds" if max(len(g.runs) for g in groups) > 1
              else "one run: no spread to show")
    fig.suptitle(f"Test AUC per task ({_over(groups)}); {spread}", fontsize=9)
    return _png(fig)


def _curve(group: Group, task: str, metric: str) -> tuple[list[int], list[float]]:
    """Mean over the group's runs of a validation metric per epoch (runs
    that stopped early contribute to the epochs they ran)."""
    by_epoch: dict[int, list[float]] = {}
    for run in group.runs:
        for h in run.metrics.get("history", ()):
            value = h.get("valid", {}).get(task, {}).get(metric)
            if value is not None and math.isfinite(value):
                by_epoch.setdefault(int(h["epoch"]), []).append(value)
    epochs = sorted(by_epoch)
    return epochs, [float(np.mean(by_epoch[e])) for e in epochs]


def _legend_below(fig, axes, columns: int = 4) -> None:
    """One legend for the whole figure, under the panels, at a readable size."""
    handles, labels = {}, []
    for ax in np.ravel(axes):
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = h
                labels.append(label)
    if labels:
        fig.legend([handles[label] for label in labels], labels, loc="outside lower center",
                   ncols=min(columns, len(labels)), fontsize=9, frameon=False)


def learning_curves_figure(groups: Sequence[Group]) -> bytes:
    """Validation AUC (top) and logloss (bottom) per epoch, a column per task;
    each line is a model's mean over its seeds."""
    plt = _pyplot()
    tasks = _task_order(groups)
    fig, axes = plt.subplots(2, len(tasks), figsize=(3.6 * len(tasks) + 1, 7), squeeze=False, layout="constrained")
    for j, task in enumerate(tasks):
        for i, metric in enumerate(("auc", "logloss")):
            ax = axes[i][j]
            for k, g in enumerate(groups):
                epochs, values = _curve(g, task, metric)
                if epochs:
                    ax.plot(epochs, values, marker="o", markersize=4, label=g.label, color=f"C{k % 10}")
            ax.set_title(f"{task}: validation {metric}", fontsize=10)
            ax.set_xlabel("epoch")
            ax.set_ylabel("AUC (higher is better)" if metric == "auc" else "logloss (lower is better)", fontsize=8)
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.grid(alpha=0.3)
    fig.suptitle(f"Validation metrics per epoch (each line: a model, {_over(groups)})", fontsize=10)
    _legend_below(fig, axes)
    return _png(fig)


def _bins(group: Group, task: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Bin-wise mean over the group's runs of (mean prediction, positive rate)."""
    parts = [r.diagnostics["reliability"][task] for r in group.runs
             if r.diagnostics and task in r.diagnostics.get("reliability", {})]
    sizes = {len(p["mean_prediction"]) for p in parts}
    if not parts or len(sizes) != 1:
        return None
    pred = np.mean([p["mean_prediction"] for p in parts], axis=0)
    rate = np.mean([p["positive_rate"] for p in parts], axis=0)
    return pred, rate


RARE = 0.2  # a task whose mean predictions all lie below this is drawn on log axes


def reliability_figure(groups: Sequence[Group]) -> bytes:
    """A panel per task: observed rate against mean prediction per test bin
    (bin-wise mean over each model's seeds). A rare task, whose bins' mean
    predictions all lie below `RARE`, is drawn on log-log axes so its bins spread out."""
    plt = _pyplot()
    tasks = _task_order(groups)
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks) + 1, 4.6), squeeze=False,
                             layout="constrained")
    for ax, task in zip(axes[0], tasks):
        points, predictions = [], []
        for k, g in enumerate(groups):
            bins = _bins(g, task) if task in g.tasks else None
            if bins is None:
                continue
            ax.plot(*bins, marker="o", markersize=3, label=g.label, color=f"C{k % 10}")
            points += [v for v in np.concatenate(bins) if v > 0]
            predictions += list(bins[0])
        top = (max(points) * 1.1 if points else 1.0)
        rare = bool(predictions) and max(predictions) < RARE  # predictions are smooth; a small bin's rate is not
        low = min(points) / 1.5 if rare else 0.0
        ax.plot([low or 1e-9, top], [low or 1e-9, top], linestyle="--", color="grey", linewidth=1, label="calibrated")
        if rare:
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_xlim(low or 0, top)
        ax.set_ylim(low or 0, top)
        ax.set_xlabel("mean prediction" + (" (log)" if rare else ""))
        ax.set_ylabel("observed positive rate" + (" (log)" if rare else ""))
        ax.set_title(f"{task}: reliability on test", fontsize=10)
        ax.grid(alpha=0.3, which="both" if rare else "major")
    fig.suptitle(f"Calibration per prediction bin ({_over(groups)}); on the dashed line predictions "
                 "equal observed rates", fontsize=9)
    _legend_below(fig, axes)
    return _png(fig)


def mean_gates(group: Group) -> list[dict[str, Any]]:
    """The gate tables of `diagnostics.json`, averaged over the group's runs."""
    per_run = [r.diagnostics["gates"] for r in group.runs if r.diagnostics and r.diagnostics.get("gates")]
    if not per_run:
        return []
    out = []
    for i, level in enumerate(per_run[0]):
        same = [p[i] for p in per_run if len(p) > i and np.shape(p[i]["weights"]) == np.shape(level["weights"])]
        out.append({**level, "weights": np.mean([s["weights"] for s in same], axis=0).tolist(), "runs": len(same)})
    return out


def _visible(level: dict[str, Any]) -> np.ndarray:
    """Which experts each gate weighs. Older diagnostics have no `visible`:
    there a task gate of an extraction level sees its own `<task>/<i>` and
    the `shared/<i>` experts, and the `shared` gate and a mixture's gates see all."""
    if "visible" in level:
        return np.array(level["visible"], dtype=bool)
    out = np.ones(np.shape(level["weights"]), dtype=bool)
    for r, gate in enumerate(level["gates"]):
        for c, expert in enumerate(level["experts"]):
            owner = expert.split("/")[0] if "/" in expert else None
            out[r, c] = owner in (None, "shared", gate) or gate == "shared"
    return out


def _level_title(level: dict[str, Any], index: int, count: int) -> str:
    kind = "mixture of experts" if all(e.startswith("expert") for e in level["experts"]) else "extraction level"
    return kind if count == 1 else f"level {index + 1} of {count} ({kind})"


def gates_figure(group: Group) -> bytes | None:
    """A heatmap per gated layer: rows are gates, columns experts, colour and
    number the mean weight on the test split (rows sum to 1). An expert a
    gate cannot see is a hatched grey cell marked `-`, not a learned 0."""
    levels = mean_gates(group)
    if not levels:
        return None
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    width = max(len(level["experts"]) for level in levels)
    height = max(len(level["gates"]) for level in levels)
    fig, axes = plt.subplots(1, len(levels), figsize=(0.75 * width * len(levels) + 3.0, 0.5 * height + 2.8),
                             squeeze=False, layout="constrained")
    top = max(float(np.max(np.where(_visible(level), level["weights"], 0))) for level in levels)
    vmax = min(1.0, max(0.1, math.ceil(top * 10) / 10))  # contrast: the scale ends at the largest weight shown
    cmap = plt.get_cmap("viridis")
    image = None
    for i, (ax, level) in enumerate(zip(axes[0], levels)):
        w = np.array(level["weights"])
        seen = _visible(level)
        image = ax.imshow(np.ma.masked_where(~seen, w), vmin=0, vmax=vmax, cmap=cmap, aspect="auto")
        for (r, c), v in np.ndenumerate(w):
            if not seen[r, c]:
                ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, facecolor="0.85", hatch="///", edgecolor="0.6",
                                       linewidth=0))
                ax.text(c, r, "-", ha="center", va="center", fontsize=8, color="0.35")
                continue
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if v < 0.6 * vmax else "black")
        ax.set_xticks(range(len(level["experts"])), level["experts"], rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(level["gates"])), level["gates"], fontsize=8)
        ax.set_xlabel("expert")
        if i == 0:
            ax.set_ylabel("gate (one per task)")
        ax.set_title(_level_title(level, i, len(levels)), fontsize=9)
    runs = levels[0].get("runs", len(group.runs))
    fig.suptitle(f"{group.label}: mean gate weight per expert on test ({runs} seed{'s' if runs > 1 else ''}); "
                 "hatched: the gate cannot see that expert", fontsize=9)
    fig.colorbar(image, ax=list(axes[0]), label="mean gate weight", shrink=0.9)
    return _png(fig)


# ---------------------------------------------------------------- tables


def _fmt(mean: float, std: float, digits: int = 4) -> str:
    if mean is None or not math.isfinite(mean):
        return "-"
    text = f"{mean:.{digits}f}" if abs(mean) < 1000 else f"{mean:,.0f}"
    if std is not None and math.isfinite(std):
        text += f" ± {std:.{digits}f}" if abs(mean) < 1000 else f" ± {std:,.0f}"
    return text


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_")


def protocol(split: dict[str, Any] | None) -> str:
    """A run's split protocol in words (metrics.json `split`)."""
    if not split:
        return "hash split (a run from before splits were recorded): test rows come from the training period"
    fractions = "/".join(f"{f:g}" for f in split.get("fractions") or [])
    if split.get("kind") != "ordered":
        return (f"hash split by {split.get('by', 'row')} ({fractions}): test rows come from the training period, "
                "not after it")
    if split.get("by") == "input":
        return (f"time-ordered by input row ({fractions}): train rows 0-{split['valid_from_row'] - 1}, valid "
                f"from row {split['valid_from_row']}, test from row {split['test_from_row']} of "
                f"{split['rows_in_order']}")
    return (f"time-ordered by {split['by']} ({fractions}): valid from {split['valid_from']}, test from "
            f"{split['test_from']}")


def markdown(groups: Sequence[Group], rows: Sequence[dict[str, Any]], figures: dict[str, str]) -> str:
    tasks = _task_order(groups)
    n_runs = sum(len(g.runs) for g in groups)
    protocols = sorted({protocol(r.metrics.get("split")) for g in groups for r in g.runs})
    lines = [
        "# mtlrec report",
        "",
        f"{n_runs} run(s) of {len(groups)} model(s), test split; each cell is the mean ± the sample standard "
        "deviation over a model's seeds (no ± for a single run). Calibration = mean prediction / positive rate "
        "(1 is calibrated). Made by `mtlrec-report` from each run's metrics.json and diagnostics.json.",
        "",
        "Split: " + protocols[0] + "." if len(protocols) == 1 else
        "Split: **the runs were split differently, so their figures do not compare**: " + "; ".join(protocols) + ".",
        "",
        "## Test AUC",
        "",
        "| model | runs | " + " | ".join(f"{t} AUC" for t in tasks) + " | mean AUC | best epoch (per seed) |",
        "|---|---|" + "---|" * (len(tasks) + 2),
    ]
    for row in rows:
        cells = [_fmt(row.get(f"{t}/auc_mean"), row.get(f"{t}/auc_std")) for t in tasks]
        lines.append(f"| {row['model']} | {row['runs']} | " + " | ".join(cells)
                     + f" | {_fmt(row['auc_mean_mean'], row['auc_mean_std'])} | {row['best_epochs'].replace(' ', ', ')} |")
    lines += ["", "## Per task", "", "| model | task | AUC | logloss | calibration | GAUC |", "|---|---|---|---|---|---|"]
    for g, row in zip(groups, rows):
        for t in g.tasks:
            cells = [_fmt(row.get(f"{t}/{k}_mean"), row.get(f"{t}/{k}_std")) for k in TASK_METRICS]
            lines.append(f"| {row['model']} | {t} | " + " | ".join(cells) + " |")
    lines += ["", "## Cost", "", "| model | parameters | train examples/s | train s | wall s | peak memory MiB |",
              "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['model']} | {_fmt(row['params_mean'], math.nan, 0)} | "
                     f"{_fmt(row['examples_per_sec_mean'], row['examples_per_sec_std'], 0)} | "
                     f"{_fmt(row['train_seconds_mean'], row['train_seconds_std'], 1)} | "
                     f"{_fmt(row['wall_seconds_mean'], row['wall_seconds_std'], 1)} | "
                     f"{_fmt(row['peak_rss_mb_mean'], row['peak_rss_mb_std'], 0)} |")
    lines += ["", "## Figures", ""]
    for title, path in figures.items():
        lines += [f"### {title}", "", f"![{title}]({path})", ""]
    lines += ["## Runs", ""]
    for g in groups:
        lines.append(f"- {g.label}: " + ", ".join(f"`{r.path}` (seed {r.metrics.get('config', {}).get('seed')}; "
                                                   f"{protocol(r.metrics.get('split'))})" for r in g.runs))
    made_with = sorted({_made_with(r) for g in groups for r in g.runs})
    lines += ["", "Trained with " + "; ".join(made_with) + "."]
    return "\n".join(lines) + "\n"


def _made_with(run: Run) -> str:
    p = run.metrics.get("provenance") or {}
    if not p:
        return "an mtlrec without provenance records"
    commit = p.get("git_commit") or "no checkout"
    commit = commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")
    text = (f"mtlrec {p.get('mtlrec_version')} ({commit}), TensorFlow {p.get('tensorflow_version')}, "
            f"Keras {p.get('keras_version')}, Python {p.get('python_version')}")
    host = p.get("host")
    if host:  # runs from before the host was recorded have none
        extensions = ", ".join(host.get("vector_extensions") or []) or "no vector extensions listed"
        text += (f", on {host.get('cpu_model')} ({host.get('usable_cpus')} CPUs; {extensions}; "
                 f"oneDNN {host.get('onednn_version')}{'' if host.get('onednn_opts') else ' off'})")
    return text


def _csv(rows: Sequence[dict[str, Any]]) -> bytes:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    return buf.getvalue().encode()


def write_report(run_dirs: Sequence[str], out: str) -> dict[str, Any]:
    """Reads the runs, writes `out/report.md`, `out/report.csv` and
    `out/figures/*.png`; returns the paths and the summary rows."""
    outputs.claim(out, "report", "out")  # a run dir or a user folder is refused
    runs = find_runs(run_dirs)
    groups = group_runs(runs)
    rows = summary(groups)
    pictures: dict[str, bytes] = {
        "Test AUC per task": test_auc_figure(groups),
        "Learning curves (validation)": learning_curves_figure(groups),
        "Reliability per task (test)": reliability_figure(groups),
    }
    files = {"Test AUC per task": "figures/test_auc.png", "Learning curves (validation)": "figures/learning_curves.png",
             "Reliability per task (test)": "figures/reliability.png"}
    for g in groups:
        png = gates_figure(g)
        if png is not None:
            title = f"Gates of {g.label} (test)"
            pictures[title] = png
            files[title] = f"figures/gates_{_slug(g.label)}.png"
    figures_dir = mio.join(out, "figures")
    mio.makedirs(figures_dir)
    for name in mio.listdir(figures_dir):  # figures of models no longer in the report
        if name.endswith(".png") and f"figures/{name}" not in files.values():
            mio.remove(mio.join(figures_dir, name))
    for title, data in pictures.items():
        mio.write_atomic(mio.join(out, files[title]), data)
    mio.write_atomic(mio.join(out, "report.csv"), _csv(rows))
    mio.write_atomic(mio.join(out, "report.md"), markdown(groups, rows, files).encode())
    return {"report": mio.join(out, "report.md"), "csv": mio.join(out, "report.csv"),
            "figures": [mio.join(out, f) for f in files.values()], "rows": rows}
