"""Hypothesis throws arbitrary stdin at the real hook process (``sh -c "$(hook_command())"``):
it always exits 0 and prints nothing, on stdout or stderr, and after a drain every input is
exactly one HookEvent (a JSON object with a hook_event_name) or one Quarantine row."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from sqlmodel import Session as DBSession
from sqlmodel import func, select

from ccrl.agent.capture.drain import drain, ensure_local_stores
from ccrl.agent.store.db import get_engine
from ccrl.agent.store.models import HookEvent, Quarantine
from ccrl.hooks.budget import EVENT_BUDGET_BYTES, TRUNCATED_KEY
from ccrl.hooks.capture import hook_command

EVENT_NAMES = ["PreToolUse", "PostToolUse", "PostToolUseFailure", "UserPromptSubmit", "Stop",
               "SubagentStart", "SubagentStop", "SessionStart", "SessionEnd", "PreCompact"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)


@st.composite
def hook_objects(draw) -> dict:
    """JSON objects shaped like hook events, some with a valid hook_event_name, some not."""
    obj = draw(st.dictionaries(st.text(max_size=12), json_values, max_size=5))
    name = draw(st.one_of(st.sampled_from(EVENT_NAMES), st.text(max_size=20), json_values, st.just(None)))
    if name is not None:
        obj["hook_event_name"] = name
    if draw(st.booleans()):
        obj.update(session_id=draw(st.text(max_size=40)), tool_use_id=draw(st.one_of(st.text(max_size=30), st.integers())),
                   cwd=draw(st.sampled_from(["/work/app", "/", "", "relative/dir", "/tmp/\x00nul", "/nonexistent/é"])))
    if draw(st.integers(0, 9)) == 0:  # now and then a huge one: a big tool output with a secret inside
        obj["tool_response"] = {"stdout": "output line\n" * draw(st.integers(20_000, 100_000))
                                + "AWS_SECRET_ACCESS_KEY=je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY\n"}
    return obj


stdin_inputs = st.one_of(
    st.binary(max_size=2000),
    st.text(max_size=500).map(lambda t: t.encode("utf-8", "surrogatepass")),
    hook_objects().map(lambda o: json.dumps(o).encode()),
    hook_objects().map(lambda o: json.dumps(o, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    json_values.map(lambda v: json.dumps(v).encode()),  # valid JSON, mostly not an object
    hook_objects().map(lambda o: json.dumps(o).encode()).flatmap(  # cut short anywhere
        lambda raw: st.integers(0, len(raw)).map(lambda cut: raw[:cut])),
    st.just(b"\x00" * 1_000_000 + b"\xff"),  # a megabyte of binary
)


def expected_kind(raw: bytes) -> str:
    """What the drain must make of ``raw``: an independent, minimal classification."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "quarantine"
    name = obj.get("hook_event_name") if isinstance(obj, dict) else None
    return "event" if isinstance(name, str) and name.strip() else "quarantine"


def counts() -> tuple[int, int]:
    with DBSession(get_engine()) as db:
        return (db.exec(select(func.count()).select_from(HookEvent)).one(),
                db.exec(select(func.count()).select_from(Quarantine)).one())


@pytest.fixture
def home(ccrl_home, tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    ensure_local_stores()
    return ccrl_home


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(raw=stdin_inputs)
@example(raw=json.dumps({"hook_event_name": "PostToolUse", "tool_response": {"stdout": "line\n" * 60_000}})
         .encode()[:EVENT_BUDGET_BYTES + 1])  # a cut object just over the budget (CI found it)
@example(raw=b'{"tool_response": "' + b"x" * EVENT_BUDGET_BYTES + b'", "hook_event_name": "Stop"}')
def test_any_stdin_exits_0_silently_and_is_stored_or_quarantined(home, raw):
    proc = subprocess.run(["/bin/sh", "-c", hook_command()], input=raw, capture_output=True, timeout=120)
    assert proc.returncode == 0
    assert proc.stdout == b""
    assert proc.stderr == b""
    before = counts()
    report = drain()
    after = counts()
    assert report.read == 1 and report.errors == []
    if len(raw) > EVENT_BUDGET_BYTES:
        # Over the budget the hook keeps a repaired head (hooks/budget.py): a cut JSON object
        # whose name came before the cut becomes a usable event, anything else is quarantined.
        # Either way exactly one row, and it says it was cut.
        event("over budget")
        assert report.stored + report.quarantined == 1
        with DBSession(get_engine()) as db:
            if report.stored:
                row = db.exec(select(HookEvent).order_by(HookEvent.id.desc())).first()
                assert row.payload[TRUNCATED_KEY]["original_bytes"] == len(raw)
                assert isinstance(row.payload["hook_event_name"], str) and row.event
            else:
                row = db.exec(select(Quarantine).order_by(Quarantine.id.desc())).first()
                assert b"[TRUNCATED: ccrl kept the first" in row.payload
        return
    kind = expected_kind(raw)
    event(kind)
    if kind == "event":
        assert (report.stored, report.quarantined) == (1, 0)
        assert after == (before[0] + 1, before[1])
    else:
        assert (report.stored, report.quarantined) == (0, 1)
        assert after == (before[0], before[1] + 1)
