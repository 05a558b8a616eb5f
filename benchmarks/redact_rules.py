"""Redaction cost on adversarial inputs: linear, not quadratic, measured against a baseline.

For each adversarial input of tests/redact_cases.py (long runs of what makes a rule start,
continue or backtrack), at two sizes, this times ``redact_text`` and ``redact_bytes`` and, in
the same run on the same input, a baseline: ``re.sub`` of a trivial pattern (``\\w+``, every
word character removed) over it, one full pass of the regex engine. It prints the ratio to
the baseline and the growth from the small to the large size: about the size ratio (4x for
the defaults) for a linear rule, its square (16x) for a quadratic one. Each time is the best of
``--repeat`` runs. Usage::

    .venv/bin/python benchmarks/redact_rules.py [--size 100000] [--factor 4] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from ccrl.hooks.redact import redact_bytes, redact_text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from redact_cases import adversarial_inputs  # noqa: E402  (the battery lives with the tests)

TRIVIAL = re.compile(r"\w+")
TRIVIAL_BYTES = re.compile(rb"\w+")


def _best_time(fn, arg, repeat: int) -> float:
    """The best of ``repeat`` runs: on a shared machine the fastest run is the least disturbed."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100_000, help="characters of the small input")
    parser.add_argument("--factor", type=int, default=4, help="the large input is this many times larger")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    small = adversarial_inputs(args.size)
    large = adversarial_inputs(args.size * args.factor)
    rows = []
    for (case_id, text, expected), (_, big, big_expected) in zip(small, large):
        row = {"case": case_id, "chars": len(big)}
        for mode, fn, conv in (("text", redact_text, str), ("bytes", redact_bytes, str.encode)):
            a, b = conv(text), conv(big)
            t_small = _best_time(fn, a, args.repeat)
            t_large = _best_time(fn, b, args.repeat)
            base = _best_time(lambda s: TRIVIAL.sub("", s) if isinstance(s, str) else
                                TRIVIAL_BYTES.sub(b"", s), b, args.repeat)
            correct = fn(b) == conv(big_expected) and fn(a) == conv(expected)
            row[mode] = {"ms": round(t_large * 1000, 2), "x_baseline": round(t_large / base, 1),
                         "growth": round(t_large / t_small, 1), "correct": correct}
        rows.append(row)
    worst = max(max(r["text"]["growth"], r["bytes"]["growth"]) for r in rows)
    summary = {"small_chars": args.size, "factor": args.factor, "worst_growth": worst,
               "quadratic_would_be": args.factor ** 2, "all_correct": all(
                   r["text"]["correct"] and r["bytes"]["correct"] for r in rows), "cases": rows}
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"{len(rows)} adversarial inputs; large = {args.factor}x small ({args.size} chars); "
          f"baseline = re.sub(r'\\w+', '', input) over the same large input")
    print(f"{'case':34} {'chars':>8} {'text ms':>9} {'x base':>7} {'growth':>7} "
          f"{'bytes ms':>9} {'x base':>7} {'growth':>7}  ok")
    for r in rows:
        t, b = r["text"], r["bytes"]
        print(f"{r['case']:34} {r['chars']:>8} {t['ms']:>9.1f} {t['x_baseline']:>7.1f} {t['growth']:>7.1f} "
              f"{b['ms']:>9.1f} {b['x_baseline']:>7.1f} {b['growth']:>7.1f}  "
              f"{'yes' if t['correct'] and b['correct'] else 'NO'}")
    print(f"worst growth {worst}x for {args.factor}x the input (linear: ~{args.factor}x, "
          f"quadratic: ~{args.factor ** 2}x); all outputs correct: {summary['all_correct']}")


if __name__ == "__main__":
    main()
