"""The RL phase: GRPO (or RLOO) against the behavioural reward, on top of the SFT model.

What runs, and why not PPO: TRL 1.16 has no PPO trainer (``PPOTrainer`` went to
``trl.experimental`` and was deleted in TRL 1.13; it only took a neural reward model). The RL
phase runs TRL's ``GRPOTrainer``: PPO's clipped policy objective with group-relative
advantages (each completion's reward against the mean of the other completions for the same
prompt) instead of a learned value model, which also saves training and holding a second
network. ``RLOOTrainer`` (REINFORCE leave-one-out) is selectable with ``algorithm="rloo"``.
The five reward components (``ccrl.trainers.reward``) are its ``reward_funcs`` with their
weights, each logged as ``rewards/<name>/mean``.

``train_rl(prompts_path, output_dir, start_model, config)`` takes the RL prompt set of a
dataset version (``<version>/rl_prompts``: ``prompt`` messages, ``reference_signals``,
``reference_completion``; ``train`` and ``eval`` splits) and the SFT model (its merged folder;
an adapter folder is merged first), and returns artifacts and metrics; it never touches the
database. The SFT model is loaded as the base, a NEW LoRA adapter is trained on top of it, and
the KL term's reference is that SFT model (the adapter disabled), never the untuned base.
The prompts ask for whole plans in the workflow format; a model that learned only the
trajectory format answers with one decision, which the reward reads as such (``reward``'s format
factor). ``episodes`` counts prompts; each gets ``num_generations`` completions.

A group whose completions all score the same has no advantage and teaches nothing: TRL's share
of such groups (``frac_reward_zero_std``) is kept per step in the reward curve and, with the
count of such groups, in the metrics; the held-out reward of a fixed plan (the training split's
most common completion) sits beside the model's, so a constant output cannot pass for learning.

Output layout (``CCRL_HOME/models/rl/run-<id>/`` when the agent runs it)::

    start/                 the SFT model merged, when an adapter folder was given
    checkpoint-N/          Trainer checkpoints (adapter + optimizer + RNG + trainer_state.json)
    final/                 the RL LoRA adapter, tokenizer, chat template, ccrl_template.json
    merged/                SFT model + RL adapter merged in full precision, for export
    ccrl_run.json          inputs of the run and the held-out reward before training
    reward_curve.json/.png total and per-component reward by step, the share of groups without
                           reward spread, held-out before/after and the fixed plan's
    heldout.json           the held-out generations and their scores, before and after
    metrics.json           what train_rl returned

A run killed at any point resumes from its last complete checkpoint on the next start.
"""

from __future__ import annotations

import gc
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ccrl.trainers import reward as R
from ccrl.trainers.base_models import BaseModelError, cuda_available, load_for_training
from ccrl.trainers.chat_templates import attach_template, save_template
from ccrl.trainers.progress import is_terminal, json_line_emitter
from ccrl.trainers.sft import (
    SFTError,
    _peak_memory_bytes,
    _private_files,
    _quiet_libraries,
    _read_state,
    _StopOnRequest,
    _write_json,
    last_complete_checkpoint,
    resolve_quant,
    run_dir_lock,
)

RUN_STATE_FILE = "ccrl_run.json"
METRICS_FILE = "metrics.json"
HELDOUT_FILE = "heldout.json"
REWARD_CURVE_JSON = "reward_curve.json"
REWARD_CURVE_PNG = "reward_curve.png"
START_DIR = "start"
FINAL_DIR = "final"
MERGED_DIR = "merged"
ALGORITHMS = ("grpo", "rloo")
ZERO_SPREAD_KEY = "frac_reward_zero_std"
"""TRL's log key: share of the step's prompt groups whose rewards have zero standard deviation."""
PROMPT_COLUMNS = ("prompt", "reference_signals")
KEPT_COLUMNS = ("prompt", "reference_signals", "reference_completion", "trace_id")
WHAT_RUNS = (
    "The RL phase runs GRPO (TRL's GRPOTrainer): PPO's clipped objective with group-relative "
    "advantages instead of a value model. TRL 1.16 has no PPO trainer (removed in 1.13)."
)


class RLError(RuntimeError):
    """An RL run cannot start or continue; the message says what happened and what to do."""


class RLStopped(RuntimeError):
    """The run stopped early on request, after saving a checkpoint; starting it again resumes."""


@dataclass
class RLConfig:
    """Every setting of an RL run, with its default. Values left ``None`` are resolved for the
    machine at run time (GPU or CPU) and recorded in the run's metrics."""

    algorithm: str = "grpo"
    """``grpo`` (TRL's GRPOTrainer: PPO's clipped objective, group-relative advantages) or
    ``rloo`` (TRL's RLOOTrainer: REINFORCE with a leave-one-out baseline)."""
    episodes: int = 100
    """Prompts drawn for the run (the original design's ``num_episodes``), cycling through the
    train split in a seeded order; each gets ``num_generations`` completions."""
    num_generations: int | None = None
    """Completions per prompt (the group whose mean is the baseline; at least 2); ``None``: 8 on
    CUDA (TRL's default), 4 on a CPU."""
    prompts_per_step: int = 2
    """Prompts (groups) per optimizer step."""
    completions_per_forward: int | None = None
    """Completions in one forward/backward pass, accumulated up to the whole step (so the update
    is the same); ``None``: a prompt's whole group on CUDA, 1 on a CPU, where the activations of
    long prompts add up (SmolLM2 with four ~1,300-token sequences per pass peaked at 15 GB).
    Must divide ``num_generations * prompts_per_step``."""
    learning_rate: float = 1.4e-5
    """Learning rate of AdamW on the new adapter (the original design's PPO value)."""
    lr_scheduler_type: str = "constant"
    """Learning-rate schedule: constant, because an RL run is short and a decay would waste its
    second half."""
    beta: float = 0.04
    """Weight of the KL penalty against the SFT model (the new adapter disabled), which keeps the
    policy close to what it learned by imitation; 0 turns the reference off."""
    epsilon: float = 0.2
    """Clipping range of the policy ratio (PPO's epsilon)."""
    temperature: float = 1.0
    """Sampling temperature of the completions (training and held-out evaluation)."""
    top_p: float = 1.0
    """Nucleus sampling threshold of the completions."""
    max_completion_length: int | None = None
    """Tokens per completion (a whole plan); ``None``: ``gpu_max_completion_length`` on CUDA,
    ``cpu_max_completion_length`` elsewhere. A plan cut off loses its response and scores less."""
    gpu_max_completion_length: int = 1024
    """Default completion length on a GPU."""
    cpu_max_completion_length: int = 256
    """Default completion length on a CPU, where generating is the slow part of a step."""
    max_prompt_length: int | None = None
    """Prompts longer than this many tokens are left out (and counted); ``None``:
    ``gpu_max_prompt_length`` on CUDA, ``cpu_max_prompt_length`` elsewhere."""
    gpu_max_prompt_length: int = 3072
    """Default prompt length limit on a GPU."""
    cpu_max_prompt_length: int = 1024
    """Default prompt length limit on a CPU."""
    loss_type: str = "dapo"
    """GRPO only: how token losses are aggregated (TRL's default ``dapo``: over all active tokens
    of the batch, no length bias)."""
    scale_rewards: str = "group"
    """GRPO only: divide advantages by the group's reward standard deviation (``group``), the
    batch's (``batch``) or not at all (``none``)."""
    mask_truncated_completions: bool = False
    """Leave completions cut at ``max_completion_length`` out of the loss. Off: on a CPU most
    whole plans are cut, and the format factor already scores a missing response lower."""
    quant: str = "auto"
    """``auto`` (4-bit QLoRA base on CUDA, full precision elsewhere), ``4bit`` (CUDA only) or ``none``."""
    lora_r: int = 16
    """Rank of the new LoRA adapter."""
    lora_alpha: int = 32
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA branch: 0, so that the network that sampled a completion and the one
    that scores it for the policy ratio are the same."""
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Modules that get adapters: every attention and MLP projection of a Llama-architecture model."""
    reward_weights: dict[str, float] = field(default_factory=lambda: R.RewardWeights().as_dict())
    """Weight of each reward component (``[reward]`` in the config)."""
    max_steps: int = -1
    """Cap on optimizer steps; -1: ``ceil(episodes / prompts_per_step)``."""
    eval_prompts: int = 16
    """Held-out prompts (from the eval split) scored before and after the run; 0 skips it."""
    eval_generations: int = 4
    """Completions sampled per held-out prompt (seeded, the same before and after)."""
    eval_batch_size: int = 4
    """Held-out prompts generated together."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    gradient_checkpointing: bool | None = None
    """Recompute activations in the backward pass; ``None``: on with CUDA, off on a CPU."""
    logging_steps: int = 1
    """Log (progress line and reward-curve point) every this many optimizer steps."""
    save_steps: float = 0.1
    """Checkpoint every this many optimizer steps, or this fraction of the total when below 1."""
    save_total_limit: int = 2
    """Checkpoints kept (older ones are deleted)."""
    seed: int = 42
    """Seed for the prompt order, sampling and LoRA initialisation."""
    merge: bool = True
    """Write ``merged/`` (SFT model + RL adapter in full precision) after training, for export."""
    merge_dtype: str = "auto"
    """Precision of the merged model: ``auto`` (fp32 on a CPU, the base's float type on a GPU),
    ``float32`` or ``bfloat16``; never 4-bit."""
    cpu_threads: int | None = None
    """torch threads on a CPU; ``None`` leaves torch's default."""

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise RLError(f"unknown RL algorithm {self.algorithm!r}: use {' or '.join(ALGORITHMS)}")
        if self.episodes < 1 or self.prompts_per_step < 1:
            raise RLError("episodes and prompts_per_step must be at least 1")
        if self.num_generations is not None and self.num_generations < 2:
            raise RLError("num_generations must be at least 2: the group mean is each completion's baseline")
        try:
            R.RewardWeights.from_dict(self.reward_weights)
        except ValueError as exc:
            raise RLError(str(exc)) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (stored in the run row and ``ccrl_run.json``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RLConfig:
        """Build from a dict, rejecting unknown keys (a typo must not be silently ignored)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise RLError(f"unknown RL setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)

    @property
    def weights(self) -> R.RewardWeights:
        """The reward weights as ``RewardWeights``."""
        return R.RewardWeights.from_dict(self.reward_weights)


@dataclass
class RLResult:
    """What a finished run produced."""

    output_dir: Path
    adapter_dir: Path
    merged_dir: Path | None
    metrics: dict[str, Any]
    artifacts: dict[str, str]


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------


def _clean_prompt(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    # Arrow stores every message with every key (tool_calls, name, … as None); a prompt is
    # system + user text only.
    return [{"role": m["role"], "content": m.get("content") or ""} for m in messages]


def load_prompt_splits(prompts_path: Path) -> tuple[Any, Any]:
    """The RL prompt set's train and eval splits, with the columns the reward reads."""
    from datasets import DatasetDict, load_from_disk

    try:
        loaded = load_from_disk(str(prompts_path))
    except (FileNotFoundError, ValueError) as exc:
        raise RLError(f"cannot load the RL prompt set at {prompts_path}: {exc}. Rebuild it with `ccrl build-dataset`.") from exc
    if not isinstance(loaded, DatasetDict) or "train" not in loaded:
        raise RLError(f"the RL prompt set at {prompts_path} has no train split; rebuild it with `ccrl build-dataset`")
    train = loaded["train"]
    missing = [c for c in PROMPT_COLUMNS if c not in train.column_names]
    if missing:
        raise RLError(f"the RL prompt set at {prompts_path} lacks the column(s) {', '.join(missing)} "
                      f"(columns: {', '.join(train.column_names)}); rebuild it with `ccrl build-dataset`")

    def prepare(split: Any) -> Any:
        keep = [c for c in KEPT_COLUMNS if c in split.column_names]
        split = split.select_columns(keep)
        return split.map(lambda row: {"prompt": _clean_prompt(row["prompt"])})

    evals = loaded["eval"] if "eval" in loaded else None
    return prepare(train), (prepare(evals) if evals is not None and len(evals) else None)


def prompt_length(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    """Tokens of a prompt as the trainer renders it (chat template, generation prompt)."""
    return len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])


def episode_rows(n_prompts: int, count: int, seed: int) -> list[int]:
    """Indices of ``count`` episodes over ``n_prompts`` prompts: whole seeded permutations one
    after another, so every prompt is drawn equally often (within one) and in a varied order."""
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < count:
        block = list(range(n_prompts))
        rng.shuffle(block)
        order += block
    return order[:count]


# ---------------------------------------------------------------------------------------------
# Held-out reward
# ---------------------------------------------------------------------------------------------


def fixed_plan_reward(train_rows: Any, heldout_rows: list[dict[str, Any]], weights: R.RewardWeights) -> dict[str, Any] | None:
    """The held-out reward of a constant policy that always writes the training split's most
    common completion (``reward.fixed_plan``): the level a reward won by one fixed output
    reaches, for the run's metrics and reward curve. ``None`` without held-out prompts."""
    plan = R.fixed_plan(list(train_rows))
    if plan is None or not heldout_rows:
        return None
    refs = [R.make_reference(r["reference_signals"], r.get("reference_completion"), r["prompt"]) for r in heldout_rows]
    return {**R.score_rows([plan] * len(refs), refs, weights), "prompts": len(refs)}


def heldout_reward(model: Any, tokenizer: Any, rows: list[dict[str, Any]], *, generations: int,
                   max_new_tokens: int, temperature: float, top_p: float, seed: int, batch_size: int,
                   weights: R.RewardWeights) -> dict[str, Any]:
    """Mean reward (total and per component) of ``generations`` sampled completions per
    held-out prompt. Sampling is seeded, so before and after see the same random stream."""
    import torch

    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    eos = [tokenizer.eos_token_id]
    texts: list[str] = []
    refs: list[R.Reference] = []
    try:
        for start in range(0, len(rows), batch_size):
            batch = rows[start: start + batch_size]
            encoded = [tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True,
                                                     return_dict=True)["input_ids"] for r in batch]
            width = max(len(ids) for ids in encoded)
            input_ids = torch.tensor([[pad] * (width - len(ids)) + list(ids) for ids in encoded], device=device)
            mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], device=device)
            with torch.no_grad():
                out = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=True, temperature=temperature,
                                     top_p=top_p, max_new_tokens=max_new_tokens, num_return_sequences=generations,
                                     pad_token_id=pad, eos_token_id=eos, use_cache=True)
            texts += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
            for r in batch:
                ref = R.make_reference(r["reference_signals"], r.get("reference_completion"), r["prompt"])
                refs += [ref] * generations
    finally:
        if was_training:
            model.train()
    result = R.score_rows(texts, refs, weights)
    result["prompts"] = len(rows)
    result["samples"] = [{"trace_id": rows[i // generations].get("trace_id"), "completion": t}
                         for i, t in enumerate(texts)]
    return result


# ---------------------------------------------------------------------------------------------
# Progress and the reward curve
# ---------------------------------------------------------------------------------------------


def _reward_fields(logs: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in logs.items():
        if key == "reward":
            out["reward"] = value
        elif key.startswith("rewards/") and key.endswith("/mean"):
            out[key.split("/")[1]] = value
    return out


def curve_points(log_history: list[dict[str, Any]]) -> dict[str, Any]:
    """Total and per-component training reward by step from a trainer's ``log_history``, and
    TRL's share of groups whose completions all scored the same (``frac_reward_zero_std``)."""
    total = []
    components: dict[str, list[dict[str, float]]] = {name: [] for name in R.COMPONENTS}
    zero_spread = []
    for entry in log_history:
        if "reward" not in entry or "step" not in entry:
            continue
        total.append({"step": entry["step"], "reward": entry["reward"]})
        for name in R.COMPONENTS:
            value = entry.get(f"rewards/{name}/mean")
            if value is not None:
                components[name].append({"step": entry["step"], "reward": value})
        if entry.get(ZERO_SPREAD_KEY) is not None:
            zero_spread.append({"step": entry["step"], "share": entry[ZERO_SPREAD_KEY]})
    return {"total": total, "components": components, "zero_spread": zero_spread}


def zero_spread_groups(log_history: list[dict[str, Any]], groups_per_step: int) -> dict[str, Any]:
    """How many prompt groups had no reward spread (every completion scored the same, so every
    group-relative advantage was 0 and the group taught nothing), from TRL's per-log
    ``frac_reward_zero_std`` (the share over the groups of the steps since the previous log):
    ``{"frac_reward_zero_std", "zero_spread_groups", "reward_groups"}``; the share is ``None``
    when TRL logged none."""
    previous = 0
    groups = zero = 0.0
    for entry in log_history:
        share, step = entry.get(ZERO_SPREAD_KEY), entry.get("step")
        if share is None or step is None:
            continue
        n = (step - previous) * groups_per_step
        previous = step
        groups += n
        zero += share * n
    return {ZERO_SPREAD_KEY: zero / groups if groups else None, "zero_spread_groups": round(zero),
            "reward_groups": round(groups)}


def write_reward_curve(log_history: list[dict[str, Any]], out_dir: Path, *, heldout: dict[str, Any] | None = None,
                       png: bool = True) -> dict[str, str]:
    """Write ``reward_curve.json`` (and the PNG when asked); returns their paths."""
    out_dir = Path(out_dir)
    points = curve_points(log_history)
    points["heldout"] = heldout or {}
    json_path = out_dir / REWARD_CURVE_JSON
    _write_json(json_path, points)
    paths = {"reward_curve_json": str(json_path)}
    if png and points["total"]:
        import matplotlib

        matplotlib.use("Agg")  # no display under systemd or in tests
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
        ax.plot([p["step"] for p in points["total"]], [p["reward"] for p in points["total"]], lw=2.5, color="black",
                label="total (weighted)")
        for name, series in points["components"].items():
            if series:
                ax.plot([p["step"] for p in series], [p["reward"] for p in series], lw=1, alpha=0.8,
                        label=name.replace("_", " "))
        if points["zero_spread"]:
            ax.plot([p["step"] for p in points["zero_spread"]], [p["share"] for p in points["zero_spread"]], lw=1,
                    ls="--", color="grey", label="groups without reward spread (share)")
        last = points["total"][-1]["step"]
        fixed = ((heldout or {}).get("fixed_plan") or {}).get("reward")
        if fixed is not None:
            ax.axhline(fixed, lw=1, ls=":", color="tab:red", label="held-out, fixed plan (most common completion)")
        for key, step, marker in (("before", 0, "s"), ("after", last, "D")):
            value = ((heldout or {}).get(key) or {}).get("reward")
            if value is not None:
                ax.plot([step], [value], marker, color="tab:red", ms=8, label=f"held-out {key}")
        ax.set_xlabel("step")
        ax.set_ylabel("mean reward")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        png_path = out_dir / REWARD_CURVE_PNG
        fig.savefig(png_path)
        plt.close(fig)
        os.chmod(png_path, 0o600)
        paths["reward_curve_png"] = str(png_path)
    return paths


def _callbacks(emit: Callable[[dict[str, Any]], None], out_dir: Path, run: str, structured: bool) -> list[Any]:
    from transformers import TrainerCallback

    class RewardCurve(TrainerCallback):
        """Keeps ``reward_curve.json`` current, so a killed run keeps its curve so far."""

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, D102
            write_reward_curve(state.log_history, out_dir, png=False)

    class Progress(TrainerCallback):
        """One JSON line per logging step (no terminal): step, ETA and the rewards."""

        def __init__(self) -> None:
            self.t0 = 0.0
            self.step0 = 0

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001, D102
            self.t0, self.step0 = time.monotonic(), state.global_step
            emit({"event": "train.start", "phase": "rl", "run": run, "step": state.global_step,
                  "max_steps": state.max_steps})

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, D102
            logs = logs or {}
            if "reward" not in logs and "loss" not in logs:
                return  # the run's closing summary (runtime, samples/s): train.end says it
            done = state.global_step - self.step0
            eta = (time.monotonic() - self.t0) / done * (state.max_steps - state.global_step) if done > 0 else None
            event = {"event": "train.progress", "phase": "rl", "run": run, "step": state.global_step,
                     "max_steps": state.max_steps, "eta_s": round(eta, 1) if eta is not None else None}
            event.update({k: logs[k] for k in ("loss", "kl", "learning_rate", ZERO_SPREAD_KEY) if k in logs})
            event.update(_reward_fields(logs))
            emit(event)

        def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001, D102
            emit({"event": "train.end", "phase": "rl", "run": run, "step": state.global_step,
                  "max_steps": state.max_steps, "elapsed_s": round(time.monotonic() - self.t0, 1)})

    return [RewardCurve()] + ([Progress()] if structured else [])


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def resolve_start(start_model: Path | str, output_dir: Path, merge_dtype: str) -> str:
    """The full model the run starts from: ``start_model`` itself, or, for a LoRA adapter
    folder (an SFT run's ``final/``), that adapter merged into its base under ``start/``."""
    path = Path(start_model)
    if not path.is_dir():
        return str(start_model)  # a hub id
    path = path.resolve()
    if not (path / "adapter_config.json").is_file():
        return str(path)
    merged = output_dir / START_DIR
    if not (merged / "config.json").is_file():
        from ccrl.trainers.merge import MergeError, merge_adapter

        try:
            merge_adapter(path, merged, dtype=merge_dtype)
        except MergeError as exc:
            raise RLError(f"cannot merge the SFT adapter {path}: {exc}") from exc
    return str(merged)


def _trainer_args(config: RLConfig, output_dir: Path, *, cuda: bool, max_steps: int, num_generations: int,
                  max_completion_length: int, progress_bar: bool, per_forward: int | None = None) -> Any:
    import torch

    per_forward = per_forward or num_generations
    per_step = num_generations * config.prompts_per_step
    checkpointing = cuda if config.gradient_checkpointing is None else config.gradient_checkpointing
    common = dict(
        output_dir=str(output_dir),
        max_steps=max_steps,
        # One optimizer step = prompts_per_step groups, generated together and scored in passes of
        # per_forward completions (TRL generates once per step: steps_per_generation = accumulation).
        per_device_train_batch_size=per_forward,
        gradient_accumulation_steps=per_step // per_forward,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        max_grad_norm=config.max_grad_norm,
        num_generations=num_generations,
        max_completion_length=max_completion_length,
        temperature=config.temperature,
        top_p=config.top_p,
        beta=config.beta,
        epsilon=config.epsilon,
        reward_weights=config.weights.as_list(),
        mask_truncated_completions=config.mask_truncated_completions,
        disable_dropout=True,
        shuffle_dataset=False,  # episode_rows already fixed a seeded order (and resume relies on it)
        bf16=bool(cuda and torch.cuda.is_bf16_supported()),
        fp16=False,
        use_cpu=not cuda,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        seed=config.seed,
        data_seed=config.seed,
        report_to="none",
        disable_tqdm=not progress_bar,
        dataloader_num_workers=0,
    )
    if config.algorithm == "grpo":
        from trl import GRPOConfig

        return GRPOConfig(loss_type=config.loss_type, scale_rewards=config.scale_rewards,
                          **_checkpointing(GRPOConfig, checkpointing), **common)
    from trl import RLOOConfig

    return RLOOConfig(**_checkpointing(RLOOConfig, checkpointing), **common)


def _checkpointing(config_class: Any, enabled: bool) -> dict[str, bool]:
    """The activation-checkpointing switch under the name this transformers version takes:
    ``activation_checkpointing`` from 5.23 on (where ``gradient_checkpointing`` is a deprecated
    alias), ``gradient_checkpointing`` before it (GPU images often ship an older transformers)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(config_class)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": enabled}


def _trainer_class(algorithm: str) -> Any:
    if algorithm == "grpo":
        from trl import GRPOTrainer

        return GRPOTrainer
    from trl import RLOOTrainer

    return RLOOTrainer


def build_trainer(model: Any, tokenizer: Any, episodes: Any, args: Any, config: RLConfig, callbacks: list[Any], *,
                  progress_bar: bool) -> Any:
    """The configured ``GRPOTrainer`` (or ``RLOOTrainer``): a new LoRA adapter on ``model`` (the
    SFT model), the five reward functions with their weights. With a PEFT model and ``beta`` > 0
    TRL computes the KL reference with the adapter disabled, i.e. on the SFT model itself."""
    from peft import LoraConfig

    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.target_modules), task_type="CAUSAL_LM")
    trainer = _trainer_class(config.algorithm)(
        model=model, reward_funcs=list(R.REWARD_FUNCS), args=args, train_dataset=episodes,
        processing_class=tokenizer, peft_config=lora, callbacks=callbacks,
    )
    if not progress_bar:
        from transformers.trainer_callback import PrinterCallback

        # Structured progress lines replace the Trainer's printed dicts when there is no terminal.
        trainer.remove_callback(PrinterCallback)
    return trainer


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def train_rl(
    prompts_path: Path | str,
    output_dir: Path | str,
    start_model: Path | str,
    config: RLConfig | None = None,
    *,
    emit: Callable[[dict[str, Any]], None] | None = None,
    progress_bar: bool | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RLResult:
    """Train a new LoRA adapter on ``start_model`` (the SFT model) with GRPO/RLOO against the
    behavioural reward, on the RL prompt set at ``prompts_path``.

    Starting again with the same ``output_dir`` after a crash or a kill resumes from the last
    complete checkpoint and ends at the same total number of steps. ``emit`` receives notices
    and (without a terminal) progress events as dicts; by default they go to stderr as JSON
    lines. ``should_stop`` is polled after every optimizer step: when it returns true the run
    saves a checkpoint and raises ``RLStopped``. Raises ``RLError`` / ``BaseModelError`` with a
    message for every expected problem.
    """
    config = config or RLConfig()
    output_dir = Path(output_dir).resolve()
    prompts_path = Path(prompts_path).resolve()
    if Path(start_model).is_dir():
        start_model = str(Path(start_model).resolve())
    emit = emit or json_line_emitter()
    progress_bar = is_terminal() if progress_bar is None else progress_bar
    cuda = cuda_available()
    _quiet_libraries(progress_bar)
    try:
        four_bit, notice = resolve_quant(config.quant, cuda)
    except SFTError as exc:
        raise RLError(str(exc)) from None
    if notice:
        emit({"event": "notice", "message": notice})
    if config.cpu_threads and not cuda:
        import torch

        torch.set_num_threads(config.cpu_threads)

    with ExitStack() as held:
        try:
            held.enter_context(run_dir_lock(output_dir))
        except SFTError as exc:  # the same lock as SFT runs: its message is about this folder
            raise RLError(str(exc)) from None
        held.enter_context(_private_files())
        return _train_locked(prompts_path, output_dir, str(start_model), config, emit=emit,
                             progress_bar=progress_bar, should_stop=should_stop, cuda=cuda, four_bit=four_bit)


def _train_locked(prompts_path: Path, output_dir: Path, start_model: str, config: RLConfig, *,
                  emit: Callable[[dict[str, Any]], None], progress_bar: bool, should_stop: Callable[[], bool] | None,
                  cuda: bool, four_bit: bool) -> RLResult:
    from datasets import Dataset

    os.chmod(output_dir, 0o700)
    inputs = {"prompts_path": str(prompts_path), "start_model": start_model, "config": config.to_dict()}
    state = _read_state(output_dir)
    if state is not None and {k: state.get(k) for k in inputs} != inputs:
        raise RLError(f"{output_dir} holds a run with other inputs ({RUN_STATE_FILE}); resume it with the same "
                      "prompts, start model and settings, or use a new folder")
    state = state or dict(inputs)
    resume_from = last_complete_checkpoint(output_dir)
    num_generations = config.num_generations or (8 if cuda else 4)
    max_completion = config.max_completion_length or (config.gpu_max_completion_length if cuda else config.cpu_max_completion_length)
    max_prompt = config.max_prompt_length or (config.gpu_max_prompt_length if cuda else config.cpu_max_prompt_length)

    source = resolve_start(start_model, output_dir, config.merge_dtype)
    model, tokenizer = load_for_training(source, four_bit=four_bit)
    family = attach_template(tokenizer)

    train, evals = load_prompt_splits(prompts_path)
    lengths = [prompt_length(tokenizer, row["prompt"]) for row in train]
    fits = [i for i, n in enumerate(lengths) if n <= max_prompt]
    if not fits:
        raise RLError(f"every RL prompt is longer than max_prompt_length={max_prompt} tokens "
                      f"(shortest: {min(lengths)}); raise max_prompt_length")
    if len(fits) < len(train):
        emit({"event": "notice", "message": f"{len(train) - len(fits)} of {len(train)} RL prompts left out: longer "
              f"than max_prompt_length={max_prompt} tokens."})
    train = train.select(fits)
    heldout_rows: list[dict[str, Any]] = []
    if config.eval_prompts > 0:
        if evals is not None:
            heldout_rows = [r for r in evals if prompt_length(tokenizer, r["prompt"]) <= max_prompt][: config.eval_prompts]
        if not heldout_rows:
            emit({"event": "notice", "message": "No held-out RL prompt fits (the eval split is empty or too long): "
                  "no held-out reward this run."})

    steps = math.ceil(config.episodes / config.prompts_per_step)
    if config.max_steps > 0:
        steps = min(steps, config.max_steps)
    per_step = num_generations * config.prompts_per_step
    per_forward = config.completions_per_forward or (num_generations if cuda else 1)
    if per_forward < 1 or per_step % per_forward:
        raise RLError(f"completions_per_forward={per_forward} must divide num_generations x prompts_per_step = {per_step}")
    order = episode_rows(len(train), steps * config.prompts_per_step, config.seed)
    episodes = Dataset.from_list([train[i] for i in order])

    args = _trainer_args(config, output_dir, cuda=cuda, max_steps=steps, num_generations=num_generations,
                         max_completion_length=max_completion, progress_bar=progress_bar, per_forward=per_forward)
    stopper = _StopOnRequest(should_stop) if should_stop is not None else None
    callbacks = _callbacks(emit, output_dir, output_dir.name, structured=not progress_bar)
    if stopper is not None:
        callbacks.append(stopper.callback())
    trainer = build_trainer(model, tokenizer, episodes, args, config, callbacks, progress_bar=progress_bar)
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()

    def evaluate() -> dict[str, Any] | None:
        if not heldout_rows:
            return None
        return heldout_reward(trainer.model, tokenizer, heldout_rows, generations=config.eval_generations,
                              max_new_tokens=max_completion, temperature=config.temperature, top_p=config.top_p,
                              seed=config.seed, batch_size=config.eval_batch_size, weights=config.weights)

    heldout = {}
    if "heldout_before" not in state:
        # The new adapter starts as a no-op (LoRA B = 0): this is the SFT model's reward.
        before = evaluate()
        state["heldout_before"] = {k: v for k, v in before.items() if k != "samples"} if before else None
        if before:
            heldout["before"] = before
    _write_json(output_dir / RUN_STATE_FILE, state)
    if resume_from is not None:
        emit({"event": "notice", "message": f"Resuming from {resume_from.name}."})

    try:
        output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except Exception as exc:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            raise RLError(f"out of GPU memory while training ({exc}); lower num_generations or "
                          "max_completion_length, or use --quant 4bit") from exc
        raise
    if stopper is not None and stopper.stopped_at is not None and trainer.state.global_step < trainer.state.max_steps:
        raise RLStopped(f"stopped on request at step {stopper.stopped_at} of {trainer.state.max_steps}; "
                        f"checkpoint-{stopper.stopped_at} is saved and the next start resumes from it")
    after = evaluate()
    if after:
        heldout["after"] = after
    fixed = fixed_plan_reward(train, heldout_rows, config.weights)
    summary = {"before": state.get("heldout_before"), "after": ({k: v for k, v in after.items() if k != "samples"}
                                                               if after else None), "fixed_plan": fixed}
    if heldout:
        _write_json(output_dir / HELDOUT_FILE, heldout)

    log_history = list(trainer.state.log_history)
    artifacts = write_reward_curve(log_history, output_dir, heldout=summary, png=True)
    rewards = [p["reward"] for p in curve_points(log_history)["total"]]
    spread = zero_spread_groups(log_history, config.prompts_per_step)
    if spread["reward_groups"] and spread["zero_spread_groups"] == spread["reward_groups"]:
        emit({"event": "notice", "message": f"All {spread['reward_groups']} prompt groups of this run scored every "
              "completion the same: no advantage, no gradient; the RL adapter learned nothing (see the reward curve)."})
    adapter_dir = output_dir / FINAL_DIR
    tmp = output_dir / f".{FINAL_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))
    save_template(tokenizer, family.name, tmp, tools_in_training=False)
    shutil.rmtree(adapter_dir, ignore_errors=True)
    os.replace(tmp, adapter_dir)
    artifacts["adapter"] = str(adapter_dir)
    if heldout:
        artifacts["heldout"] = str(output_dir / HELDOUT_FILE)

    train_metrics = dict(output.metrics)
    quarter = max(1, len(rewards) // 4)
    metrics: dict[str, Any] = {
        "algorithm": config.algorithm,
        "device": "cuda" if cuda else "cpu",
        "quant": "4bit" if four_bit else "none",
        "template_family": family.name,
        "start_model": source,
        "num_generations": num_generations,
        "completions_per_forward": per_forward,
        "max_completion_length": max_completion,
        "max_prompt_length": max_prompt,
        "prompts": len(train),
        "prompts_left_out": len(lengths) - len(train),
        "episodes": len(order),
        "completions": len(order) * num_generations,
        "global_step": int(trainer.state.global_step),
        "max_steps": int(trainer.state.max_steps),
        "resumed_from": resume_from.name if resume_from else None,
        "train_reward_first": _mean(rewards[:quarter]),
        "train_reward_last": _mean(rewards[-quarter:]),
        **spread,
        "heldout_prompts": len(heldout_rows),
        "heldout_reward_before": (summary["before"] or {}).get("reward"),
        "heldout_reward_after": (summary["after"] or {}).get("reward"),
        "heldout_components_before": (summary["before"] or {}).get("components"),
        "heldout_components_after": (summary["after"] or {}).get("components"),
        "heldout_reward_fixed_plan": (fixed or {}).get("reward"),
        "reward_weights": config.weights.as_dict(),
        "train_runtime_s": float(train_metrics.get("train_runtime") or 0.0),
        "peak_memory_bytes": _peak_memory_bytes(cuda),
    }
    del trainer, model
    gc.collect()
    if cuda:
        import torch

        torch.cuda.empty_cache()

    merged_dir = None
    if config.merge:
        from ccrl.trainers.merge import merge_adapter

        merged_dir = merge_adapter(adapter_dir, output_dir / MERGED_DIR, base=source, dtype=config.merge_dtype)
        artifacts["merged"] = str(merged_dir)
    artifacts["chat_template"] = str(adapter_dir / "chat_template.jinja")
    _write_json(output_dir / METRICS_FILE, {"metrics": metrics, "artifacts": artifacts})
    artifacts["metrics"] = str(output_dir / METRICS_FILE)
    return RLResult(output_dir, adapter_dir, merged_dir, metrics, artifacts)


__all__ = [
    "ALGORITHMS",
    "BaseModelError",
    "RLConfig",
    "RLError",
    "RLResult",
    "RLStopped",
    "WHAT_RUNS",
    "build_trainer",
    "curve_points",
    "episode_rows",
    "heldout_reward",
    "load_prompt_splits",
    "train_rl",
    "write_reward_curve",
]


def _main(argv: list[str]) -> int:
    """``python -m ccrl.trainers.rl PROMPTS OUT START_MODEL [CONFIG_JSON]``: run in a child
    process; prints the result as JSON on stdout."""
    if len(argv) not in (3, 4):
        sys.stderr.write("usage: python -m ccrl.trainers.rl PROMPTS_DIR OUTPUT_DIR START_MODEL [CONFIG_JSON]\n")
        return 2
    try:
        config = RLConfig.from_dict(json.loads(argv[3])) if len(argv) == 4 else RLConfig()
        result = train_rl(argv[0], argv[1], argv[2], config)
    except (RLError, BaseModelError) as exc:
        sys.stderr.write(json.dumps({"event": "error", "message": str(exc)}) + "\n")
        return 1
    sys.stdout.write(json.dumps({"metrics": result.metrics, "artifacts": result.artifacts}, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
