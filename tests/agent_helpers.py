"""Store rows for the agent's tests: traces shaped like what ingest stores from a real Claude Code
turn (reasoning, several tool calls with results, an answer), each with its own task, so the
dataset builder's filters keep them and its duplicate filters do not merge them."""

from __future__ import annotations

import hashlib
import random

from sqlalchemy import func
from sqlmodel import select

from ccrl.agent.core.config import Settings
from ccrl.agent.store.db import session_scope
from ccrl.agent.store.models import Session, ToolCall, Trace
from ccrl.agent.store.records import trace_json
from ccrl.trainers.signals import extract_signals

_VERBS = ["Fix", "Refactor", "Document", "Speed up", "Add tests for", "Rename the helpers in", "Type-annotate",
          "Remove dead code from", "Add logging to", "Split up", "Review", "Port to pathlib"]
_NOUNS = ["parser", "scheduler", "cache", "exporter", "config loader", "tokenizer", "CLI", "database layer",
          "retry logic", "report writer", "uploader", "metrics module", "plugin registry", "auth client"]
_WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
          "quebec romeo sierra tango uniform victor whiskey xray yankee zulu amber cobalt dune ember fjord "
          "grove harbor island jade karst lagoon meadow nectar orchid prairie quartz reef summit tundra").split()


def _prompt(i: int) -> str:
    rng = random.Random(hashlib.sha256(str(i).encode()).digest())
    extra = " ".join(rng.sample(_WORDS, 6))
    return (f"{_VERBS[i % len(_VERBS)]} the {_NOUNS[(i // len(_VERBS)) % len(_NOUNS)]} in "
            f"src/pkg{i}/mod_{rng.randrange(10**6)}.py; mind the {extra} cases (task {i}).")


def _steps(i: int) -> list[dict]:
    path = f"src/pkg{i}/mod.py"
    read_id, test_id = f"toolu_r{i:06d}", f"toolu_t{i:06d}"
    return [
        {"kind": "thinking", "text": f"First, I need to read {path} to understand the failing case. "
                                     "Then I will run the tests to confirm the fix.", "message_id": f"m{i}a"},
        {"kind": "text", "text": "Let me look at the module first.", "message_id": f"m{i}a"},
        {"kind": "tool_use", "tool_use_id": read_id, "name": "Read", "input": {"file_path": path},
         "message_id": f"m{i}a"},
        {"kind": "tool_result", "tool_use_id": read_id, "output": f"def f():\n    return {i}\n", "is_error": False},
        {"kind": "text", "text": "Next, run the test suite for this package.", "message_id": f"m{i}b"},
        {"kind": "tool_use", "tool_use_id": test_id, "name": "Bash",
         "input": {"command": f"pytest tests/test_pkg{i}.py -q"}, "message_id": f"m{i}b"},
        {"kind": "tool_result", "tool_use_id": test_id, "output": "1 passed", "is_error": False},
        {"kind": "text", "text": f"Done: the module in {path} returns {i} and its test passes.", "message_id": f"m{i}c"},
    ]


def add_usable_traces(settings: Settings, n: int, *, per_session: int = 3) -> list[int]:
    """Add ``n`` complete multi-step traces (with their tool calls and the signals ingest
    would store); returns their ids."""
    with session_scope(settings) as db:
        start = int(db.exec(select(func.count()).select_from(Trace)).one())
        traces: list[tuple[int, Trace]] = []
        for k in range(n):
            i = start + k
            session_id = f"sess-{i // per_session:05d}"
            if db.get(Session, session_id) is None:
                db.add(Session(id=session_id, project_path=f"/work/p{i // per_session}", source="transcript"))
            steps = _steps(i)
            traces.append((i, Trace(
                session_id=session_id, key=f"uuid:{i:06d}", seq=i % per_session, prompt=_prompt(i),
                response=steps[-1]["text"], reasoning=[steps[0]["text"], steps[1]["text"], steps[4]["text"]],
                steps=steps, status="complete", source="transcript", cwd=f"/work/p{i // per_session}",
            )))
            db.flush()  # the session row before its traces (foreign key)
        db.add_all([t for _i, t in traces])
        db.flush()
        for i, trace in traces:
            steps = trace.steps
            calls = [ToolCall(trace_id=trace.id, tool_use_id=s["tool_use_id"], seq=n, name=s["name"],
                              input=s["input"], output=steps[idx + 1]["output"])
                     for n, (idx, s) in enumerate((j, s) for j, s in enumerate(steps) if s["kind"] == "tool_use")]
            db.add_all(calls)
            trace.signals = extract_signals(trace_json(trace, calls))  # as ingest stores them
        return [t.id for _i, t in traces]


def add_unusable_traces(settings: Settings, n: int) -> None:
    """Add ``n`` traces the dataset filters drop: still open, or a one-line answer with no tools."""
    with session_scope(settings) as db:
        if db.get(Session, "sess-unusable") is None:
            db.add(Session(id="sess-unusable"))
            db.flush()
        start = int(db.exec(select(func.count()).select_from(Trace)).one())
        for k in range(n):
            i = start + k
            status = "open" if k % 2 else "complete"
            db.add(Trace(session_id="sess-unusable", key=f"u{i}", prompt=f"hi {i}", response="Hello!",
                         steps=[{"kind": "text", "text": "Hello!"}], status=status))
