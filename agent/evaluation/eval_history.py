"""Every metric across model versions: the evaluation history from the store, and its plot.

One point per evaluation run (``ccrl eval`` or the gate), in order: the candidate's value with
its interval (the merged model and, when it was evaluated, the GGUF), and the base model and
baselines measured in the same run as reference lines. matplotlib is imported inside
:func:`plot_history` only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlmodel import col, select

from ccrl.agent.core.config import Settings, get_settings
from ccrl.agent.store.db import session_scope
from ccrl.agent.store.models import Evaluation

METRICS = ("next_action", "tool_name", "arguments", "decision", "plan_edit_distance", "plan_precision",
           "plan_recall", "reward")
TITLES = {
    "next_action": "next-action agreement (primary)",
    "tool_name": "tool name match",
    "arguments": "argument match",
    "decision": "stop-or-call decision",
    "plan_edit_distance": "plan edit distance (lower is better)",
    "plan_precision": "plan in-order precision",
    "plan_recall": "plan in-order recall",
    "reward": "behavioural reward",
}
CANDIDATES = ("candidate", "candidate-gguf")
REFERENCES = ("base", "most_frequent", "bigram")


def history(settings: Settings | None = None) -> list[dict[str, Any]]:
    """Evaluation runs oldest first: ``{"label", "evaluated_at", "subjects": {subject: metrics}}``."""
    from ccrl.agent.evaluation.ab import subject_label

    settings = settings or get_settings()
    runs: dict[str, dict[str, Any]] = {}
    with session_scope(settings) as session:
        for row in session.exec(select(Evaluation).order_by(col(Evaluation.id))):
            key = (row.config or {}).get("gate_run") or f"evaluation-{row.id}"
            run = runs.setdefault(key, {"label": None, "evaluated_at": row.created_at.isoformat(timespec="seconds"),
                                        "dataset_version_id": row.dataset_version_id, "subjects": {}})
            run["subjects"][row.subject] = row.metrics
            if row.subject == "candidate" or (row.subject == "candidate-gguf" and run["label"] is None):
                run["label"] = subject_label(session, row).replace(" (gguf)", "")
    return [r for r in runs.values() if r["label"] is not None]


def _point(metrics: dict[str, Any] | None, name: str) -> tuple[float | None, float | None, float | None]:
    entry = (metrics or {}).get(name) or {}
    return entry.get("value"), entry.get("low"), entry.get("high")


def plot_history(runs: list[dict[str, Any]], path: Path | str) -> Path:
    """Save a PNG with one panel per metric across evaluation runs (0600)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    labels = [r["label"] for r in runs]
    x = list(range(len(runs)))
    fig, axes = plt.subplots(2, 4, figsize=(18, 8), squeeze=False)
    styles = {"candidate": ("C0", "o", "-"), "candidate-gguf": ("C1", "s", "-"), "base": ("C7", "", "--"),
              "most_frequent": ("C2", "", ":"), "bigram": ("C3", "", ":")}
    names = {"candidate": "model (HF)", "candidate-gguf": "model (GGUF)", "base": "base model",
             "most_frequent": "most-frequent baseline", "bigram": "bigram baseline"}
    for ax, metric in zip(axes.flat, METRICS):
        for subject in (*REFERENCES, *CANDIDATES):
            points = [(i, *_point(r["subjects"].get(subject), metric)) for i, r in zip(x, runs)]
            points = [p for p in points if p[1] is not None]
            if not points:
                continue
            colour, marker, line = styles[subject]
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            lows = [p[1] - p[2] if p[2] is not None else 0.0 for p in points]
            highs = [p[3] - p[1] if p[3] is not None else 0.0 for p in points]
            if subject in CANDIDATES:
                ax.errorbar(xs, ys, yerr=[lows, highs], color=colour, marker=marker, linestyle=line, capsize=3,
                            label=names[subject])
            else:
                ax.plot(xs, ys, color=colour, linestyle=line, marker=".", label=names[subject])
        ax.set_title(TITLES[metric], fontsize=10)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=30, fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    handles, legend_labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, legend_labels, loc="lower center", ncol=len(handles), fontsize=9)
    fig.suptitle("ccrl held-out evaluation across versions (95% intervals)")
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return path
