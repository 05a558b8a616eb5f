"""``ccrl traces list|show`` against a real SQLite store filled with rows."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from ccrl.agent.cli import app
from ccrl.agent.store.db import session_scope
from ccrl.agent.store.models import Session, ToolCall, Trace
from ccrl.agent.store.records import trace_json

SESSION_A = "aaaaaaaa-1111-4111-8111-000000000001"
SESSION_B = "bbbbbbbb-2222-4222-8222-000000000002"
LONG_PROMPT = "Explain [bold]why[/bold] the cache misses " + "and what to do about it " * 20

def at(*parts: int) -> datetime:
    """An aware UTC time (the store's datetime columns take UTC)."""
    return datetime(*parts, tzinfo=timezone.utc)


def stamps(moment: datetime) -> dict[str, datetime]:
    return {"created_at": moment, "updated_at": moment}


LIST_KEYS = {"id", "session_id", "parent_id", "started_at", "status", "tool_calls", "tool_errors", "prompt_excerpt"}


@pytest.fixture
def store(ccrl_home) -> dict[str, int]:
    """Two sessions: A has a turn with three tool calls (one failed) and a subagent trace under
    it; B has the newest turn, a long prompt with rich-markup-like text and no tools."""
    with session_scope() as db:
        db.add(Session(id=SESSION_A, project_path="/work/app", started_at=at(2026, 1, 10, 9, 0),
                       **stamps(at(2026, 1, 10, 9, 0))))
        db.add(Session(id=SESSION_B, project_path="/work/lib", started_at=at(2026, 1, 12, 9, 0),
                       **stamps(at(2026, 1, 12, 9, 0))))
        db.flush()
        fix = Trace(
            session_id=SESSION_A, key="p1", seq=0, prompt="Fix the failing test in utils.py",
            response="Fixed: the loop stopped one item early.",
            reasoning=["I'll read the test first.", "The range is off by one."],
            signals={"explored_before_edit": True}, status="complete", cwd="/work/app",
            started_at=at(2026, 1, 10, 9, 1), ended_at=at(2026, 1, 10, 9, 3), **stamps(at(2026, 1, 10, 9, 3)),
        )
        db.add(fix)
        db.flush()
        sub = Trace(
            session_id=SESSION_A, key="agent-1", seq=1, parent_id=fix.id, agent_id="a1", agent_type="Explore",
            prompt="Find every caller of chunk()", response="Two callers.", status="complete",
            started_at=at(2026, 1, 10, 9, 2), **stamps(at(2026, 1, 10, 9, 2)),
        )
        newest = Trace(
            session_id=SESSION_B, key="p1", seq=0, prompt=LONG_PROMPT, response="Because of eviction.",
            status="complete", started_at=at(2026, 1, 12, 9, 1), **stamps(at(2026, 1, 12, 9, 1)),
        )
        db.add(sub)
        db.add(newest)
        db.flush()
        db.add(ToolCall(trace_id=fix.id, tool_use_id="toolu_1", seq=0, name="Read",
                        input={"file_path": "/work/app/utils.py"}, output="def chunk(): ...", duration_ms=3))
        db.add(ToolCall(trace_id=fix.id, tool_use_id="toolu_3", seq=2, name="Edit",
                        input={"file_path": "/work/app/utils.py", "old_string": "n-1", "new_string": "n"},
                        output="ok", duration_ms=5))
        db.add(ToolCall(trace_id=fix.id, tool_use_id="toolu_2", seq=1, name="Bash",
                        input={"command": "pytest -q"}, output="1 failed", is_error=True, duration_ms=900))
        db.add(ToolCall(trace_id=sub.id, tool_use_id="toolu_4", seq=0, name="Grep",
                        input={"pattern": "chunk\\("}, output="a.py\nb.py"))
        return {"fix": fix.id, "sub": sub.id, "newest": newest.id}


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_list_json_newest_first_with_tool_counts(store):
    result = invoke("traces", "list", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["id"] for r in rows] == [store["newest"], store["sub"], store["fix"]]
    assert all(set(r) == LIST_KEYS for r in rows)
    newest, sub, fix = rows
    assert fix == {
        "id": store["fix"], "session_id": SESSION_A, "parent_id": None, "started_at": "2026-01-10T09:01:00+00:00",
        "status": "complete", "tool_calls": 3, "tool_errors": 1, "prompt_excerpt": "Fix the failing test in utils.py",
    }
    assert sub["parent_id"] == store["fix"] and sub["tool_calls"] == 1 and sub["tool_errors"] == 0
    assert newest["tool_calls"] == 0
    # Long prompts are cut to one line of at most 120 characters, marked with an ellipsis.
    assert len(newest["prompt_excerpt"]) == 120 and newest["prompt_excerpt"].endswith("…")
    assert newest["prompt_excerpt"].startswith("Explain [bold]why[/bold] the cache misses and what")


def test_list_limit_and_session_filter(store):
    rows = json.loads(invoke("traces", "list", "--json", "--limit", "1").stdout)
    assert [r["id"] for r in rows] == [store["newest"]]
    rows = json.loads(invoke("traces", "list", "--json", "--session", SESSION_A).stdout)
    assert [r["id"] for r in rows] == [store["sub"], store["fix"]]
    # The table shows 8 characters of a session id; that prefix is enough to filter by.
    rows = json.loads(invoke("traces", "list", "--json", "--session", SESSION_B[:8]).stdout)
    assert [r["id"] for r in rows] == [store["newest"]]
    assert json.loads(invoke("traces", "list", "--json", "--session", "nope").stdout) == []


def test_list_table(store):
    result = invoke("traces", "list")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Fix the failing test" in out
    assert "3 (1 err)" in out
    assert SESSION_A[:8] in out and SESSION_B[:8] in out
    # Prompt text is shown literally, never interpreted as rich markup.
    assert "[bold]why[/bold]" in out


def test_list_on_an_empty_store(ccrl_home):
    assert json.loads(invoke("traces", "list", "--json").stdout) == []
    result = invoke("traces", "list")
    assert result.exit_code == 0 and "No traces" in result.stdout


def test_show_json_is_the_trace_json_contract(store):
    result = invoke("traces", "show", str(store["fix"]), "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    with session_scope() as db:
        trace = db.get(Trace, store["fix"])
        calls = list(db.exec(select(ToolCall).where(ToolCall.trace_id == trace.id)).all())
        assert shown == json.loads(json.dumps(trace_json(trace, calls)))
    assert shown["tool_sequence"] == ["Read", "Bash", "Edit"]
    assert [c["is_error"] for c in shown["tool_calls"]] == [False, True, False]
    assert shown["reasoning"] == ["I'll read the test first.", "The range is off by one."]
    assert shown["signals"] == {"explored_before_edit": True}
    sub = json.loads(invoke("traces", "show", str(store["sub"]), "--json").stdout)
    assert sub["parent_id"] == store["fix"] and sub["agent_type"] == "Explore"


def test_show_human_form(store):
    result = invoke("traces", "show", str(store["fix"]))
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in ("Fix the failing test in utils.py", "I'll read the test first.", "The range is off by one.",
                 "Read", "Edit", "Fixed: the loop stopped one item early.", "explored_before_edit"):
        assert text in out
    bash_line = next(line for line in out.splitlines() if "Bash" in line)
    assert "✗ error" in bash_line
    read_line = next(line for line in out.splitlines() if "1. Read" in line)
    assert "error" not in read_line
    # Sections come in the documented order.
    positions = [out.index(word) for word in ("prompt", "reasoning", "tool calls", "response", "signals")]
    assert positions == sorted(positions)


def test_show_unknown_id_is_a_clear_error(store):
    result = invoke("traces", "show", "99999")
    assert result.exit_code == 1
    assert "no trace with id 99999" in result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.output
    assert invoke("traces", "show", "abc").exit_code == 2
