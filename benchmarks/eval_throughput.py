"""Decisions per second of model evaluation on a CPU: the old one-at-a-time greedy generation
against the batched path ``ccrl eval`` now runs, on the same decisions and model in one run.

The decisions are those ``ccrl eval --sessions DIR`` scores (``agent/eval_sessions.read_decisions``:
the same windowed prompts, byte for byte), a seeded sample of ``--decisions``. Variants, each timed
over all the decisions after the model is loaded:

- ``one at a time`` (the baseline): the pre-batching ``HFGenerator.generate``, one decision per
  ``model.generate`` call, stopping at the end-of-turn token only;
- ``batch B, T threads``: ``evaluate._decision_texts`` (prompts sorted by length, left-padded
  batches of B, stopping on the family's stop tokens) at each ``--threads`` count;
- ``... bf16``: the same with bf16 autocast (``--bf16``; fast only on CPUs with AMX).

It prints decisions per second, the ratio to the baseline, and the agreement of each variant's
outputs with the baseline's (identical text; identical predicted action). Usage::

    .venv/bin/python benchmarks/eval_throughput.py [--model DIR] [--decisions 24] [--batch-size 8]
        [--threads 1,2] [--bf16] [--max-prompt-tokens 512] [--max-new-tokens 48] [--json]

``--model`` defaults to the embedded SmolLM2-135M-Instruct (converted once into a cache folder).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO.parent / "shared" / "fixtures" / "claude-code" / "transcripts"


def decisions(root: Path, count: int, max_prompt_tokens: int, seed: int) -> Any:
    """A seeded sample of the decisions ``eval --sessions`` reads under ``root`` (no store)."""
    from ccrl.agent.core.config import get_settings
    from ccrl.agent.evaluation.eval_sessions import read_decisions
    from ccrl.trainers.evaluate import EvalData

    found = read_decisions(root, get_settings(), trained_sessions=set(), trained_uuids=set(),
                           max_prompt_tokens=max_prompt_tokens)
    points = found.points
    if len(points) > count:
        points = [points[i] for i in sorted(random.Random(seed).sample(range(len(points)), count))]
    return EvalData(dataset_path=str(root), decisions=points, plans=[], fold="sessions", train_labels=[],
                    train_tool_sequences=[], tools=found.tools, counts={"decisions": len(points)})


def one_at_a_time(generator: Any, data: Any, max_new_tokens: int) -> list[str]:
    """The evaluation's generation before batching (its code at commit 66761a5)."""
    import torch
    from transformers import GenerationConfig

    texts = []
    for point in data.decisions:
        tools = data.tools.get(point.trace_id)
        kwargs = {"tools": tools} if tools and generator.tools_in_training else {}
        encoded = generator.tokenizer.apply_chat_template(point.prefix, add_generation_prompt=True, tokenize=True,
                                                          return_dict=True, return_tensors="pt", **kwargs)
        config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens,
                                  eos_token_id=generator.end_of_turn_id, pad_token_id=generator.tokenizer.pad_token_id)
        with torch.inference_mode():
            output = generator.model.generate(**encoded, generation_config=config)
        texts.append(generator.tokenizer.decode(output[0, encoded["input_ids"].shape[1]:], skip_special_tokens=True))
    return texts


def timed(fn: Any) -> tuple[list[str], float]:
    started = time.perf_counter()
    texts = fn()
    return texts, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="HF model folder (default: the embedded SmolLM2)")
    parser.add_argument("--sessions", type=Path, default=FIXTURES, help="transcripts, as for eval --sessions")
    parser.add_argument("--decisions", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", default="1", help="torch thread counts of the batched path, e.g. 1,2")
    parser.add_argument("--bf16", action="store_true", help="also the batched path with bf16 autocast")
    parser.add_argument("--max-prompt-tokens", type=int, default=512)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="ccrl-eval-bench-"))
    os.environ["CCRL_HOME"] = str(scratch / "home")  # nothing of the user's store is read or written
    import torch

    from ccrl.trainers import metrics as m
    from ccrl.trainers.base_models import ensure_embedded_base
    from ccrl.trainers.evaluate import EvalConfig, HFGenerator, _decision_texts

    model = args.model or ensure_embedded_base(Path(tempfile.gettempdir()) / "ccrl-bench-base")
    data = decisions(args.sessions.expanduser(), args.decisions, args.max_prompt_tokens, args.seed)
    n = len(data.decisions)
    threads = [int(t) for t in args.threads.split(",")]
    torch.set_num_threads(threads[0])
    generator = HFGenerator(model, threads=threads[0], cpu_bf16=False)
    generator.generate(data.decisions[0].prefix, 2)  # warm-up, not timed
    baseline, base_seconds = timed(lambda: one_at_a_time(generator, data, args.max_new_tokens))
    rows = [{"variant": f"one at a time, {threads[0]} thread(s)", "seconds": base_seconds, "texts": baseline}]
    variants = [(t, False) for t in threads] + ([(threads[0], True)] if args.bf16 else [])
    for count, bf16 in variants:
        torch.set_num_threads(count)
        generator.autocast_bf16 = bf16
        config = EvalConfig(batch_size=args.batch_size, decision_max_new_tokens=args.max_new_tokens, max_plans=0)
        texts, seconds = timed(lambda: _decision_texts(generator, data, config, "bench", None))
        rows.append({"variant": f"batch {args.batch_size}, {count} thread(s){', bf16' if bf16 else ''}",
                     "seconds": seconds, "texts": texts})
    generator.close()

    base_labels = [m.action_from_text(t).label for t in baseline]
    report = {"model": str(model), "decisions": n, "max_prompt_tokens": args.max_prompt_tokens,
              "max_new_tokens": args.max_new_tokens, "cpu_count": os.cpu_count(),
              "load_average": os.getloadavg()[0], "variants": []}
    for row in rows:
        same_text = sum(a == b for a, b in zip(row["texts"], baseline))
        same_action = sum(m.action_from_text(t).label == b for t, b in zip(row["texts"], base_labels))
        report["variants"].append({
            "variant": row["variant"], "seconds": round(row["seconds"], 2),
            "decisions_per_second": round(n / row["seconds"], 3),
            "seconds_per_decision": round(row["seconds"] / n, 3),
            "speedup": round(base_seconds / row["seconds"], 2),
            "same_text": same_text, "same_action": same_action})
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"{n} decisions of {args.sessions} ({args.max_prompt_tokens}-token windows, up to {args.max_new_tokens} "
          f"new tokens), {model}; {os.cpu_count()} cores, load {report['load_average']:.1f}")
    for v in report["variants"]:
        print(f"  {v['variant']:<32} {v['decisions_per_second']:6.3f} decisions/s  {v['seconds_per_decision']:5.2f} s each"
              f"  x{v['speedup']:.2f}  same text {v['same_text']}/{n}, same action {v['same_action']}/{n}")


if __name__ == "__main__":
    main()
