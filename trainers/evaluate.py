"""Offline evaluation on a dataset version's held-out split: the runner behind ``ccrl eval``
and the deployment gate. No database: it takes a model and a dataset folder and returns metrics.

A *model* is a Hugging Face folder (a merged model or a base, carrying ccrl's training chat
template, or a LoRA adapter folder, loaded on its base) or a GGUF file, run through
llama-cpp-python with the chat template embedded in it. Evaluating the merged model and the
GGUF made from it on the same decisions shows what quantization costs.

What is measured (definitions in ``ccrl.trainers.metrics``):

Held-out sessions are split by a hash of their id into a *dev* fold (for choosing settings)
and a *test* fold (for the reported figures, the demo and the gate): see :func:`session_fold`.
Every interval resamples sessions (``ccrl.trainers.metrics.session_rate``).

1. teacher-forced next-action agreement at every held-out assistant turn, its prompt windowed to
   ``max_prompt_tokens`` (estimated from characters, so every model gets the same prompts), at
   most ``max_decisions`` of them (a seeded sample when there are more);
2. free-running plan similarity: one greedy workflow-format plan per held-out RL prompt (at most
   ``max_plans``), compared with Claude's tool sequence;
3. the behavioural reward of those plans, when a reward function is given (the RL trainer's
   reward; it is a secondary metric: RL optimises it, so it cannot judge RL alone).

Decoding is greedy, so a model and its weights give the same numbers every time (a Hugging Face
model generates decisions in left-padded batches: the same text as one at a time). The learn-
nothing baselines (most-frequent action, bigram of actions) are scored on the same decisions
and prompts, fitted on the dataset's train split.

torch, transformers and llama_cpp are imported inside functions only.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ccrl.trainers import metrics as m
from ccrl.trainers.conversation import TRAJECTORY, parse_workflow

Progress = Callable[[dict[str, Any]], None]
RewardFn = Callable[[list[str], list[dict[str, Any]]], list[float | None]]
"""``reward(completions, rows)``: one score per completion (None = not applicable); ``rows`` are
the held-out RL prompt rows (``prompt``, ``reference_completion``, ``reference_signals``…)."""

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")
TEXT_KEEP_CHARS = 4000
"""Generated text kept per decision in the details (plans are kept whole)."""


class EvaluationError(RuntimeError):
    """The evaluation cannot run (missing dataset split, unloadable model); the message says what
    to do."""


FOLDS = ("test", "dev", "all")
FOLD_SALT = b"ccrl-eval-fold:"
"""Salted so the fold hash is independent of the train/eval split hash (``session_bucket``),
which uses the bare id: otherwise dev would be the sessions just below the eval threshold."""


def session_fold(session_id: Any, dev_fraction: float = 0.3) -> str:
    """``dev`` or ``test`` for a held-out session: a salted SHA-256 of its id, so the fold is
    the same in every run and every dataset version, and never depends on the other sessions.
    Settings (profiles, decoding, prompts) are chosen on ``dev``; figures are reported on
    ``test``."""
    digest = hashlib.sha256(FOLD_SALT + str(session_id or "").encode()).digest()
    return "dev" if int.from_bytes(digest[:8], "big") / float(1 << 64) < dev_fraction else "test"


@dataclass
class EvalConfig:
    """Sizes and decoding of an evaluation. Defaults keep a CPU run of the embedded model to
    minutes; the same values must be used for every model that is compared."""

    max_decisions: int = 200
    """Held-out decisions scored at most (a seeded sample when there are more)."""
    max_prompt_tokens: int = 3072
    """Each decision's prompt is its window of at most this many tokens (estimated at 4 characters
    a token, the same for every model): older tool results shortened, then older turns dropped,
    with markers, as SFT windows its examples (``trainers/windows.py``); no decision is left out."""
    decision_max_new_tokens: int = 256
    """Tokens a model may write for one turn (its reasoning, then its calls)."""
    max_plans: int = 50
    """Held-out prompts whose whole plan is generated, at most."""
    plan_max_new_tokens: int = 768
    """Tokens a model may write for one whole plan."""
    confidence: float = 0.95
    """Confidence level of every interval."""
    seed: int = 0
    """Seed of the decision/prompt samples and the bootstrap."""
    threads: int | None = None
    """CPU threads for torch / llama.cpp; None: torch's default, llama.cpp's export default."""
    batch_size: int = 8
    """Decisions generated together in one batch by a Hugging Face model (left-padded, in order of
    prompt length so little is padding). Greedy decoding gives the same text as one at a time (up
    to float rounding); on a CPU one decode step reads all the weights, so a batch shares that
    read (measured: ``benchmarks/eval_throughput.py``). 1: one decision at a time."""
    cpu_bf16: bool | None = None
    """bf16 autocast for a Hugging Face model on a CPU; None: on when the CPU multiplies bf16 in
    hardware (AVX-512 BF16 or AMX), as SFT decides (``base_models.mixed_precision_bf16``)."""
    n_batch: int = 512
    """llama.cpp's prompt-processing batch (tokens per forward pass of the prompt) for GGUF models."""
    n_ctx: int = 8192
    """Context window for GGUF models (llama.cpp allocates it up front)."""
    fold: str = "test"
    """Which held-out sessions to score: ``test`` (reported figures, the gate), ``dev`` (for
    choosing settings; never reported as a result) or ``all``."""
    dev_fraction: float = 0.3
    """Share of the held-out sessions (by a hash of their id) in the dev fold."""
    resamples: int = m.RESAMPLES
    """Bootstrap resamples of every interval."""

    def __post_init__(self) -> None:
        if self.fold not in FOLDS:
            raise EvaluationError(f"unknown fold {self.fold!r}: use {', '.join(FOLDS)}")
        if not 0.0 < self.dev_fraction < 1.0:
            raise EvaluationError(f"dev_fraction must be between 0 and 1, got {self.dev_fraction}")

    def to_dict(self) -> dict[str, Any]:
        """JSON form (recorded with every result, so numbers can be compared like for like)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "EvalConfig":
        """Build from a dict, rejecting unknown keys."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise EvaluationError(f"unknown evaluation setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)


# ---------------------------------------------------------------------------------------------
# The held-out data
# ---------------------------------------------------------------------------------------------


@dataclass
class PlanPrompt:
    """A held-out prompt for a whole plan, with Claude's plan."""

    trace_id: Any
    messages: list[dict[str, Any]]
    reference_completion: str
    reference_tool_sequence: list[str]
    row: dict[str, Any]
    """The RL prompt row as stored (for the reward function)."""
    session_id: str | None = None


@dataclass
class EvalData:
    """Everything an evaluation scores, loaded once and shared by every model compared."""

    dataset_path: str
    decisions: list[m.DecisionPoint]
    plans: list[PlanPrompt]
    train_labels: list[list[m.Label]]
    train_tool_sequences: list[list[str]]
    fold: str = "all"
    """The held-out fold these decisions come from (``test``, ``dev`` or ``all``)."""
    counts: dict[str, int] = field(default_factory=dict)
    tools: dict[Any, list[dict[str, Any]]] = field(default_factory=dict)
    """The tool list of each held-out trace (given to models trained with tool schemas)."""

    def baselines(self) -> list[m.MostFrequentBaseline | m.BigramBaseline]:
        """The learn-nothing baselines fitted on the train split."""
        if not self.train_labels:
            raise EvaluationError(f"the dataset at {self.dataset_path} has no training trajectories to fit the baselines on")
        return [m.MostFrequentBaseline(self.train_labels, self.train_tool_sequences),
                m.BigramBaseline(self.train_labels, self.train_tool_sequences)]


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError as exc:
                    raise EvaluationError(f"{path} line {number} is not JSON ({exc}); rebuild the dataset") from None


def _rows(root: Path, split: str, rl: bool) -> list[dict[str, Any]]:
    """A split's rows: the JSONL copy when the folder has one, else the Arrow dataset."""
    jsonl = root / "jsonl" / (f"rl_prompts.{split}.jsonl" if rl else f"{split}.jsonl")
    if jsonl.is_file():
        return list(_jsonl(jsonl))
    folder = root / "rl_prompts" if rl else root
    if not folder.exists():
        return []
    try:
        from datasets import DatasetDict, load_from_disk
    except ModuleNotFoundError:
        raise EvaluationError(f"{root} has no JSONL copies and reading it needs `datasets`: "
                              "pip install 'ccrl[train]'") from None
    try:
        loaded = load_from_disk(str(folder))
    except (FileNotFoundError, ValueError) as exc:
        raise EvaluationError(f"cannot load the dataset at {folder}: {exc}. Rebuild it with `ccrl build-dataset`.") from exc
    if isinstance(loaded, DatasetDict):
        return [dict(r) for r in loaded[split]] if split in loaded else []
    return [dict(r) for r in loaded] if split == "train" else []


def _clean_messages(messages: Any) -> list[dict[str, Any]]:
    """Messages without the None values Arrow fills in for absent keys."""
    return [{k: v for k, v in msg.items() if v is not None} for msg in messages or [] if isinstance(msg, dict)]


def _is_trajectory(row: dict[str, Any]) -> bool:
    return row.get("format", TRAJECTORY) == TRAJECTORY


def _tool_sequence(messages: Sequence[dict[str, Any]]) -> list[str]:
    return [name for msg in messages if msg.get("role") == "assistant"
            for name in m.action_from_message(msg).tool_names]


def _tool_list(tools: Any) -> list[dict[str, Any]]:
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except ValueError:
            return []
    return [t for t in tools if isinstance(t, dict)] if isinstance(tools, list) else []


def load_eval_data(dataset_path: Path | str, config: EvalConfig | None = None, *,
                   exclude_sessions: set[str] | frozenset[str] = frozenset()) -> EvalData:
    """The held-out decisions and plan prompts of a dataset version, and the train split's
    action sequences (for the baselines). ``exclude_sessions``: held-out sessions to leave out
    (ones a compared model may have trained on under an older dataset version). Raises
    ``EvaluationError`` when there is nothing to evaluate on."""
    config = config or EvalConfig()
    root = Path(dataset_path)
    if not root.exists():
        raise EvaluationError(f"there is no dataset at {root}: build one with `ccrl build-dataset`")

    def held_out(row: dict[str, Any]) -> bool:
        return str(row.get("session_id") or "") not in exclude_sessions

    def in_fold(row: dict[str, Any]) -> bool:
        return config.fold == "all" or session_fold(row.get("session_id"), config.dev_fraction) == config.fold

    all_eval = [r for r in _rows(root, "eval", rl=False) if _is_trajectory(r)]
    fold_eval = [r for r in all_eval if in_fold(r)]
    eval_rows = [r for r in fold_eval if held_out(r)]
    train_rows = [r for r in _rows(root, "train", rl=False) if _is_trajectory(r)]
    all_rl = [r for r in _rows(root, "eval", rl=True) if in_fold(r)]
    rl_rows = [r for r in all_rl if held_out(r)]

    tools: dict[Any, list[dict[str, Any]]] = {}
    points: list[m.DecisionPoint] = []
    for row in eval_rows + rl_rows:
        tools[row.get("trace_id")] = _tool_list(row.get("tools"))
    for row in eval_rows:
        found = m.decision_points(_clean_messages(row.get("messages")), trace_id=row.get("trace_id"),
                                  tools=row.get("tools"), max_prompt_tokens=config.max_prompt_tokens)
        for point in found:
            point.session_id = str(row.get("session_id") or "") or None
        points += found
    fitting = [p for p in points if p.prompt_tokens <= config.max_prompt_tokens]
    chosen = fitting
    if len(fitting) > config.max_decisions:
        picked = sorted(random.Random(config.seed).sample(range(len(fitting)), config.max_decisions))
        chosen = [fitting[i] for i in picked]

    plans: list[PlanPrompt] = []
    for row in rl_rows:
        messages = _clean_messages(row.get("prompt"))
        reference = row.get("reference_completion") or ""
        sequence = list(row.get("reference_tool_sequence") or parse_workflow(reference).tool_sequence)
        plans.append(PlanPrompt(row.get("trace_id"), messages, reference, sequence, row,
                                str(row.get("session_id") or "") or None))
    all_plans = len(plans)
    if len(plans) > config.max_plans:
        picked = sorted(random.Random(config.seed + 1).sample(range(len(plans)), config.max_plans))
        plans = [plans[i] for i in picked]

    train_messages = [_clean_messages(r.get("messages")) for r in train_rows]
    data = EvalData(
        dataset_path=str(root),
        decisions=chosen,
        plans=plans,
        train_labels=[m.action_labels(msgs) for msgs in train_messages],
        train_tool_sequences=[_tool_sequence(msgs) for msgs in train_messages],
        tools=tools,
        fold=config.fold,
        counts={
            "eval_traces": len(eval_rows),
            "eval_sessions": len({str(r.get("session_id") or "") for r in eval_rows}),
            "sessions": len({p.session_id for p in chosen}),
            "eval_traces_other_fold": len(all_eval) - len(fold_eval),
            "eval_traces_excluded": len(fold_eval) - len(eval_rows) + len(all_rl) - len(rl_rows),
            "excluded_seen": len({str(r.get("session_id") or "") for r in fold_eval + all_rl} & set(exclude_sessions)),
            "decisions_held_out": len(points),
            "decisions_too_long": len(points) - len(fitting),
            "decisions_not_sampled": len(fitting) - len(chosen),
            "decisions": len(chosen),
            "plan_prompts_held_out": all_plans,
            "plans": len(plans),
            "train_traces": len(train_rows),
        },
    )
    if not data.decisions and not data.plans:
        raise EvaluationError(
            f"the dataset at {root} has no held-out decision or prompt to evaluate on in the "
            f"{config.fold!r} fold ({len(points)} held-out decisions, {len(points) - len(fitting)} longer than "
            f"max_prompt_tokens={config.max_prompt_tokens}); capture more sessions and rebuild it"
        )
    return data


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


class Generator(Protocol):
    """A model that continues a conversation with the assistant's next message (greedy)."""

    backend: str
    path: str

    def generate(self, messages: list[dict[str, Any]], max_new_tokens: int, *,
                 tools: list[dict[str, Any]] | None = None) -> str:
        """The assistant's next message as raw text (tool calls in the conversation format);
        ``tools`` reach the prompt only for a model trained with tool schemas."""

    def close(self) -> None:
        """Free the model."""


def weights_digest(path: Path | str) -> str:
    """sha256 over a model's weight files (name and bytes, in name order): which weights were
    actually evaluated. A GGUF file is hashed alone."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        raise EvaluationError(f"{path} holds no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode() + b"\0")
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


class HFGenerator:
    """A Hugging Face model (merged, base, or LoRA adapter on its base) with ccrl's training
    template of its family, greedy decoding, stopping at the end-of-turn token."""

    backend = "hf"

    def __init__(self, path: Path | str, *, threads: int | None = None, tools_in_training: bool | None = None,
                 cpu_bf16: bool | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ccrl.trainers.chat_templates import TemplateError, attach_template, read_template_info

        self.path = str(path)
        folder = Path(path)
        if threads:
            torch.set_num_threads(threads)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
            if (folder / "adapter_config.json").is_file():
                from peft import PeftModel

                from ccrl.trainers.merge import adapter_base

                base = AutoModelForCausalLM.from_pretrained(adapter_base(folder), dtype=dtype)
                self.model = PeftModel.from_pretrained(base, self.path)
            else:
                self.model = AutoModelForCausalLM.from_pretrained(self.path, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise EvaluationError(f"cannot load the model at {self.path}: {exc}") from exc
        try:
            info = read_template_info(folder)
            family = attach_template(self.tokenizer, info.get("family"))
        except TemplateError:
            # A model not saved by ccrl (e.g. a hub base): the training template of its family,
            # exactly what SFT attaches before training on it.
            info = {}
            family = attach_template(self.tokenizer)
        self.family = family.name
        self.tools_in_training = bool(info.get("tools_in_training")) if tools_in_training is None else tools_in_training
        self.end_of_turn_id = self.tokenizer.convert_tokens_to_ids(family.end_of_turn)
        # Stop where an inference server stops (the family's stop tokens, Ollama's ``stop``), not
        # only at the end of turn: text after a new turn header is not this decision.
        vocab = self.tokenizer.get_vocab()
        self.stop_ids = [self.end_of_turn_id] + sorted(
            {vocab[t] for t in family.stop_tokens if t in vocab} - {self.end_of_turn_id})
        from ccrl.trainers.base_models import mixed_precision_bf16

        self.autocast_bf16 = self.device == "cpu" and mixed_precision_bf16(False, cpu_bf16)
        self.model.to(self.device)
        self.model.eval()

    def _prompt_ids(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[int]:
        kwargs = {"tools": tools} if tools and self.tools_in_training else {}
        encoded = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                     return_dict=True, **kwargs)
        return list(encoded["input_ids"])

    def generate(self, messages: list[dict[str, Any]], max_new_tokens: int, *, tools: list[dict[str, Any]] | None = None) -> str:
        """The next assistant message, greedy, up to ``max_new_tokens`` or the end of turn."""
        return self.generate_batch([(messages, tools)], max_new_tokens)[0]

    def generate_batch(self, requests: Sequence[tuple[list[dict[str, Any]], list[dict[str, Any]] | None]],
                       max_new_tokens: int) -> list[str]:
        """The next assistant message of each ``(messages, tools)`` request, greedy, in one batch:
        prompts left-padded (masked out, positions counted from each prompt's first real token),
        each stopping at its own stop token; a finished row only pads while the others go on."""
        import contextlib

        import torch
        from transformers import GenerationConfig

        prompts = [self._prompt_ids(messages, tools) for messages, tools in requests]
        width = max(len(ids) for ids in prompts)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.end_of_turn_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompts], device=self.device)
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts], device=self.device)
        config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=self.stop_ids,
                                  pad_token_id=pad)
        autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if self.autocast_bf16
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            output = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
        texts = []
        for row in output[:, width:].tolist():
            # Cut at the row's first stop: what follows is padding, whatever the pad token is.
            end = next((i for i, token in enumerate(row) if token in self.stop_ids), len(row))
            texts.append(self.tokenizer.decode(row[:end], skip_special_tokens=True))
        return texts

    def close(self) -> None:
        """Drop the model (and the GPU cache)."""
        import gc

        import torch

        del self.model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def llama_threads() -> int:
    """Threads for llama.cpp: 1 on a small machine (2 threads on 2 busy cores ran 10x slower
    there, see docs/ml-stack.md), half the cores on a bigger one."""
    import os

    cores = os.cpu_count() or 1
    return 1 if cores <= 2 else cores // 2


class GGUFGenerator:
    """A GGUF file in llama-cpp-python, through the chat template embedded in it (the one
    Ollama is given too), greedy decoding."""

    backend = "gguf"

    def __init__(self, path: Path | str, *, threads: int | None = None, n_ctx: int = 8192,
                 tools_in_training: bool = False, n_batch: int = 512) -> None:
        self.tools_in_training = tools_in_training
        try:
            import llama_cpp
        except ModuleNotFoundError:
            raise EvaluationError("evaluating a GGUF needs llama-cpp-python: pip install 'ccrl[gguf]'") from None
        import logging

        logger = logging.getLogger("llama-cpp-python")
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.ERROR)
        self.path = str(path)
        threads = threads or llama_threads()
        try:
            self.llm = llama_cpp.Llama(model_path=self.path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                                       n_batch=n_batch, verbose=False, seed=0, chat_format="chat_template.default")
        except (ValueError, RuntimeError) as exc:
            raise EvaluationError(f"cannot load the GGUF {self.path} in llama.cpp: {exc}") from exc

    def generate(self, messages: list[dict[str, Any]], max_new_tokens: int, *, tools: list[dict[str, Any]] | None = None) -> str:
        """The next assistant message, greedy, up to ``max_new_tokens`` or the end of turn."""
        extra = {"tools": tools} if tools and self.tools_in_training else {}
        reply = self.llm.create_chat_completion(messages=messages, max_tokens=max_new_tokens, temperature=0.0,
                                                top_k=1, seed=0, **extra)
        return reply["choices"][0]["message"].get("content") or ""

    def close(self) -> None:
        """Free the model."""
        self.llm.close()


def open_generator(model: Path | str, config: EvalConfig | None = None, *, tools_in_training: bool | None = None) -> Generator:
    """A generator for ``model``: a ``.gguf`` file, or a Hugging Face folder (model or adapter)."""
    config = config or EvalConfig()
    path = Path(model)
    if path.is_file() and path.suffix == ".gguf":
        return GGUFGenerator(path, threads=config.threads, n_ctx=config.n_ctx,
                             tools_in_training=bool(tools_in_training), n_batch=config.n_batch)
    if path.is_dir() and ((path / "config.json").is_file() or (path / "adapter_config.json").is_file()):
        return HFGenerator(path, threads=config.threads, tools_in_training=tools_in_training,
                           cpu_bf16=config.cpu_bf16)
    raise EvaluationError(f"{model} is neither a GGUF file nor a Hugging Face model folder (config.json)")


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


@dataclass
class ModelEvaluation:
    """One subject's results: metrics (JSON), and the details they were computed from."""

    name: str
    kind: str
    """``model`` or ``baseline``."""
    backend: str
    """``hf``, ``gguf`` or ``baseline``."""
    metrics: dict[str, Any]
    decisions: list[dict[str, Any]] = field(default_factory=list)
    plans: list[dict[str, Any]] = field(default_factory=list)
    path: str | None = None
    weights_sha256: str | None = None
    seconds: float = 0.0

    @property
    def primary(self) -> float | None:
        """The primary metric's value (next-action agreement)."""
        return (self.metrics.get(m.PRIMARY_METRIC) or {}).get("value")

    def scores(self, metric: str = m.PRIMARY_METRIC) -> list[int]:
        """0/1 per decision (in decision order) for a decision metric, for paired comparisons."""
        return [int(bool(d.get(metric))) for d in self.decisions]

    def sessions(self) -> list[Any]:
        """The session of each decision (in decision order): paired comparisons resample them."""
        return [d.get("session_id") for d in self.decisions]

    def to_dict(self) -> dict[str, Any]:
        """JSON form (details included)."""
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """JSON form without the per-decision and per-plan details."""
        data = asdict(self)
        data.pop("decisions")
        data.pop("plans")
        return data


def behavioural_reward(weights: Any = None) -> RewardFn:
    """The RL phase's behavioural reward (``ccrl.trainers.reward``) as a ``RewardFn``: the
    weighted total of its five components per plan, against each prompt's reference."""
    from ccrl.trainers import reward as rw

    def score(completions: list[str], rows: list[dict[str, Any]]) -> list[float | None]:
        refs = rw.references(len(rows), [r.get("prompt") for r in rows], {
            "reference_signals": [r.get("reference_signals") for r in rows],
            "reference_completion": [r.get("reference_completion") for r in rows],
        })
        return [rw.total_reward(rw.score_components(text, ref), weights) for text, ref in zip(completions, refs)]

    return score


def _emit(progress: Progress | None, **event: Any) -> None:
    if progress is not None:
        progress(event)


def _metrics(decision_scores: list[m.DecisionScore], plan_scores: list[m.PlanScore], config: EvalConfig,
             data: EvalData, *, with_format: bool, rewards: list[float | None] | None,
             decisions: Sequence[m.DecisionPoint] | None = None) -> dict[str, Any]:
    points = data.decisions if decisions is None else decisions
    kw = {"resamples": config.resamples, "seed": config.seed}
    summary = m.summarise_decisions(decision_scores, config.confidence, sessions=[p.session_id for p in points], **kw)
    out: dict[str, Any] = {k: v.to_dict() for k, v in summary.items()}
    plan_sessions = [p.session_id for p in data.plans]
    plans = m.summarise_plans(plan_scores, config.confidence, sessions=plan_sessions, **kw)
    if not with_format:
        plans.pop("plan_format")
    out.update({k: v.to_dict() for k, v in plans.items()})
    if rewards is not None:
        kept = [(r, s) for r, s in zip(rewards, plan_sessions) if r is not None]
        out["reward"] = m.mean_interval([r for r, _s in kept], config.confidence, sessions=[s for _r, s in kept],
                                        **kw).to_dict()
    out["counts"] = dict(data.counts)
    out["fold"] = data.fold
    out["interval_method"] = summary["next_action"].method
    return out


def _user_prompt(messages: list[dict[str, Any]]) -> str:
    users = [msg.get("content") for msg in messages if msg.get("role") == "user"]
    return users[-1] if users and isinstance(users[-1], str) else ""


def _decision_texts(generator: Generator, data: EvalData, config: EvalConfig, name: str,
                    progress: Progress | None) -> list[str]:
    """Each decision's generated turn, in decision order: in batches of ``config.batch_size``
    when the generator batches (prompts of similar length together), else one at a time."""
    total = len(data.decisions) + len(data.plans)
    points = data.decisions
    batch = getattr(generator, "generate_batch", None)
    size = max(1, config.batch_size) if batch is not None else 1
    texts: list[str | None] = [None] * len(points)
    order = list(range(len(points)))
    if size > 1:
        order.sort(key=lambda i: points[i].prompt_tokens)
    for start in range(0, len(order), size):
        chunk = order[start:start + size]
        requests = [(points[i].prefix, data.tools.get(points[i].trace_id)) for i in chunk]
        if size > 1:
            outputs = batch(requests, config.decision_max_new_tokens)
        else:
            outputs = [generator.generate(messages, config.decision_max_new_tokens, tools=tools)
                       for messages, tools in requests]
        for i, text in zip(chunk, outputs):
            texts[i] = text
        _emit(progress, event="eval.progress", subject=name, done=start + len(chunk), total=total)
    return [t or "" for t in texts]


def evaluate_generator(generator: Generator, data: EvalData, config: EvalConfig | None = None, *,
                       name: str = "model", reward_fn: RewardFn | None = None,
                       progress: Progress | None = None) -> ModelEvaluation:
    """Score one loaded model on ``data``: every decision teacher-forced, then every plan."""
    config = config or EvalConfig()
    started = time.monotonic()
    total = len(data.decisions) + len(data.plans)
    decision_scores: list[m.DecisionScore] = []
    decision_rows: list[dict[str, Any]] = []
    texts = _decision_texts(generator, data, config, name, progress)
    for point, text in zip(data.decisions, texts):
        predicted = m.action_from_text(text)
        score = m.score_decision(predicted, point.reference, schemas=point.schemas, cwd=point.cwd)
        decision_scores.append(score)
        decision_rows.append({"trace_id": point.trace_id, "session_id": point.session_id, "turn": point.turn,
                              "reference": list(point.reference.label),
                              "predicted": list(predicted.label), **score.to_dict(),
                              "text": text[:TEXT_KEEP_CHARS]})
    plan_scores: list[m.PlanScore] = []
    plan_rows: list[dict[str, Any]] = []
    completions: list[str] = []
    for number, prompt in enumerate(data.plans, len(data.decisions) + 1):
        text = generator.generate(prompt.messages, config.plan_max_new_tokens, tools=data.tools.get(prompt.trace_id))
        workflow = parse_workflow(text)
        score = m.score_plan(workflow.tool_sequence, prompt.reference_tool_sequence, well_formed=not workflow.errors)
        plan_scores.append(score)
        completions.append(text)
        plan_rows.append({"trace_id": prompt.trace_id, "prompt": _user_prompt(prompt.messages),
                          "reference_completion": prompt.reference_completion,
                          "completion": text, "tool_sequence": workflow.tool_sequence,
                          "reference_tool_sequence": prompt.reference_tool_sequence, **score.to_dict()})
        _emit(progress, event="eval.progress", subject=name, done=number, total=total)
    rewards = None
    if reward_fn is not None and completions:
        rewards = list(reward_fn(completions, [p.row for p in data.plans]))
        for row, value in zip(plan_rows, rewards):
            row["reward"] = value
    metrics = _metrics(decision_scores, plan_scores, config, data, with_format=True, rewards=rewards)
    return ModelEvaluation(name=name, kind="model", backend=generator.backend, metrics=metrics,
                           decisions=decision_rows, plans=plan_rows, path=generator.path,
                           seconds=round(time.monotonic() - started, 2))


def evaluate_baselines(data: EvalData, config: EvalConfig | None = None) -> list[ModelEvaluation]:
    """The learn-nothing baselines on the same decisions and prompts."""
    config = config or EvalConfig()
    results = []
    for baseline in data.baselines():
        decision_scores = []
        decision_rows = []
        for point in data.decisions:
            label = baseline.predict(point.previous)
            score = m.score_decision(m.action_from_label(label), point.reference, schemas=point.schemas, cwd=point.cwd)
            decision_scores.append(score)
            decision_rows.append({"trace_id": point.trace_id, "session_id": point.session_id, "turn": point.turn,
                                  "reference": list(point.reference.label), "predicted": list(label), **score.to_dict()})
        plan = baseline.plan()
        plan_scores = [m.score_plan(plan, p.reference_tool_sequence) for p in data.plans]
        plan_rows = [{"trace_id": p.trace_id, "tool_sequence": plan, "reference_tool_sequence": p.reference_tool_sequence,
                      **s.to_dict()} for p, s in zip(data.plans, plan_scores)]
        metrics = _metrics(decision_scores, plan_scores, config, data, with_format=False, rewards=None)
        results.append(ModelEvaluation(name=baseline.name, kind="baseline", backend="baseline", metrics=metrics,
                                       decisions=decision_rows, plans=plan_rows))
    return results


def evaluate_model(model: Path | str, data: EvalData | Path | str, config: EvalConfig | None = None, *,
                   name: str = "model", reward_fn: RewardFn | None = None, tools_in_training: bool | None = None,
                   progress: Progress | None = None) -> ModelEvaluation:
    """Load ``model`` (HF folder or GGUF file), score it on ``data`` (an ``EvalData`` or a
    dataset folder), free it, and return the results with the digest of the weights used."""
    config = config or EvalConfig()
    if not isinstance(data, EvalData):
        data = load_eval_data(data, config)
    digest = weights_digest(model)
    _emit(progress, event="eval.start", subject=name, model=str(model),
          total=len(data.decisions) + len(data.plans))
    generator = open_generator(model, config, tools_in_training=tools_in_training)
    try:
        result = evaluate_generator(generator, data, config, name=name, reward_fn=reward_fn, progress=progress)
    finally:
        generator.close()
    result.weights_sha256 = digest
    return result


def write_details(result: ModelEvaluation, path: Path | str) -> Path:
    """Write a result with its details as JSON (0600): the plans are what ``ccrl ab`` shows."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result.to_dict(), ensure_ascii=False, indent=1, default=str) + "\n", encoding="utf-8")
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return path


def read_details(path: Path | str) -> ModelEvaluation:
    """Read back what :func:`write_details` wrote."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return ModelEvaluation(**data)


__all__ = [
    "EvalConfig",
    "EvalData",
    "EvaluationError",
    "GGUFGenerator",
    "HFGenerator",
    "ModelEvaluation",
    "PlanPrompt",
    "behavioural_reward",
    "evaluate_baselines",
    "evaluate_generator",
    "evaluate_model",
    "load_eval_data",
    "open_generator",
    "read_details",
    "session_fold",
    "weights_digest",
    "write_details",
]
