"""Does SFT learn from real Claude Code sessions? Held-out sessions, baselines, seeds.

The corpus's sessions are split by session into a training set and a held-out set (seeded,
the same held-out sessions for every training seed). The training sessions are imported into a
scratch ``CCRL_HOME`` and built into a dataset by the product's own commands; SFT then runs once
per seed from the base model, and ``ccrl eval --sessions`` scores each trained model, the base
model and both baselines (fitted on the dataset's train split) on the same held-out next-action
decisions, with intervals and paired differences that resample sessions.

    .venv/bin/python benchmarks/real_corpus.py --seeds 0 1 2 --max-steps 60
    .venv/bin/python benchmarks/real_corpus.py --fractions 0.25 0.5 1 --subsets 2 --epochs 1   # learning curve

Nothing is copied: the held-out folder holds symbolic links to the corpus's files. Results go to
``--out`` (JSON) and a table on stdout; ``--plot`` draws agreement against training decisions.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus" / "claude-code-sessions" / "entireio-cli"
CCRL = [sys.executable, "-c", "import sys; from ccrl.agent.cli import main; sys.argv[0] = \"ccrl\"; sys.exit(main())"]
MODELS = ("candidate", "base", "bigram", "most_frequent")


def split_sessions(files: list[Path], held_out: int, seed: int) -> tuple[list[Path], list[Path]]:
    """(training, held-out) transcript files: a seeded choice of ``held_out`` sessions."""
    order = sorted(files)
    random.Random(seed).shuffle(order)
    return sorted(order[held_out:]), sorted(order[:held_out])


def link_folder(folder: Path, files: list[Path]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for path in files:
        (folder / path.name).symlink_to(path.resolve())
    return folder


def ccrl(env: dict[str, str], *args: str) -> dict[str, Any]:
    """One ``ccrl`` command with ``--json``; its parsed output."""
    done = subprocess.run([*CCRL, *args, "--json"], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"ccrl {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout)


def scratch_env(home: Path, overrides: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, "CCRL_HOME": str(home), "CCRL_CONFIG": str(home / "config.toml"), **overrides}
    env.pop("CCRL_DATABASE_URL", None)
    return env


def train(env: dict[str, str], seed: int, max_steps: int | None, epochs: int | None) -> tuple[dict[str, Any], float]:
    """One SFT run from the base model, seeded; (its run JSON, wall seconds)."""
    options = {"seed": seed, **({"num_train_epochs": epochs} if epochs else {})}
    code = (
        "import json, sys\n"
        "from ccrl.agent.training.training import run_training, run_json\n"
        f"run = run_training('sft', from_base=True, max_steps={max_steps!r}, options={options!r}, progress_bar=False)\n"
        "print(json.dumps(run_json(run), default=str))\n"
    )
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"SFT (seed {seed}) failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), time.monotonic() - start


def experiment(train_files: list[Path], held_out: Path, work: Path, args: argparse.Namespace,
               overrides: dict[str, str]) -> dict[str, Any]:
    """Import, build, then per seed: SFT and ``eval --sessions``."""
    home = work / "home"
    env = scratch_env(home, overrides)
    imported = ccrl(env, "import", str(link_folder(work / "train", train_files)))
    dataset = ccrl(env, "build-dataset")
    runs = []
    for seed in args.seeds:
        run, seconds = train(env, seed, args.max_steps, args.epochs)
        report = ccrl(env, "eval", "--run", str(run["id"]), "--sessions", str(held_out),
                      "--max-decisions", str(args.max_decisions), "--seed", str(args.eval_seed),
                      "--max-prompt-tokens", str(args.max_prompt_tokens), "--max-new-tokens", str(args.max_new_tokens))
        runs.append({"seed": seed, "run": run, "train_seconds": round(seconds, 1), "eval": report})
        print(row(f"seed {seed}", report), flush=True)
    return {"train_sessions": len(train_files), "import": imported, "dataset": dataset, "runs": runs}


def _cell(metric: dict[str, Any] | None) -> str:
    if not metric or metric.get("value") is None:
        return "-"
    return f"{metric['value']:.3f} [{metric['low']:.2f}, {metric['high']:.2f}]"


def row(label: str, report: dict[str, Any]) -> str:
    models = report["models"]
    cells = [_cell(models[name]["next_action"]) for name in MODELS]
    paired = report["paired"]
    diffs = [f"{paired[k]['diff']:+.3f} [{paired[k]['low']:+.2f}, {paired[k]['high']:+.2f}]"
             for k in ("candidate_vs_bigram", "candidate_vs_most_frequent", "candidate_vs_base")]
    return (f"{label}: n={report['decisions']} decisions / {report['sessions']} sessions | "
            + " | ".join(f"{m} {c}" for m, c in zip(MODELS, cells)) + " | paired vs bigram, most frequent, base: "
            + ", ".join(diffs))


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for entry in results:
        for run in entry["runs"]:
            decisions = entry["dataset"]["stats"]["splits"]["train"]["next_action_decisions"]
            m = run["eval"]["models"]["candidate"]["next_action"]
            ax.errorbar([decisions], [m["value"]], yerr=[[m["value"] - m["low"]], [m["high"] - m["value"]]],
                        fmt="o", color="tab:blue", capsize=3)
    bigram = results[-1]["runs"][-1]["eval"]["models"]["bigram"]["next_action"]["value"]
    ax.axhline(bigram, color="tab:orange", linestyle="--", label="bigram baseline (full training set)")
    ax.set_xlabel("training decisions")
    ax.set_ylabel("next-action agreement\n(held-out sessions, 95% session bootstrap)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--held-out", type=int, default=8, help="sessions held out (default 8)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the held-out choice")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    parser.add_argument("--max-steps", type=int, default=None, help="optimizer steps per run (default: whole epochs)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default: [train] num_epochs)")
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0],
                        help="shares of the training sessions (a learning curve when several)")
    parser.add_argument("--subsets", type=int, default=1, help="seeded session subsets per fraction below 1")
    parser.add_argument("--max-decisions", type=int, default=300)
    parser.add_argument("--eval-seed", type=int, default=0)
    parser.add_argument("--max-prompt-tokens", type=int, default=1024,
                        help="each decision's prompt window (default: SFT's CPU length, 1024)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens a model may write per decision")
    parser.add_argument("--set", action="append", default=[], metavar="ENV=VALUE",
                        help="a CCRL_* setting for the scratch store, e.g. CCRL_DATASET__TOOL_RESULT_TOKENS=256")
    parser.add_argument("--out", type=Path, default=Path("real_corpus.json"))
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args(argv)
    overrides = dict(item.split("=", 1) for item in args.set)

    files = sorted(args.corpus.glob("*.jsonl"))
    if len(files) <= args.held_out:
        raise SystemExit(f"{args.corpus} holds {len(files)} sessions: too few to hold out {args.held_out}")
    train_files, held_files = split_sessions(files, args.held_out, args.split_seed)
    results = []
    with tempfile.TemporaryDirectory(prefix="ccrl-real-corpus-") as tmp:
        work = Path(tmp)
        held_out = link_folder(work / "held-out", held_files)
        print(f"{len(train_files)} training sessions, {len(held_files)} held out: "
              + ", ".join(p.name for p in held_files), flush=True)
        for fraction in args.fractions:
            subsets = 1 if fraction >= 1 else args.subsets
            for subset in range(subsets):
                chosen = sorted(random.Random(1000 + subset).sample(train_files, max(1, round(fraction * len(train_files)))))
                print(f"fraction {fraction:g}, subset {subset}: {len(chosen)} sessions", flush=True)
                entry = experiment(chosen, held_out, work / f"f{fraction:g}-s{subset}", args, overrides)
                results.append({"fraction": fraction, "subset": subset, **entry})
                args.out.write_text(json.dumps(results, indent=2, default=str))
    if args.plot:
        plot(results, args.plot)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
