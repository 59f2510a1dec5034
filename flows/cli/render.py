"""Rich renderings of what the database holds: a solve's steps and its candidate tree."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from db.queries import SolveTrace, TreeNode


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
        note = step.error or _clip(", ".join(f"{k}={v}" for k, v in step.detail.items() if k != "weights"), 60)
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


def candidate_tree(trace: SolveTrace, roots: list[TreeNode], chosen: str | None) -> Tree:
    stats = search_statistics(trace)
    verdict = {True: "[green]correct[/]", False: "[red]wrong[/]", None: "[dim]ungraded[/]"}[trace.correct]
    tree = Tree(
        f"[bold]{trace.strategy}[/] N={trace.budget} · answer [bold]{trace.answer}[/] {verdict} · "
        f"{trace.generations:g} generations, {trace.tokens} tokens, {trace.flops:.3g} FLOPs, {trace.seconds:.2f}s"
    )

    def add(parent: Tree, node: TreeNode) -> None:
        score = f"{node.score:.3f}" if node.score is not None else "—"
        mark = " [bold yellow]★ chosen[/]" if node.key == chosen else ""
        answer = f" [cyan]→ {node.answer}[/]" if node.answer is not None else ""
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


def render_solve(trace: SolveTrace, roots: list[TreeNode]) -> Group:
    header = Text.assemble(
        ("problem ", "bold"),
        f"{trace.problem.dataset}/{trace.problem.key}: ",
        _clip(trace.problem.question, 100),
    )
    return Group(header, steps_table(trace), candidate_tree(trace, roots, trace.detail.get("chosen")))
