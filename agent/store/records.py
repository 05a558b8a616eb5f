"""The stable JSON form of a trace: what ``ccrl traces show --json`` prints and what signals,
datasets, rewards and evaluation read. Fields may be added; none is removed or renamed.

Shape::

    {
      "id": 12, "session_id": "…", "parent_id": null,        # parent_id: subagent → its parent
      "agent_id": null, "agent_type": null,
      "prompt": "…",                                        # the user's prompt (slash commands expanded)
      "response": "…",                                      # Claude's final answer text
      "reasoning": ["…", …],                                # thinking + text blocks before the answer, in order
      "tool_calls": [{"id": "toolu_…", "name": "Read", "input": {…}, "output": "…",
                      "is_error": false, "duration_ms": 12}, …],   # in call order
      "tool_sequence": ["Read", …],
      "steps": [                                            # the whole turn, in order
        {"kind": "thinking",    "text": "…", "message_id": "msg_…"},
        {"kind": "text",        "text": "…", "message_id": "msg_…"},
        {"kind": "tool_use",    "tool_use_id": "toolu_…", "name": "Read", "input": {…}, "message_id": "msg_…"},
        {"kind": "tool_result", "tool_use_id": "toolu_…", "output": "…", "is_error": false},
        …
      ],
      "signals": {},                                        # behaviour extraction fills this
      "status": "complete",                                 # open | complete | interrupted
      "cwd": "…", "model": "…", "started_at": "ISO", "ended_at": "ISO"
    }

Consecutive ``tool_use`` steps with the same ``message_id`` are parallel calls made in one
assistant message.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ccrl.agent.store.models import ToolCall, Trace

STEP_KINDS = ("thinking", "text", "tool_use", "tool_result")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def trace_json(trace: Trace, tool_calls: list[ToolCall]) -> dict[str, Any]:
    calls = sorted(tool_calls, key=lambda c: c.seq)
    return {
        "id": trace.id,
        "session_id": trace.session_id,
        "parent_id": trace.parent_id,
        "agent_id": trace.agent_id,
        "agent_type": trace.agent_type,
        "prompt": trace.prompt,
        "response": trace.response,
        "reasoning": list(trace.reasoning or []),
        "tool_calls": [
            {
                "id": c.tool_use_id,
                "name": c.name,
                "input": c.input,
                "output": c.output,
                "is_error": c.is_error,
                "duration_ms": c.duration_ms,
            }
            for c in calls
        ],
        "tool_sequence": [c.name for c in calls],
        "steps": list(trace.steps or []),
        "signals": dict(trace.signals or {}),
        "status": trace.status,
        "cwd": trace.cwd,
        "model": trace.model,
        "started_at": _iso(trace.started_at),
        "ended_at": _iso(trace.ended_at),
    }
