"""ttc's database: the schema (`db.models`), where it lives and how it opens (`db.session`), the trace
writer (`db.recorder`) and the questions asked of it (`db.queries`)."""

from db.queries import (
    AccuracyRow,
    CandidateInfo,
    FailedStep,
    ProblemInfo,
    RunInfo,
    ScoreInfo,
    SolveTrace,
    StepInfo,
    TreeNode,
    accuracy_by,
    candidate_tree,
    failed_steps,
    find_run,
    paths,
    runs,
    trace_of,
)
from db.recorder import CandidateRecord, Recorder, ScoreRecord, StepRecord
from db.session import DatabaseError, DatabaseSettings, connect, database_url, dispose

__all__ = [
    "AccuracyRow",
    "CandidateInfo",
    "CandidateRecord",
    "DatabaseError",
    "DatabaseSettings",
    "FailedStep",
    "ProblemInfo",
    "Recorder",
    "RunInfo",
    "ScoreInfo",
    "ScoreRecord",
    "SolveTrace",
    "StepInfo",
    "StepRecord",
    "TreeNode",
    "accuracy_by",
    "candidate_tree",
    "connect",
    "database_url",
    "dispose",
    "failed_steps",
    "find_run",
    "paths",
    "runs",
    "trace_of",
]
