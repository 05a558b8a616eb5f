"""A store captured by an earlier version (before a rule existed) is re-redacted on upgrade: hook
events, traces, tool calls, quarantined inputs, inbox rows and spool files; the dataset versions
and models built from rows it changed are named; no secret's bytes stay in any file."""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import datetime, timezone
from pathlib import Path

import structlog
from sqlalchemy import text
from sqlmodel import Session as DBSession
from sqlmodel import select

from ccrl.agent.capture import reredact
from ccrl.agent.capture.drain import ensure_local_stores
from ccrl.agent.capture.ingest import ingest
from ccrl.agent.store.db import get_engine
from ccrl.agent.store.models import (
    DatasetVersion,
    HookEvent,
    ModelVersion,
    Quarantine,
    Session,
    ToolCall,
    Trace,
    TrainingRun,
)
from ccrl.hooks import inbox, paths

from postgres_helpers import pg_home, pg_server, pg_url  # noqa: F401  (fixtures)
from test_secret_bytes import assert_nowhere_on_disk, detector_secrets

T0 = datetime(2026, 1, 5, tzinfo=timezone.utc)


def _dataset(home: Path, number: int, trace_ids: list[int]) -> DatasetVersion:
    """A dataset version on disk as build-dataset writes it (its JSONL copy names the traces)."""
    path = home / "datasets" / f"v{number}"
    (path / "jsonl").mkdir(parents=True)
    with open(path / "jsonl" / "train.jsonl", "w") as fh:
        for trace_id in trace_ids:
            fh.write(json.dumps({"messages": [], "format": "trajectory", "trace_id": trace_id,
                                 "session_id": "s-old", "parent_id": None}) + "\n")
    return DatasetVersion(number=number, path=str(path), trace_count=len(trace_ids))


def _older_store(home: Path, secrets: dict[str, str]) -> dict[str, int]:
    """Rows as a ccrl whose rules did not know these formats stored them: in clear."""
    ids = {}
    with DBSession(get_engine()) as db:
        db.add(Session(id="s-old", project_path="/work/app"))
        leaky = Trace(session_id="s-old", key="k1", prompt=f"deploy with {secrets['prompt']}",
                      response=f"done, used {secrets['response']}", reasoning=[f"the key is {secrets['reasoning']}"],
                      steps=[{"kind": "text", "text": f"set {secrets['steps']}"}], started_at=T0)
        clean = Trace(session_id="s-old", key="k2", prompt="run the tests", response="all pass", started_at=T0)
        db.add(leaky)
        db.add(clean)
        db.flush()
        db.add(ToolCall(trace_id=clean.id, tool_use_id="t-clean", name="Bash", input={"command": "pytest -q"},
                        output="3 passed"))
        db.add(ToolCall(trace_id=leaky.id, tool_use_id="t-leak", name="Bash",
                        input={"command": f"curl -H 'X: {secrets['tool_input']}'"}, output=f"ok {secrets['tool_output']}"))
        db.add(HookEvent(event_key="e1", received_at=T0, event="UserPromptSubmit", session_id="s-old",
                         payload={"hook_event_name": "UserPromptSubmit", "prompt": f"use {secrets['hook_event']}"}))
        db.add(Quarantine(source="inbox", reason="invalid JSON at byte 3",
                          payload=f"{{bad {secrets['quarantine']}".encode()))
        # Dataset v1 holds the leaky trace, v2 only the clean one.
        v1, v2 = _dataset(home, 1, [leaky.id, clean.id]), _dataset(home, 2, [clean.id])
        db.add(v1)
        db.add(v2)
        db.flush()
        sft1 = TrainingRun(phase="sft", status="completed", dataset_version_id=v1.id)
        db.add(sft1)
        db.flush()
        rl1 = TrainingRun(phase="rl", status="completed", dataset_version_id=v1.id, parent_run_id=sft1.id)
        # A later cycle's SFT on the clean dataset, continued from the first model: it inherits.
        sft2 = TrainingRun(phase="sft", status="completed", dataset_version_id=v2.id, parent_run_id=sft1.id)
        # From the base on the clean dataset: untouched.
        sft3 = TrainingRun(phase="sft", status="completed", dataset_version_id=v2.id)
        for run in (rl1, sft2, sft3):
            db.add(run)
        db.flush()
        db.add(ModelVersion(number=1, status="deployed", sft_run_id=sft1.id, rl_run_id=rl1.id,
                            dataset_version_id=v1.id, ollama_tag="cc-claude-agent:v1"))
        db.add(ModelVersion(number=2, status="candidate", sft_run_id=sft2.id, dataset_version_id=v2.id))
        db.add(ModelVersion(number=3, status="candidate", sft_run_id=sft3.id, dataset_version_id=v2.id))
        db.commit()
        ids.update(leaky=leaky.id, clean=clean.id, sft1=sft1.id, rl1=rl1.id, sft2=sft2.id, sft3=sft3.id)
    return ids


def test_an_upgrade_reredacts_an_older_store_and_names_what_was_built_from_it(ccrl_home, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    ensure_local_stores()
    cases = detector_secrets(seed=3)
    places = ["prompt", "response", "reasoning", "steps", "tool_input", "tool_output", "hook_event",
              "quarantine", "inbox", "spool"]
    secrets = {place: cases[i % len(cases)][1] for i, place in enumerate(places)}
    ids = _older_store(ccrl_home, secrets)
    # An inbox row and a spool file the drain has not taken yet, and a store never re-redacted.
    conn = sqlite3.connect(paths.inbox_path(str(ccrl_home)))
    conn.execute(inbox.INSERT_SQL, (time.time(), b"not json " + secrets["inbox"].encode()))
    conn.commit()
    conn.close()
    inbox.spool(str(ccrl_home), time.time(), b"not json either " + secrets["spool"].encode())
    raw = [cases[i % len(cases)][2] for i in range(len(places))]

    with structlog.testing.capture_logs() as logs:
        report = ingest()
    done = report.reredacted
    assert done["ran"] and done["previous"] is None and done["rules"] == reredact.rules_version()
    assert (done["hook_events"], done["traces"], done["tool_calls"], done["quarantine"]) == (1, 1, 1, 1)
    assert done["inbox_rows"] == 1 and done["spool_files"] == 1
    assert done["changed_trace_ids"] == [ids["leaky"]]
    assert done["dataset_versions"] == [1]
    assert done["training_runs"] == sorted([ids["sft1"], ids["rl1"], ids["sft2"]])
    assert [(m["number"], m["ollama_tag"]) for m in done["model_versions"]] == [(1, "cc-claude-agent:v1"), (2, None)]
    (logged,) = [e for e in logs if e["event"] == "reredacted"]
    assert "dataset versions v1;" in logged["summary"] and "v1 (deployed, Ollama cc-claude-agent:v1)" in logged["summary"]
    assert not any(secret in json.dumps(logs, default=str) for secret in raw)

    with DBSession(get_engine()) as db:
        leaky = db.get(Trace, ids["leaky"])
        texts = [leaky.prompt, leaky.response, json.dumps(leaky.reasoning), json.dumps(leaky.steps)]
        call = db.exec(select(ToolCall).where(ToolCall.tool_use_id == "t-leak")).one()
        texts += [json.dumps(call.input), call.output or ""]
        texts += [json.dumps(e.payload) for e in db.exec(select(HookEvent))]
        texts += [q.payload.decode() for q in db.exec(select(Quarantine))]
    assert all("[REDACTED:" in t for t in texts)
    assert not any(secret in t for t in texts for secret in raw)
    # While the agent's engine is still open (its WAL not checkpointed by a close).
    assert_nowhere_on_disk(ccrl_home, raw)

    # Recorded: the next ingest does not walk the store again.
    again = ingest()
    assert again.reredacted == {}
    assert reredact.reredact_store().ran is False


def test_rules_changing_triggers_a_new_pass_and_an_unchanged_store_names_nothing(ccrl_home):
    ensure_local_stores()
    with DBSession(get_engine()) as db:
        db.add(Session(id="s"))
        db.add(Trace(session_id="s", key="k", prompt="plain text", response="nothing secret"))
        db.commit()
    first = reredact.reredact_store()
    assert first.ran and first.changed == 0 and first.dataset_versions == []
    assert reredact.reredact_store().ran is False
    with get_engine().begin() as conn:  # as if recorded by an earlier ccrl with other rules
        conn.execute(text(f"UPDATE {reredact.META_TABLE} SET value = 'older' WHERE key = :k"), {"k": reredact.RULES_KEY})
    second = reredact.reredact_store()
    assert second.ran and second.previous == "older" and second.changed == 0
    assert "unchanged" in reredact.reredact_store().describe()


def test_a_postgresql_store_is_reredacted_once_too(pg_home, tmp_path, monkeypatch):
    """The same pass on a team's PostgreSQL store (the rows are rewritten; PostgreSQL keeps the
    old row versions as dead tuples until a VACUUM FULL, which purge's summary names)."""
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    ensure_local_stores()
    cases = detector_secrets(seed=5)
    places = ["prompt", "response", "reasoning", "steps", "tool_input", "tool_output", "hook_event", "quarantine"]
    secrets = {place: cases[i % len(cases)][1] for i, place in enumerate(places)}
    ids = _older_store(pg_home, secrets)
    done = ingest().reredacted
    assert (done["hook_events"], done["traces"], done["tool_calls"], done["quarantine"]) == (1, 1, 1, 1)
    assert done["dataset_versions"] == [1] and [m["number"] for m in done["model_versions"]] == [1, 2]
    with DBSession(get_engine()) as db:
        leaky = db.get(Trace, ids["leaky"])
        stored = json.dumps([leaky.prompt, leaky.response, leaky.reasoning, leaky.steps])
    assert not any(cases[i % len(cases)][2] in stored for i in range(4))
    assert ingest().reredacted == {}
