"""Figures of a search run for people: the Pareto plot, per-layer widths, search progress and the gate
supernet's width distributions.

Figures are built on ``matplotlib.figure.Figure`` directly, not through ``pyplot``: no global
backend switch, no window, nothing left open, so plotting is safe inside workers and tests. Every
function saves one PNG, returns its path and draws a note instead of failing on an empty table.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .results import PROPOSAL_SOURCES

__all__ = ["plot_gates", "plot_pareto", "plot_progress", "plot_widths"]

_DPI = 150
_SEED_STYLES = {"uniform": ("s", "C0"), "l2": ("D", "C1"), "sensitivity": ("^", "C2"), "gates": ("P", "C3")}
"""(marker, colour) of the built-in seed kinds; other kinds get theirs from a cycle (:func:`_seed_styles`)."""
_MORE_MARKERS = ("v", "p", "h", "<", "X", ">", "d", "*")


def _seed_styles(sources) -> dict[str, tuple[str, str]]:
    """(marker, colour) per seed source among ``sources``: the built-in kinds first, then any other kind
    (every source that is not a proposal's) in order of appearance, from a cycle of markers and colours."""
    seeds = [s for s in dict.fromkeys(sources) if s not in PROPOSAL_SOURCES]
    more = zip(itertools.cycle(_MORE_MARKERS), itertools.cycle(f"C{i}" for i in range(4, 10)))
    styles = {s: style for s, style in _SEED_STYLES.items() if s in seeds}
    styles.update((s, next(more)) for s in seeds if s not in _SEED_STYLES)
    return styles


def _numbers(column: pd.Series) -> np.ndarray:
    """A numeric column as float64 with NaN for empty (works for nullable Int64 too)."""
    return column.to_numpy(dtype=float, na_value=np.nan)


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=12, color="0.4")


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, format="png")
    fig.clear()
    return path


def plot_pareto(
    trials: pd.DataFrame,
    front: pd.DataFrame,
    path: str | os.PathLike,
    *,
    dense: Mapping | None = None,
    budget_flops_ratio: float | None = None,
    title: str = "",
    score_name: str = "accuracy",
) -> Path:
    """Validation score (``score_name``: the task's) against FLOPs (as a fraction of the dense model) for every proposal.

    Draws complete trials (feasible filled, over budget hollow), lower-rung candidates faded (their
    accuracy is low-fidelity), infeasible proposals as 'x' marks on the bottom edge (never trained),
    the Pareto ``front`` as a step line, seed trials with their own markers and labels, the dense model
    as a star at x = 1 and the FLOPs budget as a dashed vertical line.

    Args:
        trials: the trials table (``read_trials``).
        front: its Pareto front (``pareto_front``).
        path: PNG file to write.
        dense: dense model figures; its ``val_accuracy`` (if any) places the star.
        budget_flops_ratio: FLOPs budget as a fraction of the dense model.
        title: figure title.

    Returns:
        ``path`` as a ``Path``.
    """
    fig = Figure(figsize=(10, 5.5), layout="tight")
    ax = fig.add_subplot()
    x, y = _numbers(trials["flops_ratio"]), _numbers(trials["val_accuracy"])
    scatter = _masked_scatter(ax, x, y)
    _draw_candidates(ax, trials, x, scatter)
    _draw_front(ax, front)
    _draw_seeds(ax, trials, x, y, scatter)
    _draw_references(ax, dense, budget_flops_ratio)
    _finish_pareto(ax, trials, x, budget_flops_ratio, title, score_name)
    return _save(fig, path)


def _masked_scatter(ax, x: np.ndarray, y: np.ndarray):
    """``scatter(mask, **style)``: draw the rows of ``mask`` that have both coordinates."""
    drawable = ~np.isnan(x) & ~np.isnan(y)

    def scatter(mask, **style):
        mask = np.asarray(mask, dtype=bool) & drawable
        if mask.any():
            ax.scatter(x[mask], y[mask], **style)

    return scatter


def _draw_candidates(ax, trials: pd.DataFrame, x: np.ndarray, scatter) -> None:
    """Stopped (faded), complete (filled if feasible, hollow if not), infeasible ('x' on the bottom edge)."""
    state, feasible = trials["state"], trials["feasible"].astype(bool)
    scatter(
        (state == "stopped").to_numpy(),
        s=18,
        color="C0",
        alpha=0.25,
        linewidths=0,
        label="stopped below the top rung (lower-fidelity score)",
    )
    scatter(
        (state == "complete") & ~feasible,
        s=30,
        facecolors="none",
        edgecolors="0.45",
        label="complete, over budget",
    )
    scatter((state == "complete") & feasible, s=30, color="C0", label="complete, feasible")

    infeasible = (state == "infeasible").to_numpy() & ~np.isnan(x)
    if infeasible.any():
        ax.scatter(
            x[infeasible],
            np.full(infeasible.sum(), 0.02),
            marker="x",
            s=20,
            color="C3",
            transform=ax.get_xaxis_transform(),
            label="infeasible proposal (not trained)",
        )


def _draw_front(ax, front: pd.DataFrame) -> None:
    """The Pareto front as a step line through ringed points."""
    if len(front):
        fx, fy = _numbers(front["flops_ratio"]), _numbers(front["val_accuracy"])
        order = np.lexsort((fy, fx))
        ax.step(fx[order], fy[order], where="post", color="C1", linewidth=2, zorder=3, label="Pareto front")
        ax.scatter(fx, fy, s=60, facecolors="none", edgecolors="C1", linewidths=1.5, zorder=3)


def _draw_seeds(ax, trials: pd.DataFrame, x: np.ndarray, y: np.ndarray, scatter) -> None:
    """Each seed kind's candidates with its own marker and a text label."""
    state = trials["state"]
    drawable = ~np.isnan(x) & ~np.isnan(y)
    for source, (marker, color) in _seed_styles(trials["source"]).items():
        mask = (
            (trials["source"] == source).to_numpy()
            & state.isin(["complete", "stopped"]).to_numpy()
            & drawable
        )
        for xi, yi in zip(x[mask], y[mask], strict=True):
            ax.annotate(source, (xi, yi), xytext=(6, 4), textcoords="offset points", fontsize=9)
        scatter(
            mask,
            marker=marker,
            s=70,
            color=color,
            edgecolors="black",
            zorder=4,
            label=f"seed: {source}",
        )


def _draw_references(ax, dense: Mapping | None, budget_flops_ratio: float | None) -> None:
    """The dense model as a star at x = 1, the FLOPs budget as a dashed vertical line."""
    dense_acc = None if dense is None else dense.get("val_accuracy")
    if dense_acc is not None and not pd.isna(dense_acc):
        ax.scatter(
            [1.0],
            [dense_acc],
            marker="*",
            s=220,
            color="gold",
            edgecolors="black",
            zorder=5,
            label=f"dense model ({dense_acc:.3f})",
        )
    if budget_flops_ratio is not None:
        ax.axvline(
            budget_flops_ratio,
            color="0.3",
            linestyle="--",
            linewidth=1.2,
            label=f"FLOPs budget ({budget_flops_ratio:.2f} of dense)",
        )


def _finish_pareto(
    ax, trials: pd.DataFrame, x: np.ndarray, budget_flops_ratio, title: str, score_name: str
) -> None:
    """Counts by state, limits, labels, title and legend."""
    state = trials["state"]
    if not (state == "complete").any():
        _note(ax, "no complete trials yet")
    counts = state.value_counts()
    summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("complete", "stopped", "infeasible", "failed"))
    ax.text(
        0.01,
        0.99,
        f"{len(trials)} proposals: {summary}",
        transform=ax.transAxes,
        va="top",
        fontsize=8,
        color="0.35",
    )

    right = np.nanmax(np.append(x, [1.0, budget_flops_ratio or 0.0]))
    ax.set_xlim(0, right * 1.05)
    ax.set_xlabel("FLOPs (fraction of the dense model)", fontsize=11)
    ax.set_ylabel(f"validation {score_name}", fontsize=11)
    ax.set_title(title or "Accuracy vs FLOPs of every proposal", fontsize=12)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)


def plot_widths(
    dense_channels: Mapping[str, int], widths: Mapping[str, int], path: str | os.PathLike, *, title: str = ""
) -> Path:
    """One bar per channel group: original channels (light) behind the channels kept (dark).

    Args:
        dense_channels: ``{group: channels}`` of the dense model, in network order.
        widths: ``{group: channels kept}``; a group left out is drawn at full width (not pruned).
        path: PNG file to write.
        title: figure title.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: ``widths`` names a group that ``dense_channels`` lacks.
    """
    unknown = set(widths) - set(dense_channels)
    if unknown:
        raise ValueError(f"widths name groups the dense model lacks: {sorted(unknown)}")
    names = list(dense_channels)
    original = np.array([dense_channels[n] for n in names], dtype=float)
    kept = np.array([widths.get(n, dense_channels[n]) for n in names], dtype=float)

    fig = Figure(figsize=(max(6.0, 2.0 + 0.32 * len(names)), 4.8), layout="tight")
    ax = fig.add_subplot()
    if names:
        positions = np.arange(len(names))
        ax.bar(positions, original, width=0.8, color="#c6dbef", label="original channels")
        overall = kept.sum() / original.sum()
        ax.bar(positions, kept, width=0.55, color="#08519c", label=f"kept channels ({overall:.0%} overall)")
        if len(names) <= 40:
            for p, k, o in zip(positions, kept, original, strict=True):
                ax.text(p, o, f"{k / o:.0%}", ha="center", va="bottom", fontsize=7, rotation=90)
        ax.set_xticks(positions, names, rotation=60, ha="right", fontsize=8 if len(names) <= 30 else 6)
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.set_ylim(0, original.max() * 1.15)
        ax.legend(loc="upper left", fontsize=9)
    else:
        _note(ax, "no channel groups")
    ax.set_ylabel("channels", fontsize=11)
    ax.set_title(title or "Channels per group: original vs kept", fontsize=12)
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def plot_progress(
    trials: pd.DataFrame, path: str | os.PathLike, *, budget_note: str = "", score_name: str = "accuracy"
) -> Path:
    """The fidelity ladder at work: every candidate's rung-0 score and, for those promoted, their score at
    the highest rung reached, against the candidate number; the best top-rung score so far as a line.

    Args:
        trials: the trials table (``read_trials``; version-1 tables show their one rung).
        path: PNG file to write.
        budget_note: text shown in the title, e.g. ``"FLOPs <= 0.5 of dense"``.

    Returns:
        ``path`` as a ``Path``.
    """
    ordered = trials[trials["state"] != "infeasible"].sort_values("trial_id", kind="mergesort")
    ids = ordered["trial_id"].to_numpy()
    rung = ordered["rung"].fillna(0).astype(int).to_numpy()
    score = _numbers(ordered["val_accuracy"])
    rung0 = np.where(
        np.isnan(_numbers(ordered["rung0_accuracy"])),
        np.where(rung == 0, score, np.nan),
        _numbers(ordered["rung0_accuracy"]),
    )
    seeds = ~ordered["source"].isin(PROPOSAL_SOURCES).to_numpy()

    fig = Figure(figsize=(9.5, 4.8), layout="tight")
    ax = fig.add_subplot()
    ax.scatter(ids[~seeds], rung0[~seeds], s=10, color="0.6", alpha=0.6, label="rung 0 (no fine-tuning)")
    ax.scatter(ids[seeds], rung0[seeds], s=30, marker="s", color="0.4", label="rung 0, seeds")
    top = int(rung.max()) if len(rung) else 0
    for r in range(1, top + 1):
        mask = rung == r
        epochs = ordered["epochs"].to_numpy()[mask]
        label = f"rung {r} ({np.nanmax(epochs):.3g} epochs)" if mask.any() else f"rung {r}"
        ax.scatter(ids[mask & ~seeds], score[mask & ~seeds], s=28, color=f"C{r}", label=label)
        ax.scatter(ids[mask & seeds], score[mask & seeds], s=60, marker="s", color=f"C{r}", edgecolor="black")
    good = (
        (ordered["state"] == "complete").to_numpy()
        & ordered["feasible"].astype(bool).to_numpy()
        & (rung == top)
    )
    if good.any():
        best = pd.Series(np.where(good, score, np.nan)).cummax().ffill().to_numpy()
        ax.step(ids, best, where="post", color="black", linewidth=2, label=f"best at rung {top} so far")
    if not len(ids):
        _note(ax, "no evaluated candidates yet")
    else:
        ax.legend(
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize=9,
            frameon=False,
            title="squares: seeds",
            title_fontsize=9,
        )
    ax.set_xlabel("candidate (trial_id)", fontsize=11)
    ax.set_ylabel(f"validation {score_name}", fontsize=11)
    ax.set_title("Fidelity ladder" + (f" ({budget_note})" if budget_note else ""), fontsize=12)
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def plot_gates(history: pd.DataFrame, path: str | os.PathLike, *, title: str = "") -> Path:
    """One heat map per channel group: each candidate width's probability over the gate training.

    Columns are record steps (x: epochs), rows the group's candidate widths (y); the colour is the
    probability, on one scale shared by all panels. A white line traces the expected width.

    Args:
        history: ``GateResult.history``: columns ``epoch, group, width, probability``.
        path: PNG file to write.
        title: figure title.

    Returns:
        ``path`` as a ``Path``.
    """
    groups = list(dict.fromkeys(history["group"]))
    cols = min(4, max(1, len(groups)))
    rows = max(1, -(-len(groups) // cols))
    fig = Figure(figsize=(3.4 * cols + 1.0, 2.5 * rows + 0.8), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    top = float(history["probability"].max()) if len(history) else 1.0
    mesh = None
    for ax, group in zip(axes, groups, strict=False):
        table = history[history["group"] == group].pivot_table(
            index="width", columns="epoch", values="probability", aggfunc="last"
        )
        epochs, widths = table.columns.to_numpy(dtype=float), table.index.to_numpy(dtype=float)
        mesh = ax.pcolormesh(
            epochs if len(epochs) > 1 else np.array([epochs[0] - 0.5, epochs[0] + 0.5]),
            widths,
            table.to_numpy() if len(epochs) > 1 else np.repeat(table.to_numpy(), 2, axis=1),
            shading="nearest",
            cmap="viridis",
            vmin=0.0,
            vmax=top,
        )
        expected = (table.to_numpy() * widths[:, None]).sum(axis=0)
        ax.plot(epochs, expected, color="white", linewidth=1.2, marker="." if len(epochs) == 1 else None)
        ax.set_title(group, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel("width", fontsize=8)
    for ax in axes[len(groups) :]:
        ax.set_axis_off()
    if mesh is None:
        axes[0].set_axis_on()
        _note(axes[0], "no gate history")
    else:
        fig.colorbar(mesh, ax=list(axes[: len(groups)]), label="probability", shrink=0.9)
    fig.suptitle(title or "Width distribution per group during gate training (white: expected width)")
    return _save(fig, path)
