"""The cost of ingest's second redaction pass (detect-secrets' detectors, agent/capture/deep_redact.py).

Two measurements, each with and without the pass, in the same run:

- ``ccrl import`` of a folder of real transcripts (default: the 31-session corpus) into a fresh
  data directory, the variants interleaved round-robin; the "without" variant replaces
  ``deep_redact.detector_pass`` by the identity, so it runs the hook's rules alone;
- redaction alone: every string value of those transcripts through the hook's rules, then
  through the hook's rules plus the detectors (MB/s).

It also counts what the pass added: markers it wrote that the hook's rules had not.
Usage::

    .venv/bin/python benchmarks/ingest_redaction.py [--rounds 2] [--path DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from build_dataset import _use_home  # noqa: E402  (this folder is on sys.path when run as a script)

from ccrl.agent.capture import deep_redact
from ccrl.hooks import redact as hook_rules

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus" / "claude-code-sessions" / "entireio-cli"
MARKER = re.compile(r"\[REDACTED:([a-z0-9_]+)\]")


def _strings(path: Path) -> list[str]:
    found: list[str] = []

    def walk(value: object) -> None:
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    for file in sorted(path.rglob("*.jsonl")):
        for line in file.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                walk(json.loads(line))
            except ValueError:
                continue
    return found


def _import_once(path: Path, with_pass: bool) -> float:
    from ccrl.agent.capture.importer import import_transcripts

    original = deep_redact.detector_pass
    if not with_pass:
        deep_redact.detector_pass = lambda text: text  # type: ignore[assignment]
    try:
        with tempfile.TemporaryDirectory(prefix="ccrl-bench-") as tmp:
            _use_home(Path(tmp) / "home")
            start = time.perf_counter()
            report = import_transcripts(path)
            elapsed = time.perf_counter() - start
            if getattr(report, "errors", None):
                raise SystemExit(f"import reported errors: {report.errors[:3]}")
            _use_home(Path(tmp) / "done")  # dispose the engine before the folder goes
    finally:
        deep_redact.detector_pass = original  # type: ignore[assignment]
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", type=Path, default=CORPUS, help="folder of Claude Code transcripts")
    parser.add_argument("--rounds", type=int, default=2, help="imports per variant (interleaved)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    texts = _strings(args.path)
    mb = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts) / 1e6
    start = time.perf_counter()
    rules_only = [hook_rules.redact_text(t) for t in texts]
    rules_s = time.perf_counter() - start
    start = time.perf_counter()
    both = [deep_redact.detector_pass(t) for t in rules_only]
    pass_s = time.perf_counter() - start
    added: dict[str, int] = {}
    for before, after in zip(rules_only, both):
        if before != after:
            for kind in MARKER.findall(after):
                added[kind] = added.get(kind, 0) + 1
            for kind in MARKER.findall(before):
                added[kind] -= 1
    added = {k: v for k, v in added.items() if v}

    runs: dict[str, list[float]] = {"hook rules only": [], "hook rules + detectors": []}
    for _ in range(args.rounds):
        runs["hook rules only"].append(_import_once(args.path, with_pass=False))
        runs["hook rules + detectors"].append(_import_once(args.path, with_pass=True))
    without = statistics.median(runs["hook rules only"])
    with_pass = statistics.median(runs["hook rules + detectors"])
    summary = {
        "path": str(args.path), "text_mb": round(mb, 2), "strings": len(texts),
        "redaction_mb_per_s": {"hook rules": round(mb / rules_s, 1),
                               "detectors (second pass)": round(mb / pass_s, 1),
                               "both": round(mb / (rules_s + pass_s), 1)},
        "import_s": {k: [round(x, 2) for x in v] for k, v in runs.items()},
        "import_ratio_with_to_without": round(with_pass / without, 2),
        "markers_added_by_detectors": added,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"{args.path}: {len(texts)} strings, {mb:.1f} MB of text")
    for name, rate in summary["redaction_mb_per_s"].items():
        print(f"  redaction, {name:24} {rate:>7.1f} MB/s")
    for name, values in summary["import_s"].items():
        print(f"  ccrl import, {name:24} median {statistics.median(values):.2f} s  ({values})")
    print(f"  import time with the second pass / without: {summary['import_ratio_with_to_without']:.2f}x")
    print(f"  markers the detectors added past the hook's rules: {added or 'none'}")


if __name__ == "__main__":
    sys.exit(main())
