"""Every genuine Claude Code transcript (1.0.98 to 2.1.39) imports, with the right counts.

Expected numbers never come from the parser under test:

- tool calls and tool errors: :func:`scan`, a few lines that collect ``tool_use`` block ids of
  assistant lines and ``tool_result`` blocks flagged ``is_error`` of user lines;
- traces: hand-checked constants (:data:`EXPECTED_TRACES`), each explained below from reading
  the file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sqlmodel import Session as DBSession
from sqlmodel import select
from typer.testing import CliRunner

from ccrl.agent.capture.importer import import_transcripts
from ccrl.agent.core.config import get_settings
from ccrl.agent.store.db import get_engine
from ccrl.agent.store.models import Quarantine, ToolCall, Trace
from conftest import TRANSCRIPTS

# file → (main-conversation traces, subagent traces), checked by reading each transcript:
EXPECTED_TRACES = {
    # "how are you doing"; /clear and /compact are local commands, the summary is not a prompt
    "agentlogs/compact.jsonl": (1, 0),
    "agentlogs/crud.jsonl": (1, 0),
    "agentlogs/images.jsonl": (1, 0),
    # one prompt; one inline sidechain (Task → "Hey there! Just checking in…")
    "agentlogs/subagent.jsonl": (1, 1),
    "agentlogs/todos.jsonl": (1, 0),
    # /init: one prompt (the expanded command text)
    "claude-code-viewer/1af7fc5e-8455-4414-9ccd-011d40f70b2a.jsonl": (1, 0),
    # /orchestrator; three Task calls, one rejected by input validation → two sidechains
    "claude-code-viewer/5c0375b4-57a5-4f26-b12d-d022ee4e51b7.jsonl": (1, 2),
    # /orchestrator + "Thanks! Please update CLAUDE.md…"; five inline sidechains
    "claude-code-viewer/fe5e1c67-53e7-4862-81ae-d0e013e3270b.jsonl": (2, 5),
    # "Work on bead…", "continue", a <task-notification> turn; subagents/agent-a2898e3 (Explore)
    # and agent-acompact-e1f845 (Claude Code's compaction run)
    "spotter/4d5611e5-241a-462a-8d15-5122611a9569.jsonl": (3, 2),
    "spotter/short.jsonl": (1, 0),  # /model is local
    # a plugin slash command + "create the beads"; its subagent wrote no agent file here
    "spotter/subagent.jsonl": (2, 0),
    "spotter/tool_heavy.jsonl": (2, 0),  # /mcp is local
}

MAIN_FILES = sorted(
    p.relative_to(TRANSCRIPTS).as_posix() for p in TRANSCRIPTS.rglob("*.jsonl") if "subagents" not in p.parts
)


def scan(paths: list[Path]) -> tuple[set[str], set[str]]:
    """(tool_use ids, ids of tool results flagged is_error) — independent of the parser."""
    uses, errors = set(), set()
    for path in paths:
        for line in open(path, encoding="utf-8"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            content = (obj.get("message") or {}).get("content")
            for block in content if isinstance(content, list) else []:
                if obj.get("type") == "assistant" and block.get("type") == "tool_use":
                    uses.add(block["id"])
                if obj.get("type") == "user" and block.get("type") == "tool_result" and block.get("is_error"):
                    errors.add(block["tool_use_id"])
    return uses, errors


def session_files(rel: str) -> list[Path]:
    main = TRANSCRIPTS / rel
    return [main, *sorted((main.parent / main.stem / "subagents").glob("agent-*.jsonl"))]


def stored(session_id: str | None = None) -> tuple[list[Trace], list[ToolCall]]:
    with DBSession(get_engine(get_settings())) as db:
        query = select(Trace)
        if session_id is not None:
            query = query.where(Trace.session_id == session_id)
        traces = list(db.exec(query).all())
        ids = [t.id for t in traces]
        calls = list(db.exec(select(ToolCall).where(ToolCall.trace_id.in_(ids))).all()) if ids else []
        for row in traces + calls:
            db.expunge(row)
    return traces, calls


def test_every_fixture_is_listed():
    assert MAIN_FILES == sorted(EXPECTED_TRACES), "a fixture transcript has no hand-checked expectation"


@pytest.mark.parametrize("rel", MAIN_FILES)
def test_fixture_imports_with_expected_counts(ccrl_home, rel):
    files = session_files(rel)
    uses, errors = scan(files)
    main_expected, sub_expected = EXPECTED_TRACES[rel]

    report = import_transcripts(TRANSCRIPTS / rel)
    assert report.errors == []
    assert (report.sessions, report.files) == (1, len(files))
    assert report.skipped_lines == 0

    traces, calls = stored()
    subs = [t for t in traces if t.parent_id is not None or t.agent_id or t.key.startswith("agent:")]
    assert (len(traces) - len(subs), len(subs)) == (main_expected, sub_expected)
    assert report.traces == len(traces) and report.subagent_traces == len(subs)
    assert {c.tool_use_id for c in calls} == uses
    assert {c.tool_use_id for c in calls if c.is_error} == errors
    assert report.tool_calls == len(uses) and report.tool_errors == len(errors)
    assert all(t.source == "transcript" and t.signals["tool_sequence"] == [s["name"] for s in t.steps if s["kind"] == "tool_use"]
               for t in traces)  # signals are extracted when a trace is finalised
    for trace in traces:
        assert trace.prompt.strip(), f"trace {trace.key} has no prompt"
        # calls in the assistant's order: seq follows the order of tool_use steps
        order = [s["tool_use_id"] for s in trace.steps if s["kind"] == "tool_use"]
        seqs = sorted((c for c in calls if c.trace_id == trace.id), key=lambda c: c.seq)
        assert [c.tool_use_id for c in seqs] == order
        assert [c.seq for c in seqs] == list(range(len(seqs)))


def test_import_tree_is_idempotent_and_links_subagents(ccrl_home):
    first = import_transcripts(TRANSCRIPTS)
    assert first.errors == []
    traces1, calls1 = stored()
    assert first.traces_created == len(traces1) == sum(m + s for m, s in EXPECTED_TRACES.values())

    again = import_transcripts(TRANSCRIPTS)
    traces2, calls2 = stored()
    assert again.errors == [] and again.traces_created == 0 and again.tool_calls_created == 0
    assert (again.traces, again.tool_calls, again.tool_errors) == (first.traces, first.tool_calls, first.tool_errors)
    assert sorted((t.id, t.session_id, t.key) for t in traces1) == sorted((t.id, t.session_id, t.key) for t in traces2)
    assert sorted((c.id, c.tool_use_id, c.trace_id, c.seq) for c in calls1) == sorted(
        (c.id, c.tool_use_id, c.trace_id, c.seq) for c in calls2
    )

    # Each subagent trace points at the trace holding the call that started it. The spawning
    # call is found here from the raw files: an inline sidechain's first prompt equals the
    # Task input's "prompt"; a 2.1 agent file is named by the Task result's toolUseResult.agentId.
    spawner_by_prompt: dict[str, str] = {}
    spawner_by_agent: dict[str, str] = {}
    for path in TRANSCRIPTS.rglob("*.jsonl"):
        for line in open(path, encoding="utf-8"):
            obj = json.loads(line)
            content = (obj.get("message") or {}).get("content")
            for block in content if isinstance(content, list) else []:
                if obj.get("type") == "assistant" and block.get("type") == "tool_use" and block["name"] in ("Task", "Agent"):
                    spawner_by_prompt[" ".join(str(block["input"].get("prompt", "")).split())] = block["id"]
                if obj.get("type") == "user" and block.get("type") == "tool_result":
                    result = obj.get("toolUseResult")
                    if isinstance(result, dict) and result.get("agentId"):
                        spawner_by_agent[result["agentId"]] = block["tool_use_id"]
    owner = {c.tool_use_id: c.trace_id for c in calls2}
    by_id = {t.id: t for t in traces2}
    subs = [t for t in traces2 if t.key.startswith("agent:")]
    assert len(subs) == sum(s for _, s in EXPECTED_TRACES.values())
    for sub in subs:
        assert sub.parent_id is not None and sub.parent_id in by_id, sub.key
        parent = by_id[sub.parent_id]
        assert parent.session_id == sub.session_id and not parent.key.startswith("agent:")
        spawner = spawner_by_agent.get(sub.agent_id) or spawner_by_prompt.get(" ".join(sub.prompt.split()))
        if sub.agent_type == "compact":
            assert spawner is None  # no call starts compaction: linked to the turn it ran in
            assert parent.started_at <= sub.started_at
        else:
            assert spawner is not None, sub.prompt[:60]
            assert owner[spawner] == sub.parent_id


def test_single_subagent_file_imports_with_its_session(ccrl_home):
    agent_file = next(TRANSCRIPTS.rglob("agent-a2898e3.jsonl"))
    report = import_transcripts(agent_file)
    assert report.errors == [] and report.sessions == 1
    traces, calls = stored()
    [sub] = [t for t in traces if t.agent_id == "a2898e3"]
    assert sub.agent_type == "Explore" and sub.parent_id is not None
    assert any(c.name == "Task" and c.trace_id == sub.parent_id for c in calls)


def test_corrupt_lines_are_quarantined_once_and_the_rest_imports(ccrl_home, tmp_path):
    source = TRANSCRIPTS / "agentlogs/crud.jsonl"
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    broken = tmp_path / "crud.jsonl"
    secret = "ghp_" + "A" * 36
    broken.write_text("".join(lines[:5]) + '{"type": "assistant", "oops": "' + secret + '\n' + "".join(lines[5:]))
    uses, errors = scan([source])

    report = import_transcripts(broken)
    assert report.skipped_lines == 1 and report.errors == []
    _, calls = stored()
    assert {c.tool_use_id for c in calls} == uses
    again = import_transcripts(broken)
    assert again.skipped_lines == 1 and again.traces_created == 0
    with DBSession(get_engine(get_settings())) as db:
        rows = db.exec(select(Quarantine)).all()
        assert [(r.source, r.reason.split(":")[0]) for r in rows] == [(str(broken), "line 6")]
        assert secret.encode() not in rows[0].payload and b"[REDACTED:github_token]" in rows[0].payload


def test_opt_out(ccrl_home, tmp_path, monkeypatch):
    project = tmp_path / "private-repo"
    project.mkdir()
    (project / ".ccrl-ignore").write_text("")
    lines = (TRANSCRIPTS / "agentlogs/todos.jsonl").read_text(encoding="utf-8").splitlines()
    copied = tmp_path / "projects" / "todos.jsonl"
    copied.parent.mkdir()
    with open(copied, "w", encoding="utf-8") as fh:
        for line in lines:
            obj = json.loads(line)
            if "cwd" in obj:
                obj["cwd"] = str(project / "sub")
            fh.write(json.dumps(obj) + "\n")
    shutil.copy(TRANSCRIPTS / "agentlogs/crud.jsonl", copied.parent / "crud.jsonl")

    report = import_transcripts(copied.parent)
    assert (report.sessions, report.sessions_ignored) == (1, 1)
    assert report.ignored_projects == [str(project / "sub")]
    assert ".ccrl-ignore" in report.message
    traces, _ = stored()
    assert len(traces) == 1 and traces[0].prompt.startswith("create a file `JOKE.md`")  # crud.jsonl only
    assert not any(str(project) in (t.cwd or "") for t in traces)

    monkeypatch.setenv("CCRL_DISABLE", "1")
    disabled = import_transcripts(tmp_path / "does-not-matter")
    assert disabled.disabled and disabled.sessions == 0 and "CCRL_DISABLE" in disabled.message


def test_cli_import_json_and_errors(ccrl_home):
    from ccrl.agent.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["import", str(TRANSCRIPTS / "agentlogs"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["files"], data["sessions"], data["traces"], data["tool_calls"]) == (5, 5, 6, 17)
    table = runner.invoke(app, ["import", str(TRANSCRIPTS / "agentlogs")])
    assert table.exit_code == 0 and "tool calls" in table.output and "17" in table.output
    missing = runner.invoke(app, ["import", str(TRANSCRIPTS / "no-such-dir")])
    assert missing.exit_code == 2 and "no such file or directory" in missing.output


def test_import_before_any_claude_code_session_says_there_is_nothing_yet(ccrl_home, tmp_path, monkeypatch):
    """The default folder (~/.claude/projects) does not exist until Claude Code's first session:
    the README's `ccrl import` on a new machine is no error, and says why nothing came in. A
    folder the user names that does not exist still is one (above)."""
    from ccrl.agent.cli import app
    from ccrl.agent.core.config import reset_settings_cache

    monkeypatch.setenv("CCRL_TRANSCRIPT_ROOT", str(tmp_path / "no-claude-yet" / "projects"))
    reset_settings_cache()
    result = CliRunner().invoke(app, ["import", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["sessions"] == 0 and "nothing to import yet" in data["message"]
    assert not (tmp_path / "no-claude-yet").exists()  # nothing created in the user's home
