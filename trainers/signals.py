"""Behaviour signals: how Claude worked on one trace, as plain JSON-able data.

Every extractor is a pure function of a trace dict in the ``records.trace_json`` form (only
``steps`` is needed; ``tool_calls``/``reasoning``/``response`` are a fallback for traces that
have no steps). Signals come from Claude's own words (``thinking`` and ``text`` steps) and its
actions (``tool_use`` names and inputs, and the ``is_error`` flag of results). They NEVER read
tool output text or file contents: a file that says "Actually, let me…" is not Claude
correcting itself. The user's prompt is not Claude's words either and is never read.

The agent stores ``extract_signals(trace)`` in ``Trace.signals``; the dataset builder, the RL
reward and the evaluation import this module (it has no database imports) so that references
and generations are measured by the same code. Shape (``SIGNALS_VERSION`` 1)::

    {
      "version": 1,
      "tool_sequence": ["Read", "Grep", "Edit"],
      "tool_transitions": {"Read -> Grep": 1, "Grep -> Edit": 1},
      "reasoning_chain": [{"step": 0, "text": "First, find where the config is loaded"}, …],
      "constraints":      [{"step": 2, "text": "I must read the file before editing it"}, …],
      "pruning":          [{"step": 5, "text": "No need to touch the tests"}, …],
      "self_corrections": [{"step": 7, "text": "Actually, let me check the caller", "kind": "stated"},
                           {"step": 9, "text": "retried Edit with a changed input after it failed",
                            "kind": "retry"}, …],       # kind: stated | retry | redo
      "exploration_depth": "moderate",                 # minimal | moderate | thorough
      "complexity": {"files_touched": 3, "files_read": 2, "files_changed": 1, "steps": 4,
                     "tool_calls": 6, "distinct_tools": 3, "explore_calls": 4,
                     "change_calls": 1, "failed_calls": 0, "parallel_batches": 1}
    }

``step`` is the index in ``trace["steps"]`` the item came from. Item texts are single-line
and at most ``MAX_ITEM_CHARS`` long; each list keeps at most ``MAX_ITEMS`` items.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

SIGNALS_VERSION = 1
MAX_ITEM_CHARS = 200
MAX_ITEMS = 64
DEPTHS = ("minimal", "moderate", "thorough")

# ---------------------------------------------------------------------------------------------
# Normalising a trace into steps and turns
# ---------------------------------------------------------------------------------------------


def trace_steps(trace: dict[str, Any]) -> list[dict[str, Any]]:
    """The trace's steps, each a dict; rebuilt from reasoning/tool_calls/response if absent.

    Malformed entries (not dicts) become empty dicts so that step indices stay aligned with
    ``trace["steps"]``.
    """
    steps = trace.get("steps")
    if isinstance(steps, list) and steps:
        return [s if isinstance(s, dict) else {} for s in steps]
    rebuilt: list[dict[str, Any]] = []
    for text in trace.get("reasoning") or []:
        if isinstance(text, str):
            rebuilt.append({"kind": "text", "text": text})
    for call in trace.get("tool_calls") or []:
        if not isinstance(call, dict):
            continue
        rebuilt.append({"kind": "tool_use", "tool_use_id": call.get("id"), "name": call.get("name"),
                        "input": call.get("input")})
        rebuilt.append({"kind": "tool_result", "tool_use_id": call.get("id"),
                        "output": call.get("output"), "is_error": bool(call.get("is_error"))})
    response = trace.get("response")
    if isinstance(response, str) and response.strip():
        rebuilt.append({"kind": "text", "text": response})
    return rebuilt


@dataclass
class Turn:
    """One assistant turn: what Claude said and called before the next tool results came back.

    ``texts`` and ``calls`` hold indices into the step list; ``results`` maps a call's
    ``tool_use_id`` to the index of its ``tool_result`` step.
    """

    texts: list[int] = field(default_factory=list)
    calls: list[int] = field(default_factory=list)
    results: dict[str, int] = field(default_factory=dict)


def split_turns(steps: list[dict[str, Any]]) -> list[Turn]:
    """Group steps into assistant turns.

    A new turn starts when Claude speaks or calls a tool after tool results came back. Calls
    in one turn are parallel calls (Claude Code runs them together). Results are attached to
    the turn that made the calls.
    """
    turns: list[Turn] = []
    current: Turn | None = None
    after_results = False
    for index, step in enumerate(steps):
        kind = step.get("kind")
        if kind == "tool_result":
            if current is not None:
                current.results.setdefault(str(step.get("tool_use_id")), index)
            after_results = True
            continue
        if kind not in ("thinking", "text", "tool_use"):
            continue
        if current is None or after_results:
            current = Turn()
            turns.append(current)
            after_results = False
        if kind == "tool_use":
            current.calls.append(index)
        else:
            current.texts.append(index)
    return turns


def answer_steps(steps: list[dict[str, Any]]) -> set[int]:
    """Indices of the ``text`` steps that form the final answer (the last turn without calls)."""
    turns = split_turns(steps)
    if not turns or turns[-1].calls:
        return set()
    return {i for i in turns[-1].texts if steps[i].get("kind") == "text"}


def step_text(step: dict[str, Any]) -> str:
    """Claude's words in a thinking or text step ('' for anything else)."""
    if step.get("kind") not in ("thinking", "text"):
        return ""
    text = step.get("text")
    if not isinstance(text, str):
        text = step.get("thinking") if isinstance(step.get("thinking"), str) else ""
    return text


def call_input(step: dict[str, Any]) -> dict[str, Any]:
    """A tool_use step's input if it is a JSON object, else an empty dict."""
    value = step.get("input")
    return value if isinstance(value, dict) else {}


# ---------------------------------------------------------------------------------------------
# Sentences
# ---------------------------------------------------------------------------------------------

_FENCE = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)
_NUMBERED = re.compile(r"^\s*(?:\d{1,2}[.)]|step\s+\d+\s*[:.)-])\s+", re.IGNORECASE)
_BULLET = re.compile(r"^\s*[-*•]\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")
_MARKUP = re.compile(r"\*\*")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Sentence:
    """One sentence of Claude's words, with where it came from."""

    step: int
    text: str
    numbered: bool = False


def shorten(text: str, limit: int = MAX_ITEM_CHARS) -> str:
    """One line, markdown emphasis removed, at most ``limit`` characters (ellipsis if cut)."""
    text = _SPACE.sub(" ", _MARKUP.sub("", text)).strip().rstrip(":").strip()
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def sentences(text: str, step: int) -> list[Sentence]:
    """Split Claude's words into sentences; code blocks, headings and quotes are left out.

    Quoted lines (``>``) and fenced code are usually someone else's text (a file, an error),
    not Claude's reasoning, so they never yield signals.
    """
    out: list[Sentence] = []
    text = _FENCE.sub("\n", text)
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith(("#", ">", "|")):
            continue
        numbered = bool(_NUMBERED.match(line))
        if numbered:
            line = _NUMBERED.sub("", line, count=1)
        else:
            line = _BULLET.sub("", line, count=1)
        for i, part in enumerate(_SENTENCE_END.split(line)):
            part = shorten(part)
            if part:
                out.append(Sentence(step, part, numbered and i == 0))
    return out


@dataclass
class TraceView:
    """What every extractor needs from one trace, computed once: its steps, turns, answer
    steps, failed call ids and Claude's sentences (those of the final answer flagged)."""

    trace: dict[str, Any]
    steps: list[dict[str, Any]]
    turns: list[Turn]
    answer: set[int]
    failed: set[str]
    said: list[Sentence]  # every sentence of thinking and text steps, in order

    @property
    def before_answer(self) -> list[Sentence]:
        return [s for s in self.said if s.step not in self.answer]


def view(trace: dict[str, Any] | TraceView) -> TraceView:
    """The ``TraceView`` of a trace (a view passes through unchanged)."""
    if isinstance(trace, TraceView):
        return trace
    steps = trace_steps(trace)
    turns = split_turns(steps)
    answer = ({i for i in turns[-1].texts if steps[i].get("kind") == "text"}
              if turns and not turns[-1].calls else set())
    said: list[Sentence] = []
    for index, step in enumerate(steps):
        text = step_text(step)
        if text.strip():
            said.extend(sentences(text, index))
    return TraceView(trace, steps, turns, answer, _failed_ids(trace, steps), said)


def _items(found: list[Sentence], kind: str | None = None) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    seen: set[tuple[int, str]] = set()
    for s in found:
        key = (s.step, s.text.lower())
        if key in seen:
            continue
        seen.add(key)
        item: dict[str, Any] = {"step": s.step, "text": s.text}
        if kind:
            item["kind"] = kind
        items.append(item)
        if len(items) >= MAX_ITEMS:
            break
    return items


# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------

EXPLORE_TOOLS = frozenset({"Read", "Grep", "Glob", "LS", "NotebookRead", "WebFetch", "WebSearch",
                           "ListMcpResourcesTool", "ReadMcpResourceTool", "BashOutput"})
CHANGE_TOOLS = frozenset({"Edit", "MultiEdit", "Write", "NotebookEdit"})
PLAN_TOOLS = frozenset({"TodoWrite", "TodoRead", "ExitPlanMode", "EnterPlanMode", "TaskCreate",
                        "TaskUpdate", "TaskList", "TaskGet"})
DELEGATE_TOOLS = frozenset({"Task", "Agent"})

_BASH_EXPLORE = frozenset({"ls", "cat", "head", "tail", "find", "grep", "rg", "ag", "tree", "pwd",
                           "wc", "file", "stat", "du", "which", "less", "more", "type", "echo",
                           "diff", "jq", "sort", "uniq", "awk", "readlink", "realpath"})
_BASH_CHANGE = frozenset({"rm", "mv", "cp", "mkdir", "touch", "tee", "chmod", "chown", "ln",
                          "rmdir", "patch", "truncate"})
_GIT_EXPLORE = frozenset({"status", "log", "diff", "show", "branch", "blame", "ls-files", "grep",
                          "rev-parse", "remote", "describe", "shortlog"})
_GIT_CHANGE = frozenset({"add", "commit", "push", "checkout", "switch", "reset", "rm", "mv",
                         "merge", "rebase", "apply", "stash", "cherry-pick", "revert", "restore",
                         "tag", "init", "clone", "pull"})
_MCP_EXPLORE = re.compile(r"(^|_)(get|list|search|read|fetch|query|find|describe|show|view)", re.I)
_MCP_CHANGE = re.compile(r"(^|_)(create|update|delete|write|set|add|remove|edit|modify|post|put)", re.I)
_SHELL_SPLIT = re.compile(r"&&|\|\||;|\|")


def _bash_category(command: str) -> str:
    categories = []
    if re.search(r"(?<![0-9&])>{1,2}\s*(?!&|/dev/null)\S", command):
        return "change"  # output redirected into a file
    for segment in _SHELL_SPLIT.split(command):
        words = segment.strip().split()
        while words and ("=" in words[0] or words[0] in ("sudo", "env", "time", "cd")):
            words = words[2:] if words[0] == "cd" else words[1:]
        if not words:
            continue
        head = PurePath(words[0]).name
        if head == "git" and len(words) > 1:
            sub = next((w for w in words[1:] if not w.startswith("-")), "")
            categories.append("explore" if sub in _GIT_EXPLORE else
                              "change" if sub in _GIT_CHANGE else "execute")
        elif head == "sed" and any(w.startswith("-i") for w in words[1:]):
            categories.append("change")
        elif head in _BASH_EXPLORE:
            categories.append("explore")
        elif head in _BASH_CHANGE:
            categories.append("change")
        else:
            categories.append("execute")
    if "change" in categories:
        return "change"
    if "execute" in categories:
        return "execute"
    return "explore" if categories else "execute"


def tool_category(name: str, tool_input: dict[str, Any] | None = None) -> str:
    """What a call does: ``explore`` (reads, searches), ``change`` (edits, writes, mutating
    shell commands), ``execute`` (builds, tests, other commands), ``plan`` (todo lists),
    ``delegate`` (subagents) or ``other``. Decided from the name and input only."""
    tool_input = tool_input if isinstance(tool_input, dict) else {}
    if name in EXPLORE_TOOLS:
        return "explore"
    if name in CHANGE_TOOLS:
        return "change"
    if name in PLAN_TOOLS:
        return "plan"
    if name in DELEGATE_TOOLS:
        return "delegate"
    if name == "Bash":
        command = tool_input.get("command")
        return _bash_category(command) if isinstance(command, str) else "execute"
    if name.startswith("mcp__"):
        action = name.rsplit("__", 1)[-1]
        if _MCP_CHANGE.search(action):
            return "change"
        if _MCP_EXPLORE.search(action):
            return "explore"
    return "other"


def _file_path(tool_input: dict[str, Any]) -> str | None:
    for key in ("file_path", "notebook_path"):
        value = tool_input.get(key)
        if isinstance(value, str) and value:
            return value
    return None


# ---------------------------------------------------------------------------------------------
# Extractors
# ---------------------------------------------------------------------------------------------


def tool_sequence(trace: dict[str, Any] | TraceView) -> list[str]:
    """Tool names in call order (parallel calls in the order Claude wrote them)."""
    names = [str(s.get("name") or "") for s in view(trace).steps if s.get("kind") == "tool_use"]
    return [n for n in names if n]


def tool_transitions(trace: dict[str, Any] | TraceView) -> dict[str, int]:
    """How often each tool followed another: ``{"Read -> Edit": 2, …}`` (sorted keys)."""
    seq = tool_sequence(trace)
    counts = Counter(f"{a} -> {b}" for a, b in zip(seq, seq[1:]))
    return dict(sorted(counts.items()))


_PLAN_START = re.compile(
    r"^(?:(?:first(?:ly)?|second(?:ly)?|third(?:ly)?)(?:,|:| i\b| let\b| we\b)|"
    r"(?:then|next|after (?:that|this)|afterwards|finally|lastly|now)\b(?!,? (?:i have|i've|i see|"
    r"i know|i understand|i can see|it's|it is|that's|that is|this is|everything|all \w+ (?:pass|are)))|"
    r"(?:let me|let's|let us|i'll|i will|i'm going to|i am going to|i need to|i should|i want to|"
    r"i must|i have to|we need to|we should|my plan|the plan|plan|to do this|to fix this|to start|"
    r"start by|begin by|step \d+)\b)",
    re.IGNORECASE,
)


def reasoning_chain(trace: dict[str, Any] | TraceView) -> list[dict[str, Any]]:
    """The plan's steps in order: sentences that start with an ordinal or an intention
    ("First…", "Then…", "Next…", "Let me…", "I'll…") and numbered list items, from thinking
    and text steps before the final answer."""
    found = [s for s in view(trace).before_answer if s.numbered or _PLAN_START.match(s.text)]
    return _items(found)


_CONSTRAINT = [
    re.compile(r"\b(?:must|have to|has to|need to|needs to|should|required to|supposed to)\b"
               r"[^.]*\b(?:before|first|after|until|unless|only)\b", re.I),
    re.compile(r"\b(?:don't|do not|never|must not|mustn't|should not|shouldn't|cannot|can't|"
               r"avoid|not allowed to|careful not to)\s+(?:\w+\s+)?(?:modify|modifying|change|"
               r"changing|edit|editing|touch|touching|delete|deleting|remove|removing|break|"
               r"breaking|overwrite|overwriting|commit|committing|push|pushing|ignore|ignoring|"
               r"use|using|run|running|add|adding|create|creating|rewrite|rewriting)\b", re.I),
    re.compile(r"\b(?:make sure|ensure|be careful|without (?:breaking|changing|modifying|"
               r"touching|affecting|removing))\b", re.I),
    re.compile(r"\bbefore (?:i |we )?(?:edit|modif|chang|delet|remov|writ|commit|push|touch|"
               r"implement|mak|updat|overwrit|refactor)\w*", re.I),
    re.compile(r"\b(?:read-only|leave \S+(?: \S+)? (?:alone|unchanged|as is)|keep \S+(?: \S+)? "
               r"(?:unchanged|intact))\b", re.I),
]
_CONSTRAINT_RX = re.compile("|".join(f"(?:{rx.pattern})" for rx in _CONSTRAINT), re.IGNORECASE)


def constraints(trace: dict[str, Any] | TraceView) -> list[dict[str, Any]]:
    """Rules Claude states for itself: orderings ("must check X before Y"), prohibitions
    ("don't modify…"), safeguards ("make sure…", "without breaking…")."""
    return _items([s for s in view(trace).said if _CONSTRAINT_RX.search(s.text)])


_PRUNING = [
    re.compile(r"^skip(?:ping)?\b|\b(?:i'll|i will|let me|let's|we can|i can|i'm|i am|we'll|i'd|"
               r"going to|will|can)\s+(?:just\s+|safely\s+)?skip\b|"
               r"\bskip(?:ping|ped)?\b[^.]*\b(?:because|since|as it|as they|as this)\b", re.I),
    re.compile(r"\b(?:no need|not needed|needn't|(?:don't|do not|doesn't|does not|won't|will not)"
               r" (?:really )?need|isn't needed|is not needed|unnecessary|not necessary|"
               r"isn't necessary|not required|isn't required)\b", re.I),
    re.compile(r"\b(?:not relevant|irrelevant|out of scope|beyond the scope|scope creep|"
               r"not worth)\b", re.I),
    re.compile(r"\b(?:(?:have|had|got) enough (?:context|information|info|detail)|"
               r"the full picture|all the information (?:i|we) need|(?:that's|that is|this is) "
               r"(?:enough|sufficient))\b", re.I),
    re.compile(r"\b(?:ignore|ignoring)\b[^.]*\b(?:because|since|as)\b", re.I),
]
_PRUNING_RX = re.compile("|".join(f"(?:{rx.pattern})" for rx in _PRUNING), re.IGNORECASE)


def pruning(trace: dict[str, Any] | TraceView) -> list[dict[str, Any]]:
    """Decisions not to do something or to stop exploring: "skipping Z because…",
    "not needed", "out of scope", "I have enough context"."""
    return _items([s for s in view(trace).said if _PRUNING_RX.search(s.text)])


_STATED_CORRECTION = [
    re.compile(r"^(?:actually|wait|hmm|oops|oh|on second thought|correction)\b", re.I),
    re.compile(r"\b(?:oops|my mistake|my bad|i was wrong|i'm wrong|i am wrong|i was mistaken|"
               r"i apologi[sz]e|i made an? (?:mistake|error|typo)|i misread|i misunderstood|"
               r"i overlooked|i should have|that was wrong|that's wrong|that was incorrect)\b", re.I),
    re.compile(r"\b(?:let me|i'll|i will|i need to) (?:try (?:that |this |it )?again|"
               r"try (?:a )?different (?:approach|way|method)|try another (?:approach|way)|"
               r"re-?(?:read|check|do|try|run|examine|verify) |fix (?:that|this|it|my)|"
               r"correct (?:that|this|it|my|the))", re.I),
    re.compile(r"\b(?:(?:that|this|it) (?:didn't|did not|doesn't|does not) work|"
               r"(?:that|this|it) failed|ah,? i see|i see the (?:issue|problem|mistake)|"
               r"wasn't (?:created|applied|saved) (?:properly|correctly))\b", re.I),
]
_STATED_CORRECTION_RX = re.compile("|".join(f"(?:{rx.pattern})" for rx in _STATED_CORRECTION), re.IGNORECASE)

_EDIT_LINE_MIN = 4


def _introduced_lines(name: str, tool_input: dict[str, Any]) -> tuple[set[str], set[str]]:
    """(lines a change introduced, lines it removed) for Edit/MultiEdit/Write inputs."""
    def lines(value: Any) -> set[str]:
        if not isinstance(value, str):
            return set()
        return {ln.strip() for ln in value.splitlines()
                if len(ln.strip()) >= _EDIT_LINE_MIN and re.search(r"\w", ln)}

    if name == "Write":
        return lines(tool_input.get("content")), set()
    edits = tool_input.get("edits") if name == "MultiEdit" else [tool_input]
    added: set[str] = set()
    removed: set[str] = set()
    for edit in edits if isinstance(edits, list) else []:
        if not isinstance(edit, dict):
            continue
        old, new = lines(edit.get("old_string")), lines(edit.get("new_string"))
        added |= new - old
        removed |= old - new
    return added, removed


def _failed_ids(trace: dict[str, Any], steps: list[dict[str, Any]]) -> set[str]:
    failed = {str(s.get("tool_use_id")) for s in steps
              if s.get("kind") == "tool_result" and s.get("is_error")}
    for call in trace.get("tool_calls") or []:
        if isinstance(call, dict) and call.get("is_error"):
            failed.add(str(call.get("id")))
    return failed


def self_corrections(trace: dict[str, Any] | TraceView) -> list[dict[str, Any]]:
    """Where Claude corrects itself, in step order:

    - ``stated``: its words say so ("Actually, let me…", "I apologize…", "let me try again");
    - ``retry``: a failed tool call followed, in a later turn (after the failure came back) and
      within the next three calls, by a call of the same tool with a different input (an
      identical retry is not a correction, and parallel calls are not retries of each other);
    - ``redo``: after a check (a command run or a failed call) an edit changes lines that an
      earlier edit or write of the same file in this trace introduced, or the file is written
      whole again.
    """
    v = view(trace)
    steps, failed = v.steps, v.failed
    items = _items([s for s in v.said if _STATED_CORRECTION_RX.search(s.text)], "stated")
    turn_of = {i: n for n, turn in enumerate(v.turns) for i in turn.calls}
    calls = [(i, s) for i, s in enumerate(steps) if s.get("kind") == "tool_use"]
    actions: list[dict[str, Any]] = []

    for pos, (index, step) in enumerate(calls):
        if str(step.get("tool_use_id")) not in failed:
            continue
        name = step.get("name")
        for later_index, later in calls[pos + 1: pos + 4]:
            if turn_of.get(later_index) == turn_of.get(index) or later.get("name") != name:
                continue
            if later.get("input") != step.get("input"):
                actions.append({"step": later_index, "kind": "retry",
                                "text": f"retried {name} with a changed input after it failed"})
            break

    introduced: dict[str, set[str]] = {}  # file -> lines this trace's own changes put there
    written: set[str] = set()
    checked_since: dict[str, bool] = {}  # file -> a check happened after its last change
    for index, step in calls:
        name = str(step.get("name") or "")
        tool_input = call_input(step)
        did_fail = str(step.get("tool_use_id")) in failed
        if did_fail or tool_category(name, tool_input) == "execute":
            checked_since = dict.fromkeys(checked_since, True)
        if name not in ("Edit", "MultiEdit", "Write"):
            continue
        path = _file_path(tool_input)
        if not path:
            continue
        added, removed = _introduced_lines(name, tool_input)
        label = PurePath(path).name
        if checked_since.get(path):
            if name == "Write" and path in written:
                actions.append({"step": index, "kind": "redo", "text": f"rewrote {label} after checking it"})
            elif removed & introduced.get(path, set()):
                actions.append({"step": index, "kind": "redo",
                                "text": f"redid its own earlier change to {label} after checking it"})
        if did_fail:
            continue
        introduced.setdefault(path, set()).update(added)
        checked_since[path] = False
        if name == "Write":
            written.add(path)

    merged = sorted(items + actions, key=lambda item: item["step"])
    return merged[:MAX_ITEMS]


def _tool_counts(trace: dict[str, Any] | TraceView) -> dict[str, Any]:
    v = view(trace)
    steps, failed_ids, turns = v.steps, v.failed, v.turns
    explore = change = failed = 0
    files_read: set[str] = set()
    files_changed: set[str] = set()
    names: set[str] = set()
    n_calls = 0
    for step in steps:
        if step.get("kind") != "tool_use":
            continue
        n_calls += 1
        name = str(step.get("name") or "")
        tool_input = call_input(step)
        names.add(name)
        category = tool_category(name, tool_input)
        explore += category == "explore"
        change += category == "change"
        failed += str(step.get("tool_use_id")) in failed_ids
        path = _file_path(tool_input)
        if path and category == "explore":
            files_read.add(path)
        elif path and category == "change":
            files_changed.add(path)
    return {
        "files_touched": len(files_read | files_changed),
        "files_read": len(files_read),
        "files_changed": len(files_changed),
        "steps": len(turns),
        "tool_calls": n_calls,
        "distinct_tools": len(names - {""}),
        "explore_calls": explore,
        "change_calls": change,
        "failed_calls": failed,
        "parallel_batches": sum(1 for t in turns if len(t.calls) > 1),
    }


def complexity(trace: dict[str, Any] | TraceView) -> dict[str, int]:
    """Size of the task: files touched (read or changed), assistant turns (``steps``), tool
    calls, distinct tools, exploring vs changing calls, failed calls, parallel batches."""
    return _tool_counts(trace)


def depth_from_counts(explore_calls: int, change_calls: int) -> str:
    """Exploration depth from the number of exploring and changing calls.

    Without changes: minimal ≤ 1 exploring call, moderate 2–5, thorough ≥ 6. With changes:
    minimal when Claude explored less than it changed, thorough when it explored at least
    twice as much plus two (one edit after four reads), moderate in between.
    """
    if change_calls == 0:
        if explore_calls <= 1:
            return "minimal"
        return "moderate" if explore_calls <= 5 else "thorough"
    if explore_calls < change_calls:
        return "minimal"
    if explore_calls >= 2 * change_calls + 2:
        return "thorough"
    return "moderate"


def exploration_depth(trace: dict[str, Any] | TraceView) -> str:
    """``minimal`` / ``moderate`` / ``thorough``: reads and searches relative to changes."""
    counts = _tool_counts(trace)
    return depth_from_counts(counts["explore_calls"], counts["change_calls"])


def extract_signals(trace: dict[str, Any] | TraceView) -> dict[str, Any]:
    """All signals of one trace, the JSON-able dict stored in ``Trace.signals``.

    Never raises on odd input: missing fields, non-dict steps or non-object tool inputs are
    treated as absent.
    """
    v = view(trace)
    counts = _tool_counts(v)
    return {
        "version": SIGNALS_VERSION,
        "tool_sequence": tool_sequence(v),
        "tool_transitions": tool_transitions(v),
        "reasoning_chain": reasoning_chain(v),
        "constraints": constraints(v),
        "pruning": pruning(v),
        "self_corrections": self_corrections(v),
        "exploration_depth": depth_from_counts(counts["explore_calls"], counts["change_calls"]),
        "complexity": counts,
    }
