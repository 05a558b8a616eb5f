"""Offline evaluation metrics: pure functions over conversations, actions and tool sequences.

No torch, no database: the evaluation runner (``trainers/evaluate.py``), the deployment gate
and the tests all score with these functions, so a number means the same thing everywhere.

Teacher-forced next-action agreement (the primary metric)
---------------------------------------------------------
At every assistant turn of a held-out trajectory the model gets Claude's real prefix (system,
prompt, earlier calls and their results) and writes the next turn. Its *action* is the set of
calls it makes (parallel calls are one action), or no call at all: the decision to stop and
answer. Each decision is scored on:

- ``decision``: call vs answer agrees with Claude's (every decision);
- ``tool_name``: the multiset of tool names equals Claude's (decisions where Claude called);
- ``arguments``: the calls can be paired one-to-one with Claude's, same name and matching
  arguments (BFCL-style, see :func:`arguments_match`; decisions where Claude called);
- ``next_action`` (primary): the decision agrees and, when Claude called, the tool names do.
  Arguments are reported but not part of the primary metric: the learn-nothing baselines cannot
  produce arguments, and the primary metric must be comparable with them.

A call cut off by the evaluation's token budget (the text ends inside its ``<tool_call>``)
counts by its name when the name is complete; its arguments never match.

Each is a rate with a session-cluster percentile-bootstrap interval (:func:`session_rate`):
decisions within one session are not independent, so whole sessions are resampled (seeded,
:data:`RESAMPLES` times). Only where a single session exists is the Wilson score interval used,
and the rate's ``method`` says so. Paired differences between two models resample sessions too.

Free-running plan similarity
----------------------------
A whole plan (workflow format) is generated per held-out prompt; its tool sequence is compared
with Claude's by normalised edit distance and in-order precision/recall (longest common
subsequence), averaged over prompts with a bootstrap interval.

Baselines that learn nothing
----------------------------
:class:`MostFrequentBaseline` always predicts the most frequent action of the training split;
:class:`BigramBaseline` predicts the most frequent action that followed Claude's previous action
(teacher-forced, like the model). For plans they produce the most frequent tool repeated, and
the greedy chain of tool-to-tool transitions, each as long as the median training plan.
"""

from __future__ import annotations

import json
import math
import posixpath
import random
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ccrl.trainers.conversation import (TOOL_CALL_CLOSE, TOOL_CALL_OPEN, estimate_tokens, parse_assistant_text,
                                     render_assistant_text)
from ccrl.trainers.windows import DEFAULT_SHORTENED_RESULT_TOKENS, prompt_window

ANSWER = "<answer>"
"""The action label of a turn without calls (stop and answer)."""
START = "<start>"
"""The previous-action label before a trace's first turn."""
END = "<end>"
"""The end of a tool sequence, in the plan-level transition model."""

DECISION_METRICS = ("next_action", "tool_name", "arguments", "decision")
PLAN_METRICS = ("plan_edit_distance", "plan_precision", "plan_recall", "plan_format")
PRIMARY_METRIC = "next_action"
LOWER_IS_BETTER = frozenset({"plan_edit_distance"})

PATH_KEYS = frozenset({"file_path", "path", "notebook_path", "cwd", "directory", "dir", "filename"})
"""Argument names whose string values are file paths (normalised before comparison)."""

_WORKDIR = re.compile(r"^Working directory: (?P<cwd>.+?)\s*$", re.MULTILINE)

Label = tuple[str, ...]


# ---------------------------------------------------------------------------------------------
# Rates and means with intervals
# ---------------------------------------------------------------------------------------------

RESAMPLES = 2000
"""Bootstrap resamples of every interval (seeded: the same data and seed give the same interval)."""
SESSION_BOOTSTRAP = "session-cluster percentile bootstrap"
"""Sessions are resampled with replacement, each with all of its decisions; the statistic is the
pooled rate (or mean) of the resample. Percentile, not BCa: BCa's jackknife over a handful of
sessions is unstable, and the percentile interval is what a reader can recompute."""
WILSON_ONE_SESSION = "Wilson score (one session: nothing to resample)"
DECISION_BOOTSTRAP_ONE_SESSION = "decision-level percentile bootstrap (one session: nothing to resample)"
WILSON_NO_SESSIONS = "Wilson score (decisions without session ids)"
DECISION_BOOTSTRAP = "decision-level percentile bootstrap (items without session ids)"


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    return statistics.NormalDist().inv_cdf(1.0 - (1.0 - confidence) / 2.0)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (``(0, 1)`` when ``n`` is 0).

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0 or n successes.
    It assumes independent trials: used only where a single session (or no session id) exists.
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    z = _z(confidence)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Exact ends at 0 and n successes (the formula gives them up to rounding).
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def _percentiles(values: list[float], confidence: float) -> tuple[float, float]:
    values = sorted(values)
    count = len(values)
    tail = (1.0 - confidence) / 2.0
    low = values[max(0, int(math.floor(tail * count)))]
    high = values[min(count - 1, int(math.ceil((1.0 - tail) * count)) - 1)]
    return low, high


def cluster_bootstrap(values: Sequence[float], clusters: Sequence[Any], confidence: float = 0.95, *,
                      resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """A percentile interval of the pooled mean of ``values`` resampling whole clusters
    (sessions): each resample draws as many clusters as there are, with replacement, and takes
    every value of each drawn cluster. Values within a session are correlated (one habit, one
    codebase), so resampling single values would claim more certainty than the data holds."""
    if len(values) != len(clusters):
        raise ValueError(f"values and clusters need equal lengths, got {len(values)} and {len(clusters)}")
    _z(confidence)
    totals: dict[Any, list[float]] = {}
    for value, cluster in zip(values, clusters):
        entry = totals.setdefault(cluster, [0.0, 0])
        entry[0] += float(value)
        entry[1] += 1
    groups = [tuple(v) for v in totals.values()]
    if len(groups) < 2:
        raise ValueError("a cluster bootstrap needs at least two clusters")
    rng = random.Random(seed)
    means = []
    for _ in range(resamples):
        drawn = rng.choices(groups, k=len(groups))
        means.append(sum(s for s, _n in drawn) / sum(n for _s, n in drawn))
    return _percentiles(means, confidence)


def _sessions_of(clusters: Sequence[Any] | None, n: int) -> list[Any] | None:
    """The cluster labels, or None when any item lacks one (no clustering possible)."""
    if clusters is None:
        return None
    clusters = list(clusters)
    if len(clusters) != n:
        raise ValueError(f"need one session per item, got {len(clusters)} for {n}")
    return None if any(c is None for c in clusters) else clusters


@dataclass(frozen=True)
class Rate:
    """A proportion with its interval and the method that gave it."""

    successes: int
    n: int
    low: float | None
    high: float | None
    method: str = "Wilson score"
    sessions: int | None = None
    """Sessions the items came from (None when unknown)."""

    @property
    def value(self) -> float | None:
        """successes / n (None when nothing was measured)."""
        return self.successes / self.n if self.n else None

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ``{"value", "successes", "n", "low", "high", "method", "sessions"}``."""
        return {"value": self.value, "successes": self.successes, "n": self.n, "low": self.low, "high": self.high,
                "method": self.method, "sessions": self.sessions}


def rate(successes: int, n: int, confidence: float = 0.95) -> Rate:
    """A :class:`Rate` with its Wilson interval (independent trials)."""
    low, high = wilson_interval(successes, n, confidence)
    return Rate(successes, n, low, high)


def session_rate(outcomes: Sequence[bool | int], sessions: Sequence[Any] | None, confidence: float = 0.95, *,
                 resamples: int = RESAMPLES, seed: int = 0) -> Rate:
    """The rate of ``outcomes`` (0/1 per decision) with a session-cluster bootstrap interval
    (``sessions``: each decision's session id). One session: the Wilson interval, named as
    such; no decisions: no interval."""
    outcomes = [int(bool(o)) for o in outcomes]
    n, successes = len(outcomes), sum(outcomes)
    labels = _sessions_of(sessions, n)
    if n == 0:
        return Rate(0, 0, None, None, SESSION_BOOTSTRAP, 0)
    if labels is None:
        low, high = wilson_interval(successes, n, confidence)
        return Rate(successes, n, low, high, WILSON_NO_SESSIONS, None)
    count = len(set(labels))
    if count < 2:
        low, high = wilson_interval(successes, n, confidence)
        return Rate(successes, n, low, high, WILSON_ONE_SESSION, count)
    low, high = cluster_bootstrap(outcomes, labels, confidence, resamples=resamples, seed=seed)
    return Rate(successes, n, low, high, SESSION_BOOTSTRAP, count)


@dataclass(frozen=True)
class Mean:
    """A mean with a bootstrap interval (no interval below two values) and its method."""

    value: float | None
    n: int
    low: float | None
    high: float | None
    method: str = "percentile bootstrap"
    sessions: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ``{"value", "n", "low", "high", "method", "sessions"}``."""
        return {"value": self.value, "n": self.n, "low": self.low, "high": self.high, "method": self.method,
                "sessions": self.sessions}


def mean_interval(values: Sequence[float], confidence: float = 0.95, *, resamples: int = RESAMPLES,
                  seed: int = 0, sessions: Sequence[Any] | None = None) -> Mean:
    """The mean of ``values`` with a seeded percentile-bootstrap interval: over sessions when
    ``sessions`` names each value's session and there are two or more, else over the values
    (the method says which).

    One value has no interval (``low``/``high`` None): a bootstrap of one point would claim a
    certainty the data does not have.
    """
    values = [float(v) for v in values]
    n = len(values)
    labels = _sessions_of(sessions, n)
    count = len(set(labels)) if labels is not None else None
    if n == 0:
        return Mean(None, 0, None, None, SESSION_BOOTSTRAP if labels is not None else DECISION_BOOTSTRAP, count)
    mean = sum(values) / n
    if labels is not None and count >= 2:
        low, high = cluster_bootstrap(values, labels, confidence, resamples=resamples, seed=seed)
        return Mean(mean, n, low, high, SESSION_BOOTSTRAP, count)
    method = DECISION_BOOTSTRAP_ONE_SESSION if labels is not None else DECISION_BOOTSTRAP
    if n == 1:
        return Mean(mean, 1, None, None, method, count)
    _z(confidence)  # validates
    rng = random.Random(seed)
    low, high = _percentiles([sum(rng.choices(values, k=n)) / n for _ in range(resamples)], confidence)
    return Mean(mean, n, low, high, method, count)


def paired_difference(a: Sequence[int], b: Sequence[int], confidence: float = 0.95, *,
                      resamples: int = RESAMPLES, seed: int = 0, sessions: Sequence[Any] | None = None) -> Mean:
    """Mean of ``a[i] - b[i]`` over the same items (e.g. two models' 0/1 scores on the same
    decisions), with a bootstrap interval: whether a difference is more than noise. With
    ``sessions`` (each item's session id) whole sessions are resampled, both models' scores of a
    session together, so the pairing and the within-session correlation are both kept."""
    if len(a) != len(b):
        raise ValueError(f"paired scores need equal lengths, got {len(a)} and {len(b)}")
    return mean_interval([x - y for x, y in zip(a, b)], confidence, resamples=resamples, seed=seed,
                         sessions=sessions)


# ---------------------------------------------------------------------------------------------
# Actions
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One tool call: its name and its arguments (None when they are not a JSON object)."""

    name: str
    arguments: dict[str, Any] | None = None


@dataclass(frozen=True)
class Action:
    """What an assistant turn does next: its (parallel) calls, or none (stop and answer)."""

    calls: tuple[Call, ...] = ()
    parse_errors: tuple[str, ...] = ()

    @property
    def is_answer(self) -> bool:
        """True when the turn makes no call: the decision to stop and answer."""
        return not self.calls

    @property
    def label(self) -> Label:
        """The action's class: its tool names sorted (parallel calls are unordered), or
        ``(ANSWER,)``."""
        return tuple(sorted(c.name for c in self.calls)) or (ANSWER,)

    @property
    def tool_names(self) -> list[str]:
        """Tool names in call order."""
        return [c.name for c in self.calls]


def _arguments_dict(arguments: Any) -> dict[str, Any] | None:
    if isinstance(arguments, dict):
        return arguments
    if isinstance(arguments, str):
        try:
            value = json.loads(arguments)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None
    return None


def _calls_of(tool_calls: Any) -> tuple[Call, ...]:
    calls = []
    for call in tool_calls or []:
        if not isinstance(call, dict):
            continue
        fn = call.get("function") if isinstance(call.get("function"), dict) else call
        name = fn.get("name")
        if isinstance(name, str) and name:
            calls.append(Call(name, _arguments_dict(fn.get("arguments"))))
    return tuple(calls)


def action_from_message(message: dict[str, Any]) -> Action:
    """The action of a conversation's assistant message (its ``tool_calls``)."""
    return Action(_calls_of(message.get("tool_calls")))


_CUT_OFF_NAME = re.compile(r'\s*\{\s*"name"\s*:\s*"(?P<name>[^"\\]+)"')


def _cut_off_call(text: str, parsed_calls: int) -> Call | None:
    """The call a generation was cut off in, when its name is complete: the text's last
    ``<tool_call>`` has no closing tag and was not read as a call. Evaluation generates with a
    token budget; a turn stopped by that budget mid-arguments has still decided *which* tool to
    call, so the name counts (next action, tool name) and the arguments never match."""
    start = text.rfind(TOOL_CALL_OPEN)
    if start < 0 or TOOL_CALL_CLOSE in text[start:] or text.count(TOOL_CALL_OPEN) <= parsed_calls:
        return None
    match = _CUT_OFF_NAME.match(text, start + len(TOOL_CALL_OPEN))
    return Call(match.group("name"), None) if match else None


def action_from_text(text: str) -> Action:
    """The action of a model's generated turn, read with the conversation format's parser; a
    last call cut off by the token budget counts by its name (see :func:`_cut_off_call`)."""
    parsed = parse_assistant_text(text)
    calls = _calls_of(parsed.calls)
    cut_off = _cut_off_call(text, len(parsed.calls)) if isinstance(text, str) else None
    if cut_off is not None:
        calls += (cut_off,)
    return Action(calls, tuple(parsed.errors))


def action_from_label(label: Label) -> Action:
    """An action with the calls a label names and no arguments (what a baseline predicts)."""
    if tuple(label) == (ANSWER,):
        return Action()
    return Action(tuple(Call(name, None) for name in label))


# ---------------------------------------------------------------------------------------------
# Arguments, BFCL-style
# ---------------------------------------------------------------------------------------------


def working_directory(system_text: str | None) -> str | None:
    """The working directory named in a system prompt (``Working directory: …``), if any."""
    if not isinstance(system_text, str):
        return None
    match = _WORKDIR.search(system_text)
    return match.group("cwd") if match else None


def normalise_path(value: str, cwd: str | None = None) -> str:
    """A path in a comparable form: relative paths resolved against ``cwd``, ``.``/``..`` and
    doubled or trailing slashes removed (``src/./a.py`` in ``/repo`` == ``/repo/src/a.py``)."""
    path = value.strip()
    if not path:
        return path
    if cwd and not path.startswith(("/", "~")):
        path = posixpath.join(cwd, path)
    path = posixpath.normpath(path)
    return path[:-1] if len(path) > 1 and path.endswith("/") else path


def normalise_value(key: str | None, value: Any, cwd: str | None = None) -> Any:
    """An argument value in a comparable form: strings stripped (paths normalised when the key
    names a path), numbers as floats (``1 == 1.0``; booleans stay booleans), containers
    recursively."""
    if isinstance(value, str):
        return normalise_path(value, cwd) if key in PATH_KEYS else value.strip()
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, list):
        return [normalise_value(key, v, cwd) for v in value]
    if isinstance(value, dict):
        return {k: normalise_value(k, v, cwd) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class ToolSchema:
    """What the argument check needs from a tool's JSON schema."""

    required: frozenset[str] = frozenset()
    properties: frozenset[str] | None = None
    """Known parameter names; None when the schema is unknown (no unexpected-key check)."""


def tool_schemas(tools: Any) -> dict[str, ToolSchema]:
    """Schemas by tool name from a tool list (the dataset's ``tools`` JSON string or a list in
    the OpenAI function format)."""
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except ValueError:
            return {}
    schemas: dict[str, ToolSchema] = {}
    for tool in tools or []:
        spec = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            continue
        params = spec.get("parameters") if isinstance(spec.get("parameters"), dict) else {}
        props = params.get("properties")
        schemas[spec["name"]] = ToolSchema(
            required=frozenset(k for k in params.get("required") or [] if isinstance(k, str)),
            properties=frozenset(props) if isinstance(props, dict) else None,
        )
    return schemas


def arguments_match(predicted: dict[str, Any] | None, reference: dict[str, Any], *,
                    schema: ToolSchema | None = None, cwd: str | None = None) -> bool:
    """Whether a predicted call's arguments match Claude's, in the spirit of BFCL's AST check.

    - every required parameter (the schema's ``required``, i.e. keys present in every call of
      that tool; without a schema: every key of Claude's call) is present and equal;
    - a parameter both calls give is equal (optional ones may be left out by either side:
      ``Read`` with or without ``limit`` is the same action);
    - a parameter the schema does not know and Claude did not give is wrong (an invented key);
    - equal means equal after :func:`normalise_value` (paths resolved against the working
      directory, surrounding whitespace ignored, ``1 == 1.0``).
    """
    if predicted is None or not isinstance(reference, dict):
        return False
    required = schema.required if schema is not None else frozenset(reference)
    known = schema.properties if schema is not None else None

    def same(key: str) -> bool:
        return normalise_value(key, predicted[key], cwd) == normalise_value(key, reference[key], cwd)

    for key in required:
        if key in reference and key not in predicted:
            return False
    for key in predicted:
        if key in reference:
            if not same(key):
                return False
        elif schema is None or (known is not None and key not in known):
            return False  # a key Claude did not give and no schema allows: invented
    return True


def _perfect_matching(left: Sequence[Call], right: Sequence[Call], ok: Any) -> bool:
    """Whether every call on the left pairs with a distinct call on the right (Kuhn's algorithm)."""
    if len(left) != len(right):
        return False
    owner: dict[int, int] = {}

    def assign(i: int, seen: set[int]) -> bool:
        for j in range(len(right)):
            if j in seen or not ok(left[i], right[j]):
                continue
            seen.add(j)
            if j not in owner or assign(owner[j], seen):
                owner[j] = i
                return True
        return False

    return all(assign(i, set()) for i in range(len(left)))


# ---------------------------------------------------------------------------------------------
# Scoring one decision
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecisionScore:
    """How one predicted turn compares with Claude's turn at the same point."""

    decision: bool
    tool_name: bool | None
    """None when Claude answered (no call to name)."""
    arguments: bool | None
    """None when Claude answered."""

    @property
    def next_action(self) -> bool:
        """The primary metric: the decision agrees and, when Claude called, so do the names."""
        return self.decision and self.tool_name is not False

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"next_action": self.next_action, "decision": self.decision, "tool_name": self.tool_name,
                "arguments": self.arguments}


def score_decision(predicted: Action, reference: Action, *, schemas: dict[str, ToolSchema] | None = None,
                   cwd: str | None = None) -> DecisionScore:
    """Score a predicted action against Claude's (see the module docstring)."""
    decision = predicted.is_answer == reference.is_answer
    if reference.is_answer:
        return DecisionScore(decision, None, None)
    names = Counter(predicted.tool_names) == Counter(reference.tool_names)
    schemas = schemas or {}

    def call_ok(p: Call, r: Call) -> bool:
        return p.name == r.name and r.arguments is not None and arguments_match(
            p.arguments, r.arguments, schema=schemas.get(r.name), cwd=cwd)

    arguments = names and _perfect_matching(predicted.calls, reference.calls, call_ok)
    return DecisionScore(decision, names, arguments)


def summarise_decisions(scores: Sequence[DecisionScore], confidence: float = 0.95, *,
                        sessions: Sequence[Any] | None = None, resamples: int = RESAMPLES,
                        seed: int = 0) -> dict[str, Rate]:
    """The four decision metrics as rates: ``next_action`` and ``decision`` over every decision,
    ``tool_name`` and ``arguments`` over the decisions where Claude called a tool.

    ``sessions``: each decision's session id; the intervals then resample sessions (see
    :func:`session_rate`). Without it every decision counts as independent (Wilson)."""
    labels = _sessions_of(sessions, len(scores))
    if labels is None:
        labels = [None] * len(scores)
    calls = [(s, c) for s, c in zip(scores, labels) if s.tool_name is not None]

    def one(outcomes: list[bool], clusters: list[Any]) -> Rate:
        return session_rate(outcomes, clusters, confidence, resamples=resamples, seed=seed)

    return {
        "next_action": one([s.next_action for s in scores], labels),
        "tool_name": one([bool(s.tool_name) for s, _c in calls], [c for _s, c in calls]),
        "arguments": one([bool(s.arguments) for s, _c in calls], [c for _s, c in calls]),
        "decision": one([s.decision for s in scores], labels),
    }


# ---------------------------------------------------------------------------------------------
# Decision points of a conversation
# ---------------------------------------------------------------------------------------------


@dataclass
class DecisionPoint:
    """One held-out decision: the prefix the model sees and Claude's action there."""

    trace_id: Any
    index: int
    """Index of Claude's assistant message in the conversation."""
    turn: int
    """0-based number of the assistant turn within the trace."""
    prefix: list[dict[str, Any]]
    reference: Action
    previous: Label
    """Claude's previous action (``(START,)`` at the first turn), for the bigram baseline."""
    cwd: str | None
    schemas: dict[str, ToolSchema] = field(default_factory=dict)
    prompt_tokens: int = 0
    """Estimated tokens of the prefix (4 characters a token): model-independent, so every model
    is scored on the same decisions."""
    session_id: Any = None
    """The session the decision comes from: intervals resample sessions. Set by whoever knows
    it (the evaluation's data loader); ``decision_points`` leaves it None."""


def _message_tokens(message: dict[str, Any]) -> int:
    if message.get("role") == "assistant":
        return estimate_tokens(render_assistant_text(message))
    content = message.get("content")
    return estimate_tokens(content if isinstance(content, str) else "")


def decision_points(messages: Sequence[dict[str, Any]], *, trace_id: Any = None, tools: Any = None,
                    max_prompt_tokens: int | None = None,
                    shortened_result_tokens: int = DEFAULT_SHORTENED_RESULT_TOKENS) -> list[DecisionPoint]:
    """Every assistant turn of a trajectory conversation as a :class:`DecisionPoint`.

    With ``max_prompt_tokens`` each prefix is the decision's window (``trainers/windows.py``, as
    SFT builds its examples): the system prompt, the user's prompt and as much recent history as
    fits, older tool results shortened and older turns dropped with markers; so no decision is
    left out for length. Tokens are estimated from characters, the same for every model."""
    messages = [dict(m) for m in messages]
    cwd = working_directory(messages[0].get("content")) if messages and messages[0].get("role") == "system" else None
    schemas = tool_schemas(tools) if tools is not None else {}
    points: list[DecisionPoint] = []
    previous: Label = (START,)
    tokens = 0
    for index, message in enumerate(messages):
        if message.get("role") == "assistant":
            reference = action_from_message(message)
            prefix, prefix_tokens = messages[:index], tokens
            if max_prompt_tokens is not None and tokens > max_prompt_tokens:
                prefix = prompt_window(messages, index, max_prompt_tokens, _message_tokens,
                                       shortened_result_tokens=shortened_result_tokens)
                prefix_tokens = sum(_message_tokens(m) for m in prefix)
            points.append(DecisionPoint(trace_id, index, len(points), prefix, reference, previous, cwd,
                                        schemas, prefix_tokens))
            previous = reference.label
        tokens += _message_tokens(message)
    return points


def action_labels(messages: Sequence[dict[str, Any]]) -> list[Label]:
    """The action label of every assistant turn of a conversation, in order."""
    return [action_from_message(m).label for m in messages if m.get("role") == "assistant"]


# ---------------------------------------------------------------------------------------------
# Plans (tool sequences)
# ---------------------------------------------------------------------------------------------


def levenshtein(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Edit distance between two sequences (insert, delete, substitute: cost 1 each)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def normalised_edit_distance(predicted: Sequence[Any], reference: Sequence[Any]) -> float:
    """Edit distance divided by the longer length: 0 identical, 1 nothing in common (0 for two
    empty sequences)."""
    longest = max(len(predicted), len(reference))
    return levenshtein(predicted, reference) / longest if longest else 0.0


def lcs_length(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Length of the longest common subsequence (the calls both make, in the same order)."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, 1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def in_order_precision_recall(predicted: Sequence[Any], reference: Sequence[Any]) -> tuple[float, float]:
    """``(precision, recall)`` of a predicted tool sequence in order: the longest common
    subsequence over the predicted and over the reference length.

    Empty sequences: both empty is a perfect (1, 1); an empty prediction for a non-empty
    reference scores (0, 0) (an empty plan is not precise, it is missing); a non-empty
    prediction for an empty reference scores (0, 1).
    """
    if not predicted and not reference:
        return 1.0, 1.0
    if not predicted:
        return 0.0, 0.0
    if not reference:
        return 0.0, 1.0
    common = lcs_length(predicted, reference)
    return common / len(predicted), common / len(reference)


@dataclass(frozen=True)
class PlanScore:
    """How one generated plan's tool sequence compares with Claude's."""

    edit_distance: float
    precision: float
    recall: float
    well_formed: bool
    """The completion parsed as a workflow without errors (all three sections, readable calls)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"edit_distance": self.edit_distance, "precision": self.precision, "recall": self.recall,
                "well_formed": self.well_formed}


def score_plan(predicted: Sequence[str], reference: Sequence[str], *, well_formed: bool = True) -> PlanScore:
    """Score a generated tool sequence against Claude's."""
    precision, recall = in_order_precision_recall(predicted, reference)
    return PlanScore(normalised_edit_distance(predicted, reference), precision, recall, well_formed)


def summarise_plans(scores: Sequence[PlanScore], confidence: float = 0.95, *, seed: int = 0,
                    sessions: Sequence[Any] | None = None, resamples: int = RESAMPLES) -> dict[str, Any]:
    """Plan metrics: mean edit distance, precision and recall, and the rate of well-formed
    plans, with session-cluster bootstrap intervals when ``sessions`` gives each plan's session
    (see :func:`mean_interval` and :func:`session_rate`)."""
    kw = {"seed": seed, "sessions": sessions, "resamples": resamples}
    return {
        "plan_edit_distance": mean_interval([s.edit_distance for s in scores], confidence, **kw),
        "plan_precision": mean_interval([s.precision for s in scores], confidence, **kw),
        "plan_recall": mean_interval([s.recall for s in scores], confidence, **kw),
        "plan_format": session_rate([s.well_formed for s in scores], sessions, confidence, resamples=resamples,
                                    seed=seed),
    }


# ---------------------------------------------------------------------------------------------
# Baselines that learn nothing
# ---------------------------------------------------------------------------------------------


def _most_common(counts: Counter) -> Any:
    """The most frequent key; ties go to the smallest key, so the choice is reproducible."""
    return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]


def _median_length(sequences: Sequence[Sequence[str]]) -> int:
    lengths = [len(s) for s in sequences]
    return int(round(statistics.median(lengths))) if lengths else 0


class MostFrequentBaseline:
    """Always the most frequent action of the training split; its plan is the most frequent
    tool, repeated as many times as the median training plan has calls."""

    name = "most_frequent"

    def __init__(self, label_sequences: Iterable[Sequence[Label]], tool_sequences: Iterable[Sequence[str]] = ()) -> None:
        counts = Counter(tuple(label) for labels in label_sequences for label in labels)
        if not counts:
            raise ValueError("the most-frequent baseline needs at least one training decision")
        self.label: Label = _most_common(counts)
        tool_sequences = [list(s) for s in tool_sequences]
        tools = Counter(t for s in tool_sequences for t in s)
        self.tool = _most_common(tools) if tools else None
        self.plan_length = _median_length(tool_sequences)

    def predict(self, previous: Label | None = None) -> Label:
        """The predicted action label (the previous action is ignored)."""
        return self.label

    def plan(self) -> list[str]:
        """The predicted tool sequence of a whole plan."""
        return [self.tool] * self.plan_length if self.tool else []


class BigramBaseline:
    """The most frequent action that followed the previous action in the training split
    (falling back to the most frequent action overall for a previous action never seen); its
    plan is the greedy chain of tool-to-tool transitions from the start, ending at the most
    likely end or at the median training plan length."""

    name = "bigram"

    def __init__(self, label_sequences: Iterable[Sequence[Label]], tool_sequences: Iterable[Sequence[str]] = ()) -> None:
        self.transitions: dict[Label, Counter] = defaultdict(Counter)
        overall: Counter = Counter()
        for labels in label_sequences:
            previous: Label = (START,)
            for label in labels:
                label = tuple(label)
                self.transitions[previous][label] += 1
                overall[label] += 1
                previous = label
        if not overall:
            raise ValueError("the bigram baseline needs at least one training decision")
        self.fallback: Label = _most_common(overall)
        tool_sequences = [list(s) for s in tool_sequences]
        self.tool_transitions: dict[str, Counter] = defaultdict(Counter)
        for sequence in tool_sequences:
            chain = [START, *sequence, END]
            for a, b in zip(chain, chain[1:]):
                self.tool_transitions[a][b] += 1
        self.plan_length = _median_length(tool_sequences)

    def predict(self, previous: Label | None = None) -> Label:
        """The predicted action label after Claude's ``previous`` action."""
        counts = self.transitions.get(tuple(previous) if previous else (START,))
        return _most_common(counts) if counts else self.fallback

    def plan(self) -> list[str]:
        """The predicted tool sequence of a whole plan."""
        sequence: list[str] = []
        current = START
        while len(sequence) < self.plan_length:
            counts = self.tool_transitions.get(current)
            if not counts:
                break
            current = _most_common(counts)
            if current == END:
                break
            sequence.append(current)
        return sequence
