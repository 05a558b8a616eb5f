"""Merge a LoRA adapter into its base model, in full precision, for export.

The base is reloaded unquantized (fp32 or bf16; never 4-bit: merging into quantized weights
rounds the update away and bakes in quantization error), the adapter applied, merged and
unloaded. The result is written to a temporary folder and renamed into place, with the
tokenizer, the training chat template and ``ccrl_template.json`` taken from the adapter folder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ccrl.trainers.chat_templates import TEMPLATE_INFO_FILE


class MergeError(RuntimeError):
    """The adapter cannot be merged; the message says why."""


def adapter_base(adapter_dir: Path) -> str:
    """The base model an adapter was trained on (``base_model_name_or_path`` in its config)."""
    config_path = Path(adapter_dir) / "adapter_config.json"
    if not config_path.is_file():
        raise MergeError(f"{adapter_dir} is not a LoRA adapter folder (no adapter_config.json)")
    base = json.loads(config_path.read_text()).get("base_model_name_or_path")
    if not base:
        raise MergeError(f"{config_path} does not name its base model")
    return base


def _refuse_quantized(base: str) -> None:
    """A base checkpoint stored quantized (bitsandbytes 4/8-bit, GPTQ, AWQ...) cannot take a
    full-precision merge: say so instead of merging into rounded weights."""
    from transformers import AutoConfig

    quant = getattr(AutoConfig.from_pretrained(base), "quantization_config", None)
    if quant:
        method = quant.get("quant_method", "?") if isinstance(quant, dict) else getattr(quant, "quant_method", "?")
        raise MergeError(
            f"refusing to merge into the quantized base {base} ({method}): merge into the full-precision "
            "weights of the same model instead"
        )


def _resolve_dtype(base: str, dtype: str) -> Any:
    import torch

    if dtype != "auto":
        return getattr(torch, dtype)
    if not torch.cuda.is_available():
        return torch.float32
    # Keep the base's own precision on a GPU machine (bf16 for Llama 3.1: 16 GB, not 32).
    from transformers import AutoConfig

    config_dtype = getattr(AutoConfig.from_pretrained(base), "dtype", None)
    return config_dtype if isinstance(config_dtype, torch.dtype) and config_dtype.is_floating_point else torch.bfloat16


def merge_adapter(adapter_dir: Path, out_dir: Path, *, base: str | None = None, dtype: str = "auto") -> Path:
    """Write ``base + adapter`` as one full model to ``out_dir`` and return it.

    ``dtype``: ``auto`` (fp32 on a CPU, the base's own float type on a GPU), ``float32`` or
    ``bfloat16``.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    base = base or adapter_base(adapter_dir)
    _refuse_quantized(base)
    torch_dtype = _resolve_dtype(base, dtype)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype)
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        raise MergeError(f"refusing to merge into quantized weights of {base}: reload it in full precision")
    model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True, mode=0o700)
    model.save_pretrained(str(tmp))
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    tokenizer.save_pretrained(str(tmp))
    if (adapter_dir / TEMPLATE_INFO_FILE).is_file():
        shutil.copy2(adapter_dir / TEMPLATE_INFO_FILE, tmp / TEMPLATE_INFO_FILE)
    (tmp / "ccrl_merge.json").write_text(
        json.dumps({"base": base, "adapter": str(adapter_dir), "dtype": str(torch_dtype).removeprefix("torch.")}, indent=2)
        + "\n"
    )
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir
