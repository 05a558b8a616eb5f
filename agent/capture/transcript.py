"""Read one Claude Code session's transcript (JSONL) into turns.

A *turn* is one user prompt followed by Claude's work on it: thinking and text blocks, tool
calls and their results, and the final answer. This module only parses; it never touches the
store. Everything it returns is already redacted (``ccrl.agent.capture.deep_redact``) and tool outputs are
truncated, so callers can store it as is.

Transcript facts this parser relies on (see ../shared/docs/claude-code.md):

- One API response is several ``assistant`` lines sharing ``message.id``, one content block
  each. In newer versions a response's lines can be interleaved with the results of tools it
  already started; steps are reordered so that a message's blocks come before the results of
  its calls (consecutive ``tool_use`` steps with one ``message_id`` = parallel calls).
- Tool results are ``user`` lines holding ``tool_result`` blocks (+ ``toolUseResult``).
- A turn starts at a ``user`` line whose content is a string or text blocks that are not tool
  results, not ``isMeta`` and not a compaction summary. Slash commands write a
  ``<command-name>`` line followed by an ``isMeta`` line with the expanded prompt: the prompt is
  the expanded text. Local commands (``/clear``, ``/mcp``, ``!cmd``) never reach the model and
  are not turns.
- Subagents: inline ``isSidechain: true`` chains (≤ 2.0.x, told apart by ``parentUuid``), or
  ``agent-<id>.jsonl`` files whose lines carry ``agentId`` (2.1+: ``<session>/subagents/``).
  A subagent's run is a turn of its own; :func:`parse_session` links it to the ``Task``/``Agent``
  call that started it.
- Unknown line types (progress, file-history-snapshot, queue-operation, summary, system, …) are
  skipped and counted. A line that is not JSON is recorded in ``bad_lines`` and skipped; an
  unterminated last line is a write in progress, not corruption, and is left for the next read.

Files are read line by line, so a transcript of any size costs memory in proportion to the
(truncated) turns it holds, not to its bytes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from ccrl.agent.capture.deep_redact import redact_obj, redact_text

SUBAGENT_TOOLS = ("Task", "Agent")
TRUNCATION_MARKER = "\n[ccrl: truncated {omitted} of {total} characters]"

_INTERRUPT_PREFIX = "[Request interrupted by user"
# User lines that are the output of something the user ran locally; the model never sees a
# prompt from them.
_LOCAL_PREFIXES = (
    "<local-command-stdout>",
    "<local-command-stderr>",
    "<local-command-caveat>",
    "<bash-input>",
    "<bash-stdout>",
    "<bash-stderr>",
)
_TURN_END_SUBTYPES = ("stop_hook_summary", "turn_duration")
_COMMAND_NAME = re.compile(r"<command-name>\s*(.*?)\s*</command-name>", re.DOTALL)
_COMMAND_ARGS = re.compile(r"<command-args>\s*(.*?)\s*</command-args>", re.DOTALL)


# --------------------------------------------------------------------------------------------
# Small helpers shared with the hook side


def parse_time(value: Any) -> datetime | None:
    """An ISO timestamp (``2025-09-03T00:47:19.293Z``) as an aware UTC datetime, or None.
    A timestamp without an offset is taken as UTC (Claude Code writes UTC)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return as_utc(parsed)


def as_utc(value: datetime | None) -> datetime | None:
    """``value`` as an aware UTC datetime (naive values are UTC: the store keeps UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def truncate(text: str, max_chars: int | None) -> str:
    """``text`` cut to ``max_chars`` with a visible marker saying how much was dropped."""
    if max_chars is None or max_chars <= 0 or len(text) <= max_chars:
        return text
    return text[:max_chars] + TRUNCATION_MARKER.format(omitted=len(text) - max_chars, total=len(text))


def content_text(content: Any) -> str:
    """The text of a tool result's ``content`` (a string or a list of blocks). Images become a
    ``[image: media/type]`` marker: their bytes are never stored."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict):
                kind = block.get("type")
                if kind == "text":
                    parts.append(str(block.get("text", "")))
                elif kind == "image":
                    source = block.get("source") if isinstance(block.get("source"), dict) else {}
                    parts.append(f"[image: {source.get('media_type') or 'unknown'}]")
                elif kind == "tool_reference":
                    parts.append(f"[tool: {block.get('tool_name') or block.get('name') or '?'}]")
                else:
                    parts.append(json.dumps(block, ensure_ascii=False, sort_keys=True))
        return "\n".join(parts)
    return json.dumps(content, ensure_ascii=False, sort_keys=True)


def split_reasoning(steps: list[dict[str, Any]]) -> tuple[list[str], str]:
    """(reasoning, response) of a turn's steps.

    The response is the text written after the last tool call or result (Claude's final
    answer); reasoning is every thinking and text block before it, in order. A turn that ends
    on a tool call (interrupted, or still running) has no response yet.
    """
    last_tool = -1
    for i, step in enumerate(steps):
        if step.get("kind") in ("tool_use", "tool_result"):
            last_tool = i
    reasoning: list[str] = []
    answer: list[str] = []
    for i, step in enumerate(steps):
        kind = step.get("kind")
        text = step.get("text") or ""
        if kind == "thinking" and text.strip():
            reasoning.append(text)
        elif kind == "text" and text.strip():
            (answer if i > last_tool else reasoning).append(text)
    return reasoning, "\n\n".join(t.strip() for t in answer)


def normalise_prompt(text: str) -> str:
    """A prompt reduced for comparison: whitespace collapsed."""
    return " ".join((text or "").split())


# --------------------------------------------------------------------------------------------
# What a transcript yields


@dataclass
class ToolUse:
    """One tool call as the transcript (or the hooks) saw it."""

    tool_use_id: str
    name: str
    input: dict[str, Any]
    message_id: str | None = None
    started_at: datetime | None = None
    output: str | None = None
    is_error: bool = False
    is_interrupt: bool = False
    has_result: bool = False
    duration_ms: int | None = None
    spawned_agent_id: str | None = None  # a Task/Agent call's subagent (toolUseResult.agentId)
    hook_id: str | None = None  # the stand-in id the hooks gave this call (no tool_use_id sent)

    @property
    def subagent_prompt(self) -> str | None:
        """The task a Task/Agent call gave its subagent."""
        if self.name in SUBAGENT_TOOLS:
            prompt = self.input.get("prompt")
            return prompt if isinstance(prompt, str) else None
        return None


@dataclass
class Turn:
    """One prompt and Claude's work on it, from one source (transcript or hooks)."""

    prompt: str = ""
    uuid: str | None = None  # transcript uuid of the user line that started the turn
    prompt_id: str | None = None
    command: str | None = None  # "/init" when the prompt came from a slash command
    started_at: datetime | None = None
    ended_at: datetime | None = None
    cwd: str | None = None
    model: str | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    tool_uses: list[ToolUse] = field(default_factory=list)
    interrupted: bool = False
    complete: bool = False  # the hooks saw Stop / SubagentStop for it
    hook_response: str = ""  # Stop's last_assistant_message
    images: int = 0
    # subagent runs
    is_subagent: bool = False
    agent_id: str | None = None
    agent_type: str | None = None
    parent_tool_use_id: str | None = None
    sources: set[str] = field(default_factory=set)  # {"transcript"}, {"hook"} or both
    hook_event_key: str | None = None  # the UserPromptSubmit event that opened a hook turn
    expanded: bool = False  # a slash command's expanded text has been seen

    @property
    def tool_use_ids(self) -> set[str]:
        return {t.tool_use_id for t in self.tool_uses}

    @property
    def has_assistant_output(self) -> bool:
        return any(s.get("kind") in ("thinking", "text", "tool_use") for s in self.steps)

    def reasoning_and_response(self) -> tuple[list[str], str]:
        reasoning, response = split_reasoning(self.steps)
        if not response and self.hook_response:
            response = self.hook_response
        return reasoning, response

    def status(self, is_last: bool) -> str:
        """open, complete or interrupted. A turn followed by another one that never answered
        was cut short; the last turn without an answer may still be running."""
        if self.interrupted:
            return "interrupted"
        _, response = self.reasoning_and_response()
        if self.complete or response:
            return "complete"
        return "open" if is_last else "interrupted"


@dataclass
class BadLine:
    """A transcript line that could not be used, with where and why."""

    path: str
    line_no: int
    reason: str
    raw: bytes


@dataclass
class ParsedTranscript:
    """Everything one transcript file yielded."""

    path: str
    session_id: str | None = None
    agent_id: str | None = None  # set for agent-<id>.jsonl files
    cwd: str | None = None
    version: str | None = None
    git_branch: str | None = None
    model: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    turns: list[Turn] = field(default_factory=list)  # main-thread turns, in order
    subagent_turns: list[Turn] = field(default_factory=list)
    lines: int = 0
    ignored_lines: int = 0  # unknown or irrelevant line types
    local_commands: int = 0
    bad_lines: list[BadLine] = field(default_factory=list)
    incomplete_tail: bool = False  # last line unterminated: a write in progress


# --------------------------------------------------------------------------------------------
# Parsing


class _Thread:
    """Builds the turns of one conversation thread (the main chain, or one subagent's)."""

    def __init__(self, parser: "_Parser", is_subagent: bool, agent_id: str | None) -> None:
        self.parser = parser
        self.is_subagent = is_subagent
        self.agent_id = agent_id
        self.turns: list[Turn] = []
        self.current: Turn | None = None
        self.message_id: str | None = None
        self.pending_results: list[dict[str, Any]] = []
        self.tool_owner: dict[str, tuple[Turn, ToolUse]] = {}

    # -- turn boundaries

    def _flush_results(self) -> None:
        if self.pending_results and self.current is not None:
            self.current.steps.extend(self.pending_results)
        self.pending_results = []

    def start_turn(self, line: dict[str, Any], prompt: str, images: int, command: str | None) -> None:
        self._flush_results()
        self.message_id = None
        turn = Turn(
            prompt=prompt,
            uuid=line.get("uuid") if isinstance(line.get("uuid"), str) else None,
            prompt_id=line.get("promptId") if isinstance(line.get("promptId"), str) else None,
            command=command,
            started_at=parse_time(line.get("timestamp")),
            ended_at=parse_time(line.get("timestamp")),
            cwd=line.get("cwd") if isinstance(line.get("cwd"), str) else None,
            images=images,
            is_subagent=self.is_subagent,
            agent_id=self.agent_id,
            sources={"transcript"},
        )
        self.turns.append(turn)
        self.current = turn

    def _ensure_turn(self, line: dict[str, Any]) -> Turn:
        """The current turn; assistant output before any prompt gets a turn with no prompt."""
        if self.current is None:
            self.start_turn(line, "", 0, None)
        assert self.current is not None
        return self.current

    def _touch(self, turn: Turn, line: dict[str, Any]) -> None:
        when = parse_time(line.get("timestamp"))
        if when is not None and (turn.ended_at is None or when > turn.ended_at):
            turn.ended_at = when

    # -- user lines

    def user_line(self, line: dict[str, Any]) -> None:
        message = line.get("message") if isinstance(line.get("message"), dict) else {}
        content = message.get("content")
        if line.get("isCompactSummary") or line.get("isVisibleInTranscriptOnly"):
            return  # a compaction summary, written by Claude Code, not a prompt
        blocks = content if isinstance(content, list) else None
        if blocks is not None and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in blocks):
            self._tool_results(line, blocks)
            return
        text, images = self._prompt_text(content)
        stripped = text.strip()
        if line.get("isMeta"):
            turn = self.current
            if (
                turn is not None
                and turn.command
                and not turn.expanded
                and not turn.has_assistant_output
                and stripped
                and not stripped.startswith(_LOCAL_PREFIXES)
                and not stripped.startswith(("Caveat:", "<system-reminder>"))
            ):
                # The expanded text of a slash command: that is what the model was asked.
                turn.prompt = redact_text(text)
                turn.images += images
                turn.expanded = True
            return
        if stripped.startswith(_INTERRUPT_PREFIX):
            if self.current is not None:
                self.current.interrupted = True
                self._touch(self.current, line)
            return
        if stripped.startswith(_LOCAL_PREFIXES):
            return
        if not stripped and not images:
            return
        command = None
        if "<command-name>" in stripped:
            match = _COMMAND_NAME.search(stripped)
            command = match.group(1).strip() if match else None
            args = _COMMAND_ARGS.search(stripped)
            text = " ".join(p for p in (command, args.group(1).strip() if args else "") if p)
        self.start_turn(line, redact_text(text), images, command)

    @staticmethod
    def _prompt_text(content: Any) -> tuple[str, int]:
        if isinstance(content, str):
            return content, 0
        if not isinstance(content, list):
            return "", 0
        parts: list[str] = []
        images = 0
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict):
                if block.get("type") == "text":
                    parts.append(str(block.get("text", "")))
                elif block.get("type") == "image":
                    images += 1
                    parts.append("[image]")
        return "\n".join(parts), images

    def _tool_results(self, line: dict[str, Any], blocks: list[Any]) -> None:
        structured = line.get("toolUseResult")
        for block in blocks:
            if not isinstance(block, dict) or block.get("type") != "tool_result":
                continue
            tool_use_id = block.get("tool_use_id")
            if not isinstance(tool_use_id, str):
                continue
            raw = content_text(block.get("content"))
            output = truncate(redact_text(raw), self.parser.max_output_chars)
            is_error = bool(block.get("is_error"))
            is_interrupt = raw.lstrip().startswith(_INTERRUPT_PREFIX) or (
                isinstance(structured, dict) and structured.get("interrupted") is True
            )
            owner = self.tool_owner.get(tool_use_id)
            if owner is None:
                # A result whose call this file never showed (cut by compaction or a resume).
                turn = self._ensure_turn(line)
                call = ToolUse(tool_use_id=tool_use_id, name="", input={})
                turn.tool_uses.append(call)
                self.tool_owner[tool_use_id] = (turn, call)
                owner = (turn, call)
            turn, call = owner
            call.output = output
            call.is_error = is_error
            call.is_interrupt = is_interrupt
            call.has_result = True
            if isinstance(structured, dict) and isinstance(structured.get("agentId"), str):
                call.spawned_agent_id = structured["agentId"]
            step = {"kind": "tool_result", "tool_use_id": tool_use_id, "output": output, "is_error": is_error}
            if turn is self.current and self.message_id is not None:
                # The message that made the call may still be streaming more blocks: its
                # blocks go first, then the results (the API's order).
                self.pending_results.append(step)
            else:
                turn.steps.append(step)
            self._touch(turn, line)

    # -- assistant lines

    def assistant_line(self, line: dict[str, Any]) -> None:
        message = line.get("message") if isinstance(line.get("message"), dict) else {}
        if line.get("isApiErrorMessage"):
            # Claude Code's own error notice (API error, limits), not the model's words.
            self.parser.api_errors += 1
            return
        message_id = message.get("id") if isinstance(message.get("id"), str) else None
        if message_id is None or message_id != self.message_id:
            self._flush_results()
            self.message_id = message_id
        turn = self._ensure_turn(line)
        model = message.get("model")
        if isinstance(model, str) and model and model != "<synthetic>":
            turn.model = turn.model or model
            self.parser.model = self.parser.model or model
        content = message.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, list):
            return
        when = parse_time(line.get("timestamp"))
        for block in content:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "thinking":
                text = block.get("thinking")
                if isinstance(text, str) and text.strip():
                    turn.steps.append({"kind": "thinking", "text": redact_text(text), "message_id": message_id})
            elif kind == "text":
                text = block.get("text")
                if isinstance(text, str) and text.strip():
                    turn.steps.append({"kind": "text", "text": redact_text(text), "message_id": message_id})
            elif kind == "tool_use":
                tool_use_id = block.get("id")
                if not isinstance(tool_use_id, str):
                    continue
                raw_input = block.get("input")
                tool_input = redact_obj(raw_input) if isinstance(raw_input, dict) else {}
                name = str(block.get("name") or "")
                existing = self.tool_owner.get(tool_use_id)
                if existing is not None:
                    existing[1].name = existing[1].name or name
                    continue  # the same block written twice
                call = ToolUse(
                    tool_use_id=tool_use_id,
                    name=name,
                    input=tool_input,
                    message_id=message_id,
                    started_at=when,
                )
                turn.tool_uses.append(call)
                self.tool_owner[tool_use_id] = (turn, call)
                turn.steps.append(
                    {
                        "kind": "tool_use",
                        "tool_use_id": tool_use_id,
                        "name": name,
                        "input": tool_input,
                        "message_id": message_id,
                    }
                )
        self._touch(turn, line)

    def finish(self) -> None:
        self._flush_results()


class _Parser:
    def __init__(self, path: Path, max_output_chars: int | None) -> None:
        self.path = path
        self.max_output_chars = max_output_chars
        self.result = ParsedTranscript(path=str(path))
        self.main = _Thread(self, is_subagent=False, agent_id=None)
        self.sidechains: list[_Thread] = []
        self.thread_of_uuid: dict[str, _Thread] = {}
        self.agent_threads: dict[str, _Thread] = {}
        self.model: str | None = None
        self.api_errors = 0

    def thread_for(self, line: dict[str, Any]) -> _Thread:
        """Which thread a line belongs to: main, a subagent file's agent, or an inline
        sidechain (found by following ``parentUuid``)."""
        if not line.get("isSidechain"):
            return self.main
        agent_id = line.get("agentId")
        if isinstance(agent_id, str) and agent_id:
            thread = self.agent_threads.get(agent_id)
            if thread is None:
                thread = _Thread(self, is_subagent=True, agent_id=agent_id)
                self.agent_threads[agent_id] = thread
                self.sidechains.append(thread)
            return thread
        parent = line.get("parentUuid")
        thread = self.thread_of_uuid.get(parent) if isinstance(parent, str) else None
        if thread is None or thread is self.main:
            if parent is None or not self.sidechains:
                thread = _Thread(self, is_subagent=True, agent_id=None)
                self.sidechains.append(thread)
            else:
                thread = self.sidechains[-1]
        return thread

    def line(self, obj: dict[str, Any]) -> None:
        result = self.result
        kind = obj.get("type")
        if kind == "system" and obj.get("subtype") in _TURN_END_SUBTYPES:
            # Claude Code ran its Stop hooks / timed the turn: the turn ended normally, even
            # when its last message was a tool result rather than text.
            thread = self.main if not obj.get("isSidechain") else None
            if thread is not None and thread.current is not None:
                thread.current.complete = True
        if kind not in ("user", "assistant"):
            result.ignored_lines += 1
            return
        if result.session_id is None and isinstance(obj.get("sessionId"), str):
            result.session_id = obj["sessionId"]
        if result.agent_id is None and isinstance(obj.get("agentId"), str):
            result.agent_id = obj["agentId"]
        if result.cwd is None and isinstance(obj.get("cwd"), str) and obj["cwd"]:
            result.cwd = obj["cwd"]
        if isinstance(obj.get("version"), str) and obj["version"]:
            result.version = obj["version"]
        if result.git_branch is None and isinstance(obj.get("gitBranch"), str) and obj["gitBranch"]:
            result.git_branch = obj["gitBranch"]
        when = parse_time(obj.get("timestamp"))
        if when is not None:
            result.started_at = min(result.started_at or when, when)
            result.ended_at = max(result.ended_at or when, when)
        thread = self.thread_for(obj)
        if isinstance(obj.get("uuid"), str):
            self.thread_of_uuid[obj["uuid"]] = thread
        if kind == "user":
            thread.user_line(obj)
        else:
            thread.assistant_line(obj)

    def finish(self) -> ParsedTranscript:
        result = self.result
        for thread in [self.main, *self.sidechains]:
            thread.finish()
        result.local_commands = sum(
            1 for t in self.main.turns if t.command and not t.expanded and not t.has_assistant_output
        )
        result.turns = [t for t in self.main.turns if _is_real_turn(t)]
        for thread in self.sidechains:
            result.subagent_turns.extend(t for t in thread.turns if _is_real_turn(t))
        result.model = self.model
        return result


def _is_real_turn(turn: Turn) -> bool:
    """Local slash commands (``/clear``, ``/mcp``) never reach the model: not turns."""
    if turn.command and not turn.expanded and not turn.has_assistant_output and not turn.tool_uses:
        return False
    return bool(turn.prompt or turn.steps or turn.tool_uses)


def iter_lines(path: Path) -> Iterable[tuple[int, bytes, bool]]:
    """(line number from 1, raw bytes, terminated) for each non-blank line, streamed."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            terminated = raw.endswith(b"\n")
            raw = raw.rstrip(b"\r\n")
            if raw.strip():
                yield number, raw, terminated


def parse_transcript(path: str | Path, max_output_chars: int | None = None) -> ParsedTranscript:
    """Parse one transcript file (a session's, or a subagent's ``agent-<id>.jsonl``).

    Corrupt lines are skipped and listed in ``bad_lines``; they never stop the rest. Raises
    ``OSError`` only when the file cannot be opened at all.
    """
    path = Path(path)
    parser = _Parser(path, max_output_chars)
    result = parser.result
    for number, raw, terminated in iter_lines(path):
        result.lines += 1
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            if not terminated:
                result.incomplete_tail = True  # being written right now; read it next time
                continue
            result.bad_lines.append(BadLine(str(path), number, f"line {number}: invalid JSON ({exc})", raw))
            continue
        if not isinstance(obj, dict):
            result.bad_lines.append(
                BadLine(str(path), number, f"line {number}: not a JSON object ({type(obj).__name__})", raw)
            )
            continue
        try:
            parser.line(obj)
        except Exception as exc:  # an unexpected shape must not lose the rest of the file
            result.bad_lines.append(
                BadLine(str(path), number, f"line {number}: unusable {obj.get('type')!r} line ({exc!r})", raw)
            )
    return parser.finish()


# --------------------------------------------------------------------------------------------
# A whole session: main transcript + subagent files, linked


@dataclass
class ParsedSession:
    """A session's transcripts, parsed and linked: main turns, subagent turns with
    ``parent_tool_use_id`` set where the spawning call is known."""

    session_id: str | None
    main: ParsedTranscript | None
    agents: list[ParsedTranscript]
    turns: list[Turn]
    subagent_turns: list[Turn]

    @property
    def transcripts(self) -> list[ParsedTranscript]:
        return [p for p in [self.main, *self.agents] if p is not None]


def subagent_files(main_path: str | Path) -> list[Path]:
    """The subagent transcripts stored next to a session transcript (2.1+ layout)."""
    main_path = Path(main_path)
    folder = main_path.with_suffix("") / "subagents"
    if not folder.is_dir():
        return []
    return sorted(folder.glob("agent-*.jsonl"))


def parse_session(
    main_path: str | Path | None,
    agent_paths: Iterable[str | Path] = (),
    max_output_chars: int | None = None,
) -> ParsedSession:
    """Parse a session transcript and its subagent transcripts, and link each subagent run to
    the Task/Agent call that started it (by the agent id in the call's result, else by the task
    text)."""
    main = parse_transcript(main_path, max_output_chars) if main_path is not None else None
    agents: list[ParsedTranscript] = []
    seen: set[str] = set()
    for path in agent_paths:
        key = str(Path(path))
        if key in seen:
            continue
        seen.add(key)
        agents.append(parse_transcript(path, max_output_chars))
    turns = list(main.turns) if main else []
    subagent_turns: list[Turn] = list(main.subagent_turns) if main else []
    for agent in agents:
        for turn in agent.turns + agent.subagent_turns:
            turn.is_subagent = True
            turn.agent_id = turn.agent_id or agent.agent_id or _agent_id_from_name(agent.path)
            subagent_turns.append(turn)
    link_subagents(turns, subagent_turns)
    session_id = (main.session_id if main else None) or next((a.session_id for a in agents if a.session_id), None)
    if session_id is None and main_path is not None:
        session_id = Path(main_path).stem
    return ParsedSession(session_id, main, agents, turns, subagent_turns)


def _agent_id_from_name(path: str) -> str | None:
    name = Path(path).stem
    return name[len("agent-"):] if name.startswith("agent-") else None


def link_subagents(turns: list[Turn], subagent_turns: list[Turn]) -> None:
    """Set ``parent_tool_use_id`` and ``agent_type`` on subagent turns.

    Subagents can spawn subagents, so calls are looked up in every turn. Matching order: the
    agent id a call's result names, else the exact task text. No guessing beyond that: a run
    with no known spawning call (e.g. Claude Code's own compaction agent, ``agent-acompact-*``)
    keeps ``parent_tool_use_id`` None, and ingest links it to the turn it ran in.
    """
    calls = [c for t in turns + subagent_turns for c in t.tool_uses if c.name in SUBAGENT_TOOLS]
    by_agent = {c.spawned_agent_id: c for c in calls if c.spawned_agent_id}
    claimed: set[str] = set()

    def claim(sub: Turn, call: ToolUse) -> None:
        sub.parent_tool_use_id = call.tool_use_id
        subagent_type = call.input.get("subagent_type")
        if isinstance(subagent_type, str) and subagent_type and not sub.agent_type:
            sub.agent_type = subagent_type
        claimed.add(call.tool_use_id)

    pending = [s for s in subagent_turns if s.parent_tool_use_id is None]
    for sub in list(pending):
        call = by_agent.get(sub.agent_id) if sub.agent_id else None
        if call is not None and call.tool_use_id not in claimed:
            claim(sub, call)
            pending.remove(sub)
    for sub in list(pending):
        wanted = normalise_prompt(sub.prompt)
        for call in calls:
            if call.tool_use_id in claimed or call.spawned_agent_id not in (None, sub.agent_id):
                continue
            if wanted and normalise_prompt(redact_text(call.subagent_prompt or "")) == wanted:
                claim(sub, call)
                pending.remove(sub)
                break
    for sub in pending:
        if sub.agent_id and sub.agent_id.startswith("acompact"):
            sub.agent_type = sub.agent_type or "compact"  # Claude Code's compaction run
