"""Glue between the graph runner's trace events and the database recorder."""

from __future__ import annotations

from typing import Any

from db.recorder import CandidateRecord, Recorder, ScoreRecord, StepRecord
from graphs.runner import StepEvent
from ttc_nodes.state import Candidate


class DatabaseSink:
    """Writes each node execution (its new candidates and new scores) as it happens."""

    def __init__(self, recorder: Recorder, solve_id: int, *, verifier: str, aggregation: str) -> None:
        self.recorder = recorder
        self.solve_id = solve_id
        self.verifier = verifier
        self.aggregation = aggregation

    def step(self, event: StepEvent) -> None:
        self.recorder.record_step(
            self.solve_id,
            StepRecord(
                seq=event.seq,
                node=event.node,
                round=event.round,
                started_at=event.started_at,
                seconds=event.seconds,
                generations=event.spend.generations,
                tokens=event.spend.tokens,
                flops=event.spend.flops,
                detail=storable_json(event.detail),
                error=storable(event.error),
                candidates=[candidate_record(c) for c in event.new],
                scores=[self.score_record(c) for c in event.scored],
            ),
        )

    def score_record(self, candidate: Candidate) -> ScoreRecord:
        assert candidate.score is not None
        return ScoreRecord(
            candidate_key=candidate.key,
            step_scores=list(candidate.step_scores or ()),
            value=candidate.score,
            aggregation=self.aggregation,
            verifier=self.verifier,
            truncated=candidate.truncated,
        )


def storable(text: str | None) -> str | None:
    """Model output as stored: a NUL character (which PostgreSQL's text type cannot hold, and a
    hostile or broken model can emit) becomes U+FFFD on every backend, so traces compare equal."""
    return text.replace("\x00", "\ufffd") if text is not None else None


def storable_json(value: Any) -> Any:
    """`value` (a step's or a solve's detail) with `storable` applied to every string in it, keys
    included: PostgreSQL's JSON cannot hold a NUL either."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dict):
        return {storable_json(k): storable_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable_json(v) for v in value]
    return value


def candidate_record(candidate: Candidate) -> CandidateRecord:
    return CandidateRecord(
        key=candidate.key,
        parent_key=candidate.parent,
        round=candidate.round,
        depth=candidate.depth,
        text=storable(candidate.text) or "",
        kind=candidate.kind,
        finished=candidate.finished,
        answer=storable(candidate.answer),
        lineage=candidate.lineage,
        logprob=candidate.logprob,
        tokens=candidate.tokens,
    )
