"""Rich renderings of what the database holds: a solve's steps, its candidate tree and its final vote."""

from __future__ import annotations

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from db.queries import SolveTrace, TreeNode
from flows.pipelines.report import TOTALS, VoteTally, tally_votes


def _clip(text: str, width: int = 70) -> str:
    flat = " ⏎ ".join(line for line in text.splitlines() if line.strip())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def steps_table(trace: SolveTrace) -> Table:
    table = Table(title="node executions", title_justify="left", show_edge=False)
    for column in ("#", "node", "round", "seconds", "gens", "tokens", "new", "detail / error"):
        table.add_column(
            column,
            justify="right" if column in {"#", "round", "seconds", "gens", "tokens", "new"} else "left",
        )
    created: dict[int, int] = {}
    for candidate in trace.candidates:
        created[candidate.step_id] = created.get(candidate.step_id, 0) + 1
    for step in trace.steps:
        # The select step's vote table is shown whole, sorted, under the tree.
        hidden = {"weights", "votes"} if "method" in step.detail else {"weights"}
        note = step.error or _clip(", ".join(f"{k}={v}" for k, v in step.detail.items() if k not in hidden), 60)
        table.add_row(
            str(step.seq),
            step.node,
            str(step.round),
            f"{step.seconds:.3f}",
            f"{step.generations:g}",
            str(step.tokens),
            str(created.get(step.id, 0)),
            Text(note, style="red" if step.error else ""),
        )
    return table


def search_statistics(trace: SolveTrace) -> dict[str, tuple[int, float]]:
    """Visit count and mean value per candidate key, as tree search (mcts) last backed them up: the
    latest `visits`/`values` entry of each key over the steps' details, in execution order."""
    stats: dict[str, tuple[int, float]] = {}
    for step in trace.steps:
        visits, values = step.detail.get("visits"), step.detail.get("values")
        if isinstance(visits, dict) and isinstance(values, dict):
            stats |= {key: (int(visits[key]), float(values[key])) for key in visits if key in values}
    return stats


def candidate_tree(
    trace: SolveTrace, roots: list[TreeNode], chosen: str | None, tally: VoteTally | None = None
) -> Tree:
    stats = search_statistics(trace)
    totals = {row.answer: row for row in tally.rows} if tally else {}
    verdict = {True: "[green]correct[/]", False: "[red]wrong[/]", None: "[dim]ungraded[/]"}[trace.correct]
    tree = Tree(
        f"[bold]{trace.strategy}[/] N={trace.budget} · answer [bold]{trace.answer}[/] {verdict} · "
        f"{trace.generations:g} generations, {trace.tokens} tokens, {trace.flops:.3g} FLOPs, {trace.seconds:.2f}s"
    )

    def add(parent: Tree, node: TreeNode) -> None:
        score = f"{node.score:.3f}" if node.score is not None else "—"
        mark = " [bold yellow]★ chosen[/]" if node.key == chosen else ""
        answer = f" [cyan]→ {escape(node.answer)}[/]" if node.answer is not None else ""
        counted = tally.answer_of.get(node.key) if tally else None
        if counted is not None:  # beside each leaf, what its answer polled in the final vote
            answer += f" [magenta](vote {_amount(totals[counted].total)})[/]"
        visited = f" n={stats[node.key][0]} v={stats[node.key][1]:.3f}" if node.key in stats else ""
        style = "dim" if node.kind == "rollout" else ""
        label = Text.from_markup(
            f"[{style or 'default'}]{node.key} r{node.round} {node.kind} s={score}{visited}[/]{answer}{mark}  "
        )
        label.append(_clip(node.text), style="dim" if node.kind == "rollout" else "")
        branch = parent.add(label)
        for child in node.children:
            add(branch, child)

    for root in roots:
        add(tree, root)
    return tree


def _amount(value: float) -> str:
    return f"{value:g}" if float(value).is_integer() else f"{value:.4f}"


def _line(*parts: str | tuple[str, str]) -> Text:
    # Never wrapped nor cut: an answer is shown whole, however wide the terminal.
    text = Text.assemble(*parts)
    text.no_wrap, text.overflow = True, "ignore"
    return text


def vote_lines(tally: VoteTally) -> list[Text]:
    """The final vote, highest total first: each answer with its total and the finished candidates
    behind it (count, sum and best of their scores), the winner's share, and how a tie was broken."""
    scored = any(row.score_sum is not None for row in tally.rows)
    means = f": totals are {TOTALS[tally.method]}" if tally.method in TOTALS else ""
    plural = "s" if len(tally.rows) != 1 else ""
    lines = [
        _line(
            ("final vote", "bold"),
            f" ({tally.method or 'unknown method'}{means}; {len(tally.rows)} answer{plural}, highest total first)",
        )
    ]
    for row in tally.rows:
        behind = f"{row.candidates} candidate{'s' if row.candidates != 1 else ''}"
        if scored and row.score_sum is not None:
            behind += f", score sum {row.score_sum:.4f}, best {row.best_score:.4f}"
        lines.append(
            _line(
                ("  ★ " if row.won else "    ", "bold yellow"),
                (f"{_amount(row.total):>10}", "bold" if row.won else ""),
                f"  {behind:<48}  ",
                (row.answer, "bold cyan" if row.won else "cyan"),
            )
        )
    winner = tally.winner
    if winner is not None:
        whole = tally.grand_total
        share = f" ({winner.total / whole:.0%} of {_amount(whole)})" if whole else ""
        lines.append(
            _line(
                ("winner ", "bold"),
                (winner.answer, "bold cyan"),
                f" with total {_amount(winner.total)}{share}",
                f"; chosen candidate {tally.chosen}" if tally.chosen else "",
            )
        )
    if winner is not None and winner.best_score is not None:
        better = [r for r in tally.rows if r.best_score is not None and r.best_score > winner.best_score]
        if better and tally.method != "best_of_n":
            lines.append(
                _line(
                    ("note ", "bold"),
                    f"the winner's best score {winner.best_score:.4f} is below {better[0].answer}'s "
                    f"{better[0].best_score:.4f}: it won on its {winner.candidates} candidates' total",
                )
            )
    if tally.tie:
        others = ", ".join(tally.tie[1:])
        at = _amount(winner.total) if winner else "?"
        lines.append(_line(("tie ", "bold red"), f"at {at} with {others}: {tally.tie_rule}"))
    return lines


def render_solve(trace: SolveTrace, roots: list[TreeNode]) -> Group:
    header = Text.assemble(
        ("problem ", "bold"),
        f"{trace.problem.dataset}/{trace.problem.key}: ",
        _clip(trace.problem.question, 100),
    )
    tally = tally_votes(trace)
    tree = candidate_tree(trace, roots, trace.detail.get("chosen"), tally)
    return Group(header, steps_table(trace), tree, *(vote_lines(tally) if tally else []))
