"""The hook's per-event size budget: any input up to 50 MB finishes, exits 0 silently and is
recorded, an oversized value stored cut with a marker that says so (never silently lost).

The pathological inputs are those of benchmarks/hook_pathological.py (which times them); here
they only have to finish and be recorded. No timing is asserted.
"""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import subprocess
from pathlib import Path

import pytest
from sqlmodel import Session as DBSession
from sqlmodel import select

from ccrl.agent.capture.drain import drain, ensure_local_stores
from ccrl.agent.store.db import get_engine
from ccrl.agent.store.models import HookEvent, Quarantine
from ccrl.hooks import budget, paths
from ccrl.hooks.capture import capture, hook_command

from conftest import HOOK_PAYLOADS, REPO

_spec = importlib.util.spec_from_file_location("hook_pathological", REPO / "benchmarks" / "hook_pathological.py")
pathological = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pathological)  # type: ignore[union-attr]

SIZE = 50_000_000
# Inputs whose head is JSON that the budget must close again: they stay usable hook events.
REPAIRED = {"single-line value", "a:a@ repeats", "eyJ repeats"}


def _inbox_rows(home: Path) -> list[bytes]:
    conn = sqlite3.connect(paths.inbox_path(str(home)))
    try:
        return [bytes(row[0]) for row in conn.execute("SELECT payload FROM inbox ORDER BY id")]
    finally:
        conn.close()


@pytest.mark.parametrize("name", list(pathological.pathological_inputs(SIZE)))
def test_pathological_input_is_recorded_cut_with_a_marker(ccrl_home, name):
    ensure_local_stores()
    data = pathological.pathological_inputs(SIZE)[name]()
    proc = subprocess.run(["/bin/sh", "-c", hook_command()], input=data, capture_output=True, timeout=120)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")
    rows = _inbox_rows(ccrl_home)
    assert len(rows) == 1
    row = rows[0]
    note = budget.marker(budget.EVENT_BUDGET_BYTES, len(data)).encode()
    assert note in row
    assert len(row) < budget.EVENT_BUDGET_BYTES + 4096
    try:
        event = json.loads(row)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or too deep or too many tokens to close (kept raw)
        event = None
    if name in REPAIRED:
        assert event is not None
        assert event["hook_event_name"] == "PostToolUse"
        assert event["tool_response"]["stdout"].endswith(note.decode())
    if event is not None:
        assert event[budget.TRUNCATED_KEY] == {"kept_bytes": budget.EVENT_BUDGET_BYTES,
                                               "original_bytes": len(data), "note": note.decode()}
    report = drain()
    assert report.read == 1 and report.stored + report.quarantined == 1
    with DBSession(get_engine()) as db:
        events = db.exec(select(HookEvent)).all()
        kept = db.exec(select(Quarantine)).all()
    if event is not None and isinstance(event.get("hook_event_name"), str):
        assert len(events) == 1 and events[0].payload[budget.TRUNCATED_KEY]["original_bytes"] == len(data)
    else:
        assert len(kept) == 1 and note in kept[0].payload


def _fixture_payloads() -> list[tuple[str, bytes]]:
    """Each real hook payload (some fixture files hold a list of them), as Claude Code sends it."""
    found = []
    for path in sorted(HOOK_PAYLOADS.glob("*/*.json")):
        content = json.loads(path.read_bytes())
        for i, event in enumerate(content if isinstance(content, list) else [content]):
            found.append((f"{path.parent.name}/{path.name}#{i}", json.dumps(event).encode()))
    return found


@pytest.mark.parametrize("payload", [p for _, p in _fixture_payloads()], ids=[n for n, _ in _fixture_payloads()])
def test_every_cut_of_a_real_payload_is_closed_into_a_hook_event(payload):
    """A real payload cut anywhere (inside a key, a value, an escape, a number, between tokens)
    becomes valid JSON that says it was cut; a cut after the event name keeps it."""
    original = json.loads(payload)
    name_end = payload.find(b'"hook_event_name"')
    step = max(1, len(payload) // 400)
    for cut in range(8, len(payload), step):
        out = budget.fit(payload[:cut], len(payload), budget=cut)
        event = json.loads(out)
        assert event[budget.TRUNCATED_KEY]["original_bytes"] == len(payload)
        if 0 <= name_end and name_end + 40 + len(original["hook_event_name"]) < cut:
            assert event["hook_event_name"] == original["hook_event_name"]


@pytest.mark.parametrize("text", [
    "é" * 400, "\\u00e9" * 300, "\\\\" * 500, "a\\\"b" * 300, "😀" * 300,
])
def test_a_cut_string_never_ends_in_half_an_escape_or_character(text):
    payload = json.dumps({"hook_event_name": "Stop", "v": text}, ensure_ascii=False).encode()
    payload = payload.replace(b"\\\\u00e9", b"\\u00e9")  # a real \u escape, not an escaped backslash
    for cut in range(payload.index(b'"v": "') + 6, len(payload) - 4):
        event = json.loads(budget.fit(payload[:cut], len(payload), budget=cut))
        assert event["v"].endswith(budget.marker(cut, len(payload)))


def test_an_event_within_the_budget_is_stored_as_it_came(ccrl_home):
    ensure_local_stores()
    payload = json.dumps({"hook_event_name": "Stop", "session_id": "s",
                          "v": "x" * (budget.EVENT_BUDGET_BYTES - 100)}).encode()
    assert len(payload) <= budget.EVENT_BUDGET_BYTES
    assert capture(payload) == "inbox"
    assert _inbox_rows(ccrl_home) == [payload]


def test_capture_called_with_a_whole_oversized_payload_cuts_it_too(ccrl_home):
    ensure_local_stores()
    payload = json.dumps({"hook_event_name": "Stop", "session_id": "s", "v": "y" * (3 << 20)}).encode()
    assert capture(payload) == "inbox"
    (row,) = _inbox_rows(ccrl_home)
    assert json.loads(row)[budget.TRUNCATED_KEY]["original_bytes"] == len(payload)
