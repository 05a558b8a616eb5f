"""Decision windows: every assistant decision of a conversation as a target, within a token budget.

A conversation is a *head* (the system prompt and the user's prompt) and *turns* (an assistant
message and the tool results answering its calls). A window is the head, as much of the most
recent history as fits, and one or more consecutive assistant messages: its *targets*, each
whole. Over a conversation's windows every decision is a target exactly once. Windows are cut at
message level (never token slices): older tool results are shortened first, with a marker, then
the oldest turns are dropped, with a marker appended to the user's prompt; a target too long for
the budget keeps its start (its text, then its calls' names and leading arguments) with markers.

Pure functions over chat messages; token counts come from a ``cost(message) -> int`` callable
(the trainer's tokenizer, or a character estimate where no tokenizer is loaded).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

Message = dict[str, Any]
Cost = Callable[[Message], int]

GPU_BUDGET = 4096
"""SFT's default example length (the windows' budget) on a GPU: agent traces are long."""
CPU_BUDGET = 1024
"""SFT's default example length on a CPU, where attention cost makes 4096 impractical."""
DEFAULT_SHORTENED_RESULT_TOKENS = 64
"""Older tool results are cut to about this many tokens (4 characters each) before turns drop."""
DEFAULT_TARGET_SHARE = 0.5
"""Consecutive targets join one window while they fill at most this share of the room left after
the head, so the first of them still sees recent history."""
HEAD_SHARE = 0.5
"""A user prompt is shortened when the head would fill more than this share of the budget."""
CHARS_PER_TOKEN = 4


def shortened_result_marker(omitted: int) -> str:
    """What replaces the middle of an older tool result (the model learns that it was cut)."""
    return f"\n[ccrl: older tool result shortened, {omitted} characters omitted]\n"


def dropped_turns_marker(turns: int) -> str:
    """Appended to the user's prompt when the oldest turns are left out of a window."""
    return f"\n\n[ccrl: {turns} earlier turn{'s' if turns != 1 else ''} omitted]"


def _cut_marker(omitted: int) -> str:
    return f"…[ccrl: {omitted} characters omitted]"


@dataclass
class Window:
    """One example: ``messages`` to render, ``targets`` (indices into them) to train on."""

    messages: list[Message]
    targets: list[int]
    decisions: list[int]
    """0-based numbers of the targets among the source conversation's assistant messages."""
    shortened_results: int = 0
    dropped_turns: int = 0
    cut_targets: int = 0
    """Targets shortened to fit the budget (their tail replaced by markers)."""


@dataclass
class WindowPlan:
    """A conversation's windows, and the decisions no window could hold (counted, never hidden)."""

    windows: list[Window] = field(default_factory=list)
    decisions: int = 0
    untrainable: list[int] = field(default_factory=list)

    @property
    def targeted(self) -> int:
        """Decisions that are a target of some window."""
        return sum(len(w.targets) for w in self.windows)


# ---------------------------------------------------------------------------------------------
# Structure
# ---------------------------------------------------------------------------------------------


def split_conversation(messages: Sequence[Message]) -> tuple[list[Message], list[list[Message]]]:
    """``(head, turns)``: the messages before the first assistant message, then one list per
    assistant message holding it and what follows it up to the next one."""
    head: list[Message] = []
    turns: list[list[Message]] = []
    for message in messages:
        if message.get("role") == "assistant":
            turns.append([message])
        elif turns:
            turns[-1].append(message)
        else:
            head.append(message)
    return head, turns


def middle_cut(text: str, keep_chars: int, marker: Callable[[int], str]) -> str:
    """``text`` cut to ``keep_chars`` characters: two thirds from its head, the rest from its tail,
    ``marker(omitted characters)`` between them."""
    if len(text) <= keep_chars:
        return text
    head = keep_chars * 2 // 3
    tail = keep_chars - head
    omitted = len(text) - head - tail
    return f"{text[:head]}{marker(omitted)}{text[len(text) - tail:] if tail else ''}"


def shorten_results(turn: list[Message], tokens: int) -> tuple[list[Message], int]:
    """The turn with each tool result longer than ``tokens`` (about 4 characters each) cut in
    the middle with :func:`shortened_result_marker`; and how many were cut."""
    out = [turn[0]]
    cut = 0
    for message in turn[1:]:
        content = message.get("content")
        if isinstance(content, str) and len(content) > tokens * CHARS_PER_TOKEN:
            message = {**message, "content": middle_cut(content, tokens * CHARS_PER_TOKEN, shortened_result_marker)}
            cut += 1
        out.append(message)
    return out, cut


# ---------------------------------------------------------------------------------------------
# A target too long for the budget
# ---------------------------------------------------------------------------------------------

_JSON_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"(\s*:)?', re.DOTALL)
_JSON_CHAR = re.compile(r'\\u[0-9a-fA-F]{4}|\\.|[^\\]', re.DOTALL)


def _cut_json_string(inner: str, limit: int) -> str:
    """A JSON string literal's body cut after ``limit`` characters (never inside an escape)."""
    chars = _JSON_CHAR.findall(inner)
    if len(chars) <= limit + len(_cut_marker(len(chars))):  # cutting would not shorten it
        return inner
    return "".join(chars[:limit]) + _cut_marker(len(chars) - limit)


def cut_arguments(arguments: str, limit: int) -> str:
    """A call's arguments JSON with every string value longer than ``limit`` characters cut, with
    a marker; keys, numbers and layout stay byte for byte (so the canonical form is kept)."""
    def replace(match: re.Match[str]) -> str:
        if match.group(2):  # a key
            return match.group(0)
        return '"' + _cut_json_string(match.group(1), limit) + '"'

    return _JSON_STRING.sub(replace, arguments)


def _trim_lists(value: Any, items: int) -> Any:
    if isinstance(value, list):
        kept = [_trim_lists(v, items) for v in value[:items]]
        return kept + ([f"[ccrl: {len(value) - items} more items omitted]"] if len(value) > items else [])
    if isinstance(value, dict):
        return {k: _trim_lists(v, items) for k, v in value.items()}
    return value


def trim_lists(arguments: str, items: int) -> str:
    """A call's arguments JSON with every array cut to its first ``items`` elements and a marker
    (written compact with keys sorted and ``<`` ``>`` ``&`` escaped, as the canonical form is)."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return arguments
    text = json.dumps(_trim_lists(value, items), ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _cut_message(message: Message, limit: int, calls: int, items: int | None = None) -> Message:
    content = message.get("content")
    out = dict(message)
    if isinstance(content, str) and len(content) > limit + len(_cut_marker(len(content))):
        out["content"] = content[:limit] + _cut_marker(len(content) - limit)
    tool_calls = list(message.get("tool_calls") or [])[:calls]
    if message.get("tool_calls"):
        cut = []
        for call in tool_calls:
            function = dict(call.get("function") or {})
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                if items is not None:
                    arguments = trim_lists(arguments, items)
                function["arguments"] = cut_arguments(arguments, limit)
            cut.append({**call, "function": function})
        out["tool_calls"] = cut
    return out


def _longest_text(message: Message) -> int:
    longest = len(message.get("content") or "") if isinstance(message.get("content"), str) else 0
    for call in message.get("tool_calls") or []:
        arguments = (call.get("function") or {}).get("arguments")
        if isinstance(arguments, str):
            longest = max(longest, len(arguments))
    return longest


def cut_target(message: Message, room: int, cost: Cost) -> Message | None:
    """``message`` shortened at its tail to cost at most ``room``: its text and every string
    argument cut to the longest length that fits (with markers), then, if that is not enough,
    long arrays cut to their first items, then its later calls left out; the first call's name
    always stays. None when even that does not fit."""
    if cost(message) <= room:
        return message
    calls = len(message.get("tool_calls") or [])
    for keep in range(calls, 0, -1) if calls else [0]:
        # Long arrays (a todo list, many edits) are cut to their first items only when cutting
        # the strings is not enough.
        for items in (None, 8, 2, 0):
            if cost(_cut_message(message, 0, keep, items)) > room:
                continue
            low, high = 0, _longest_text(message)  # fits at low; find the largest limit that fits
            while low < high:
                mid = (low + high + 1) // 2
                if cost(_cut_message(message, mid, keep, items)) <= room:
                    low = mid
                else:
                    high = mid - 1
            return _cut_message(message, low, keep, items)
    return None


def _fit_head(head: list[Message], limit: int, cost: Cost) -> list[Message]:
    """The head with the user's prompt cut in the middle (with a marker) when the head costs
    more than ``limit``."""
    total = sum(cost(m) for m in head)
    users = [i for i, m in enumerate(head) if m.get("role") == "user" and isinstance(m.get("content"), str)]
    if total <= limit or not users:
        return head
    i = users[-1]
    content = head[i]["content"]
    low, high = 0, len(content)
    while low < high:
        mid = (low + high + 1) // 2
        trial = {**head[i], "content": middle_cut(content, mid, lambda n: f"\n[ccrl: {n} characters omitted]\n")}
        if total - cost(head[i]) + cost(trial) <= limit:
            low = mid
        else:
            high = mid - 1
    return [*head[:i], {**head[i], "content": middle_cut(content, low, lambda n: f"\n[ccrl: {n} characters omitted]\n")},
            *head[i + 1:]]


# ---------------------------------------------------------------------------------------------
# Windows
# ---------------------------------------------------------------------------------------------


class _Conversation:
    """A conversation split once, with every turn's cost in full and shortened (cached)."""

    def __init__(self, messages: Sequence[Message], budget: int, cost: Cost, shortened_result_tokens: int) -> None:
        head, self.turns = split_conversation([dict(m) for m in messages])
        self.cost = cost
        self.head = _fit_head(head, int(budget * HEAD_SHARE), cost)
        self.head_cost = sum(cost(m) for m in self.head)
        self.full_cost = [sum(cost(m) for m in t) for t in self.turns]
        self.short: list[tuple[list[Message], int]] = [shorten_results(t, shortened_result_tokens) for t in self.turns]
        self.short_cost = [sum(cost(m) for m in t) if n else self.full_cost[k] for k, (t, n) in enumerate(self.short)]
        self.user_index = max((i for i, m in enumerate(self.head) if m.get("role") == "user"), default=None)
        self.marker_reserve = 0  # room a window after the first keeps for the dropped-turns marker
        if self.user_index is not None and self.turns:
            user = self.head[self.user_index]
            marked = {**user, "content": (user.get("content") or "") + dropped_turns_marker(len(self.turns))}
            self.marker_reserve = cost(marked) - cost(user)

    def history(self, end: int, avail: int) -> tuple[list[Message], list[Message], int, int] | None:
        """The head and the turns before ``end`` fitted to ``avail`` tokens beside the head:
        newest turns whole, older ones with shortened results, the oldest dropped (with a marker
        on the user's prompt). ``(head, history, shortened, dropped)``; None when the head alone
        leaves no room."""
        full, short = self.full_cost[:end], self.short_cost[:end]
        if sum(full) <= avail:
            return self.head, [m for t in self.turns[:end] for m in t], 0, 0
        suffix_full = [0] * (end + 1)
        for k in range(end - 1, -1, -1):
            suffix_full[k] = suffix_full[k + 1] + full[k]
        head = self.head
        marker_cost = 0
        dropped = 0
        if sum(short) > avail:
            if self.user_index is None:
                return None
            user = head[self.user_index]
            marked = {**user, "content": (user.get("content") or "") + dropped_turns_marker(end)}
            marker_cost = self.cost(marked) - self.cost(user)
            running = sum(short)
            while dropped < end and running + marker_cost > avail:
                running -= short[dropped]
                dropped += 1
            if running + marker_cost > avail:
                return None
            head = list(head)
            head[self.user_index] = {**user, "content": (user.get("content") or "") + dropped_turns_marker(dropped)}
        # Shorten the oldest kept turns, as few as needed.
        prefix_short = 0
        cut_until = end
        for c in range(dropped, end + 1):
            if marker_cost + prefix_short + suffix_full[c] <= avail:
                cut_until = c
                break
            if c < end:
                prefix_short += short[c]
        history: list[Message] = []
        shortened = 0
        for k in range(dropped, end):
            if k < cut_until:
                history += self.short[k][0]
                shortened += self.short[k][1]
            else:
                history += self.turns[k]
        return head, history, shortened, dropped


def plan_windows(messages: Sequence[Message], budget: int, cost: Cost, *,
                 shortened_result_tokens: int = DEFAULT_SHORTENED_RESULT_TOKENS, max_targets: int | None = None,
                 target_share: float = DEFAULT_TARGET_SHARE) -> WindowPlan:
    """Cut a conversation into windows of at most ``budget`` tokens (by ``cost``, a sum over
    messages) in which every assistant message is a target exactly once, in order.

    A window's targets are consecutive decisions (with the tool results between them), at most
    ``max_targets`` (None: as many as fill ``target_share`` of the room beside the head; the
    first target is always taken whole when it fits at all, else cut at its tail to fill the room
    by :func:`cut_target`). A decision no window can hold (the head alone fills the budget) is
    listed in ``untrainable``.
    """
    convo = _Conversation(messages, budget, cost, shortened_result_tokens)
    plan = WindowPlan(decisions=len(convo.turns))
    room = budget - convo.head_cost
    i = 0
    while i < len(convo.turns):
        first = convo.turns[i][0]
        cut = 0
        limit = room - (convo.marker_reserve if i else 0)
        if cost(first) > limit:
            shortened_first = cut_target(first, limit, cost)
            if shortened_first is None:
                plan.untrainable.append(i)
                i += 1
                continue
            block, cut = [shortened_first], 1
        else:
            block = [first]
        block_cost = sum(cost(m) for m in block)
        end = i + 1
        while (end < len(convo.turns) and not cut and (max_targets is None or end - i < max_targets)):
            extra = convo.turns[end - 1][1:] + [convo.turns[end][0]]
            extra_cost = sum(cost(m) for m in extra)
            if block_cost + extra_cost > min(room * target_share, limit):
                break
            block += extra
            block_cost += extra_cost
            end += 1
        fitted = convo.history(i, room - block_cost)
        if fitted is None:
            plan.untrainable.extend(range(i, end))
            i = end
            continue
        head, history, shortened, dropped = fitted
        window_messages = [*head, *history, *block]
        targets = [k for k, m in enumerate(window_messages) if k >= len(head) + len(history) and m.get("role") == "assistant"]
        plan.windows.append(Window(window_messages, targets, list(range(i, end)), shortened, dropped, cut))
        i = end
    return plan


def prompt_window(messages: Sequence[Message], index: int, budget: int, cost: Cost, *,
                  shortened_result_tokens: int = DEFAULT_SHORTENED_RESULT_TOKENS) -> list[Message]:
    """The prompt for the assistant message at ``messages[index]``: the head and as much of the
    history before it as fits ``budget`` (as :func:`plan_windows` fits a window's history), the
    same way for every model. When the head alone is over the budget, the head alone."""
    if messages[index].get("role") != "assistant":
        raise ValueError(f"message {index} is not an assistant message")
    turn = sum(1 for m in messages[:index] if m.get("role") == "assistant")
    convo = _Conversation(messages[:index], budget, cost, shortened_result_tokens)
    fitted = convo.history(turn, budget - convo.head_cost)
    if fitted is None:
        return list(convo.head)
    head, history, _shortened, _dropped = fitted
    return [*head, *history]


def estimate_cost(render: Callable[[Message], str], overhead: int = 4) -> Cost:
    """A ``cost`` without a tokenizer: the rendered text at 4 characters a token, plus the
    template's per-message tokens."""
    def cost(message: Message) -> int:
        return (len(render(message)) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN + overhead

    return cost

