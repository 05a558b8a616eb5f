"""Regenerate the sample sessions that ``ccrl demo`` trains on (``agent/data/samples/``).

Runs every session of ``tests/e2e/demo_scenarios.py`` with the REAL Claude Code CLI (the pinned
version ``make setup`` installs into ``.cache/claude-code``) against the scripted Messages API of
``tests/e2e/scripted_api.py``, as an isolated user (``tests/e2e/harness.py``): Claude Code
really runs the tools (pytest, grep, edits…) in small scratch projects and writes its own
transcripts. Those transcripts are what ships, with three changes, all checked:

1. paths: the generation sandbox (a temp dir) becomes ``/home/dev`` (projects under
   ``/home/dev/projects/``), so the samples carry no path of the machine that made them;
2. redaction: every file goes through ccrl's own redaction (``ccrl.hooks.redact``); there are no
   secrets in these projects, and the script fails if redaction changes anything;
3. nothing else: lines stay as Claude Code wrote them.

Then it checks the result through ccrl itself: the transcripts are imported into a temporary
store (``import_transcripts``) and every scenario's trace must have the scripted prompt, tool
sequence, failed calls and answer; a dataset is built with the default filters and no sample
may be dropped.

    .venv/bin/python scripts/make_samples.py [--out agent/data/samples] [--jobs 4] [--seed 7]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.e2e.demo_scenarios import PromptScriptedAPI, SampleSandbox, Session, build_sessions  # noqa: E402
from tests.e2e.harness import ClaudeRun, claude_version, find_claude  # noqa: E402

SAMPLE_HOME = "/home/dev"
SAMPLE_PROJECTS = f"{SAMPLE_HOME}/projects"
DEFAULT_OUT = REPO / "agent" / "data" / "samples"
ARCHIVE = "transcripts.tar.xz"


def mangle(path: str) -> str:
    """Claude Code's folder name for a project: every non-alphanumeric character becomes ``-``."""
    return re.sub(r"[^A-Za-z0-9]", "-", path)


def run_session(sandbox: SampleSandbox, session: Session) -> list[ClaudeRun]:
    """The session's prompts in order (the 2nd and later with ``--continue``); stops at a failure."""
    runs = []
    for number, scenario in enumerate(session.scenarios):
        run = sandbox.claude(scenario.prompt, session.project, continue_session=number > 0)
        runs.append(run)
        if run.returncode != 0:
            break
    return runs


def rewrite(text: str, sandbox: SampleSandbox) -> str:
    """Sandbox paths → the neutral sample paths (longest first, so projects win over HOME)."""
    replacements = [
        (str(sandbox.root / "projects"), SAMPLE_PROJECTS),
        (str(sandbox.home), SAMPLE_HOME),
        (str(sandbox.tmp), "/tmp"),
        (mangle(str(sandbox.root / "projects")), mangle(SAMPLE_PROJECTS)),
    ]
    for old, new in replacements:
        text = text.replace(old, new)
    return text


def collect(sandbox: SampleSandbox, out: Path) -> dict[str, int]:
    """Copy every transcript (rewritten, redaction-checked) into ``out/transcripts``."""
    from ccrl.hooks.redact import redact_text

    source = sandbox.home / ".claude" / "projects"
    target = out / "transcripts"
    files = bytes_total = 0
    leftovers = [str(sandbox.root), mangle(str(sandbox.root))]
    for path in sorted(source.rglob("*.jsonl")):
        relative = rewrite(str(path.relative_to(source)), sandbox)
        text = rewrite(path.read_text(encoding="utf-8"), sandbox)
        for leftover in leftovers:
            if leftover in text or leftover in relative:
                raise SystemExit(f"{path}: the sandbox path {leftover} is still in the sample after rewriting")
        if redact_text(text) != text:
            raise SystemExit(f"{path}: redaction changed the transcript; a sample must not hold anything secret-like")
        dest = target / relative
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text, encoding="utf-8")
        files += 1
        bytes_total += len(text.encode())
    return {"files": files, "bytes": bytes_total}


def write_archive(transcripts: Path, archive: Path) -> int:
    """``transcripts`` as a reproducible ``.tar.xz`` (sorted entries, no owners or times): the
    transcripts repeat a lot (tool lists, request shapes), so xz packs ~14 MB into ~0.2 MB."""
    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        info.mode = 0o755 if info.isdir() else 0o644
        return info

    with tarfile.open(archive, "w:xz", preset=9) as tar:
        for path in sorted(transcripts.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(transcripts)), recursive=False, filter=normalise)
    return archive.stat().st_size


def unpack(archive: Path, dest: Path) -> Path:
    """Extract a samples archive (as ``ccrl demo`` does) for checking."""
    with tarfile.open(archive, "r:xz") as tar:
        tar.extractall(dest, filter="data")
    return dest


def check_import(transcripts: Path, sessions: list[Session]) -> dict[str, Any]:
    """Import the samples into a temporary store and compare every trace with its script; then
    build a dataset with the default settings: nothing may be dropped."""
    with tempfile.TemporaryDirectory(prefix="ccrl-samples-check-") as tmp:
        os.environ["CCRL_HOME"] = str(Path(tmp) / "home")
        os.environ["CCRL_CONFIG"] = str(Path(tmp) / "no-config.toml")
        from ccrl.agent.capture.importer import import_transcripts
        from ccrl.agent.core.config import Settings
        from ccrl.agent.datasets.datasets import build_dataset
        from ccrl.agent.store.db import session_scope
        from ccrl.agent.store.models import ToolCall, Trace
        from ccrl.agent.store.records import trace_json
        from sqlmodel import select

        settings = Settings(home=Path(tmp) / "home")
        report = import_transcripts(transcripts, settings)
        if report.errors or report.skipped_lines:
            raise SystemExit(f"importing the samples failed: {report.errors} ({report.skipped_lines} corrupt lines)")
        with session_scope(settings) as db:
            traces = {}
            for row in db.exec(select(Trace)).all():
                calls = list(db.exec(select(ToolCall).where(ToolCall.trace_id == row.id)).all())
                traces[row.prompt] = trace_json(row, calls)
        problems = []
        for session in sessions:
            for scenario in session.scenarios:
                trace = traces.get(scenario.prompt)
                if trace is None:
                    problems.append(f"{session.name}: no trace for {scenario.prompt!r}")
                    continue
                errors = [bool(c["is_error"]) for c in trace["tool_calls"]]
                if trace["tool_sequence"] != scenario.tool_sequence:
                    problems.append(f"{session.name}: tools {trace['tool_sequence']} != {scenario.tool_sequence}")
                if errors != scenario.expect_errors:
                    problems.append(f"{session.name}: {scenario.prompt!r}: errors {errors} != {scenario.expect_errors}")
                if trace["response"] != scenario.response:
                    problems.append(f"{session.name}: answer {trace['response']!r} != {scenario.response!r}")
        if problems:
            raise SystemExit("the samples do not match their scripts:\n  " + "\n  ".join(problems))
        built = build_dataset(settings)
        dropped = {k: v for k, v in (built.stats.get("dropped") or {}).items() if v}
        if dropped or built.trace_count != len(traces):
            raise SystemExit(f"the dataset builder dropped samples: {dropped} ({built.trace_count} of {len(traces)} kept)")
        splits = built.stats.get("splits") or {}
        return {"sessions": report.sessions, "traces": report.traces, "tool_calls": report.tool_calls,
                "tool_errors": report.tool_errors,
                "default_dataset": {name: {k: split.get(k) for k in ("sessions", "traces", "next_action_decisions")}
                                    for name, split in splits.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the samples go (replaced)")
    parser.add_argument("--jobs", type=int, default=4, help="sessions run at the same time")
    parser.add_argument("--seed", type=int, default=7, help="seed of the scenario pools")
    parser.add_argument("--check", type=Path, metavar="DIR",
                        help="only check the samples in DIR (its transcripts.tar.xz) against the scripts (no Claude Code runs)")
    args = parser.parse_args(argv)

    if args.check is not None:
        with tempfile.TemporaryDirectory(prefix="ccrl-samples-") as tmp:
            sessions = build_sessions(Path(tmp) / "projects", seed=args.seed)
            transcripts = unpack(args.check / ARCHIVE, Path(tmp) / "transcripts")
            print(json.dumps(check_import(transcripts, sessions), indent=2))
        return 0
    claude = find_claude()
    version = claude_version(claude)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ccrl-samples-") as tmp, PromptScriptedAPI() as api:
        sandbox = SampleSandbox(Path(tmp), api, claude)
        sessions = build_sessions(sandbox.root / "projects", seed=args.seed)
        for session in sessions:
            for scenario in session.scenarios:
                api.add_prompt_script(scenario.prompt, scenario.script)
        print(f"{len(sessions)} sessions, {sum(len(s.scenarios) for s in sessions)} prompts, Claude Code {version}",
              flush=True)
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            results = list(pool.map(lambda s: run_session(sandbox, s), sessions))
        failed = [(s.name, r) for s, runs in zip(sessions, results) for r in runs if r.returncode != 0]
        for name, run in failed:
            print(f"FAILED {name}: {run.stderr.decode(errors='replace')[-500:]}", file=sys.stderr)
        if failed or api.errors:
            raise SystemExit(f"{len(failed)} claude runs failed; scripted API errors: {api.errors}")
        print(f"claude runs done in {time.monotonic() - started:.0f} s", flush=True)

        staging = args.out.with_name(args.out.name + ".new")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        sizes = collect(sandbox, staging)
        sizes["archive_bytes"] = write_archive(staging / "transcripts", staging / ARCHIVE)
        shutil.rmtree(staging / "transcripts")
        checked = check_import(unpack(staging / ARCHIVE, Path(tmp) / "check"), sessions)
        families: dict[str, int] = {}
        for session in sessions:
            for scenario in session.scenarios:
                families[scenario.family] = families.get(scenario.family, 0) + 1
        manifest = {
            "generator": "scripts/make_samples.py",
            "claude_code": version,
            "seed": args.seed,
            "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "paths": f"projects under {SAMPLE_PROJECTS} (rewritten from the generation sandbox)",
            "families": dict(sorted(families.items())),
            **sizes,
            **checked,
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.rmtree(args.out, ignore_errors=True)
        os.replace(staging, args.out)
    print(json.dumps(manifest, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
