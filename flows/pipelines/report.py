"""The report of runs, built from the database alone: accuracy against budget per strategy with
compute-optimal overlaid, accuracy by difficulty and budget, the revision ratio sweep, spend, and each
prompt's search tree with why its answer won (Snell et al. 2024, §5–§7), as one self-contained HTML file.

`tally_votes` (why an answer won: the final vote read back from a trace) is shared with `ttc trace`,
so this module imports nothing heavy at its top: matplotlib and Prefect load when a report is built."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from db import queries
from db.queries import CandidateInfo, SolveTrace
from ttc_nodes.answers import group_answers

# What an answer's total is, by the select node's method.
TOTALS = {
    "weighted": "summed scores",
    "hierarchical": "summed scores of the chain winners",
    "majority": "counts",
    "best_of_n": "best scores",
    "most_visited": "visits",
}


@dataclass(frozen=True)
class VoteRow:
    """One answer of the final vote: its total as the vote counted it, and the finished candidates
    behind it (how many, the sum and best of their latest scores)."""

    answer: str
    total: float
    candidates: int
    score_sum: float | None  # None when none of them was scored (majority)
    best_score: float | None
    first: str | None  # key of the first candidate that reached this answer
    won: bool


@dataclass(frozen=True)
class VoteTally:
    method: str | None  # weighted | best_of_n | majority | hierarchical | most_visited …
    rows: list[VoteRow]  # by total, highest first; equal totals in the order the answers first appeared
    chosen: str | None  # the candidate carrying the winning answer
    tie: list[str]  # the answers that shared the winner's total, the winner first; [] when no tie
    tie_rule: str | None  # how the tie was broken, in words
    answer_of: dict[str, str]  # candidate key → the vote's answer it counted for

    @property
    def winner(self) -> VoteRow | None:
        return next((row for row in self.rows if row.won), None)

    @property
    def grand_total(self) -> float:
        return sum(row.total for row in self.rows)


def final_vote(trace: SolveTrace) -> tuple[str | None, dict[str, float]]:
    """The select step's method and the vote table the solve kept (answer → total)."""
    votes = trace.detail.get("votes")
    method = None
    for step in reversed(trace.steps):
        if "method" in step.detail:
            method = str(step.detail["method"])
            votes = votes or step.detail.get("votes")
            break
    return method, {str(answer): float(total) for answer, total in (votes or {}).items()}


def tally_votes(trace: SolveTrace) -> VoteTally | None:
    """The solve's final vote sorted by total, each answer's finished candidates beside it, and how a
    tie was broken (the vote gives a tie to the answer seen first); None when the solve kept no vote."""
    method, votes = final_vote(trace)
    if not votes:
        return None
    latest = {score.candidate_key: score.value for score in sorted(trace.scores, key=lambda s: s.id)}
    members = [c for c in trace.candidates if c.finished and c.answer is not None and c.kind != "rollout"]
    answers = list(votes)
    groups = group_answers([*answers, trace.answer, *(c.answer for c in members)])
    key_groups, winner_group, member_groups = groups[: len(answers)], groups[len(answers)], groups[len(answers) + 1 :]
    behind: dict[str, list[CandidateInfo]] = {answer: [] for answer in answers}
    by_group = {group: answer for answer, group in zip(answers, key_groups, strict=True)}
    for candidate, group in zip(members, member_groups, strict=True):
        if group in by_group:
            behind[by_group[group]].append(candidate)
    order = {c.key: index for index, c in enumerate(trace.candidates)}

    def first_seen(answer: str) -> float:
        return min((order[c.key] for c in behind[answer]), default=math.inf)

    winner = next((a for a, g in zip(answers, key_groups, strict=True) if g == winner_group), None)
    rows = []
    for answer in sorted(answers, key=lambda a: (-votes[a], first_seen(a))):
        scores = [latest[c.key] for c in behind[answer] if c.key in latest]
        rows.append(
            VoteRow(
                answer=answer,
                total=votes[answer],
                candidates=len(behind[answer]),
                score_sum=sum(scores) if scores else None,
                best_score=max(scores) if scores else None,
                first=behind[answer][0].key if behind[answer] else None,
                won=answer == winner,
            )
        )
    tie: list[str] = []
    rule = None
    if winner is not None:
        tied = [row.answer for row in rows if row.total == votes[winner]]
        if len(tied) > 1:
            tie = [winner, *(answer for answer in tied if answer != winner)]
            earliest = min(tied, key=first_seen)
            if earliest == winner:
                carrier = next(row.first for row in rows if row.won)
                rule = f"broken for the answer reached first (candidate {carrier})"
            else:
                rule = f"broken by the {method or 'strategy'} rule, not by order of appearance"
    answer_of = {c.key: answer for answer, cs in behind.items() for c in cs}
    return VoteTally(method, rows, trace.detail.get("chosen"), tie, rule, answer_of)


# --- `ttc report`: one self-contained HTML file of runs, from the database alone ----------------------

# Candidates per solve in the report (`ttc trace` shows the rest): at most MAX_TREE_NODES, and fewer when
# there are many solves, so the whole report holds about REPORT_NODES of them (a few MB), but never
# fewer than MIN_TREE_NODES (the paths to the answers come first).
MAX_TREE_NODES = 400
MIN_TREE_NODES = 8
REPORT_NODES = 40_000
MAX_TEXT = 240  # characters of a candidate's text in the report
COMPUTE_OPTIMAL = "compute-optimal"
# A problem's difficulty group: the first of these fields of its metadata that every problem has.
BIN_FIELDS = {"bin": "difficulty bin", "level": "MATH level", "difficulty": "difficulty knob"}


class ReportError(ValueError):
    """What a user asked for cannot be reported: an unknown run, a folder without runs, no graded solves."""


@dataclass(frozen=True)
class Cell:
    """Graded solves of one series at one budget (and one difficulty group, or all of them)."""

    series: str
    budget: int
    group: str
    correct: int
    graded: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.graded

    def interval(self) -> tuple[float, float]:
        from flows.pipelines.evaluate import wilson  # Prefect's import cost, paid by `ttc report` alone

        return wilson(self.correct, self.graded)


@dataclass(frozen=True)
class Spend:
    run: str
    series: str
    budget: str
    prompts: int
    done: int
    failed: int
    graded: int
    correct: int
    generations: float
    tokens: int
    flops: float
    seconds: float


def resolve_runs(session: Session, sources: Sequence[str]) -> list[queries.RunInfo]:
    """The runs named by `sources`: run names or ids, a calibration's name (its runs `NAME/…`), or
    folders whose JSON files name runs (the `--summary` files of evaluate and calibrate). Each run
    must hold graded solves; anything else is a ReportError naming it."""
    if not sources:
        raise ReportError("name at least one run, or a folder of run summaries")
    found: dict[str, queries.RunInfo] = {}
    every = queries.runs(session)
    for source in sources:
        path = Path(source)
        names = named_in_folder(path) if path.is_dir() else [source]
        if path.is_dir() and not names:
            raise ReportError(f"folder {source} names no runs (no JSON summary with a run_id, run_name or runs)")
        for name in names:
            runs = runs_named(every, name)
            if not runs:
                where = f" (named in {source})" if path.is_dir() else ""
                raise ReportError(f"no run with id or name {name!r} in this database{where}")
            for run in runs:
                found.setdefault(run.id, run)
    for run in found.values():
        if run.config.get("flow") != "difficulty" and not any(
            o.status == "done" and o.correct is not None for o in queries.solve_outcomes(session, run.id)
        ):
            raise ReportError(f"run {run.name or run.id!r} has no graded solves (a reference answer grades a solve)")
    return list(found.values())


def runs_named(every: Sequence[queries.RunInfo], name: str) -> list[queries.RunInfo]:
    """The run with this name or id; else a calibration's runs, `NAME/…` (its difficulty runs aside)."""
    exact = [r for r in every if r.name == name] or [r for r in every if r.id == name]
    if exact:
        return exact
    return sorted(
        (r for r in every if (r.name or "").startswith(f"{name}/") and r.config.get("flow") != "difficulty"),
        key=lambda r: r.name or "",
    )


def named_in_folder(folder: Path) -> list[str]:
    """Run ids and names in the folder's JSON files: `run_id`, else `run_name`, and a `runs` list."""
    names: list[str] = []
    for path in sorted(folder.rglob("*.json")):
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if not isinstance(content, dict):
            continue
        named = content.get("run_id") or content.get("run_name")
        if isinstance(named, str):
            names.append(named)
        for entry in content.get("runs") or []:
            entry = entry.get("run_id") or entry.get("run_name") if isinstance(entry, dict) else entry
            if isinstance(entry, str):
                names.append(entry)
    return list(dict.fromkeys(names))


def is_optimal(series: str) -> bool:
    """Whether the series is a compute-optimal policy's (`compute-optimal (FILE)`)."""
    return series == COMPUTE_OPTIMAL or series.startswith(f"{COMPUTE_OPTIMAL} (")


def series_of(run: queries.RunInfo, strategy: str) -> str:
    """The line a run's solves are drawn on: compute-optimal for a policy's runs, a calibration plan by
    its label, else the strategy with the settings the run was given (`beam beam_width=4`)."""
    config = run.config
    if config.get("policy"):
        # Each policy file its own line: a reproduction draws the predicted- and oracle-binned ones.
        return f"{COMPUTE_OPTIMAL} ({Path(str(config['policy'])).stem})"
    if config.get("plan"):
        return str(config["plan"])
    if config.get("pool") is not None:
        return f"{strategy} (calibration pool)"
    given = config.get("settings") if config.get("flow") == "evaluate" else None
    tags = " ".join(f"{k}={v}" for k, v in sorted((given or {}).items()) if k != "budget")
    return f"{strategy} {tags}".strip()


def group_field(problems: Sequence[dict[str, Any]]) -> str | None:
    """The first of BIN_FIELDS that every problem's meta has: the difficulty groups of the report."""
    return next((name for name in BIN_FIELDS if problems and all(p.get(name) is not None for p in problems)), None)


def collect(session: Session, runs: Sequence[queries.RunInfo]) -> dict[str, Any]:
    """Everything the report shows, as plain data: cells by series, budget and group; the revision
    sweep; spend per run; and each prompt's solves with their trees and votes."""
    traces = {run.id: queries.trace_of(session, run.id) for run in runs}
    problems = {(t.problem.dataset, t.problem.key): t.problem.meta for ts in traces.values() for t in ts}
    field = group_field(list(problems.values()))
    solves = sum(len(ts) for ts in traces.values())
    cap = max(MIN_TREE_NODES, min(MAX_TREE_NODES, REPORT_NODES // max(1, solves)))
    cells: dict[tuple[str, int, str], list[int]] = {}
    sweep: dict[tuple[int, float, str], list[int]] = {}
    spend: list[Spend] = []
    series_by_run: dict[str, set[str]] = {}
    prompts: dict[str, dict[str, Any]] = {}
    failures: list[dict[str, str]] = []
    for run in runs:
        label = run.name or run.id
        run_series: set[str] = set()
        for t in traces[run.id]:
            series = series_of(run, t.strategy)
            run_series.add(series)
            budget = int(run.config.get("budget") or t.budget) if is_optimal(series) else t.budget
            if t.status not in ("done", "running"):
                failures.append({"run": label, "key": t.problem.key, "status": t.status, "error": t.error or ""})
            if t.status == "done" and t.correct is not None:
                group = str(t.problem.meta.get(field)) if field else "all"
                for key in {(series, budget, group), (series, budget, "all")}:
                    cell = cells.setdefault(key, [0, 0])
                    cell[0] += bool(t.correct)
                    cell[1] += 1
                if t.strategy == "revisions" and t.settings.get("chains"):
                    ratio = float(t.settings["chain_length"]) / float(t.settings["chains"])
                    for point in {(t.budget, ratio, group), (t.budget, ratio, "all")}:
                        cell = sweep.setdefault(point, [0, 0])
                        cell[0] += bool(t.correct)
                        cell[1] += 1
            prompt = prompts.setdefault(
                f"{t.problem.dataset}/{t.problem.key}",
                {
                    "key": t.problem.key,
                    "dataset": t.problem.dataset,
                    "question": t.problem.question,
                    "reference": t.problem.reference,
                    "group": str(t.problem.meta.get(field)) if field else None,
                    "solves": [],
                },
            )
            prompt["solves"].append(solve_json(label, series, t, cap))
        spend.append(run_spend(run, label, run_series, traces[run.id]))
        series_by_run[run.id] = run_series
        if run.config.get("policy"):
            # The estimates this run's prompts were binned by, in the difficulty run they share with
            # every evaluation on the same engines and K (flows/pipelines/evaluate.py).
            for difficulty_id in sorted(
                {str(t.detail["difficulty_run"]) for t in traces[run.id] if "difficulty_run" in t.detail}
            ):
                difficulty = queries.find_run(session, difficulty_id)
                if difficulty is not None:
                    ids = sorted({t.problem.id for t in traces[run.id]})
                    estimates = queries.trace_of(session, difficulty.id, problem_ids=ids)
                    spend.append(
                        run_spend(difficulty, f"{label} (difficulty estimate)", {"difficulty estimate"}, estimates)
                    )
    return {
        "runs": runs,
        "series": series_by_run,
        "group_field": field,
        "cells": [Cell(s, b, g, c, n) for (s, b, g), (c, n) in sorted(cells.items())],
        "sweep": [Cell("revisions", b, f"{r:g}|{g}", c, n) for (b, r, g), (c, n) in sorted(sweep.items())],
        "spend": spend,
        "failures": failures,
        "prompts": prompts,
    }


def run_spend(run: queries.RunInfo, label: str, series: set[str], traces: Sequence[SolveTrace]) -> Spend:
    done = [t for t in traces if t.status == "done"]
    budgets = sorted({t.budget for t in traces})
    return Spend(
        run=label,
        series=", ".join(sorted(series)) or "—",
        budget=", ".join(map(str, budgets)),
        prompts=len(traces),
        done=len(done),
        failed=sum(t.status not in ("done", "running") for t in traces),
        graded=sum(t.correct is not None for t in done),
        correct=sum(bool(t.correct) for t in done),
        generations=sum(t.generations for t in traces),
        tokens=sum(t.tokens for t in traces),
        flops=sum(t.flops for t in traces),
        seconds=sum(t.seconds for t in traces),
    )


def solve_json(run: str, series: str, trace: SolveTrace, cap: int = MAX_TREE_NODES) -> dict[str, Any]:
    """One solve of a prompt for the page: its plan, verdict, node executions, tree and vote."""
    tally = tally_votes(trace)
    return {
        "run": run,
        "series": series,
        "strategy": trace.strategy,
        "budget": trace.budget,
        "status": trace.status,
        "answer": trace.answer,
        "correct": trace.correct,
        "chosen": trace.detail.get("chosen"),
        "generations": trace.generations,
        "tokens": trace.tokens,
        "steps": [[s.seq, s.node, s.round, s.generations, s.tokens] for s in trace.steps],
        "tree": tree_json(trace, tally, cap),
        "hidden": max(0, len(trace.candidates) - cap),
        "vote": None
        if tally is None
        else {
            "method": tally.method,
            "rows": [[r.answer, r.total, r.candidates, r.score_sum, r.best_score, r.won] for r in tally.rows],
            "tie": tally.tie,
            "tie_rule": tally.tie_rule,
            "totals": TOTALS.get(tally.method or ""),
        },
    }


def _flat(text: str) -> str:
    """A candidate's text on one line (steps joined by ⏎), at most MAX_TEXT characters."""
    flat = " ⏎ ".join(line.strip() for line in text.splitlines() if line.strip())
    return flat if len(flat) <= MAX_TEXT else flat[: MAX_TEXT - 1] + "…"


def tree_json(trace: SolveTrace, tally: VoteTally | None, cap: int = MAX_TREE_NODES) -> list[dict[str, Any]]:
    """The candidate forest, at most about `cap` nodes: the paths to finished answers first."""
    latest = {row.candidate_key: row for row in sorted(trace.scores, key=lambda s: s.id)}
    parent = {c.key: c.parent_key for c in trace.candidates}
    keep: dict[str, None] = {}
    for c in trace.candidates:
        if c.finished and len(keep) < cap:
            path: list[str] = []
            key: str | None = c.key
            while key is not None and key not in keep:
                path.append(key)
                key = parent.get(key)
            keep.update(dict.fromkeys(reversed(path)))
    for c in trace.candidates:
        if len(keep) >= cap:
            break
        if c.parent_key is None or c.parent_key in keep:
            keep.setdefault(c.key)
    nodes: dict[str, dict[str, Any]] = {}
    roots: list[dict[str, Any]] = []
    for c in trace.candidates:
        if c.key not in keep:
            continue
        score = latest.get(c.key)
        node = {
            "k": c.key,
            "r": c.round,
            "t": c.kind,
            "s": None if score is None else round(score.value, 4),
            "ss": None if score is None else [round(v, 3) for v in score.step_scores],
            "a": c.answer,
            "v": tally.answer_of.get(c.key) if tally else None,
            "x": _flat(c.text),
            "c": [],
        }
        nodes[c.key] = node
        (nodes[c.parent_key]["c"] if c.parent_key in nodes else roots).append(node)
    return roots


# --- figures: matplotlib's SVG backend, text kept as text (selectable, and small) ----------------------

X_LABEL = "generation budget N (generations per prompt, log₂ scale)"
Y_LABEL = "accuracy (fraction of prompts correct)"


def _svg(figure: Any, salt: str) -> str:
    """The figure as an inline <svg> element (no XML prolog); `salt` keeps element ids unique per page."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    return plt


def _budget_axis(axis: Any, budgets: Sequence[int], title: str, xlabel: str = X_LABEL) -> None:
    axis.set_xscale("log", base=2)
    axis.set_xticks(list(budgets), [f"{b:g}" for b in budgets])
    axis.minorticks_off()
    axis.set(xlabel=xlabel, ylabel=Y_LABEL, title=title, ylim=(-0.03, 1.05))
    axis.grid(alpha=0.3)


def accuracy_figure(cells: Sequence[Cell]) -> str:
    """Accuracy against budget per series (all prompts), 95% Wilson intervals, compute-optimal in black."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(9, 5))
    everything = [c for c in cells if c.group == "all"]
    series = sorted({c.series for c in everything}, key=lambda s: (is_optimal(s), s))
    for index, name in enumerate(series):
        points = sorted((c for c in everything if c.series == name), key=lambda c: c.budget)
        # Equal accuracies would hide one line under another: each series is nudged along x a little.
        spread = 0.3 * (index / (len(series) - 2) - 0.5) if len(series) > 2 else 0.06 * index
        nudge = 1.0 if is_optimal(name) else 2**spread
        low, high = zip(*(c.interval() for c in points), strict=True)
        accuracy = [c.accuracy for c in points]
        optimal = is_optimal(name)
        dark = optimal and sum(map(is_optimal, series)) == 1  # one policy in black; several in colours
        axis.errorbar(
            [c.budget * nudge for c in points],
            accuracy,
            yerr=[
                [a - lo for a, lo in zip(accuracy, low, strict=True)],
                [hi - a for a, hi in zip(accuracy, high, strict=True)],
            ],
            marker="o",
            capsize=3,
            linewidth=2.5 if optimal else 1.5,
            color="black" if dark else None,
            label=f"{name} (95% Wilson interval)" if optimal else name,
            zorder=3 if optimal else 2,
        )
    _budget_axis(axis, sorted({c.budget for c in everything}), "accuracy against test-time compute, all prompts")
    axis.legend(
        fontsize="small",
        title="strategy (bars: 95% Wilson intervals;\npoints nudged sideways to stay apart)",
        title_fontsize="small",
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
    )
    return _svg(figure, "accuracy")


def groups_figure(cells: Sequence[Cell], field: str) -> str:
    """Per series, accuracy against budget with one line per difficulty group (paper Fig. 3/7 right);
    `field` names the groups ("difficulty bin")."""
    plt = _pyplot()
    grouped = [c for c in cells if c.group != "all"]
    series = sorted({c.series for c in grouped}, key=lambda s: (is_optimal(s), s))
    groups = sorted({c.group for c in grouped}, key=_group_order)
    columns = min(3, len(series))
    rows = -(-len(series) // columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(4.6 * columns + 1.6, 3.8 * rows), squeeze=False, layout="constrained"
    )
    colours = plt.get_cmap("viridis")
    handles: dict[str, Any] = {}
    for axis, name in zip(axes.flat, series, strict=False):
        for index, group in enumerate(groups):
            points = sorted((c for c in grouped if c.series == name and c.group == group), key=lambda c: c.budget)
            if points:
                (handles[group],) = axis.plot(
                    [c.budget for c in points],
                    [c.accuracy for c in points],
                    marker="o",
                    color=colours(index / max(1, len(groups) - 1)),
                    label=f"{field} {group}",
                )
        budgets = sorted({c.budget for c in grouped if c.series == name})
        _budget_axis(axis, budgets, name, xlabel="generation budget N (log₂ scale)")
    for axis in list(axes.flat)[len(series) :]:
        axis.set_visible(False)
    ordered = [handles[g] for g in groups if g in handles]
    figure.legend(
        ordered,
        [h.get_label() for h in ordered],
        loc="outside right upper",
        fontsize="small",
        title=f"{field}\n(1 = easiest)",
        title_fontsize="small",
    )
    figure.suptitle(f"accuracy by {field} and budget, one panel per strategy", fontsize="medium")
    return _svg(figure, "groups")


def sweep_figure(sweep: Sequence[Cell]) -> str:
    """Revisions: accuracy against the sequential/parallel ratio, one line per budget (paper Fig. 7 left)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(8, 4.5))
    points = [(c.budget, float(c.group.split("|")[0]), c) for c in sweep if c.group.endswith("|all")]
    ratios = sorted({r for _, r, _ in points})
    for budget in sorted({b for b, _, _ in points}):
        line = sorted(((r, c) for b, r, c in points if b == budget), key=lambda item: item[0])
        accuracy = [c.accuracy for _, c in line]
        low, high = zip(*(c.interval() for _, c in line), strict=True)
        axis.errorbar(
            [r for r, _ in line],
            accuracy,
            yerr=[
                [a - lo for a, lo in zip(accuracy, low, strict=True)],
                [hi - a for a, hi in zip(accuracy, high, strict=True)],
            ],
            marker="o",
            capsize=3,
            label=f"N = {budget}",
        )
    axis.set_xscale("log", base=2)
    axis.set_xticks(ratios, [f"{r:g}" for r in ratios])
    axis.minorticks_off()
    axis.set(
        xlabel="sequential/parallel ratio (chain length ÷ chains, log₂ scale)",
        ylabel=Y_LABEL,
        title="revisions: sequential against parallel at equal budget",
        ylim=(-0.03, 1.05),
    )
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small", title="budget (bars: 95% Wilson)", title_fontsize="small")
    return _svg(figure, "sweep")


def _group_order(group: str) -> tuple[int, float, str]:
    try:
        return (0, float(group), group)
    except ValueError:
        return (1, 0.0, group)


def efficiency(cells: Sequence[Cell]) -> list[dict[str, Any]]:
    """For each compute-optimal series and each budget B of best-of-N weighted: the smallest
    compute-optimal budget whose accuracy reaches best-of-N's at B, and B over it (the paper's ≈4×;
    Snell et al. 2024, §5.3)."""
    overall = {(c.series, c.budget): c for c in cells if c.group == "all"}
    baseline = sorted(b for s, b in overall if s == "best_of_n_weighted")
    rows = []
    for policy in sorted({s for s, _ in overall if is_optimal(s)}):
        optimal = sorted(b for s, b in overall if s == policy)
        for budget in baseline:
            target = overall[("best_of_n_weighted", budget)].accuracy
            matching = next((b for b in optimal if overall[(policy, b)].accuracy >= target), None)
            rows.append(
                {
                    "policy": policy,
                    "budget": budget,
                    "accuracy": target,
                    "matching_budget": matching,
                    "ratio": budget / matching if matching else None,
                }
            )
    return rows


# --- the page -------------------------------------------------------------------------------------

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1250px; padding: 0 1em;
  color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .6em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; vertical-align: top; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
figure { margin: 1em 0; } figure svg { max-width: 100%; height: auto; }
figcaption, .note { color: #555; font-size: 13px; }
#search { font-size: 15px; padding: 4px 8px; width: 28em; }
#matches a { margin-right: .8em; }
.solve { border: 1px solid #ccc; border-radius: 4px; margin: 1em 0; padding: .5em 1em; }
ul.tree { list-style: none; padding-left: 1.2em; border-left: 1px dotted #bbb; margin: 0; }
ul.tree li { margin: 2px 0; font-size: 13px; } .k { font-family: monospace; color: #666; }
.ans { color: #0a6a8a; font-weight: 600; } .vote { color: #8a2a8a; } .star { color: #b8860b; font-weight: 700; }
.ok { color: #1a7f37; } .bad { color: #c0392b; } code { white-space: pre-wrap; color: #333; }
tr.won td { font-weight: 700; background: #fff8dc; } #js-errors { color: #c0392b; }
"""

CATCH_ERRORS = """
(function () {
  function note(message) {
    var box = document.getElementById("js-errors");
    if (!box) { window.__earlyErrors = (window.__earlyErrors || []).concat([message]); return; }
    box.hidden = false;
    box.textContent += message + "\\n";
    box.dataset.count = String(Number(box.dataset.count || 0) + 1);
  }
  window.__noteError = note;
  window.addEventListener("error", function (e) { note("error: " + e.message); });
  window.addEventListener("unhandledrejection", function (e) { note("unhandled rejection: " + e.reason); });
  var original = console.error;
  console.error = function () {
    note("console.error: " + Array.prototype.join.call(arguments, " "));
    original.apply(console, arguments);
  };
})();
"""

SCRIPT = """
(function () {
  (window.__earlyErrors || []).forEach(window.__noteError);
  var PROMPTS = JSON.parse(document.getElementById("prompt-data").textContent);
  var ids = Object.keys(PROMPTS);
  var box = document.getElementById("search"), matches = document.getElementById("matches");
  var pane = document.getElementById("prompt");

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function num(value, digits) {
    if (value === null || value === undefined) return "—";
    return Number.isInteger(value) ? String(value) : value.toFixed(digits);
  }
  function resolve(id) {
    if (PROMPTS[id]) return id;
    return ids.find(function (k) { return PROMPTS[k].key === id; }) || null;
  }
  function filter() {
    var q = box.value.trim().toLowerCase();
    var found = ids.filter(function (k) {
      return !q || k.toLowerCase().indexOf(q) >= 0 || PROMPTS[k].question.toLowerCase().indexOf(q) >= 0;
    });
    matches.textContent = "";
    matches.appendChild(el("span", "note", found.length + " of " + ids.length + " prompts match: "));
    found.slice(0, 60).forEach(function (k) {
      var link = el("a", null, PROMPTS[k].key);
      link.href = "#prompt=" + encodeURIComponent(k);
      link.title = PROMPTS[k].question;
      matches.appendChild(link);
    });
  }
  function node(n, chosen) {
    var li = el("li");
    li.dataset.key = n.k;
    li.appendChild(el("span", "k", n.k + " r" + n.r + " " + n.t));
    li.appendChild(document.createTextNode(" s=" + num(n.s, 3)));
    if (n.ss && n.ss.length > 1) li.appendChild(el("span", "note", " steps [" + n.ss.join(", ") + "]"));
    if (n.a !== null) li.appendChild(el("span", "ans", " → " + n.a));
    if (n.vt !== undefined) li.appendChild(el("span", "vote", " (vote " + num(n.vt, 4) + ")"));
    if (n.k === chosen) li.appendChild(el("span", "star", " ★ chosen"));
    li.appendChild(document.createTextNode("  "));
    li.appendChild(el("code", null, n.x));
    if (n.c.length) {
      var ul = el("ul", "tree");
      n.c.forEach(function (child) { ul.appendChild(node(child, chosen)); });
      li.appendChild(ul);
    }
    return li;
  }
  function voteTable(vote) {
    var table = el("table", "vote-table");
    var head = el("tr");
    ["answer", "total", "candidates", "score sum", "best score"].forEach(function (h, i) {
      head.appendChild(el("th", i === 0 ? "l" : null, h));
    });
    table.appendChild(head);
    vote.rows.forEach(function (row) {
      var tr = el("tr", row[5] ? "won" : null);
      tr.dataset.answer = row[0];
      tr.dataset.total = String(row[1]);
      tr.appendChild(el("td", "l", (row[5] ? "★ " : "") + row[0]));
      tr.appendChild(el("td", null, num(row[1], 4)));
      tr.appendChild(el("td", null, row[2]));
      tr.appendChild(el("td", null, num(row[3], 4)));
      tr.appendChild(el("td", null, num(row[4], 4)));
      table.appendChild(tr);
    });
    return table;
  }
  function rounds(tree) {
    var count = {};
    (function walk(nodes) { nodes.forEach(function (n) { count[n.r] = (count[n.r] || 0) + 1; walk(n.c); }); })(tree);
    return Object.keys(count).sort(function (a, b) { return a - b; }).map(function (r) {
      return "r" + r + " " + count[r];
    }).join(" · ");
  }
  function totals(vote, tree) {
    if (!vote) return;
    var byAnswer = {};
    vote.rows.forEach(function (row) { byAnswer[row[0]] = row[1]; });
    (function walk(nodes) {
      nodes.forEach(function (n) { if (n.v !== null && n.v in byAnswer) n.vt = byAnswer[n.v]; walk(n.c); });
    })(tree);
  }
  function show(id) {
    pane.textContent = "";
    var p = PROMPTS[id];
    if (!p) { pane.appendChild(el("p", "bad", "no prompt " + id + " in this report")); return; }
    pane.dataset.prompt = id;
    pane.appendChild(el("h3", null, p.dataset + " / " + p.key + (p.group ? " · difficulty " + p.group : "")));
    pane.appendChild(el("p", null, p.question));
    pane.appendChild(el("p", "note", "reference answer: " + (p.reference === null ? "none" : p.reference)));
    p.solves.forEach(function (s) {
      var box = el("div", "solve");
      box.dataset.run = s.run;
      var verdict = s.correct === true ? "correct" : s.correct === false ? "wrong" : "ungraded";
      var title = el("h4", null, s.series + " · N=" + s.budget + " · run " + s.run + " · answer ");
      title.appendChild(el("span", "ans", s.answer === null ? "none" : s.answer));
      title.appendChild(el("span", s.correct ? "ok" : "bad", " (" + verdict + ")"));
      box.appendChild(title);
      box.appendChild(el("p", "note", s.strategy + " · " + s.status + " · " + num(s.generations, 1) + " generations, " +
        s.tokens + " tokens · candidates per round: " + (rounds(s.tree) || "none")));
      if (s.vote) {
        var winner = s.vote.rows.find(function (row) { return row[5]; });
        var why = winner ? winner[0] + " has the highest total, " + num(winner[1], 4) + " from " + winner[2] +
          " candidate(s)" : "no winner";
        if (s.vote.tie.length) why += "; tie with " + s.vote.tie.slice(1).join(", ") + ", " + s.vote.tie_rule;
        var method = (s.vote.method || "vote") + (s.vote.totals ? ", totals are " + s.vote.totals : "");
        box.appendChild(el("p", "why", "why it won (" + method + "): " + why));
        box.appendChild(voteTable(s.vote));
      }
      totals(s.vote, s.tree);
      var tree = el("ul", "tree");
      s.tree.forEach(function (n) { tree.appendChild(node(n, s.chosen)); });
      box.appendChild(tree);
      if (s.hidden) {
        box.appendChild(el("p", "note", s.hidden + " more candidates: ttc trace " + s.run + " --problem " + p.key));
      }
      var steps = el("details");
      steps.appendChild(el("summary", null, s.steps.length + " node executions"));
      steps.appendChild(el("code", null, s.steps.map(function (st) {
        return "#" + st[0] + " " + st[1] + " round " + st[2] + " · " + st[3] + " generations · " + st[4] + " tokens";
      }).join("\\n")));
      box.appendChild(steps);
      pane.appendChild(box);
    });
  }
  function fromHash() {  // #prompt=KEY shows a prompt, #search=TEXT fills the search box
    var m = location.hash.match(/^#(prompt|search)=(.*)$/);
    if (!m) return;
    var value = decodeURIComponent(m[2]);
    var id = m[1] === "prompt" ? resolve(value) : null;
    box.value = id ? PROMPTS[id].key : value;
    filter();
    if (m[1] === "prompt") show(id || value);
  }
  box.addEventListener("input", filter);
  window.addEventListener("hashchange", fromHash);
  filter();
  fromHash();
  document.body.dataset.ready = "yes";
})();
"""


def _e(value: Any) -> str:
    import html

    return html.escape("" if value is None else str(value), quote=True)


def _table(
    head: Sequence[str],
    rows: Sequence[Sequence[str]],
    left: int = 1,
    attrs: str = "",
    row_attrs: Sequence[str] | None = None,
) -> str:
    """An HTML table; `rows` hold cell HTML (already escaped), the first `left` columns left-aligned;
    `row_attrs` are each row's attributes (the numbers behind it, for scripts and tests)."""
    th = "".join(f'<th class="{"l" if i < left else ""}">{_e(h)}</th>' for i, h in enumerate(head))
    body = "".join(
        f"<tr {extra}>"
        + "".join(f'<td class="{"l" if i < left else ""}">{cell}</td>' for i, cell in enumerate(row))
        + "</tr>"
        for row, extra in zip(rows, row_attrs or [""] * len(rows), strict=True)
    )
    return f"<table {attrs}><tr>{th}</tr>{body}</table>"


def _acc(cell: Cell) -> str:
    low, high = cell.interval()
    return (
        f'<span data-series="{_e(cell.series)}" data-budget="{cell.budget}" data-group="{_e(cell.group)}" '
        f'data-correct="{cell.correct}" data-graded="{cell.graded}" data-accuracy="{cell.accuracy:.6f}">'
        f'{cell.accuracy:.3f}</span> <span class="note">[{low:.2f}, {high:.2f}]</span>'
    )


def build_report(session: Session, runs: Sequence[queries.RunInfo]) -> str:
    """The report of `runs` (from `resolve_runs`) as one self-contained HTML page."""
    from datetime import UTC, datetime

    data = collect(session, runs)
    cells: list[Cell] = data["cells"]
    if not cells:
        raise ReportError("the runs hold no graded solves to report")
    field = data["group_field"]
    overall = [c for c in cells if c.group == "all"]
    sections: list[str] = []

    run_rows = [
        [
            _e(r.name or "—"),
            f"<code>{_e(r.id)}</code>",
            _e(r.config.get("dataset", "—")),
            _e(", ".join(sorted(data["series"].get(r.id, ())))),
            _e(r.config.get("proposer", "—")),
            _e(r.config.get("verifier", "—")),
            _e(r.status),
            f"{r.created_at:%Y-%m-%d %H:%M} UTC",
        ]
        for r in runs
    ]
    sections.append(
        '<h2 id="runs">Runs</h2>'
        + _table(["run", "id", "dataset", "plan", "proposer", "verifier", "status", "created"], run_rows, left=8)
    )

    has_optimal = any(is_optimal(c.series) for c in overall)
    caption = (
        "Each point: the fraction of graded prompts answered correctly at that budget, with its 95% Wilson "
        "interval. Compute-optimal (thick lines, one per policy file): the plan a fitted policy chose per prompt "
        "from its difficulty bin (Snell et al. 2024, §5.3), without the cost of estimating the difficulty (see the "
        "spend table)."
        if has_optimal
        else "Each point: the fraction of graded prompts answered correctly at that budget, with its 95% Wilson "
        "interval. No compute-optimal run is among these runs: `ttc evaluate --policy policy.json --budget N` "
        "makes one, and it is drawn over these lines."
    )
    accuracy_rows = [
        [_e(c.series), str(c.budget), str(c.graded), str(c.correct), _acc(c)]
        for c in sorted(overall, key=lambda c: (c.series, c.budget))
    ]
    sections.append(
        '<h2 id="accuracy">Accuracy against budget</h2>'
        f'<figure id="fig-accuracy">{accuracy_figure(cells)}<figcaption>{_e(caption)}</figcaption></figure>'
        + _table(
            ["strategy", "budget N", "graded prompts", "correct", "accuracy [95% CI]"],
            accuracy_rows,
            attrs='id="accuracy-table"',
        )
    )

    gains = efficiency(cells)
    if gains and has_optimal:
        rows = [
            [
                _e(g["policy"]),
                str(g["budget"]),
                f"{g['accuracy']:.3f}",
                "not reached" if g["matching_budget"] is None else str(g["matching_budget"]),
                "—" if g["ratio"] is None else f"{g['ratio']:g}×",
            ]
            for g in gains
        ]
        sections.append(
            '<h2 id="efficiency">Efficiency of compute-optimal over best-of-N weighted</h2>'
            + _table(
                ["policy", "best-of-N budget B", "its accuracy", "compute-optimal budget matching it", "B ÷ that"],
                rows,
                attrs='id="efficiency-table"',
            )
            + '<p class="note">The paper: about 4× fewer generations (Snell et al. 2024, §5.3); without the '
            "difficulty estimate's cost.</p>"
        )

    grouped = [c for c in cells if c.group != "all"]
    if field and grouped:
        named = BIN_FIELDS[field]
        budgets = sorted({c.budget for c in grouped})
        groups = sorted({c.group for c in grouped}, key=_group_order)
        by = {(c.series, c.group, c.budget): c for c in grouped}
        tables = []
        for name in sorted({c.series for c in grouped}):
            rows = [
                [_e(f"{named} {g}"), *(_acc(by[(name, g, b)]) if (name, g, b) in by else "—" for b in budgets)]
                for g in groups
            ]
            tables.append(f"<h3>{_e(name)}</h3>" + _table([named, *(f"N={b}" for b in budgets)], rows))
        sections.append(
            f'<h2 id="difficulty">Accuracy by {_e(named)} and budget</h2>'
            f'<figure id="fig-difficulty">{groups_figure(cells, named)}<figcaption>Difficulty groups by the '
            f"problems' <code>{_e(field)}</code> (1 = easiest); the paper bins by the proposer's pass@1 "
            "(Snell et al. 2024, §3.2).</figcaption></figure>" + "".join(tables)
        )
    else:
        sections.append(
            '<h2 id="difficulty">Accuracy by difficulty and budget</h2><p class="note">The problems carry no '
            "difficulty (no bin, level or difficulty in their metadata).</p>"
        )

    sweep: list[Cell] = data["sweep"]
    if sweep:
        rows = [
            [str(c.budget), _e(c.group.split("|")[0]), str(c.graded), _acc(c)]
            for c in sweep
            if c.group.endswith("|all")
        ]
        sections.append(
            '<h2 id="revisions">Revisions: sequential/parallel ratio</h2>'
            f'<figure id="fig-revisions">{sweep_figure(sweep)}<figcaption>Chain length ÷ chains at equal budget '
            "(Snell et al. 2024, §6.2).</figcaption></figure>"
            + _table(["budget N", "ratio", "graded prompts", "accuracy [95% CI]"], rows, attrs='id="sweep-table"')
        )

    sections.append(
        '<h2 id="larger-model">Test-time compute against a larger model</h2><p class="note">At equal pretraining '
        "plus inference FLOPs, a model M times smaller may spend M + 3(M − 1)/R generations per prompt where the "
        "larger one makes one, R being inference over pretraining tokens (Snell et al. 2024, §7). Comparing "
        "needs the larger model's run on the same prompts; the testbed ships no larger proposer. With one "
        "(any URI): <code>ttc evaluate -d DATASET -s majority -n 1 --proposer LARGER_URI --run-name large</code>, "
        "then <code>ttc flops --small-params P --large-params P --pretrain-tokens D --inference-ratio "
        "0.16,0.79,22 --run RUN --large-run large</code> says, per difficulty group and R, which one wins "
        "(docs/report.md).</p>"
    )

    spend: list[Spend] = data["spend"]
    spend_rows = [
        [
            _e(s.run),
            _e(s.series),
            _e(s.budget),
            str(s.prompts),
            str(s.done),
            str(s.failed),
            f"{s.correct}/{s.graded}",
            f"{s.generations:,.0f}",
            f"{s.tokens:,}",
            f"{s.flops:.3g}",
            f"{s.seconds:,.1f}",
            f"{s.generations / s.prompts:.1f}" if s.prompts else "—",
        ]
        for s in spend
    ]
    failures = data["failures"]
    failure_html = (
        "<details><summary>"
        + f"{len(failures)} solve(s) not done</summary>"
        + _table(
            ["run", "problem", "status", "error"],
            [[_e(f["run"]), _e(f["key"]), _e(f["status"]), _e(f["error"][:300])] for f in failures],
            left=4,
        )
        + "</details>"
        if failures
        else '<p class="note">No failed solves.</p>'
    )
    sections.append(
        '<h2 id="spend">Spend</h2>'
        + _table(
            [
                "run",
                "strategy",
                "budget N",
                "prompts",
                "done",
                "failed",
                "correct/graded",
                "generations",
                "tokens",
                "FLOPs",
                "seconds",
                "generations / prompt",
            ],
            spend_rows,
            left=3,
            attrs='id="spend-table"',
            row_attrs=[
                f'data-run="{_e(s.run)}" data-failed="{s.failed}" data-generations="{s.generations!r}" '
                f'data-tokens="{s.tokens}" data-flops="{s.flops!r}" data-seconds="{s.seconds!r}"'
                for s in spend
            ],
        )
        + '<p class="note">Tokens count every internal call (proposer, verifier, reviser); FLOPs are 2 × '
        "parameters × tokens; seconds are each solve's wall time, summed.</p>" + failure_html
    )

    sections.append(
        '<h2 id="prompts">Prompts: search trees and why each answer won</h2>'
        '<p><input id="search" type="search" placeholder="search prompts by key or text" autocomplete="off"></p>'
        '<p id="matches"></p><div id="prompt"></div>'
        '<p class="note">Open a prompt directly with <code>report.html#prompt=KEY</code> (or search with '
        "<code>#search=TEXT</code>). Each solve shows its "
        "final vote (answers by total, the winner starred, how a tie was broken) and its tree of candidates: "
        "round, kind, PRM score (and per-step scores), answer, and what the answer polled in the vote.</p>"
    )

    payload = json.dumps(data["prompts"], ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    generated = datetime.now(UTC)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>ttc report: {_e(', '.join(r.name or r.id for r in runs))[:200]}</title>"
        f"<style>{STYLE}</style><script>{CATCH_ERRORS}</script></head><body>"
        "<h1>Test-time compute report</h1>"
        f'<p class="note">{len(runs)} run(s), {len(data["prompts"])} prompts, built from the database at '
        f"{generated:%Y-%m-%d %H:%M} UTC by <code>ttc report</code> (Snell et al. 2024).</p>"
        + "".join(sections)
        + '<pre id="js-errors" data-count="0" hidden></pre>'
        + f'<script type="application/json" id="prompt-data">{payload}</script>'
        + f"<script>{SCRIPT}</script></body></html>"
    )
