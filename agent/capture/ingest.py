"""Ingest: hook events and transcripts → sessions, traces and tool calls.

``ingest()`` first drains the inbox and spool into ``HookEvent`` rows (``drain.drain``), then
rebuilds the traces of every session that has new events, or whose transcript grew since it
was last read (the transcript lags behind the hooks: the final message can land after Stop).
``ccrl import`` (``importer.py``) calls :func:`rebuild_session` too, so hooks and transcripts
of one session always end up in the same traces whichever arrives first.

Rebuilding a session is a pure function of what is known about it, applied as an upsert:

1. the hook view (``hook_turns.turns_from_events``) of *all* its stored events;
2. the transcript view (``transcript.parse_session``) of its transcript and subagent files,
   when they are still on disk;
3. the two views merged turn by turn (:func:`merge_turns`): a hook turn and a transcript turn
   are the same turn when they share a ``prompt_id``, else a ``tool_use_id``, else the same
   prompt text within :data:`PROMPT_MATCH_WINDOW`;
4. each merged turn matched to a stored trace of the session (:func:`_TraceStore.match`), by
   ``key``, ``prompt_id``, transcript ``user_uuid``, ``agent_id``, a shared ``tool_use_id``,
   then the same prompt text close in time; updated in place, or created.

Trace keys (``Trace.key``, unique per session, assigned once and never changed):

- ``prompt:<prompt_id>`` when the turn's ``prompt_id`` is known when it is first stored;
- ``uuid:<uuid>``: the transcript ``uuid`` of the user line that started the turn;
- ``hook:<event_key>``: a turn seen by the hooks only, without ``prompt_id`` (the
  UserPromptSubmit event's key);
- subagent runs: ``agent:<agent_id>``, else ``agent:uuid:<uuid>`` (inline sidechains of
  Claude Code ≤ 2.0 have no agent id), else ``agent:hook:<event_key>``.

Later views of the same turn find the trace through the other identities above, so the key of a
trace first stored from the hooks stays what it was when the transcript arrives.

Nothing stored is dropped: transcripts are deleted after 30 days, so a rebuild without the
transcript keeps the steps, prompt and response a transcript gave earlier; tool calls are
keyed on ``tool_use_id`` and never deleted; a field is only replaced by a non-empty value.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import and_, or_
from sqlalchemy import delete as sql_delete
from sqlmodel import Session as DBSession
from sqlmodel import col, func, select

from ccrl.agent.capture.hook_turns import HookView, hook_steps, turns_from_events
from ccrl.agent.core.config import Settings, get_settings
from ccrl.agent.store import origin
from ccrl.agent.store.db import ensure_private_file, get_engine
from ccrl.agent.store.models import HookEvent, PurgedSession, Quarantine, Session, ToolCall, Trace, utcnow
from ccrl.agent.store.records import trace_json
from ccrl.trainers.signals import extract_signals
from ccrl.agent.capture.transcript import (
    BadLine,
    ParsedSession,
    ToolUse,
    Turn,
    as_utc,
    normalise_prompt,
    parse_session,
    split_reasoning,
    subagent_files,
)
from ccrl.agent.capture.deep_redact import redact_bytes
from ccrl.hooks.paths import ignored_path

# How far apart a hook's prompt and the transcript's may be and still be one turn.
PROMPT_MATCH_WINDOW = timedelta(minutes=10)
# Hooks and transcript lines are stamped by different writers of one machine.
CLOCK_SKEW = timedelta(seconds=5)
_FAR_FUTURE = datetime.max.replace(tzinfo=timezone.utc)
STATE_FILE = "ingest-state.json"
LOCK_FILE = "ingest.lock"
WATCH_MISSING_FOR_S = 7 * 24 * 3600


# --------------------------------------------------------------------------------------------
# Reports


@dataclass
class SessionResult:
    """What rebuilding one session did."""

    session_id: str
    project: str | None = None  # the session's working directory
    ignored: bool = False  # its cwd opted out (.ccrl-ignore)
    purged: bool = False  # the user purged it (ccrl purge): never rebuilt
    transcripts_read: int = 0
    transcript_missing: bool = False
    traces: int = 0  # traces of the session after the rebuild
    traces_created: int = 0
    traces_updated: int = 0
    tool_calls: int = 0  # tool calls of the session after the rebuild
    tool_calls_created: int = 0
    tool_errors: int = 0
    corrupt_lines: int = 0  # quarantined transcript lines
    ignored_lines: int = 0  # transcript lines of types that carry no turn content
    duplicates_skipped: int = 0  # turns already stored under another session (resumed copies)


@dataclass
class IngestReport:
    """What ``ingest()`` did. ``drain`` is the drain step's own report, as a dict."""

    drain: dict[str, Any] = field(default_factory=dict)
    sessions: int = 0
    sessions_ignored: int = 0
    sessions_purged: int = 0
    traces_created: int = 0
    traces_updated: int = 0
    tool_calls_created: int = 0
    transcripts_read: int = 0
    transcripts_missing: int = 0
    corrupt_lines: int = 0
    errors: list[str] = field(default_factory=list)
    reredacted: dict[str, Any] = field(default_factory=dict)  # when the redaction rules changed

    def add(self, result: SessionResult) -> None:
        if result.ignored:
            self.sessions_ignored += 1
            return
        if result.purged:
            self.sessions_purged += 1
            return
        self.sessions += 1
        self.traces_created += result.traces_created
        self.traces_updated += result.traces_updated
        self.tool_calls_created += result.tool_calls_created
        self.transcripts_read += result.transcripts_read
        self.transcripts_missing += int(result.transcript_missing)
        self.corrupt_lines += result.corrupt_lines

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Merging the hook view and the transcript view of a session


def _close_in_time(a: datetime | None, b: datetime | None) -> bool:
    return a is None or b is None or abs(as_utc(a) - as_utc(b)) <= PROMPT_MATCH_WINDOW


def _same_prompt(transcript_turn: Turn, hook_turn: Turn) -> bool:
    """Whether a hook prompt is the transcript prompt: same text, or the slash command whose
    expansion the transcript holds."""
    hook = normalise_prompt(hook_turn.prompt)
    if not hook:
        return False
    text = normalise_prompt(transcript_turn.prompt.replace("[image]", ""))
    if hook == text or hook == normalise_prompt(transcript_turn.prompt):
        return True
    command = transcript_turn.command
    return bool(command) and hook.split()[0] == command


def _real_ids(turn: Turn) -> set[str]:
    return {c.tool_use_id for c in turn.tool_uses if not c.tool_use_id.startswith("hook:")}


def _pair_turns(transcript_turns: list[Turn], hook_turns: list[Turn]) -> dict[int, Turn]:
    """hook turn index → the transcript turn that is the same turn."""
    pairs: dict[int, Turn] = {}
    taken: set[int] = set()
    rules = (
        lambda t, h: bool(h.prompt_id) and h.prompt_id == t.prompt_id,
        lambda t, h: bool(_real_ids(h) & t.tool_use_ids),
        lambda t, h: (t.agent_id is not None and t.agent_id == h.agent_id),
        lambda t, h: _same_prompt(t, h) and _close_in_time(t.started_at, h.started_at),
    )
    for rule in rules:
        for i, hook in enumerate(hook_turns):
            if i in pairs:
                continue
            for transcript in transcript_turns:
                if id(transcript) not in taken and rule(transcript, hook):
                    pairs[i] = transcript
                    taken.add(id(transcript))
                    break
    # Activity the hooks saw without its prompt (hooks installed mid-turn, or the prompt event
    # lost): the transcript turn that was running then.
    for i, hook in enumerate(hook_turns):
        if i in pairs or hook.prompt or hook.started_at is None:
            continue
        running = [t for t in transcript_turns
                   if t.started_at is not None and as_utc(t.started_at) <= hook.started_at + CLOCK_SKEW]
        if running and id(running[-1]) not in taken:
            pairs[i] = running[-1]
            taken.add(id(running[-1]))
    return pairs


def _merge_call(transcript: ToolUse, hook: ToolUse | None) -> ToolUse:
    if hook is None:
        return transcript
    both = transcript.has_result and hook.has_result
    return ToolUse(
        tool_use_id=transcript.tool_use_id,
        name=transcript.name or hook.name,
        input=transcript.input or hook.input,
        message_id=transcript.message_id,
        started_at=transcript.started_at or hook.started_at,
        output=transcript.output if transcript.has_result else hook.output,
        is_error=(transcript.is_error or hook.is_error) if both else (
            transcript.is_error if transcript.has_result else hook.is_error),
        is_interrupt=transcript.is_interrupt or hook.is_interrupt,
        has_result=transcript.has_result or hook.has_result,
        duration_ms=hook.duration_ms if hook.duration_ms is not None else transcript.duration_ms,
        spawned_agent_id=transcript.spawned_agent_id or hook.spawned_agent_id,
        hook_id=hook.tool_use_id if hook.tool_use_id != transcript.tool_use_id else None,
    )


class _CallIndex:
    """Every call the hooks saw in a session, to enrich the transcript's calls wherever the
    transcript puts them (older Claude Code sends a subagent's tool hooks without agent_id, so
    the hook view files them under the main turn)."""

    def __init__(self, hook_turns: list[Turn], transcript_turns: list[Turn]) -> None:
        self.by_id = {c.tool_use_id: c for t in hook_turns for c in t.tool_uses}
        self.transcript_ids = {c.tool_use_id for t in transcript_turns for c in t.tool_uses}
        self.used: set[str] = set()

    def enrich(self, call: ToolUse) -> ToolUse:
        match = self.by_id.get(call.tool_use_id)
        if match is None:  # a hook call without tool_use_id: same tool, same input
            match = next(
                (c for hid, c in self.by_id.items()
                 if hid.startswith("hook:") and hid not in self.used and c.name == call.name and c.input == call.input),
                None,
            )
        if match is not None:
            self.used.add(match.tool_use_id)
        return _merge_call(call, match)

    def hook_only(self, call: ToolUse) -> bool:
        """A call the transcript does not hold (yet): it lags, or is gone."""
        return call.tool_use_id not in self.transcript_ids and call.tool_use_id not in self.used


def _with_calls(turn: Turn, calls: list[ToolUse], steps: list[dict[str, Any]]) -> Turn:
    merged = copy.copy(turn)
    merged.tool_uses = calls
    merged.steps = steps
    return merged


def _enriched(transcript: Turn, index: _CallIndex) -> Turn:
    calls = [index.enrich(c) for c in transcript.tool_uses]
    steps = [dict(s) for s in transcript.steps]
    _add_hook_results(steps, calls)
    return _with_calls(transcript, calls, steps)


def combine(transcript: Turn, hook: Turn, index: _CallIndex) -> Turn:
    """One turn from its transcript view (already enriched by ``index``) and its hook view.

    The transcript's steps and call order win; the hooks add durations and error flags, the
    calls and results the transcript does not hold yet, and Stop's final answer when the
    transcript's last message has not been written yet.
    """
    missing = [c for c in hook.tool_uses if index.hook_only(c)]
    steps = [dict(s) for s in transcript.steps]
    for call in missing:
        steps.append({"kind": "tool_use", "tool_use_id": call.tool_use_id, "name": call.name,
                      "input": call.input, "message_id": None})
        if call.has_result:
            steps.append({"kind": "tool_result", "tool_use_id": call.tool_use_id,
                          "output": call.output or "", "is_error": call.is_error})
    _, response = split_reasoning(steps)
    if not response and hook.hook_response:
        steps.append({"kind": "text", "text": hook.hook_response, "message_id": None})
    return Turn(
        prompt=transcript.prompt or hook.prompt,
        uuid=transcript.uuid,
        prompt_id=hook.prompt_id or transcript.prompt_id,
        command=transcript.command,
        started_at=transcript.started_at or hook.started_at,
        ended_at=max((t for t in (transcript.ended_at, hook.ended_at) if t), default=None),
        cwd=transcript.cwd or hook.cwd,
        model=transcript.model or hook.model,
        steps=steps,
        tool_uses=transcript.tool_uses + missing,
        interrupted=transcript.interrupted or hook.interrupted,
        complete=transcript.complete or hook.complete,
        hook_response=hook.hook_response,
        images=transcript.images,
        is_subagent=transcript.is_subagent or hook.is_subagent,
        agent_id=transcript.agent_id or hook.agent_id,
        agent_type=transcript.agent_type or hook.agent_type,
        parent_tool_use_id=transcript.parent_tool_use_id or hook.parent_tool_use_id,
        sources=transcript.sources | hook.sources,
        hook_event_key=hook.hook_event_key,
        expanded=transcript.expanded,
    )


def _add_hook_results(steps: list[dict[str, Any]], calls: list[ToolUse]) -> None:
    """Results the hooks saw for calls whose transcript result is not written yet: placed
    after the calling message's run of steps."""
    have = {s.get("tool_use_id") for s in steps if s.get("kind") == "tool_result"}
    for call in calls:
        if not call.has_result or call.tool_use_id in have:
            continue
        at = next((i for i, s in enumerate(steps)
                   if s.get("kind") == "tool_use" and s.get("tool_use_id") == call.tool_use_id), None)
        if at is None:
            continue
        message_id = steps[at].get("message_id")
        end = at + 1
        while end < len(steps) and (
            steps[end].get("kind") == "tool_result"
            or (steps[end].get("kind") == "tool_use" and steps[end].get("message_id") == message_id)
        ):
            end += 1
        steps.insert(end, {"kind": "tool_result", "tool_use_id": call.tool_use_id,
                           "output": call.output or "", "is_error": call.is_error})


def _merge_list(transcript_turns: list[Turn], hook_turns: list[Turn], index: _CallIndex,
                enriched: dict[int, Turn], became: dict[int, Turn]) -> list[Turn]:
    pairs = _pair_turns(transcript_turns, hook_turns)
    merged_of_transcript: dict[int, Turn] = {}
    for i, hook in enumerate(hook_turns):
        transcript = pairs.get(i)
        if transcript is not None:
            merged = combine(enriched[id(transcript)], hook, index)
            merged_of_transcript[id(transcript)] = merged
            became[id(hook)] = merged
    result = [merged_of_transcript.get(id(t), enriched[id(t)]) for t in transcript_turns]
    for i, hook in enumerate(hook_turns):
        if i in pairs:
            continue
        calls = [c for c in hook.tool_uses if index.hook_only(c)]
        if len(calls) != len(hook.tool_uses):
            # some of its calls are another turn's in the transcript (a subagent's, seen by
            # older hooks without agent_id): they are stored there
            hook = _with_calls(hook, calls, hook_steps(_with_calls(hook, calls, [])))
            if not (hook.prompt or calls or hook.hook_response):
                continue
        became[id(hook_turns[i])] = hook
        at = len(result)
        if hook.started_at is not None:
            for j, turn in enumerate(result):
                if turn.started_at is not None and turn.started_at > hook.started_at:
                    at = j
                    break
        result.insert(at, hook)
    return result


def merge_turns(
    transcript_turns: list[Turn], transcript_subagents: list[Turn], hook_turns: list[Turn], hook_subagents: list[Turn]
) -> tuple[list[Turn], list[Turn], dict[int, Turn]]:
    """Merge a session's transcript view and hook view (each: main turns in order, subagent
    runs). Returns the merged main turns in order, the merged subagent runs, and for each hook
    turn (by ``id()``) the merged turn it became."""
    index = _CallIndex(hook_turns + hook_subagents, transcript_turns + transcript_subagents)
    # Every transcript call takes its hook facts first, so that what is left over is what the
    # transcript does not hold.
    enriched = {id(t): _enriched(t, index) for t in transcript_turns + transcript_subagents}
    became: dict[int, Turn] = {}
    main = _merge_list(transcript_turns, hook_turns, index, enriched, became)
    subs = _merge_list(transcript_subagents, hook_subagents, index, enriched, became)
    return main, subs, became


# --------------------------------------------------------------------------------------------
# Storing


def turn_key(turn: Turn) -> str:
    """The stable key a new trace for this turn gets (see the module docstring)."""
    if turn.is_subagent:
        if turn.agent_id:
            return f"agent:{turn.agent_id}"
        if turn.uuid:
            return f"agent:uuid:{turn.uuid}"
        if turn.hook_event_key:
            return f"agent:hook:{turn.hook_event_key}"
        return f"agent:call:{turn.parent_tool_use_id or '-'}"
    if turn.prompt_id:
        return f"prompt:{turn.prompt_id}"
    if turn.uuid:
        return f"uuid:{turn.uuid}"
    if turn.hook_event_key:
        return f"hook:{turn.hook_event_key}"
    first = turn.tool_uses[0].tool_use_id if turn.tool_uses else "-"
    return f"orphan:{first}"


def _is_subagent_trace(trace: Trace) -> bool:
    return trace.key.startswith("agent:")


def _source(*parts: str | set[str] | None) -> str:
    seen: set[str] = set()
    for part in parts:
        if isinstance(part, set):
            seen |= part
        elif part == "both":
            seen |= {"hook", "transcript"}
        elif part:
            seen.add(part)
    if {"hook", "transcript"} <= seen:
        return "both"
    return next(iter(seen), "hook")


def finalize_trace(trace: Trace, tool_calls: list[ToolCall]) -> Trace:
    """The last step before a trace is saved: derive what follows from its steps.

    ``reasoning`` and ``response`` are recomputed from ``steps`` (a response already stored is
    never replaced by nothing). Behaviour signals are extracted here (``signals.extract_signals``
    of the trace's JSON form), so every writer of traces (ingest, import) produces the same.
    """
    reasoning, response = split_reasoning(list(trace.steps or []))
    trace.reasoning = reasoning
    if response or not trace.response:
        trace.response = response
    trace.signals = extract_signals(trace_json(trace, tool_calls))
    trace.updated_at = utcnow()
    return trace


def _merge_steps(
    old: list[dict[str, Any]], old_rich: bool, new: list[dict[str, Any]], new_rich: bool,
    elsewhere: set[str] | frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    """Steps for a trace that has ``old`` stored and a rebuild that produced ``new``.

    A transcript-derived list beats a hook-derived one; of two transcript-derived lists the
    longer one wins (a transcript only grows). Tool calls and a final answer only the other
    list holds are appended, so nothing known is lost, except calls listed in ``elsewhere``:
    this rebuild puts them in another trace (a subagent's call the hooks had filed here).
    """
    if new_rich and (not old_rich or len(new) >= len(old)):
        base, other = [dict(s) for s in new], old
    elif old_rich:
        base, other = [dict(s) for s in old], new
    else:
        base, other = ([dict(s) for s in new], old) if len(new) >= len(old) else ([dict(s) for s in old], new)
    have_use = {s.get("tool_use_id") for s in base if s.get("kind") == "tool_use"}
    have_result = {s.get("tool_use_id") for s in base if s.get("kind") == "tool_result"}
    if elsewhere:
        base = [st for st in base if st.get("kind") not in ("tool_use", "tool_result")
                or st.get("tool_use_id") not in elsewhere]
    for step in other:
        kind = step.get("kind")
        if step.get("tool_use_id") in elsewhere:
            continue
        if kind == "tool_use" and step.get("tool_use_id") not in have_use:
            base.append(dict(step))
            have_use.add(step.get("tool_use_id"))
        elif kind == "tool_result" and step.get("tool_use_id") not in have_result:
            base.append(dict(step))
            have_result.add(step.get("tool_use_id"))
    _, response = split_reasoning(base)
    if not response:
        _, other_response = split_reasoning(list(other))
        if other_response:
            base.append({"kind": "text", "text": other_response, "message_id": None})
    return base


class _TraceStore:
    """Upserts one session's merged turns into its traces and tool calls."""

    def __init__(self, db: DBSession, session_id: str, result: SessionResult) -> None:
        self.db = db
        self.session_id = session_id
        self.result = result
        self.traces: list[Trace] = list(db.exec(select(Trace).where(Trace.session_id == session_id)).all())
        ids = [t.id for t in self.traces]
        self.calls: list[ToolCall] = (
            list(db.exec(select(ToolCall).where(col(ToolCall.trace_id).in_(ids))).all()) if ids else []
        )
        self.call_by_id: dict[str, ToolCall] = {c.tool_use_id: c for c in self.calls if c.tool_use_id}
        self.claimed: set[int] = set()
        self.keys: set[str] = {t.key for t in self.traces}
        self.trace_of_turn: dict[int, Trace] = {}
        self.call_order: dict[int, list[str]] = {}  # trace id → tool_use_ids in the turn's order
        self.foreign: dict[str, int] = {}  # tool_use_id → trace id, owned by another session
        self.foreign_uuids: set[str] = set()
        self.assigned: set[str] = set()

    def assign(self, turns: list[Turn]) -> None:
        """Record which calls this rebuild gives to which turn (each call to exactly one)."""
        self.assigned = {c.tool_use_id for t in turns for c in t.tool_uses}
        self.assigned |= {c.hook_id for t in turns for c in t.tool_uses if c.hook_id}

    def load_foreign(self, turns: list[Turn]) -> None:
        """Which of these turns' ids are already stored under another session (a resumed or
        continued session's transcript repeats earlier turns)."""
        ids = {c.tool_use_id for t in turns for c in t.tool_uses if not c.tool_use_id.startswith("hook:")}
        ids -= set(self.call_by_id)
        for chunk in _chunks(sorted(ids), 500):
            rows = self.db.exec(
                select(ToolCall.tool_use_id, ToolCall.trace_id, Trace.session_id)
                .join(Trace, Trace.id == ToolCall.trace_id)
                .where(col(ToolCall.tool_use_id).in_(chunk))
            ).all()
            for tool_use_id, trace_id, session_id in rows:
                if session_id != self.session_id and tool_use_id:
                    self.foreign[tool_use_id] = trace_id
        uuids = sorted({t.uuid for t in turns if t.uuid} - {t.user_uuid for t in self.traces if t.user_uuid})
        for chunk in _chunks(uuids, 500):
            rows = self.db.exec(
                select(Trace.user_uuid).where(col(Trace.user_uuid).in_(chunk), Trace.session_id != self.session_id)
            ).all()
            self.foreign_uuids.update(u for u in rows if u)

    def match(self, turn: Turn) -> Trace | None:
        """The stored trace this turn is, if any."""
        candidates = [t for t in self.traces if t.id not in self.claimed and _is_subagent_trace(t) == turn.is_subagent]
        key = turn_key(turn)
        ids = _real_ids(turn) | {c.hook_id for c in turn.tool_uses if c.hook_id}
        owners = {self.call_by_id[i].trace_id for i in ids if i in self.call_by_id}
        rules = (
            lambda t: t.key == key,
            lambda t: bool(turn.prompt_id) and t.prompt_id == turn.prompt_id,
            lambda t: bool(turn.uuid) and t.user_uuid == turn.uuid,
            lambda t: bool(turn.agent_id) and t.agent_id == turn.agent_id,
            lambda t: bool(turn.hook_event_key) and t.key == f"hook:{turn.hook_event_key}",
            lambda t: t.id in owners,
            lambda t: bool(turn.prompt.strip())
            and normalise_prompt(t.prompt) == normalise_prompt(turn.prompt)
            and _close_in_time(t.started_at, turn.started_at),
        )
        for rule in rules:
            for trace in candidates:
                if rule(trace):
                    return trace
        return None

    def is_foreign(self, turn: Turn) -> bool:
        if turn.uuid and turn.uuid in self.foreign_uuids:
            return True
        ids = _real_ids(turn)
        return bool(ids) and ids <= set(self.foreign)

    def store(self, turn: Turn, is_last: bool) -> Trace | None:
        trace = self.match(turn)
        if trace is None and not turn.is_subagent and self.is_foreign(turn):
            self.result.duplicates_skipped += 1
            return None
        status = turn.status(is_last)
        new_rich = "transcript" in turn.sources
        if trace is None:
            key = turn_key(turn)
            n = 1
            while key in self.keys:
                n += 1
                key = f"{turn_key(turn)}#{n}"
            trace = Trace(session_id=self.session_id, key=key, steps=[], reasoning=[], signals={})
            old_rich = False
            self.traces.append(trace)
            self.keys.add(key)
            self.result.traces_created += 1
        else:
            old_rich = trace.source in ("transcript", "both")
            self.result.traces_updated += 1
        mine = {c.tool_use_id for c in turn.tool_uses}
        elsewhere = {i for i in self.assigned if i not in mine}
        trace.steps = _merge_steps(list(trace.steps or []), old_rich, turn.steps, new_rich, elsewhere)
        if turn.prompt and (new_rich or not old_rich or not trace.prompt):
            trace.prompt = turn.prompt
        trace.prompt_id = trace.prompt_id or turn.prompt_id
        trace.user_uuid = trace.user_uuid or turn.uuid
        trace.agent_id = trace.agent_id or turn.agent_id
        trace.agent_type = trace.agent_type or turn.agent_type
        trace.cwd = turn.cwd or trace.cwd
        trace.model = turn.model or trace.model
        if turn.started_at and (trace.started_at is None or new_rich or turn.started_at < as_utc(trace.started_at)):
            trace.started_at = turn.started_at
        if turn.ended_at and (trace.ended_at is None or turn.ended_at > as_utc(trace.ended_at)):
            trace.ended_at = turn.ended_at
        if status != "open" or trace.status in (None, "", "open"):
            trace.status = status
        trace.source = _source(trace.source if trace.id is not None else None, turn.sources)
        _stamp_origin(trace)
        self.db.add(trace)
        self.db.flush()
        assert trace.id is not None
        self.claimed.add(trace.id)
        self.trace_of_turn[id(turn)] = trace
        self._store_calls(trace, turn)
        return trace

    def _store_calls(self, trace: Trace, turn: Turn) -> None:
        order = self.call_order.setdefault(trace.id, [])
        for call in turn.tool_uses:
            if call.tool_use_id in self.foreign:
                continue  # stored with the session it first appeared in
            row = self.call_by_id.get(call.tool_use_id)
            if row is None and call.hook_id:
                row = self.call_by_id.pop(call.hook_id, None)
                if row is not None:  # the hooks' stand-in id gives way to the real one
                    row.tool_use_id = call.tool_use_id
                    self.call_by_id[call.tool_use_id] = row
            if row is None:
                row = ToolCall(trace_id=trace.id, tool_use_id=call.tool_use_id, input={})
                self.calls.append(row)
                self.call_by_id[call.tool_use_id] = row
                self.result.tool_calls_created += 1
            row.trace_id = trace.id
            row.name = call.name or row.name
            row.input = call.input or row.input or {}
            if call.has_result:
                row.output = call.output
                row.is_error = call.is_error
                row.is_interrupt = call.is_interrupt
            row.duration_ms = call.duration_ms if call.duration_ms is not None else row.duration_ms
            row.started_at = call.started_at or row.started_at
            if call.tool_use_id not in order:
                order.append(call.tool_use_id)
            self.db.add(row)

    def link_parents(self, subagent_turns: list[Turn], hook: HookView, became: dict[int, Turn]) -> None:
        """Point each subagent trace at the trace that started it: the owner of its Task/Agent
        call, else the turn the hooks saw running at SubagentStart, else the main turn it ran
        in (by time)."""
        self.db.flush()
        mains = sorted(
            (t for t in self.traces if not _is_subagent_trace(t) and t.started_at is not None),
            key=lambda t: as_utc(t.started_at),
        )
        for turn in subagent_turns:
            trace = self.trace_of_turn.get(id(turn))
            if trace is None:
                continue
            parent_id: int | None = None
            if turn.parent_tool_use_id:
                row = self.call_by_id.get(turn.parent_tool_use_id)
                if row is not None and row.trace_id != trace.id:
                    parent_id = row.trace_id
                elif turn.parent_tool_use_id in self.foreign:
                    parent_id = self.foreign[turn.parent_tool_use_id]
            if parent_id is None and turn.agent_id and turn.agent_id in hook.subagent_parent:
                merged = became.get(id(hook.subagent_parent[turn.agent_id]))
                parent = self.trace_of_turn.get(id(merged)) if merged is not None else None
                parent_id = parent.id if parent is not None else None
            if parent_id is None and turn.started_at is not None:
                before = [t for t in mains if as_utc(t.started_at) <= turn.started_at]
                parent_id = before[-1].id if before else None
            if parent_id is not None and parent_id != trace.id:
                trace.parent_id = parent_id
                self.db.add(trace)

    def finish(self) -> None:
        """Order tool calls within each trace, number the session's traces, finalise them."""
        by_trace: dict[int, list[ToolCall]] = {}
        for row in self.calls:
            by_trace.setdefault(row.trace_id, []).append(row)
        for trace in self.traces:
            rows = by_trace.get(trace.id, [])
            order = {tid: i for i, tid in enumerate(self.call_order.get(trace.id, []))}
            rows.sort(key=lambda r: (0, order[r.tool_use_id]) if r.tool_use_id in order else (1, r.seq, r.id or 0))
            for seq, row in enumerate(rows):
                row.seq = seq
                self.db.add(row)
        ordered = sorted(self.traces, key=lambda t: (as_utc(t.started_at) or _FAR_FUTURE, t.id or 0))
        for seq, trace in enumerate(ordered):
            trace.seq = seq
            if trace.id in self.claimed:
                finalize_trace(trace, by_trace.get(trace.id, []))
            self.db.add(trace)
        self.db.flush()
        self.result.traces = len(self.traces)
        self.result.tool_calls = len(self.calls)
        self.result.tool_errors = sum(1 for c in self.calls if c.is_error)


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _stamp_origin(row: Session | Trace) -> None:
    """Record who and which machine a session or trace came from, once: rebuilding happens on
    the machine that captured it (its transcripts are there), and the first stamp stays."""
    if row.user_name is None and row.hostname is None:
        row.user_name, row.hostname = origin.member(), origin.hostname()


def _upsert_session(db: DBSession, session_id: str, hook: HookView, parsed: ParsedSession | None) -> Session:
    row = db.get(Session, session_id)
    if row is None:
        row = Session(id=session_id)
    main = parsed.main if parsed else None
    sources = set()
    if hook.events:
        sources.add("hook")
    if parsed is not None and parsed.transcripts:
        sources.add("transcript")
    row.project_path = (main.cwd if main else None) or hook.cwd or row.project_path
    row.transcript_path = (main.path if main else None) or hook.transcript_path or row.transcript_path
    row.model = (main.model if main else None) or hook.model or row.model
    row.cc_version = (main.version if main else None) or row.cc_version
    row.git_branch = (main.git_branch if main else None) or row.git_branch
    row.source = _source(row.source, sources)
    starts = [as_utc(t) for t in (row.started_at, hook.started_at, main.started_at if main else None) if t]
    row.started_at = min(starts) if starts else None
    ends = [as_utc(t) for t in (row.ended_at, hook.ended_at, main.ended_at if main else None) if t]
    row.ended_at = max(ends) if ends else None
    row.end_reason = hook.end_reason or row.end_reason
    row.updated_at = utcnow()
    _stamp_origin(row)
    db.add(row)
    db.flush()
    return row


def quarantine_lines(db: DBSession, bad_lines: list[BadLine]) -> int:
    """Keep unusable transcript lines aside (redacted), once each: re-reading a transcript
    does not quarantine the same line again. Returns how many are quarantined in all."""
    for bad in bad_lines:
        exists = db.exec(
            select(Quarantine.id).where(Quarantine.source == bad.path, Quarantine.reason == bad.reason)
        ).first()
        if exists is None:
            db.add(Quarantine(source=bad.path, reason=bad.reason, payload=redact_bytes(bad.raw), **origin.stamp()))
    return len(bad_lines)


def _purged_turn(turn: Turn, before: datetime) -> bool:
    """True for a turn that a ``ccrl purge --before`` removed (it started before the cut-off)."""
    started = turn.started_at
    if started is None:
        return False
    if started.tzinfo is None:
        started = started.replace(tzinfo=timezone.utc)
    if before.tzinfo is None:
        before = before.replace(tzinfo=timezone.utc)
    return started < before


def rebuild_session(
    db: DBSession,
    session_id: str,
    settings: Settings | None = None,
    transcript: str | Path | None = None,
    agent_transcripts: list[str | Path] | None = None,
    events: list[HookEvent] | None = None,
) -> SessionResult:
    """Rebuild one session's traces from its stored hook events and its transcripts.

    ``transcript``/``agent_transcripts`` default to what the events name (``transcript_path``,
    the ``subagents/`` folder next to it, SubagentStop's ``agent_transcript_path``). A missing
    transcript is not an error: the hook view alone is stored, and what a transcript gave
    before is kept. Flushes but does not commit.
    """
    settings = settings or get_settings()
    result = SessionResult(session_id=session_id)
    tombstone = db.get(PurgedSession, session_id)
    if tombstone is not None and tombstone.before is None:
        # Purged for good: drop whatever the hook captured since, never rebuild it.
        db.exec(sql_delete(HookEvent).where(HookEvent.session_id == session_id))
        result.purged = True
        return result
    if events is None:
        events = list(
            db.exec(
                select(HookEvent).where(HookEvent.session_id == session_id).order_by(HookEvent.received_at, HookEvent.id)
            ).all()
        )
    hook = turns_from_events(events, settings.tool_output_max_chars)
    main_path = Path(transcript) if transcript else (Path(hook.transcript_path) if hook.transcript_path else None)
    agent_paths = [Path(p) for p in (agent_transcripts or [])]
    if main_path is not None:
        agent_paths += subagent_files(main_path)
    agent_paths += [Path(p) for p in hook.agent_transcripts]
    agent_paths = [p for p in dict.fromkeys(agent_paths) if p.is_file()]
    parsed: ParsedSession | None = None
    main_exists = main_path is not None and main_path.is_file()
    if main_exists or agent_paths:
        parsed = parse_session(main_path if main_exists else None, agent_paths, settings.tool_output_max_chars)
    result.transcript_missing = main_path is not None and not main_exists
    cwd = (parsed.main.cwd if parsed and parsed.main else None) or hook.cwd
    if cwd is None and parsed is not None:
        cwd = next((p.cwd for p in parsed.agents if p.cwd), None)
    result.project = cwd
    if cwd and ignored_path(cwd):
        result.ignored = True
        return result
    if parsed is not None:
        result.transcripts_read = len(parsed.transcripts)
        bad = [b for p in parsed.transcripts for b in p.bad_lines]
        result.corrupt_lines = quarantine_lines(db, bad)
        result.ignored_lines = sum(p.ignored_lines for p in parsed.transcripts)
    _upsert_session(db, session_id, hook, parsed)
    main_turns, sub_turns, became = merge_turns(
        parsed.turns if parsed else [], parsed.subagent_turns if parsed else [], hook.turns, hook.subagent_turns
    )
    if tombstone is not None:
        main_turns = [t for t in main_turns if not _purged_turn(t, tombstone.before)]
        sub_turns = [t for t in sub_turns if not _purged_turn(t, tombstone.before)]
    store = _TraceStore(db, session_id, result)
    store.assign(main_turns + sub_turns)
    store.load_foreign(main_turns + sub_turns)
    for i, turn in enumerate(main_turns):
        store.store(turn, is_last=i == len(main_turns) - 1)
    for turn in sub_turns:
        store.store(turn, is_last=True)
    store.link_parents(sub_turns, hook, became)
    store.finish()
    return result


# --------------------------------------------------------------------------------------------
# ingest(): which sessions to rebuild, and the bookkeeping around it


def _state_path(settings: Settings) -> Path:
    return settings.home / STATE_FILE


def _load_state(settings: Settings) -> dict[str, Any]:
    try:
        state = json.loads(_state_path(settings).read_text())
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}  # no state: every session is rebuilt once, which is harmless


def _save_state(settings: Settings, state: dict[str, Any]) -> None:
    path = _state_path(settings)
    tmp = path.with_name(path.name + ".tmp")
    ensure_private_file(tmp)
    tmp.write_text(json.dumps(state, sort_keys=True))
    os.replace(tmp, path)


def transcript_signature(path: str | None) -> list[list[Any]] | None:
    """Size and mtime of a session's transcript and subagent files: a change means the
    transcript moved on since it was last read. None when the transcript is gone."""
    if not path:
        return None
    main = Path(path)
    try:
        files = [main, *subagent_files(main)]
        return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    except OSError:
        return None


def ingest(settings: Settings | None = None) -> IngestReport:
    """Drain captured events and rebuild the traces of every session that changed.

    Serialised by a lock file in ``CCRL_HOME`` (the agent and a manual ``ccrl ingest`` or
    ``ccrl import`` may run at once). See :func:`rebuild_changed_sessions` for what is rebuilt.
    """
    from ccrl.agent.capture.drain import drain
    from ccrl.agent.capture.reredact import reredact_store
    from ccrl.agent.core.lock import FileLock

    settings = settings or get_settings()
    get_engine(settings)
    lock = FileLock(settings.home / LOCK_FILE, name="ingest")
    with lock.hold("ingest", wait=True, timeout=600):
        reredacted = reredact_store(settings)  # once after the redaction rules change
        drained = drain(settings)
        report = rebuild_changed_sessions(settings)
    report.drain = _as_dict(drained)
    if reredacted.ran:
        report.reredacted = reredacted.as_dict()
        report.errors[:0] = [f"re-redaction: {e}" for e in reredacted.errors]
    report.errors[:0] = [f"drain: {e}" for e in report.drain.get("errors") or []]
    return report


def _as_dict(report: Any) -> dict[str, Any]:
    if hasattr(report, "as_dict"):
        return dict(report.as_dict())
    try:
        return asdict(report)
    except TypeError:
        return dict(vars(report))


def rebuild_changed_sessions(settings: Settings | None = None) -> IngestReport:
    """Rebuild every session with hook events stored since the last run, whose transcript
    changed since it was last read (it lags behind the hooks), or whose last rebuild failed.

    Progress is kept in ``ingest-state.json`` in ``CCRL_HOME``; losing it only means every
    session is rebuilt once more, which changes nothing. One session's failure is reported in
    ``errors`` and never stops the others. Callers hold the ingest lock (``ingest()`` does).
    """
    settings = settings or get_settings()
    report = IngestReport()
    state = _load_state(settings)
    last_id = int(state.get("last_event_id") or 0)
    watched: dict[str, Any] = {k: v for k, v in dict(state.get("transcripts") or {}).items() if isinstance(v, dict)}
    with DBSession(get_engine(settings)) as db:
        max_id = db.exec(select(func.max(HookEvent.id))).one() or 0
        # Only this machine's events (and those of unknown origin, stored before origins were
        # recorded): on a store a team shares, another member's sessions are rebuilt on their
        # own machine, where their transcripts are. This machine's events are drained under the
        # ingest lock, so all of them up to max_id have committed by now, whatever ids other
        # machines' concurrent inserts take meanwhile.
        fresh = set(
            db.exec(
                select(HookEvent.session_id)
                .where(HookEvent.id > last_id, HookEvent.id <= max_id, col(HookEvent.session_id).is_not(None),
                       or_(col(HookEvent.hostname).is_(None),
                           and_(HookEvent.hostname == origin.hostname(), HookEvent.user_name == origin.member())))
                .distinct()
            ).all()
        )
    todo = {s for s in fresh | set(state.get("failed") or []) if s}
    for session_id, entry in watched.items():
        if session_id not in todo and transcript_signature(entry.get("path")) != entry.get("signature"):
            todo.add(session_id)
    failed: list[str] = []
    now = utcnow().timestamp()
    for session_id in sorted(todo):
        try:
            with DBSession(get_engine(settings)) as db:
                result = rebuild_session(db, session_id, settings)
                row = db.get(Session, session_id)
                path = row.transcript_path if row is not None else None
                db.commit()
        except Exception as exc:  # one bad session never blocks the others
            failed.append(session_id)
            report.errors.append(f"session {session_id}: {type(exc).__name__}: {exc}")
            _log().exception("ingest_session_failed", session_id=session_id)
            continue
        report.add(result)
        if path:
            entry = watched.get(session_id) or {}
            signature = transcript_signature(path)
            missing_since = (entry.get("missing_since") or now) if signature is None else None
            watched[session_id] = {"path": path, "signature": signature, "missing_since": missing_since}
    # A transcript gone for a week was deleted (Claude Code's cleanup), not late: stop watching.
    watched = {
        k: v for k, v in watched.items()
        if not v.get("missing_since") or now - float(v["missing_since"]) < WATCH_MISSING_FOR_S
    }
    _save_state(settings, {"last_event_id": max_id, "transcripts": watched, "failed": failed})
    return report


def _log():
    import structlog

    return structlog.get_logger("ccrl.ingest")
