"""SFT throughput and peak memory: ccrl's pipeline (``ccrl.trainers.sft.train_sft``) against a
plain TRL script on the same model, data and settings, measured in the same run.

- Model: the embedded default SmolLM2-135M-Instruct (converted once into ``--cache``), or
  ``--model`` (a local folder or hub id). On CUDA both sides use 4-bit QLoRA, elsewhere LoRA.
- Data: the real Claude Code fixtures, imported into a temporary store and built into a dataset
  version with ``ccrl import`` + ``ccrl build-dataset`` (or ``--dataset PATH``).
- ``plain``: the TRL quick-start shape: ``SFTTrainer(model, SFTConfig(...), train_dataset,
  processing_class, peft_config=LoraConfig(...))`` with the same chat template (needed for the
  assistant-only loss), LoRA settings, sequence length, batch and steps; nothing else.
- ``pipeline``: ``train_sft`` with the same values (no merge and no per-epoch evaluation, which
  are not part of the training loop; its base and final evaluations are outside the timed part).
  Both save one checkpoint, at the last step.

Each side runs in a fresh child process (so peak memory is its own), alternating, ``--repeats``
times. ``--cpu-bf16 on|off|auto`` sets the CPU precision of *both* sides (``auto``: bf16 mixed
precision where the CPU multiplies bf16 in hardware, as ccrl does by default); run it once with
``off`` and once with ``on`` to measure what bf16 gains on a CPU. Printed: train tokens, wall and CPU seconds of the training loop (``trainer.train``),
tokens per wall second and per CPU second (CPU time is what to compare on a busy machine), peak
resident memory (and peak CUDA memory on a GPU), and the ratio pipeline / plain of each.

    .venv/bin/python benchmarks/sft_throughput.py [--steps 4] [--max-length 512] [--repeats 1] [--cpu-bf16 auto] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(os.environ.get("CCRL_FIXTURES", REPO.parent / "shared" / "fixtures" / "claude-code")) / "transcripts"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _peak(cuda: bool) -> dict[str, int]:
    out = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if cuda:
        import torch

        out["peak_cuda_bytes"] = int(torch.cuda.max_memory_allocated())
    return out


def _bf16(args: argparse.Namespace, cuda: bool) -> bool:
    from ccrl.trainers.base_models import mixed_precision_bf16

    return mixed_precision_bf16(cuda, {"on": True, "off": False}.get(args.cpu_bf16))


def child_plain(args: argparse.Namespace) -> dict:
    """A plain TRL SFT script, as its documentation writes it."""
    import torch
    from datasets import load_from_disk
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from ccrl.trainers.chat_templates import load_template

    cuda = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenizer.chat_template = load_template(args.family)
    kwargs: dict = {"dtype": torch.bfloat16 if cuda else torch.float32}
    if cuda:
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(args.model, **kwargs)
    if cuda:
        model = prepare_model_for_kbit_training(model)
    train = load_from_disk(args.dataset)["train"].select_columns(["messages"])
    config = SFTConfig(
        output_dir=args.out, max_steps=args.steps, per_device_train_batch_size=2, gradient_accumulation_steps=1,
        learning_rate=2e-4, max_length=args.max_length, assistant_only_loss=True, bf16=_bf16(args, cuda), use_cpu=not cuda,
        gradient_checkpointing=True, logging_steps=1, save_strategy="steps", save_steps=args.steps,
        report_to="none", disable_tqdm=True, include_num_input_tokens_seen="non_padding", seed=42,
    )
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=config, train_dataset=train, processing_class=tokenizer,
                         peft_config=peft_config)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"tokens": int(trainer.state.num_input_tokens_seen), "train_wall_s": wall, "train_cpu_s": cpu,
            "steps": trainer.state.global_step, **_peak(cuda)}


def child_pipeline(args: argparse.Namespace) -> dict:
    """ccrl's SFT runner with the same values."""
    import torch

    from ccrl.trainers.sft import SFTRunConfig, train_sft

    cuda = torch.cuda.is_available()
    config = SFTRunConfig(max_steps=args.steps, max_length=args.max_length, gradient_accumulation_steps=1,
                          save_steps=args.steps, merge=False, eval_each_epoch=False,
                          cpu_bf16={"on": True, "off": False}.get(args.cpu_bf16))
    result = train_sft(args.dataset, args.out, args.model, config, progress_bar=False, emit=lambda event: None)
    m = result.metrics
    return {"tokens": m["train_tokens"], "train_wall_s": m["train_runtime_s"], "train_cpu_s": m["train_cpu_s"],
            "steps": m["global_step"], "bf16": m.get("bf16"), **_peak(cuda)}


def _run_child(mode: str, args: argparse.Namespace, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--dataset", args.dataset, "--model", args.model,
           "--family", args.family, "--steps", str(args.steps), "--max-length", str(args.max_length), "--out", str(out),
           "--cpu-bf16", args.cpu_bf16]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if done.returncode != 0:
        raise SystemExit(f"{mode} child failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _fixture_dataset(work: Path) -> str:
    """Import the fixture transcripts into a fresh store and build a dataset version."""
    env = {**os.environ, "CCRL_HOME": str(work / "home"), "XDG_CONFIG_HOME": str(work / "xdg")}
    ccrl = [sys.executable, "-c", "from ccrl.agent.cli import main; main()"]
    subprocess.run([*ccrl, "import", str(FIXTURES), "--json"], env=env, check=True, capture_output=True)
    built = subprocess.run([*ccrl, "build-dataset", "--json"], env=env, check=True, capture_output=True, text=True)
    return json.loads(built.stdout)["path"]


def resolve_inputs(args: argparse.Namespace, work: Path) -> None:
    """Fill ``args.model`` (the embedded SmolLM2 by default), ``args.family`` and ``args.dataset``
    (built from the fixtures in ``work`` by default)."""
    from transformers import AutoTokenizer

    from ccrl.agent.core.config import get_settings
    from ccrl.trainers.base_models import ensure_embedded_base
    from ccrl.trainers.chat_templates import detect_family

    if args.model is None:
        cache = Path(args.cache) if args.cache else get_settings().home / "models" / "base"
        args.model = str(ensure_embedded_base(cache))
    args.family = args.family or detect_family(AutoTokenizer.from_pretrained(args.model))
    if args.dataset is None:
        args.dataset = _fixture_dataset(work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=["plain", "pipeline"])
    parser.add_argument("--dataset", help="a dataset version folder (default: built from the fixtures)")
    parser.add_argument("--model", help="model folder or hub id (default: the embedded SmolLM2)")
    parser.add_argument("--family", default=None, help="chat template family (default: detected)")
    parser.add_argument("--cache", default=None, help="where the embedded model is converted (default: CCRL_HOME/models/base)")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per run (batch 2, no accumulation)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--cpu-bf16", choices=["auto", "on", "off"], default="auto",
                        help="CPU precision of both sides (auto: bf16 where the CPU has it in hardware)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    if args.child:
        result = (child_plain if args.child == "plain" else child_pipeline)(args)
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory(prefix="ccrl-sft-bench-") as tmp:
        work = Path(tmp)
        resolve_inputs(args, work)
        runs: dict[str, list[dict]] = {"plain": [], "pipeline": []}
        for repeat in range(args.repeats):
            for mode in ("plain", "pipeline"):
                runs[mode].append(_run_child(mode, args, work / f"{mode}-{repeat}"))

    def summary(mode: str) -> dict:
        rs = runs[mode]
        return {
            "tokens": rs[0]["tokens"],
            "steps": rs[0]["steps"],
            "train_wall_s": statistics.median(r["train_wall_s"] for r in rs),
            "train_cpu_s": statistics.median(r["train_cpu_s"] for r in rs),
            "tokens_per_s": statistics.median(r["tokens"] / r["train_wall_s"] for r in rs),
            "tokens_per_cpu_s": statistics.median(r["tokens"] / r["train_cpu_s"] for r in rs),
            "peak_rss_bytes": max(r["peak_rss_bytes"] for r in rs),
            **({"peak_cuda_bytes": max(r["peak_cuda_bytes"] for r in rs)} if "peak_cuda_bytes" in rs[0] else {}),
        }

    plain, pipeline = summary("plain"), summary("pipeline")
    ratios = {k: pipeline[k] / plain[k] for k in ("tokens_per_s", "tokens_per_cpu_s", "peak_rss_bytes", "peak_cuda_bytes")
              if k in plain and plain[k]}
    import torch

    report = {"model": args.model, "device": "cuda" if torch.cuda.is_available() else "cpu",
              "steps": args.steps, "max_length": args.max_length, "repeats": args.repeats,
              "bf16": runs["pipeline"][0].get("bf16"),
              "plain": plain, "pipeline": pipeline, "ratio_pipeline_over_plain": ratios,
              "same_tokens": plain["tokens"] == pipeline["tokens"]}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"SFT on {report['device']}: {args.model}, {args.steps} steps x batch 2, max_length {args.max_length}, "
          f"{args.repeats} repeat(s), bf16 {report['bf16']}")
    print(f"{'':10} {'tokens':>8} {'wall s':>8} {'CPU s':>8} {'tok/s':>8} {'tok/CPU s':>10} {'peak RSS':>10}")
    for name, s in (("plain TRL", plain), ("pipeline", pipeline)):
        print(f"{name:10} {s['tokens']:>8} {s['train_wall_s']:>8.1f} {s['train_cpu_s']:>8.1f} {s['tokens_per_s']:>8.1f} "
              f"{s['tokens_per_cpu_s']:>10.1f} {s['peak_rss_bytes'] / 2**30:>8.2f} GiB"
              + (f"  peak CUDA {s['peak_cuda_bytes'] / 2**30:.2f} GiB" if "peak_cuda_bytes" in s else ""))
    print("pipeline / plain: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items())
          + ("" if report["same_tokens"] else "  (WARNING: different token counts)"))


if __name__ == "__main__":
    main()
