"""Merging a LoRA adapter into its base in full precision gives the same logits as the adapter
applied on the base (within 1e-5), keeps the training template, and refuses quantized bases."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import torch

from ccrl.trainers.base_models import build_tiny_llama
from ccrl.trainers.chat_templates import load_template, read_template_info, save_template
from ccrl.trainers.merge import MergeError, adapter_base, merge_adapter

from conftest import embedded_tokenizer_dir

torch.set_num_threads(1)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    return build_tiny_llama(root / "tiny", embedded_tokenizer_dir())


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory) -> Path:
    """A LoRA adapter whose A and B are both random (a fresh adapter's B is zero, which would
    make any merge look right)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    config = LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, init_lora_weights=False, task_type="CAUSAL_LM")
    model = get_peft_model(base, config)
    out = tmp_path_factory.mktemp("adapter") / "final"
    model.save_pretrained(str(out))
    save_template(AutoTokenizer.from_pretrained(str(tiny_model)), "chatml", out)
    return out


def _logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def test_merged_model_gives_the_adapters_logits(tiny_model, adapter, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert adapter_base(adapter) == str(tiny_model)
    merged_dir = merge_adapter(adapter, tmp_path / "merged")
    tok = AutoTokenizer.from_pretrained(str(merged_dir))
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "List the files"}, {"role": "assistant", "content": "Let me look."}],
        tokenize=True, return_dict=True, return_tensors="pt",
    )["input_ids"]

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    base_logits = _logits(base, ids)
    with_adapter = _logits(PeftModel.from_pretrained(base, str(adapter)), ids)
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir))
    assert merged.dtype == torch.float32  # full precision on a CPU
    merged_logits = _logits(merged, ids)

    assert (with_adapter - base_logits).abs().max().item() > 1e-3  # the adapter really changes the model
    assert (merged_logits - with_adapter).abs().max().item() <= 1e-5
    # No LoRA modules left: a plain model that the GGUF converter can read.
    assert not any("lora" in name for name, _ in merged.named_parameters())
    # The training template travels with the merged model.
    assert (merged_dir / "chat_template.jinja").read_text() == load_template("chatml")
    assert read_template_info(merged_dir)["name"] == "chatml"
    assert json.loads((merged_dir / "ccrl_merge.json").read_text())["dtype"] == "float32"
    assert not list(tmp_path.glob(".merged.tmp-*"))  # written aside, then renamed


def test_merge_refuses_a_quantized_base(tiny_model, adapter, tmp_path):
    quantized = tmp_path / "base-4bit"
    shutil.copytree(tiny_model, quantized)
    config = json.loads((quantized / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    (quantized / "config.json").write_text(json.dumps(config))
    with pytest.raises(MergeError, match="quantized"):
        merge_adapter(adapter, tmp_path / "merged", base=str(quantized))
    assert not (tmp_path / "merged").exists()


def test_merge_needs_an_adapter_folder(tmp_path):
    with pytest.raises(MergeError, match="not a LoRA adapter folder"):
        merge_adapter(tmp_path, tmp_path / "merged")
