"""The questions users ask of the database, as named functions returning plain records."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from db.models import Candidate, Policy, Problem, Run, Score, Solve, Step

T = TypeVar("T")


@dataclass(frozen=True)
class RunInfo:
    id: str
    name: str | None
    created_at: datetime
    status: str
    config: dict[str, Any]
    solves: int  # all solves of the run, whatever their status
    done: int
    failed: int


@dataclass(frozen=True)
class ProblemInfo:
    id: int
    dataset: str
    key: str
    question: str
    reference: str | None
    meta: dict[str, Any]


@dataclass(frozen=True)
class StepInfo:
    id: int
    seq: int
    node: str
    round: int
    started_at: datetime
    seconds: float
    generations: float
    tokens: int
    flops: float
    detail: dict[str, Any]
    error: str | None


@dataclass(frozen=True)
class CandidateInfo:
    id: int
    key: str
    parent_key: str | None
    step_id: int
    round: int
    depth: int
    text: str
    kind: str
    lineage: int | None
    finished: bool
    answer: str | None
    logprob: float | None
    tokens: int


@dataclass(frozen=True)
class ScoreInfo:
    id: int
    candidate_key: str
    step_id: int
    step_scores: list[float]
    value: float
    aggregation: str
    verifier: str
    truncated: bool


@dataclass(frozen=True)
class SolveTrace:
    """Everything recorded about one solve: steps in execution order, candidates and scores by id."""

    id: int
    run_id: str
    problem: ProblemInfo
    strategy: str
    settings: dict[str, Any]
    budget: int
    status: str
    answer: str | None
    correct: bool | None
    generations: float
    tokens: int
    flops: float
    seconds: float
    started_at: datetime
    finished_at: datetime | None
    error: str | None
    detail: dict[str, Any]
    steps: list[StepInfo]
    candidates: list[CandidateInfo]
    scores: list[ScoreInfo]


@dataclass
class TreeNode:
    key: str
    round: int
    depth: int
    text: str
    kind: str
    finished: bool
    answer: str | None
    score: float | None  # the latest aggregated score, None if never scored
    step_scores: list[float] | None
    children: list[TreeNode] = field(default_factory=list)


@dataclass(frozen=True)
class AccuracyRow:
    strategy: str
    budget: int
    bin: Any  # solves.detail["bin"], else problems.meta["bin"], else None
    count: int  # finished solves
    graded: int  # finished solves with a known verdict
    correct: int
    accuracy: float | None  # correct / graded
    mean_generations: float
    mean_tokens: float
    mean_flops: float
    mean_seconds: float


@dataclass(frozen=True)
class FailedStep:
    solve_id: int
    dataset: str
    problem_key: str
    step_id: int
    seq: int
    node: str
    round: int
    started_at: datetime
    error: str


def runs(session: Session) -> list[RunInfo]:
    """Every run, newest first, with its solve counts."""
    return _run_infos(session, None)


def find_run(session: Session, name_or_id: str) -> RunInfo | None:
    """The run with this name, else with this id, else None."""
    by_name = _run_infos(session, Run.name == name_or_id)
    return by_name[0] if by_name else next(iter(_run_infos(session, Run.id == name_or_id)), None)


def trace_of(
    session: Session,
    run_id: str,
    problem_key: str | None = None,
    dataset: str | None = None,
    problem_ids: Sequence[int] | None = None,
) -> list[SolveTrace]:
    """The full traces of the run's solves, optionally only of one problem key and/or dataset, or
    of the problems with these ids."""
    query = select(Solve, Problem).join(Problem, Solve.problem_id == Problem.id).where(Solve.run_id == run_id)
    if problem_key is not None:
        query = query.where(Problem.key == problem_key)
    if dataset is not None:
        query = query.where(Problem.dataset == dataset)
    if problem_ids is not None:
        query = query.where(Solve.problem_id.in_(list(problem_ids)))
    pairs = session.execute(query.order_by(Solve.id)).all()
    solve_ids = [solve.id for solve, _ in pairs]
    if not solve_ids:
        return []

    steps: dict[int, list[StepInfo]] = defaultdict(list)
    for step in session.scalars(select(Step).where(Step.solve_id.in_(solve_ids)).order_by(Step.seq, Step.id)):
        steps[step.solve_id].append(_step_info(step))
    candidates: dict[int, list[CandidateInfo]] = defaultdict(list)
    keys: dict[int, str] = {}
    candidate_rows = session.scalars(
        select(Candidate).where(Candidate.solve_id.in_(solve_ids)).order_by(Candidate.id)
    ).all()
    for row in candidate_rows:
        keys[row.id] = row.key
    for row in candidate_rows:
        candidates[row.solve_id].append(_candidate_info(row, keys))
    scores: dict[int, list[ScoreInfo]] = defaultdict(list)
    score_rows = session.execute(
        select(Score, Candidate.solve_id)
        .join(Candidate, Score.candidate_id == Candidate.id)
        .where(Candidate.solve_id.in_(solve_ids))
        .order_by(Score.id)
    )
    for score, solve_id in score_rows:
        scores[solve_id].append(_score_info(score, keys))

    return [
        SolveTrace(
            id=solve.id,
            run_id=solve.run_id,
            problem=_problem_info(problem),
            strategy=solve.strategy,
            settings=solve.settings,
            budget=solve.budget,
            status=solve.status,
            answer=solve.answer,
            correct=solve.correct,
            generations=solve.generations,
            tokens=solve.tokens,
            flops=solve.flops,
            seconds=solve.seconds,
            started_at=solve.started_at,
            finished_at=solve.finished_at,
            error=solve.error,
            detail=solve.detail,
            steps=steps[solve.id],
            candidates=candidates[solve.id],
            scores=scores[solve.id],
        )
        for solve, problem in pairs
    ]


def candidate_tree(session: Session, solve_id: int) -> list[TreeNode]:
    """The solve's candidates as a forest: roots, each with its children in the order they were made."""
    rows = session.execute(
        select(
            Candidate.id,
            Candidate.parent_id,
            Candidate.key,
            Candidate.round,
            Candidate.depth,
            Candidate.text,
            Candidate.kind,
            Candidate.finished,
            Candidate.answer,
        )
        .where(Candidate.solve_id == solve_id)
        .order_by(Candidate.id)
    ).all()
    latest = _latest_scores(session, solve_id)
    nodes: dict[int, TreeNode] = {}
    roots: list[TreeNode] = []
    for row in rows:
        value, step_scores = latest.get(row.id, (None, None))
        node = TreeNode(
            key=row.key,
            round=row.round,
            depth=row.depth,
            text=row.text,
            kind=row.kind,
            finished=row.finished,
            answer=row.answer,
            score=value,
            step_scores=step_scores,
        )
        nodes[row.id] = node
        # Parents always have smaller ids: the recorder writes them first.
        (roots if row.parent_id is None else nodes[row.parent_id].children).append(node)
    return roots


def paths(session: Session, solve_id: int) -> dict[str, list[str]]:
    """For each candidate key of the solve, the texts from its root down to it: its full step list."""
    rows = session.execute(
        select(Candidate.id, Candidate.parent_id, Candidate.key, Candidate.text)
        .where(Candidate.solve_id == solve_id)
        .order_by(Candidate.id)
    ).all()
    by_id: dict[int, list[str]] = {}
    result: dict[str, list[str]] = {}
    for row in rows:
        path = [*by_id[row.parent_id], row.text] if row.parent_id is not None else [row.text]
        by_id[row.id] = path
        result[row.key] = path
    return result


def accuracy_by(session: Session, run_id: str) -> list[AccuracyRow]:
    """Accuracy and mean spend of the run's finished solves per (strategy, budget, difficulty bin).

    A solve's bin is `solves.detail["bin"]` (the bin its plan was chosen for), else the problem's
    `meta["bin"]`, else None."""
    rows = session.execute(
        select(
            Solve.strategy,
            Solve.budget,
            Solve.detail["bin"],
            Problem.meta["bin"],
            Solve.correct,
            Solve.generations,
            Solve.tokens,
            Solve.flops,
            Solve.seconds,
        )
        .join(Problem, Solve.problem_id == Problem.id)
        .where(Solve.run_id == run_id, Solve.status == "done")
    ).all()
    groups: dict[tuple[str, int, Any], list[Any]] = defaultdict(list)
    for strategy, budget, solve_bin, problem_bin, *rest in rows:
        groups[(strategy, budget, solve_bin if solve_bin is not None else problem_bin)].append(rest)
    result = []
    for (strategy, budget, bin_), members in groups.items():
        verdicts = [correct for correct, *_ in members if correct is not None]
        n = len(members)
        result.append(
            AccuracyRow(
                strategy=strategy,
                budget=budget,
                bin=bin_,
                count=n,
                graded=len(verdicts),
                correct=sum(verdicts),
                accuracy=sum(verdicts) / len(verdicts) if verdicts else None,
                mean_generations=sum(m[1] for m in members) / n,
                mean_tokens=sum(m[2] for m in members) / n,
                mean_flops=sum(m[3] for m in members) / n,
                mean_seconds=sum(m[4] for m in members) / n,
            )
        )
    return sorted(result, key=lambda r: (r.strategy, r.budget, r.bin is not None, str(r.bin)))


def failed_steps(session: Session, run_id: str) -> list[FailedStep]:
    """The run's node executions that recorded an error, by solve and order of execution."""
    rows = session.execute(
        select(Step, Problem.dataset, Problem.key)
        .join(Solve, Step.solve_id == Solve.id)
        .join(Problem, Solve.problem_id == Problem.id)
        .where(Solve.run_id == run_id, Step.error.is_not(None))
        .order_by(Step.solve_id, Step.seq, Step.id)
    ).all()
    return [
        FailedStep(
            solve_id=step.solve_id,
            dataset=dataset,
            problem_key=key,
            step_id=step.id,
            seq=step.seq,
            node=step.node,
            round=step.round,
            started_at=step.started_at,
            error=step.error or "",
        )
        for step, dataset, key in rows
    ]


def policy(session: Session, name_or_id: str) -> dict[str, Any] | None:
    """The content of the policy with this name, else with this id, else None."""
    content = session.scalar(select(Policy.content).where(Policy.name == name_or_id))
    if content is None and name_or_id.isdecimal() and name_or_id.isascii():
        content = session.scalar(select(Policy.content).where(Policy.id == int(name_or_id)))
    return content


def _run_infos(session: Session, where: Any) -> list[RunInfo]:
    counts = (
        select(
            Solve.run_id,
            func.count().label("solves"),
            func.sum(case((Solve.status == "done", 1), else_=0)).label("done"),
            func.sum(case((Solve.status == "failed", 1), else_=0)).label("failed"),
        )
        .group_by(Solve.run_id)
        .subquery()
    )
    query = select(Run, counts.c.solves, counts.c.done, counts.c.failed).outerjoin(counts, counts.c.run_id == Run.id)
    if where is not None:
        query = query.where(where)
    rows = session.execute(query.order_by(Run.created_at.desc(), Run.id)).all()
    return [
        RunInfo(
            id=run.id,
            name=run.name,
            created_at=run.created_at,
            status=run.status,
            config=run.config,
            solves=solves or 0,
            done=done or 0,
            failed=failed or 0,
        )
        for run, solves, done, failed in rows
    ]


def _latest_scores(session: Session, solve_id: int) -> dict[int, tuple[float, list[float]]]:
    rows = session.execute(
        select(Score.candidate_id, Score.value, Score.step_scores)
        .join(Candidate, Score.candidate_id == Candidate.id)
        .where(Candidate.solve_id == solve_id)
        .order_by(Score.id)
    )
    # Ordered by id, so each candidate's last row wins.
    return {candidate_id: (value, step_scores) for candidate_id, value, step_scores in rows}


def _problem_info(row: Problem) -> ProblemInfo:
    return ProblemInfo(row.id, row.dataset, row.key, row.question, row.reference, row.meta)


def _copied(cls: type[T], row: object, **computed: Any) -> T:
    """A `cls` dataclass holding the row's attributes of the same names, and the `computed` ones."""
    values = {f.name: computed[f.name] if f.name in computed else getattr(row, f.name) for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**values)


def _step_info(row: Step) -> StepInfo:
    return _copied(StepInfo, row)


def _candidate_info(row: Candidate, keys: dict[int, str]) -> CandidateInfo:
    return _copied(CandidateInfo, row, parent_key=keys[row.parent_id] if row.parent_id is not None else None)


def _score_info(row: Score, keys: dict[int, str]) -> ScoreInfo:
    return _copied(ScoreInfo, row, candidate_key=keys[row.candidate_id])


@dataclass(frozen=True)
class AnswerPool:
    """The answers one finished solve sampled, in sampling order, with their scores, and its spend."""

    samples: list[tuple[str | None, float | None]]
    reference: str | None
    generations: float
    tokens: int
    flops: float


def answer_pools(session: Session, run_id: str, problem_ids: Sequence[int] | None = None) -> dict[str, AnswerPool]:
    """Problem key -> the answer pool of its finished solve in `run_id` (a run of parallel-sampling
    solves: calibration pools, difficulty estimates), optionally only of the problems with these
    ids; a solve not done has no pool."""
    pools = {}
    for trace in trace_of(session, run_id, problem_ids=problem_ids):
        if trace.status != "done":
            continue
        scores = {s.candidate_key: s.value for s in sorted(trace.scores, key=lambda s: s.id)}
        answers = sorted((c for c in trace.candidates if c.kind == "answer"), key=lambda c: int(c.key.split(".")[1]))
        pools[trace.problem.key] = AnswerPool(
            [(c.answer, scores.get(c.key)) for c in answers],
            trace.problem.reference,
            trace.generations,
            trace.tokens,
            trace.flops,
        )
    return pools


@dataclass(frozen=True)
class SolveOutcome:
    """One solve of a run without its trace: the problem, the plan, the verdict and the spend."""

    solve_id: int
    problem_id: int
    problem_key: str
    dataset: str
    strategy: str
    settings: dict[str, Any]
    budget: int
    bin: Any  # solves.detail["bin"], else problems.meta["bin"], else None (as in `accuracy_by`)
    status: str
    answer: str | None
    correct: bool | None
    generations: float
    tokens: int
    flops: float
    seconds: float
    error: str | None
    meta: dict[str, Any] = field(default_factory=dict)  # the problem's, e.g. {"level": 5}


def solve_outcomes(session: Session, run_id: str) -> list[SolveOutcome]:
    """Every solve of the run, whatever its status, by problem key: one row each, no steps read."""
    rows = session.execute(
        select(Solve, Problem.key, Problem.dataset, Problem.meta)
        .join(Problem, Solve.problem_id == Problem.id)
        .where(Solve.run_id == run_id)
        .order_by(Problem.key, Solve.id)
    ).all()
    return [
        SolveOutcome(
            solve_id=solve.id,
            problem_id=solve.problem_id,
            problem_key=key,
            dataset=dataset,
            strategy=solve.strategy,
            settings=solve.settings,
            budget=solve.budget,
            bin=solve.detail.get("bin") if solve.detail.get("bin") is not None else (meta or {}).get("bin"),
            status=solve.status,
            answer=solve.answer,
            correct=solve.correct,
            generations=solve.generations,
            tokens=solve.tokens,
            flops=solve.flops,
            seconds=solve.seconds,
            error=solve.error,
            meta=meta or {},
        )
        for solve, key, dataset, meta in rows
    ]


def problem_ids(session: Session, problems: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """(dataset, key) -> problem id, for those of `problems` stored (unknown ones are left out)."""
    wanted = set(problems)
    datasets = {dataset for dataset, _ in wanted}
    rows = session.execute(select(Problem.dataset, Problem.key, Problem.id).where(Problem.dataset.in_(datasets)))
    return {(dataset, key): id_ for dataset, key, id_ in rows if (dataset, key) in wanted}
