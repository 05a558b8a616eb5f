"""Decision-window SFT throughput: one epoch over every decision of a dataset version, with
several consecutive decisions per example (ccrl's default) against one decision per example,
and ccrl's pipeline against a plain TRL quick-start script on the same examples, in one run.

- ``multi``: ``train_sft`` (``window_max_targets`` None: consecutive decisions share a window).
- ``single``: ``train_sft`` with ``window_max_targets=1``: one target decision per example.
- ``plain``: the TRL quick-start shape (``SFTTrainer(model, SFTConfig(...), train_dataset,
  processing_class, peft_config=LoraConfig(...))``, ``assistant_only_loss=True``) on the
  ``multi`` windows' conversations, so both see the same input ids; it trains every assistant
  turn of a window (it cannot tell targets from context), ccrl only the window's targets.

Each runs one epoch (or ``--epoch-fraction`` of it) in a fresh child process, same model
(the embedded SmolLM2-135M), LoRA settings, max_length, batch 2, no accumulation. Printed per
mode: examples, decisions trained, tokens and supervised (loss) tokens per epoch, the wall
and CPU seconds of the training loop, tokens and supervised tokens per wall second, and the
ratios multi / single and pipeline / plain.

    .venv/bin/python benchmarks/sft_windows.py [--max-length 512] [--epoch-fraction 1.0] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sft_throughput import TARGETS, _bf16, _peak, resolve_inputs  # noqa: E402


def _steps(examples: int, fraction: float) -> int:
    return max(1, round(examples / 2 * fraction))


def child_pipeline(args: argparse.Namespace, max_targets: int | None) -> dict:
    """``train_sft`` for ``--epoch-fraction`` of an epoch; supervised tokens from its windows."""
    import torch

    from ccrl.trainers.sft import SFTRunConfig, train_sft

    cuda = torch.cuda.is_available()
    config = SFTRunConfig(num_train_epochs=args.epoch_fraction, max_length=args.max_length, gradient_accumulation_steps=1,
                          save_steps=10 ** 6, merge=False, eval_each_epoch=False, max_eval_examples=1,
                          window_max_targets=max_targets, cpu_bf16={"on": True, "off": False}.get(args.cpu_bf16))
    result = train_sft(args.dataset, args.out, args.model, config, progress_bar=False, emit=lambda event: None)
    m = result.metrics
    w = m["windows"]["train"]
    return {"examples": w["examples"], "decisions": w["decisions"], "decisions_trained": w["decisions_trained"],
            "epoch_tokens": w["tokens"], "epoch_supervised_tokens": w["supervised_tokens"],
            "tokens": m["train_tokens"], "train_wall_s": m["train_runtime_s"], "train_cpu_s": m["train_cpu_s"],
            "steps": m["global_step"], "epochs": m["epochs"], "bf16": m.get("bf16"), **_peak(cuda)}


def child_plain(args: argparse.Namespace) -> dict:
    """The TRL quick-start on the ``multi`` windows' conversations."""
    import torch
    from datasets import Dataset, load_from_disk
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from ccrl.trainers.chat_templates import attach_template
    from ccrl.trainers.sft_windows import clean_messages, fitted_windows

    cuda = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    attach_template(tokenizer, args.family)
    conversations = []
    for row in load_from_disk(args.dataset)["train"]:
        _plan, kept = fitted_windows(tokenizer, clean_messages(row["messages"]), args.max_length)
        conversations += [{"messages": window.messages} for window, _example in kept]
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16 if cuda else torch.float32)
    config = SFTConfig(
        output_dir=args.out, num_train_epochs=args.epoch_fraction, per_device_train_batch_size=2,
        gradient_accumulation_steps=1, learning_rate=2e-4, max_length=args.max_length, assistant_only_loss=True,
        bf16=_bf16(args, cuda), use_cpu=not cuda, gradient_checkpointing=True, logging_steps=1, save_strategy="no",
        report_to="none", disable_tqdm=True, include_num_input_tokens_seen="non_padding", seed=42,
    )
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(conversations),
                         processing_class=tokenizer, peft_config=peft_config)
    supervised = sum(sum(1 for label in ex["labels"] if label != -100) for ex in trainer.train_dataset)
    epoch_tokens = sum(len(ex["input_ids"]) for ex in trainer.train_dataset)
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"examples": len(trainer.train_dataset), "epoch_tokens": epoch_tokens, "epoch_supervised_tokens": supervised,
            "tokens": int(trainer.state.num_input_tokens_seen), "train_wall_s": wall, "train_cpu_s": cpu,
            "steps": trainer.state.global_step, "epochs": float(trainer.state.epoch or 0.0), **_peak(cuda)}


def _run_child(mode: str, args: argparse.Namespace, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--dataset", args.dataset, "--model", args.model,
           "--family", args.family, "--max-length", str(args.max_length), "--out", str(out),
           "--cpu-bf16", args.cpu_bf16, "--epoch-fraction", str(args.epoch_fraction)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if done.returncode != 0:
        raise SystemExit(f"{mode} child failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _with_rates(r: dict) -> dict:
    share = r["tokens"] / r["epoch_tokens"] if r["epoch_tokens"] else 0.0  # of an epoch actually trained
    supervised = r["epoch_supervised_tokens"] * share
    return {**r, "tokens_per_s": r["tokens"] / r["train_wall_s"], "tokens_per_cpu_s": r["tokens"] / r["train_cpu_s"],
            "supervised_tokens_per_s": supervised / r["train_wall_s"],
            "epoch_wall_s": r["train_wall_s"] / share if share else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=["multi", "single", "plain"])
    parser.add_argument("--dataset", help="a dataset version folder (default: built from the fixtures)")
    parser.add_argument("--model", help="model folder or hub id (default: the embedded SmolLM2)")
    parser.add_argument("--family", default=None)
    parser.add_argument("--cache", default=None, help="where the embedded model is converted (default: CCRL_HOME/models/base)")
    parser.add_argument("--max-length", type=int, default=512, help="the window budget (SFT max_length)")
    parser.add_argument("--epoch-fraction", type=float, default=1.0, help="share of an epoch each mode trains")
    parser.add_argument("--cpu-bf16", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--out", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    if args.child:
        result = child_plain(args) if args.child == "plain" else child_pipeline(args, None if args.child == "multi" else 1)
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory(prefix="ccrl-sft-windows-") as tmp:
        work = Path(tmp)
        resolve_inputs(args, work)
        runs = {mode: _with_rates(_run_child(mode, args, work / mode)) for mode in ("plain", "multi", "single")}

    import torch

    ratio = {
        "multi_over_single": {k: runs["multi"][k] / runs["single"][k] for k in ("supervised_tokens_per_s", "tokens_per_s")}
        | {"epoch_wall_s": runs["multi"]["epoch_wall_s"] / runs["single"]["epoch_wall_s"]},
        "pipeline_over_plain": {k: runs["multi"][k] / runs["plain"][k] for k in ("tokens_per_s", "tokens_per_cpu_s")},
    }
    report = {"model": args.model, "device": "cuda" if torch.cuda.is_available() else "cpu",
              "max_length": args.max_length, "epoch_fraction": args.epoch_fraction, "bf16": runs["multi"].get("bf16"),
              "runs": runs, "ratios": ratio,
              "same_tokens_plain_and_multi": runs["plain"]["epoch_tokens"] == runs["multi"]["epoch_tokens"]}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"Decision-window SFT on {report['device']}: {args.model}, max_length {args.max_length}, "
          f"{args.epoch_fraction:g} epoch, batch 2, bf16 {report['bf16']}")
    print(f"{'':26} {'examples':>8} {'decisions':>9} {'epoch tok':>9} {'loss tok':>8} {'wall s':>7} "
          f"{'tok/s':>7} {'loss tok/s':>10} {'epoch s':>8}")
    names = {"multi": "ccrl, multi-target", "single": "ccrl, one target each", "plain": "plain TRL, same windows"}
    for mode in ("multi", "single", "plain"):
        r = runs[mode]
        print(f"{names[mode]:26} {r['examples']:>8} {r.get('decisions_trained', '-'):>9} {r['epoch_tokens']:>9} "
              f"{r['epoch_supervised_tokens']:>8} {r['train_wall_s']:>7.1f} {r['tokens_per_s']:>7.1f} "
              f"{r['supervised_tokens_per_s']:>10.1f} {r['epoch_wall_s']:>8.1f}")
    print("multi / single: " + ", ".join(f"{k} {v:.3f}" for k, v in ratio["multi_over_single"].items()))
    print("pipeline / plain TRL: " + ", ".join(f"{k} {v:.3f}" for k, v in ratio["pipeline_over_plain"].items())
          + ("" if report["same_tokens_plain_and_multi"] else "  (WARNING: different epoch tokens)"))


if __name__ == "__main__":
    main()
