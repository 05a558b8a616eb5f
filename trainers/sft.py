"""Supervised fine-tuning (behavioural cloning): a thin runner over TRL's ``SFTTrainer``.

``train_sft(dataset_path, output_dir, model_source, config)`` takes a dataset version (a
``datasets`` DatasetDict saved with ``save_to_disk``: a ``messages`` column, optionally a
``tools`` JSON-string column, ``train`` and ``eval`` splits) and returns artifacts and metrics.
It never touches the database; ``ccrl.agent.training.training`` records runs.

Output layout (``output_dir`` is ``CCRL_HOME/models/sft/run-<id>/`` when the agent runs it)::

    checkpoint-N/          Trainer checkpoints (adapter + optimizer + RNG + trainer_state.json)
    final/                 the LoRA adapter, tokenizer, chat_template.jinja, ccrl_template.json
    merged/                base + adapter merged in full precision, for export (same template)
    ccrl_run.json          inputs of the run (config, model, dataset) and the base eval loss
    loss_curve.json/.png   train and eval loss by step
    metrics.json           what train_sft returned

Defaults follow the original design (LoRA r16/alpha32 on every attention and MLP projection,
lr 2e-4, 3 epochs, batch 2 with gradient accumulation); 4-bit QLoRA only on CUDA.
"""

from __future__ import annotations

import fcntl
import gc
import json
import os
import re
import resource
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ccrl.trainers.base_models import BaseModelError, cuda_available, load_for_training, mixed_precision_bf16
from ccrl.trainers.chat_templates import attach_template, save_template
from ccrl.trainers.sft_windows import windowed_dataset
from ccrl.trainers.windows import CPU_BUDGET, DEFAULT_SHORTENED_RESULT_TOKENS, GPU_BUDGET
from ccrl.trainers.progress import (
    LossCurveCallback,
    StructuredProgressCallback,
    is_terminal,
    json_line_emitter,
    write_loss_curve,
)

RUN_STATE_FILE = "ccrl_run.json"
METRICS_FILE = "metrics.json"
LOCK_FILE = ".lock"
FINAL_DIR = "final"
MERGED_DIR = "merged"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
CPU_NOTICE = (
    "No CUDA GPU: training plain LoRA in full precision "
    "(4-bit QLoRA computes wrong gradients on a CPU)."
)


class SFTError(RuntimeError):
    """An SFT run cannot start or continue; the message says what happened and what to do."""


class SFTStopped(RuntimeError):
    """The run stopped early on request, after saving a checkpoint; starting it again resumes."""


class _StopOnRequest:
    """Trainer callback: when ``should_stop()`` turns true, save a checkpoint and end training."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop = should_stop
        self.stopped_at: int | None = None

    def callback(self) -> Any:
        from transformers import TrainerCallback

        outer = self

        class StopOnRequest(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, D102
                from ccrl.trainers.distributed import all_ranks_agree

                if all_ranks_agree(outer.should_stop()):
                    control.should_save = True
                    control.should_training_stop = True
                    outer.stopped_at = state.global_step
                return control

        return StopOnRequest()


@dataclass
class SFTRunConfig:
    """Every setting of an SFT run, with its default. Values not set (``None``) are resolved
    for the machine at run time (GPU or CPU) and recorded in the run's metrics."""

    quant: str = "auto"
    """``auto`` (4-bit QLoRA on CUDA, plain LoRA elsewhere), ``4bit`` (CUDA only; an error
    without it) or ``none`` (plain LoRA on a full-precision base)."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA branch. 0 by default: any dropout keeps a copy of every adapted
    layer's input for the backward pass (measured: 8.7 → 6.6 GiB peak for SmolLM2 at 2 x 1024
    tokens on a CPU), and a few epochs over a small dataset gain little from it."""
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Modules that get adapters: every attention and MLP projection of a Llama-architecture model."""
    learning_rate: float = 2e-4
    """Peak learning rate of AdamW."""
    num_train_epochs: float = 3.0
    """Passes over the training split (ignored when ``max_steps`` > 0)."""
    max_steps: int = -1
    """Total optimizer steps; -1 derives it from the epochs and the dataset size."""
    per_device_train_batch_size: int = 2
    """Sequences per forward pass."""
    gradient_accumulation_steps: int = 4
    """Forward passes per optimizer step (effective batch = batch size x this)."""
    per_device_eval_batch_size: int = 2
    """Sequences per forward pass when evaluating."""
    max_length: int | None = None
    """Tokens per example, the decision windows' budget (nothing is cut at token level: every
    decision is trained in a window of at most this many tokens); ``None``: ``gpu_max_length``
    on CUDA, ``cpu_max_length`` elsewhere."""
    gpu_max_length: int = GPU_BUDGET
    """Default sequence length on a GPU: agent traces are long (TRL's 1024 would cut most)."""
    cpu_max_length: int = CPU_BUDGET
    """Default sequence length on a CPU, where attention cost makes 4096 impractical."""
    packing: bool = False
    """Pack several conversations into one sequence (faster on a GPU; masks stay per turn)."""
    lr_scheduler_type: str = "cosine"
    """Learning-rate schedule after warmup."""
    warmup_ratio: float = 0.03
    """Fraction of the total steps spent warming up the learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass instead of keeping them. On a GPU it is what
    lets 4096-token sequences fit; on a CPU it costs about 15% more time and saves about a third
    of the memory (measured for SmolLM2 at 2 x 1024 tokens: 7.3 → 5.0 GiB peak), which decides
    whether training fits next to everything else on a small machine."""
    logging_steps: int = 1
    """Log (progress line and loss-curve point) every this many optimizer steps."""
    save_steps: float = 0.1
    """Checkpoint every this many optimizer steps, or this fraction of the total when below 1."""
    save_total_limit: int = 2
    """Checkpoints kept (older ones are deleted)."""
    eval_each_epoch: bool = True
    """Evaluate on the eval split at the end of every epoch (base and final eval always run)."""
    max_eval_examples: int | None = None
    """Evaluate on at most this many eval rows (the first ones, in the dataset's order, so every
    run of a version sees the same rows); ``None``: the whole eval split. Each evaluation is a
    full forward pass over them, run at least twice per run (before and after training)."""
    seed: int = 42
    """Seed for data order, dropout and LoRA initialisation."""
    use_tools_column: bool = False
    """Render the dataset's ``tools`` JSON schemas into the system turn. Off by default: the
    dataset's system prompt already names every tool and the call syntax, the model learns the
    arguments from the calls themselves, and the schemas of Claude Code's ~18 tools take about
    1,400 tokens of every example (more than the whole CPU sequence length)."""
    formats: list[str] | None = None
    """Dataset formats to train on (the ``format`` column: ``trajectory``, ``workflow``);
    ``None`` trains on every row, i.e. the dataset version's mixture."""
    merge: bool = True
    """Write ``merged/`` (base + adapter in full precision) after training, for export."""
    merge_dtype: str = "auto"
    """Precision of the merged model: ``auto`` (fp32 on a CPU, the base's float type on a GPU),
    ``float32`` or ``bfloat16``; never 4-bit."""
    cpu_bf16: bool | None = None
    """bf16 mixed precision (autocast) on a CPU; ``None``: on when the CPU multiplies bf16 in
    hardware (AVX-512 BF16 or AMX), where it trains 2-2.5x faster than fp32. Weights and adapter stay fp32."""
    cpu_threads: int | None = None
    """torch threads on a CPU; ``None`` leaves torch's default."""
    dataset_num_proc: int | None = None
    """Processes for TRL's preparation of the tokenized examples; ``None``: in-process."""
    window_result_tokens: int = DEFAULT_SHORTENED_RESULT_TOKENS
    """Decision windows (``trainers/windows.py``): tool results of older turns in a window are
    shortened to about this many tokens, with a marker, before older turns are dropped."""
    window_max_targets: int | None = None
    """Decisions trained per example at most; ``None``: as many consecutive decisions as fill
    half the room beside the system prompt and the user's prompt (the rest is their history);
    1: one decision per example."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (stored in the run row and ``ccrl_run.json``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SFTRunConfig":
        """Build from a dict, rejecting unknown keys (a typo must not be silently ignored)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SFTError(f"unknown SFT setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)


@dataclass
class SFTResult:
    """What a finished run produced."""

    output_dir: Path
    adapter_dir: Path
    merged_dir: Path | None
    metrics: dict[str, Any]
    artifacts: dict[str, str]


def resolve_quant(requested: str, cuda: bool) -> tuple[bool, str | None]:
    """``(use_4bit, notice)`` for a ``--quant`` request on this machine."""
    if requested not in ("auto", "4bit", "none"):
        raise SFTError(f"unknown quantization {requested!r}: use auto, 4bit or none")
    if requested == "4bit":
        if not cuda:
            raise SFTError(
                "--quant 4bit needs a CUDA GPU and none is available: 4-bit (QLoRA) training on a CPU "
                "computes wrong gradients. Use --quant none (plain LoRA) or run on a GPU machine."
            )
        return True, None
    if requested == "auto":
        return (True, None) if cuda else (False, CPU_NOTICE)
    return False, None


@contextmanager
def _private_files() -> Iterator[None]:
    """Everything the run writes (checkpoints, adapters, merged weights) is private: 0600/0700."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


@contextmanager
def run_dir_lock(output_dir: Path, *, hold: bool = True) -> Iterator[None]:
    """Hold the run folder's lock for the whole run. The kernel drops it when the process dies
    (SIGKILL included), which is how the agent tells a dead run from a running one. In a
    launched run only rank 0 holds it (``hold=False`` elsewhere): the ranks are one run."""
    output_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not hold:
        yield
        return
    handle = open(output_dir / LOCK_FILE, "a")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SFTError(f"another process is training into {output_dir}") from None
        yield
    finally:
        handle.close()


def run_dir_is_locked(output_dir: Path) -> bool:
    """Whether a live process holds ``output_dir``'s run lock."""
    path = Path(output_dir) / LOCK_FILE
    if not path.exists():
        return False
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def _checkpoint_complete(path: Path) -> bool:
    # The Trainer writes trainer_state.json last; a checkpoint cut off by a kill lacks it or
    # holds a truncated one.
    state = path / "trainer_state.json"
    try:
        json.loads(state.read_text())
    except (OSError, ValueError):
        return False
    return any((path / name).is_file() for name in ("adapter_model.safetensors", "model.safetensors"))


def last_complete_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete ``checkpoint-N`` in ``output_dir``; incomplete newer ones are removed
    (they are this run's own half-written output and would otherwise shadow the good one)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    found = sorted(
        ((int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))),
        reverse=True,
    )
    for _, path in found:
        if _checkpoint_complete(path):
            return path
        shutil.rmtree(path, ignore_errors=True)
    return None


def _load_splits(dataset_path: Path, use_tools: bool, formats: list[str] | None = None) -> tuple[Any, Any]:
    from datasets import Dataset, DatasetDict, load_from_disk

    try:
        loaded = load_from_disk(str(dataset_path))
    except (FileNotFoundError, ValueError) as exc:
        raise SFTError(f"cannot load the dataset at {dataset_path}: {exc}. Rebuild it with `ccrl build-dataset`.") from exc
    if isinstance(loaded, DatasetDict):
        if "train" not in loaded:
            raise SFTError(f"the dataset at {dataset_path} has no train split (splits: {', '.join(loaded)})")
        train = loaded["train"]
        evals = next((loaded[name] for name in ("eval", "validation", "test") if name in loaded), None)
    elif isinstance(loaded, Dataset):
        train, evals = loaded, None
    else:  # pragma: no cover - load_from_disk returns one of the two
        raise SFTError(f"unexpected dataset type at {dataset_path}: {type(loaded).__name__}")
    if "messages" not in train.column_names:
        raise SFTError(
            f"the dataset at {dataset_path} has no `messages` column (columns: {', '.join(train.column_names)}): "
            "SFT trains on conversations"
        )
    if formats is not None:
        if "format" not in train.column_names:
            raise SFTError(f"formats={formats} asked, but the dataset at {dataset_path} has no `format` column")
        wanted = set(formats)
        train = train.filter(lambda row: row["format"] in wanted)
        if evals is not None:
            evals = evals.filter(lambda row: row["format"] in wanted)
    keep = ["messages"] + (["tools"] if use_tools and "tools" in train.column_names else [])
    train = train.select_columns(keep)
    if evals is not None:
        evals = evals.select_columns([c for c in keep if c in evals.column_names])
        if len(evals) == 0:
            evals = None
    if len(train) == 0:
        raise SFTError(f"the train split of {dataset_path} is empty: nothing to learn from")
    return train, evals


def _final_eval_loss(trainer: Any) -> float:
    """The eval loss of the final weights: the end-of-epoch evaluation's when it ran at the last
    step (evaluating the same weights twice costs a full pass over the eval split), else a new one."""
    step = trainer.state.global_step
    for entry in reversed(trainer.state.log_history):
        if "eval_loss" in entry:
            if entry.get("step") == step:
                return float(entry["eval_loss"])
            break
    return float(trainer.evaluate()["eval_loss"])


def _peak_memory_bytes(cuda: bool) -> int:
    if cuda:
        import torch

        return int(torch.cuda.max_memory_allocated())
    # ru_maxrss is in KiB on Linux: the process's resident-set high-water mark.
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _read_state(output_dir: Path) -> dict[str, Any] | None:
    path = output_dir / RUN_STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def _quiet_libraries(progress_bar: bool) -> None:
    """Keep the output to our progress and notices: no library progress bars without a
    terminal, no deprecation chatter from transformers/TRL (their warnings still print)."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|trl|peft)(\.|$)")
    if not progress_bar:
        import datasets
        from transformers.utils import logging as hf_logging

        datasets.disable_progress_bars()
        hf_logging.disable_progress_bar()


def build_trainer(
    train: Any,
    evals: Any,
    output_dir: Path,
    model_source: str,
    config: SFTRunConfig,
    *,
    cuda: bool,
    four_bit: bool,
    progress_bar: bool,
    callbacks: list[Any] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The configured ``SFTTrainer`` and the settings resolved for this machine (and, under
    ``accelerate launch``, for this rank)."""
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from ccrl.trainers.distributed import rank_info

    rank = rank_info()
    max_length = config.max_length or (config.gpu_max_length if cuda else config.cpu_max_length)
    checkpointing = config.gradient_checkpointing
    bf16 = mixed_precision_bf16(cuda, config.cpu_bf16)
    args = SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_eval_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        max_length=max_length,
        packing=config.packing,
        # The examples come tokenized, with the loss mask on their target turns (sft_windows).
        assistant_only_loss=False,
        gradient_checkpointing=checkpointing,
        bf16=bf16,
        fp16=False,
        use_cpu=not cuda,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        eval_strategy="epoch" if (evals is not None and config.eval_each_epoch) else "no",
        seed=config.seed,
        data_seed=config.seed,
        report_to="none",
        disable_tqdm=not progress_bar,
        include_num_input_tokens_seen="non_padding",
        dataset_num_proc=config.dataset_num_proc,
        dataloader_num_workers=0,
        # DDP: every LoRA weight takes part in every forward pass (adapters on every projection),
        # so DDP need not walk the autograd graph looking for unused ones each step (transformers
        # turns that on by default, and torch warns that it costs time).
        **({"ddp_find_unused_parameters": False} if rank.strategy == "ddp" else {}),
    )
    # The model is loaded after SFTConfig exists: under DeepSpeed ZeRO-3 the arguments register
    # the DeepSpeed config, and only then does from_pretrained partition the weights as it loads.
    model, tokenizer = load_for_training(model_source, four_bit=four_bit, strategy=rank.strategy,
                                         local_rank=rank.local_rank)
    family = attach_template(tokenizer)
    windows: dict[str, Any] = {}
    splits = {"train": train, "eval": evals}
    for name, rows in list(splits.items()):
        if rows is not None:
            splits[name], stats = windowed_dataset(
                rows, tokenizer, max_length, use_tools="tools" in rows.column_names,
                shortened_result_tokens=config.window_result_tokens, max_targets=config.window_max_targets)
            windows[name] = stats.to_dict()
    train, evals = splits["train"], splits["eval"]
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        task_type="CAUSAL_LM",
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=evals,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=callbacks or [],
    )
    if rank.strategy == "fsdp":
        _wrap_lora_separately(trainer)
    if not progress_bar:
        from transformers.trainer_callback import PrinterCallback

        # Structured progress lines replace the Trainer's printed dicts when there is no terminal.
        trainer.remove_callback(PrinterCallback)
    resolved = {
        # From the Trainer's process group, not the launcher's environment: this is what took part.
        "world_size": int(trainer.args.world_size),
        "distributed": rank.strategy,
        "distributed_type": str(trainer.accelerator.distributed_type).rsplit(".", 1)[-1],
        "device": "cuda" if cuda else "cpu",
        "quant": "4bit" if four_bit else "none",
        "max_length": max_length,
        "gradient_checkpointing": checkpointing,
        "bf16": bf16,
        "template_family": family.name,
        "windows": windows,
    }
    return trainer, resolved


def _wrap_lora_separately(trainer: Any) -> None:
    """FSDP with ``use_orig_params: false`` flattens each wrapped unit's parameters into one
    tensor, which must be all trainable or all frozen. Wrapping only the decoder layers would mix
    the frozen (4-bit) weights with their LoRA adapters ("Must flatten tensors with uniform
    requires_grad", measured on an H100), so every module with trainable weights gets a unit of
    its own: PEFT's wrap policy, which transformers 4.x installed itself and 5.x no longer does."""
    from peft.utils.other import fsdp_auto_wrap_policy

    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    if plugin is not None:
        plugin.auto_wrap_policy = fsdp_auto_wrap_policy(trainer.model)


def _absolute_inputs(dataset_path: Path | str, output_dir: Path | str, model_source: str) -> tuple[Path, Path, str]:
    """The run's inputs as absolute paths (a hub id stays as it is): the adapter records its base
    by ``model_source``, and launched ranks start from another working directory."""
    if Path(model_source).is_dir():
        model_source = str(Path(model_source).resolve())
    return Path(dataset_path).resolve(), Path(output_dir).resolve(), model_source


def train_sft(
    dataset_path: Path | str,
    output_dir: Path | str,
    model_source: str,
    config: SFTRunConfig | None = None,
    *,
    emit: Callable[[dict[str, Any]], None] | None = None,
    progress_bar: bool | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SFTResult:
    """Fine-tune ``model_source`` (a local folder or a hub id) on the dataset at ``dataset_path``.

    Starting again with the same ``output_dir`` after a crash or a kill resumes from the last
    complete checkpoint and ends at the same total number of steps. ``emit`` receives notices
    and (without a terminal) progress events as dicts; by default they go to stderr as JSON
    lines. ``should_stop`` is polled after every optimizer step: when it returns true the run
    saves a checkpoint and raises ``SFTStopped`` (the next start resumes from there).
    Raises ``SFTError`` / ``BaseModelError`` with a message for every expected problem.

    Under ``accelerate launch`` (``train_sft_launched``) every rank runs this function; rank 0
    alone writes the run's files (state, loss curve, final adapter, merged model, metrics) and
    emits events, and the others return their metrics with no artifacts.
    """
    from ccrl.trainers.distributed import rank_info

    rank = rank_info()
    config = config or SFTRunConfig()
    dataset_path, output_dir, model_source = _absolute_inputs(dataset_path, output_dir, model_source)
    emit = emit or json_line_emitter()
    progress_bar = is_terminal() if progress_bar is None else progress_bar
    if not rank.is_main:
        emit, progress_bar = (lambda event: None), False  # other ranks stay silent
    cuda = cuda_available()
    _quiet_libraries(progress_bar)
    four_bit, notice = resolve_quant(config.quant, cuda)
    if notice:
        emit({"event": "notice", "message": notice})
    if config.cpu_threads and not cuda:
        import torch

        torch.set_num_threads(config.cpu_threads)

    with _private_files(), run_dir_lock(output_dir, hold=rank.is_main):
        if rank.is_main:
            os.chmod(output_dir, 0o700)
        inputs = {"dataset_path": str(dataset_path), "model_source": model_source, "config": config.to_dict()}
        state = _read_state(output_dir)
        if state is not None and {k: state.get(k) for k in inputs} != inputs:
            raise SFTError(
                f"{output_dir} holds a run with other inputs ({RUN_STATE_FILE}); "
                "resume it with the same dataset, model and settings, or use a new folder"
            )
        resume_from = last_complete_checkpoint(output_dir)
        if state is None:
            state = dict(inputs)

        train, evals = _load_splits(dataset_path, config.use_tools_column, config.formats)
        if evals is not None and config.max_eval_examples is not None and len(evals) > config.max_eval_examples:
            evals = evals.select(range(config.max_eval_examples))
        callbacks: list[Any] = [LossCurveCallback(output_dir)] if rank.is_main else []
        stopper = _StopOnRequest(should_stop) if should_stop is not None else None
        if stopper is not None:
            callbacks.append(stopper.callback())
        if not progress_bar:
            callbacks.append(StructuredProgressCallback(emit, run=output_dir.name))
        trainer, resolved = build_trainer(
            train, evals, output_dir, model_source, config,
            cuda=cuda, four_bit=four_bit, progress_bar=progress_bar, callbacks=callbacks,
        )
        if cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        kept_train = len(trainer.train_dataset)
        train_windows = resolved["windows"]["train"]
        untrained = train_windows["decisions"] - train_windows["decisions_trained"]
        if kept_train == 0:
            raise SFTError(
                f"no decision of the training split fits a window of max_length={resolved['max_length']} tokens: "
                "the system prompt alone is longer. Raise max_length (or drop the tools column)."
            )
        if evals is not None and len(trainer.eval_dataset) == 0:
            emit({"event": "notice", "message": f"No eval decision fits a window of max_length={resolved['max_length']} "
                  "tokens: no eval loss this run."})
            evals = None
            trainer.eval_dataset = None
            from transformers.trainer_utils import IntervalStrategy

            trainer.args.eval_strategy = IntervalStrategy.NO
        if untrained:
            emit({"event": "notice", "message": f"{untrained} of {train_windows['decisions']} training decisions are not "
                  f"trained: the system prompt leaves them no room in max_length={resolved['max_length']} tokens."})

        if evals is not None and "eval_loss_before" not in state and rank.strategy in ("fsdp", "zero3"):
            # Evaluating first would shard the model without its optimizer: the Trainer then takes
            # it as already wrapped and never creates one (transformers 5.17, on an H100).
            emit({"event": "notice", "message": f"The starting model's eval loss is not measured under {rank.strategy} "
                  "(an evaluation before training would shard the model without its optimizer)."})
        elif evals is not None and "eval_loss_before" not in state:
            # The adapter starts as a no-op (LoRA B = 0), so this is the starting model's loss.
            state["eval_loss_before"] = trainer.evaluate()["eval_loss"]
        if rank.is_main:
            _write_json(output_dir / RUN_STATE_FILE, state)

        if resume_from is not None:
            emit({"event": "notice", "message": f"Resuming from {resume_from.name}."})
        cpu_start = time.process_time()
        try:
            output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        except Exception as exc:
            import torch

            if isinstance(exc, torch.cuda.OutOfMemoryError):
                raise SFTError(
                    f"out of GPU memory while training ({exc}); lower max_length or the batch size, "
                    "or use --quant 4bit"
                ) from exc
            raise
        if stopper is not None and stopper.stopped_at is not None and trainer.state.global_step < trainer.state.max_steps:
            raise SFTStopped(
                f"stopped on request at step {stopper.stopped_at} of {trainer.state.max_steps}; "
                f"checkpoint-{stopper.stopped_at} is saved and the next start resumes from it"
            )
        train_cpu = time.process_time() - cpu_start
        train_metrics = dict(output.metrics)
        eval_after = _final_eval_loss(trainer) if evals is not None else None
        tokens_total = int(trainer.state.num_input_tokens_seen)
        tokens_session = tokens_total - int(getattr(trainer, "_initial_num_input_tokens_seen", 0) or 0)
        runtime = float(train_metrics.get("train_runtime") or 0.0)

        log_history = list(trainer.state.log_history)
        if "eval_loss_before" in state:
            log_history.insert(0, {"step": 0, "eval_loss": state["eval_loss_before"]})
        if eval_after is not None and not any(
            e.get("step") == trainer.state.global_step and "eval_loss" in e for e in log_history
        ):
            log_history.append({"step": trainer.state.global_step, "eval_loss": eval_after})
        artifacts = write_loss_curve(log_history, output_dir, png=True) if rank.is_main else {}

        adapter_dir = output_dir / FINAL_DIR
        tmp = output_dir / f".{FINAL_DIR}.tmp"
        if rank.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        # Every rank calls save_model: under FSDP/ZeRO-3 the weights are gathered from all of
        # them; only rank 0 writes the file.
        trainer.save_model(str(tmp))
        if rank.is_main:
            save_template(trainer.processing_class, resolved["template_family"], tmp,
                          tools_in_training="tools" in train.column_names)
            shutil.rmtree(adapter_dir, ignore_errors=True)
            os.replace(tmp, adapter_dir)
            artifacts["adapter"] = str(adapter_dir)

        metrics: dict[str, Any] = {
            **resolved,
            "model_source": model_source,
            "train_examples": kept_train,
            "train_conversations": len(train),
            "train_decisions": train_windows["decisions"],
            "train_decisions_trained": train_windows["decisions_trained"],
            "eval_examples": len(trainer.eval_dataset) if evals is not None else 0,
            "global_step": int(trainer.state.global_step),
            "max_steps": int(trainer.state.max_steps),
            "epochs": float(trainer.state.epoch or 0.0),
            "resumed_from": resume_from.name if resume_from else None,
            "train_loss": train_metrics.get("train_loss"),
            "eval_loss_before": state.get("eval_loss_before"),
            "eval_loss_after": eval_after,
            "train_runtime_s": runtime,
            "train_cpu_s": round(train_cpu, 3),
            "train_tokens": tokens_total,
            "tokens_per_second": (tokens_session / runtime) if runtime > 0 else None,
            "peak_memory_bytes": _peak_memory_bytes(cuda),
        }
        del trainer
        gc.collect()
        if cuda:
            import torch

            torch.cuda.empty_cache()

        if not rank.is_main:
            return SFTResult(output_dir, adapter_dir, None, metrics, {})
        merged_dir = None
        if config.merge:
            from ccrl.trainers.merge import merge_adapter

            merged_dir = merge_adapter(adapter_dir, output_dir / MERGED_DIR, base=model_source, dtype=config.merge_dtype)
            artifacts["merged"] = str(merged_dir)
        artifacts["chat_template"] = str(adapter_dir / "chat_template.jinja")
        _write_json(output_dir / METRICS_FILE, {"metrics": metrics, "artifacts": artifacts})
        artifacts["metrics"] = str(output_dir / METRICS_FILE)
        return SFTResult(output_dir, adapter_dir, merged_dir, metrics, artifacts)


__all__ = [
    "BaseModelError",
    "SFTError",
    "SFTResult",
    "SFTRunConfig",
    "SFTStopped",
    "last_complete_checkpoint",
    "resolve_quant",
    "run_dir_is_locked",
    "train_sft",
    "train_sft_launched",
]


EXIT_STOPPED = 4
"""``python -m ccrl.trainers.sft`` run alone: stopped on request (a checkpoint is saved)."""


def train_sft_launched(
    plan: Any,
    dataset_path: Path | str,
    output_dir: Path | str,
    model_source: str,
    config: SFTRunConfig | None = None,
    *,
    emit: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SFTResult:
    """``train_sft`` over several processes: ``accelerate launch`` (``plan``, a
    ``ccrl.trainers.launch.LaunchPlan``) runs this module's entry point once per rank.

    Same contract as ``train_sft``: rank 0's events reach ``emit``, ``should_stop`` makes every
    rank save a checkpoint and end (``SFTStopped``), a failure is an ``SFTError`` with the
    failing rank's message (or the launcher's last lines)."""
    from ccrl.trainers.launch import launch_command, run_launched

    config = config or SFTRunConfig()
    dataset_path, output_dir, model_source = _absolute_inputs(dataset_path, output_dir, model_source)
    emit = emit or json_line_emitter()
    emit({"event": "notice", "message": f"Training with {plan.describe()}."})
    cmd = launch_command(plan, "ccrl.trainers.sft",
                         [str(dataset_path), str(output_dir), model_source, json.dumps(config.to_dict())])
    outcome = run_launched(cmd, emit=emit, should_stop=should_stop, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    record = outcome.result or {}
    if "stopped" in record:
        raise SFTStopped(str(record["stopped"]))
    if outcome.returncode == 0 and "metrics" in record:
        artifacts = {k: str(v) for k, v in record.get("artifacts", {}).items()}
        merged = Path(artifacts["merged"]) if "merged" in artifacts else None
        return SFTResult(output_dir, Path(artifacts["adapter"]), merged, record["metrics"], artifacts)
    if outcome.errors:
        raise SFTError(outcome.errors[0])
    last = " | ".join(outcome.tail[-4:]) or "no output"
    raise SFTError(f"the training processes failed (accelerate launch exited with status {outcome.returncode}); "
                   f"last lines: {last}")


def _main(argv: list[str]) -> int:
    """``python -m ccrl.trainers.sft DATASET OUT MODEL [CONFIG_JSON]``: run in a child process
    (the agent's way to isolate a run's memory); prints the result as JSON on stdout.

    Under ``accelerate launch`` every rank runs this; only rank 0 prints the result and events.
    SIGTERM (or the launcher's death) then asks all ranks to stop at the same step and save a
    checkpoint; they exit 0 with ``{"stopped": ...}``, because torchrun reads a non-zero exit as
    a crash and tears down the other ranks while they are still saving."""
    if len(argv) not in (3, 4):
        sys.stderr.write("usage: python -m ccrl.trainers.sft DATASET OUTPUT_DIR MODEL [CONFIG_JSON]\n")
        return 2
    from ccrl.trainers.distributed import finish, rank_info
    from ccrl.trainers.library_noise import silence_library_noise

    silence_library_noise()  # each rank imports bitsandbytes (through peft)
    config = SFTRunConfig.from_dict(json.loads(argv[3])) if len(argv) == 4 else SFTRunConfig()
    rank = rank_info()
    should_stop = None
    if rank.launched:
        import signal
        import threading

        from ccrl.trainers.launch import watch_launcher

        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        watch_launcher(stop.set)
        should_stop = stop.is_set
    try:
        result = train_sft(argv[0], argv[1], argv[2], config, should_stop=should_stop)
    except SFTStopped as exc:
        if rank.is_main:
            sys.stdout.write(json.dumps({"stopped": str(exc)}) + "\n")
        return 0 if rank.launched else EXIT_STOPPED
    except (SFTError, BaseModelError) as exc:
        sys.stderr.write(json.dumps({"event": "error", "message": str(exc), "rank": rank.rank}) + "\n")
        return 1
    finally:
        finish()
    if rank.is_main:
        sys.stdout.write(json.dumps({"metrics": result.metrics, "artifacts": result.artifacts}, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
