"""Whether the RL phase can learn from the behavioural reward: TRL's share of prompt groups with
zero reward spread (``frac_reward_zero_std``: every completion of the group scored the same, so
every advantage is 0) under the reward's format rule before the fix (every component times the
share of sections present: a single decision scored 0) and under the current one, in two short
GRPO runs with the same seed, start model and prompts; then the held-out reward of greedy plans
(one per eval-split RL prompt, as the deployment gate generates them) of the start model
against the RL model, paired, with a session-cluster bootstrap interval, beside the fixed plan
(the training split's most common completion, cut at the same length).

Inputs: a dataset version folder (``rl_prompts/`` and ``jsonl/rl_prompts.eval.jsonl``, e.g.
``ccrl demo``'s ``datasets/v1``) and the SFT model the RL phase starts from (its ``merged/``).

    .venv/bin/python benchmarks/rl_reward_spread.py DATASET_DIR SFT_MERGED_DIR [--steps 8]
        [--prompts-per-step 1] [--generations 4] [--completion-tokens 128] [--learning-rate 1e-3]
        [--completions-per-forward 4] [--threads 1] [--skip-before] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _run(dataset: Path, start: Path, out: Path, args: argparse.Namespace, *, before_fix: bool) -> dict[str, Any]:
    from ccrl.trainers import reward as R
    from ccrl.trainers.rl import RLConfig, train_rl

    config = RLConfig(episodes=args.steps * args.prompts_per_step, prompts_per_step=args.prompts_per_step,
                      num_generations=args.generations, max_completion_length=args.completion_tokens,
                      learning_rate=args.learning_rate, completions_per_forward=args.completions_per_forward,
                      eval_prompts=0, save_steps=1.0, save_total_limit=1, merge=not before_fix,
                      cpu_threads=args.threads, seed=args.seed)
    current = R.Plan.format_factor
    if before_fix:  # the rule before the fix: every component times the share of sections present
        R.Plan.format_factor = property(lambda plan: plan.sections / len(R.SECTIONS))
    wall, cpu = time.monotonic(), time.process_time()
    try:
        result = train_rl(dataset / "rl_prompts", out, start, config, emit=lambda event: None, progress_bar=False)
    finally:
        R.Plan.format_factor = current
    m = result.metrics
    return {"frac_reward_zero_std": m["frac_reward_zero_std"], "zero_spread_groups": m["zero_spread_groups"],
            "reward_groups": m["reward_groups"], "train_reward_first": m["train_reward_first"],
            "train_reward_last": m["train_reward_last"], "wall_s": round(time.monotonic() - wall, 1),
            "cpu_s": round(time.process_time() - cpu, 1), "merged": str(result.merged_dir) if result.merged_dir else None}


def _greedy_rewards(model: Path, rows: list[dict[str, Any]], max_new_tokens: int, threads: int) -> list[float]:
    from ccrl.trainers import reward as R
    from ccrl.trainers.evaluate import HFGenerator

    generator = HFGenerator(model, threads=threads)
    try:
        texts = []
        for start in range(0, len(rows), 8):
            texts += generator.generate_batch([(row["prompt"], None) for row in rows[start:start + 8]], max_new_tokens)
    finally:
        generator.close()
    return [R.total_reward(R.score_components(text, R.make_reference(r["reference_signals"], r["reference_completion"],
                                                                     r["prompt"]))) for text, r in zip(texts, rows)]


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("start", type=Path)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--prompts-per-step", type=int, default=1)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--completion-tokens", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--completions-per-forward", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the cores are shared)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--skip-before", action="store_true", help="no run under the rule before the fix")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from ccrl.trainers import reward as R
    from ccrl.trainers.metrics import cluster_bootstrap
    from ccrl.trainers.rl import RLConfig, fixed_plan_reward

    report: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items() if k not in ("dataset", "start", "json")}}
    with tempfile.TemporaryDirectory(prefix="ccrl-rl-spread-") as tmp:
        if not args.skip_before:
            report["before_fix"] = _run(args.dataset, args.start, Path(tmp) / "before", args, before_fix=True)
        report["current"] = after = _run(args.dataset, args.start, Path(tmp) / "current", args, before_fix=False)
        rows = _jsonl(args.dataset / "jsonl" / "rl_prompts.eval.jsonl")
        sessions = [r.get("session_id") for r in rows]
        start = _greedy_rewards(args.start, rows, args.completion_tokens, args.threads)
        tuned = _greedy_rewards(Path(after["merged"]), rows, args.completion_tokens, args.threads)
        from transformers import AutoTokenizer

        fixed = fixed_plan_reward(_jsonl(args.dataset / "jsonl" / "rl_prompts.train.jsonl"), rows,
                                  RLConfig().weights, tokenizer=AutoTokenizer.from_pretrained(str(args.start)),
                                  max_tokens=args.completion_tokens)
    diff = [b - a for a, b in zip(start, tuned)]
    low, high = cluster_bootstrap(diff, sessions)
    report["heldout_greedy"] = {
        "prompts": len(rows), "sessions": len(set(sessions)), "start": sum(start) / len(start),
        "rl": sum(tuned) / len(tuned), "fixed_plan": fixed["reward"] if fixed else None,
        "paired_rl_minus_start": {"diff": sum(diff) / len(diff), "low": low, "high": high,
                                  "method": "session-cluster percentile bootstrap"},
        "weights": R.RewardWeights().as_dict()}
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    for name in ("before_fix", "current"):
        if name in report:
            r = report[name]
            print(f"{name:>10}: frac_reward_zero_std {r['frac_reward_zero_std']:.3f} ({r['zero_spread_groups']} of "
                  f"{r['reward_groups']} groups), training reward {r['train_reward_first']:.3f} -> "
                  f"{r['train_reward_last']:.3f}, {r['wall_s']} s wall, {r['cpu_s']} s CPU")
    h = report["heldout_greedy"]
    p = h["paired_rl_minus_start"]
    print(f"held-out greedy reward on {h['prompts']} prompts ({h['sessions']} sessions): start {h['start']:.3f}, "
          f"RL {h['rl']:.3f}, paired {p['diff']:+.3f} [{p['low']:+.3f}, {p['high']:+.3f}] ({p['method']}); "
          f"fixed plan {'-' if h['fixed_plan'] is None else format(h['fixed_plan'], '.3f')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
