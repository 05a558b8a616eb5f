"""``ccrl import``: backfill traces from the transcripts Claude Code already wrote.

A new user has weeks of sessions in ``~/.claude/projects`` before the hooks capture anything;
importing them gives data on day one. Each session goes through the same
``ingest.rebuild_session`` as hook-captured data, so importing is idempotent (twice = once) and
a session captured by the hooks and imported later ends up as one set of traces.

Accepted input: a directory tree (every ``*.jsonl`` below it) or one ``.jsonl`` file. Subagent
transcripts are attached to their session: ``<session>/subagents/agent-<id>.jsonl`` (2.1+) by
place, top-level ``agent-<id>.jsonl`` (2.0.x) by the ``sessionId`` inside.

Opt-out: nothing is imported when ``CCRL_DISABLE`` is set, and a session whose working
directory (or a parent of it) holds a ``.ccrl-ignore`` file is skipped; the report says so.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlmodel import Session as DBSession

from ccrl.agent.capture.ingest import LOCK_FILE, SessionResult, rebuild_session
from ccrl.agent.core.config import Settings, get_settings
from ccrl.agent.store.db import get_engine

PEEK_LINES = 200  # how far into a file to look for its sessionId
DISABLE_VALUES = ("1", "true", "yes", "on")  # CCRL_DISABLE values the hook honours too


@dataclass
class ImportReport:
    """What ``import_transcripts`` did. Counts of traces and tool calls are those of the
    imported sessions after the import (a re-import reports the same numbers and creates 0)."""

    path: str
    disabled: bool = False
    files: int = 0
    sessions: int = 0
    sessions_ignored: int = 0
    sessions_purged: int = 0  # purged earlier with `ccrl purge`: not brought back
    traces: int = 0
    traces_created: int = 0
    traces_updated: int = 0
    subagent_traces: int = 0
    tool_calls: int = 0
    tool_calls_created: int = 0
    tool_errors: int = 0
    skipped_lines: int = 0  # corrupt lines, kept in quarantine
    ignored_lines: int = 0  # line types that hold no turn (progress, snapshots, summaries…)
    duplicates_skipped: int = 0  # turns already stored under another session
    ignored_projects: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SessionFiles:
    """The transcript files of one session found under the import path."""

    session_id: str
    main: Path | None = None
    agents: list[Path] = field(default_factory=list)


def peek_session_id(path: Path) -> str | None:
    """The ``sessionId`` of the first lines of a transcript that carry one."""
    try:
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle):
                if number >= PEEK_LINES:
                    break
                try:
                    obj = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(obj, dict) and isinstance(obj.get("sessionId"), str) and obj["sessionId"]:
                    return obj["sessionId"]
    except OSError:
        return None
    return None


def _is_agent_file(path: Path) -> bool:
    return path.name.startswith("agent-") and path.suffix == ".jsonl"


def _main_of_agent_file(path: Path) -> Path | None:
    """``<dir>/<session>.jsonl`` for ``<dir>/<session>/subagents/agent-x.jsonl``."""
    if path.parent.name == "subagents":
        main = path.parent.parent.with_suffix(".jsonl")
        return main if main.is_file() else None
    return None


def discover(path: Path) -> list[SessionFiles]:
    """Group the transcripts under ``path`` (a directory or one file) by session."""
    if path.is_file():
        files = [path]
    else:
        files = sorted(p for p in path.rglob("*.jsonl") if p.is_file())
    entries: list[SessionFiles] = []
    by_id: dict[str, SessionFiles] = {}
    mains = {p for p in files if not _is_agent_file(p)}
    for main in sorted(mains):
        # Two files may claim one session (copies): each is imported; the rebuild merges them.
        entry = SessionFiles(peek_session_id(main) or main.stem, main)
        entries.append(entry)
        by_id.setdefault(entry.session_id, entry)
    for agent in (p for p in files if _is_agent_file(p)):
        main = _main_of_agent_file(agent)
        if main is not None and main in mains:
            continue  # rebuild_session reads <session>/subagents/ next to its main transcript
        session_id = peek_session_id(agent)
        if session_id is None:
            continue
        entry = by_id.get(session_id)
        if entry is None:
            entry = by_id[session_id] = SessionFiles(session_id)
            entries.append(entry)
        if entry.main is None and main is not None:
            entry.main = main  # a single agent file was named: read its session too, to link it
        entry.agents.append(agent)
    return entries


def import_disabled() -> bool:
    """True when ``CCRL_DISABLE`` opts this machine out of capture entirely."""
    return os.environ.get("CCRL_DISABLE", "").strip().lower() in DISABLE_VALUES


def import_transcripts(path: str | Path | None = None, settings: Settings | None = None) -> ImportReport:
    """Import every transcript under ``path`` (default ``settings.transcript_root``).

    Raises ``FileNotFoundError`` when ``path`` does not exist (the default folder missing only
    means Claude Code has run no session yet: an empty report says so). One session's failure is
    reported in ``errors`` and never stops the others.
    """
    from ccrl.agent.core.lock import FileLock

    settings = settings or get_settings()
    root = Path(path).expanduser() if path is not None else settings.transcript_root
    report = ImportReport(path=str(root))
    if import_disabled():
        report.disabled = True
        report.message = "CCRL_DISABLE is set: capture is disabled, nothing was imported."
        return report
    if not root.exists() and path is None:
        # Claude Code writes this folder with its first session: a new user has nothing yet.
        report.message = (f"nothing to import yet: Claude Code has written no transcripts under {root}. "
                          "The hooks capture sessions from now on; run `ccrl import` again later for older ones.")
        return report
    if not root.exists():
        raise FileNotFoundError(f"no such file or directory: {root}")
    engine = get_engine(settings)
    lock = FileLock(settings.home / LOCK_FILE, name="ingest")
    with lock.hold("import", wait=True, timeout=600):
        for entry in discover(root):
            try:
                with DBSession(engine) as db:
                    result = rebuild_session(
                        db, entry.session_id, settings, transcript=entry.main, agent_transcripts=entry.agents
                    )
                    skipped = result.ignored or result.purged
                    subagents = _subagent_count(db, entry.session_id) if not skipped else 0
                    db.commit()
            except Exception as exc:  # one bad session never stops the import
                report.errors.append(f"{entry.main or entry.agents[0]}: {type(exc).__name__}: {exc}")
                continue
            _add(report, result, subagents, entry)
    notes = []
    if report.sessions_ignored:
        notes.append(f"{report.sessions_ignored} session(s) skipped: their project opted out with a .ccrl-ignore file.")
    if report.sessions_purged:
        notes.append(f"{report.sessions_purged} session(s) skipped: they were purged with `ccrl purge`.")
    report.message = " ".join(notes)
    return report


def _subagent_count(db: DBSession, session_id: str) -> int:
    from sqlmodel import func, select

    from ccrl.agent.store.models import Trace

    return db.exec(
        select(func.count()).select_from(Trace).where(Trace.session_id == session_id, Trace.key.startswith("agent:"))
    ).one()


def _add(report: ImportReport, result: SessionResult, subagents: int, entry: SessionFiles) -> None:
    if result.ignored:
        report.sessions_ignored += 1
        report.ignored_projects.append(result.project or str(entry.main or entry.agents[0]))
        return
    if result.purged:
        report.sessions_purged += 1
        return
    report.sessions += 1
    report.files += result.transcripts_read
    report.traces += result.traces
    report.subagent_traces += subagents
    report.traces_created += result.traces_created
    report.traces_updated += result.traces_updated
    report.tool_calls += result.tool_calls
    report.tool_calls_created += result.tool_calls_created
    report.tool_errors += result.tool_errors
    report.skipped_lines += result.corrupt_lines
    report.ignored_lines += result.ignored_lines
    report.duplicates_skipped += result.duplicates_skipped
