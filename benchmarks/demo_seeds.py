"""Does the demo's claim hold across training seeds? ``ccrl demo`` once per seed, same samples.

Each seed runs the whole demo (``ccrl demo --seed N --json``) in its own scratch folder: the
samples, the dataset and its held-out test fold are the same every time; only SFT's and RL's
seeds change. For each seed it prints the trained model's next-action agreement on every
test-fold decision against the bigram baseline, the most-frequent baseline and the base model,
with the paired differences and their 95% intervals (session-cluster bootstrap, as the gate
computes them), and the demo's wall time. The claim it carries: the paired interval over the
bigram baseline is above zero for every seed.

    .venv/bin/python benchmarks/demo_seeds.py --seeds 42 43 44 --out /tmp/demo-seeds.json
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
from typing import Any

CCRL = [sys.executable, "-c", "import sys; from ccrl.agent.cli import main; sys.argv[0] = \"ccrl\"; sys.exit(main())"]


def run_seed(folder: Path, seed: int) -> dict[str, Any]:
    """One whole demo in ``folder`` with ``seed``; the figures of its report."""
    env = {**os.environ, "CCRL_HOME": str(folder / "home"), "CCRL_CONFIG": str(folder / "home" / "config.toml")}
    env.pop("CCRL_DATABASE_URL", None)
    report_path = folder / "demo" / "report" / "report.json"
    report_path.unlink(missing_ok=True)  # a kept folder's last report must not stand in for this run's
    started = time.monotonic()
    done = subprocess.run([*CCRL, "demo", "--dir", str(folder / "demo"), "--seed", str(seed), "--json"],
                          env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    if not report_path.is_file():
        raise SystemExit(f"ccrl demo --seed {seed} wrote no report (exit {done.returncode}):\n{done.stderr[-4000:]}")
    report = json.loads(report_path.read_text())
    gate = report.get("gate") or {}
    judged = gate.get("judged")
    subjects = gate.get("subjects") or {}

    def agreement(name: str | None) -> dict[str, Any] | None:
        metric = ((subjects.get(name) or {}).get("metrics") or {}).get("next_action") if name else None
        return {k: metric.get(k) for k in ("value", "low", "high", "n", "sessions")} if metric else None

    return {
        "seed": seed, "exit": done.returncode, "wall_s": round(wall, 1), "demo_s": report.get("seconds"),
        "judged": judged, "passed": gate.get("passed"), "reason": gate.get("reason"),
        "interval_method": gate.get("interval_method"),
        "sft": {k: (report.get("sft") or {}).get(k) for k in ("global_step", "train_examples", "tokens_per_second",
                                                              "train_runtime_s", "eval_loss_before", "eval_loss_after")},
        "agreement": {"trained": agreement(judged), "bigram": agreement("bigram"),
                      "most_frequent": agreement("most_frequent"), "base": agreement("base")},
        "paired": gate.get("paired") or {},
    }


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| seed | trained | bigram | trained - bigram | trained - most frequent | trained - base | demo wall |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        a, p = r["agreement"], r["paired"]

        def diff(name: str) -> str:
            d = p.get(name)
            return f"{d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" if d and d.get("value") is not None else "-"

        def level(name: str) -> str:
            m = a.get(name)
            return f"{m['value']:.3f} [{m['low']:.3f}, {m['high']:.3f}]" if m and m.get("value") is not None else "-"

        lines.append(f"| {r['seed']} | {level('trained')} | {level('bigram')} | {diff('bigram')} | "
                     f"{diff('most_frequent')} | {diff('base')} | {r['wall_s'] / 60:.1f} min |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="ccrl-demo-seeds-") as scratch:
        root = args.keep or Path(scratch)
        for seed in args.seeds:
            results.append(run_seed(root / f"seed-{seed}", seed))
            print(json.dumps(results[-1]), flush=True)
            if args.out:
                args.out.write_text(json.dumps(results, indent=2))
    print(table(results))
    wins = [r for r in results if (r["paired"].get("bigram") or {}).get("low", -1) > 0]
    print(f"\npaired 95% interval over the bigram baseline above zero: {len(wins)} of {len(results)} seeds; "
          f"method: {results[0].get('interval_method')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
