"""The trace writer: plain records in, one transaction per node execution."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from db.models import Candidate, Policy, Problem, Run, Score, Solve, Step, utcnow

T = TypeVar("T")


@dataclass
class CandidateRecord:
    """A candidate proposed by a node; `parent_key` names a candidate of the same solve (or None)."""

    key: str
    parent_key: str | None
    round: int
    depth: int
    text: str
    kind: str  # step | answer | revision | rollout
    finished: bool
    answer: str | None
    chain: int | None = None
    logprob: float | None = None
    tokens: int = 0


@dataclass
class ScoreRecord:
    """A verifier's score of the candidate named `candidate_key` (of this step or an earlier one)."""

    candidate_key: str
    step_scores: list[float]
    value: float
    aggregation: str  # last | min | prod
    verifier: str
    truncated: bool = False


@dataclass
class StepRecord:
    """One node execution with what it proposed and scored."""

    seq: int
    node: str
    round: int
    started_at: datetime
    seconds: float
    generations: float = 0
    tokens: int = 0
    flops: float = 0
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    candidates: list[CandidateRecord] = field(default_factory=list)
    scores: list[ScoreRecord] = field(default_factory=list)


class Recorder:
    """Writes runs, problems and solve traces. Safe to share between threads."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        # Per solve, candidate key -> row id, so a step's parents and scores resolve without queries.
        self._keys: dict[int, dict[str, int]] = {}
        self._lock = threading.Lock()

    def open_run(self, name: str | None, config: dict[str, Any]) -> str:
        """A new run's id; when a run called `name` exists, that run's id instead (to resume it)."""
        if name is not None:
            existing = self._reopen(name)
            if existing is not None:
                return existing

        def insert(s: Session) -> str:
            run_id = uuid.uuid4().hex
            s.add(Run(id=run_id, name=name, config=config, status="running"))
            return run_id

        return _insert_or_get(insert, lambda: self._reopen(name) if name is not None else None, self._sessions)

    def close_run(self, run_id: str, status: str = "done") -> None:
        """Mark the run finished (or 'failed')."""
        with self._sessions.begin() as s:
            _require(s.execute(update(Run).where(Run.id == run_id).values(status=status)), "run", run_id)

    def problem(
        self,
        dataset: str,
        key: str,
        question: str,
        reference: str | None,
        meta: dict[str, Any] | None = None,
    ) -> int:
        """The id of problem (dataset, key), stored on first sight; concurrent callers get one row."""

        def find() -> int | None:
            with self._sessions() as s:
                return s.scalar(select(Problem.id).where(Problem.dataset == dataset, Problem.key == key))

        found = find()
        if found is not None:
            return found

        def insert(s: Session) -> int:
            row = Problem(dataset=dataset, key=key, question=question, reference=reference, meta=meta or {})
            s.add(row)
            s.flush()
            return row.id

        return _insert_or_get(insert, find, self._sessions)

    def finished_problems(self, run_id: str) -> set[int]:
        """Ids of the problems this run has solved to the end (to skip them on resume)."""
        with self._sessions() as s:
            rows = s.scalars(select(Solve.problem_id).where(Solve.run_id == run_id, Solve.status == "done"))
            return set(rows)

    def start_solve(self, run_id: str, problem_id: int, strategy: str, settings: dict[str, Any], budget: int) -> int:
        """The id of a fresh 'running' solve of the problem in the run. A solve left unfinished by an
        earlier attempt is emptied of its trace and restarted in place; a finished one is a ValueError."""

        def start(s: Session) -> int:
            solve = s.scalar(
                select(Solve).where(Solve.run_id == run_id, Solve.problem_id == problem_id).with_for_update()
            )
            if solve is None:
                solve = Solve(run_id=run_id, problem_id=problem_id, strategy=strategy, settings=settings, budget=budget)
                s.add(solve)
                s.flush()
                return solve.id
            if solve.status == "done":
                raise ValueError(f"problem {problem_id} is already solved in run {run_id} (solve {solve.id})")
            _delete_trace(s, solve.id)
            solve.strategy, solve.settings, solve.budget = strategy, settings, budget
            solve.status, solve.answer, solve.correct, solve.error = "running", None, None, None
            solve.generations, solve.tokens, solve.flops, solve.seconds = 0.0, 0, 0.0, 0.0
            solve.started_at, solve.finished_at, solve.detail = utcnow(), None, {}
            return solve.id

        try:
            with self._sessions.begin() as s:
                solve_id = start(s)
        except IntegrityError:
            # A concurrent caller inserted the solve first: restart that row instead.
            with self._sessions.begin() as s:
                solve_id = start(s)
        with self._lock:
            self._keys[solve_id] = {}
        return solve_id

    def record_step(self, solve_id: int, step: StepRecord) -> int:
        """Write one node execution, its candidates and its scores in one transaction; the step's id.

        Parent and score keys resolve to candidates of this solve, from earlier steps or this one.
        An unknown or duplicate key raises ValueError, and then nothing of the step is written."""
        try:
            known = self._known_keys(solve_id)
            layers = _resolve(step, known)
        except ValueError:
            # The cache may lag another writer of this solve: look once in the database, then refuse.
            known = self._known_keys(solve_id, reload=True)
            layers = _resolve(step, known)

        ids = dict(known)
        with self._sessions.begin() as s:
            row = Step(
                solve_id=solve_id,
                seq=step.seq,
                node=step.node,
                round=step.round,
                started_at=step.started_at,
                seconds=step.seconds,
                generations=step.generations,
                tokens=step.tokens,
                flops=step.flops,
                detail=step.detail,
                error=step.error,
            )
            s.add(row)
            s.flush()
            for layer in layers:
                rows = [_candidate_row(solve_id, row.id, c, ids) for c in layer]
                s.add_all(rows)
                s.flush()
                ids.update((r.key, r.id) for r in rows)
            s.add_all(
                Score(
                    candidate_id=ids[sc.candidate_key],
                    step_id=row.id,
                    step_scores=list(sc.step_scores),
                    value=sc.value,
                    aggregation=sc.aggregation,
                    verifier=sc.verifier,
                    truncated=sc.truncated,
                )
                for sc in step.scores
            )
            step_id = row.id
        with self._lock:
            self._keys[solve_id] = ids
        return step_id

    def finish_solve(
        self,
        solve_id: int,
        *,
        answer: str | None,
        correct: bool | None,
        generations: float,
        tokens: int,
        flops: float,
        seconds: float,
        detail: dict[str, Any],
    ) -> None:
        """Close the solve as 'done' with its answer, grade and spend."""
        values = dict(answer=answer, correct=correct, generations=generations, tokens=tokens, flops=flops)
        self._close(solve_id, status="done", seconds=seconds, detail=detail, **values)

    def fail_solve(self, solve_id: int, error: str) -> None:
        """Close the solve as 'failed'; a later start_solve of the same problem restarts it."""
        self._close(solve_id, status="failed", error=error)

    def save_policy(self, name: str, content: dict[str, Any]) -> int:
        """The id of the policy called `name`, stored with `content`; an existing one of that name has
        its content replaced (its id and created_at stay)."""

        def replace() -> int | None:
            with self._sessions.begin() as s:
                row = s.scalar(select(Policy).where(Policy.name == name).with_for_update())
                if row is None:
                    return None
                row.content = content
                return row.id

        found = replace()
        if found is not None:
            return found

        def insert(s: Session) -> int:
            row = Policy(name=name, content=content)
            s.add(row)
            s.flush()
            return row.id

        # A concurrent writer that inserted the name first loses its content to this call's.
        return _insert_or_get(insert, replace, self._sessions)

    def _close(self, solve_id: int, **values: Any) -> None:
        with self._sessions.begin() as s:
            result = s.execute(update(Solve).where(Solve.id == solve_id).values(finished_at=utcnow(), **values))
            _require(result, "solve", solve_id)
        with self._lock:
            self._keys.pop(solve_id, None)

    def _reopen(self, name: str) -> str | None:
        with self._sessions.begin() as s:
            run_id = s.scalar(select(Run.id).where(Run.name == name))
            if run_id is not None:
                s.execute(update(Run).where(Run.id == run_id).values(status="running"))
            return run_id

    def _known_keys(self, solve_id: int, reload: bool = False) -> dict[str, int]:
        with self._lock:
            cached = self._keys.get(solve_id)
        if cached is not None and not reload:
            return cached
        with self._sessions() as s:
            rows = s.execute(select(Candidate.key, Candidate.id).where(Candidate.solve_id == solve_id))
            loaded = {key: row_id for key, row_id in rows}
        with self._lock:
            self._keys[solve_id] = loaded
        return loaded


def _insert_or_get(insert: Callable[[Session], T], find: Callable[[], T | None], sessions: sessionmaker[Session]) -> T:
    """Run `insert` in its own transaction; if a concurrent writer won the unique constraint, return
    what `find` sees instead."""
    try:
        with sessions.begin() as s:
            return insert(s)
    except IntegrityError:
        found = find()
        if found is None:
            raise
        return found


def _require(result: Any, what: str, key: object) -> None:
    if result.rowcount == 0:
        raise ValueError(f"no {what} {key!r}")


def _delete_trace(s: Session, solve_id: int) -> None:
    candidates = select(Candidate.id).where(Candidate.solve_id == solve_id)
    options = {"synchronize_session": False}
    s.execute(delete(Score).where(Score.candidate_id.in_(candidates)), execution_options=options)
    s.execute(delete(Candidate).where(Candidate.solve_id == solve_id), execution_options=options)
    s.execute(delete(Step).where(Step.solve_id == solve_id), execution_options=options)


def _resolve(step: StepRecord, known: dict[str, int]) -> list[list[CandidateRecord]]:
    """Check every key the step names; its candidates in insertion layers (see `_parents_first`)."""
    layers = _parents_first(step.candidates, known)
    new_keys = {c.key for c in step.candidates}
    unknown = sorted({sc.candidate_key for sc in step.scores} - new_keys - known.keys())
    if unknown:
        raise ValueError(f"scores for unknown candidates {unknown}")
    return layers


def _parents_first(candidates: Iterable[CandidateRecord], known: dict[str, int]) -> list[list[CandidateRecord]]:
    """The step's candidates in layers, each layer's parents already stored or in an earlier layer."""
    pending = list(candidates)
    keys = [c.key for c in pending]
    duplicates = {k for k, n in Counter(keys).items() if n > 1 or k in known}
    if duplicates:
        raise ValueError(f"candidate keys already used in this solve: {sorted(duplicates)}")
    placed = set(known)
    layers: list[list[CandidateRecord]] = []
    while pending:
        layer = [c for c in pending if c.parent_key is None or c.parent_key in placed]
        if not layer:
            missing = sorted({str(c.parent_key) for c in pending} - set(keys))
            raise ValueError(f"candidates with unknown parents: {missing or sorted(keys)} (or a cycle)")
        layers.append(layer)
        layer_keys = {c.key for c in layer}
        placed |= layer_keys
        pending = [c for c in pending if c.key not in layer_keys]
    return layers


def _candidate_row(solve_id: int, step_id: int, c: CandidateRecord, ids: dict[str, int]) -> Candidate:
    return Candidate(
        solve_id=solve_id,
        step_id=step_id,
        key=c.key,
        parent_id=ids[c.parent_key] if c.parent_key is not None else None,
        round=c.round,
        depth=c.depth,
        text=c.text,
        kind=c.kind,
        chain=c.chain,
        finished=c.finished,
        answer=c.answer,
        logprob=c.logprob,
        tokens=c.tokens,
    )
