"""Inside a training process started by ``accelerate launch``: which rank this is, which strategy
the launcher set up, and what that means for loading a (quantized) model.

The launcher (``ccrl.trainers.launch``) starts one process per GPU; torchrun gives each of them
``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` and accelerate adds ``ACCELERATE_USE_FSDP`` or
``ACCELERATE_USE_DEEPSPEED`` (+ ``ACCELERATE_DEEPSPEED_ZERO_STAGE``) from the config file. These are
read from the environment rather than from ``PartialState()``: that singleton decides CPU vs GPU
on its first construction, and the Trainer must be the one to construct it (``use_cpu`` on a CPU
machine is what makes accelerate pick gloo there).

Only rank 0 writes what the agent reads (metrics, results, progress, the adapter's final folder);
the other ranks train silently.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RankInfo:
    """This process's place in a launched run (a single process is rank 0 of 1)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    strategy: str | None = None
    """``ddp``, ``fsdp``, ``zero3`` (or ``zero1``/``zero2``), or None outside a launcher."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def launched(self) -> bool:
        return self.strategy is not None


def _flag(env: Any, name: str) -> bool:
    return str(env.get(name, "")).strip().lower() in ("1", "true", "yes")


def rank_info(environ: Any = None) -> RankInfo:
    """This process's rank and the launcher's strategy, from the environment."""
    env = os.environ if environ is None else environ
    if "LOCAL_RANK" not in env or "WORLD_SIZE" not in env:
        return RankInfo()
    if _flag(env, "ACCELERATE_USE_FSDP"):
        strategy = "fsdp"
    elif _flag(env, "ACCELERATE_USE_DEEPSPEED"):
        strategy = f"zero{env.get('ACCELERATE_DEEPSPEED_ZERO_STAGE', '3')}"
    else:
        strategy = "ddp"
    return RankInfo(int(env.get("RANK", 0)), int(env["LOCAL_RANK"]), int(env["WORLD_SIZE"]), strategy)


@dataclass(frozen=True)
class LoadSettings:
    """How to load the base model for one launch strategy (see ``load_settings``)."""

    device_map: Any
    """``from_pretrained``'s ``device_map``; None = let the sharding strategy place the weights."""
    quant_storage: Any = None
    """``BitsAndBytesConfig(bnb_4bit_quant_storage=...)`` for 4-bit; None = bitsandbytes' uint8."""
    model_dtype: Any = None
    """``from_pretrained``'s ``dtype`` for 4-bit loading; None = the caller's default."""
    prepare_kbit: bool = True
    """Whether to run PEFT's ``prepare_model_for_kbit_training`` on a 4-bit model."""


def load_settings(strategy: str | None, *, four_bit: bool, compute_dtype: Any, local_rank: int = 0) -> LoadSettings:
    """The QLoRA/LoRA loading settings each launch strategy needs, in one place.

    - One process (None) or DDP: every process holds a whole copy of the model on its own GPU, so
      the device map pins it to this process's device (``{"": local_rank}``; with a plain
      ``"auto"`` every rank would load onto GPU 0, or spread one copy over all GPUs).
    - FSDP: FSDP shards the parameters itself, so no device map. FSDP can only shard floating
      point tensors of one dtype, so 4-bit weights are stored packed in the compute dtype
      (``bnb_4bit_quant_storage``, PEFT's and bitsandbytes' "FSDP-QLoRA") and the model is loaded
      in that same dtype. ``prepare_model_for_kbit_training`` is skipped: it upcasts the
      non-quantized weights to float32, and FSDP's flat parameters need one dtype.
    - DeepSpeed ZeRO-3: same reasoning (ZeRO-3 partitions the parameters, which must share one
      float dtype), so the quant storage matches the compute dtype and there is no device map.
      ZeRO-1/2 only shard optimizer state: they load like DDP.
    """
    sharded = strategy in ("fsdp", "zero3")
    if sharded:
        if not four_bit:
            return LoadSettings(device_map=None)
        return LoadSettings(device_map=None, quant_storage=compute_dtype, model_dtype=compute_dtype, prepare_kbit=False)
    return LoadSettings(device_map={"": local_rank}, model_dtype=compute_dtype if four_bit else None)


def all_ranks_agree(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank (a no-op for one process).

    A stop request (SIGTERM) reaches the ranks at slightly different moments; if one rank ended
    training at step N while another went on to step N+1, the second would wait forever in the
    gradient all-reduce. Deciding together keeps every rank on the same step.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    import torch

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def finish() -> None:
    """Leave the process group cleanly (torch warns about a leaked group at exit otherwise)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - best effort at exit
        pass
