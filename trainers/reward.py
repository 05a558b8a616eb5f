"""The behavioural reward for the RL phase: five components, each in [0, 1], of one generated
workflow plan measured against the reference trace for the same prompt.

A generation is read with the project's one parser (``conversation.parse_workflow``), turned
into a trace (``workflow_to_trace``) and measured by the same ``signals`` code that measured the
reference when the dataset was built, so a generation and Claude's own trace are compared on
equal terms. The reference is the dataset's RL prompt row: ``reference_signals`` (the trace's
signals as JSON), ``reference_completion`` (its workflow text: call arguments, e.g. paths) and
the prompt (the user's stated prohibitions).

Components (weights .25/.20/.20/.15/.20 as designed; ``[reward]`` in the config changes them):

- ``constraint_adherence``: the plan keeps the rules Claude Code works by and those stated
  for the task: it reads a file before editing it (or before overwriting a file the reference
  shows exists), it looks before it deletes, it runs a check between changing and committing,
  and it changes nothing the prompt or Claude's own stated constraints put off limits
  ("don't modify the tests"). Share of the applicable checks that hold; 1 when none apply.
- ``reasoning_depth``: distinct, substantive reasoning steps against the number the task
  needs (the reference's reasoning chain, or an estimate from its complexity when Claude did
  not narrate): ``min(n, target) / max(n, target)`` times the share of items that are not
  padding (repeats, one- or two-word items).
- ``tool_efficiency``: ``1 - normalised edit distance`` between the plan's tool sequence and
  the reference's (unreadable calls count as wrong tools), times the share of calls that are
  not pointless repeats (the same call with the same arguments again, with no change between).
- ``self_correction``: a mistake the plan states ("Actually, …", "I was wrong…") is followed
  by a different action, not by pressing on with the same calls; when Claude had to correct
  itself on this task, a plan that changes files must also check its change (the step that
  surfaces mistakes). Share of the applicable checks that hold; 1 when none apply and the
  reference needed no correction, 0.5 when it did and the plan gives nothing to judge.
- ``exploration_fit``: the plan's exploration depth (minimal / moderate / thorough, from
  ``signals.depth_from_counts``) against the reference's: half for the depth level (one level
  off = half credit), half for the ratio of exploring calls.

Format: every component is multiplied by the plan's format factor, ``FORMAT_FLOOR`` plus the
rest in proportion to the three sections present (``Reasoning:``, ``Plan:``, a non-empty
``Response:``): a whole plan keeps everything, one cut off before its response keeps 5/6. A
completion with none of the headings is read as ONE decision in the format SFT teaches (its
text, then its ``<tool_call>`` lines: the trajectory format of ``conversation``), its text as the
reasoning and its calls as a one-step plan, and keeps ``FORMAT_FLOOR`` of its score. Why not a
factor of 0 there: a model fine-tuned on trajectories answers the RL prompt with one decision,
so every completion of every group scored 0, every group-relative advantage was 0 and GRPO had
no gradient (TRL's ``frac_reward_zero_std`` was 1.0 on the demo samples). Text with neither a
heading nor a readable tool call scores 0 on everything. Nothing here raises on model output:
any text, ``None`` or a message list is scored.

For TRL, ``REWARD_FUNCS`` holds one callable per component, named as the component (TRL logs
``rewards/<name>/mean``), called as ``f(prompts=, completions=, completion_ids=,
**dataset_columns) -> list[float]``; ``RewardWeights.as_list()`` gives ``reward_weights``.

Pure Python, no heavy imports: the agent and the evaluation can import it freely.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import PurePosixPath
from typing import Any

from ccrl.trainers import conversation as conv
from ccrl.trainers.signals import DEPTHS, depth_from_counts, extract_signals, tool_category

COMPONENTS = ("constraint_adherence", "reasoning_depth", "tool_efficiency", "self_correction", "exploration_fit")
"""The five components, in the order of ``REWARD_FUNCS`` and ``RewardWeights.as_list()``."""

SECTIONS = ("Reasoning", "Plan", "Response")
MAX_REASONING_TARGET = conv.WORKFLOW_MAX_REASONING_ITEMS
"""The workflow keeps at most this many reasoning items, so no target asks for more."""
MIN_SUBSTANTIVE_WORDS = 3
"""A reasoning item with fewer words is padding ("1. Plan", "2. Do it")."""
UNREADABLE_CALL = "<unreadable call>"
"""Stands for a call the parser could not read, in the tool sequence compared by edit distance."""
FORMAT_FLOOR = 0.5
"""Share of its score a readable completion keeps with none of the three sections: the format
costs at most half the reward, never every signal (see the module docstring)."""
NO_EVIDENCE_AFTER_CORRECTED_REFERENCE = 0.5
"""Self-correction score when Claude had to correct itself on this task but the plan neither
states a mistake nor changes anything: nothing to reward or blame."""

EDIT_TOOLS = frozenset({"Edit", "MultiEdit", "NotebookEdit"})
READ_TOOLS = frozenset({"Read", "NotebookRead"})


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RewardWeights:
    """Weights of the five components in the total reward (the original design's values)."""

    constraint_adherence: float = 0.25
    reasoning_depth: float = 0.20
    tool_efficiency: float = 0.20
    self_correction: float = 0.15
    exploration_fit: float = 0.20

    def __post_init__(self) -> None:
        values = self.as_list()
        if any(v < 0 for v in values) or sum(values) <= 0:
            raise ValueError(f"reward weights must be >= 0 and not all 0, got {values}")

    def as_list(self) -> list[float]:
        """Weights in ``COMPONENTS`` order (TRL's ``reward_weights``)."""
        return [float(getattr(self, name)) for name in COMPONENTS]

    def as_dict(self) -> dict[str, float]:
        """Component name -> weight."""
        return dict(zip(COMPONENTS, self.as_list()))

    @classmethod
    def from_settings(cls, reward: Any) -> RewardWeights:
        """From the ``[reward]`` settings section (``constraint``, ``reasoning``, …)."""
        return cls(constraint_adherence=reward.constraint, reasoning_depth=reward.reasoning,
                   tool_efficiency=reward.tool_efficiency, self_correction=reward.self_correction,
                   exploration_fit=reward.exploration)

    @classmethod
    def from_dict(cls, values: dict[str, float]) -> RewardWeights:
        """From a component-name mapping (unknown names are an error)."""
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown reward component(s): {', '.join(unknown)}; known: {', '.join(COMPONENTS)}")
        return cls(**values)


# ---------------------------------------------------------------------------------------------
# A plan as the reward sees it
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedCall:
    """One call of a plan, in order."""

    name: str
    input: dict[str, Any]
    category: str
    """``signals.tool_category``: explore, change, execute, plan, delegate or other."""
    path: str | None
    """The file the call reads or writes (``file_path`` / ``notebook_path``), if any."""

    @property
    def key(self) -> str:
        """Name and arguments, for spotting the same call made twice."""
        return self.name + "\0" + json.dumps(self.input, sort_keys=True, ensure_ascii=False)


@dataclass(frozen=True)
class Plan:
    """A workflow completion, parsed and measured."""

    workflow: conv.Workflow
    calls: tuple[PlannedCall, ...]
    signals: dict[str, Any]
    trace: dict[str, Any]
    sections: int
    """How many of Reasoning / Plan / non-empty Response were found (0..3)."""
    unreadable_calls: int
    """Tool calls the parser reported as unreadable."""
    decision: bool = False
    """Read as one decision (no section heading, at least one readable tool call)."""

    @property
    def format_factor(self) -> float:
        """Multiplies every component: ``FORMAT_FLOOR`` plus the rest by the share of the three
        sections present; 0 for text with neither a section nor a readable call."""
        if not self.sections and not self.decision:
            return 0.0
        return FORMAT_FLOOR + (1.0 - FORMAT_FLOOR) * self.sections / len(SECTIONS)


def _file_path(tool_input: dict[str, Any]) -> str | None:
    for key in ("file_path", "notebook_path", "path"):
        value = tool_input.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _planned_calls(workflow: conv.Workflow) -> tuple[PlannedCall, ...]:
    calls = []
    for step in workflow.plan:
        for call in step.calls:
            fn = call.get("function") if isinstance(call.get("function"), dict) else call
            name = str(fn.get("name") or "")
            tool_input = conv.tool_call_input(call) or {}
            path = _file_path(tool_input) if name != "Grep" and name != "Glob" else None
            calls.append(PlannedCall(name, tool_input, tool_category(name, tool_input), path))
    return tuple(calls)


def parse_plan(text: Any) -> Plan:
    """Parse and measure a generated (or reference) workflow completion. Never raises."""
    return _parse_plan_cached(text) if isinstance(text, str) else _parse_plan(text)


@lru_cache(maxsize=512)
def _parse_plan_cached(text: str) -> Plan:
    # The five reward functions see the same completions in one batch: parse each once.
    return _parse_plan(text)


def _parse_plan(text: Any) -> Plan:
    workflow = conv.parse_workflow(text)
    sections = 0
    if isinstance(text, str):  # parse_workflow reports a missing section as "no <name> section"
        sections = sum(1 for name in SECTIONS[:2] if f"no {name} section" not in workflow.errors)
        sections += "no Response section" not in workflow.errors and bool(workflow.response.strip())
    unreadable = sum(1 for e in workflow.errors if e.startswith("plan step"))
    decision = False
    if isinstance(text, str) and not sections and not _any_heading(workflow):
        read = _as_decision(text)
        if read is not None:
            workflow, unreadable, decision = read[0], read[1], True
    trace = conv.workflow_to_trace(workflow)
    return Plan(workflow, _planned_calls(workflow), extract_signals(trace), trace, sections, unreadable, decision)


def _any_heading(workflow: conv.Workflow) -> bool:
    """Whether the text had any section heading (an empty ``Response:`` counts)."""
    return any(f"no {name} section" not in workflow.errors for name in SECTIONS)


def _as_decision(text: str) -> tuple[conv.Workflow, int] | None:
    """A completion without headings read as one assistant decision in the trajectory format
    (``conversation.parse_assistant_text``): its text lines are the reasoning, its calls one
    plan step. ``None`` when it holds no readable call (then it is not a decision but prose).
    Returns the workflow and the number of ``<tool_call>`` openings that could not be read."""
    parsed = conv.parse_assistant_text(text)
    if not parsed.calls:
        return None
    reasoning = [line.strip() for line in parsed.content.splitlines() if line.strip()]
    workflow = conv.Workflow(reasoning=reasoning, plan=[conv.PlanStep("", list(parsed.calls))],
                             errors=["no sections: read as one decision", *parsed.errors])
    return workflow, max(0, text.count(conv.TOOL_CALL_OPEN) - len(parsed.calls))


# ---------------------------------------------------------------------------------------------
# The reference
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """What the reward compares a generation with: Claude's trace for the same prompt."""

    signals: dict[str, Any]
    """The reference trace's signals (``signals.extract_signals``)."""
    calls: tuple[PlannedCall, ...] = ()
    """The reference's calls with arguments, from its workflow completion (may be empty)."""
    prompt: str = ""
    """The user's prompt (for the prohibitions it states)."""

    @property
    def tool_sequence(self) -> list[str]:
        """The reference's tool names in order."""
        seq = self.signals.get("tool_sequence")
        return [str(n) for n in seq] if isinstance(seq, list) else []

    @property
    def corrected_itself(self) -> bool:
        """Whether Claude corrected itself on this task."""
        return bool(self.signals.get("self_corrections"))

    @property
    def explore_calls(self) -> int:
        """Exploring calls in the reference."""
        complexity = self.signals.get("complexity")
        value = complexity.get("explore_calls") if isinstance(complexity, dict) else None
        if isinstance(value, int):
            return value
        return sum(1 for c in self.calls if c.category == "explore")

    @property
    def depth(self) -> str:
        """The reference's exploration depth."""
        depth = self.signals.get("exploration_depth")
        if depth in DEPTHS:
            return depth
        return depth_from_counts(self.explore_calls, sum(1 for c in self.calls if c.category == "change"))


def make_reference(signals: Any, completion: Any = None, prompt: Any = None) -> Reference:
    """A ``Reference`` from dataset columns: ``signals`` as a dict or its JSON string (bad JSON
    counts as no signals), ``completion`` the reference workflow text, ``prompt`` the user's
    text or the prompt's messages."""
    if isinstance(signals, str):
        try:
            signals = json.loads(signals)
        except ValueError:
            signals = {}
    if not isinstance(signals, dict):
        signals = {}
    calls = parse_plan(completion).calls if isinstance(completion, str) and completion else ()
    return Reference(signals, calls, prompt_text(prompt))


def prompt_text(prompt: Any) -> str:
    """The user's words in a prompt: a string as it is, or the last user message's content."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        for message in reversed(prompt):
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content")
                return content if isinstance(content, str) else ""
    return ""


# ---------------------------------------------------------------------------------------------
# Constraint adherence
# ---------------------------------------------------------------------------------------------

_PROHIBITION = re.compile(
    r"\b(?:don't|do not|dont|never|must not|mustn't|should not|shouldn't|cannot|can't|avoid|without|"
    r"careful not to|not allowed to)\s+(?:\w+\s+)?(?:modify|modifying|change|changing|edit|editing|touch|"
    r"touching|delete|deleting|remove|removing|overwrite|overwriting|rewrite|rewriting|alter|altering)"
    r"\s+(?:the\s+|any\s+|anything\s+in\s+|files?\s+in\s+|my\s+|our\s+|existing\s+)*"
    r"(?P<target>[\w./*-]+)", re.IGNORECASE)
_LEAVE_ALONE = re.compile(
    r"\b(?:leave|keep)\s+(?:the\s+|my\s+|our\s+)?(?P<target>[\w./*-]+)\s+(?:alone|unchanged|as is|intact|untouched)\b",
    re.IGNORECASE)
_VAGUE_TARGETS = frozenset({
    "it", "them", "this", "that", "these", "those", "anything", "everything", "something", "other", "others",
    "else", "file", "files", "code", "things", "stuff", "existing", "behavior", "behaviour", "functionality",
    "api", "a", "an", "any", "all", "more", "too", "much",
})


def prohibited_targets(*texts: str) -> list[str]:
    """What the texts say must not be changed: ``"don't modify the tests"`` -> ``["tests"]``,
    ``"leave README.md alone"`` -> ``["readme.md"]``. Vague objects ("anything else") are left
    out. Lower-cased, in order of appearance, without repeats."""
    found: list[str] = []
    for text in texts:
        for rx in (_PROHIBITION, _LEAVE_ALONE):
            for match in rx.finditer(text or ""):
                target = match.group("target").strip("./*-").lower()
                if len(target) >= 3 and target not in _VAGUE_TARGETS and target not in found:
                    found.append(target)
    return found


def _touches(call: PlannedCall, target: str) -> bool:
    """Whether a change call changes something named like ``target`` (a path part or, for a
    shell command, a word of it)."""
    if call.path:
        path = call.path.lower()
        if "/" in target:
            return same_file(path, target) or f"/{target}/" in f"/{_norm_path(path)}/"
        parts = PurePosixPath(path).parts
        return target in parts or target in (PurePosixPath(p).stem for p in parts)
    command = call.input.get("command")
    if isinstance(command, str):
        return re.search(rf"(?<![\w-]){re.escape(target)}(?![\w-])", command.lower()) is not None
    return False


def _norm_path(path: str) -> str:
    path = path.strip()
    while path.startswith("./"):
        path = path[2:]
    return path.rstrip("/")


def same_file(a: str, b: str) -> bool:
    """Two paths name the same file: equal, or one is the other's absolute form (a suffix at a
    path boundary)."""
    a, b = _norm_path(a), _norm_path(b)
    if a == b:
        return True
    longer, shorter = (a, b) if len(a) > len(b) else (b, a)
    return not shorter.startswith("/") and longer.endswith("/" + shorter)


_SHELL_SEGMENTS = re.compile(r"&&|\|\||;|\||\n")
_DELETE = re.compile(r"^(?:sudo\s+)?(?:rm|rmdir|unlink|shred)\b|^git\s+(?:rm|clean)\b|\bfind\b.*\s-delete\b")
_COMMIT = re.compile(r"^git\s+(?:commit|push)\b")


def _command_segments(call: PlannedCall) -> list[str]:
    command = call.input.get("command") if call.name == "Bash" else None
    if not isinstance(command, str):
        return []
    return [s.strip() for s in _SHELL_SEGMENTS.split(command) if s.strip()]


def deletes(call: PlannedCall) -> bool:
    """A shell call that deletes files (rm, rmdir, unlink, git rm/clean, find -delete)."""
    return any(_DELETE.search(s) for s in _command_segments(call))


def commits(call: PlannedCall) -> bool:
    """A shell call that commits or pushes."""
    return any(_COMMIT.search(s) for s in _command_segments(call))


def preexisting_files(ref: Reference) -> list[str]:
    """Files the reference shows existed before the task: the first call that touched them
    read or edited them (a file it created with Write first did not exist)."""
    first: dict[str, str] = {}
    for call in ref.calls:
        if call.path and (call.name in READ_TOOLS or call.name in EDIT_TOOLS or call.name == "Write"):
            key = _norm_path(call.path)
            if not any(same_file(key, known) for known in first):
                first[key] = call.name
    return [path for path, name in first.items() if name != "Write"]


def constraint_checks(plan: Plan, ref: Reference) -> list[tuple[str, bool]]:
    """Every applicable check as ``(what, held)``, in plan order (see the module docstring)."""
    checks: list[tuple[str, bool]] = []
    existing = preexisting_files(ref)
    read: list[str] = []  # files the plan has read or written itself: it knows their content
    explored = changed_any = changed_since_check = False
    for call in plan.calls:
        if call.name in EDIT_TOOLS and call.path:
            checks.append((f"read {call.path} before editing it", any(same_file(call.path, p) for p in read)))
        elif call.name == "Write" and call.path and any(same_file(call.path, p) for p in existing):
            checks.append((f"read {call.path} before overwriting it", any(same_file(call.path, p) for p in read)))
        if deletes(call):
            checks.append(("look before deleting", explored))
        if commits(call) and changed_any:
            checks.append(("check the change before committing", not changed_since_check))
        if call.path and (call.name in READ_TOOLS or call.category == "change"):
            read.append(call.path)
        if call.category == "explore":
            explored = True
        if call.category == "change" and not commits(call):
            changed_any = changed_since_check = True
        elif call.category == "execute" and not commits(call):
            changed_since_check = False
    stated = [item.get("text", "") for item in ref.signals.get("constraints") or [] if isinstance(item, dict)]
    for target in prohibited_targets(ref.prompt, *stated):
        violated = any(c.category == "change" and _touches(c, target) for c in plan.calls)
        checks.append((f"leave {target} unchanged", not violated))
    return checks


def score_constraint_adherence(plan: Plan, ref: Reference) -> float:
    """Constraint adherence in [0, 1] (see the module docstring)."""
    checks = constraint_checks(plan, ref)
    raw = sum(held for _what, held in checks) / len(checks) if checks else 1.0
    return raw * plan.format_factor


# ---------------------------------------------------------------------------------------------
# Reasoning depth
# ---------------------------------------------------------------------------------------------


def reasoning_target(signals: dict[str, Any]) -> int:
    """How many reasoning steps the task calls for: the reference's reasoning chain (capped
    at what the workflow keeps), or, when Claude did not narrate, one step plus one per three
    tool calls (at most five)."""
    chain = signals.get("reasoning_chain")
    if isinstance(chain, list) and chain:
        return min(len(chain), MAX_REASONING_TARGET)
    complexity = signals.get("complexity") if isinstance(signals.get("complexity"), dict) else {}
    calls = complexity.get("tool_calls")
    calls = calls if isinstance(calls, int) else len(signals.get("tool_sequence") or [])
    return 1 + min(4, calls // 3)


def substantive_items(items: list[str]) -> list[str]:
    """Reasoning items that are not padding: at least three words, no repeats (case and
    spacing ignored)."""
    seen: set[str] = set()
    kept = []
    for item in items:
        key = " ".join(item.casefold().split())
        if len(key.split()) < MIN_SUBSTANTIVE_WORDS or key in seen:
            continue
        seen.add(key)
        kept.append(item)
    return kept


def score_reasoning_depth(plan: Plan, ref: Reference) -> float:
    """Reasoning depth in [0, 1] (see the module docstring)."""
    items = plan.workflow.reasoning
    good = len(substantive_items(items))
    if good == 0:
        return 0.0
    target = reasoning_target(ref.signals)
    fit = min(good, target) / max(good, target)
    return fit * (good / len(items)) * plan.format_factor


# ---------------------------------------------------------------------------------------------
# Tool efficiency
# ---------------------------------------------------------------------------------------------


def edit_distance(a: list[str], b: list[str]) -> int:
    """Levenshtein distance between two sequences (insert, delete, substitute: cost 1 each).

    Written here rather than taken from a library: it is a dozen lines over tool names, and
    the string libraries that provide it compare characters, not list items.
    """
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def sequence_similarity(a: list[str], b: list[str]) -> float:
    """``1 - edit_distance / longer length`` (1 for two empty sequences)."""
    longest = max(len(a), len(b))
    return 1.0 - edit_distance(a, b) / longest if longest else 1.0


def pointless_repeats(plan: Plan) -> int:
    """Calls identical (tool and arguments) to an earlier call with no change in between: a
    plan's calls all succeed, so the second one cannot learn anything new."""
    seen: set[str] = set()
    repeats = 0
    for call in plan.calls:
        if call.category == "change":
            seen.clear()  # after a change, reading or running the same thing again is a check
        if call.key in seen:
            repeats += 1
        seen.add(call.key)
    return repeats


def score_tool_efficiency(plan: Plan, ref: Reference) -> float:
    """Tool efficiency in [0, 1] (see the module docstring)."""
    generated = [c.name for c in plan.calls] + [UNREADABLE_CALL] * plan.unreadable_calls
    similarity = sequence_similarity(generated, ref.tool_sequence)
    useful = 1.0 - pointless_repeats(plan) / len(plan.calls) if plan.calls else 1.0
    return similarity * useful * plan.format_factor


# ---------------------------------------------------------------------------------------------
# Self-correction
# ---------------------------------------------------------------------------------------------


def _answer_step(plan: Plan) -> int:
    """Index of the response's step in the plan's trace (past the end when there is none)."""
    steps = plan.trace["steps"]
    if plan.workflow.response and steps and steps[-1].get("kind") == "text":
        return len(steps) - 1
    return len(steps)


def correction_checks(plan: Plan, ref: Reference) -> list[tuple[str, bool]]:
    """Every applicable check as ``(what, held)``: each stated mistake before the response is
    followed by a call not made before it; each redo counts as acted on; when the reference
    corrected itself and the plan changes files, a check runs after the first change."""
    steps = plan.trace["steps"]
    answer = _answer_step(plan)
    checks: list[tuple[str, bool]] = []
    for item in plan.signals.get("self_corrections") or []:
        step = int(item.get("step", 0))
        if item.get("kind") == "redo":
            checks.append((item.get("text", "redo"), True))
            continue
        if step >= answer:
            continue  # a mistake mentioned in the final answer is reported, not acted on
        before = {_step_key(s) for s in steps[:step] if s.get("kind") == "tool_use"}
        after = [_step_key(s) for s in steps[step + 1:] if s.get("kind") == "tool_use"]
        checks.append((item.get("text", "stated correction"), any(k not in before for k in after)))
    if ref.corrected_itself:
        first_change = next((i for i, c in enumerate(plan.calls) if c.category == "change"), None)
        if first_change is not None:
            changed = [c.path for c in plan.calls[: first_change + 1] if c.path and c.category == "change"]
            later = plan.calls[first_change + 1:]
            verified = any(c.category == "execute" or (c.category == "explore" and c.path and
                                                         any(same_file(c.path, p) for p in changed)) for c in later)
            checks.append(("check the change", verified))
    return checks


def _step_key(step: dict[str, Any]) -> str:
    return str(step.get("name")) + "\0" + json.dumps(step.get("input"), sort_keys=True, ensure_ascii=False)


def score_self_correction(plan: Plan, ref: Reference) -> float:
    """Self-correction in [0, 1] (see the module docstring)."""
    checks = correction_checks(plan, ref)
    if checks:
        raw = sum(held for _what, held in checks) / len(checks)
    else:
        raw = NO_EVIDENCE_AFTER_CORRECTED_REFERENCE if ref.corrected_itself else 1.0
    return raw * plan.format_factor


# ---------------------------------------------------------------------------------------------
# Exploration fit
# ---------------------------------------------------------------------------------------------


def score_exploration_fit(plan: Plan, ref: Reference) -> float:
    """Exploration fit in [0, 1] (see the module docstring)."""
    mine = plan.signals["exploration_depth"]
    level_fit = 1.0 - abs(DEPTHS.index(mine) - DEPTHS.index(ref.depth)) / (len(DEPTHS) - 1)
    own = plan.signals["complexity"]["explore_calls"]
    theirs = ref.explore_calls
    count_fit = min(own, theirs) / max(own, theirs) if max(own, theirs) else 1.0
    return (0.5 * level_fit + 0.5 * count_fit) * plan.format_factor


# ---------------------------------------------------------------------------------------------
# Putting it together
# ---------------------------------------------------------------------------------------------

SCORERS = {
    "constraint_adherence": score_constraint_adherence,
    "reasoning_depth": score_reasoning_depth,
    "tool_efficiency": score_tool_efficiency,
    "self_correction": score_self_correction,
    "exploration_fit": score_exploration_fit,
}


def score_components(text: Any, ref: Reference) -> dict[str, float]:
    """All five components of one generation."""
    plan = parse_plan(text)
    return {name: SCORERS[name](plan, ref) for name in COMPONENTS}


def total_reward(components: dict[str, float], weights: RewardWeights | None = None) -> float:
    """The weighted sum of the components (what GRPO maximises)."""
    weights = weights or RewardWeights()
    return sum(w * components[name] for name, w in weights.as_dict().items())


def completion_text(completion: Any) -> Any:
    """The text of a TRL completion: a string as it is; for a conversational completion, its
    assistant messages as the model wrote them (content, then any parsed tool calls)."""
    if isinstance(completion, list):
        parts = [conv.render_assistant_text(m) for m in completion if isinstance(m, dict) and m.get("role") == "assistant"]
        return "\n".join(parts)
    return completion


def _column(kwargs: dict[str, Any], name: str, n: int, required: bool) -> list[Any]:
    values = kwargs.get(name)
    if values is None:
        if required:
            raise ValueError(f"the RL prompt set has no {name!r} column: rebuild the dataset with `ccrl build-dataset`")
        return [None] * n
    values = list(values)
    if len(values) != n:
        raise ValueError(f"column {name!r} has {len(values)} values for {n} completions")
    return values


@lru_cache(maxsize=512)
def _reference_cached(signals: str, completion: str, prompt: str) -> Reference:
    return make_reference(signals, completion, prompt)


def references(n: int, prompts: Any, kwargs: dict[str, Any]) -> list[Reference]:
    """The reference for each of ``n`` completions, from TRL's batch columns."""
    signals = _column(kwargs, "reference_signals", n, required=True)
    completions = _column(kwargs, "reference_completion", n, required=False)
    prompt_list = _column({"prompts": prompts}, "prompts", n, required=False)
    out = []
    for s, c, p in zip(signals, completions, prompt_list):
        text = prompt_text(p)
        if isinstance(s, str) and (c is None or isinstance(c, str)):
            out.append(_reference_cached(s, c or "", text))
        else:
            out.append(make_reference(s, c, text))
    return out


def _reward_func(name: str):  # noqa: ANN202 - returns a TRL reward function
    scorer = SCORERS[name]

    def reward(prompts: Any = None, completions: Any = None, completion_ids: Any = None, **kwargs: Any) -> list[float]:
        completions = list(completions or [])
        refs = references(len(completions), prompts, kwargs)
        return [float(scorer(parse_plan(completion_text(c)), ref)) for c, ref in zip(completions, refs)]

    reward.__name__ = reward.__qualname__ = name
    reward.__doc__ = f"TRL reward function: the {name.replace('_', ' ')} component per completion, in [0, 1]."
    return reward


constraint_adherence = _reward_func("constraint_adherence")
reasoning_depth = _reward_func("reasoning_depth")
tool_efficiency = _reward_func("tool_efficiency")
self_correction = _reward_func("self_correction")
exploration_fit = _reward_func("exploration_fit")

REWARD_FUNCS = [constraint_adherence, reasoning_depth, tool_efficiency, self_correction, exploration_fit]
"""The TRL ``reward_funcs``, in ``COMPONENTS`` order."""


def score_rows(texts: list[Any], refs: list[Reference], weights: RewardWeights | None = None) -> dict[str, Any]:
    """Mean total and per-component reward of generations against their references (the
    held-out evaluation)."""
    if len(texts) != len(refs):
        raise ValueError(f"{len(texts)} generations for {len(refs)} references")
    per = [score_components(t, r) for t, r in zip(texts, refs)]
    n = len(per)
    components = {name: (sum(p[name] for p in per) / n if n else 0.0) for name in COMPONENTS}
    totals = [total_reward(p, weights) for p in per]
    return {"reward": sum(totals) / n if n else 0.0, "components": components, "n": n}


def fixed_plan(rows: list[dict[str, Any]]) -> str | None:
    """The training split's most common completion: among the RL prompt rows' reference
    completions, one whose tool sequence is the most common (the most common text among those;
    ties go to the earliest row). A constant policy that always wrote it is the baseline an RL
    model must beat, so that a reward won by one fixed output cannot pass for learning.
    ``None`` when no row has a completion."""
    completions = [(r.get("reference_completion"), r.get("reference_tool_sequence")) for r in rows]
    completions = [(text, tuple(seq) if seq is not None else tuple(parse_plan(text).workflow.tool_sequence))
                   for text, seq in completions if isinstance(text, str) and text]
    if not completions:
        return None
    sequence = Counter(seq for _text, seq in completions).most_common(1)[0][0]
    return Counter(text for text, seq in completions if seq == sequence).most_common(1)[0][0]
