"""The one owner of the conversation format: how a trace becomes a chat conversation, and how
tool calls are written as text and read back. The dataset builder, the training chat
templates, the RL reward's parser, the Ollama template test and the evaluation all use this
module, so no two of them can disagree. Pure functions; no database imports.

Messages (the chat format TRL uses)
-----------------------------------
::

    {"role": "system", "content": "..."}
    {"role": "user", "content": "<the prompt>"}
    {"role": "assistant", "content": "<reasoning / answer text>",
     "tool_calls": [{"type": "function", "id": "toolu_…",
                     "function": {"name": "Read", "arguments": "{\\"file_path\\": \\"/x\\"}"}}]}
    {"role": "tool", "tool_call_id": "toolu_…", "name": "Read", "content": "<result>"}

``arguments`` is a JSON string, never a dict (Arrow would otherwise merge the keys of every call
into one struct), always written by :func:`tool_arguments` in ccrl's one canonical form: exactly
the bytes Ollama's template prints for ``{{ .Function.Arguments }}`` when a client sends the call
back in a later request (Go's ``encoding/json`` over a plain map: compact, keys sorted at every
level, ``<`` ``>`` ``&`` U+2028 U+2029 escaped, numbers as Go prints a float64). Training text,
the training chat templates, the evaluation's parser and a deployed model in Ollama then agree on
every earlier call of a multi-turn conversation, not only on the current turn.

Trajectory format (``trace_to_messages``)
-----------------------------------------
system (tools seen, working directory, how to call tools) → user prompt → for each assistant
turn: one assistant message whose content is the turn's thinking and text blocks joined by a
blank line, with the turn's calls as ``tool_calls`` (several = parallel calls), then one
``tool`` message per call in call order, its result truncated to a token budget with
``[ccrl: … omitted]`` in the middle (failed calls start with ``[tool error]``) → the final
answer as an assistant message without calls.

Tool calls as text
------------------
An assistant message is rendered as text (``render_assistant_text``) as its content, then one
line per call, in order::

    <tool_call>{"name": "<name>", "arguments": <arguments JSON string verbatim>}</tool_call>

e.g. ``<tool_call>{"name": "Read", "arguments": {"file_path":"/x","limit":10}}</tool_call>`` (the
wrapper is spaced, the arguments are canonical)

joined by ``"\\n"``; content and calls are joined by ``"\\n"`` when both are present. Tool
names are plain identifiers (Claude Code's are ``[A-Za-z0-9_-]``), so a Jinja template can
write ``{"name": "{{ name }}", "arguments": {{ arguments }}}`` and render the same bytes.
``parse_assistant_text`` reads it back (tolerant: it never raises and lists what it could not
parse in ``.errors``), with each call's arguments in the canonical form whatever JSON the model
wrote (as Ollama does: it parses the model's call and renders it canonically on the next turn).

Workflow format (``trace_to_workflow``)
---------------------------------------
The original design's compact form, used by the RL phase (one completion = one whole plan):
system → user prompt → ONE assistant message whose content is::

    Reasoning:
    1. <step of the reasoning chain>
    …
    Plan:
    1. <the reasoning that led to the calls, from the text before them>
    <tool_call>{"name": "Read", "arguments": {…}}</tool_call>
    <tool_call>…</tool_call>          (parallel calls share one step)
    2. …
    Response:
    <the final answer>

Reasoning items and plan reasons are single lines; long string arguments are cut in the
workflow (``WORKFLOW_ARGUMENT_MAX_CHARS``). ``parse_workflow`` reads it back for the reward,
and ``workflow_to_trace`` turns a parsed plan into a trace dict so that ``signals`` can
measure a generation exactly as it measures a reference.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ccrl.trainers.signals import (
    call_input,
    reasoning_chain,
    sentences,
    shorten,
    split_turns,
    step_text,
    trace_steps,
)
from ccrl.trainers.windows import middle_cut

CHARS_PER_TOKEN = 4  # estimate without a tokenizer (the agent never loads one)
DEFAULT_TOOL_RESULT_TOKENS = 512
WORKFLOW_ARGUMENT_MAX_CHARS = 400
WORKFLOW_MAX_REASONING_ITEMS = 12
REASON_MAX_CHARS = 300
TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
TOOL_ERROR_PREFIX = "[tool error]\n"
NO_RESULT = "[no result recorded]"

TRAJECTORY = "trajectory"
WORKFLOW = "workflow"
FORMATS = (TRAJECTORY, WORKFLOW)

_AGENT_INTRO = (
    "You are a coding agent working in a software project on the user's machine. Work the way "
    "Claude Code works: understand the task, plan, explore with the tools before changing "
    "anything, make focused changes, check them, correct your own mistakes, and finish with a "
    "short answer."
)
_CALL_SYNTAX = (
    'To call tools, end your message with one line per call: <tool_call>{"name": "<tool>", '
    '"arguments": {<arguments>}}</tool_call>. Calls in one message run in parallel; their '
    "results come back as tool messages."
)
_WORKFLOW_SYNTAX = (
    "Answer with your whole plan in this form:\nReasoning:\n1. <a step of your reasoning>\n"
    "Plan:\n1. <why the next calls>\n"
    '<tool_call>{"name": "<tool>", "arguments": {<arguments>}}</tool_call>\n'
    "Response:\n<your answer to the user>"
)

# Short descriptions of Claude Code's built-in tools, for the tool list. Other tools (MCP
# servers, newer built-ins) get a generic one; their parameters come from what was seen.
TOOL_DESCRIPTIONS: dict[str, str] = {
    "Read": "Read a file (optionally a range of lines).",
    "Write": "Write a whole file.",
    "Edit": "Replace an exact string in a file.",
    "MultiEdit": "Apply several exact-string replacements to one file.",
    "NotebookEdit": "Edit a cell of a Jupyter notebook.",
    "NotebookRead": "Read a Jupyter notebook.",
    "Bash": "Run a shell command.",
    "BashOutput": "Read the output of a background shell command.",
    "KillShell": "Stop a background shell command.",
    "KillBash": "Stop a background shell command.",
    "Grep": "Search file contents with a regular expression.",
    "Glob": "Find files by name pattern.",
    "LS": "List a directory.",
    "Task": "Start a subagent on a task and get its report.",
    "Agent": "Start a subagent on a task and get its report.",
    "TodoWrite": "Write the task's todo list.",
    "WebFetch": "Fetch a web page and extract information from it.",
    "WebSearch": "Search the web.",
    "ExitPlanMode": "Present the plan and leave plan mode.",
    "SlashCommand": "Run a slash command.",
    "Skill": "Use a skill.",
}


class ConversionError(ValueError):
    """A trace that cannot become a conversation (bad input); ``reason`` is a short key."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}")


# ---------------------------------------------------------------------------------------------
# Small pieces
# ---------------------------------------------------------------------------------------------


def estimate_tokens(text: str) -> int:
    """Rough token count (characters / 4), used for budgets without loading a tokenizer."""
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def truncate_result(text: str, max_tokens: int = DEFAULT_TOOL_RESULT_TOKENS) -> str:
    """Cut a tool result to about ``max_tokens``: the head and the tail are kept, the middle
    becomes ``[ccrl: N characters omitted]``."""
    return middle_cut(text, max(0, max_tokens) * CHARS_PER_TOKEN, lambda omitted: f"\n[ccrl: {omitted} characters omitted]\n")


_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_FLOAT64_EXACT_INT = 2 ** 53


def _go_escape(json_text: str) -> str:
    """What Go's encoding/json escapes beyond ``json.dumps(ensure_ascii=False)``: ``<``, ``>``,
    ``&`` (HTML safety) and U+2028, U+2029 (line separators). Outside strings JSON holds none of
    them, so a whole JSON text can be escaped at once."""
    return (json_text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _go_string(text: str) -> str:
    # A lone surrogate cannot be sent as UTF-8; Go decodes its \\u escape to U+FFFD.
    return _go_escape(json.dumps(_SURROGATE_RE.sub("\ufffd", text), ensure_ascii=False))


def _go_number(value: int | float) -> str:
    """A JSON number as Go prints it after decoding it into ``any`` (a float64): integers up to
    2**53 unchanged, ``1.0`` as ``1``, exponents below 1e-6 and from 1e21 (``1e-7``, ``1e+21``)."""
    if isinstance(value, int):
        if -_FLOAT64_EXACT_INT <= value <= _FLOAT64_EXACT_INT:
            return str(value)
        try:
            value = float(value)
        except OverflowError:
            raise ValueError(f"the integer {value} does not fit a float64") from None
    if not math.isfinite(value):
        raise ValueError(f"{value!r} is not a JSON number")
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    # repr gives the shortest digits that round-trip, as Go's strconv does; only the layout differs.
    sign, digit_tuple, exponent = Decimal(repr(value)).as_tuple()
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    exponent += len(digit_tuple) - len(digits)
    point = len(digits) + exponent  # value = 0.<digits> * 10**point
    minus = "-" if sign else ""
    if abs(value) < 1e-6 or abs(value) >= 1e21:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        power = point - 1
        return f"{minus}{mantissa}e-{-power}" if power < 0 else f"{minus}{mantissa}e+{power:02d}"
    if point <= 0:
        return f"{minus}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return f"{minus}{digits}{'0' * (point - len(digits))}"
    return f"{minus}{digits[:point]}.{digits[point:]}"


def _go_json(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return _go_number(value)
    if isinstance(value, str):
        return _go_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_go_json(v) for v in value) + "]"
    if isinstance(value, dict):
        items = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys must be strings, not {type(key).__name__}")
            items.append((_SURROGATE_RE.sub("\ufffd", key), item))
        items.sort(key=lambda pair: pair[0])  # code point order = Go's byte order of UTF-8
        return "{" + ",".join(_go_string(k) + ":" + _go_json(v) for k, v in items) + "}"
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def tool_arguments(tool_input: Any) -> str:
    """The JSON string stored as a call's ``arguments``: the canonical form, byte for byte what
    Ollama prints for ``{{ .Function.Arguments }}`` when the call comes back in a later request.

    Ollama decodes a call's arguments (``api.ToolCallFunctionArguments``) and hands its Go
    templates a plain ``map[string]any`` (``template.convertMessagesForTemplate``, v0.14 and later;
    before that the map itself), printed with ``json.Marshal``. So: compact separators, keys
    sorted at every level, UTF-8 kept, ``<`` ``>`` ``&`` U+2028 U+2029 escaped as ``\\u003c`` …,
    numbers as Go prints a float64 (``1.0`` → ``1``, ``1e-07`` → ``1e-7``, integers beyond 2**53
    rounded). Raises ``TypeError``/``ValueError`` for what JSON cannot hold (NaN, non-string keys).
    Idempotent: ``tool_arguments(json.loads(tool_arguments(x))) == tool_arguments(x)``.
    """
    if _dumps_as_go_does(tool_input):  # the usual case, at the speed of the C encoder
        text = json.dumps(tool_input, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate somewhere: the walker replaces it
            return _go_json(tool_input)
        return _go_escape(text)
    return _go_json(tool_input)


def _dumps_as_go_does(value: Any) -> bool:
    """Whether ``json.dumps`` (sorted, compact) writes ``value`` as Go does up to the escapes:
    no floats, no integers beyond 2**53, string keys only (and no container met twice, so a
    cyclic value cannot loop here)."""
    stack, seen = [value], set()
    while stack:
        item = stack.pop()
        if item is None or isinstance(item, (str, bool)):
            continue
        if isinstance(item, int):
            if -_FLOAT64_EXACT_INT <= item <= _FLOAT64_EXACT_INT:
                continue
            return False
        if id(item) in seen:
            return False
        seen.add(id(item))
        if isinstance(item, dict):
            if not all(isinstance(key, str) for key in item):
                return False
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        else:
            return False
    return True


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


@dataclass
class ToolCatalog:
    """The tools seen in a set of traces, with parameter schemas inferred from their inputs.

    Deterministic: the same calls in any order give the same list (sorted by name, properties
    sorted by key).
    """

    calls: Counter = field(default_factory=Counter)
    key_counts: dict[str, Counter] = field(default_factory=dict)
    key_types: dict[str, dict[str, set[str]]] = field(default_factory=dict)

    def add(self, name: str, tool_input: Any) -> None:
        """Record one call of ``name`` with ``tool_input``."""
        if not name:
            return
        self.calls[name] += 1
        keys = self.key_counts.setdefault(name, Counter())
        types = self.key_types.setdefault(name, {})
        if isinstance(tool_input, dict):
            for key, value in tool_input.items():
                keys[key] += 1
                types.setdefault(key, set()).add(_json_type(value))

    def add_trace(self, trace: dict[str, Any]) -> None:
        """Record every call of a trace."""
        for step in trace_steps(trace):
            if step.get("kind") == "tool_use":
                self.add(str(step.get("name") or ""), step.get("input"))

    def names(self) -> list[str]:
        """Tool names, sorted."""
        return sorted(self.calls)

    def tools(self, only: set[str] | None = None) -> list[dict[str, Any]]:
        """The tool list in the OpenAI/TRL function format (optionally only some names)."""
        out = []
        for name in self.names():
            if only is not None and name not in only:
                continue
            total = self.calls[name]
            properties = {}
            for key in sorted(self.key_types.get(name, {})):
                kinds = sorted(self.key_types[name][key])
                properties[key] = {"type": kinds[0] if len(kinds) == 1 else kinds}
            required = sorted(k for k, n in self.key_counts.get(name, Counter()).items() if n == total)
            out.append({
                "type": "function",
                "function": {
                    "name": name,
                    "description": TOOL_DESCRIPTIONS.get(name, f"The {name} tool."),
                    "parameters": {"type": "object", "properties": properties, "required": required},
                },
            })
        return out


def tools_json(tools: list[dict[str, Any]]) -> str:
    """The tool list as the JSON string stored in the ``tools`` column and given to templates."""
    return json.dumps(tools, ensure_ascii=False)


def tools_for_trace(trace: dict[str, Any]) -> list[dict[str, Any]]:
    """The tool list of one trace on its own (when no dataset-wide catalog is at hand)."""
    catalog = ToolCatalog()
    catalog.add_trace(trace)
    return catalog.tools()


def _tool_names(tools: list[dict[str, Any]]) -> list[str]:
    names = []
    for tool in tools:
        spec = tool.get("function", tool) if isinstance(tool, dict) else None
        name = spec.get("name") if isinstance(spec, dict) else None
        if isinstance(name, str):
            names.append(name)
    return names


def system_prompt(tools: list[dict[str, Any]], cwd: str | None = None, fmt: str = TRAJECTORY) -> str:
    """The system message: who the model is, the working directory, the tools, the syntax."""
    parts = [_AGENT_INTRO]
    if cwd:
        parts.append(f"Working directory: {cwd}")
    names = _tool_names(tools)
    parts.append("Tools: " + (", ".join(names) if names else "none"))
    parts.append(_WORKFLOW_SYNTAX if fmt == WORKFLOW else _CALL_SYNTAX)
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------------
# Tool calls as text
# ---------------------------------------------------------------------------------------------


def _call_parts(call: dict[str, Any]) -> tuple[str, str]:
    fn = call.get("function") if isinstance(call.get("function"), dict) else call
    name = fn.get("name") or ""
    arguments = fn.get("arguments")
    if not isinstance(arguments, str):
        arguments = tool_arguments(arguments if arguments is not None else {})
    return str(name), arguments


def format_tool_call(call: dict[str, Any]) -> str:
    """One call as ``<tool_call>{"name": …, "arguments": …}</tool_call>`` (arguments verbatim)."""
    name, arguments = _call_parts(call)
    return f'{TOOL_CALL_OPEN}{{"name": {json.dumps(name, ensure_ascii=False)}, "arguments": {arguments}}}{TOOL_CALL_CLOSE}'


def format_tool_calls(calls: list[dict[str, Any]] | None) -> str:
    """Calls as text, one per line, in order. Accepts message ``tool_calls`` entries or
    ``{"name", "arguments"}`` dicts (arguments as a JSON string or a value)."""
    return "\n".join(format_tool_call(c) for c in calls or [] if isinstance(c, dict))


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal parts: keep the text ones
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content)


def render_assistant_text(message: dict[str, Any]) -> str:
    """An assistant message exactly as the model is trained to write it: content, then calls."""
    content = _content_text(message.get("content"))
    calls = format_tool_calls(message.get("tool_calls"))
    if content and calls:
        return f"{content}\n{calls}"
    return content or calls


class ParsedAssistant(tuple):
    """``(content, calls)`` read back from text, plus ``.errors`` (what could not be parsed).

    ``calls`` are message ``tool_calls`` entries without ids:
    ``{"type": "function", "function": {"name": …, "arguments": <JSON string>}}``.
    """

    errors: list[str]

    def __new__(cls, content: str, calls: list[dict[str, Any]], errors: list[str]) -> ParsedAssistant:
        self = super().__new__(cls, (content, calls))
        self.errors = errors
        return self

    @property
    def content(self) -> str:
        return self[0]

    @property
    def calls(self) -> list[dict[str, Any]]:
        return self[1]


_decoder = json.JSONDecoder()
_NAME_PREFIX = '{"name": '
_ARGS_PREFIX = ', "arguments": '


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _exact_call(text: str, i: int) -> tuple[str, str, int] | None:
    """The call at ``i`` in exactly the rendered form: (name, canonical arguments, end)."""
    if not text.startswith(_NAME_PREFIX, i):
        return None
    try:
        name, j = _decoder.raw_decode(text, i + len(_NAME_PREFIX))
        if not isinstance(name, str) or not text.startswith(_ARGS_PREFIX, j):
            return None
        start = j + len(_ARGS_PREFIX)
        arguments, k = _decoder.raw_decode(text, start)
    except ValueError:
        return None
    if not isinstance(arguments, dict) or not text.startswith("}", k):
        return None
    try:
        return name, tool_arguments(arguments), k + 1
    except ValueError:  # e.g. a number too large for a float64: let the loose reader report it
        return None


def _loose_call(text: str, i: int) -> tuple[str | None, str | None, int, str | None]:
    """Any JSON object at ``i`` that names a tool: (name, arguments, end, error)."""
    try:
        obj, end = _decoder.raw_decode(text, i)
    except ValueError as exc:
        return None, None, i, f"invalid JSON ({exc.msg} at character {exc.pos})"
    if not isinstance(obj, dict):
        return None, None, end, "not a JSON object"
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return None, None, end, "no tool name"
    arguments: Any = obj.get("arguments", obj.get("parameters", obj.get("input", {})))
    if isinstance(arguments, str):  # arguments written as a JSON string
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None, None, end, f"arguments of {name} are not JSON"
    if not isinstance(arguments, dict):
        return None, None, end, f"arguments of {name} are not a JSON object"
    try:
        return name, tool_arguments(arguments), end, None
    except ValueError as exc:
        return None, None, end, f"arguments of {name} cannot be written as JSON ({exc})"


def parse_assistant_text(text: Any) -> ParsedAssistant:
    """Read an assistant message back from text: ``(content, calls)`` with ``.errors``.

    Exact inverse of ``render_assistant_text`` for content that does not itself contain
    ``<tool_call>``. Tolerant of model output: calls anywhere in the text, extra whitespace,
    ``arguments`` given as a JSON string or under ``parameters``/``input``, a missing closing
    tag. A call it cannot read is left out and described in ``.errors``; it never raises.
    """
    if not isinstance(text, str):
        return ParsedAssistant("", [], [f"expected text, got {type(text).__name__}"])
    errors: list[str] = []
    calls: list[dict[str, Any]] = []
    pieces: list[str] = []
    pos = 0
    number = 0
    while True:
        start = text.find(TOOL_CALL_OPEN, pos)
        if start < 0:
            pieces.append(text[pos:])
            break
        pieces.append(text[pos:start])
        number += 1
        body = _skip_space(text, start + len(TOOL_CALL_OPEN))
        exact = _exact_call(text, body)
        if exact:
            name, arguments, end = exact
            error = None
        else:
            name, arguments, end, error = _loose_call(text, body)
        if error:
            errors.append(f"tool call {number} (character {start}): {error}")
        if name is not None and arguments is not None:
            calls.append({"type": "function", "function": {"name": name, "arguments": arguments}})
        close_at = _skip_space(text, end)
        if text.startswith(TOOL_CALL_CLOSE, close_at) and not error:
            pos = close_at + len(TOOL_CALL_CLOSE)
        else:
            following = text.find(TOOL_CALL_CLOSE, end)
            next_open = text.find(TOOL_CALL_OPEN, end)
            if not error:
                errors.append(f"tool call {number} (character {start}): no {TOOL_CALL_CLOSE}")
            if following >= 0 and (next_open < 0 or following < next_open):
                pos = following + len(TOOL_CALL_CLOSE)
            else:
                pos = next_open if next_open >= 0 else len(text)
    head = pieces[0]
    if number and head.endswith("\n"):
        head = head[:-1]
    extra = [p.strip("\n") for p in pieces[1:] if p.strip()]
    content = "\n".join([head, *extra]) if extra else head
    return ParsedAssistant(content, calls, errors)


def tool_call_input(call: dict[str, Any]) -> dict[str, Any] | None:
    """A parsed or stored call's arguments as a dict (None if they are not a JSON object)."""
    _name, arguments = _call_parts(call)
    try:
        value = json.loads(arguments)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# ---------------------------------------------------------------------------------------------
# Trace → trajectory messages
# ---------------------------------------------------------------------------------------------


def _check_prompt(trace: dict[str, Any]) -> str:
    prompt = trace.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConversionError("empty_prompt", "the trace has no prompt")
    return prompt


def _checked_steps(trace: dict[str, Any]) -> list[dict[str, Any]]:
    steps = trace_steps(trace)
    for index, step in enumerate(steps):
        if step.get("kind") != "tool_use":
            continue
        if not isinstance(step.get("input"), dict):
            raise ConversionError("corrupt_tool_input",
                                  f"step {index} ({step.get('name')!r}) has a tool input that is not a JSON object")
        if not step.get("name"):
            raise ConversionError("corrupt_tool_input", f"step {index} is a tool call without a name")
        try:
            tool_arguments(step["input"])
        except (TypeError, ValueError) as exc:
            raise ConversionError("corrupt_tool_input", f"step {index}: {exc}") from None
    return steps


def _turn_text(steps: list[dict[str, Any]], indices: list[int]) -> str:
    return "\n\n".join(t.strip() for t in (step_text(steps[i]) for i in indices) if t.strip())


def _final_answer(trace: dict[str, Any], steps: list[dict[str, Any]], turns: list[Any]) -> str:
    """The final answer text: the last turn's words when it made no calls, else (or when it
    holds only thinking) the trace's ``response``."""
    if turns and not turns[-1].calls:
        answer = _turn_text(steps, [i for i in turns[-1].texts if steps[i].get("kind") == "text"])
        if answer:
            return answer
    response = trace.get("response")
    return response.strip() if isinstance(response, str) else ""


def _call_id(step: dict[str, Any], index: int) -> str:
    value = step.get("tool_use_id")
    return str(value) if value else f"call_{index}"


def _results_by_id(trace: dict[str, Any], steps: list[dict[str, Any]]) -> dict[str, tuple[str, bool]]:
    results: dict[str, tuple[str, bool]] = {}
    for call in trace.get("tool_calls") or []:
        if isinstance(call, dict) and call.get("id"):
            output = call.get("output")
            results[str(call["id"])] = (output if isinstance(output, str) else "", bool(call.get("is_error")))
    for step in steps:
        if step.get("kind") == "tool_result" and step.get("tool_use_id"):
            output = step.get("output")
            if not isinstance(output, str):
                output = "" if output is None else json.dumps(output, ensure_ascii=False)
            results[str(step["tool_use_id"])] = (output, bool(step.get("is_error")))
    return results


def trace_to_messages(
    trace: dict[str, Any],
    *,
    tools: list[dict[str, Any]] | None = None,
    tool_result_tokens: int = DEFAULT_TOOL_RESULT_TOKENS,
    include_system: bool = True,
) -> list[dict[str, Any]]:
    """A trace as a trajectory conversation (see the module docstring).

    ``tools``: the tool list named in the system prompt (default: the trace's own tools).
    Raises ``ConversionError`` for bad input: no prompt, a tool input that is not a JSON
    object, no final answer.
    """
    prompt = _check_prompt(trace)
    steps = _checked_steps(trace)
    turns = split_turns(steps)
    answer = _final_answer(trace, steps, turns)
    if not answer:
        raise ConversionError("empty_response", "the trace has no final answer")
    if tools is None:
        tools = tools_for_trace(trace)
    results = _results_by_id(trace, steps)

    messages: list[dict[str, Any]] = []
    if include_system:
        messages.append({"role": "system", "content": system_prompt(tools, trace.get("cwd"), TRAJECTORY)})
    messages.append({"role": "user", "content": prompt})
    for turn in turns:
        if not turn.calls:
            continue
        calls = []
        tool_messages = []
        for index in turn.calls:
            step = steps[index]
            call_id = _call_id(step, index)
            name = str(step["name"])
            calls.append({"type": "function", "id": call_id,
                          "function": {"name": name, "arguments": tool_arguments(step["input"])}})
            output, is_error = results.get(call_id, (NO_RESULT, False))
            content = truncate_result(output, tool_result_tokens)
            if is_error:
                content = TOOL_ERROR_PREFIX + content
            tool_messages.append({"role": "tool", "tool_call_id": call_id, "name": name, "content": content})
        messages.append({"role": "assistant", "content": _turn_text(steps, turn.texts), "tool_calls": calls})
        messages.extend(tool_messages)
    final_reasoning = ""
    if turns and not turns[-1].calls:
        final_reasoning = _turn_text(steps, [i for i in turns[-1].texts if steps[i].get("kind") == "thinking"])
    messages.append({"role": "assistant", "content": f"{final_reasoning}\n\n{answer}" if final_reasoning else answer})
    return messages


def next_action_decisions(messages: list[dict[str, Any]]) -> int:
    """Decision points in a conversation: each assistant message (which calls next, or answer)."""
    return sum(1 for m in messages if m.get("role") == "assistant")


# ---------------------------------------------------------------------------------------------
# Workflow format
# ---------------------------------------------------------------------------------------------


@dataclass
class PlanStep:
    """One step of a workflow plan: why, then the (parallel) calls."""

    reason: str
    calls: list[dict[str, Any]]


@dataclass
class Workflow:
    """A parsed workflow completion. ``errors`` lists what could not be read."""

    reasoning: list[str] = field(default_factory=list)
    plan: list[PlanStep] = field(default_factory=list)
    response: str = ""
    errors: list[str] = field(default_factory=list)

    @property
    def tool_sequence(self) -> list[str]:
        """Tool names of the plan, in order."""
        return [_call_parts(c)[0] for step in self.plan for c in step.calls]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"reasoning": list(self.reasoning),
                "plan": [{"reason": s.reason, "calls": s.calls} for s in self.plan],
                "response": self.response, "errors": list(self.errors)}


def _cut_strings(value: Any, limit: int) -> Any:
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]}…[ccrl: {len(value) - limit} characters omitted]"
    if isinstance(value, dict):
        return {k: _cut_strings(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [_cut_strings(v, limit) for v in value]
    return value


def _turn_reason(steps: list[dict[str, Any]], texts: list[int]) -> str:
    """The reasoning that led to a turn's calls: the last two sentences Claude wrote before
    them (visible text preferred over thinking)."""
    visible = [i for i in texts if steps[i].get("kind") == "text" and step_text(steps[i]).strip()]
    chosen = visible or [i for i in texts if step_text(steps[i]).strip()]
    found = [s.text for i in chosen for s in sentences(step_text(steps[i]), i)]
    return shorten(" ".join(found[-2:]), REASON_MAX_CHARS) if found else ""


def render_workflow(reasoning: list[str], plan: list[PlanStep], response: str) -> str:
    """The workflow text for reasoning items, plan steps and a response."""
    lines = ["Reasoning:"]
    lines += [f"{n}. {shorten(item)}" for n, item in enumerate(reasoning, 1)]
    lines.append("Plan:")
    for n, step in enumerate(plan, 1):
        reason = shorten(step.reason, REASON_MAX_CHARS)
        lines.append(f"{n}. {reason}" if reason else f"{n}.")
        lines += [format_tool_call(c) for c in step.calls]
    lines.append("Response:")
    lines.append(response)
    return "\n".join(lines)


def workflow_text(trace: dict[str, Any], *, argument_max_chars: int = WORKFLOW_ARGUMENT_MAX_CHARS,
                  signals: dict[str, Any] | None = None) -> str:
    """The reference completion of a trace in the workflow format (raises ConversionError).
    ``signals``: the trace's ``extract_signals`` result, when already at hand."""
    _check_prompt(trace)
    steps = _checked_steps(trace)
    turns = split_turns(steps)
    answer = _final_answer(trace, steps, turns)
    if not answer:
        raise ConversionError("empty_response", "the trace has no final answer")
    chain = signals["reasoning_chain"] if signals is not None else reasoning_chain(trace)
    reasoning = [item["text"] for item in chain[:WORKFLOW_MAX_REASONING_ITEMS]]
    plan = []
    for turn in turns:
        if not turn.calls:
            continue
        calls = [{"type": "function", "function": {
            "name": str(steps[i]["name"]),
            "arguments": tool_arguments(_cut_strings(call_input(steps[i]), argument_max_chars))}}
            for i in turn.calls]
        plan.append(PlanStep(_turn_reason(steps, turn.texts), calls))
    return render_workflow(reasoning, plan, answer)


def prompt_messages(trace: dict[str, Any], *, tools: list[dict[str, Any]] | None = None,
                    fmt: str = WORKFLOW) -> list[dict[str, Any]]:
    """The prompt part of a conversation (system + user), e.g. for RL generation."""
    prompt = _check_prompt(trace)
    if tools is None:
        tools = tools_for_trace(trace)
    return [{"role": "system", "content": system_prompt(tools, trace.get("cwd"), fmt)},
            {"role": "user", "content": prompt}]


def trace_to_workflow(trace: dict[str, Any], *, tools: list[dict[str, Any]] | None = None,
                      argument_max_chars: int = WORKFLOW_ARGUMENT_MAX_CHARS,
                      signals: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """A trace in the workflow format: system, user, one assistant message holding the plan."""
    completion = workflow_text(trace, argument_max_chars=argument_max_chars, signals=signals)
    return [*prompt_messages(trace, tools=tools, fmt=WORKFLOW), {"role": "assistant", "content": completion}]


_HEADING = re.compile(
    r"^[ \t]*(?:#+[ \t]*)?(?:\*\*)?(reasoning|plan|tool plan|response|answer)(?:\*\*)?[ \t]*"
    r"(?::(?:\*\*)?[ \t]*(?P<rest>.*?)|(?:\*\*)?)[ \t]*$",
    re.IGNORECASE | re.MULTILINE,
)
_ITEM = re.compile(r"^[ \t]*(?:\d+[.)]|[-*•])[ \t]*(.*)$")


def _find_heading(text: str, names: tuple[str, ...], start: int) -> re.Match[str] | None:
    for match in _HEADING.finditer(text, start):
        if match.group(1).lower() in names:
            return match
    return None


def parse_workflow(text: Any) -> Workflow:
    """Read a workflow completion back (for the RL reward). Never raises.

    Exact inverse of ``render_workflow``. Tolerant: headings may be ``## Plan`` or ``**Plan:**``,
    ``Answer:`` is taken for ``Response:``, bullets for numbers; missing sections are reported
    in ``errors`` and left empty.
    """
    result = Workflow()
    if not isinstance(text, str):
        result.errors.append(f"expected text, got {type(text).__name__}")
        return result
    reasoning_h = _find_heading(text, ("reasoning",), 0)
    plan_h = _find_heading(text, ("plan", "tool plan"), reasoning_h.end() if reasoning_h else 0)
    after_plan = plan_h.end() if plan_h else (reasoning_h.end() if reasoning_h else 0)
    response_h = _find_heading(text, ("response", "answer"), after_plan)
    if reasoning_h is None:
        result.errors.append("no Reasoning section")
    if plan_h is None:
        result.errors.append("no Plan section")
    if response_h is None:
        result.errors.append("no Response section")

    def body_start(head: re.Match[str]) -> int:
        # "Response: text" on the heading line (tolerated): the text belongs to the section.
        return head.start("rest") if head.group("rest") else head.end()

    def section(head: re.Match[str] | None, *following: re.Match[str] | None) -> str:
        if head is None:
            return ""
        ends = [m.start() for m in following if m is not None and m.start() >= head.end()]
        return text[body_start(head): min(ends) if ends else len(text)]

    for line in section(reasoning_h, plan_h, response_h).splitlines():
        match = _ITEM.match(line)
        item = (match.group(1) if match else line).strip()
        if item:
            result.reasoning.append(item)

    plan_text = section(plan_h, response_h)
    chunks: list[tuple[str, list[str]]] = []
    for line in plan_text.splitlines():
        match = _ITEM.match(line)
        if match and not line.lstrip().startswith(TOOL_CALL_OPEN):
            chunks.append((match.group(1).strip(), []))
        elif line.strip():
            if not chunks:
                chunks.append(("", []))
            chunks[-1][1].append(line)
    for number, (reason, body) in enumerate(chunks, 1):
        parsed = parse_assistant_text("\n".join(body))
        result.errors += [f"plan step {number}: {e}" for e in parsed.errors]
        extra = parsed.content.strip()
        full_reason = f"{reason} {extra}".strip() if extra else reason
        result.plan.append(PlanStep(full_reason, parsed.calls))

    if response_h is not None:
        body = text[body_start(response_h):]
        result.response = body[1:] if body.startswith("\n") else body
    return result


def workflow_to_trace(workflow: Workflow, prompt: str = "") -> dict[str, Any]:
    """A trace dict (``records`` form, steps only) for a parsed workflow, so that
    ``signals.extract_signals`` measures a generated plan like a captured trace. Each plan
    step is one turn (its calls succeed); the reasoning items form the first text step."""
    steps: list[dict[str, Any]] = []
    if workflow.reasoning:
        steps.append({"kind": "text", "text": "\n".join(f"{n}. {r}" for n, r in enumerate(workflow.reasoning, 1))})
    call_number = 0
    for step in workflow.plan:
        if step.reason:
            steps.append({"kind": "text", "text": step.reason})
        pending = []
        for call in step.calls:
            call_number += 1
            call_id = f"plan_{call_number}"
            name, _ = _call_parts(call)
            steps.append({"kind": "tool_use", "tool_use_id": call_id, "name": name,
                          "input": tool_call_input(call) or {}})
            pending.append(call_id)
        steps += [{"kind": "tool_result", "tool_use_id": cid, "output": "", "is_error": False} for cid in pending]
    if workflow.response:
        steps.append({"kind": "text", "text": workflow.response})
    return {"prompt": prompt, "response": workflow.response, "steps": steps, "status": "complete"}
