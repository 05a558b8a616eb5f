"""The numbers a dataset version is described by, and its card (README.md in the version folder).

``BuildStats`` is filled while the builder streams traces (counters only: memory does not grow
with the number of traces beyond one entry per session); ``stats.as_dict()`` is stored in
``DatasetVersion.stats`` and ``render_card`` writes the card from it.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ccrl.agent.datasets.dataset_filters import FILTERS

SPLITS = ("train", "eval")
SIGNAL_LISTS = ("reasoning_chain", "constraints", "pruning", "self_corrections")
COMPLEXITY_KEYS = ("files_touched", "steps", "tool_calls", "distinct_tools", "failed_calls")


@dataclass
class BuildStats:
    """Counts gathered during one build."""

    traces_seen: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)  # filter name -> traces
    bad_input: Counter = field(default_factory=Counter)  # reason -> traces
    bad_examples: dict[str, list[int]] = field(default_factory=dict)  # reason -> a few trace ids
    subagent_traces: int = 0
    tools: Counter = field(default_factory=Counter)
    transitions: Counter = field(default_factory=Counter)
    depth: Counter = field(default_factory=Counter)
    signal_items: Counter = field(default_factory=Counter)
    signal_traces: Counter = field(default_factory=Counter)
    correction_kinds: Counter = field(default_factory=Counter)
    complexity_sum: Counter = field(default_factory=Counter)
    complexity_max: Counter = field(default_factory=Counter)
    tokens_sum: int = 0
    tokens_max: int = 0
    # per split, filled when rows are assigned
    split_traces: Counter = field(default_factory=Counter)
    split_sessions: Counter = field(default_factory=Counter)
    split_decisions: Counter = field(default_factory=Counter)
    split_rows: Counter = field(default_factory=Counter)  # "train/trajectory" -> rows
    rl_prompts: Counter = field(default_factory=Counter)
    # "train/trajectory" -> decisions, decisions a window trains, windows (SFT examples), estimated
    window_decisions: Counter = field(default_factory=Counter)
    window_trained: Counter = field(default_factory=Counter)
    window_examples: Counter = field(default_factory=Counter)

    def windows(self, key: str, decisions: int, trained: int, examples: int) -> None:
        """Count one row's decision windows under ``split/format``."""
        self.window_decisions[key] += decisions
        self.window_trained[key] += trained
        self.window_examples[key] += examples

    def _windowing(self, split: str) -> dict[str, Any]:
        keys = [k for k in self.window_decisions if k.startswith(split + "/")]
        decisions = sum(self.window_decisions[k] for k in keys)
        trained = sum(self.window_trained[k] for k in keys)
        return {
            "decisions": decisions,
            "decisions_trained": trained,
            "share_trained": round(trained / decisions, 4) if decisions else None,
            "examples": sum(self.window_examples[k] for k in keys),
            "by_format": {k.split("/", 1)[1]: {"decisions": self.window_decisions[k],
                                                "decisions_trained": self.window_trained[k],
                                                "examples": self.window_examples[k]} for k in sorted(keys)},
        }

    def drop(self, name: str) -> None:
        self.dropped[name] += 1

    def bad(self, reason: str, trace_id: int | None) -> None:
        self.bad_input[reason] += 1
        examples = self.bad_examples.setdefault(reason, [])
        if trace_id is not None and len(examples) < 5:
            examples.append(trace_id)

    def keep(self, trace: dict[str, Any], signals: dict[str, Any], tokens: int) -> None:
        """Count a kept trace's tools and signals."""
        self.kept += 1
        if trace.get("parent_id") is not None or trace.get("agent_id"):
            self.subagent_traces += 1
        self.tools.update(signals.get("tool_sequence") or [])
        self.transitions.update(signals.get("tool_transitions") or {})
        self.depth[signals.get("exploration_depth") or "minimal"] += 1
        for name in SIGNAL_LISTS:
            items = signals.get(name) or []
            self.signal_items[name] += len(items)
            self.signal_traces[name] += bool(items)
        for item in signals.get("self_corrections") or []:
            self.correction_kinds[item.get("kind", "stated")] += 1
        complexity = signals.get("complexity") or {}
        for key in COMPLEXITY_KEYS:
            value = int(complexity.get(key) or 0)
            self.complexity_sum[key] += value
            self.complexity_max[key] = max(self.complexity_max[key], value)
        self.tokens_sum += tokens
        self.tokens_max = max(self.tokens_max, tokens)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (stored in ``DatasetVersion.stats``)."""
        kept = max(self.kept, 1)
        return {
            "traces_seen": self.traces_seen,
            "traces_kept": self.kept,
            "subagent_traces_kept": self.subagent_traces,
            "dropped": {name: self.dropped.get(name, 0) for name in FILTERS},
            "bad_input": dict(sorted(self.bad_input.items())),
            "bad_input_examples": {k: v for k, v in sorted(self.bad_examples.items())},
            "splits": {
                split: {
                    "traces": self.split_traces[split],
                    "sessions": self.split_sessions[split],
                    "next_action_decisions": self.split_decisions[split],
                    "rows": {k.split("/", 1)[1]: v for k, v in sorted(self.split_rows.items())
                             if k.startswith(split + "/")},
                    "rl_prompts": self.rl_prompts[split],
                    "windows": self._windowing(split),
                }
                for split in SPLITS
            },
            "tools": dict(self.tools.most_common()),
            "tool_transitions": dict(self.transitions.most_common()),
            "exploration_depth": {d: self.depth.get(d, 0) for d in ("minimal", "moderate", "thorough")},
            "signals": {
                name: {"items": self.signal_items[name], "traces_with_any": self.signal_traces[name]}
                for name in SIGNAL_LISTS
            },
            "self_correction_kinds": dict(sorted(self.correction_kinds.items())),
            "complexity": {
                key: {"mean": round(self.complexity_sum[key] / kept, 2), "max": self.complexity_max[key]}
                for key in COMPLEXITY_KEYS
            },
            "estimated_tokens": {"mean": round(self.tokens_sum / kept, 1), "max": self.tokens_max},
        }


def _bar(value: int, largest: int, width: int = 24) -> str:
    if largest <= 0 or value <= 0:
        return ""
    return "█" * max(1, round(width * value / largest))


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines


def _histogram(title: str, counts: dict[str, int], label: str, limit: int | None = None) -> list[str]:
    items = list(counts.items())[:limit] if limit else list(counts.items())
    largest = max((v for _, v in items), default=0)
    out = [f"### {title}", ""]
    if not items:
        return out + ["(none)", ""]
    out += _table([label, "count", ""], [[f"`{k}`", v, _bar(v, largest)] for k, v in items])
    if limit and len(counts) > limit:
        out.append(f"\n… and {len(counts) - limit} more.")
    return out + [""]


def _windows_section(splits: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """Decision windows: the budgets, the examples and the share of decisions trained on."""
    cfg = config.get("dataset", {})
    lines = [
        "## Decision windows (SFT examples)",
        "",
        f"SFT trains every assistant decision (its text, reasoning and tool calls) of every row once per epoch, "
        f"in windows of at most **{config.get('window_tokens', '?')} tokens** (the token budget: SFT's max_length): "
        "the system prompt, the user's prompt, as much recent history as fits and one or more consecutive "
        "decisions as targets. Each tool result is cut to the tool-result budget of "
        f"**{cfg.get('tool_result_tokens', '?')} tokens**; in a window, older tool results are shortened further "
        f"(to about {config.get('window_result_tokens', '?')} tokens) and then the oldest turns dropped, each with "
        "a `[ccrl: …]` marker. A decision longer than the budget is cut at its tail (its tool name stays).",
        "",
    ]
    rows = []
    for split in SPLITS:
        w = splits[split].get("windows") or {}
        share = w.get("share_trained")
        rows.append([split, w.get("decisions", 0), w.get("decisions_trained", 0),
                     f"{share:.2%}" if share is not None else "-", w.get("examples", 0)])
    lines += _table(["split", "decisions (trajectory and workflow rows)", "trained on", "share trained", "examples (windows)"],
                    rows)
    return lines + ["", "Estimated at 4 characters a token; the trainer windows again with the model's own tokenizer "
                    "and records the exact counts in the run's metrics.", ""]


def render_card(*, number: int, path: str, content_hash: str, created_at: str, stats: dict[str, Any],
                config: dict[str, Any]) -> str:
    """The dataset card (markdown with a small YAML header)."""
    cfg = config.get("dataset", {})
    splits = stats["splits"]
    formats = config.get("formats", [])
    total_decisions = sum(s["next_action_decisions"] for s in splits.values())
    eval_decisions = splits["eval"]["next_action_decisions"]
    target = cfg.get("min_eval_decisions", 0)
    lines = [
        "---",
        f"pretty_name: ccrl dataset v{number}",
        "tags: [ccrl, claude-code, agent-traces, tool-use]",
        f"formats: [{', '.join(formats)}]",
        f"content_hash: {content_hash}",
        "---",
        "",
        f"# ccrl dataset v{number}",
        "",
        f"Built {created_at} by `ccrl build-dataset` from the traces captured in this data directory.",
        f"Content hash `{content_hash}` (SHA-256 of the rows and RL prompts: an identical rebuild has the same hash).",
        "",
        "```python",
        "from datasets import load_from_disk",
        f'data = load_from_disk("{path}")                # splits: train, eval',
        f'rl = load_from_disk("{path}/rl_prompts")       # RL prompt set: train, eval',
        "```",
        "",
        "JSONL copies of every split are in `jsonl/`; the tool list given to the model is `tools.json`.",
        "",
        "## Counts",
        "",
        f"- traces seen: **{stats['traces_seen']}**, kept: **{stats['traces_kept']}** "
        f"({stats['subagent_traces_kept']} of them subagent runs, linked to their parent by `parent_id`)",
        f"- dropped by filters: **{sum(stats['dropped'].values())}**, skipped as bad input: "
        f"**{sum(stats['bad_input'].values())}**",
        "",
    ]
    split_rows = []
    for split in SPLITS:
        s = splits[split]
        rows = ", ".join(f"{fmt}: {n}" for fmt, n in s["rows"].items()) or "0"
        split_rows.append([split, s["sessions"], s["traces"], rows, s["rl_prompts"], s["next_action_decisions"]])
    lines += _table(["split", "sessions", "traces", "rows", "RL prompts", "next-action decisions"], split_rows)
    lines += ["", *_windows_section(splits, config)]
    lines += [
        "",
        "## Split",
        "",
        "By session, never by trace: a session's traces (its subagent runs included) are all in one split, "
        "so nothing of an eval session is trained on. A session is in eval when the first 4 bytes of "
        f"SHA-256(session id) fall below the eval threshold (now {config.get('eval_threshold_fraction', 0):.4f} "
        "of the hash space). The threshold starts at `eval_fraction`, grows by whole sessions until the eval "
        "split holds `min_eval_decisions` next-action decisions (never beyond `max_eval_fraction` of all "
        "decisions), and never shrinks from one version to the next: a trace never moves from eval to train "
        "when new data arrives.",
        "",
        f"Held-out next-action decisions (assistant turns in eval traces: each chooses the next calls or the "
        f"answer): **{eval_decisions}** of {total_decisions}"
        + (f"; target {target} " + ("met." if eval_decisions >= target else
                                    "not met: the data does not allow it yet without taking more than "
                                    f"{cfg.get('max_eval_fraction')} of all decisions.") if target else "."),
        "",
        "## Filters",
        "",
    ]
    filter_rows = []
    for name, (setting_names, what) in FILTERS.items():
        values = ", ".join(f"{s.strip()}={cfg.get(s.strip())}" for s in setting_names.split(",") if s.strip() in cfg)
        filter_rows.append([f"`{name}`", what, values or "always", stats["dropped"].get(name, 0)])
    lines += _table(["filter", "drops", "setting", "dropped"], filter_rows)
    lines += ["", "## Skipped as bad input", ""]
    if stats["bad_input"]:
        lines += _table(["reason", "traces", "example trace ids"],
                        [[f"`{k}`", v, ", ".join(map(str, stats['bad_input_examples'].get(k, [])))]
                         for k, v in stats["bad_input"].items()])
    else:
        lines.append("None.")
    lines += ["", "## Histograms (kept traces)", ""]
    lines += _histogram("Tool calls", stats["tools"], "tool")
    lines += _histogram("Tool transitions (top 20)", stats["tool_transitions"], "transition", limit=20)
    lines += _histogram("Exploration depth", stats["exploration_depth"], "depth")
    signal_rows = [[f"`{name}`", v["items"], v["traces_with_any"]] for name, v in stats["signals"].items()]
    lines += ["### Behaviour signals", ""]
    lines += _table(["signal", "items", "traces with at least one"], signal_rows)
    if stats["self_correction_kinds"]:
        lines += ["", "Self-corrections by kind: " + ", ".join(f"{k}: {v}" for k, v in stats["self_correction_kinds"].items()) + "."]
    lines += ["", "### Task complexity", ""]
    lines += _table(["measure", "mean", "max"], [[f"`{k}`", v["mean"], v["max"]] for k, v in stats["complexity"].items()])
    tokens = stats["estimated_tokens"]
    lines += [
        "",
        f"Trajectory length (estimated tokens, 4 characters each): mean {tokens['mean']}, max {tokens['max']}.",
        "",
        "## Format",
        "",
        "Columns: `messages` (the conversation: system, user, assistant with `tool_calls`, tool), `tools` "
        "(JSON string of the tool list), `format` (trajectory or workflow), `trace_id`, `session_id`, "
        "`parent_id`, `agent_type`, `decisions`. Tool-call `arguments` are JSON strings in the form Ollama "
        "prints them back (compact, keys sorted at every level, `<` `>` `&` escaped as `\\u003c` …); "
        "absent message keys are null. The RL prompt set has `prompt` (system + user), `reference_completion` "
        "(the reference trace in the workflow format), `reference_signals` (JSON string), "
        "`reference_tool_sequence`, `tools`, `trace_id`, `session_id`, `parent_id`. Both formats, and how "
        "tool calls are written as text, are defined in one place: `ccrl.trainers.conversation`.",
        "",
        "## Settings",
        "",
        "```json",
    ]
    lines += [json.dumps(config, indent=2, sort_keys=True), "```", ""]
    return "\n".join(lines)
