"""``[eval]`` settings: how big the offline evaluation is, and how strict the deployment gate.

Every value can be changed in the config file's ``[eval]`` section or with
``CCRL_EVAL__<KEY>`` (e.g. ``CCRL_EVAL__GATE_MARGIN=0.05``). The sizes must stay the same
between the models a gate compares; the gate evaluates them all in one run, so they do.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class EvalSettings(BaseModel):
    """``[eval]``: held-out evaluation sizes and the deployment gate."""

    max_decisions: int = Field(default=200, ge=1, description="Held-out next-action decisions scored at most (a seeded sample when there are more).")
    max_prompt_tokens: int = Field(
        default=3072, ge=64,
        description="Decisions whose prefix is longer than this (estimated, 4 characters a token) are left out and counted.",
    )
    decision_max_new_tokens: int = Field(default=256, ge=8, description="Tokens a model may write for one turn.")
    max_plans: int = Field(default=50, ge=0, description="Held-out prompts whose whole plan is generated, at most.")
    plan_max_new_tokens: int = Field(default=768, ge=16, description="Tokens a model may write for one whole plan.")
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0, description="Confidence level of every interval.")
    threads: int | None = Field(default=None, ge=1, description="CPU threads for evaluation; empty = the library default.")
    batch_size: int = Field(
        default=8, ge=1,
        description="Decisions a Hugging Face model generates together (greedy, same text as one at a time; faster on a CPU). 1: one at a time.",
    )
    cpu_bf16: bool | None = Field(
        default=None,
        description="bf16 autocast for Hugging Face models on a CPU; empty = on where the CPU has bf16 in hardware (AVX-512 BF16 or AMX, as SFT). Faster prefill, slightly different greedy text.",
    )
    dev_fraction: float = Field(default=0.3, gt=0.0, lt=1.0, description="Share of held-out sessions (by id hash) in the dev fold.")
    resamples: int = Field(default=2000, ge=100, description="Session-bootstrap resamples of every interval.")
    evaluate_gguf: bool = Field(
        default=True,
        description="Also evaluate the exported GGUF through llama-cpp-python (the gate then judges the GGUF, which is what Ollama serves).",
    )
    evaluate_hf_candidate: bool = Field(
        default=True,
        description="When the GGUF is judged, also evaluate the candidate's Hugging Face weights (shows what quantisation costs; one more model's evaluation).",
    )
    gate_min_gain: float = Field(
        default=0.0, ge=0.0, le=1.0,
        description="The candidate's next-action agreement must exceed the base model's and each baseline's by more than this.",
    )
    gate_margin: float = Field(
        default=0.02, ge=0.0, le=1.0,
        description="…and be at most this much below the deployed version's (measured now, on the same held-out decisions).",
    )
    gate_rl_min_reward_gain: float = Field(
        default=0.0, ge=0.0, le=1.0,
        description="An RL candidate's mean held-out behavioural reward must exceed its SFT parent's by more than this.",
    )

    def eval_config(self, **overrides: Any) -> Any:
        """The trainer-side ``EvalConfig`` for these settings."""
        from ccrl.trainers.evaluate import EvalConfig

        values = {k: getattr(self, k) for k in ("max_decisions", "max_prompt_tokens", "decision_max_new_tokens",
                                                "max_plans", "plan_max_new_tokens", "confidence", "threads",
                                                "batch_size", "cpu_bf16", "dev_fraction", "resamples")}
        values.update(overrides)
        return EvalConfig(**values)
