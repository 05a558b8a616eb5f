"""``ccrl demo``: the whole loop on the embedded default model, from the shipped sample sessions.

What it runs, in a demo data folder of its own (default ``CCRL_HOME/demo``; never the user's data
directory, never the user's ``cc-claude-agent`` in Ollama), each step through the same entry
point the real pipeline uses:

1. **samples**: unpack the sample sessions shipped in the package (``data/samples/``: real
   Claude Code transcripts, made by ``scripts/make_samples.py``) into the demo folder, laid out
   like ``~/.claude/projects``;
2. **import**: ``ccrl.agent.capture.importer.import_transcripts`` on that copy (what ``ccrl import`` runs);
3. **dataset**: ``ccrl.agent.datasets.datasets.build_dataset`` (``ccrl build-dataset``);
4. **SFT**: ``ccrl.agent.training.training.run_training("sft")`` on the embedded default SmolLM2-135M
   (``ccrl train --phase sft --base-model smollm2``);
5. **RL**: ``run_training("rl")``: GRPO against the behavioural reward (``ccrl train --phase rl``);
6. **export**: ``ccrl.agent.release.versions.export_run`` to a verified GGUF (``ccrl export``);
7. **evaluate**: ``ccrl.agent.evaluation.gate.evaluate_candidate``, the deployment gate: base model, SFT
   parent, trained model (and its GGUF) and the learn-nothing baselines on the held-out split;
8. **deploy**: ``ccrl.agent.release.deploy.deploy_version`` as ``cc-claude-agent-demo`` when Ollama is
   reachable and the gate passed (otherwise the exact command, and why it was not run);
9. **report**: HTML with the loss and reward curves and the metric table as pictures
   (``ccrl.agent.operations.demo_report``).

The budgets come from a *profile* (:data:`PROFILES`): small enough for a 2-core CPU, stated in
the report beside what the full profile (the defaults the agent uses) would do. A step whose
module or extra is missing is reported as not run, with the reason; nothing is ever filled in.

Heavy libraries are imported inside the steps (through the modules they call).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shlex
import shutil
import tarfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

DEMO_MODEL_NAME = "cc-claude-agent-demo"
MARKER = ".ccrl-demo"
"""File that marks a folder as a demo folder (only such a folder is ever emptied)."""
KEPT_CACHES = ("cache", "models/base", "pipeline.lock")
"""Kept between demo runs: the converted base model and the GGUF converter (caches), and the
lock file the running demo holds."""
SAMPLES_DIR = Path(__file__).resolve().parents[1] / "data" / "samples"
SAMPLES_ARCHIVE = SAMPLES_DIR / "transcripts.tar.xz"
SAMPLES_MANIFEST = SAMPLES_DIR / "manifest.json"

DONE, FAILED, NOT_RUN, UNAVAILABLE = "done", "failed", "not run", "not available"


class DemoError(RuntimeError):
    """The demo cannot start (unsafe folder, missing samples); the message says what to do."""


# ---------------------------------------------------------------------------------------------
# Profiles
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """The budgets of one demo run. ``train``/``eval``/``dataset`` are settings sections (written
    to the demo folder's ``config.toml``); ``sft``/``rl`` are per-run overrides of the trainers'
    ``SFTRunConfig``/``RLConfig`` (``run_training(options=…)``)."""

    name: str
    description: str
    train: dict[str, Any]
    sft: dict[str, Any]
    rl: dict[str, Any]
    eval: dict[str, Any]
    dataset: dict[str, Any] = field(default_factory=dict)
    export_requires_stop: bool = True
    """The export's check that the model ends its turn (off only for an untrained test model)."""


PROFILES: dict[str, Profile] = {
    "demo": Profile(
        name="demo",
        description="finishes in under a quarter of an hour on a 2-core CPU",
        train={"base_model": "smollm2", "num_epochs": 3, "batch_size": 1, "learning_rate": 2e-3, "lora_r": 16,
               "num_episodes": 2},
        # SFT: the trajectories alone (the next-action decisions the demo judges), decision
        # windows of 384 tokens with older tool results cut to about 32, one sequence per forward
        # pass (no padding), no activation checkpointing (memory is not the limit here), a high
        # LoRA learning rate, 100 optimizer steps of 4 windows (about 2 epochs of the training
        # split's windows; bf16 autocast where the CPU has it). Chosen on the dev fold (README:
        # "configurations tried"); every one tried stays behind the bigram baseline there.
        sft={"cpu_max_length": 384, "window_result_tokens": 32, "gradient_accumulation_steps": 4,
             "gradient_checkpointing": False, "eval_each_epoch": False, "max_steps": 100, "save_steps": 0.5,
             "save_total_limit": 1, "max_eval_examples": 8, "formats": ["trajectory"]},
        # RL: one GRPO step (2 prompts x 2 plans); the gate measures the held-out reward.
        rl={"num_generations": 2, "prompts_per_step": 2, "max_completion_length": 128, "eval_prompts": 0,
            "save_steps": 1.0, "save_total_limit": 1},
        # Evaluation: prompts windowed as SFT's (320 tokens leave room for the turn), 48 tokens per
        # turn (a call cut off there still counts by its name; 96 gained 0.02 on the dev fold and
        # doubles the base model's share of the time), the GGUF judged with every core.
        eval={"max_decisions": 400, "decision_max_new_tokens": 48, "max_prompt_tokens": 320, "max_plans": 3,
              "plan_max_new_tokens": 128, "evaluate_hf_candidate": False, "threads": os.cpu_count() or 1},
        # Held out: sessions enough for at least 100 decisions in the test fold (about 70% of the
        # held-out sessions; the dev fold is for choosing settings), every one of them scored: on
        # the samples, 174 of the 365 next-action decisions, 126 of them in the test fold (the
        # default cap of 30% held out left 68). Windows of the SFT length, so the card counts
        # what SFT trains.
        dataset={"min_eval_decisions": 170, "max_eval_fraction": 0.5, "window_tokens": 384},
    ),
    "ci": Profile(
        name="ci",
        description="every step for real at the smallest sizes, for the test suite (use with a tiny --base-model)",
        train={"num_epochs": 1, "batch_size": 2, "learning_rate": 1e-3, "lora_r": 8, "num_episodes": 2, "max_steps": 2},
        sft={"cpu_max_length": 512, "gradient_accumulation_steps": 1, "eval_each_epoch": False,
             "save_steps": 1.0, "save_total_limit": 1, "max_eval_examples": 8},
        rl={"num_generations": 2, "prompts_per_step": 2, "max_completion_length": 16, "eval_prompts": 2,
            "eval_generations": 2, "save_steps": 1.0, "save_total_limit": 1},
        eval={"max_decisions": 6, "decision_max_new_tokens": 8, "max_prompt_tokens": 1024, "max_plans": 2,
              "plan_max_new_tokens": 16},
        export_requires_stop=False,
    ),
}

BUDGETS: list[tuple[str, str, Callable[[dict[str, Any]], Any]]] = [
    ("base model", "model the run starts from", lambda v: v["base_model"]),
    ("SFT epochs", "passes over the training split", lambda v: v["epochs"]),
    ("SFT sequence length", "tokens per example (longer ones are cut)", lambda v: v["max_length"]),
    ("SFT batch", "examples per optimizer step (batch x accumulation)", lambda v: v["batch"]),
    ("SFT learning rate", "peak learning rate of the LoRA adapter", lambda v: v["sft_lr"]),
    ("SFT eval examples", "held-out conversations whose loss is measured", lambda v: v["sft_eval"]),
    ("SFT data", "dataset formats trained on", lambda v: v["sft_formats"]),
    ("RL prompts", "episodes (prompts) of the GRPO run", lambda v: v["rl_prompts"]),
    ("RL generations", "completions sampled per prompt", lambda v: v["rl_generations"]),
    ("RL completion length", "tokens per generated plan", lambda v: v["rl_completion"]),
    ("RL held-out prompts", "prompts scored before and after the RL run", lambda v: v["rl_heldout"]),
    ("evaluation decisions", "held-out next-action decisions scored per model", lambda v: v["decisions"]),
    ("tokens per decision", "tokens a model may write for one turn", lambda v: v["decision_tokens"]),
    ("evaluation plans", "held-out prompts whose whole plan is generated", lambda v: v["plans"]),
    ("tokens per plan", "tokens a model may write for one plan", lambda v: v["plan_tokens"]),
    ("candidate evaluated as", "the trained model's forms that are evaluated", lambda v: v["judged"]),
]


def budget_values(profile: Profile | None, *, cuda: bool = False) -> dict[str, Any]:
    """The budgets a profile sets (``None``: the full profile, i.e. the defaults the agent and
    ``ccrl train``/``ccrl eval`` use on this kind of machine), read from the settings and
    trainer config classes themselves."""
    from ccrl.agent.core.config import EvalSettings, TrainSettings

    train = TrainSettings(**(profile.train if profile else {}))
    evals = EvalSettings(**(profile.eval if profile else {}))
    sft_values, rl_values = _trainer_defaults()
    sft = {**sft_values, **(profile.sft if profile else {})}
    rl = {**rl_values, **(profile.rl if profile else {})}
    max_length = sft.get("max_length") or (sft["gpu_max_length"] if cuda else sft["cpu_max_length"])
    generations = rl.get("num_generations") or (8 if cuda else 4)
    completion = rl.get("max_completion_length") or (rl["gpu_max_completion_length"] if cuda
                                                      else rl["cpu_max_completion_length"])
    base = train.base_model or ("Llama 3.1 8B Instruct (CUDA) / SmolLM2-135M (CPU)" if profile is None else "automatic")
    rl_prompts = train.num_episodes
    if profile is not None and train.max_steps:
        rl_prompts = min(rl_prompts, train.max_steps * rl["prompts_per_step"])
    return {
        "base_model": "SmolLM2-135M-Instruct (embedded)" if base in ("smollm2", "embedded", "smollm2-135m-instruct") else base,
        "epochs": f"{train.num_epochs:g}" + (f" (at most {cap} steps)" if (cap := sft.get("max_steps", -1)) > 0
                                             or (cap := train.max_steps or -1) > 0 else ""),
        "max_length": max_length,
        "batch": f"{train.batch_size} x {sft['gradient_accumulation_steps']}",
        "sft_lr": f"{train.learning_rate:g}",
        "sft_eval": "all" if sft.get("max_eval_examples") is None else f"at most {sft['max_eval_examples']}",
        "sft_formats": " + ".join(sft["formats"]) if sft.get("formats") else "trajectory + workflow",
        "rl_prompts": rl_prompts,
        "rl_generations": generations,
        "rl_completion": completion,
        "rl_heldout": f"{rl['eval_prompts']} x {rl['eval_generations']}" if rl["eval_prompts"] else "none (the gate's plans)",
        "decisions": evals.max_decisions,
        "decision_tokens": evals.decision_max_new_tokens,
        "plans": evals.max_plans,
        "plan_tokens": evals.plan_max_new_tokens,
        "judged": "GGUF" + (" and HF weights" if evals.evaluate_hf_candidate else "") if evals.evaluate_gguf else "HF weights",
    }


def _trainer_defaults() -> tuple[dict[str, Any], dict[str, Any]]:
    """``SFTRunConfig`` and ``RLConfig`` defaults (the trainer modules import no torch at load)."""
    from ccrl.trainers.rl import RLConfig
    from ccrl.trainers.sft import SFTRunConfig

    return SFTRunConfig().to_dict(), RLConfig().to_dict()


def budgets_table(profile: Profile, *, cuda: bool = False) -> list[dict[str, Any]]:
    """Rows ``{budget, what, demo, full}``: the profile beside the full profile."""
    mine, full = budget_values(profile, cuda=cuda), budget_values(None, cuda=cuda)
    return [{"budget": name, "what": what, profile.name: get(mine), "full": get(full)} for name, what, get in BUDGETS]


def config_toml(profile: Profile) -> str:
    """The demo folder's ``config.toml``: the profile's settings sections (so ``ccrl status``,
    ``ccrl eval`` … run against the demo folder with the same settings afterwards)."""
    lines = [f"# Written by `ccrl demo` (profile {profile.name!r}). Settings of the demo data folder only.", ""]
    for section, values in (("train", profile.train), ("eval", profile.eval), ("dataset", profile.dataset)):
        if values:
            lines.append(f"[{section}]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
            lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The demo folder
# ---------------------------------------------------------------------------------------------


def default_demo_dir(user_home: Path) -> Path:
    """``CCRL_HOME/demo``."""
    return Path(user_home) / "demo"


def _inside(path: Path, parent: Path) -> bool:
    try:
        path.relative_to(parent)
    except ValueError:
        return False
    return True


def check_demo_dir(demo_dir: Path, user_home: Path) -> None:
    """Refuse a folder the demo must not empty: the user's data directory (or one holding it),
    or a non-empty folder that is not a demo folder."""
    demo_dir, user_home = demo_dir.expanduser().resolve(), user_home.expanduser().resolve()
    if demo_dir == user_home or _inside(user_home, demo_dir):
        raise DemoError(f"{demo_dir} holds your ccrl data directory ({user_home}); the demo needs a folder of its "
                        f"own (the default is {default_demo_dir(user_home)})")
    if demo_dir.exists() and not demo_dir.is_dir():
        raise DemoError(f"{demo_dir} is not a folder")
    if demo_dir.is_dir() and any(demo_dir.iterdir()) and not (demo_dir / MARKER).is_file():
        raise DemoError(f"{demo_dir} is not empty and was not made by `ccrl demo`; pass an empty or new folder "
                        "with --dir (the demo empties its folder on every run)")


def reset_demo_dir(demo_dir: Path) -> list[str]:
    """Empty the demo folder for a fresh run, keeping only the caches in :data:`KEPT_CACHES`
    (the converted base model and the GGUF converter, which cost time and network to make).
    Returns what was kept."""
    from ccrl.agent.store.db import ensure_private_dir

    ensure_private_dir(demo_dir)
    keep = {demo_dir / rel for rel in KEPT_CACHES}
    kept = []
    for path in sorted(demo_dir.rglob("*"), key=lambda p: len(p.parts)):
        if not path.exists() and not path.is_symlink():
            continue  # removed with its parent
        if path in keep:
            if path.is_dir():
                kept.append(str(path.relative_to(demo_dir)))
            continue
        if any(_inside(k, path) for k in keep if k != path):
            continue  # a parent of a kept cache: look inside it
        if any(_inside(path, k) for k in keep):
            continue
        if path.name == MARKER and path.parent == demo_dir:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    marker = demo_dir / MARKER
    marker.write_text("This folder belongs to `ccrl demo`, which empties it on every run.\n")
    os.chmod(marker, 0o600)
    return kept


@contextmanager
def demo_environment(demo_dir: Path) -> Iterator[list[str]]:
    """Point every ccrl setting at the demo folder for the duration: ``CCRL_HOME`` and
    ``CCRL_CONFIG`` set, every other ``CCRL_*`` variable (a database URL, overrides, the
    capture opt-out) left out, settings and engines reset before and after. Yields the names of
    the variables that were left out."""
    from ccrl.agent.core.config import reset_settings_cache
    from ccrl.agent.store.db import dispose_engines

    saved = {k: v for k, v in os.environ.items() if k.startswith("CCRL_")}
    for key in saved:
        del os.environ[key]
    os.environ["CCRL_HOME"] = str(demo_dir)
    os.environ["CCRL_CONFIG"] = str(demo_dir / "config.toml")
    reset_settings_cache()
    dispose_engines()
    try:
        yield sorted(k for k in saved if k not in ("CCRL_HOME", "CCRL_CONFIG"))
    finally:
        dispose_engines()
        for key in [k for k in os.environ if k.startswith("CCRL_")]:
            del os.environ[key]
        os.environ.update(saved)
        reset_settings_cache()


# ---------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------


class StepProgress(Protocol):
    """What a step reports while it runs."""

    def update(self, **changes: Any) -> None:
        """Any of ``total`` (None: unknown), ``completed``, ``description``; others unchanged."""

    def note(self, message: str) -> None:
        """A line worth showing above the bars (a notice from the step)."""


class UI(Protocol):
    """Shows the demo's progress: one bar per step."""

    @contextmanager
    def step(self, key: str, title: str) -> Iterator[StepProgress]: ...

    def finish(self, key: str, result: StepResult) -> None: ...


# ---------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------


@dataclass
class StepResult:
    """How one step went: status, measured wall and CPU seconds, and what it produced."""

    key: str
    title: str
    status: str = NOT_RUN
    message: str = ""
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Unavailable(Exception):
    """A step's module or extra is not installed here."""


@dataclass
class DemoState:
    """What the steps hand each other."""

    demo_dir: Path
    profile: Profile
    settings: Any
    ollama_host: str | None = None
    sample_dir: Path | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    imported: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    sft_run: Any = None
    rl_run: Any = None
    version: Any = None
    gate: dict[str, Any] | None = None
    examples: list[dict[str, Any]] = field(default_factory=list)
    deploy: dict[str, Any] = field(default_factory=dict)


def _safe_members(archive: tarfile.TarFile) -> list[tarfile.TarInfo]:
    members = []
    for member in archive.getmembers():
        name = Path(member.name)
        if name.is_absolute() or ".." in name.parts or not (member.isfile() or member.isdir()):
            raise DemoError(f"the sample archive holds an unsafe entry {member.name!r}; reinstall ccrl")
        members.append(member)
    return members


def step_samples(state: DemoState, progress: StepProgress) -> dict[str, Any]:
    """Unpack the shipped transcripts into ``<demo>/claude-projects`` (like ``~/.claude/projects``)."""
    if not SAMPLES_ARCHIVE.is_file():
        raise DemoError(f"the sample sessions are missing ({SAMPLES_ARCHIVE}); reinstall ccrl")
    target = state.demo_dir / "claude-projects"
    with tarfile.open(SAMPLES_ARCHIVE, "r:xz") as archive:
        members = _safe_members(archive)
        files = [m for m in members if m.isfile()]
        progress.update(total=len(files), completed=0)
        for number, member in enumerate(files, 1):
            dest = target / member.name
            dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            source = archive.extractfile(member)
            assert source is not None
            with open(dest, "wb") as out:
                shutil.copyfileobj(source, out)
            os.chmod(dest, 0o600)
            progress.update(completed=number)
    state.sample_dir = target
    state.manifest = json.loads(SAMPLES_MANIFEST.read_text()) if SAMPLES_MANIFEST.is_file() else {}
    projects = sorted(p for p in target.iterdir() if p.is_dir())
    return {"transcripts": len(files), "projects": len(projects), "path": str(target),
            "claude_code": state.manifest.get("claude_code"), "families": state.manifest.get("families", {})}


def step_import(state: DemoState, progress: StepProgress) -> dict[str, Any]:
    """``import_transcripts`` on each project folder of the copy (the ``ccrl import`` path)."""
    from ccrl.agent.capture.importer import import_transcripts

    assert state.sample_dir is not None
    projects = sorted(p for p in state.sample_dir.iterdir() if p.is_dir())
    totals = {"sessions": 0, "traces": 0, "tool_calls": 0, "tool_errors": 0, "skipped_lines": 0}
    errors: list[str] = []
    progress.update(total=len(projects), completed=0)
    for number, project in enumerate(projects, 1):
        report = import_transcripts(project, state.settings)
        for key in totals:
            totals[key] += getattr(report, key)
        errors += report.errors
        progress.update(completed=number, description=f"{totals['traces']} traces")
    if errors:
        raise RuntimeError("importing the samples failed: " + "; ".join(errors[:3]))
    state.imported = totals
    return totals


def step_dataset(state: DemoState, progress: StepProgress) -> dict[str, Any]:
    """``build_dataset`` with the demo's settings (the ``ccrl build-dataset`` path)."""
    from ccrl.agent.datasets.datasets import DatasetsMissing, build_dataset as build

    progress.update(total=None, description="filtering, converting and splitting by session")
    try:
        result = build(state.settings)
    except DatasetsMissing as exc:
        raise Unavailable(str(exc)) from None
    splits = result.stats.get("splits", {})
    state.dataset = {
        "id": result.id, "number": result.number, "path": result.path, "traces": result.trace_count,
        "dropped": {k: v for k, v in (result.stats.get("dropped") or {}).items() if v},
        **{f"{name}_{key}": split.get(key) for name, split in splits.items()
           for key in ("traces", "sessions", "next_action_decisions")},
    }
    return dict(state.dataset)


def _training_emit(progress: StepProgress, label: str) -> Callable[[dict[str, Any]], None]:
    def emit(event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "start":
            progress.update(description=f"run {event.get('run_id')} from {event.get('base_model')}")
            progress.note(f"{label} starts from {event.get('base_model')}: {event.get('reason')}")
        elif kind == "notice":
            progress.note(str(event.get("message", "")))
        elif kind == "train.start":
            progress.update(total=event.get("max_steps") or None, completed=event.get("step") or 0,
                            description="training")
        elif kind == "train.progress" and event.get("max_steps"):
            loss = event.get("loss")
            reward = event.get("reward")
            shown = (f"loss {loss:.3f}" if isinstance(loss, (int, float)) else
                     f"reward {reward:.3f}" if isinstance(reward, (int, float)) else "training")
            progress.update(total=event["max_steps"], completed=event.get("step") or 0, description=shown)
        elif kind == "train.progress" and "eval_loss" in event:
            progress.update(description=f"base model eval loss {event['eval_loss']:.3f}")
    return emit


def _train(state: DemoState, progress: StepProgress, phase: str, **kwargs: Any) -> Any:
    from ccrl.agent.training.training import run_training

    progress.update(total=None, description="loading the model")
    _quiet_library_progress()
    try:
        return run_training(phase, settings=state.settings, emit=_training_emit(progress, phase.upper()),
                            progress_bar=False, should_stop=lambda: False, **kwargs)
    except ModuleNotFoundError as exc:
        from ccrl.agent.daemon.steps import _EXTRA_FOR

        missing = (exc.name or "").split(".")[0]
        if missing in _EXTRA_FOR:
            raise Unavailable(f"the {phase.upper()} trainer needs '{missing}': pip install 'ccrl[{_EXTRA_FOR[missing]}]'") from None
        raise


def _quiet_library_progress() -> None:
    """The demo shows its own bars: no transformers/datasets bars (e.g. the one-time conversion
    of the embedded model) in between."""
    try:
        import datasets
        from transformers.utils import logging as hf_logging
    except ModuleNotFoundError:
        return
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()


def _metric_summary(run: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    metrics = run.metrics or {}
    return {"run_id": run.id, "base_model": run.base_model, **{k: metrics.get(k) for k in keys if k in metrics}}


def step_sft(state: DemoState, progress: StepProgress) -> dict[str, Any]:
    """SFT on the embedded default (``ccrl train --phase sft``), with the profile's budgets."""
    run = _train(state, progress, "sft", dataset_version_id=state.dataset.get("id"),
                 base_model=state.settings.train.base_model, max_steps=state.settings.train.max_steps,
                 options=dict(state.profile.sft))
    state.sft_run = run
    return _metric_summary(run, ("global_step", "max_steps", "train_examples", "eval_examples", "train_loss",
                                 "eval_loss_before", "eval_loss_after", "tokens_per_second", "train_runtime_s",
                                 "max_length", "device", "quant"))


def step_rl(state: DemoState, progress: StepProgress) -> dict[str, Any]:
    """GRPO on top of the SFT run (``ccrl train --phase rl``), with the profile's budgets."""
    if state.sft_run is None:
        raise _NotRun("needs the SFT run")
    run = _train(state, progress, "rl", dataset_version_id=state.dataset.get("id"), parent_run_id=state.sft_run.id,
                 max_steps=state.settings.train.max_steps, options=dict(state.profile.rl))
    state.rl_run = run
    return _metric_summary(run, ("algorithm", "global_step", "max_steps", "episodes", "num_generations",
                                 "heldout_reward_before", "heldout_reward_after", "heldout_prompts",
                                 "train_reward_first", "train_reward_last"))


class _NotRun(Exception):
    """A step that cannot run because an earlier one did not produce what it needs."""


def step_export(state: DemoState, progress: StepProgress) -> dict[str, Any]:
    """The final model (RL, else SFT) to a verified GGUF candidate (``ccrl export``)."""
    from ccrl.agent.release.versions import export_run

    run = state.rl_run or state.sft_run
    if run is None:
        raise _NotRun("needs a trained model")
    progress.update(total=None)

    def say(message: str) -> None:
        progress.update(description=message[:90])

    try:
        version = export_run(run.id, settings=state.settings, require_stop=state.profile.export_requires_stop,
                             progress=say)
    except ModuleNotFoundError as exc:
        raise Unavailable(f"the GGUF export needs '{exc.name}': pip install 'ccrl[gguf]'") from None
    state.version = version
    export = (version.metrics or {}).get("export", {})
    return {"model_version": version.number, "run_id": run.id, "phase": run.phase, "quant": version.quant,
            "quant_reason": export.get("quant_reason"), "size_bytes": version.size_bytes, "gguf": version.gguf_path,
            "sha256": version.gguf_sha256, "stop_check": state.profile.export_requires_stop}


def step_evaluate(state: DemoState, progress: StepProgress) -> dict[str, Any]:
    """The deployment gate: every compared model measured now on the held-out split."""
    from ccrl.agent.evaluation.gate import evaluate_candidate as evaluate

    run = state.rl_run or state.sft_run
    if run is None:
        raise _NotRun("needs a trained model")
    totals: dict[str, int] = {}

    def on_event(event: dict[str, Any]) -> None:
        subject = str(event.get("subject", ""))
        if event.get("event") == "eval.start":
            totals[subject] = int(event.get("total") or 0)
            progress.update(total=totals[subject], completed=0, description=f"{subject}")
        elif event.get("event") == "eval.progress":
            progress.update(total=event.get("total"), completed=event.get("done"),
                            description=f"{subject}")

    kwargs = {"model_version_id": state.version.id} if state.version is not None else {"training_run_id": run.id}
    progress.update(total=None, description="loading the held-out split")
    report = evaluate(settings=state.settings, progress=on_event, **kwargs)
    state.gate = report
    state.examples = decision_examples(state.settings, report)
    primary = {name: (s["metrics"].get("next_action") or {}).get("value") for name, s in report["subjects"].items()}
    counts = next((s["metrics"].get("counts") for s in report["subjects"].values() if s["metrics"].get("counts")), {})
    return {"passed": report["passed"], "reason": report["reason"], "judged": report.get("judged"),
            "next_action": primary, "decisions": counts.get("decisions"), "plans": counts.get("plans")}


def decision_examples(settings: Any, report: dict[str, Any], limit: int = 8) -> list[dict[str, Any]]:
    """A few held-out decisions side by side: Claude's action, the base model's and the judged
    model's (from the gate's recorded details), with the prompt of the trace they belong to."""
    from sqlmodel import select

    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import Evaluation, Trace

    ids = report.get("evaluation_ids") or {}
    judged = report.get("judged")
    details: dict[str, list[dict[str, Any]]] = {}
    with session_scope(settings) as session:
        for subject in ("base", judged, "bigram"):
            row = session.get(Evaluation, ids.get(subject)) if subject and ids.get(subject) else None
            if row is not None and row.details_path and Path(row.details_path).is_file():
                details[subject] = json.loads(Path(row.details_path).read_text()).get("decisions") or []
        mine = details.get(judged or "") or []
        trace_ids = {d.get("trace_id") for d in mine[:limit]}
        prompts = {t.id: t.prompt for t in session.exec(select(Trace).where(Trace.id.in_(trace_ids)))} if trace_ids else {}
    examples = []
    for index, decision in enumerate(mine[:limit]):
        def label(subject: str) -> list[str] | None:
            rows = details.get(subject) or []
            return rows[index].get("predicted") if index < len(rows) else None

        examples.append({"trace_id": decision.get("trace_id"), "turn": decision.get("turn"),
                         "prompt": prompts.get(decision.get("trace_id"), ""), "claude": decision.get("reference"),
                         "trained": decision.get("predicted"), "trained_agrees": bool(decision.get("next_action")),
                         "base": label("base"), "bigram": label("bigram")})
    return examples


def deploy_command(state: DemoState, *, force: bool = False) -> str:
    """The exact command that registers the demo's model version with Ollama later."""
    number = state.version.number if state.version is not None else 1
    env = [f"CCRL_HOME={shlex.quote(str(state.demo_dir))}",
           f"CCRL_CONFIG={shlex.quote(str(state.demo_dir / 'config.toml'))}"]
    # The host it was run against (--ollama-host or OLLAMA_HOST), so the command works as printed
    # from any shell.
    host = state.ollama_host or os.environ.get("OLLAMA_HOST")
    if host:
        env.append(f"OLLAMA_HOST={shlex.quote(host)}")
    command = f"{' '.join(env)} ccrl deploy --version {number} --name {DEMO_MODEL_NAME}"
    if force:
        command += " --force --reason 'trying the demo model'"
    return command


def step_deploy(state: DemoState, progress: StepProgress) -> dict[str, Any]:
    """Register the candidate as ``cc-claude-agent-demo`` (``ccrl deploy --name``) when Ollama is
    reachable and the gate passed; otherwise say why and give the exact command."""
    from ccrl.agent.operations.doctor import ollama_reachable
    from ccrl.agent.release.deploy import ollama_host

    if state.version is None:
        raise _NotRun("needs an exported model version")
    host = ollama_host(state.ollama_host)
    passed = bool((state.gate or {}).get("passed"))
    reachable, why = ollama_reachable(state.ollama_host)
    if not reachable:
        state.deploy = {"registered": False, "host": host, "command": deploy_command(state, force=not passed),
                        "why": f"Ollama is not reachable at {host} ({why})"}
        raise _NotRun(state.deploy["why"] + f"; once it runs: {state.deploy['command']}")
    if not passed:
        state.deploy = {"registered": False, "host": host, "command": deploy_command(state, force=True),
                        "why": "the evaluation gate did not pass: " + str((state.gate or {}).get("reason", "not evaluated"))}
        raise _NotRun(state.deploy["why"] + f"; to register it anyway: {state.deploy['command']}")
    from ccrl.agent.release.deploy import deploy_version

    progress.update(total=None)
    version = deploy_version(state.version.id, settings=state.settings, name=DEMO_MODEL_NAME, host=state.ollama_host,
                             progress=lambda m: progress.update(description=m[:90]))
    state.version = version
    state.deploy = {"registered": True, "host": host, "tag": version.ollama_tag,
                    "latest": f"{DEMO_MODEL_NAME}:latest", "run": f"ollama run {DEMO_MODEL_NAME}"}
    return dict(state.deploy)


STEPS: list[tuple[str, str, Callable[[DemoState, StepProgress], dict[str, Any]]]] = [
    ("samples", "Load the sample sessions", step_samples),
    ("import", "Import them (ccrl import)", step_import),
    ("dataset", "Build the dataset (ccrl build-dataset)", step_dataset),
    ("sft", "SFT with LoRA (ccrl train --phase sft)", step_sft),
    ("rl", "RL: GRPO on the behavioural reward (ccrl train --phase rl)", step_rl),
    ("export", "Export to GGUF (ccrl export)", step_export),
    ("evaluate", "Evaluate base vs trained vs baselines (the deployment gate)", step_evaluate),
    ("deploy", f"Register with Ollama as {DEMO_MODEL_NAME} (ccrl deploy)", step_deploy),
]


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


@dataclass
class DemoResult:
    """Everything the report shows (JSON-able through :meth:`as_dict`)."""

    demo_dir: str
    profile: str
    profile_description: str
    started_at: str
    finished_at: str = ""
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    steps: list[StepResult] = field(default_factory=list)
    budgets: list[dict[str, Any]] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)
    environment_ignored: list[str] = field(default_factory=list)
    kept_caches: list[str] = field(default_factory=list)
    samples: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    sft: dict[str, Any] = field(default_factory=dict)
    rl: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] | None = None
    examples: list[dict[str, Any]] = field(default_factory=list)
    deploy: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    report: str = ""

    def step(self, key: str) -> StepResult | None:
        return next((s for s in self.steps if s.key == key), None)

    @property
    def ok(self) -> bool:
        """True when no step failed (steps not run for a stated reason are not failures)."""
        return not any(s.status == FAILED for s in self.steps)

    def as_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))


def machine_info() -> dict[str, Any]:
    """The machine the demo ran on (the timings depend on it)."""
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "cpus": os.cpu_count(), "load_average_at_start": None}
    try:
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = bool(torch.cuda.is_available())
        info["torch_threads"] = torch.get_num_threads()
    except ModuleNotFoundError:
        info["torch"] = None
    return info


def _artifacts(state: DemoState) -> dict[str, str]:
    found: dict[str, str] = {}
    for label, run, key in (("loss_curve_png", state.sft_run, "loss_curve_png"),
                            ("reward_curve_png", state.rl_run, "reward_curve_png")):
        path = ((run.metrics or {}).get("artifacts") or {}).get(key) if run is not None else None
        if path and Path(path).is_file():
            found[label] = path
    if state.version is not None and state.version.gguf_path:
        found["gguf"] = state.version.gguf_path
    return found


def run_demo(demo_dir: Path, user_home: Path, ui: UI, *, profile: Profile | str = "demo",
             base_model: str | None = None, ollama_host: str | None = None, seed: int | None = None) -> DemoResult:
    """Run the whole loop in ``demo_dir`` (emptied first, caches kept) and write the report.

    ``base_model`` overrides the profile's (the test suite uses a tiny local model); ``seed``
    the trainers' seed (SFT and RL; the data split is the samples' own and does not move). Raises
    ``DemoError`` when the folder is unsafe; a failing step is recorded and the later steps that
    need it are reported as not run.
    """
    profile = PROFILES[profile] if isinstance(profile, str) else profile
    if base_model:
        profile = Profile(**{**asdict(profile), "train": {**profile.train, "base_model": base_model}})
    if seed is not None:
        profile = Profile(**{**asdict(profile), "sft": {**profile.sft, "seed": seed}, "rl": {**profile.rl, "seed": seed}})
    from ccrl.agent.core.lock import manual_command
    from ccrl.agent.store.db import ensure_private_dir

    demo_dir = demo_dir.expanduser().resolve()
    check_demo_dir(demo_dir, user_home)
    ensure_private_dir(demo_dir)
    (demo_dir / MARKER).write_text("This folder belongs to `ccrl demo`, which empties it on every run.\n")
    # The pipeline lock of the demo folder: a second `ccrl demo` in the same folder is refused
    # before anything is emptied (the lock file itself is kept by the reset).
    with manual_command("ccrl demo", wait=False, home=demo_dir):
        kept = reset_demo_dir(demo_dir)
        (demo_dir / "config.toml").write_text(config_toml(profile))
        os.chmod(demo_dir / "config.toml", 0o600)
        return _run_all(demo_dir, profile, ui, kept, ollama_host)


def _run_all(demo_dir: Path, profile: Profile, ui: UI, kept: list[str], ollama_host: str | None) -> DemoResult:
    from ccrl.agent.operations import demo_report

    started, cpu_start = time.monotonic(), _cpu_seconds()
    result = DemoResult(demo_dir=str(demo_dir), profile=profile.name, profile_description=profile.description,
                        started_at=datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
                        machine=machine_info(), kept_caches=kept)
    with demo_environment(demo_dir) as ignored:
        from ccrl.agent.core.config import get_settings

        result.environment_ignored = ignored
        settings = get_settings()
        cuda = bool(result.machine.get("cuda"))
        result.budgets = budgets_table(profile, cuda=cuda)
        state = DemoState(demo_dir, profile, settings, ollama_host=ollama_host)
        for key, title, fn in STEPS:
            result.steps.append(_run_step(key, title, fn, state, ui))
        result.samples = {**state.manifest, **(result.step("samples").summary if result.step("samples") else {}),
                          **state.imported}
        result.dataset = state.dataset
        result.sft = dict(result.step("sft").summary) if result.step("sft") else {}
        result.rl = dict(result.step("rl").summary) if result.step("rl") else {}
        result.gate = state.gate
        result.examples = state.examples
        result.deploy = state.deploy
        result.artifacts = _artifacts(state)
        report_step = StepResult("report", "Write the report")
        with ui.step("report", report_step.title) as progress:
            t0, c0 = time.monotonic(), _cpu_seconds()
            result.finished_at = datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")
            result.seconds = round(time.monotonic() - started, 1)
            result.cpu_seconds = round(_cpu_seconds() - cpu_start, 1)
            try:
                path = demo_report.write_report(result, demo_dir / "report", progress=progress)
                report_step.status, report_step.summary = DONE, {"path": str(path)}
                result.report = str(path)
            except Exception as exc:  # noqa: BLE001 - the run's results stay on disk either way
                report_step.status, report_step.message = FAILED, f"{type(exc).__name__}: {exc}"
            report_step.seconds = round(time.monotonic() - t0, 1)
            report_step.cpu_seconds = round(_cpu_seconds() - c0, 1)
        result.steps.append(report_step)
        ui.finish("report", report_step)
        (demo_dir / "report").mkdir(parents=True, exist_ok=True, mode=0o700)
        demo_report.write_json(result, demo_dir / "report" / "report.json")
    return result


def _run_step(key: str, title: str, fn: Callable[[DemoState, StepProgress], dict[str, Any]], state: DemoState,
              ui: UI) -> StepResult:
    result = StepResult(key, title)
    t0, c0 = time.monotonic(), _cpu_seconds()
    with ui.step(key, title) as progress:
        try:
            result.summary = fn(state, progress) or {}
            result.status = DONE
        except _NotRun as exc:
            result.status, result.message = NOT_RUN, str(exc)
        except Unavailable as exc:
            result.status, result.message = UNAVAILABLE, str(exc)
        except DemoError:
            raise
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded and shown; later steps say what they miss
            result.status = FAILED
            result.message = f"{type(exc).__name__}: {exc}"
            result.summary = {"traceback": traceback.format_exc(limit=8)}
    result.seconds = round(time.monotonic() - t0, 1)
    result.cpu_seconds = round(_cpu_seconds() - c0, 1)
    ui.finish(key, result)
    return result


__all__ = [
    "DEMO_MODEL_NAME",
    "DemoError",
    "DemoResult",
    "PROFILES",
    "Profile",
    "StepResult",
    "budget_values",
    "budgets_table",
    "check_demo_dir",
    "default_demo_dir",
    "demo_environment",
    "reset_demo_dir",
    "run_demo",
]
