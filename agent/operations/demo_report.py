"""The ``ccrl demo`` report: one HTML page with its pictures, and the same numbers as JSON.

Written to ``<demo folder>/report/``:

- ``index.html``: what ran (steps with wall and CPU seconds), the profile's budgets beside the
  full profile's, the data, the evaluation (metric table with intervals, the gate's decision,
  paired differences, a few held-out decisions side by side), the Ollama registration (or the
  command and why not);
- ``metrics_table.png`` (the metric table as a picture), ``next_action.png`` (the primary metric
  per model and baseline with its interval), ``loss_curve.png`` (SFT) and ``reward_curve.png``
  (RL), copied from the training runs;
- ``report.json``: the whole result.

Every number comes from the run's records (the gate's report, the runs' metrics); nothing here
computes a metric. matplotlib (the [train] extra) draws the pictures.
"""

from __future__ import annotations

import html
import json
import os
import shutil
from pathlib import Path
from typing import Any

from ccrl.agent.operations.wording import plural

PRIMARY = "next_action"
SUBJECT_ORDER = ("most_frequent", "bigram", "base", "deployed", "rl-parent", "candidate", "candidate-gguf")
METRIC_COLUMNS = [
    ("next_action", "next action (primary)"),
    ("tool_name", "tool names"),
    ("arguments", "arguments"),
    ("decision", "call vs answer"),
    ("plan_edit_distance", "plan edit distance (lower is better)"),
    ("reward", "behavioural reward"),
]


def subject_label(name: str, result: Any) -> str:
    """A reader's name for a gate subject."""
    phase = "SFT + RL" if (result.rl or {}).get("run_id") else "SFT"
    quant = next((s.summary.get("quant") for s in result.steps if s.key == "export" and s.summary), None)
    return {
        "most_frequent": "most-frequent baseline",
        "bigram": "bigram baseline",
        "base": "base model (untrained)",
        "deployed": "deployed version",
        "rl-parent": "after SFT",
        "candidate": f"trained ({phase})",
        "candidate-gguf": f"trained ({phase}), GGUF {quant or ''}".rstrip(),
    }.get(name, name)


def _subjects(result: Any) -> list[tuple[str, dict[str, Any]]]:
    subjects = ((result.gate or {}).get("subjects") or {})
    ordered = [n for n in SUBJECT_ORDER if n in subjects] + [n for n in subjects if n not in SUBJECT_ORDER]
    return [(n, subjects[n]) for n in ordered]


def _cell(entry: Any) -> str:
    """``0.750 [0.583, 0.869] n=32`` for a rate or mean with its interval; ``-`` when absent."""
    if not isinstance(entry, dict) or entry.get("value") is None:
        return "-"
    text = f"{entry['value']:.3f}"
    if entry.get("low") is not None and entry.get("high") is not None:
        text += f" [{entry['low']:.3f}, {entry['high']:.3f}]"
    if entry.get("n") is not None:
        text += f" n={entry['n']}"
    return text


def metric_rows(result: Any) -> list[dict[str, str]]:
    """One row per subject: its label and each metric column as text."""
    rows = []
    for name, subject in _subjects(result):
        metrics = subject.get("metrics") or {}
        rows.append({"subject": subject_label(name, result), "key": name, "backend": subject.get("backend", ""),
                     **{key: _cell(metrics.get(key)) for key, _ in METRIC_COLUMNS}})
    return rows


# ---------------------------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def interval_method(result: Any) -> str:
    """How the report's intervals were computed, as the evaluation recorded it."""
    gate = result.gate or {}
    if gate.get("interval_method"):
        return str(gate["interval_method"])
    methods = {((s.get("metrics") or {}).get(PRIMARY) or {}).get("method") for _, s in _subjects(result)}
    methods.discard(None)
    return ", ".join(sorted(methods)) or "Wilson score"


def draw_metric_table(result: Any, path: Path) -> Path | None:
    """The metric table as a PNG (rows: models and baselines; columns: metrics with intervals)."""
    rows = metric_rows(result)
    if not rows:
        return None
    plt = _pyplot()
    columns = ["model / baseline"] + [title for _, title in METRIC_COLUMNS]
    cells = [[r["subject"]] + [r[key] for key, _ in METRIC_COLUMNS] for r in rows]
    fig, ax = plt.subplots(figsize=(17, 0.55 * (len(rows) + 2)), dpi=110)
    ax.axis("off")
    table = ax.table(cellText=cells, colLabels=columns, loc="center", cellLoc="left", colLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1, 1.6)
    judged = (result.gate or {}).get("judged")
    for (row, _col), cell in table.get_celld().items():
        if row == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("#e8eef7")
        elif rows[row - 1]["key"] == judged:
            cell.set_facecolor("#eaf6ea")
    table.auto_set_column_width(list(range(len(columns))))
    decisions = next((s["metrics"].get("counts", {}).get("decisions") for _, s in _subjects(result)
                      if (s.get("metrics") or {}).get("counts")), None)
    fold = (result.gate or {}).get("fold") or "held-out"
    ax.set_title(f"Held-out evaluation, {fold} fold ({decisions} next-action decisions; 95% intervals: "
                 f"{interval_method(result)})", loc="left", fontsize=11)
    fig.savefig(path, bbox_inches="tight", pad_inches=0.2)
    plt.close(fig)
    return path


def draw_primary_chart(result: Any, path: Path) -> Path | None:
    """The primary metric per subject as bars with their 95% intervals (the method is named)."""
    points = []
    for name, subject in _subjects(result):
        entry = (subject.get("metrics") or {}).get(PRIMARY) or {}
        if entry.get("value") is not None:
            points.append((subject_label(name, result), entry["value"], entry.get("low"), entry.get("high"),
                           subject.get("kind") == "baseline", name == (result.gate or {}).get("judged")))
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(points) + 1.4), dpi=110)
    labels = [p[0] for p in points]
    values = [p[1] for p in points]
    lows = [p[1] - (p[2] if p[2] is not None else p[1]) for p in points]
    highs = [(p[3] if p[3] is not None else p[1]) - p[1] for p in points]
    colors = ["#b0b0b0" if p[4] else ("#2e8b57" if p[5] else "#4a78b5") for p in points]
    ax.barh(labels, values, xerr=[lows, highs], color=colors, capsize=4)
    for y, (value, high) in enumerate(zip(values, highs)):
        ax.text(min(value + high + 0.015, 0.93), y, f"{value:.2f}", va="center", fontsize=9)
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel(f"teacher-forced next-action agreement with Claude\n(95% interval: {interval_method(result)})")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 2rem auto; max-width: 1100px;
       color: #222; line-height: 1.45; padding: 0 1rem; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .92rem; }
th, td { border: 1px solid #ddd; padding: .3rem .6rem; text-align: left; vertical-align: top; }
th { background: #f3f5f9; }
.done { color: #1d7a3a; font-weight: 600; } .failed { color: #b3261e; font-weight: 600; }
.not-run, .not-available { color: #8a6d00; font-weight: 600; }
.pass { color: #1d7a3a; font-weight: 700; } .fail { color: #b3261e; font-weight: 700; }
img { max-width: 100%; border: 1px solid #eee; margin: .5rem 0; }
code, pre { background: #f6f8fa; padding: .1rem .3rem; border-radius: 3px; }
pre { padding: .6rem; overflow-x: auto; white-space: pre-wrap; }
.muted { color: #666; font-size: .9rem; }
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _table(headers: list[str], rows: list[list[Any]], raw: bool = False) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c if raw else _e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt_seconds(seconds: float) -> str:
    seconds = float(seconds or 0)
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _action(label: Any) -> str:
    if not label:
        return "-"
    return " + ".join(str(x) for x in label)


def _steps_html(result: Any) -> str:
    rows = []
    for step in result.steps:
        status = f'<span class="{step.status.replace(" ", "-")}">{_e(step.status)}</span>'
        detail = _e(step.message) if step.message else _e(_step_detail(step))
        rows.append([_e(step.title), status, _e(_fmt_seconds(step.seconds)), _e(_fmt_seconds(step.cpu_seconds)), detail])
    total = [f"<b>whole demo</b>", "", f"<b>{_e(_fmt_seconds(result.seconds))}</b>",
             f"<b>{_e(_fmt_seconds(result.cpu_seconds))}</b>", ""]
    return _table(["step", "status", "wall time", "CPU time", "what it did"], rows + [total], raw=True)


def _step_detail(step: Any) -> str:
    s = step.summary or {}
    if step.key == "samples":
        return f"{s.get('transcripts')} transcripts of Claude Code {s.get('claude_code') or ''} in {s.get('projects')} projects"
    if step.key == "import":
        return (f"{s.get('sessions')} sessions, {s.get('traces')} traces, {s.get('tool_calls')} tool calls "
                f"({s.get('tool_errors')} failed)")
    if step.key == "dataset":
        return (f"version {s.get('number')}: {s.get('train_traces')} train / {s.get('eval_traces')} held-out traces "
                f"({s.get('eval_sessions')} held-out sessions, {s.get('eval_next_action_decisions')} held-out decisions)")
    if step.key == "sft":
        return (f"run {s.get('run_id')}: {plural(s.get('global_step'), 'step')}, eval loss {_num(s.get('eval_loss_before'))} → "
                f"{_num(s.get('eval_loss_after'))}")
    if step.key == "rl":
        return (f"run {s.get('run_id')} ({str(s.get('algorithm') or 'grpo').upper()}): {plural(s.get('global_step'), 'step')}, held-out "
                f"reward {_num(s.get('heldout_reward_before'))} → {_num(s.get('heldout_reward_after'))}")
    if step.key == "export":
        return f"model version {s.get('model_version')}: {s.get('quant')}, {_size(s.get('size_bytes'))}"
    if step.key == "evaluate":
        return f"gate {'passed' if s.get('passed') else 'did not pass'}: {s.get('reason')}"
    if step.key == "deploy":
        return f"{s.get('tag')} and {s.get('latest')}; try it: {s.get('run')}"
    if step.key == "report":
        return str(s.get("path", ""))
    return ""


def _num(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def _size(n: Any) -> str:
    return f"{n / 1e6:.0f} MB" if isinstance(n, (int, float)) else "-"


def _evaluation_html(result: Any, images: dict[str, str]) -> str:
    gate = result.gate
    if not gate:
        step = next((s for s in result.steps if s.key == "evaluate"), None)
        return f"<p>The evaluation did not run: {_e(step.message if step else 'no step')}.</p>"
    verdict = ('<span class="pass">passed</span>' if gate.get("passed") else '<span class="fail">did not pass</span>')
    parts = [
        f"<p>The deployment gate {verdict}: {_e(gate.get('reason'))}. Judged: <b>{_e(subject_label(gate.get('judged', ''), result))}</b>. "
        "Every model below was measured in this run from its weights, on the same held-out decisions "
        "(sessions never trained on); the baselines learn nothing but the training split's action counts.</p>",
    ]
    if "metrics_table" in images:
        parts.append(f'<img src="{images["metrics_table"]}" alt="metric table">')
    rows = [[r["subject"], r["backend"]] + [r[key] for key, _ in METRIC_COLUMNS] for r in metric_rows(result)]
    parts.append(_table(["model / baseline", "backend"] + [title for _, title in METRIC_COLUMNS], rows))
    if "next_action" in images:
        parts.append(f'<img src="{images["next_action"]}" alt="next-action agreement per model">')
    checks = [[c.get("name"), "yes" if c.get("passed") else "no", c.get("detail")] for c in gate.get("checks") or []]
    if checks:
        parts.append("<h3>Gate checks</h3>" + _table(["check", "passed", "numbers"], checks))
    paired = gate.get("paired") or {}
    if paired:
        rows = [[subject_label(name, result), _cell(entry)] for name, entry in paired.items()]
        parts.append("<h3>Paired differences</h3><p class=\"muted\">Per-decision agreement of the judged model minus "
                     f"each other subject's, on the same decisions ({_e(next(iter(paired.values())).get('method') or 'bootstrap')} "
                     "interval): above 0 means ahead.</p>"
                     + _table(["compared with", "difference [95% interval]"], rows))
    counts = next((s["metrics"].get("counts") for _, s in _subjects(result) if (s.get("metrics") or {}).get("counts")), {})
    if counts:
        parts.append(f"<p class=\"muted\">Held-out data: {_e(counts.get('eval_traces'))} traces, "
                     f"{_e(counts.get('decisions_held_out'))} decisions ({_e(counts.get('decisions_too_long'))} with a prefix "
                     f"over the token limit, {_e(counts.get('decisions_not_sampled'))} not sampled), "
                     f"{_e(counts.get('decisions'))} scored; {_e(counts.get('plans'))} whole plans generated.</p>")
    if result.examples:
        rows = [[e.get("prompt", "")[:90], e.get("turn"), _action(e.get("claude")), _action(e.get("trained")),
                 "yes" if e.get("trained_agrees") else "no", _action(e.get("base")), _action(e.get("bigram"))]
                for e in result.examples]
        parts.append("<h3>Some held-out decisions</h3>"
                     + _table(["prompt", "turn", "Claude did", "trained model", "agrees", "base model", "bigram"], rows))
    if gate.get("notes"):
        parts.append("<p class=\"muted\">Notes: " + _e("; ".join(gate["notes"])) + "</p>")
    return "\n".join(parts)


def _deploy_html(result: Any) -> str:
    deploy = result.deploy or {}
    step = next((s for s in result.steps if s.key == "deploy"), None)
    if deploy.get("registered"):
        return (f"<p>Registered with Ollama at <code>{_e(deploy.get('host'))}</code> as <code>{_e(deploy.get('tag'))}</code> "
                f"and <code>{_e(deploy.get('latest'))}</code>. Try it: <code>{_e(deploy.get('run'))}</code></p>")
    if deploy.get("command"):
        return (f"<p>Not registered: {_e(deploy.get('why'))}.</p><p>The exact command:</p>"
                f"<pre>{_e(deploy['command'])}</pre><p>then <code>ollama run cc-claude-agent-demo</code>.</p>")
    return f"<p>Not registered: {_e(step.message if step else 'the step did not run')}.</p>"


def _data_html(result: Any) -> str:
    samples, dataset = result.samples or {}, result.dataset or {}
    families = samples.get("families") or {}
    parts = [f"<p>{_e(samples.get('transcripts'))} real Claude Code {_e(samples.get('claude_code') or '')} transcripts "
             "shipped with ccrl (made by <code>scripts/make_samples.py</code>: the real CLI against a scripted model, "
             "doing small tasks in scratch projects), imported with <code>ccrl import</code>: "
             f"{_e(samples.get('sessions'))} sessions, {_e(samples.get('traces'))} traces, {_e(samples.get('tool_calls'))} "
             f"tool calls of which {_e(samples.get('tool_errors'))} failed.</p>"]
    if families:
        parts.append(_table(["kind of task", "traces"], [[k, v] for k, v in families.items()]))
    if dataset:
        parts.append(f"<p>Dataset version {_e(dataset.get('number'))}: {_e(dataset.get('train_traces'))} training traces "
                     f"({_e(dataset.get('train_sessions'))} sessions), {_e(dataset.get('eval_traces'))} held-out traces "
                     f"({_e(dataset.get('eval_sessions'))} sessions, {_e(dataset.get('eval_next_action_decisions'))} "
                     "next-action decisions), split by session; each trace as a trajectory and as a workflow plan."
                     + (f" Dropped by the filters: {_e(dataset.get('dropped'))}." if dataset.get("dropped") else "")
                     + "</p>")
    return "\n".join(parts)


def _training_html(result: Any, images: dict[str, str]) -> str:
    sft, rl = result.sft or {}, result.rl or {}
    parts = []
    if sft:
        parts.append(f"<p>SFT (LoRA, {_e(sft.get('device'))}, {_e(sft.get('quant'))}) from {_e(sft.get('base_model'))}: "
                     f"{_e(plural(sft.get('global_step'), 'step'))} on {_e(plural(sft.get('train_examples'), 'example'))} "
                     f"(max length {_e(sft.get('max_length'))}); held-out loss {_num(sft.get('eval_loss_before'))} before, "
                     f"{_num(sft.get('eval_loss_after'))} after; "
                     f"{_num(sft.get('tokens_per_second'))} tokens/s.</p>")
    if "loss_curve" in images:
        parts.append(f'<img src="{images["loss_curve"]}" alt="SFT loss curve">')
    if rl:
        parts.append(f"<p>RL ({_e(str(rl.get('algorithm') or 'grpo').upper())}) on the SFT model: "
                     f"{_e(plural(rl.get('global_step'), 'step'))}, {_e(plural(rl.get('episodes'), 'prompt'))} x "
                     f"{_e(plural(rl.get('num_generations'), 'completion'))}; mean "
                     f"behavioural reward on {_e(plural(rl.get('heldout_prompts'), 'held-out prompt'))} "
                     f"{_num(rl.get('heldout_reward_before'))} before, {_num(rl.get('heldout_reward_after'))} after.</p>")
    if "reward_curve" in images:
        parts.append(f'<img src="{images["reward_curve"]}" alt="RL reward curve">')
    if not parts:
        parts.append("<p>No training ran (see the steps above).</p>")
    return "\n".join(parts)


def render_html(result: Any, images: dict[str, str]) -> str:
    """The report page (``images``: picture key → file name next to the page)."""
    budgets = [[b["budget"], b["what"], b.get(result.profile), b.get("full")] for b in result.budgets]
    machine = result.machine or {}
    ignored = (f"<p class=\"muted\">Ignored for the demo: {_e(', '.join(result.environment_ignored))} (it uses only its "
               "own folder and settings).</p>" if result.environment_ignored else "")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ccrl demo report</title><style>{STYLE}</style></head>
<body>
<h1>ccrl demo</h1>
<p class="muted">Profile <b>{_e(result.profile)}</b> ({_e(result.profile_description)}), started {_e(result.started_at)},
{_e(_fmt_seconds(result.seconds))} in all on {_e(machine.get('cpus'))} CPUs
(load average at start {_e(machine.get('load_average_at_start'))}; torch {_e(machine.get('torch'))},
CUDA {_e(machine.get('cuda'))}). Data folder: <code>{_e(result.demo_dir)}</code>.</p>
{ignored}
<h2>What ran</h2>
{_steps_html(result)}
<h2>Budgets: this profile and the full one</h2>
<p class="muted">The full profile is what <code>ccrl train</code>, <code>ccrl eval</code> and the agent use by default on
this machine.</p>
{_table(["budget", "what it is", result.profile, "full profile"], budgets)}
<h2>The data</h2>
{_data_html(result)}
<h2>Training</h2>
{_training_html(result, images)}
<h2>Evaluation: does the trained model act more like Claude?</h2>
{_evaluation_html(result, images)}
<h2>Ollama</h2>
{_deploy_html(result)}
</body></html>
"""


def write_report(result: Any, out_dir: Path, progress: Any = None) -> Path:
    """Write the pictures and ``index.html`` into ``out_dir`` (private files); returns the page."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    images: dict[str, str] = {}
    if progress is not None:
        progress.update(total=4, completed=0, description="pictures")
    for key, source in (("loss_curve", result.artifacts.get("loss_curve_png")),
                        ("reward_curve", result.artifacts.get("reward_curve_png"))):
        if source and Path(source).is_file():
            shutil.copyfile(source, out_dir / f"{key}.png")
            images[key] = f"{key}.png"
    if progress is not None:
        progress.update(completed=1)
    if draw_metric_table(result, out_dir / "metrics_table.png"):
        images["metrics_table"] = "metrics_table.png"
    if progress is not None:
        progress.update(completed=2)
    if draw_primary_chart(result, out_dir / "next_action.png"):
        images["next_action"] = "next_action.png"
    if progress is not None:
        progress.update(completed=3, description="page")
    page = out_dir / "index.html"
    page.write_text(render_html(result, images), encoding="utf-8")
    for path in out_dir.iterdir():
        if path.is_file():
            os.chmod(path, 0o600)
    if progress is not None:
        progress.update(completed=4)
    return page


def write_json(result: Any, path: Path) -> Path:
    """The whole result as JSON (0600)."""
    path = Path(path)
    path.write_text(json.dumps(result.as_dict(), indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.chmod(path, 0o600)
    return path
