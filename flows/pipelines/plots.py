"""Figures of results people would rather see than read: the testbed report and a fitted
compute-optimal policy. PNG files, written with matplotlib's file-only backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flows.policy import Policy


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_testbed_report(result: dict[str, Any], path: Path) -> Path:
    """Two panels: accuracy per difficulty quintile (proposer pass@1, majority of N, weighted
    best-of-N with the PRM and with the proposer's confidence), and reviser pass@1 along a chain
    (all problems, and thin lines per quintile)."""
    plt = _pyplot()
    proposer, best_of_n = result["proposer"], result["best_of_n"]
    quintiles = [row["bin"] for row in proposer["by_quintile"]]
    bars = {
        "proposer pass@1": [row["pass_at_1"] for row in proposer["by_quintile"]],
        f"majority of {best_of_n['budget']}": [row["majority"] for row in best_of_n["by_quintile"]],
        "weighted BoN (PRM)": [row["weighted"] for row in best_of_n["by_quintile"]],
    }
    if "confidence" in result:
        bars["weighted BoN (confidence)"] = [
            row["weighted"] for row in result["confidence"]["best_of_n"]["by_quintile"]
        ]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4), width_ratios=[3, 2])
    width = 0.8 / len(bars)
    for index, (label, values) in enumerate(bars.items()):
        left.bar([q + (index - (len(bars) - 1) / 2) * width for q in quintiles], values, width, label=label)
    left.set(
        xlabel="difficulty quintile (oracle pass@1; 1 = easiest)", ylabel="accuracy", xticks=quintiles, ylim=(0, 1.05)
    )
    left.legend(fontsize="small")
    reviser = result["reviser"]
    positions = range(len(reviser["pass_at_1_by_position"]))
    for row in reviser.get("by_quintile", []):  # reports written before it lack the split
        right.plot(positions, row["pass_at_1_by_position"], linewidth=1, alpha=0.6, label=f"quintile {row['bin']}")
    right.plot(positions, reviser["pass_at_1_by_position"], color="black", linewidth=2, marker="o", label="all")
    right.axhline(reviser["proposer_pass_at_1_same_problems"], color="grey", linestyle="--", label="proposer")
    right.set(xlabel="position in the revision chain", ylabel="pass@1", xticks=list(positions), ylim=(0, 1))
    right.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))  # beside the lines, not on them
    figure.suptitle(f"testbed report: {result['settings']['problems']} held-out problems", fontsize="medium")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_policy(policy: Policy, path: Path) -> Path:
    """Accuracy against budget N (log scale) on the calibration set: every fixed plan of the grid
    and the compute-optimal policy (two-fold cross-validated), overall and per difficulty bin."""
    plt = _pyplot()
    fit = policy.fit
    budgets = sorted(policy.budgets)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for label in policy.plans:
        try:
            accuracy = [fit.baseline(label, n) for n in budgets]
        except ValueError:  # a plan without outcomes at some budget (e.g. beam widths that do not fit)
            continue
        left.plot(budgets, accuracy, marker=".", linewidth=1, alpha=0.8, label=label)
    optimal = [fit.overall(n) for n in budgets]
    left.plot(budgets, optimal, color="black", linewidth=2.5, marker="o", label="compute-optimal")
    _budget_axis(left, budgets, "all calibration prompts")
    for bin_, size in fit.bin_sizes().items():
        accuracy = [fit.cv_accuracy[bin_][n] for n in budgets]
        right.plot(budgets, accuracy, marker="o", label=f"bin {bin_} ({size} prompts)")
    _budget_axis(right, budgets, "compute-optimal by difficulty bin (1 = easiest)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _budget_axis(axis: Any, budgets: list[int], title: str) -> None:
    """Accuracy from 0 against budget on a log scale, one tick per calibrated budget."""
    axis.set(xscale="log", xlabel="generation budget N", ylabel="accuracy", title=title)
    axis.set_xticks(budgets, [str(n) for n in budgets])
    axis.minorticks_off()
    axis.set_ylim(bottom=0)
    axis.legend(fontsize="x-small")
