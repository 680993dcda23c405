"""The PNG plots of the claims report (matplotlib, drawn off-screen)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from claims.experiments import efficiency_stats
from training.fileio import atomic_path


def figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    figure().close(fig)
    return path


def grouped_bars(ax: Any, groups: list[str], series: dict[str, list[float | None]], **tick_style: Any) -> None:
    """Two bars per group side by side, one per series (fractions, drawn as percent; None as 0)."""
    for k, (label, values) in enumerate(series.items()):
        ax.bar([i + 0.4 * k for i in range(len(values))], [100 * (v or 0) for v in values], 0.4, label=label)
    ax.set_xticks([i + 0.2 for i in range(len(groups))], groups, **tick_style)


def plot_affine(result: dict[str, Any], path: Path) -> Path:
    plt = figure()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    models = result["models"]
    groups = ["centred", "±6 px (trained)", "affine ≤ 6 px", "affine > 6 px",
              *[f"rot {b}°" for b in models["capsnet"]["matched"]["affine"]["rotation_deg"]]]
    series = {}
    for name, run in models.items():
        s = run["matched"]
        a = s["affine"]
        series[name] = [s["centred"], s["translation_only_6px"], a["translation_within_6px"]["accuracy"],
                        a["translation_beyond_6px"]["accuracy"], *[v["accuracy"] for v in a["rotation_deg"].values()]]
    grouped_bars(ax, groups, series, rotation=30, ha="right")
    ax.set_ylabel("test accuracy %")
    ax.set_title("Trained on translated MNIST, matched validation accuracy")
    ax.legend()
    return save(fig, path)


def plot_efficiency(result: dict[str, Any], path: Path) -> Path:
    plt = figure()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, by_fraction in efficiency_stats(result).items():
        ax.errorbar([100 * f for f in by_fraction], [100 * m for m, _ in by_fraction.values()],
                    yerr=[100 * s for _, s in by_fraction.values()], marker="o", capsize=3, label=name)
    ax.set_xscale("log")
    fractions = sorted({r["fraction"] for r in result["rows"]})
    ax.set_xticks([100 * f for f in fractions], [f"{f:.0%}" for f in fractions])
    ax.set_xlabel("share of the training split (same optimizer steps)")
    ax.set_ylabel("test accuracy %")
    ax.legend()
    return save(fig, path)


def plot_routing(result: dict[str, Any], path: Path) -> Path:
    plt = figure()
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3))
    for recon in (True, False):
        rows = sorted((r for r in result["rows"] if r["reconstruction"] == recon), key=lambda r: r["routing_iters"])
        label = "with reconstruction" if recon else "without"
        left.plot([r["routing_iters"] for r in rows], [100 * r["test_accuracy"] for r in rows], "o-", label=label)
        right.plot([r["routing_iters"] for r in rows], [r["train_images_per_sec"] for r in rows], "o-", label=label)
    iters = sorted({r["routing_iters"] for r in result["rows"]})
    left.set(xlabel="routing iterations", ylabel="test accuracy %", xticks=iters)
    right.set(xlabel="routing iterations", ylabel="training images/s", xticks=iters)
    left.legend()
    return save(fig, path)


def plot_crowded(result: dict[str, Any], path: Path) -> Path:
    plt = figure()
    fig, ax = plt.subplots(figsize=(4, 3))
    names = list(result["models"])
    grouped_bars(ax, names, {key.replace("_", " "): [result["models"][n]["test_metrics"].get(key) for n in names]
                             for key in ("exact_pair_error", "per_digit_error")})
    ax.set_ylim(0, 100)  # room for the legend above the bars
    ax.set_ylabel("test error %")
    ax.legend()
    return save(fig, path)


PLOTS = {"affine": plot_affine, "efficiency": plot_efficiency, "routing": plot_routing, "crowded": plot_crowded}
