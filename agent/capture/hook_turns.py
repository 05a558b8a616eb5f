"""Turn a session's hook events into turns: what the hooks alone say happened.

Hooks give the prompt (UserPromptSubmit), each tool call with its input, result, error flag and
duration (PreToolUse / PostToolUse / PostToolUseFailure), the end of a turn with the final
answer (Stop's ``last_assistant_message``) and the subagents' lifecycle (SubagentStart/Stop with
``agent_id``, ``agent_type`` and ``agent_transcript_path``). They lack Claude's thinking and
intermediate text: ingest merges this view with the transcript's (``ingest.merge_turns``).

Order: events are replayed in arrival order, but tool calls are ordered by their PreToolUse
(the assistant's call order); parallel calls' PostToolUse hooks fire concurrently and arrive
in any order. A call seen only through its PostToolUse is placed by that event's time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Protocol

from ccrl.agent.capture.transcript import SUBAGENT_TOOLS, ToolUse, Turn, as_utc, content_text, truncate
from ccrl.hooks.redact import redact_obj, redact_text

TOOL_EVENTS = ("PreToolUse", "PostToolUse", "PostToolUseFailure")
_FAR_FUTURE = datetime.max.replace(tzinfo=timezone.utc)


class EventLike(Protocol):
    """The fields of ``models.HookEvent`` this module reads."""

    id: int | None
    event_key: str
    received_at: datetime
    event: str
    session_id: str | None
    tool_use_id: str | None
    prompt_id: str | None
    agent_id: str | None
    payload: dict[str, Any]


@dataclass
class HookView:
    """A session as its hook events describe it."""

    session_id: str | None = None
    cwd: str | None = None
    transcript_path: str | None = None
    model: str | None = None
    start_source: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    end_reason: str | None = None
    turns: list[Turn] = field(default_factory=list)
    subagent_turns: list[Turn] = field(default_factory=list)
    # agent_id → the main turn that was running when the subagent started
    subagent_parent: dict[str, Turn] = field(default_factory=dict)
    agent_transcripts: list[str] = field(default_factory=list)
    events: int = 0


def tool_response_text(response: Any) -> str:
    """What a tool returned, as text, from PostToolUse's structured ``tool_response``."""
    if response is None:
        return ""
    if isinstance(response, str):
        return response
    if isinstance(response, list):
        return content_text(response)
    if isinstance(response, dict):
        if "stdout" in response or "stderr" in response:  # Bash
            out = str(response.get("stdout") or "")
            err = str(response.get("stderr") or "")
            return out + ("\n" + err if out and err else err)
        file = response.get("file")
        if isinstance(file, dict) and isinstance(file.get("content"), str):  # Read
            return file["content"]
        content = response.get("content")
        if isinstance(content, (str, list)):
            return content_text(content)
    return json.dumps(response, ensure_ascii=False, sort_keys=True, default=str)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


class _Builder:
    def __init__(self, max_output_chars: int | None) -> None:
        self.max_output_chars = max_output_chars
        self.view = HookView()
        self.current: Turn | None = None
        self.by_prompt_id: dict[str, Turn] = {}
        self.agents: dict[str, Turn] = {}
        self.calls: dict[str, tuple[Turn, ToolUse]] = {}
        self.call_order: dict[str, tuple[datetime, int]] = {}
        self.unpaired: list[tuple[Turn, ToolUse, str]] = []  # calls with no tool_use_id

    # -- which turn an event belongs to

    def _new_turn(self, event: EventLike, prompt: str = "", prompt_id: str | None = None) -> Turn:
        payload = event.payload
        turn = Turn(
            prompt=prompt,
            prompt_id=prompt_id,
            started_at=event.received_at,
            ended_at=event.received_at,
            cwd=_str(payload.get("cwd")),
            sources={"hook"},
            hook_event_key=event.event_key,
        )
        self.view.turns.append(turn)
        if prompt_id:
            self.by_prompt_id[prompt_id] = turn
        return turn

    def _agent_turn(self, event: EventLike, agent_id: str) -> Turn:
        turn = self.agents.get(agent_id)
        if turn is None:
            turn = Turn(
                started_at=event.received_at,
                ended_at=event.received_at,
                cwd=_str(event.payload.get("cwd")),
                is_subagent=True,
                agent_id=agent_id,
                sources={"hook"},
                hook_event_key=event.event_key,
            )
            self.agents[agent_id] = turn
            self.view.subagent_turns.append(turn)
            parent = self._main_turn(event, create=False)
            if parent is not None:
                self.view.subagent_parent[agent_id] = parent
        agent_type = _str(event.payload.get("agent_type"))
        if agent_type and not turn.agent_type:
            turn.agent_type = agent_type
        return turn

    def _main_turn(self, event: EventLike, create: bool = True) -> Turn | None:
        prompt_id = event.prompt_id or _str(event.payload.get("prompt_id"))
        if prompt_id:
            turn = self.by_prompt_id.get(prompt_id)
            if turn is None and create:
                turn = self._new_turn(event, prompt_id=prompt_id)  # its prompt event was lost
                self.current = turn
            return turn
        if self.current is None and create:
            self.current = self._new_turn(event)  # activity before any prompt we saw
        return self.current

    def _target(self, event: EventLike) -> Turn:
        agent_id = event.agent_id or _str(event.payload.get("agent_id"))
        if agent_id:
            return self._agent_turn(event, agent_id)
        turn = self._main_turn(event)
        assert turn is not None
        return turn

    # -- events

    def event(self, event: EventLike) -> None:
        payload = event.payload if isinstance(event.payload, dict) else {}
        name = event.event or _str(payload.get("hook_event_name")) or ""
        view = self.view
        view.events += 1
        view.session_id = view.session_id or event.session_id or _str(payload.get("session_id"))
        view.cwd = _str(payload.get("cwd")) or view.cwd
        view.transcript_path = _str(payload.get("transcript_path")) or view.transcript_path
        if view.started_at is None or event.received_at < view.started_at:
            view.started_at = event.received_at
        if name == "UserPromptSubmit":
            self._prompt(event, payload)
        elif name in TOOL_EVENTS:
            self._tool(event, payload, name)
        elif name == "Stop":
            turn = self._main_turn(event)
            assert turn is not None
            self._stop(turn, event, payload)
        elif name == "SubagentStart":
            agent_id = event.agent_id or _str(payload.get("agent_id"))
            if agent_id:
                self._agent_turn(event, agent_id)
        elif name == "SubagentStop":
            agent_id = event.agent_id or _str(payload.get("agent_id"))
            path = _str(payload.get("agent_transcript_path"))
            if path and path not in view.agent_transcripts:
                view.agent_transcripts.append(path)
            if agent_id:
                self._stop(self._agent_turn(event, agent_id), event, payload)
        elif name == "SessionStart":
            view.start_source = _str(payload.get("source")) or view.start_source
            view.model = _str(payload.get("model")) or view.model
        elif name == "SessionEnd":
            view.ended_at = event.received_at
            view.end_reason = _str(payload.get("reason")) or view.end_reason

    def _prompt(self, event: EventLike, payload: dict[str, Any]) -> None:
        prompt = redact_text(str(payload.get("prompt") or ""))
        prompt_id = event.prompt_id or _str(payload.get("prompt_id"))
        turn = self.by_prompt_id.get(prompt_id) if prompt_id else None
        if turn is None:
            turn = self._new_turn(event, prompt, prompt_id)
        else:
            turn.prompt = turn.prompt or prompt
            turn.hook_event_key = event.event_key
            turn.started_at = min(turn.started_at or event.received_at, event.received_at)
        self.current = turn

    def _stop(self, turn: Turn, event: EventLike, payload: dict[str, Any]) -> None:
        turn.complete = True
        message = payload.get("last_assistant_message")
        if isinstance(message, str) and message.strip():
            turn.hook_response = redact_text(message)
        turn.ended_at = max(turn.ended_at or event.received_at, event.received_at)

    def _tool(self, event: EventLike, payload: dict[str, Any], name: str) -> None:
        turn = self._target(event)
        tool_use_id = event.tool_use_id or _str(payload.get("tool_use_id"))
        tool_name = str(payload.get("tool_name") or "")
        raw_input = payload.get("tool_input")
        tool_input = redact_obj(raw_input) if isinstance(raw_input, dict) else {}
        call = self._find_call(turn, tool_use_id, tool_name, tool_input, name, event)
        call.name = call.name or tool_name
        call.input = call.input or tool_input
        order = (event.received_at, event.id or 0)
        if name == "PreToolUse":
            call.started_at = event.received_at
            self.call_order[call.tool_use_id] = order  # the assistant's call order
        else:
            self.call_order.setdefault(call.tool_use_id, order)
            duration = payload.get("duration_ms")
            if isinstance(duration, (int, float)) and not isinstance(duration, bool):
                call.duration_ms = int(duration)
            call.has_result = True
            if name == "PostToolUse":
                text = tool_response_text(payload.get("tool_response"))
                call.is_error = False
                response = payload.get("tool_response")
                if isinstance(response, dict):
                    if response.get("interrupted") is True:
                        call.is_interrupt = True
                    if isinstance(response.get("agentId"), str):
                        call.spawned_agent_id = response["agentId"]
            else:
                error = payload.get("error")
                text = error if isinstance(error, str) else tool_response_text(error)
                call.is_error = True
                call.is_interrupt = bool(payload.get("is_interrupt"))
                if call.is_interrupt and not turn.is_subagent:
                    turn.interrupted = True
            call.output = truncate(redact_text(text), self.max_output_chars)
        turn.ended_at = max(turn.ended_at or event.received_at, event.received_at)

    def _find_call(
        self, turn: Turn, tool_use_id: str | None, tool_name: str, tool_input: dict[str, Any],
        name: str, event: EventLike,
    ) -> ToolUse:
        if tool_use_id:
            found = self.calls.get(tool_use_id)
            if found is not None:
                return found[1]
            call = ToolUse(tool_use_id=tool_use_id, name=tool_name, input=tool_input)
            turn.tool_uses.append(call)
            self.calls[tool_use_id] = (turn, call)
            return call
        # Older Claude Code sent no tool_use_id: pair a result with the earliest call of the
        # same tool and input that has none yet. The id is ours, prefixed "hook:"; ingest
        # matches such calls to the transcript's by tool and input.
        if name != "PreToolUse":
            for i, (owner, call, _) in enumerate(self.unpaired):
                if owner is turn and call.name == tool_name and call.input == tool_input:
                    del self.unpaired[i]
                    return call
        call = ToolUse(tool_use_id=f"hook:{event.event_key}", name=tool_name, input=tool_input)
        turn.tool_uses.append(call)
        self.calls[call.tool_use_id] = (turn, call)
        if name == "PreToolUse":
            self.unpaired.append((turn, call, call.tool_use_id))
        return call

    # -- result

    def finish(self) -> HookView:
        view = self.view
        for turn in view.turns + view.subagent_turns:
            turn.tool_uses.sort(key=lambda c: self.call_order.get(c.tool_use_id, (_FAR_FUTURE, 0)))
            turn.steps = hook_steps(turn)
        # A subagent's task: the prompt of the Task/Agent call whose result names its agent id.
        spawners = {
            c.spawned_agent_id: c
            for t in view.turns + view.subagent_turns
            for c in t.tool_uses
            if c.name in SUBAGENT_TOOLS and c.spawned_agent_id
        }
        for sub in view.subagent_turns:
            call = spawners.get(sub.agent_id)
            if call is not None:
                sub.parent_tool_use_id = call.tool_use_id
                sub.prompt = sub.prompt or redact_text(call.subagent_prompt or "")
                subagent_type = call.input.get("subagent_type")
                if isinstance(subagent_type, str) and subagent_type and not sub.agent_type:
                    sub.agent_type = subagent_type
        return view


def hook_steps(turn: Turn) -> list[dict[str, Any]]:
    """The steps the hooks can vouch for: each call and its result, then the final answer."""
    steps: list[dict[str, Any]] = []
    for call in turn.tool_uses:
        steps.append(
            {"kind": "tool_use", "tool_use_id": call.tool_use_id, "name": call.name, "input": call.input,
             "message_id": None}
        )
        if call.has_result:
            steps.append(
                {"kind": "tool_result", "tool_use_id": call.tool_use_id, "output": call.output or "",
                 "is_error": call.is_error}
            )
    if turn.hook_response:
        steps.append({"kind": "text", "text": turn.hook_response, "message_id": None})
    return steps


def turns_from_events(events: Iterable[EventLike], max_output_chars: int | None = None) -> HookView:
    """Replay one session's hook events (any order; they are sorted by arrival) into turns."""
    builder = _Builder(max_output_chars)
    # Copies, with aware UTC times: stored rows are never modified here.
    snapshot = [
        _Event(e.id, e.event_key, as_utc(e.received_at), e.event, e.session_id, e.tool_use_id, e.prompt_id,
               e.agent_id, e.payload if isinstance(e.payload, dict) else {})
        for e in events
    ]
    for event in sorted(snapshot, key=lambda e: (e.received_at, e.id or 0)):
        builder.event(event)
    return builder.finish()


@dataclass
class _Event:
    id: int | None
    event_key: str
    received_at: datetime
    event: str
    session_id: str | None
    tool_use_id: str | None
    prompt_id: str | None
    agent_id: str | None
    payload: dict[str, Any]
