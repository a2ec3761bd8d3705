"""``autobatch report``: plots, a CSV and a markdown summary of a study, from stored trials alone.

Each plot is a function of the trials table (``recommender.trials_frame``) and a few extras that
returns the figure and the arrays drawn, so tests check the data rather than pixels. Figures
are ``matplotlib.figure.Figure`` objects rendered by Agg, never pyplot: no GUI backend, no
global figure registry, nothing left open in the caller's process. The plotted metric is the
study's (``val_metric``: accuracy unless the recipe names another; ``MetricAxis``); the data
keys keep the name "accuracy".

The critical-batch plots live in ``noise_plots``.

Over 400 lines: four plots and the summary of one stored study, each following the study's
metric; they share the trials table, the metric axis and the helpers, and read best together.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullFormatter, PercentFormatter, ScalarFormatter
from optuna.trial import TrialState

from . import records as R
from .errors import AutobatchError
from .memory import MemoryModel
from .noise_plots import plot_noise_over_training, plot_steps_to_target
from .recipe import metric_label
from .recommender import Recommendation, recommend_study, trials_frame
from .search import StudySpec
from .storage import StudyLike, describe, open_study
from .units import format_bytes

Say = Callable[[str], None]
MiB = 2**20


@dataclass(frozen=True)
class MetricAxis:
    """The study's metric on a plot: its label, ``sign`` (+1 higher is better, -1 lower) and
    whether it is a fraction shown in percent (accuracy)."""

    label: str = "validation accuracy"
    sign: float = 1.0
    fraction: bool = True

    @classmethod
    def of(cls, spec: Optional[StudySpec]) -> "MetricAxis":
        if spec is None:
            return cls()
        r = spec.recipe
        label = metric_label(r.metric)
        return cls(label, 1.0 if r.direction == "maximize" else -1.0, r.metric_is_fraction)

    def text(self, value: float) -> str:
        return f"{100 * value:.1f} %" if self.fraction else f"{value:.4g}"


ACCURACY = MetricAxis()


def write_report(study_name: Optional[str], storage: StudyLike, out_dir: Path,
                 say: Say = print) -> list[Path]:
    """Write the report files of a stored study into ``out_dir``; returns their paths.
    ``storage`` is what ``storage.open_study`` takes (a URL, an open storage or the study).
    Raises ``AutobatchError`` for a missing study, one without a completed trial, or an
    ``out_dir`` that cannot be made or written (a file in its place, no permission): checked
    before anything is plotted."""
    study = open_study(storage, study_name, read_only=True)
    study_name = study.study_name
    spec_data = study.user_attrs.get(R.STUDY_SPEC)
    spec = StudySpec.from_dict(spec_data) if spec_data else None
    df = trials_frame(study)
    if completed_rows(df).empty:
        raise AutobatchError(f"study {study_name!r} has no completed trial yet; run some first: "
                             f"autobatch worker --study-name {study_name}")
    _make_folder(out_dir)
    memory_model = study.user_attrs.get(R.STUDY_MEMORY_MODEL)
    try:
        rec, no_rec = recommend_study(study), None
    except AutobatchError as exc:
        rec, no_rec = None, str(exc)
        say(f"report without a recommendation: {exc}")

    eval_points = list(spec.eval_points) if spec else None
    metric = MetricAxis.of(spec)
    figures = {"tradeoff.png": plot_tradeoff(df, rec, metric)[0],
               "memory.png": plot_memory(df, memory_model)[0],
               "accuracy_heatmap.png": plot_accuracy_map(df, spec)[0],
               "curves.png": plot_curves(df, eval_points, metric)[0]}
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    probe = study.user_attrs.get(R.STUDY_NOISE_SCALE)
    figures["noise_scale.png"] = plot_noise_over_training(finished, probe)[0]
    critical = rec.critical_batch if rec is not None else (probe or {}).get("critical_batch")
    figures["steps_to_target.png"] = plot_steps_to_target(finished, critical)[0]
    paths: list[Path] = []
    try:
        for name, fig in figures.items():
            paths.append(out_dir / name)
            FigureCanvasAgg(fig).print_png(paths[-1])
        paths.append(out_dir / "trials.csv")
        df.assign(curve=df["curve"].map(json.dumps)).to_csv(paths[-1], index=False)
        paths.append(out_dir / "summary.md")
        state_counts = Counter(t.state.name.lower() for t in study.get_trials(deepcopy=False))
        paths[-1].write_text(summary_markdown(study_name, describe(storage), df, state_counts, spec, rec, no_rec,
                                              metric))
    except OSError as exc:
        raise AutobatchError(_unwritable(out_dir, exc)) from None
    say(f"report of {study_name!r}: {len(paths)} files in {out_dir}")
    return paths


def _make_folder(out_dir: Path) -> None:
    """``out_dir`` and its parents made; a path that cannot be a folder raises ``AutobatchError``."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AutobatchError(_unwritable(out_dir, exc, "cannot be created")) from None


def _unwritable(out_dir: Path, exc: OSError, what: str = "cannot be written") -> str:
    """One line: the path that failed and why (a file where a folder must be: said so)."""
    file = next((p for p in (out_dir, *out_dir.parents) if p.is_file()), None)
    if file is not None:
        return f"report folder {out_dir}: {file} is a file, not a folder; choose another --out folder"
    where = exc.filename or out_dir
    return f"report folder {out_dir}: {where} {what} ({exc.strerror or type(exc).__name__}); choose another --out folder"


# --- pure helpers ---------------------------------------------------------------------------

def pareto_mask(epoch_time: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """True for points no other point beats: none is at least as fast and as accurate, and
    strictly better in one of the two."""
    t, a = np.asarray(epoch_time, float), np.asarray(accuracy, float)
    keep = np.zeros(len(t), bool)
    best = -np.inf
    for i in np.lexsort((-a, t)):  # fastest first, most accurate first among equal times
        if a[i] > best:
            keep[i], best = True, a[i]
    return keep


def completed_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Completed trials with a validation metric."""
    return df[(df["state"] == "COMPLETE") & df["val_metric"].notna()].reset_index(drop=True)


def _spread(values: np.ndarray, width: float = 0.5) -> np.ndarray:
    """Factors that spread points sharing a (power-of-two) value side by side on a log2 axis,
    within ``width`` octaves, so trials at one batch size do not hide each other."""
    factors = np.ones(len(values))
    for value in np.unique(values):
        where = np.flatnonzero(values == value)
        if len(where) > 1:
            factors[where] = 2 ** np.linspace(-width / 2, width / 2, len(where))
    return factors


def _mib(values: Any) -> np.ndarray:
    return np.asarray(values, float) / MiB


def _figure() -> Figure:
    return Figure(figsize=(8.0, 5.5), dpi=110, layout="constrained")


def _nothing(ax: Any, what: str) -> None:
    ax.text(0.5, 0.5, what, transform=ax.transAxes, ha="center", va="center", color="grey")


def _setting(row: pd.Series) -> str:
    return f"{int(row['batch_size'])}×{int(row['accumulation_steps'])}, lr {row['learning_rate']:.3g}"


# --- plots ------------------------------------------------------------------------------------

def plot_tradeoff(df: pd.DataFrame, rec: Optional[Recommendation] = None,
                  metric: MetricAxis = ACCURACY) -> tuple[Figure, dict]:
    """Validation metric against epoch time of completed trials, peak memory as colour."""
    rows = completed_rows(df)
    rows = rows[rows["epoch_time_s"] > 0].reset_index(drop=True)
    t, acc = rows["epoch_time_s"].to_numpy(float), rows["val_metric"].to_numpy(float)
    peak = _mib(rows["measured_peak_bytes"].fillna(rows["predicted_peak_bytes"]))
    front = pareto_mask(t, metric.sign * acc)
    order = np.argsort(t[front])
    data: dict[str, Any] = {
        "number": rows["number"].to_numpy(int), "epoch_time_s": t, "accuracy": acc, "peak_mib": peak,
        "front_number": rows["number"].to_numpy(int)[front][order],
        "front_epoch_time_s": t[front][order], "front_accuracy": acc[front][order],
        "recommendation": None, "baselines": {}}

    fig = _figure()
    ax = fig.add_subplot()
    ax.step(data["front_epoch_time_s"], data["front_accuracy"], where="post", color="tab:red",
            lw=1.5, alpha=0.8, label="Pareto front (measured)", zorder=2)
    ax.scatter(data["front_epoch_time_s"], data["front_accuracy"], s=150, facecolors="none",
               edgecolors="tab:red", linewidths=1.5, zorder=3, label="on the front")
    points = ax.scatter(t, acc, c=peak, cmap="viridis", s=55, edgecolors="black", linewidths=0.5,
                        label="completed trial", zorder=3)
    fig.colorbar(points, ax=ax, label="peak memory (MiB, measured)")
    for _, row in rows[rows["baseline"].notna()].iterrows():
        xy = (row["epoch_time_s"], row["val_metric"])
        data["baselines"][row["baseline"]] = xy
        ax.scatter(*xy, s=220, marker="s", facecolors="none", edgecolors="tab:orange", linewidths=2,
                   zorder=4, label="baseline" if len(data["baselines"]) == 1 else None)
        right = np.log(xy[0] / t.min()) > 0.5 * np.log(t.max() / t.min())  # label inwards
        low = xy[1] < 0.5 * (acc.min() + acc.max())
        ax.annotate(f"{row['baseline']} (#{int(row['number'])})", xy,
                    xytext=(-10 if right else 10, 10 if low else -16),
                    textcoords="offset points", ha="right" if right else "left", fontsize=8,
                    color="tab:orange")
    if rec is not None and rec.predicted_metric is not None:
        xy = (rec.predicted_epoch_time_s, rec.predicted_metric)
        data["recommendation"] = xy
        (t_lo, t_hi), (a_lo, a_hi) = rec.epoch_time_interval, rec.metric_interval
        ax.errorbar(*xy, xerr=[[max(xy[0] - t_lo, 0)], [max(t_hi - xy[0], 0)]],
                    yerr=[[max(xy[1] - a_lo, 0)], [max(a_hi - xy[1], 0)]],
                    fmt="none", ecolor="tab:red", alpha=0.35, capsize=3, zorder=4)
        ax.scatter(*xy, marker="*", s=320, color="gold", edgecolors="black", alpha=0.85, zorder=5,
                   label=(f"recommended {rec.batch_size}×{rec.accumulation_steps}, "
                          f"lr {rec.learning_rate:.3g} (predicted)"))
    if len(t) and t.max() > 10 * t.min():
        ax.set_xscale("log")
    elif not len(t):
        _nothing(ax, "no completed trial with a measured epoch time")
    if metric.fraction:
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("epoch time (s, measured training throughput; evaluation excluded)")
    ax.set_ylabel(metric.label)
    ax.set_title(f"{metric.label.capitalize()} vs training time: {len(rows)} completed trials")
    ax.grid(alpha=0.3, which="both")
    fig.legend(loc="outside lower center", ncols=3, fontsize=8)
    return fig, data


def plot_memory(df: pd.DataFrame, memory_model: Optional[dict]) -> tuple[Figure, dict]:
    """Peak training memory against micro-batch size: trials, probes, the fitted line, the cap."""
    mm = memory_model or {}
    measured = df[df["measured_peak_bytes"].notna() & df["batch_size"].notna()]
    over = df[(df["stop_reason"] == R.STOP_OVER_MEMORY) & df["predicted_peak_bytes"].notna()]
    probes = [p for p in [*mm.get("points", []), mm.get("check")] if p and p.get("peak_bytes")]
    sizes = [*measured["batch_size"].astype(float), *over["batch_size"].astype(float),
             *(p["batch_size"] for p in probes), 1.0]
    data: dict[str, Any] = {
        "trial_batch": measured["batch_size"].to_numpy(float),
        "trial_peak_mib": _mib(measured["measured_peak_bytes"]),
        "probe_batch": np.array([p["batch_size"] for p in probes], float),
        "probe_peak_mib": _mib([p["peak_bytes"] for p in probes]),
        "over_cap_batch": over["batch_size"].to_numpy(float),
        "over_cap_predicted_mib": _mib(over["predicted_peak_bytes"]),
        "fit_batch": None, "fit_peak_mib": None, "cap_mib": None}

    fig = _figure()
    ax = fig.add_subplot()
    if "fixed_bytes" in mm or "form" in mm:  # the training step's fitted form (any form)
        model = MemoryModel.from_dict(mm)
        b = np.unique(np.linspace(1, max(sizes) * 1.05, 200).astype(int))
        data["fit_batch"], data["fit_peak_mib"] = b, _mib([model.predict(int(x)) for x in b])
        ax.plot(b, data["fit_peak_mib"], color="tab:blue", lw=1.5, zorder=2,
                label=f"fitted ({model.form}): {model.describe()}")
    if mm.get("cap_bytes"):
        data["cap_mib"] = mm["cap_bytes"] / MiB
        fits = f", largest micro-batch {mm['max_batch_size']}" if mm.get("max_batch_size") else ""
        ax.axhline(data["cap_mib"], color="tab:red", ls="--", lw=1.5,
                   label=f"cap {format_bytes(mm['cap_bytes'])}{fits}")
    ax.scatter(data["trial_batch"], data["trial_peak_mib"], s=50, color="tab:green", edgecolors="black",
               linewidths=0.5, zorder=3, label=f"trials, measured ({len(measured)})")
    if probes:
        ax.scatter(data["probe_batch"], data["probe_peak_mib"], s=110, marker="D", facecolors="none",
                   edgecolors="tab:purple", linewidths=1.8, zorder=4, label="memory probes, measured")
    if len(over):
        ax.scatter(data["over_cap_batch"], data["over_cap_predicted_mib"], s=80, marker="x",
                   color="tab:red", linewidths=2, zorder=4,
                   label=f"pruned before training: predicted over the cap ({len(over)})")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("micro-batch size (samples)")
    ax.set_ylabel("peak training-step memory (MiB)")
    device = f" on {mm['device']}" if mm.get("device") else ""
    ax.set_title(f"Peak memory vs micro-batch size{device}")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return fig, data


def plot_accuracy_map(df: pd.DataFrame, spec: Optional[StudySpec] = None) -> tuple[Figure, dict]:
    """The metric over effective batch size × learning rate (log axes); the scaling rule dashed."""
    metric = MetricAxis.of(spec)
    ok = df["effective_batch_size"].notna() & df["learning_rate"].notna()
    done = df[ok & (df["state"] == "COMPLETE") & df["val_metric"].notna()]
    stopped = df[ok & (df["state"] != "COMPLETE")]
    data: dict[str, Any] = {
        "number": done["number"].to_numpy(int),
        "effective_batch_size": done["effective_batch_size"].to_numpy(float),
        "learning_rate": done["learning_rate"].to_numpy(float),
        "accuracy": done["val_metric"].to_numpy(float),
        "stopped_effective_batch_size": stopped["effective_batch_size"].to_numpy(float),
        "stopped_learning_rate": stopped["learning_rate"].to_numpy(float)}

    fig = _figure()
    ax = fig.add_subplot()
    x = data["effective_batch_size"] * _spread(data["effective_batch_size"])
    cmap = "plasma" if metric.sign > 0 else "plasma_r"  # bright is good
    points = ax.scatter(x, data["learning_rate"], c=data["accuracy"], cmap=cmap,
                        vmin=0 if metric.fraction else None,
                        vmax=max([1e-9, *data["accuracy"]]) if metric.fraction else None, s=90,
                        edgecolors="black", linewidths=0.5, zorder=3, label="completed trial")
    for xi, yi, a in zip(x, data["learning_rate"], data["accuracy"]) if len(x) <= 20 else ():
        ax.annotate(f"{100 * a:.0f}" if metric.fraction else f"{a:.3g}", (xi, yi), xytext=(6, 4),
                    textcoords="offset points", fontsize=7)
    fig.colorbar(points, ax=ax, label=f"{metric.label} (completed trials)",
                 format=PercentFormatter(1.0) if metric.fraction else None)
    if len(stopped):
        ax.scatter(data["stopped_effective_batch_size"], data["stopped_learning_rate"], marker="x",
                   color="grey", s=45, zorder=2, label="pruned or stopped early")
    all_b = np.concatenate([data["effective_batch_size"], data["stopped_effective_batch_size"]])
    if spec is not None and len(all_b):
        b = np.geomspace(all_b.min() / 1.5, all_b.max() * 1.5, 50)
        ax.plot(b, [spec.space.learning_rate(1.0, v) for v in b], ls="--", color="tab:blue", lw=1,
                label=f"{spec.space.scaling_rule} scaling rule (multiplier 1)")
    if len(all_b):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
    if not len(x):
        _nothing(ax, "no completed trial with a batch size and learning rate")
    ax.set_xlabel("effective batch size (micro-batch × accumulation steps, log scale)")
    ax.set_ylabel("learning rate (log scale)")
    ax.set_title(f"{metric.label.capitalize()} over batch size × learning rate"
                 + ((" (labels: %)" if metric.fraction else " (labels)") if len(x) <= 20 else ""))
    ax.grid(alpha=0.3, which="major")
    fig.legend(loc="outside lower center", ncols=3, fontsize=8)
    return fig, data


def plot_curves(df: pd.DataFrame, eval_points: Optional[list[int]] = None,
                metric: MetricAxis = ACCURACY) -> tuple[Figure, dict]:
    """The validation metric on the samples-seen axis, one line per trial; pruned ones dashed."""
    rows = df[df["curve"].map(len) > 0]
    data: dict[str, Any] = {"curves": {}, "pruned": []}
    fig = _figure()
    ax = fig.add_subplot()
    eff = rows["effective_batch_size"].astype(float).fillna(1.0)
    norm = LogNorm(vmin=max(1.0, eff.min()), vmax=max(2.0, eff.max())) if len(rows) else None
    colors = colormaps["viridis"]
    done = completed_rows(rows)
    best = int(done.loc[(metric.sign * done["val_metric"]).idxmax(), "number"]) if len(done) else None
    for (_, row), e in zip(rows.iterrows(), eff):
        x = np.array([p[0] for p in row["curve"]], float)
        y = np.array([p[1] for p in row["curve"]], float)
        number = int(row["number"])
        data["curves"][number] = (x, y)
        pruned = row["state"] != "COMPLETE"
        if pruned:
            data["pruned"].append(number)
        is_best = number == best
        ax.plot(x, y, ls="--" if pruned else "-", marker="o", ms=3, alpha=0.55 if pruned else 0.9,
                lw=3 if is_best else 1.3, color=colors(norm(e)), zorder=3 if is_best else 2)
        if is_best:
            top = int(np.argmax(y))  # above its highest point: the line never crosses the label
            ax.annotate(f"best #{number} ({_setting(row)})", (x[top], y[top]), xytext=(0, 10),
                        textcoords="offset points", ha="right" if top == len(x) - 1 else "center",
                        fontsize=8, weight="bold")
        elif isinstance(row["baseline"], str):
            ax.annotate(row["baseline"], (x[-1], y[-1]), xytext=(-10, -14), textcoords="offset points",
                        ha="right", fontsize=8, color="tab:orange",
                        bbox={"facecolor": "white", "alpha": 0.8, "linewidth": 0, "pad": 1})
    if norm is not None:
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=colors), ax=ax, label="effective batch size")
        bar.set_ticks([2**k for k in range(int(np.log2(norm.vmin)), int(np.log2(norm.vmax)) + 1)])
        bar.ax.yaxis.set_major_formatter(ScalarFormatter())
        bar.ax.yaxis.set_minor_formatter(NullFormatter())
    if not len(rows):
        _nothing(ax, "no trial recorded a validation curve")
    if eval_points and len(eval_points) <= 10:
        ax.set_xticks(eval_points)
    if metric.fraction:
        top = max((float(np.max(y)) for _, y in data["curves"].values()), default=1.0)
        ax.set_ylim(0, min(1.0, top) + 0.08)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("training samples seen")
    ax.set_ylabel(metric.label)
    ax.set_title(f"Validation curves at equal samples seen: {len(rows)} trials")
    ax.grid(alpha=0.3)
    ax.legend(handles=[Line2D([], [], color="black", lw=1.3, label="completed"),
                       Line2D([], [], color="black", lw=1.3, ls="--", alpha=0.55,
                              label="pruned (stopped early)")], loc="upper left", fontsize=8)
    return fig, data


# --- summary ----------------------------------------------------------------------------------

def summary_markdown(study_name: str, where: str, df: pd.DataFrame, state_counts: dict,
                     spec: Optional[StudySpec], rec: Optional[Recommendation],
                     no_rec: Optional[str], metric: MetricAxis = ACCURACY) -> str:
    """The report's front page: what was studied, the counts, the answer, the evidence."""
    lines = [f"# autobatch report: {study_name}", "", f"Storage: `{where}`."]
    if spec is not None:
        cap = f"; memory cap {format_bytes(spec.max_memory_bytes)}" if spec.max_memory_bytes else ""
        lines.append(f"Model `{spec.model}` on `{spec.dataset}`: {spec.train_samples} training samples "
                     f"per trial, evaluated at {', '.join(map(str, spec.eval_points))} samples seen{cap}.")
    lines += ["", _counts_line(df, state_counts), "", "## Recommendation", ""]
    lines += [rec.markdown()] if rec is not None else [f"_No recommendation: {no_rec}_", ""]
    lines += ["## Best trial and baselines", "", *_comparison_table(df, metric)]
    lines += ["", "## Plots", "",
              "![accuracy vs epoch time](tradeoff.png)", "",
              "![peak memory vs micro-batch size](memory.png)", "",
              "![accuracy over batch size and learning rate](accuracy_heatmap.png)", "",
              "![validation curves](curves.png)", "",
              "![gradient noise scale over training](noise_scale.png)", "",
              "![steps to target against effective batch](steps_to_target.png)", "",
              "All trials, one row each: [trials.csv](trials.csv).", ""]
    return "\n".join(lines)


def _counts_line(df: pd.DataFrame, state_counts: dict) -> str:
    reasons = sorted(df["stop_reason"].value_counts().items())
    stopped = ", ".join(f"{n} {_REASONS.get(r, r.replace('_', ' '))}" for r, n in reasons
                        if r != R.STOP_COMPLETED)
    c = state_counts
    return (f"Trials: {sum(c.values())} in all, {c.get('complete', 0)} completed, "
            f"{c.get('pruned', 0)} pruned{f' ({stopped})' if stopped else ''}, {c.get('fail', 0)} failed, "
            f"{c.get('waiting', 0)} queued, {c.get('running', 0)} running.")


def _comparison_table(df: pd.DataFrame, metric: MetricAxis = ACCURACY) -> list[str]:
    """The best completed trial, then each completed baseline against it."""
    rows = completed_rows(df)
    best = rows.loc[(metric.sign * rows["val_metric"]).idxmax()]
    table = [best, *(r for _, r in rows[rows["baseline"].notna()].iterrows()
                     if r["number"] != best["number"])]
    lines = [f"| trial | role | micro-batch × accumulation | learning rate | {metric.label} | vs best "
             "| epoch time | peak memory |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in table:
        is_best = r["number"] == best["number"]
        baseline = r["baseline"] if isinstance(r["baseline"], str) else ""
        role = ", ".join(x for x in ("best" if is_best else "", baseline) if x)
        gap = r["val_metric"] - best["val_metric"]
        delta = "—" if is_best else (f"{100 * gap:+.1f} points" if metric.fraction else f"{gap:+.4g}")
        lines.append(
            f"| #{int(r['number'])} | {role} | {_cell(r['batch_size'], '{:.0f}')} × "
            f"{_cell(r['accumulation_steps'], '{:.0f}')} | {_cell(r['learning_rate'], '{:.4g}')} "
            f"| {metric.text(r['val_metric'])} | {delta} | {_cell(r['epoch_time_s'], '{:.3g} s')} "
            f"| {format_bytes(_nan_none(r['measured_peak_bytes']))} |")
    shown = {r["baseline"] for r in table if isinstance(r["baseline"], str)}
    missing = sorted(set(df["baseline"].dropna()) - shown)
    if missing:
        lines += ["", f"Baselines that did not complete: {', '.join(missing)}."]
    return lines


_REASONS = {R.STOP_PRUNED: "by the pruner", R.STOP_OVER_MEMORY: "predicted over the memory cap",
            R.STOP_DIVERGED: "diverged", R.STOP_BUDGET: "cut off by the budget",
            R.STOP_OUT_OF_MEMORY: "out of memory"}


def _nan_none(value: Any) -> Optional[float]:
    return None if value is None or pd.isna(value) else float(value)


def _cell(value: Any, fmt: str) -> str:
    value = _nan_none(value)
    return "-" if value is None else fmt.format(value)
