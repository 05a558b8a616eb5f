"""The store's tables, as SQLModel classes: the types are the schema.

Schema history lives in ``migrations.py``; a test checks that applying every migration gives
exactly the tables and columns declared here.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, LargeBinary, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    # Aware: sqlmodel's datetime columns refuse naive values and read back aware UTC.
    return datetime.now(timezone.utc)


class Session(SQLModel, table=True):
    """One Claude Code session (the ``session_id`` Claude Code gives it)."""

    __tablename__ = "sessions"

    id: str = Field(primary_key=True)
    project_path: str | None = Field(default=None, index=True, description="cwd of the session")
    transcript_path: str | None = None
    model: str | None = None
    cc_version: str | None = Field(default=None, description="Claude Code version")
    git_branch: str | None = None
    source: str | None = Field(default=None, description="hook, transcript or both")
    started_at: datetime | None = None
    ended_at: datetime | None = None
    end_reason: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    user_name: str | None = Field(default=None, description="The member whose machine captured it")
    hostname: str | None = Field(default=None, description="The machine that captured it")


class Trace(SQLModel, table=True):
    """One turn: a user prompt, then Claude's reasoning and tool calls, then its answer.

    A subagent's run is a trace too; ``parent_id`` links it to the trace that started it.
    ``steps`` keeps the turn in order (thinking, text, tool_use, tool_result), which is what
    datasets need; ``reasoning`` and ``response`` are the same content, split for convenience.
    """

    __tablename__ = "traces"
    __table_args__ = (UniqueConstraint("session_id", "key", name="uq_traces_session_key"),)

    id: int | None = Field(default=None, primary_key=True)
    session_id: str = Field(foreign_key="sessions.id", index=True)
    key: str = Field(description="Stable identity of the turn within its session")
    parent_id: int | None = Field(default=None, foreign_key="traces.id", index=True)
    agent_id: str | None = None
    agent_type: str | None = None
    prompt_id: str | None = None
    user_uuid: str | None = None
    seq: int = Field(default=0, description="Order of the turn within its session")
    prompt: str = Field(default="", sa_type=Text)
    response: str = Field(default="", sa_type=Text)
    reasoning: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    steps: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    signals: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: str = Field(default="open", description="open, complete or interrupted")
    source: str = Field(default="hook", description="hook, transcript or both")
    cwd: str | None = None
    model: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    user_name: str | None = Field(default=None, index=True, description="The member whose machine captured it")
    hostname: str | None = Field(default=None, description="The machine that captured it")
    covered_by_cycle: int | None = Field(
        default=None, index=True,
        description="The cycle whose dataset first covered it; None: the next cycle's threshold counts it")


class ToolCall(SQLModel, table=True):
    """One tool call of a trace, in the assistant's call order (``seq``)."""

    __tablename__ = "tool_calls"

    id: int | None = Field(default=None, primary_key=True)
    trace_id: int = Field(foreign_key="traces.id", index=True)
    tool_use_id: str | None = Field(default=None, unique=True)
    seq: int = 0
    name: str = ""
    input: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    output: str | None = Field(default=None, sa_type=Text, description="Redacted, possibly truncated result")
    is_error: bool = Field(default=False, index=True)
    is_interrupt: bool = False
    duration_ms: int | None = None
    started_at: datetime | None = None


class HookEvent(SQLModel, table=True):
    """A raw hook event, parsed and redacted, as it came from the inbox or the spool."""

    __tablename__ = "hook_events"

    id: int | None = Field(default=None, primary_key=True)
    event_key: str = Field(unique=True, description="Hash of arrival time and payload: re-delivery is a no-op")
    received_at: datetime
    event: str = Field(default="", index=True)
    session_id: str | None = Field(default=None, index=True)
    tool_use_id: str | None = None
    prompt_id: str | None = None
    agent_id: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    user_name: str | None = Field(default=None, description="The member whose machine captured it")
    hostname: str | None = Field(default=None, index=True, description="The machine that captured it")


class Quarantine(SQLModel, table=True):
    """Input that could not be used, kept with the reason instead of being dropped."""

    __tablename__ = "quarantine"

    id: int | None = Field(default=None, primary_key=True)
    received_at: datetime = Field(default_factory=utcnow)
    source: str = Field(description="inbox, spool or transcript path")
    reason: str
    payload: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    user_name: str | None = Field(default=None, description="The member whose machine captured it")
    hostname: str | None = Field(default=None, description="The machine that captured it")


class DatasetVersion(SQLModel, table=True):
    """A numbered dataset built from traces (``ccrl build-dataset``)."""

    __tablename__ = "dataset_versions"

    id: int | None = Field(default=None, primary_key=True)
    number: int = Field(unique=True)
    path: str
    content_hash: str = Field(default="", description="Hash of the rows: identical rebuild, identical hash")
    trace_count: int = 0
    train_count: int = 0
    eval_count: int = 0
    stats: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class TrainingRun(SQLModel, table=True):
    """One SFT or RL run: its inputs, where it wrote, what it measured, how it ended."""

    __tablename__ = "training_runs"

    id: int | None = Field(default=None, primary_key=True)
    phase: str = Field(description="sft or rl")
    status: str = Field(default="pending", description="pending, running, completed, failed")
    dataset_version_id: int | None = Field(default=None, foreign_key="dataset_versions.id")
    parent_run_id: int | None = Field(default=None, foreign_key="training_runs.id")
    base_model: str = ""
    output_dir: str = ""
    cycle: int | None = None
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    error: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None


class ModelVersion(SQLModel, table=True):
    """A numbered exported model (GGUF) and its life: candidate, deployed, rejected, retired."""

    __tablename__ = "model_versions"

    id: int | None = Field(default=None, primary_key=True)
    number: int = Field(unique=True)
    status: str = Field(default="candidate")
    sft_run_id: int | None = Field(default=None, foreign_key="training_runs.id")
    rl_run_id: int | None = Field(default=None, foreign_key="training_runs.id")
    dataset_version_id: int | None = Field(default=None, foreign_key="dataset_versions.id")
    base_model: str = ""
    gguf_path: str | None = None
    gguf_sha256: str | None = None
    quant: str | None = None
    size_bytes: int | None = Field(default=None, sa_column=Column(BigInteger))
    ollama_tag: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    gate: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)
    deployed_at: datetime | None = None


class Cycle(SQLModel, table=True):
    """One turn of the agent's loop, persisted so that it resumes where it stopped.

    ``steps`` holds each step's state in order (dataset, sft, rl, export, evaluate, deploy):
    ``{"status": pending|running|done|skipped|failed|unavailable, "attempts": n, "reason": …,
    "error": …, "result": {…}, "started_at": …, "finished_at": …}``. The plan (which steps run,
    which are skipped and why) is fixed when the cycle starts. The traces its dataset covers are
    marked with its number (``Trace.covered_by_cycle``); the next cycle counts those not marked.
    ``trace_watermark`` is the highest trace id stored when they were marked (for reports).
    """

    __tablename__ = "cycles"

    id: int | None = Field(default=None, primary_key=True)
    number: int = Field(unique=True)
    status: str = Field(default="running", index=True, description="running, waiting, blocked, completed or failed")
    outcome: str | None = Field(default=None, description="deployed, candidate, rejected, trained or failed")
    step: str | None = Field(default=None, description="The step running or next to run")
    trigger: str = Field(default="threshold", description="threshold or manual")
    steps: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    usable_traces: int = 0
    new_traces: int = 0
    trace_watermark: int | None = None
    dataset_version_id: int | None = Field(default=None, foreign_key="dataset_versions.id")
    sft_run_id: int | None = Field(default=None, foreign_key="training_runs.id")
    rl_run_id: int | None = Field(default=None, foreign_key="training_runs.id")
    model_version_id: int | None = Field(default=None, foreign_key="model_versions.id")
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    error: str | None = None
    next_attempt_at: datetime | None = None
    child_pid: int | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None


class Evaluation(SQLModel, table=True):
    """One subject scored on a dataset version's held-out split (``ccrl eval``, the gate): a
    model (the candidate, its GGUF, the base, the deployed version, an RL run's SFT parent) or a
    learn-nothing baseline. ``details_path`` holds the per-decision results and generated plans."""

    __tablename__ = "evaluations"

    id: int | None = Field(default=None, primary_key=True)
    dataset_version_id: int | None = Field(default=None, foreign_key="dataset_versions.id", index=True)
    model_version_id: int | None = Field(default=None, foreign_key="model_versions.id", index=True)
    training_run_id: int | None = Field(default=None, foreign_key="training_runs.id", index=True)
    subject: str = Field(description="candidate, candidate-gguf, base, deployed, rl-parent, most_frequent or bigram")
    kind: str = Field(description="model or baseline")
    backend: str = Field(description="hf, gguf or baseline")
    model_path: str | None = None
    weights_sha256: str | None = Field(default=None, description="Digest of the weights actually evaluated")
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    details_path: str | None = None
    seconds: float = 0.0
    created_at: datetime = Field(default_factory=utcnow)


class ABVote(SQLModel, table=True):
    """One blind A/B vote (``ccrl ab``): which of two plans for a held-out prompt the person took
    for Claude's. ``claude_position`` and ``guess`` are 1 or 2 (the order shown)."""

    __tablename__ = "ab_votes"

    id: int | None = Field(default=None, primary_key=True)
    evaluation_id: int = Field(foreign_key="evaluations.id", index=True)
    model_version_id: int | None = Field(default=None, foreign_key="model_versions.id")
    training_run_id: int | None = Field(default=None, foreign_key="training_runs.id")
    trace_id: int | None = Field(default=None, description="The held-out trace the prompt came from")
    claude_position: int
    guess: int
    correct: bool
    seconds: float | None = Field(default=None, description="Time the person took to decide")
    created_at: datetime = Field(default_factory=utcnow)


class PurgedSession(SQLModel, table=True):
    """A session the user purged: ingest and import never bring it back from Claude Code's own
    transcripts. ``before`` set: only turns that started before it were purged."""

    __tablename__ = "purged_sessions"

    session_id: str = Field(primary_key=True)
    before: datetime | None = None
    purged_at: datetime = Field(default_factory=utcnow)
