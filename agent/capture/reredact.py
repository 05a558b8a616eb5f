"""Re-redaction when the redaction rules change: what earlier versions stored goes through
today's rules, and everything built from rows that changed is named.

The rules in force are identified by :func:`rules_version` (a digest of the hook's rule modules,
the ingest pass and detect-secrets' version), recorded in the store's ``_ccrl_meta`` table. When
it differs from the recorded one (an upgrade, or a store captured by an earlier ccrl), ingest
calls :func:`reredact_store` once: hook event payloads, traces (prompt, response, reasoning,
steps), tool calls (input, output), quarantined payloads, pending inbox rows and spool files are
redacted again and rewritten where that changed them. Idempotent: running it again changes
nothing. The dataset versions holding a changed trace, the training runs trained on them (or
continued from such a run) and the model versions made from those are named in the report and
the log (numbers and Ollama tags only, never text): they still hold what was redacted now, until
rebuilt or purged. On SQLite the store's WAL is truncated afterwards (rewritten text is zeroed by
``secure_delete``); on PostgreSQL the old row versions stay as dead tuples until a VACUUM FULL.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Column, MetaData, String, Table, Text, select, update
from sqlalchemy.engine import Engine

from ccrl.agent.capture import deep_redact
from ccrl.agent.core.config import Settings, get_settings
from ccrl.agent.store.db import get_engine
from ccrl.agent.store.models import DatasetVersion, HookEvent, ModelVersion, Quarantine, ToolCall, Trace, TrainingRun
from ccrl.hooks import inbox as hook_inbox
from ccrl.hooks import paths
from ccrl.hooks import redact as hook_rules

META_TABLE = "_ccrl_meta"
RULES_KEY = "redaction_rules"
BATCH = 500

_meta = Table(META_TABLE, MetaData(), Column("key", String(64), primary_key=True), Column("value", Text))


@lru_cache(maxsize=1)
def rules_version() -> str:
    """A digest of everything that decides what is redacted: the hook's rule modules
    (``hooks/redact*.py``), the ingest pass (``deep_redact.py``) and detect-secrets' version."""
    digest = hashlib.sha256(deep_redact.fingerprint().encode())
    sources = sorted(Path(hook_rules.__file__).parent.glob("redact*.py")) + [Path(deep_redact.__file__)]
    for source in sources:
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:16]


@dataclass
class ReredactReport:
    """What one re-redaction did; ``ran`` is False when the rules had not changed."""

    rules: str
    previous: str | None
    ran: bool = False
    hook_events: int = 0
    traces: int = 0
    tool_calls: int = 0
    quarantine: int = 0
    inbox_rows: int = 0
    spool_files: int = 0
    changed_trace_ids: list[int] = field(default_factory=list)
    dataset_versions: list[int] = field(default_factory=list)  # numbers
    training_runs: list[int] = field(default_factory=list)  # ids
    model_versions: list[dict[str, Any]] = field(default_factory=list)  # number, status, ollama_tag
    errors: list[str] = field(default_factory=list)

    @property
    def changed(self) -> int:
        return (self.hook_events + self.traces + self.tool_calls + self.quarantine + self.inbox_rows
                + self.spool_files)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One paragraph for the log and the command's output: counts, numbers, tags; no text."""
        if not self.ran:
            return f"redaction rules {self.rules} unchanged: nothing re-redacted"
        parts = [f"re-redacted with rules {self.rules} (were {self.previous or 'unrecorded'}): "
                 f"{self.hook_events} hook events, {self.traces} traces, {self.tool_calls} tool calls, "
                 f"{self.quarantine} quarantined inputs, {self.inbox_rows} inbox rows, "
                 f"{self.spool_files} spool files changed"]
        if self.dataset_versions:
            models = ", ".join(
                f"v{m['number']} ({m['status']}{', Ollama ' + m['ollama_tag'] if m.get('ollama_tag') else ''})"
                for m in self.model_versions) or "none"
            parts.append(
                f"built from rows it changed, still holding their old text: dataset versions "
                f"{', '.join(f'v{n}' for n in self.dataset_versions)}; training runs "
                f"{', '.join(str(r) for r in self.training_runs) or 'none'}; model versions {models}. "
                "Rebuild the dataset (ccrl build-dataset) and retrain, or purge them")
        return "; ".join(parts)


def recorded_version(engine: Engine) -> str | None:
    _meta.create(engine, checkfirst=True)
    with engine.connect() as conn:
        return conn.execute(select(_meta.c.value).where(_meta.c.key == RULES_KEY)).scalar_one_or_none()


def _record_version(engine: Engine, version: str) -> None:
    with engine.begin() as conn:
        done = conn.execute(update(_meta).where(_meta.c.key == RULES_KEY).values(value=version)).rowcount
        if not done:
            conn.execute(_meta.insert().values(key=RULES_KEY, value=version))


def _rewrite(engine: Engine, table: Table, columns: list[str], fix: Any) -> tuple[int, set[int]]:
    """Apply ``fix`` (row -> changed values or None) to every row of ``table``, in batches by
    id; returns how many rows changed and the ``trace_id`` (or ``id`` for traces) of each."""
    changed, owners = 0, set()
    last = 0
    cols = [table.c.id] + [table.c[name] for name in columns]
    while True:
        with engine.begin() as conn:
            rows = conn.execute(select(*cols).where(table.c.id > last).order_by(table.c.id).limit(BATCH)).all()
            if not rows:
                return changed, owners
            for row in rows:
                values = fix(row._mapping)
                if values:
                    conn.execute(update(table).where(table.c.id == row.id).values(**values))
                    changed += 1
                    mapping = row._mapping
                    owners.add(int(mapping["trace_id"] if "trace_id" in mapping else row.id))
            last = rows[-1].id


def _changed(row: Any, redactors: dict[str, Any]) -> dict[str, Any] | None:
    values = {}
    for name, redactor in redactors.items():
        old = row[name]
        if old is None:
            continue
        new = redactor(old)
        if new != old:
            values[name] = new
    return values or None


def _bytes(value: Any) -> bytes:
    return bytes(value) if not isinstance(value, str) else value.encode("utf-8", "surrogatepass")


def _store_rows(engine: Engine, report: ReredactReport) -> set[int]:
    """Re-redact the store's text; returns the ids of the traces whose content changed."""
    text, obj = deep_redact.redact_text, deep_redact.redact_obj
    report.hook_events, _ = _rewrite(engine, HookEvent.__table__, ["payload"],  # type: ignore[attr-defined]
                                     lambda r: _changed(r, {"payload": obj}))
    report.traces, traces = _rewrite(
        engine, Trace.__table__, ["prompt", "response", "reasoning", "steps"],  # type: ignore[attr-defined]
        lambda r: _changed(r, {"prompt": text, "response": text, "reasoning": obj, "steps": obj}))
    report.tool_calls, call_traces = _rewrite(
        engine, ToolCall.__table__, ["trace_id", "input", "output"],  # type: ignore[attr-defined]
        lambda r: _changed(r, {"input": obj, "output": text}))
    report.quarantine, _ = _rewrite(engine, Quarantine.__table__, ["payload"],  # type: ignore[attr-defined]
                                    lambda r: _changed(r, {"payload": lambda p: deep_redact.redact_bytes(_bytes(p))}))
    return traces | call_traces


def _inbox(settings: Settings, report: ReredactReport) -> None:
    """Pending inbox rows (a drain that could not run, or rows it could not delete)."""
    from ccrl.agent.capture.drain import truncate_wal

    path = str(settings.inbox_path)
    if not os.path.isfile(path):
        return
    try:
        conn = hook_inbox.connect(path, timeout=10.0)
    except sqlite3.Error as exc:
        report.errors.append(f"cannot open the inbox {path}: {exc}")
        return
    try:
        for row_id, payload in conn.execute("SELECT id, payload FROM inbox").fetchall():
            new = deep_redact.redact_bytes(_bytes(payload or b""))
            if new != _bytes(payload or b""):
                conn.execute("UPDATE inbox SET payload = ? WHERE id = ?", (new, row_id))
                report.inbox_rows += 1
        truncate_wal(conn)
    except sqlite3.Error as exc:
        report.errors.append(f"cannot re-redact the inbox {path}: {exc}")
    finally:
        conn.close()


def _spool(settings: Settings, report: ReredactReport) -> None:
    """Spool files are rewritten in place: the old bytes are zeroed, then the new ones written
    (a new file and a rename would leave the old blocks unzeroed)."""
    for directory in dict.fromkeys(paths.spool_dirs(str(settings.home))):
        try:
            names = [n for n in os.listdir(directory) if n.endswith(paths.SPOOL_SUFFIX) and not n.startswith(".")]
        except OSError:
            continue
        for name in names:
            path = os.path.join(directory, name)
            try:
                fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
            except OSError:
                continue  # drained meanwhile, or not ours to rewrite
            try:
                size = os.fstat(fd).st_size
                old = b"".join(iter(lambda: os.read(fd, 1 << 20), b""))
                new = deep_redact.redact_bytes(old)
                if new != old:
                    os.pwrite(fd, bytes(size), 0)
                    os.pwrite(fd, new, 0)
                    os.ftruncate(fd, len(new))
                    os.fsync(fd)
                    report.spool_files += 1
            except OSError as exc:
                report.errors.append(f"cannot re-redact the spool file {path}: {exc}")
            finally:
                os.close(fd)


def _dataset_trace_ids(path: str) -> set[int]:
    """The trace ids a dataset version's JSONL copy holds."""
    from ccrl.agent.core.dataset_config import JSONL_FILES

    ids: set[int] = set()
    for name in JSONL_FILES:
        try:
            with open(Path(path) / "jsonl" / name, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        row = json.loads(line)
                    except ValueError:
                        continue
                    for key in ("trace_id", "parent_id"):
                        if isinstance(row.get(key), int):
                            ids.add(row[key])
        except OSError:
            continue
    return ids


def derived_from(engine: Engine, trace_ids: set[int]) -> tuple[list[int], list[int], list[dict[str, Any]]]:
    """Dataset version numbers holding any of ``trace_ids``, the training runs trained on them or
    continued from such a run, and the model versions made from either."""
    from sqlmodel import Session as DBSession

    with DBSession(engine) as db:
        datasets = [d for d in db.exec(select(DatasetVersion)).scalars() if _dataset_trace_ids(d.path) & trace_ids]
        dataset_ids = {d.id for d in datasets}
        runs = list(db.exec(select(TrainingRun)).scalars())
        affected = {r.id for r in runs if r.dataset_version_id in dataset_ids}
        while True:  # each cycle's SFT starts from the accepted model: its run inherits the text
            more = {r.id for r in runs if r.parent_run_id in affected} - affected
            if not more:
                break
            affected |= more
        models = [
            {"number": m.number, "status": m.status, "ollama_tag": m.ollama_tag, "gguf_path": m.gguf_path}
            for m in db.exec(select(ModelVersion).order_by(ModelVersion.number)).scalars()
            if m.dataset_version_id in dataset_ids or m.sft_run_id in affected or m.rl_run_id in affected
        ]
    return sorted(d.number for d in datasets), sorted(affected), models


def _truncate_store_wal(engine: Engine) -> None:
    if engine.dialect.name != "sqlite":
        return
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def reredact_store(settings: Settings | None = None, force: bool = False) -> ReredactReport:
    """Re-redact everything stored when the rules changed since the store was last redacted
    (or always, with ``force``). Callers hold the ingest lock (``ingest()`` does)."""
    settings = settings or get_settings()
    engine = get_engine(settings)
    version = rules_version()
    previous = recorded_version(engine)
    report = ReredactReport(rules=version, previous=previous)
    if previous == version and not force:
        return report
    report.ran = True
    traces = _store_rows(engine, report)
    _inbox(settings, report)
    _spool(settings, report)
    report.changed_trace_ids = sorted(traces)
    if traces:
        report.dataset_versions, report.training_runs, report.model_versions = derived_from(engine, traces)
    _truncate_store_wal(engine)
    if not report.errors:
        _record_version(engine, version)
    if report.changed or report.errors:
        _log().warning("reredacted", summary=report.describe(), errors=report.errors)
    return report


def _log():
    import structlog

    return structlog.get_logger("ccrl.reredact")
