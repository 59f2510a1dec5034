"""The trace writer: plain records in, one transaction per node execution.

Several workers (processes, on one machine or many) may solve one run together: a solve row is a
worker's claim on its problem, leased for `lease_seconds` and renewed by every step it writes. A
worker starts only solves that no other live worker holds, and writes only to solves it holds."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, and_, delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from db.models import Candidate, Policy, Problem, Run, Score, Solve, Step, utcnow

T = TypeVar("T")

LEASE_SECONDS_ENV = "TTC_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 120.0
# Bulk updates by condition: the sessions here never hold the rows they change.
_UNSYNCED = {"synchronize_session": False}


def default_lease_seconds() -> float:
    """How long a worker's claim on a solve lasts without renewal: $TTC_LEASE_SECONDS, else 120."""
    raw = os.environ.get(LEASE_SECONDS_ENV, "").strip()
    if not raw:
        return DEFAULT_LEASE_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        raise ValueError(f"{LEASE_SECONDS_ENV}={raw!r}: expected a number of seconds") from None
    if not 0 < seconds < float("inf"):
        raise ValueError(f"{LEASE_SECONDS_ENV}={raw!r}: expected a positive number of seconds")
    return seconds


_workers: dict[int, str] = {}
_stopped: set[str] = set()  # workers of this process told to stop: they claim no more solves
_claiming = threading.Lock()  # a claim and a stop never interleave, so no solve starts after a stop


class Stopped(RuntimeError):
    """This process was told to stop (a stop signal marked its solves interrupted): it starts no more."""


def this_worker() -> str:
    """This process's name as a claimant of solves, "host:pid:id": one per process, so that every
    Recorder of the process (its tasks' and its stop-signal handler's) holds the same claims."""
    pid = os.getpid()
    return _workers.setdefault(pid, f"{socket.gethostname()}:{pid}:{uuid.uuid4().hex[:8]}")


def _gone(worker: str) -> bool:
    """Whether `worker` is a process of this host that no longer exists (its claims can be taken at
    once, not when their lease runs out). Other hosts' workers are never judged gone."""
    host, _, rest = worker.partition(":")
    pid_text, _, _ = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit() or worker == this_worker():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return True  # an earlier process that had this pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Claimed(ValueError):
    """The solve is not this worker's to start or to write: it is done, or another worker holds it."""

    def __init__(self, message: str, *, solve_id: int, status: str, worker: str | None) -> None:
        super().__init__(message)
        self.solve_id, self.status, self.worker = solve_id, status, worker


class RunConfigMismatch(ValueError):
    """A run of that name exists with another configuration: joining it would mix two experiments."""

    def __init__(self, name: str, differences: dict[str, tuple[Any, Any]]) -> None:
        old = ", ".join(f"{key}={_shown(before)}" for key, (before, _) in differences.items())
        new = ", ".join(f"{key}={_shown(after)}" for key, (_, after) in differences.items())
        super().__init__(f"run {name!r} was started with {old}; this call asks {new}: use another --run-name")
        self.name, self.differences = name, differences


@dataclass(frozen=True)
class Pending:
    """A run's problems not yet done, as one worker sees them."""

    claimable: frozenset[int]  # problem ids this worker may start now
    held: frozenset[int]  # problem ids another live worker is solving
    next_expiry: datetime | None  # when the soonest lease among `held` runs out


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
    lineage: int | None = None
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
    """Writes runs, problems and solve traces as one worker (default: this process). Safe to share
    between threads."""

    def __init__(
        self, sessions: sessionmaker[Session], *, worker: str | None = None, lease_seconds: float | None = None
    ) -> None:
        self._sessions = sessions
        self.worker = worker or this_worker()
        self.lease = timedelta(seconds=lease_seconds if lease_seconds is not None else default_lease_seconds())
        # Per solve, candidate key -> row id, so a step's parents and scores resolve without queries.
        self._keys: dict[int, dict[str, int]] = {}
        self._lock = threading.Lock()

    def open_run(self, name: str | None, config: dict[str, Any]) -> str:
        """A new run's id; when a run called `name` exists, that run's id instead (to resume it, or to
        join the workers solving it). RunConfigMismatch if that run was started with another config."""
        if name is not None:
            existing = self._reopen(name, config)
            if existing is not None:
                return existing

        def insert(s: Session) -> str:
            run_id = uuid.uuid4().hex
            s.add(Run(id=run_id, name=name, config=config, status="running"))
            return run_id

        return _insert_or_get(insert, lambda: self._reopen(name, config) if name is not None else None, self._sessions)

    def check_run(self, name: str, config: dict[str, Any]) -> None:
        """RunConfigMismatch if a run called `name` exists with a config other than `config`; writes nothing."""
        with self._sessions() as s:
            stored = s.scalar(select(Run.config).where(Run.name == name))
        if stored is not None:
            _check_config(name, stored, config)

    def settle_run(self, run_id: str) -> None:
        """Close the run as its solves stand: 'done' when every problem is, left running while other
        live workers hold some, else 'partial'."""
        pending = self.pending(run_id)
        if not pending.held:
            self.close_run(run_id, "partial" if pending.claimable else "done")

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

    def pending(self, run_id: str, problem_ids: Iterable[int] | None = None) -> Pending:
        """The run's problems (of `problem_ids`, when given; those without a solve yet count as
        claimable) that are not done: which this worker may start, and which other workers hold."""
        wanted = None if problem_ids is None else set(problem_ids)
        now = utcnow()
        with self._sessions() as s:
            rows = s.execute(
                select(Solve.problem_id, Solve.status, Solve.worker, Solve.lease_until).where(Solve.run_id == run_id)
            ).all()
        seen: set[int] = set()
        claimable: set[int] = set()
        held: dict[int, datetime] = {}
        for problem_id, status, worker, lease_until in rows:
            if wanted is not None and problem_id not in wanted:
                continue
            seen.add(problem_id)
            if status == "done":
                continue
            if self._held_elsewhere(status, worker, lease_until, now):
                assert lease_until is not None
                held[problem_id] = lease_until
            else:
                claimable.add(problem_id)
        if wanted is not None:
            claimable |= wanted - seen
        return Pending(frozenset(claimable), frozenset(held), min(held.values(), default=None))

    def await_claims(self, run_id: str, problem_ids: Iterable[int], poll_seconds: float = 1.0) -> frozenset[int]:
        """Wait while other live workers hold every one of the problems not yet done; then those this
        worker may start (abandoned, failed or interrupted), empty when all are done. Bounded by the
        leases: a worker that stops writing loses its claims `lease_seconds` after its last step."""
        wanted = set(problem_ids)
        while True:
            pending = self.pending(run_id, wanted)
            if pending.claimable or pending.next_expiry is None:
                return pending.claimable
            left = (pending.next_expiry - utcnow()).total_seconds()
            time.sleep(min(poll_seconds, max(left, 0.05)))

    def start_solve(self, run_id: str, problem_id: int, strategy: str, settings: dict[str, Any], budget: int) -> int:
        """Claim the problem's solve in the run for this worker: the id of a fresh 'running' solve,
        leased to this worker for `lease_seconds` and renewed by each step it records.

        A solve left unfinished (failed, interrupted, or running under a lease that ran out, or whose
        worker is gone) is emptied of its trace and restarted in place. Claimed, and nothing changes,
        when the solve is done or another live worker holds it."""

        def claim() -> int:
            now = utcnow()
            fresh: dict[str, Any] = dict(
                strategy=strategy,
                settings=settings,
                budget=budget,
                status="running",
                answer=None,
                correct=None,
                error=None,
                generations=0.0,
                tokens=0,
                flops=0.0,
                seconds=0.0,
                started_at=now,
                finished_at=None,
                detail={},
                worker=self.worker,
                lease_until=now + self.lease,
            )
            with self._sessions.begin() as s:
                current = s.execute(
                    select(Solve.id, Solve.status, Solve.worker).where(
                        Solve.run_id == run_id, Solve.problem_id == problem_id
                    )
                ).one_or_none()
                if current is None:
                    row = Solve(run_id=run_id, problem_id=problem_id, **fresh)
                    s.add(row)
                    s.flush()
                    return row.id
                solve_id, status, worker = current
                if status != "done" and self._take_over(s, solve_id, now, fresh, worker):
                    return solve_id
            if status == "done":
                message = f"problem {problem_id} is already solved in run {run_id} (solve {solve_id})"
            else:
                message = f"problem {problem_id} of run {run_id} is being solved by worker {worker} (solve {solve_id})"
            raise Claimed(message, solve_id=solve_id, status=status, worker=worker)

        with _claiming:
            if self.worker in _stopped:
                raise Stopped(f"worker {self.worker} is stopping: problem {problem_id} of run {run_id} not started")
            try:
                solve_id = claim()
            except IntegrityError:
                # A concurrent worker inserted the solve first: it holds it now, unless it is gone already.
                solve_id = claim()
        with self._lock:
            self._keys[solve_id] = {}
        return solve_id

    def renew(self, solve_id: int) -> datetime:
        """Extend this worker's lease on its running solve to `lease_seconds` from now; the new expiry.
        Claimed when the solve is no longer this worker's (finished, interrupted, or taken over)."""
        with self._sessions.begin() as s:
            return self._renew(s, solve_id)

    def interrupt_running(self, run_id: str | None = None) -> int:
        """Mark this worker's running solves (of `run_id`, else of every run) 'interrupted' and release
        their claims, so that any worker may resume them at once; how many there were."""
        where = [Solve.worker == self.worker, Solve.status == "running"]
        if run_id is not None:
            where.append(Solve.run_id == run_id)
        with _claiming:
            return self._interrupt(where)

    def stop(self) -> int:
        """What a stop signal does: this worker claims no more solves (start_solve raises Stopped), and
        every solve it has running is marked 'interrupted'; how many. No claim slips in between."""
        with _claiming:
            _stopped.add(self.worker)
            return self._interrupt([Solve.worker == self.worker, Solve.status == "running"])

    def _interrupt(self, where: list[Any]) -> int:
        with self._sessions.begin() as s:
            result = s.execute(
                update(Solve).where(*where).values(status="interrupted", lease_until=None, finished_at=utcnow()),
                execution_options=_UNSYNCED,
            )
            return _matched(result)

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
            self._renew(s, solve_id)  # also the check that this worker still holds the solve
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
        """Close the solve as 'failed'; a later start_solve of the same problem (by any worker) restarts it."""
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
            result = s.execute(
                update(Solve)
                .where(Solve.id == solve_id, *self._holding())
                .values(finished_at=utcnow(), lease_until=None, **values),
                execution_options=_UNSYNCED,
            )
            if _matched(result) == 0:
                raise self._not_held(s, solve_id)
        with self._lock:
            self._keys.pop(solve_id, None)

    def _holding(self) -> tuple[ColumnElement[bool], ...]:
        """The solve is this worker's: running under its claim."""
        return (Solve.worker == self.worker, Solve.status == "running")

    def _held_elsewhere(self, status: str, worker: str | None, lease_until: datetime | None, now: datetime) -> bool:
        """Whether another live worker holds a solve in this state (the Python reading of `_free`)."""
        if status != "running" or worker is None or worker == self.worker or lease_until is None:
            return False
        return lease_until >= now and not _gone(worker)

    def _free(self, now: datetime, worker: str | None) -> ColumnElement[bool]:
        """The solve may be taken by this worker: unfinished, and no live worker but this one holds it
        (`worker`, its holder when read, counts as dead if it is a gone process of this host)."""
        lapsed = [Solve.status != "running", Solve.lease_until.is_(None), Solve.lease_until < now]
        lapsed.append(Solve.worker == self.worker)
        if worker is not None and _gone(worker):
            lapsed.append(Solve.worker == worker)
        return and_(Solve.status != "done", or_(*lapsed))

    def _take_over(self, s: Session, solve_id: int, now: datetime, fresh: dict[str, Any], worker: str | None) -> bool:
        """Restart the solve as this worker's if it is free (see `_free`); whether it was."""
        free = self._free(now, worker)
        if s.get_bind().dialect.name == "postgresql":
            # A row another worker is claiming or writing right now is passed over, not waited for.
            locked = select(Solve.id).where(Solve.id == solve_id, free).with_for_update(skip_locked=True)
            if s.scalar(locked) is None:
                return False
        # On SQLite this conditional update is the claim itself: writers take turns, one of them matches.
        result = s.execute(update(Solve).where(Solve.id == solve_id, free).values(**fresh), execution_options=_UNSYNCED)
        if _matched(result) == 0:
            return False
        _delete_trace(s, solve_id)
        return True

    def _renew(self, s: Session, solve_id: int) -> datetime:
        until = utcnow() + self.lease
        result = s.execute(
            update(Solve).where(Solve.id == solve_id, *self._holding()).values(lease_until=until),
            execution_options=_UNSYNCED,
        )
        if _matched(result) == 0:
            raise self._not_held(s, solve_id)
        return until

    def _not_held(self, s: Session, solve_id: int) -> ValueError:
        """Why this worker may not write the solve: there is none (ValueError), or it is not its (Claimed)."""
        row = s.execute(select(Solve.status, Solve.worker).where(Solve.id == solve_id)).one_or_none()
        if row is None:
            return ValueError(f"no solve {solve_id!r}")
        status, worker = row
        holder = "" if worker == self.worker else f", claimed by worker {worker}"
        return Claimed(
            f"solve {solve_id} is no longer this worker's ({self.worker}): it is {status}{holder}",
            solve_id=solve_id,
            status=status,
            worker=worker,
        )

    def _reopen(self, name: str, config: dict[str, Any]) -> str | None:
        with self._sessions.begin() as s:
            found = s.execute(select(Run.id, Run.config).where(Run.name == name)).one_or_none()
            if found is None:
                return None
            run_id, stored = found
            _check_config(name, stored, config)
            s.execute(update(Run).where(Run.id == run_id).values(status="running"))
            return str(run_id)

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


def _check_config(name: str, stored: dict[str, Any], config: dict[str, Any]) -> None:
    """RunConfigMismatch naming the keys whose values differ (a missing key reads as None)."""
    given = json.loads(json.dumps(config, default=str))  # as it would be stored
    keys = list(given) + [key for key in stored if key not in given]
    differences = {key: (stored.get(key), given.get(key)) for key in keys if stored.get(key) != given.get(key)}
    if differences:
        raise RunConfigMismatch(name, differences)


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _matched(result: Any) -> int:
    """How many rows an UPDATE matched."""
    return int(result.rowcount)


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
    columns = {f.name: getattr(c, f.name) for f in fields(c) if f.name != "parent_key"}
    parent_id = ids[c.parent_key] if c.parent_key is not None else None
    return Candidate(solve_id=solve_id, step_id=step_id, parent_id=parent_id, **columns)
