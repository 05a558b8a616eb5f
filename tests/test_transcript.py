"""The transcript parser on hand-written transcripts that pin down one edge case each.

Line shapes follow the genuine Claude Code transcripts under ../shared/fixtures/claude-code
(field names, block-per-line assistant messages, tool_result user lines, isMeta, compaction).
"""

from __future__ import annotations

import json
from pathlib import Path

from ccrl.agent.capture.transcript import parse_session, parse_transcript, split_reasoning

SESSION = "0b1c2d3e-0000-4000-8000-000000000001"
T0 = "2026-02-10T10:00:00.000Z"


def ts(second: int) -> str:
    return f"2026-02-10T10:{second // 60:02d}:{second % 60:02d}.000Z"


def user(uuid: str, content, second: int = 0, **extra) -> dict:
    return {"type": "user", "uuid": uuid, "parentUuid": None, "sessionId": SESSION, "cwd": "/repo",
            "version": "2.1.39", "gitBranch": "main", "isSidechain": False, "timestamp": ts(second),
            "message": {"role": "user", "content": content}, **extra}


def assistant(uuid: str, msg_id: str, block: dict, second: int = 0, **extra) -> dict:
    return {"type": "assistant", "uuid": uuid, "sessionId": SESSION, "cwd": "/repo", "isSidechain": False,
            "version": "2.1.39", "timestamp": ts(second),
            "message": {"id": msg_id, "model": "claude-opus-4-6", "role": "assistant", "content": [block]},
            **extra}


def result(uuid: str, tool_use_id: str, content, second: int = 0, is_error=None, **extra) -> dict:
    block = {"type": "tool_result", "tool_use_id": tool_use_id, "content": content}
    if is_error is not None:
        block["is_error"] = is_error
    return user(uuid, [block], second, **extra)


def text(t: str) -> dict:
    return {"type": "text", "text": t}


def thinking(t: str) -> dict:
    return {"type": "thinking", "thinking": t, "signature": "sig"}


def tool(tool_id: str, name: str, **inp) -> dict:
    return {"type": "tool_use", "id": tool_id, "name": name, "input": inp}


def write(path: Path, lines: list) -> Path:
    with open(path, "w") as fh:
        for line in lines:
            fh.write(line if isinstance(line, str) else json.dumps(line))
            fh.write("\n")
    return path


def test_block_per_line_message_with_interleaved_results(tmp_path):
    # One API response written as four lines (one block each); the result of the first call
    # is written before the message's last block (2.1.x streams tool execution).
    path = write(tmp_path / "s.jsonl", [
        user("u1", "find the config loader", 0),
        assistant("a1", "msg_1", thinking("Where is config loaded?"), 1),
        assistant("a2", "msg_1", text("Let me search."), 2),
        assistant("a3", "msg_1", tool("toolu_A", "Grep", pattern="load_config"), 3),
        result("r1", "toolu_A", "src/config.py:12", 4),
        assistant("a4", "msg_1", tool("toolu_B", "Glob", pattern="**/*.toml"), 5),
        result("r2", "toolu_B", "pyproject.toml", 6),
        assistant("a5", "msg_2", text("It is in `src/config.py`."), 7),
    ])
    parsed = parse_transcript(path)
    assert parsed.bad_lines == [] and parsed.ignored_lines == 0
    [turn] = parsed.turns
    assert turn.prompt == "find the config loader"
    assert turn.uuid == "u1"
    assert [(s["kind"], s.get("message_id"), s.get("tool_use_id")) for s in turn.steps] == [
        ("thinking", "msg_1", None),
        ("text", "msg_1", None),
        ("tool_use", "msg_1", "toolu_A"),
        ("tool_use", "msg_1", "toolu_B"),  # consecutive, same message: parallel calls
        ("tool_result", None, "toolu_A"),
        ("tool_result", None, "toolu_B"),
        ("text", "msg_2", None),
    ]
    assert [c.tool_use_id for c in turn.tool_uses] == ["toolu_A", "toolu_B"]
    assert [c.output for c in turn.tool_uses] == ["src/config.py:12", "pyproject.toml"]
    reasoning, response = turn.reasoning_and_response()
    assert reasoning == ["Where is config loaded?", "Let me search."]
    assert response == "It is in `src/config.py`."
    assert turn.status(is_last=True) == "complete"
    assert turn.model == "claude-opus-4-6"
    assert parsed.session_id == SESSION and parsed.cwd == "/repo" and parsed.version == "2.1.39"


def test_corrupt_line_is_recorded_and_the_rest_parses(tmp_path):
    path = write(tmp_path / "s.jsonl", [
        user("u1", "first", 0),
        assistant("a1", "msg_1", text("one"), 1),
        '{"type": "user", "message": {"content": "trunc',  # corrupt, in the middle
        "[1, 2, 3]",  # valid JSON, not a line object
        user("u2", "second", 10),
        assistant("a2", "msg_2", text("two"), 11),
    ])
    with open(path, "a") as fh:
        fh.write('{"type": "assistant", "message"')  # unterminated last line: being written
    parsed = parse_transcript(path)
    assert [t.prompt for t in parsed.turns] == ["first", "second"]
    assert [t.reasoning_and_response()[1] for t in parsed.turns] == ["one", "two"]
    assert [b.line_no for b in parsed.bad_lines] == [3, 4]
    assert "invalid JSON" in parsed.bad_lines[0].reason and parsed.bad_lines[0].reason.startswith("line 3:")
    assert "not a JSON object" in parsed.bad_lines[1].reason
    assert parsed.bad_lines[0].raw.startswith(b'{"type": "user"')
    assert parsed.incomplete_tail is True


def test_unknown_line_types_are_skipped_and_counted(tmp_path):
    path = write(tmp_path / "s.jsonl", [
        {"type": "summary", "summary": "Title", "leafUuid": "x"},
        {"type": "file-history-snapshot", "messageId": "m", "snapshot": {}},
        user("u1", "hello", 0),
        {"type": "progress", "data": {"type": "agent_progress", "message": {"type": "user"}}},
        {"type": "queue-operation", "operation": "enqueue", "content": "/mcp"},
        {"type": "system", "subtype": "informational", "content": "x"},
        {"type": "some-type-from-the-future", "payload": [1]},
        assistant("a1", "msg_1", text("hi"), 1),
    ])
    parsed = parse_transcript(path)
    assert parsed.ignored_lines == 6
    assert parsed.bad_lines == []
    [turn] = parsed.turns
    assert (turn.prompt, turn.reasoning_and_response()[1]) == ("hello", "hi")


def test_is_meta_lines_and_slash_command_expansion(tmp_path):
    # Shapes of the claude-code-viewer fixture 1af7… (/init) and agentlogs compact.jsonl (/clear).
    expanded = "Please analyze this codebase and create a CLAUDE.md file."
    path = write(tmp_path / "s.jsonl", [
        user("m0", "Caveat: The messages below were generated by the user while running local commands.", 0,
             isMeta=True),
        user("c1", "<command-name>/clear</command-name>\n<command-message>clear</command-message>\n"
                   "<command-args></command-args>", 1),
        user("o1", "<local-command-stdout></local-command-stdout>", 2),
        user("c2", "<command-message>init is analyzing your codebase…</command-message>\n"
                   "<command-name>/init</command-name>", 3),
        user("m1", [text(expanded)], 4, isMeta=True),
        assistant("a1", "msg_1", text("I'll analyze it."), 5),
        user("m2", "<system-reminder>a hook added context</system-reminder>", 6, isMeta=True),
        assistant("a2", "msg_2", text("Created CLAUDE.md."), 7),
    ])
    parsed = parse_transcript(path)
    assert parsed.local_commands == 1  # /clear never reached the model
    [turn] = parsed.turns
    assert turn.prompt == expanded
    assert turn.command == "/init"
    assert turn.uuid == "c2"
    reasoning, response = turn.reasoning_and_response()
    assert reasoning == [] and response == "I'll analyze it.\n\nCreated CLAUDE.md."


def test_compact_summary_is_not_a_prompt(tmp_path):
    path = write(tmp_path / "s.jsonl", [
        user("u1", "refactor the renderer", 0),
        assistant("a1", "msg_1", tool("toolu_1", "Read", file_path="/repo/r.ex"), 1),
        result("r1", "toolu_1", "defmodule R", 2),
        {"type": "system", "subtype": "compact_boundary", "content": "Conversation compacted"},
        user("s1", "This session is being continued from a previous conversation that ran out of context.", 3,
             isCompactSummary=True, isVisibleInTranscriptOnly=True),
        assistant("a2", "msg_2", text("Continuing: the renderer is refactored."), 4),
    ])
    parsed = parse_transcript(path)
    [turn] = parsed.turns
    assert turn.prompt == "refactor the renderer"
    assert turn.reasoning_and_response()[1] == "Continuing: the renderer is refactored."
    assert [c.tool_use_id for c in turn.tool_uses] == ["toolu_1"]


def test_images_become_markers_never_bytes(tmp_path):
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk" * 50
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}}
    path = write(tmp_path / "s.jsonl", [
        user("u1", [text("what is on this screenshot?"), image], 0),
        assistant("a1", "msg_1", tool("toolu_1", "mcp__chrome__take_screenshot"), 1),
        result("r1", "toolu_1", [text("Took a screenshot."), image], 2),
        assistant("a2", "msg_2", text("A login form."), 3),
    ])
    parsed = parse_transcript(path)
    [turn] = parsed.turns
    assert turn.images == 1
    assert turn.prompt == "what is on this screenshot?\n[image]"
    assert turn.tool_uses[0].output == "Took a screenshot.\n[image: image/png]"
    assert png[:40] not in json.dumps(turn.steps)


def test_interruptions_errors_and_status(tmp_path):
    # Shapes of spotter short.jsonl: rejected calls, then "[Request interrupted by user for tool use]".
    path = write(tmp_path / "s.jsonl", [
        user("u1", "start the server", 0),
        assistant("a1", "msg_1", tool("toolu_1", "Bash", command="mix phx.server"), 1),
        result("r1", "toolu_1", "The user doesn't want to proceed with this tool use.", 2, is_error=True,
               toolUseResult="User rejected tool use"),
        user("i1", [text("[Request interrupted by user for tool use]")], 3),
        user("u2", "run the tests", 10),
        assistant("a2", "msg_2", tool("toolu_2", "Bash", command="mix test"), 11),
        result("r2", "toolu_2", "[Request interrupted by user for tool use]", 12, is_error=True,
               toolUseResult={"stdout": "", "stderr": "", "interrupted": True}),
        user("u3", "just say hi", 20),
        assistant("a3", "msg_3", tool("toolu_3", "Read", file_path="/repo/a"), 21),
    ])
    parsed = parse_transcript(path)
    first, second, third = parsed.turns
    assert first.interrupted and first.status(is_last=False) == "interrupted"
    assert first.tool_uses[0].is_error is True and first.tool_uses[0].is_interrupt is False
    assert second.tool_uses[0].is_interrupt is True
    assert second.status(is_last=False) == "interrupted"  # never answered before the next prompt
    assert third.status(is_last=True) == "open"  # may still be running
    assert third.tool_uses[0].has_result is False


def test_stop_hook_summary_marks_a_turn_complete_without_text(tmp_path):
    path = write(tmp_path / "s.jsonl", [
        user("u1", "apply the edit", 0),
        assistant("a1", "msg_1", tool("toolu_1", "Edit", file_path="/r", old_string="a", new_string="b"), 1),
        result("r1", "toolu_1", "ok", 2),
        {"type": "system", "subtype": "stop_hook_summary", "isSidechain": False, "hookCount": 1},
        user("u2", "continue", 10),
        assistant("a2", "msg_2", text("Done."), 11),
    ])
    first, second = parse_transcript(path).turns
    assert first.status(is_last=False) == "complete"
    assert second.status(is_last=True) == "complete"


def test_secrets_are_redacted_and_long_outputs_truncated(tmp_path):
    key = "AKIA" + "ABCDEFGHIJKLMNOP"
    path = write(tmp_path / "s.jsonl", [
        user("u1", f"use AWS key {key}", 0),
        assistant("a1", "msg_1", tool("toolu_1", "Bash", command=f"export API_TOKEN=hunter2secret && aws s3 ls"), 1),
        result("r1", "toolu_1", "x" * 500 + f" {key}", 2),
        assistant("a2", "msg_2", text(f"Your key {key} works."), 3),
    ])
    parsed = parse_transcript(path, max_output_chars=100)
    [turn] = parsed.turns
    dumped = json.dumps([turn.prompt, turn.steps, [c.output for c in turn.tool_uses]])
    assert key not in dumped and "hunter2secret" not in dumped
    assert "[REDACTED:aws_access_key]" in turn.prompt
    assert turn.tool_uses[0].input["command"].startswith("export API_TOKEN=[REDACTED")
    output = turn.tool_uses[0].output
    assert output.startswith("x" * 100) and "[ccrl: truncated" in output
    assert len(output) < 200


def test_inline_sidechains_are_told_apart_and_linked_to_their_task(tmp_path):
    # ≤ 2.0.x: two parallel Task calls, their sidechains inline, interleaved, told apart by
    # parentUuid; each is linked to its Task call by the task text.
    def side(line: dict) -> dict:
        return {**line, "isSidechain": True}

    path = write(tmp_path / "s.jsonl", [
        user("u1", "split the work", 0),
        assistant("a1", "msg_1", tool("toolu_T1", "Task", description="a", prompt="Inspect package.json",
                                      subagent_type="general-purpose"), 1),
        assistant("a2", "msg_1", tool("toolu_T2", "Task", description="b", prompt="Inspect the src tree",
                                      subagent_type="Explore"), 2),
        side(user("s1", "Inspect the src tree", 3)),
        side(user("s2", "Inspect package.json", 3)),
        {**side(assistant("s1a", "msg_s1", tool("toolu_S1", "Bash", command="ls src"), 4)), "parentUuid": "s1"},
        {**side(assistant("s2a", "msg_s2", text("Next 15."), 5)), "parentUuid": "s2"},
        {**side(result("s1r", "toolu_S1", "a.ts", 6)), "parentUuid": "s1a"},
        {**side(assistant("s1b", "msg_s3", text("Two files."), 7)), "parentUuid": "s1r"},
        result("r1", "toolu_T1", "Next 15.", 8),
        result("r2", "toolu_T2", "Two files.", 9),
        assistant("a3", "msg_4", text("Both done."), 10),
    ])
    session = parse_session(path)
    [main] = session.turns
    assert [c.tool_use_id for c in main.tool_uses] == ["toolu_T1", "toolu_T2"]
    subs = {t.prompt: t for t in session.subagent_turns}
    assert set(subs) == {"Inspect the src tree", "Inspect package.json"}
    src, pkg = subs["Inspect the src tree"], subs["Inspect package.json"]
    assert (src.parent_tool_use_id, src.agent_type) == ("toolu_T2", "Explore")
    assert (pkg.parent_tool_use_id, pkg.agent_type) == ("toolu_T1", "general-purpose")
    assert [c.tool_use_id for c in src.tool_uses] == ["toolu_S1"]
    assert src.reasoning_and_response()[1] == "Two files."
    assert pkg.reasoning_and_response()[1] == "Next 15."
    assert all(t.is_subagent for t in session.subagent_turns)


def test_subagent_files_link_by_agent_id(tmp_path):
    # 2.1+: <session>.jsonl + <session>/subagents/agent-<id>.jsonl; the Task result names the agent.
    main = write(tmp_path / f"{SESSION}.jsonl", [
        user("u1", "explore", 0),
        assistant("a1", "msg_1", tool("toolu_T", "Task", prompt="Explore the repo", subagent_type="Explore"), 1),
        result("r1", "toolu_T", [text("Report.")], 9,
               toolUseResult={"status": "completed", "agentId": "a2898e3", "prompt": "Explore the repo"}),
        assistant("a2", "msg_2", text("Explored."), 10),
    ])
    folder = tmp_path / SESSION / "subagents"
    folder.mkdir(parents=True)
    agent_line = {"isSidechain": True, "agentId": "a2898e3"}
    write(folder / "agent-a2898e3.jsonl", [
        {**user("x1", "Explore the repo (reworded by the caller)", 2), **agent_line},
        {**assistant("x2", "msg_x", tool("toolu_X", "Glob", pattern="*"), 3), **agent_line},
        {**result("x3", "toolu_X", "a\nb", 4), **agent_line},
        {**assistant("x4", "msg_y", text("Report."), 5), **agent_line},
    ])
    from ccrl.agent.capture.transcript import subagent_files

    session = parse_session(main, subagent_files(main))
    [sub] = session.subagent_turns
    assert sub.agent_id == "a2898e3"
    assert sub.parent_tool_use_id == "toolu_T" and sub.agent_type == "Explore"
    assert sub.reasoning_and_response()[1] == "Report."
    assert session.session_id == SESSION


def test_split_reasoning():
    steps = [
        {"kind": "thinking", "text": "plan"},
        {"kind": "text", "text": "Reading."},
        {"kind": "tool_use", "tool_use_id": "t"},
        {"kind": "tool_result", "tool_use_id": "t"},
        {"kind": "thinking", "text": "got it"},
        {"kind": "text", "text": "Answer part 1."},
        {"kind": "text", "text": "Answer part 2."},
    ]
    assert split_reasoning(steps) == (["plan", "Reading.", "got it"], "Answer part 1.\n\nAnswer part 2.")
    assert split_reasoning(steps[:3]) == (["plan", "Reading."], "")
