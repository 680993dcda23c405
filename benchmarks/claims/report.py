"""report.md of the claims report: a section per experiment, the claims table, the machine."""

from __future__ import annotations

import dataclasses
import json
import platform
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from common.machine import machine_words

from claims.experiments import SCALES, Scale, affine_gap, efficiency_stats
from claims.plots import PLOTS
from training.fileio import atomic_path, write_json


def pct(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f} %"


def affine_section(result: dict[str, Any], scale: Scale) -> list[str]:
    models = result["models"]
    budget = f"{scale.affine_epochs} epoch(s)" if scale.affine_target_val is None else \
        f"until validation reached {pct(scale.affine_target_val, 1)} (at most {scale.affine_epochs} epochs)"
    lines = [f"Trained on MNIST within ±6 px on a 40×40 canvas, {budget}, validated after every epoch of "
             f"{epoch_words(scale)}; tested on {scale.affine_digits:,} MNIST test digits × 32 seeded affine "
             f"transforms (rotation ±20°, shear ±0.2, scale 0.8–1.2, translation anywhere the ink fits). "
             f"Matched stop: each model's first epoch at ≥ {pct(result['matched_val_accuracy'])} validation "
             "(the lower of the two best).", "",
             "`kept` is the affine accuracy as a share of the accuracy on the training-like control "
             "(translation only): robustness apart from how well the model learned the task.", "",
             "| model | params | stop | epoch | val | affine test | within ±6 px | beyond ±6 px "
             "| translation only (±6) | centred | kept |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, run in models.items():
        for stop in ("matched", "best"):
            s = run[stop]
            a = s["affine"]
            lines.append(f"| {name} ({run['variant']}) | {run['parameters']:,} | {stop} | {s['epoch']} "
                         f"| {pct(s['val_accuracy'])} | **{pct(a['accuracy'])}** "
                         f"| {pct(a['translation_within_6px']['accuracy'])} "
                         f"| {pct(a['translation_beyond_6px']['accuracy'])} "
                         f"| {pct(s['translation_only_6px'])} | {pct(s['centred'])} | {pct(kept(s), 1)} |")
    bins = list(models["capsnet"]["matched"]["affine"]["rotation_deg"])
    lines += ["", "Affine test accuracy by |rotation| (matched stop):", "",
              "| model | " + " | ".join(f"{b}°" for b in bins) + " |", "|---|" + "---|" * len(bins)]
    for name, run in models.items():
        rot = run["matched"]["affine"]["rotation_deg"]
        lines.append(f"| {name} | " + " | ".join(pct(rot[b]["accuracy"]) for b in bins) + " |")
    if result.get("incomplete"):
        lines[:0] = [f"**Incomplete**: {result['incomplete']}; the same command resumes the rest.", ""]
    lines += seeds_section(result, scale, scale.cnn)
    for cnn, comparison in result.get("other_cnns", {}).items():
        lines += seeds_section(comparison, scale, cnn)
    return lines


def seeds_section(comparison: dict[str, Any], scale: Scale, cnn: str) -> list[str]:
    """Every seed's matched comparison of the CapsNet with one CNN (`comparison`: its `seeds` and `gap`)
    and the gap's mean and spread."""
    seeds = comparison.get("seeds", {})
    if len(scale.affine_seeds) < 2:
        return []
    target = scale.affine_target_val
    so_far = "" if len(seeds) == len(scale.affine_seeds) else f" (of {len(scale.affine_seeds)}, so far)"
    lines = ["", f"Against `{cnn}` over {seeds_words(len(seeds))}{so_far}: each model's best validation, the "
             "accuracy the pair is matched at (the lower best; each pair matched on its own), each model's "
             "matched stop (its first epoch at or above it, and that epoch's validation), the affine accuracy "
             "of each there, and the gap (CapsNet − CNN)."
             + (f" A model whose best stays under {pct(target, 1)} is marked as such; the pair is then matched "
                "at the lower best, as always." if target else ""), "",
             "| seed | CapsNet best val | CNN best val | matched at | CapsNet stop | CNN stop | CapsNet affine "
             "| CNN affine | gap |",
             "|---|---|---|---|---|---|---|---|---|"]
    for seed, one in seeds.items():
        m = one["models"]
        best = {name: pct(max(m[name]["val_curve"])) + (" (under target)" if target and max(
            m[name]["val_curve"]) < target else "") for name in ("capsnet", "cnn")}
        stop = {name: f"epoch {m[name]['matched']['epoch']}, {pct(m[name]['matched']['val_accuracy'])}"
                      + (" (trained again)" if m[name].get("retrained") else "") for name in ("capsnet", "cnn")}
        gap = affine_gap(one)
        lines.append(f"| {seed} | {best['capsnet']} | {best['cnn']} | {pct(one['matched_val_accuracy'])} "
                     f"| {stop['capsnet']} | {stop['cnn']} "
                     f"| {pct(m['capsnet']['matched']['affine']['accuracy'])} "
                     f"| {pct(m['cnn']['matched']['affine']['accuracy'])} | {100 * gap:+.1f} points |")
    if any(run.get("retrained") for one in seeds.values() for run in one["models"].values()):
        lines += ["", "*Trained again*: that run's record came from an earlier report and its checkpoints were "
                  "not on the machine that made this comparison, so the model was trained again with the same "
                  "settings and seed (`--from-report`). Training differs between machines in its last digits, "
                  "so it is a second run of that seed, not the one in the other comparisons."]
    g = comparison["gap"]
    lines += ["", f"Gap against `{cnn}` at the matched stop: **{100 * g['mean']:+.1f} ± {100 * g['spread']:.1f} "
              f"points** (mean ± half the range over {seeds_words(len(seeds))}{so_far})" + who_is_ahead(g["per_seed"])]
    return lines


def who_is_ahead(gaps: list[float]) -> str:
    """Which model each seed's gap (CapsNet − CNN) favours, as the end of a sentence; a gap that rounds to
    0.0 points is a tie. Nothing to say about one seed beyond its gap."""
    if len(gaps) < 2:
        return "."
    ahead = [("the CapsNet ahead" if g > 0 else "the CNN ahead") if round(100 * g, 1) else "a tie (under 0.05 points)"
             for g in gaps]
    if len(set(ahead)) == 1:
        return f"; {ahead[0]} on every seed."
    counts = ", ".join(f"{who} on {ahead.count(who)}" for who in dict.fromkeys(ahead))
    return f"; {counts} of the {len(gaps)} seeds."


def seeds_words(n: int) -> str:
    return f"{n} seed" + ("" if n == 1 else "s")


def kept(scores: dict[str, Any]) -> float:
    """Affine accuracy as a share of the translation-only (training-like) accuracy."""
    return scores["affine"]["accuracy"] / scores["translation_only_6px"]


def efficiency_section(result: dict[str, Any], scale: Scale) -> list[str]:
    lines = [f"{scale.efficiency_epochs} epoch(s) of {epoch_words(scale)} for every fraction (the same "
             f"optimizer steps), seeds {', '.join(map(str, scale.seeds))} (the seed also draws the subset); "
             "test accuracy of the validation-selected checkpoint, mean ± half the range over seeds.", "",
             "| training images | CapsNet | CNN | CapsNet − CNN |", "|---|---|---|---|"]
    stats = efficiency_stats(result)
    for fraction in scale.fractions:
        (cm, cs), (nm, ns) = stats["capsnet"][fraction], stats["cnn"][fraction]
        lines.append(f"| {fraction:.0%} | {100 * cm:.2f} ± {100 * cs:.2f} % | {100 * nm:.2f} ± {100 * ns:.2f} % "
                     f"| {100 * (cm - nm):+.2f} points |")
    return lines


def routing_section(result: dict[str, Any], scale: Scale) -> list[str]:
    lines = [f"CapsNet `{scale.capsnet}`, {scale.routing_epochs} epoch(s) of {epoch_words(scale)}, one seed; "
             "ONNX Runtime (CPU provider) on the exported best checkpoint.", "",
             "| r | reconstruction | val | test | training img/s | ORT p50 ms, batch 1 | ORT img/s, batch 64 |",
             "|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['routing_iters']} | {'yes' if row['reconstruction'] else 'no'} "
                     f"| {pct(row['best_val_accuracy'])} | {pct(row['test_accuracy'])} "
                     f"| {row['train_images_per_sec']:,.0f} | {row['onnx_p50_latency_ms_batch_1']:.2f} "
                     f"| {row['onnx_images_per_sec_batch_64']:,.0f} |")
    return lines


def crowded_section(result: dict[str, Any], scale: Scale) -> list[str]:
    lines = [f"Overlapping pairs (36×36, shifts ±4), {scale.crowded_epochs} epoch(s) of {epoch_words(scale, 'pairs')}; "
             f"{result['test_pairs_per_digit']} fixed partners per MNIST test digit.", "",
             "| model | params | val exact-pair | test exact-pair error | test per-digit error |",
             "|---|---|---|---|---|"]
    for name, run in result["models"].items():
        m = run["test_metrics"]
        lines.append(f"| {name} ({run['variant']}) | {run['parameters']:,} | {pct(run['best_val_accuracy'])} "
                     f"| **{pct(m.get('exact_pair_error'))}** | {pct(m.get('per_digit_error'))} |")
    return lines


def epoch_words(scale: Scale, what: str = "images") -> str:
    return f"{scale.epoch_size:,} {what}" if scale.epoch_size else f"the whole training split ({what})"


def claims_table(results: dict[str, dict[str, Any]], scale: Scale) -> list[str]:
    """The claims, the paper's number beside ours (each from the experiments above)."""
    rows = ["| claim | paper | measured here |", "|---|---|---|"]
    if "affine" in results:
        m = results["affine"]["models"]
        gap = affine_gap(results["affine"])
        over_seeds = results["affine"].get("gap", {})
        seeds = len(over_seeds.get("per_seed", []))
        rows.append(f"| robust to affine transformations | affNIST 79 % vs 66 % (+13 points) | affine set "
                    f"{pct(m['capsnet']['matched']['affine']['accuracy'], 1)} vs "
                    f"{pct(m['cnn']['matched']['affine']['accuracy'], 1)} ({100 * gap:+.1f} points; each keeps "
                    f"{pct(kept(m['capsnet']['matched']), 0)} vs {pct(kept(m['cnn']['matched']), 0)} of its "
                    "training-like accuracy)"
                    + (f"; over {seeds} seeds {100 * over_seeds['mean']:+.1f} ± {100 * over_seeds['spread']:.1f}"
                       " points" if seeds > 1 else "")
                    + "".join(f"; against `{cnn}` {100 * c['gap']['mean']:+.1f} ± {100 * c['gap']['spread']:.1f} "
                              "points" for cnn, c in results["affine"].get("other_cnns", {}).items()) + " |")
    if "efficiency" in results:
        low = min(scale.fractions)
        acc = {mod: by_fraction[low][0] for mod, by_fraction in efficiency_stats(results["efficiency"]).items()}
        rows.append(f"| need less training data | (not measured in the paper) | {low:.0%} of the data: "
                    f"{pct(acc['capsnet'], 1)} vs {pct(acc['cnn'], 1)} "
                    f"({100 * (acc['capsnet'] - acc['cnn']):+.1f} points) |")
        speed = {mod: statistics.median(r["train_images_per_sec"] for r in results["efficiency"]["rows"]
                                        if r["model"] == mod) for mod in ("capsnet", "cnn")}
        rows.append(f"| slow to train (the routing loop) | (no CNN timing in the paper) | training images/s "
                    f"{speed['capsnet']:,.0f} vs {speed['cnn']:,.0f} for the CNN of the same size "
                    f"({speed['capsnet'] / speed['cnn']:.2f}×) |")
    if "routing" in results:
        with_recon = {r["routing_iters"]: r for r in results["routing"]["rows"] if r["reconstruction"]}
        rows.append("| 3 to 5 routing iterations are enough | Table 1: r=1 0.34 %, r=3 0.25 % test error "
                    "(with reconstruction) | " + ", ".join(
                        f"r={r} {pct(1 - row['test_accuracy'])} error, {row['train_images_per_sec']:,.0f} img/s"
                        for r, row in sorted(with_recon.items())) + " |")
    if "crowded" in results:
        m = results["crowded"]["models"]
        rows.append(f"| handle crowded scenes | MultiMNIST exact-pair error 5.2 % vs 8.1 % | "
                    f"{pct(m['capsnet']['test_metrics'].get('exact_pair_error'), 1)} vs "
                    f"{pct(m['cnn']['test_metrics'].get('exact_pair_error'), 1)} |")
    return rows


def write_report(results: dict[str, dict[str, Any]], scale_name: str, report_dir: Path, seconds: dict) -> Path:
    scale = SCALES[scale_name]
    report_dir.mkdir(parents=True, exist_ok=True)
    sections = {"affine": ("Affine robustness (affNIST-style)", affine_section),
                "efficiency": ("Data efficiency", efficiency_section),
                "routing": ("Routing iterations", routing_section),
                "crowded": ("Crowded scenes (MultiMNIST)", crowded_section)}
    lines = ["# The talk's claims, measured", "",
             f"Generated by `python benchmarks/capsule_claims.py --scale {scale_name}` on "
             f"{report_machine_words()}. Runs trained on: {run_machines(results)}. "
             "Wall time per experiment (this invocation or the one that ran it): "
             + ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items()) + ".",
             f"Budget ({scale_name} scale): CapsNet `{scale.capsnet}` against CNNs `{scale.cnn}` and (pairs) "
             f"`{scale.pair_cnn}`; batch {scale.batch_size}, epochs of {epoch_words(scale)}, Adam lr 1e-3 decayed "
             f"{scale.lr_decay} per {scale.lr_decay_steps} steps, the same for both models; details per section.",
             "Every number below comes from a run of this code; the paper's numbers are quoted for comparison only.",
             "", *claims_table(results, scale)]
    for key, (title, render) in sections.items():
        if key in results:
            lines += ["", f"## {title}", "", *render(results[key], scale)]
            plot = PLOTS[key](results[key], report_dir / f"{key}.png")
            lines += ["", f"![{title}]({plot.name})"]
    path = report_dir / "report.md"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    write_json(report_dir / "results.json", {"scale": scale_name, "budget": dataclasses.asdict(scale), **results})
    return path


def report_machine_words() -> str:
    import onnxruntime

    return f"{machine_words()}, onnxruntime {onnxruntime.__version__}, {platform.system()}"


def run_machines(results: dict[str, Any]) -> str:
    """The machines the runs in `results` trained on (their records' `machine`), each with its number of
    runs; a run that appears in several comparisons counts once."""
    machines: dict[tuple[str, tuple[float, ...]], str | None] = {}

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            if "variant" in x.get("key", {}):  # a training run's record (its key is a TrainConfig)
                machines[json.dumps(x["key"], sort_keys=True), tuple(x.get("val_curve", ()))] = x.get("machine")
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(results)
    counts = Counter(m or "not recorded (runs before 2026-12-07)" for m in machines.values())
    return "; ".join(f"{m}: {n} run{'' if n == 1 else 's'}" for m, n in counts.items())
