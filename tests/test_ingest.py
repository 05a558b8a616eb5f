"""Ingest: hook event streams + small transcripts → the exact traces and tool calls.

Hook payloads are the genuine shapes from ../shared/fixtures/claude-code/hook_payloads
(seeknal 2026-02: with ``tool_use_id``, ``agent_id``, ``agent_transcript_path``; attio 2025-08:
without ``tool_use_id``), re-pointed at this test's session, transcript and cwd. Events
Claude Code sends that no fixture holds (PostToolUseFailure, ``prompt_id``,
``last_assistant_message``, ``duration_ms``) are written by hand from
../shared/docs/claude-code.md. Events are stored as ``HookEvent`` rows (what the drain
produces) and ingest rebuilds the sessions that changed.
"""

from __future__ import annotations

import copy
import hashlib
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlmodel import Session as DBSession
from sqlmodel import select

from ccrl.agent.capture.ingest import rebuild_changed_sessions
from ccrl.agent.core.config import get_settings
from ccrl.agent.store.db import get_engine
from ccrl.agent.store.models import HookEvent, Quarantine, Session, ToolCall, Trace
from ccrl.agent.store.records import trace_json
from conftest import HOOK_PAYLOADS

T0 = datetime(2026, 2, 10, 10, 0, 0, tzinfo=timezone.utc)
SEEKNAL = HOOK_PAYLOADS / "seeknal_2026-02"
ATTIO = HOOK_PAYLOADS / "attio-mcp-server_2025-08"


def template(folder: Path, name: str, index: int = 0) -> dict:
    return copy.deepcopy(json.loads((folder / f"{name}.json").read_text())[index])


def iso(second: float) -> str:
    return (T0 + timedelta(seconds=second)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Scenario:
    """One Claude Code session: its transcript file (written line by line) and its hook events."""

    def __init__(self, tmp_path: Path, session_id: str = "5e55-0001", cwd: Path | None = None) -> None:
        self.session_id = session_id
        self.cwd = cwd or tmp_path / "project"
        self.cwd.mkdir(parents=True, exist_ok=True)
        folder = tmp_path / "claude" / "projects" / "-project"
        folder.mkdir(parents=True, exist_ok=True)
        self.transcript = folder / f"{session_id}.jsonl"
        self.n = 0

    # -- transcript lines (shapes of the genuine transcripts)

    def line(self, obj: dict | str) -> None:
        with open(self.transcript, "a") as fh:
            fh.write((obj if isinstance(obj, str) else json.dumps(obj)) + "\n")

    def _base(self, kind: str, uuid: str, second: float) -> dict:
        return {"type": kind, "uuid": uuid, "sessionId": self.session_id, "cwd": str(self.cwd),
                "version": "2.1.39", "gitBranch": "main", "isSidechain": False, "timestamp": iso(second)}

    def t_user(self, uuid: str, text: str, second: float) -> None:
        self.line({**self._base("user", uuid, second), "message": {"role": "user", "content": text}})

    def t_assistant(self, uuid: str, msg_id: str, block: dict, second: float) -> None:
        self.line({**self._base("assistant", uuid, second),
                   "message": {"id": msg_id, "model": "claude-opus-4-6", "role": "assistant", "content": [block]}})

    def t_result(self, uuid: str, tool_use_id: str, content: str, second: float, is_error: bool = False,
                 structured=None) -> None:
        block = {"type": "tool_result", "tool_use_id": tool_use_id, "content": content, "is_error": is_error}
        line = {**self._base("user", uuid, second), "message": {"role": "user", "content": [block]}}
        if structured is not None:
            line["toolUseResult"] = structured
        self.line(line)

    # -- hook events

    def event(self, payload: dict, second: float) -> None:
        payload = {**payload, "session_id": self.session_id, "transcript_path": str(self.transcript),
                   "cwd": str(self.cwd)}
        self.n += 1
        raw = json.dumps(payload, sort_keys=True)
        with DBSession(get_engine(get_settings())) as db:
            db.add(HookEvent(
                event_key=hashlib.sha256(f"{second}:{self.n}:{raw}".encode()).hexdigest(),
                received_at=T0 + timedelta(seconds=second),
                event=payload["hook_event_name"],
                session_id=self.session_id,
                tool_use_id=payload.get("tool_use_id"),
                prompt_id=payload.get("prompt_id"),
                agent_id=payload.get("agent_id"),
                payload=payload,
            ))
            db.commit()

    def prompt(self, text: str, second: float, **extra) -> None:
        payload = template(SEEKNAL, "user_prompt_submit")
        payload.update(prompt=text, **extra)
        self.event(payload, second)

    def pre(self, tool_use_id: str | None, name: str, tool_input: dict, second: float, **extra) -> None:
        payload = template(SEEKNAL, "pre_tool_use")
        payload.update(tool_name=name, tool_input=tool_input, tool_use_id=tool_use_id, **extra)
        if tool_use_id is None:
            del payload["tool_use_id"]
        self.event(payload, second)

    def post(self, tool_use_id: str | None, name: str, tool_input: dict, response, second: float, **extra) -> None:
        payload = template(SEEKNAL, "post_tool_use", 2)
        payload.update(tool_name=name, tool_input=tool_input, tool_response=response, tool_use_id=tool_use_id,
                       **extra)
        if tool_use_id is None:
            del payload["tool_use_id"]
        self.event(payload, second)

    def failure(self, tool_use_id: str, name: str, tool_input: dict, error: str, second: float,
                is_interrupt: bool = False, **extra) -> None:
        # No fixture holds PostToolUseFailure; fields per the hooks reference.
        payload = template(SEEKNAL, "post_tool_use", 2)
        del payload["tool_response"]
        payload.update(hook_event_name="PostToolUseFailure", tool_name=name, tool_input=tool_input,
                       tool_use_id=tool_use_id, error=error, is_interrupt=is_interrupt, duration_ms=31, **extra)
        self.event(payload, second)

    def stop(self, second: float, last_message: str | None = None, **extra) -> None:
        payload = template(SEEKNAL, "stop")
        if last_message is not None:
            payload["last_assistant_message"] = last_message
        payload.update(extra)
        self.event(payload, second)


def ingest_now():
    report = rebuild_changed_sessions(get_settings())
    assert report.errors == []
    return report


def traces_of(session_id: str) -> list[dict]:
    """The session's traces in the records.trace_json form, plus key/source/seq, in order."""
    with DBSession(get_engine(get_settings())) as db:
        traces = db.exec(select(Trace).where(Trace.session_id == session_id).order_by(Trace.seq)).all()
        out = []
        for trace in traces:
            calls = db.exec(select(ToolCall).where(ToolCall.trace_id == trace.id)).all()
            data = trace_json(trace, list(calls))
            data.update(key=trace.key, source=trace.source, seq=trace.seq, user_uuid=trace.user_uuid,
                        prompt_id=trace.prompt_id,
                        interrupts=[c.is_interrupt for c in sorted(calls, key=lambda c: c.seq)])
            out.append(data)
        return out


def all_counts() -> tuple[int, int]:
    with DBSession(get_engine(get_settings())) as db:
        return len(db.exec(select(Trace)).all()), len(db.exec(select(ToolCall)).all())


def test_hooks_and_transcript_of_one_turn_become_one_trace(ccrl_home, tmp_path):
    s = Scenario(tmp_path)
    # transcript: thinking, text and a call in one block-per-line message, then the answer
    s.t_user("u1", "where is the config loaded?", 0)
    s.t_assistant("a1", "msg_1", {"type": "thinking", "thinking": "Search for load_config.", "signature": "x"}, 1)
    s.t_assistant("a2", "msg_1", {"type": "text", "text": "Let me grep."}, 1.5)
    s.t_assistant("a3", "msg_1", {"type": "tool_use", "id": "toolu_G", "name": "Grep",
                                  "input": {"pattern": "load_config"}}, 2)
    s.t_result("r1", "toolu_G", "src/config.py:12", 3)
    s.t_assistant("a4", "msg_2", {"type": "text", "text": "In src/config.py, line 12."}, 4)
    # hooks (no prompt_id: Claude Code before 2.1.196)
    s.prompt("where is the config loaded?", 0.2)
    s.pre("toolu_G", "Grep", {"pattern": "load_config"}, 2.1)
    s.post("toolu_G", "Grep", {"pattern": "load_config"}, {"filenames": ["src/config.py"]}, 2.9, duration_ms=140)
    s.stop(4.2, last_message="In src/config.py, line 12.")

    report = ingest_now()
    assert (report.sessions, report.traces_created, report.tool_calls_created) == (1, 1, 1)
    [trace] = traces_of(s.session_id)
    assert trace["prompt"] == "where is the config loaded?"
    assert trace["reasoning"] == ["Search for load_config.", "Let me grep."]
    assert trace["response"] == "In src/config.py, line 12."
    assert trace["tool_calls"] == [{"id": "toolu_G", "name": "Grep", "input": {"pattern": "load_config"},
                                    "output": "src/config.py:12", "is_error": False, "duration_ms": 140}]
    assert [s_["kind"] for s_ in trace["steps"]] == ["thinking", "text", "tool_use", "tool_result", "text"]
    assert trace["status"] == "complete" and trace["source"] == "both"
    assert trace["key"] == "uuid:u1" and trace["user_uuid"] == "u1"
    assert trace["cwd"] == str(s.cwd) and trace["model"] == "claude-opus-4-6"
    assert trace["signals"]["tool_sequence"] == ["Grep"] and trace["parent_id"] is None
    with DBSession(get_engine(get_settings())) as db:
        session = db.get(Session, s.session_id)
        assert (session.source, session.project_path, session.cc_version) == ("both", str(s.cwd), "2.1.39")

    # nothing new: nothing rebuilt; forcing a rebuild (ingest state lost) changes nothing
    assert ingest_now().sessions == 0
    (ccrl_home / "ingest-state.json").unlink()
    again = ingest_now()
    assert (again.sessions, again.traces_created, again.traces_updated, again.tool_calls_created) == (1, 0, 1, 0)
    assert traces_of(s.session_id) == [trace]
    assert traces_of(s.session_id)[0]["id"] == trace["id"]
    assert all_counts() == (1, 1)


def test_parallel_calls_keep_call_order_whatever_the_arrival_order(ccrl_home, tmp_path):
    s = Scenario(tmp_path)
    s.transcript = tmp_path / "never-written.jsonl"  # hooks only
    s.prompt("read both files", 0)
    s.pre("toolu_A", "Read", {"file_path": "/p/a.py"}, 1.0)
    s.pre("toolu_B", "Read", {"file_path": "/p/b.py"}, 1.1)
    s.pre("toolu_C", "Grep", {"pattern": "x"}, 1.2)
    # PostToolUse hooks of parallel calls fire concurrently: they arrive C, A, B
    s.post("toolu_C", "Grep", {"pattern": "x"}, {"filenames": []}, 1.3, duration_ms=5)
    s.post("toolu_B", "Read", {"file_path": "/p/b.py"},
           {"type": "text", "file": {"filePath": "/p/b.py", "content": "B = 2"}}, 1.4, duration_ms=9)
    s.post("toolu_A", "Read", {"file_path": "/p/a.py"},
           {"type": "text", "file": {"filePath": "/p/a.py", "content": "A = 1"}}, 1.5, duration_ms=20)
    s.stop(2.0, last_message="A is 1 and B is 2.")

    ingest_now()
    [trace] = traces_of(s.session_id)
    assert trace["tool_sequence"] == ["Read", "Read", "Grep"]
    assert [(c["id"], c["output"], c["duration_ms"]) for c in trace["tool_calls"]] == [
        ("toolu_A", "A = 1", 20), ("toolu_B", "B = 2", 9), ("toolu_C", "{\"filenames\": []}", 5)]
    assert trace["response"] == "A is 1 and B is 2." and trace["reasoning"] == []
    assert trace["status"] == "complete" and trace["source"] == "hook"
    assert trace["key"].startswith("hook:")
    with DBSession(get_engine(get_settings())) as db:
        assert db.get(Session, s.session_id).source == "hook"


def test_failed_and_interrupted_calls(ccrl_home, tmp_path):
    s = Scenario(tmp_path)
    s.transcript = tmp_path / "never-written.jsonl"
    s.prompt("fix the typo", 0)
    s.pre("toolu_E", "Edit", {"file_path": "/p/a.py", "old_string": "teh", "new_string": "the"}, 1)
    s.failure("toolu_E", "Edit", {"file_path": "/p/a.py", "old_string": "teh", "new_string": "the"},
              "String to replace not found in file.", 2)
    s.pre("toolu_B", "Bash", {"command": "pytest -x"}, 3)
    s.failure("toolu_B", "Bash", {"command": "pytest -x"}, "Command exited with code 1", 4)
    s.stop(5, last_message="The typo is not in a.py; tests fail for another reason.")
    s.prompt("run the slow tests", 10)
    s.pre("toolu_S", "Bash", {"command": "pytest -m slow"}, 11)
    s.failure("toolu_S", "Bash", {"command": "pytest -m slow"}, "Interrupted by user", 12, is_interrupt=True)

    ingest_now()
    first, second = traces_of(s.session_id)
    assert [(c["id"], c["is_error"], c["output"], c["duration_ms"]) for c in first["tool_calls"]] == [
        ("toolu_E", True, "String to replace not found in file.", 31),
        ("toolu_B", True, "Command exited with code 1", 31),
    ]
    assert first["status"] == "complete" and first["interrupts"] == [False, False]
    assert [r["is_error"] for r in first["steps"] if r["kind"] == "tool_result"] == [True, True]
    assert second["prompt"] == "run the slow tests"
    assert second["tool_calls"][0]["is_error"] is True and second["interrupts"] == [True]
    assert second["status"] == "interrupted" and second["response"] == ""
    assert (first["seq"], second["seq"]) == (0, 1)


def test_stop_before_the_transcript_is_complete_then_the_same_trace_is_completed(ccrl_home, tmp_path):
    s = Scenario(tmp_path)
    # what Claude Code had written when Stop fired: the final message is missing
    s.t_user("u1", "summarise the README", 0)
    s.t_assistant("a1", "msg_1", {"type": "thinking", "thinking": "Read it first.", "signature": "x"}, 1)
    s.t_assistant("a2", "msg_1", {"type": "tool_use", "id": "toolu_R", "name": "Read",
                                  "input": {"file_path": "/p/README.md"}}, 2)
    s.prompt("summarise the README", 0.1)
    s.pre("toolu_R", "Read", {"file_path": "/p/README.md"}, 2.1)
    s.post("toolu_R", "Read", {"file_path": "/p/README.md"},
           {"type": "text", "file": {"filePath": "/p/README.md", "content": "# ccrl\nLearns from sessions."}},
           2.5, duration_ms=7)
    s.stop(4, last_message="It is a tool that learns from Claude Code sessions.")

    ingest_now()
    [lagging] = traces_of(s.session_id)
    assert lagging["response"] == "It is a tool that learns from Claude Code sessions."
    assert lagging["reasoning"] == ["Read it first."]
    assert lagging["status"] == "complete" and lagging["source"] == "both"
    # the hooks' result fills the gap, after the call; Stop's message stands in for the answer
    assert [(st["kind"], st.get("message_id")) for st in lagging["steps"]] == [
        ("thinking", "msg_1"), ("tool_use", "msg_1"), ("tool_result", None), ("text", None)]
    assert lagging["tool_calls"][0]["output"] == "# ccrl\nLearns from sessions."

    # Claude Code catches up; no new hook event arrives, the transcript changed
    s.t_result("r1", "toolu_R", "     1→# ccrl\n     2→Learns from sessions.", 3)
    s.t_assistant("a3", "msg_2", {"type": "text", "text": "ccrl learns a local model from your sessions."}, 5)
    report = ingest_now()
    assert (report.sessions, report.traces_created, report.traces_updated) == (1, 0, 1)
    [done] = traces_of(s.session_id)
    assert done["id"] == lagging["id"] and done["key"] == lagging["key"] == "uuid:u1"
    assert done["response"] == "ccrl learns a local model from your sessions."
    assert [(st["kind"], st.get("message_id")) for st in done["steps"]] == [
        ("thinking", "msg_1"), ("tool_use", "msg_1"), ("tool_result", None), ("text", "msg_2")]
    assert done["tool_calls"][0]["output"] == "     1→# ccrl\n     2→Learns from sessions."
    assert done["tool_calls"][0]["duration_ms"] == 7
    assert all_counts() == (1, 1)


@pytest.mark.parametrize("with_prompt_id", [True, False])
def test_hook_only_trace_merges_with_the_transcript_that_appears_later(ccrl_home, tmp_path, with_prompt_id):
    s = Scenario(tmp_path)
    extra = {"prompt_id": "prm_1"} if with_prompt_id else {}
    s.prompt("add a --json flag", 0, **extra)
    s.pre("toolu_1", "Read", {"file_path": "/p/cli.py"}, 1, **extra)
    s.post("toolu_1", "Read", {"file_path": "/p/cli.py"}, {"type": "text", "file": {"content": "app = X"}}, 2,
           duration_ms=3, **extra)
    s.stop(3, last_message="Added.", **extra)
    assert not s.transcript.exists()
    ingest_now()
    [hook_only] = traces_of(s.session_id)
    assert hook_only["source"] == "hook"
    assert hook_only["key"] == ("prompt:prm_1" if with_prompt_id else hook_only["key"])
    assert hook_only["key"].startswith("prompt:" if with_prompt_id else "hook:")
    assert (hook_only["response"], hook_only["reasoning"]) == ("Added.", [])

    # the transcript shows up (e.g. found again after the rebuild) with the same turn
    s.t_user("u9", "add a --json flag", 0.1)
    s.t_assistant("a1", "msg_1", {"type": "text", "text": "Reading the CLI."}, 0.5)
    s.t_assistant("a2", "msg_1", {"type": "tool_use", "id": "toolu_1", "name": "Read",
                                  "input": {"file_path": "/p/cli.py"}}, 0.9)
    s.t_result("r1", "toolu_1", "app = X", 2)
    s.t_assistant("a3", "msg_2", {"type": "text", "text": "Added the --json flag."}, 2.9)
    report = ingest_now()
    assert report.traces_created == 0
    [merged] = traces_of(s.session_id)
    assert merged["id"] == hook_only["id"] and merged["key"] == hook_only["key"]
    assert merged["source"] == "both" and merged["user_uuid"] == "u9"
    assert merged["prompt_id"] == ("prm_1" if with_prompt_id else None)
    assert (merged["reasoning"], merged["response"]) == (["Reading the CLI."], "Added the --json flag.")
    assert merged["tool_calls"][0]["duration_ms"] == 3
    assert all_counts() == (1, 1)

    # Claude Code deletes old transcripts: nothing the transcript gave is lost
    s.transcript.unlink()
    s.stop(9, last_message="Added.", **extra)  # a new event forces a rebuild without transcript
    ingest_now()
    [kept] = traces_of(s.session_id)
    assert (kept["reasoning"], kept["response"], kept["steps"]) == (merged["reasoning"], merged["response"],
                                                                     merged["steps"])
    assert kept["source"] == "both"


def test_import_merges_with_hook_captured_data_of_the_same_session(ccrl_home, tmp_path):
    from ccrl.agent.capture.importer import import_transcripts

    s = Scenario(tmp_path)
    s.prompt("list the tests", 0)
    s.pre("toolu_1", "Glob", {"pattern": "tests/*.py"}, 1)
    s.post("toolu_1", "Glob", {"pattern": "tests/*.py"}, {"filenames": ["tests/a.py"]}, 2, duration_ms=8)
    s.stop(3, last_message="One test file.")
    ingest_now()
    [hook_only] = traces_of(s.session_id)
    # the transcript is imported later from a copy elsewhere (e.g. a backup of ~/.claude)
    s.t_user("u1", "list the tests", 0.1)
    s.t_assistant("a1", "msg_1", {"type": "thinking", "thinking": "Glob for tests.", "signature": "x"}, 0.5)
    s.t_assistant("a2", "msg_1", {"type": "tool_use", "id": "toolu_1", "name": "Glob",
                                  "input": {"pattern": "tests/*.py"}}, 0.9)
    s.t_result("r1", "toolu_1", "tests/a.py", 2)
    s.t_assistant("a3", "msg_2", {"type": "text", "text": "There is one test file, tests/a.py."}, 2.9)
    backup = tmp_path / "backup"
    backup.mkdir()
    copy_of = backup / s.transcript.name
    copy_of.write_bytes(s.transcript.read_bytes())
    s.transcript.unlink()
    report = import_transcripts(backup)
    assert (report.sessions, report.traces_created, report.traces_updated) == (1, 0, 1)
    [merged] = traces_of(s.session_id)
    assert merged["id"] == hook_only["id"] and merged["source"] == "both"
    assert (merged["reasoning"], merged["response"]) == (["Glob for tests."], "There is one test file, tests/a.py.")
    assert merged["tool_calls"][0]["duration_ms"] == 8
    assert all_counts() == (1, 1)


def test_two_prompts_with_prompt_ids_are_two_traces(ccrl_home, tmp_path):
    s = Scenario(tmp_path)
    s.t_user("u1", "first", 0)
    s.t_assistant("a1", "msg_1", {"type": "text", "text": "one"}, 1)
    s.t_user("u2", "first", 10)  # same text again: the prompt_id tells them apart
    s.t_assistant("a2", "msg_2", {"type": "tool_use", "id": "toolu_2", "name": "Bash",
                                  "input": {"command": "ls"}}, 11)
    s.t_result("r2", "toolu_2", "a b", 12)
    s.t_assistant("a3", "msg_3", {"type": "text", "text": "two"}, 13)
    s.prompt("first", 0.1, prompt_id="p1")
    s.stop(1.1, last_message="one", prompt_id="p1")
    s.prompt("first", 10.1, prompt_id="p2")
    s.pre("toolu_2", "Bash", {"command": "ls"}, 11.1, prompt_id="p2")
    s.post("toolu_2", "Bash", {"command": "ls"}, {"stdout": "a b", "stderr": ""}, 11.9, prompt_id="p2",
           duration_ms=4)
    s.stop(13.1, last_message="two", prompt_id="p2")
    ingest_now()
    first, second = traces_of(s.session_id)
    assert [(t["key"], t["prompt_id"], t["user_uuid"], t["response"]) for t in (first, second)] == [
        ("prompt:p1", "p1", "u1", "one"), ("prompt:p2", "p2", "u2", "two")]
    assert second["tool_calls"][0]["duration_ms"] == 4 and first["tool_calls"] == []


def test_calls_without_tool_use_id_pair_up_and_take_the_transcript_id(ccrl_home, tmp_path):
    # Claude Code of mid-2025 (attio fixture): no tool_use_id in tool hooks.
    s = Scenario(tmp_path)
    pre = template(ATTIO, "pre_tool_use")
    post = template(ATTIO, "post_tool_use")
    assert "tool_use_id" not in pre and "tool_use_id" not in post
    s.prompt("read tasks.ts", 0)
    pre.update(tool_input={"file_path": "/p/tasks.ts"})
    post.update(tool_input={"file_path": "/p/tasks.ts"})
    s.event(pre, 1)
    s.event(post, 2)
    s.stop(3, last_message="It lists tasks.")
    ingest_now()
    [hook_only] = traces_of(s.session_id)
    [call] = hook_only["tool_calls"]
    assert call["id"].startswith("hook:") and call["name"] == "Read"
    assert "Task operations for Attio" in call["output"]

    s.t_user("u1", "read tasks.ts", 0.1)
    s.t_assistant("a1", "msg_1", {"type": "tool_use", "id": "toolu_real", "name": "Read",
                                  "input": {"file_path": "/p/tasks.ts"}}, 0.9)
    s.t_result("r1", "toolu_real", "export async function listTasks", 2)
    s.t_assistant("a2", "msg_2", {"type": "text", "text": "It lists tasks."}, 2.9)
    ingest_now()
    [merged] = traces_of(s.session_id)
    assert [c["id"] for c in merged["tool_calls"]] == ["toolu_real"]
    assert merged["tool_calls"][0]["output"] == "export async function listTasks"
    assert all_counts() == (1, 1)


def test_subagent_from_hooks_and_its_agent_transcript(ccrl_home, tmp_path):
    s = Scenario(tmp_path)
    agent_file = s.transcript.with_suffix("") / "subagents" / "agent-afafec1.jsonl"
    agent_file.parent.mkdir(parents=True)
    # main transcript: a Task call whose result names the agent
    s.t_user("u1", "have a subagent check the docs", 0)
    s.t_assistant("a1", "msg_1", {"type": "tool_use", "id": "toolu_T", "name": "Task",
                                  "input": {"description": "docs", "prompt": "Check docs/ for broken links",
                                            "subagent_type": "general-purpose"}}, 1)
    s.t_result("r1", "toolu_T", "No broken links.", 8,
               structured={"status": "completed", "agentId": "afafec1", "prompt": "Check docs/ for broken links"})
    s.t_assistant("a2", "msg_2", {"type": "text", "text": "The docs are fine."}, 9)
    side = {"isSidechain": True, "agentId": "afafec1", "sessionId": s.session_id, "cwd": str(s.cwd)}
    for obj in [
        {"type": "user", "uuid": "x1", "timestamp": iso(2),
         "message": {"role": "user", "content": "Check docs/ for broken links"}},
        {"type": "assistant", "uuid": "x2", "timestamp": iso(3), "message": {
            "id": "msg_x", "model": "claude-haiku-4-5", "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_L", "name": "Grep", "input": {"pattern": "]("}}]}},
        {"type": "user", "uuid": "x3", "timestamp": iso(4), "message": {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_L", "content": "docs/a.md:3"}]}},
        {"type": "assistant", "uuid": "x4", "timestamp": iso(5), "message": {
            "id": "msg_y", "model": "claude-haiku-4-5", "role": "assistant",
            "content": [{"type": "text", "text": "No broken links."}]}},
    ]:
        with open(agent_file, "a") as fh:
            fh.write(json.dumps({**obj, **side}) + "\n")
    # hooks: the subagent's own tool events carry agent_id; SubagentStop names its transcript
    s.prompt("have a subagent check the docs", 0.1)
    s.pre("toolu_T", "Task", {"description": "docs", "prompt": "Check docs/ for broken links",
                              "subagent_type": "general-purpose"}, 1.1)
    s.event({"hook_event_name": "SubagentStart", "agent_id": "afafec1", "agent_type": "general-purpose"}, 1.5)
    s.pre("toolu_L", "Grep", {"pattern": "]("}, 3.1, agent_id="afafec1", agent_type="general-purpose")
    s.post("toolu_L", "Grep", {"pattern": "]("}, {"filenames": ["docs/a.md"]}, 3.9, agent_id="afafec1",
           agent_type="general-purpose", duration_ms=12)
    stop = template(SEEKNAL, "subagent_stop")
    stop.update(agent_id="afafec1", agent_type="general-purpose", agent_transcript_path=str(agent_file),
                last_assistant_message="No broken links.")
    s.event(stop, 7)
    s.post("toolu_T", "Task", {"description": "docs", "prompt": "Check docs/ for broken links",
                               "subagent_type": "general-purpose"},
           {"status": "completed", "agentId": "afafec1", "content": [{"type": "text", "text": "No broken links."}]},
           7.9, duration_ms=6800)
    s.stop(9.1, last_message="The docs are fine.")

    ingest_now()
    main, sub = traces_of(s.session_id)
    assert main["prompt"] == "have a subagent check the docs" and main["tool_sequence"] == ["Task"]
    assert main["tool_calls"][0]["duration_ms"] == 6800
    assert sub["parent_id"] == main["id"]
    assert (sub["agent_id"], sub["agent_type"], sub["key"]) == ("afafec1", "general-purpose", "agent:afafec1")
    assert sub["prompt"] == "Check docs/ for broken links"
    assert [(c["id"], c["duration_ms"], c["output"]) for c in sub["tool_calls"]] == [("toolu_L", 12, "docs/a.md:3")]
    assert sub["response"] == "No broken links." and sub["source"] == "both"
    ingest_now()
    assert all_counts() == (2, 2)


def test_older_hooks_without_agent_id_put_subagent_calls_in_the_subagent_trace(ccrl_home, tmp_path):
    # Claude Code 2.0.x: a subagent's tool hooks carry no agent_id, its transcript is an inline
    # sidechain. The calls belong to the subagent's trace, with the hooks' durations, even when
    # the hooks were ingested first and filed them under the main turn.
    s = Scenario(tmp_path)
    s.prompt("ask a subagent", 0.1)
    s.pre("toolu_T", "Task", {"prompt": "List the files", "subagent_type": "general-purpose"}, 1.1)
    s.pre("toolu_L", "Bash", {"command": "ls"}, 3.1)
    s.post("toolu_L", "Bash", {"command": "ls"}, {"stdout": "a.py", "stderr": ""}, 3.9, duration_ms=15)
    s.post("toolu_T", "Task", {"prompt": "List the files"}, {"content": [{"type": "text", "text": "a.py"}]}, 5.9,
           duration_ms=4800)
    s.stop(7.1, last_message="There is a.py.")
    ingest_now()
    [hook_only] = traces_of(s.session_id)
    assert hook_only["tool_sequence"] == ["Task", "Bash"]

    s.t_user("u1", "ask a subagent", 0)
    s.t_assistant("a1", "msg_1", {"type": "tool_use", "id": "toolu_T", "name": "Task",
                                  "input": {"prompt": "List the files", "subagent_type": "general-purpose"}}, 1)
    side = {"isSidechain": True, "sessionId": s.session_id, "cwd": str(s.cwd)}
    for obj in [
        {"type": "user", "uuid": "x1", "parentUuid": None, "timestamp": iso(2),
         "message": {"role": "user", "content": "List the files"}},
        {"type": "assistant", "uuid": "x2", "parentUuid": "x1", "timestamp": iso(3), "message": {
            "id": "msg_x", "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_L", "name": "Bash", "input": {"command": "ls"}}]}},
        {"type": "user", "uuid": "x3", "parentUuid": "x2", "timestamp": iso(4), "message": {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_L", "content": "a.py"}]}},
        {"type": "assistant", "uuid": "x4", "parentUuid": "x3", "timestamp": iso(5), "message": {
            "id": "msg_y", "role": "assistant", "content": [{"type": "text", "text": "a.py"}]}},
    ]:
        s.line({**obj, **side})
    s.t_result("r1", "toolu_T", "a.py", 6)
    s.t_assistant("a2", "msg_2", {"type": "text", "text": "There is a.py."}, 7)
    ingest_now()
    main, sub = traces_of(s.session_id)
    assert main["id"] == hook_only["id"]
    assert [(c["id"], c["duration_ms"]) for c in main["tool_calls"]] == [("toolu_T", 4800)]
    assert [st.get("tool_use_id") for st in main["steps"] if st["kind"] in ("tool_use", "tool_result")] == [
        "toolu_T", "toolu_T"]
    assert [(c["id"], c["duration_ms"], c["output"]) for c in sub["tool_calls"]] == [("toolu_L", 15, "a.py")]
    assert sub["parent_id"] == main["id"] and sub["key"] == "agent:uuid:x1"
    assert all_counts() == (2, 2)


def test_subagent_seen_by_hooks_only(ccrl_home, tmp_path):
    s = Scenario(tmp_path)
    s.transcript = tmp_path / "never-written.jsonl"
    s.prompt("explore", 0)
    s.pre("toolu_T", "Agent", {"prompt": "Map the repo", "subagent_type": "Explore"}, 1)
    s.event({"hook_event_name": "SubagentStart", "agent_id": "a77", "agent_type": "Explore"}, 1.2)
    s.pre("toolu_G", "Glob", {"pattern": "**/*"}, 2, agent_id="a77", agent_type="Explore")
    s.post("toolu_G", "Glob", {"pattern": "**/*"}, {"filenames": ["a"]}, 2.5, agent_id="a77", agent_type="Explore")
    s.event({"hook_event_name": "SubagentStop", "agent_id": "a77", "agent_type": "Explore",
             "last_assistant_message": "One file: a.", "agent_transcript_path": str(tmp_path / "gone.jsonl")}, 3)
    s.post("toolu_T", "Agent", {"prompt": "Map the repo", "subagent_type": "Explore"},
           {"status": "completed", "agentId": "a77", "content": [{"type": "text", "text": "One file: a."}]}, 3.5)
    s.stop(4, last_message="The repo holds a.")
    ingest_now()
    main, sub = traces_of(s.session_id)
    assert main["tool_sequence"] == ["Agent"] and sub["tool_sequence"] == ["Glob"]
    assert (sub["parent_id"], sub["prompt"], sub["response"], sub["agent_type"]) == (
        main["id"], "Map the repo", "One file: a.", "Explore")


def test_hooks_installed_mid_turn_join_the_transcript_turn(ccrl_home, tmp_path):
    # The prompt was submitted before the hooks were installed: the hooks see a call and Stop.
    s = Scenario(tmp_path)
    s.t_user("u1", "tidy the imports", 0)
    s.t_assistant("a1", "msg_1", {"type": "tool_use", "id": "toolu_1", "name": "Read",
                                  "input": {"file_path": "/p/m.py"}}, 1)
    s.t_result("r1", "toolu_1", "import os", 2)
    s.t_assistant("a2", "msg_2", {"type": "text", "text": "Tidied."}, 8)
    s.t_user("u2", "thanks", 20)
    s.t_assistant("a3", "msg_3", {"type": "text", "text": "You're welcome."}, 21)
    s.stop(8.5, last_message="Tidied.")
    s.prompt("thanks", 20.1)
    s.stop(21.5, last_message="You're welcome.")
    ingest_now()
    first, second = traces_of(s.session_id)
    assert (first["prompt"], first["response"], first["source"]) == ("tidy the imports", "Tidied.", "both")
    assert (second["prompt"], second["response"], second["source"]) == ("thanks", "You're welcome.", "both")
    assert all_counts() == (2, 1)


def test_corrupt_transcript_line_is_quarantined_and_the_rest_ingested(ccrl_home, tmp_path):
    s = Scenario(tmp_path)
    s.t_user("u1", "hello", 0)
    s.line("{not json at all")
    s.t_assistant("a1", "msg_1", {"type": "text", "text": "hi"}, 1)
    s.prompt("hello", 0.1)
    s.stop(1.5, last_message="hi")
    report = ingest_now()
    assert report.corrupt_lines == 1
    [trace] = traces_of(s.session_id)
    assert (trace["response"], trace["source"]) == ("hi", "both")
    with DBSession(get_engine(get_settings())) as db:
        [row] = db.exec(select(Quarantine)).all()
        assert row.source == str(s.transcript) and row.reason.startswith("line 2: invalid JSON")


def test_secrets_never_reach_the_store(ccrl_home, tmp_path):
    token = "sk-ant-api03-" + "x" * 40
    s = Scenario(tmp_path)
    s.t_user("u1", f"use {token}", 0)
    s.t_assistant("a1", "msg_1", {"type": "tool_use", "id": "toolu_1", "name": "Bash",
                                  "input": {"command": f"curl -H 'x-api-key: {token}' api"}}, 1)
    s.t_result("r1", "toolu_1", f"echo {token}", 2)
    s.t_assistant("a2", "msg_2", {"type": "text", "text": f"Used {token}."}, 3)
    s.prompt(f"use {token}", 0.1)
    s.stop(3.5, last_message=f"Used {token}.")
    ingest_now()
    dumped = json.dumps(traces_of(s.session_id))
    assert token not in dumped and "[REDACTED:anthropic_key]" in dumped


def test_opted_out_project_is_not_rebuilt(ccrl_home, tmp_path):
    s = Scenario(tmp_path)
    (s.cwd / ".ccrl-ignore").write_text("")
    s.t_user("u1", "private", 0)
    s.prompt("private", 0.1)
    report = ingest_now()
    assert (report.sessions, report.sessions_ignored) == (0, 1)
    assert traces_of(s.session_id) == []



def test_ingest_end_to_end_from_the_real_hook_command(ccrl_home, tmp_path):
    """Events go through the installed hook command (sh -c, as Claude Code runs it) into the
    inbox; ingest() drains them and builds the trace with the transcript."""
    import subprocess

    from ccrl.agent.capture.drain import ensure_local_stores
    from ccrl.agent.capture.ingest import ingest
    from ccrl.hooks.capture import hook_command

    settings = get_settings()
    ensure_local_stores(settings)
    command = hook_command(str(ccrl_home))
    s = Scenario(tmp_path, session_id="e2e-0001")
    now = datetime.now(timezone.utc)
    stamp = lambda dt: (now + timedelta(seconds=dt)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"  # noqa: E731
    s.line({**s._base("user", "u1", 0), "timestamp": stamp(0),
            "message": {"role": "user", "content": "count the lines of a.txt"}})
    s.line({**s._base("assistant", "a1", 0), "timestamp": stamp(1), "message": {
        "id": "msg_1", "role": "assistant", "model": "claude-opus-4-6",
        "content": [{"type": "tool_use", "id": "toolu_W", "name": "Bash", "input": {"command": "wc -l a.txt"}}]}})
    s.line({**s._base("user", "r1", 0), "timestamp": stamp(2), "message": {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_W", "content": "3 a.txt"}]}})
    s.line({**s._base("assistant", "a2", 0), "timestamp": stamp(3), "message": {
        "id": "msg_2", "role": "assistant", "model": "claude-opus-4-6",
        "content": [{"type": "text", "text": "a.txt has 3 lines."}]}})

    def fire(payload: dict) -> None:
        payload = {**payload, "session_id": s.session_id, "transcript_path": str(s.transcript), "cwd": str(s.cwd)}
        done = subprocess.run(["sh", "-c", command], input=json.dumps(payload).encode(), capture_output=True,
                              timeout=30, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
        assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")

    ups = template(SEEKNAL, "user_prompt_submit")
    fire({**ups, "prompt": "count the lines of a.txt"})
    pre = template(SEEKNAL, "pre_tool_use")
    fire({**pre, "tool_name": "Bash", "tool_input": {"command": "wc -l a.txt"}, "tool_use_id": "toolu_W"})
    post = template(SEEKNAL, "post_tool_use", 2)
    fire({**post, "tool_name": "Bash", "tool_input": {"command": "wc -l a.txt"}, "tool_use_id": "toolu_W",
          "tool_response": {"stdout": "3 a.txt", "stderr": ""}, "duration_ms": 11})
    fire({**template(SEEKNAL, "stop"), "last_assistant_message": "a.txt has 3 lines."})

    report = ingest(settings)
    assert report.errors == []
    assert report.drain["stored"] == 4
    assert (report.sessions, report.traces_created, report.tool_calls_created) == (1, 1, 1)
    [trace] = traces_of(s.session_id)
    assert (trace["prompt"], trace["response"], trace["source"], trace["status"]) == (
        "count the lines of a.txt", "a.txt has 3 lines.", "both", "complete")
    assert trace["tool_calls"] == [{"id": "toolu_W", "name": "Bash", "input": {"command": "wc -l a.txt"},
                                    "output": "3 a.txt", "is_error": False, "duration_ms": 11}]
    again = ingest(settings)
    assert (again.drain["stored"], again.sessions, again.traces_created) == (0, 0, 0)

    from typer.testing import CliRunner

    from ccrl.agent.cli import app

    fire({**template(SEEKNAL, "stop"), "last_assistant_message": "a.txt has 3 lines."})  # a late duplicate Stop
    result = CliRunner().invoke(app, ["ingest", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["drain"]["stored"], data["sessions"], data["traces_created"], data["errors"]) == (1, 1, 0, [])
    assert traces_of(s.session_id) == [trace]
