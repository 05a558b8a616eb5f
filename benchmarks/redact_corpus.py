"""What redaction finds in real sessions: markers per MB and a reviewable, masked sample.

Runs the redaction rules (exactly as ``redact_text`` does, rule by rule, recording each change)
over every string of Claude Code transcripts (JSONL) and hook payloads (JSON): by default the real corpus
(../shared/corpus/claude-code-sessions) and the test fixtures (../shared/fixtures/claude-code/
transcripts, hook_payloads). Prints, per source, MB read, markers and markers per MB by kind, then a seeded
sample of matches with some context, the value masked (first 3 characters and its length), for
a person to judge true secret or false positive. Usage::

    .venv/bin/python benchmarks/redact_corpus.py [PATH ...] [--sample 50] [--seed 16] [--json]
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
from pathlib import Path

from ccrl.hooks import redact

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
DEFAULT_SOURCES = [SHARED / "corpus" / "claude-code-sessions", SHARED / "fixtures" / "claude-code" / "transcripts",
                   SHARED / "fixtures" / "claude-code" / "hook_payloads"]


def strings_of(value):
    """Every string inside a JSON value (keys too: they are stored as well)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings_of(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_of(item)


def mask(value: str) -> str:
    return f"{value[:3]}…({len(value)} chars)" if len(value) > 3 else f"…({len(value)} chars)"


def redact_recording(text: str, found: list[dict], where: str) -> str:
    """``redact_text``, recording every change: kind, masked value, context around it."""
    for index in redact.rules_needed(text.lower()):
        kind, rx, sub = redact._rule(index, False)

        def record(match, kind=kind, sub=sub):
            out = sub(match) if callable(sub) else match.expand(sub)
            if out != match.group(0):
                whole = match.group(0)
                # The changed part: strip the common prefix and suffix of before and after.
                start = 0
                while start < min(len(whole), len(out)) and whole[start] == out[start]:
                    start += 1
                end = 0
                while end < min(len(whole), len(out)) - start and whole[-1 - end] == out[-1 - end]:
                    end += 1
                value = whole[start:len(whole) - end]
                s = match.start() + start
                found.append({
                    "kind": kind, "where": where, "value": mask(value),
                    "before": match.string[max(0, s - 40):s], "after": match.string[s + len(value):s + len(value) + 40],
                })
            return out

        text = rx.sub(record, text)
    return text


def scan(paths: list[Path]) -> tuple[int, int, list[dict]]:
    """Bytes read, markers the hook's byte-level pass adds to the raw lines, and every change
    the text-level pass makes (what ingest stores)."""
    total, raw_markers, found = 0, 0, []
    for path in paths:
        data = path.read_bytes()
        total += len(data)
        lines = data.splitlines() if path.suffix == ".jsonl" else [data]
        for number, line in enumerate(lines, 1):
            raw_markers += redact.redact_bytes(line).count(b"[REDACTED:") - line.count(b"[REDACTED:")
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            for text in strings_of(obj):
                redact_recording(text, found, f"{path.name}:{number}")
    return total, raw_markers, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path, help="JSONL files or folders (default: corpus and fixtures)")
    parser.add_argument("--sample", type=int, default=50)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    sources = args.paths or DEFAULT_SOURCES
    report, everything = {}, []
    for source in sources:
        files = sorted(p for p in source.rglob("*.json*") if p.suffix in (".json", ".jsonl")) \
            if source.is_dir() else [source]
        size, raw_markers, found = scan(files)
        everything += found
        kinds = collections.Counter(item["kind"] for item in found)
        mb = size / 1e6
        report[str(source)] = {"files": len(files), "mb": round(mb, 2), "markers": len(found),
                               "markers_per_mb": round(len(found) / mb, 2) if size else 0.0,
                               "hook_pass_markers": raw_markers,
                               "hook_pass_markers_per_mb": round(raw_markers / mb, 2) if size else 0.0,
                               "by_kind": dict(kinds.most_common())}
    sample = random.Random(args.seed).sample(everything, min(args.sample, len(everything)))
    if args.json:
        print(json.dumps({"sources": report, "sample": sample}, indent=2, ensure_ascii=False))
        return
    for source, r in report.items():
        print(f"{source}: {r['files']} files, {r['mb']} MB, {r['markers']} markers, {r['markers_per_mb']} per MB"
              f" (hook's byte-level pass over the raw lines: {r['hook_pass_markers']}, "
              f"{r['hook_pass_markers_per_mb']} per MB)")
        for kind, n in r["by_kind"].items():
            print(f"    {kind:28} {n}")
    print(f"\nseeded sample of {len(sample)} (seed {args.seed}), values masked:")
    for i, item in enumerate(sample, 1):
        context = (item["before"] + "⟦" + item["value"] + "⟧" + item["after"]).replace("\n", "⏎")
        print(f"{i:3} {item['kind']:22} {item['where']:48} {context}")


if __name__ == "__main__":
    sys.exit(main())
