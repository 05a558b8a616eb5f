"""What of purged data a purge cannot erase, said plainly in its summary.

SQLite: the purge VACUUMs the store and the inbox and truncates their write-ahead logs, so the
text is gone from those files. PostgreSQL cannot be made to forget that way from a client:
deleted rows stay in the table files as dead tuples until ``VACUUM FULL`` rewrites them, WAL
written before the purge holds them until it is recycled (or for as long as an archive keeps
it), and replicas and backups keep their own copies. The summary says which of these apply,
with what the server reports (``archive_mode``, connected replicas) where it lets us read it.
"""

from __future__ import annotations

from typing import Any

from ccrl.agent.core.config import Settings

# The tables a purge deletes from (a VACUUM FULL of these rewrites the purged rows away).
PURGED_TABLES = ("sessions", "traces", "tool_calls", "hook_events", "quarantine")


def _postgres_facts(engine: Any) -> dict[str, Any]:
    """``archive_mode`` and the number of connected streaming replicas; None where the server
    does not let this role read it."""
    facts: dict[str, Any] = {"archive_mode": None, "replicas": None}
    with engine.connect() as conn:
        for key, sql in (("archive_mode", "SHOW archive_mode"),
                         ("replicas", "SELECT count(*) FROM pg_stat_replication")):
            try:
                facts[key] = conn.exec_driver_sql(sql).scalar()
            except Exception:  # noqa: BLE001 - a fact we cannot read is reported as unknown
                conn.rollback()
    return facts


def store_residue(settings: Settings, *, compacted: bool) -> dict[str, Any]:
    """``{"dialect", "compacted", "not_reclaimed": [sentences], ...facts}`` for the store."""
    from ccrl.agent.store.db import get_engine

    engine = get_engine(settings)
    dialect = engine.dialect.name
    if dialect == "sqlite":
        return {"dialect": "sqlite", "compacted": compacted, "not_reclaimed": [] if compacted else [
            "the store was not compacted, so deleted text may remain in its free pages until the next purge"]}
    if dialect != "postgresql":
        return {"dialect": dialect, "compacted": False,
                "not_reclaimed": [f"{dialect} keeps deleted rows on disk until its own compaction runs"]}
    facts = _postgres_facts(engine)
    tables = ", ".join(PURGED_TABLES)
    archive = facts["archive_mode"]
    replicas = facts["replicas"]
    not_reclaimed = [
        "dead tuples: PostgreSQL only marks deleted rows dead; their bytes stay in the table and index files "
        "(autovacuum makes the space reusable, it does not erase it) until a full vacuum rewrites the tables: "
        f"as their owner, run VACUUM FULL {tables}; (it locks them while it runs)",
        "write-ahead log: WAL segments written before the purge still hold the deleted rows until PostgreSQL "
        "recycles them (after the next checkpoints)"
        + ("; archive_mode is " + str(archive) + ", so archived WAL keeps them until the archive expires it"
           if archive in ("on", "always") else
           "" if archive is not None else "; whether WAL is archived could not be read (SHOW archive_mode)"),
        "replicas: "
        + (f"{replicas} streaming replica(s) are connected; " if replicas else
           "none connected now; " if replicas == 0 else "connected replicas could not be read; ")
        + "physical replicas follow a VACUUM FULL but keep their own WAL, and logical replicas need their own "
        "VACUUM FULL",
        "backups: base backups and dumps taken before the purge still hold the data",
    ]
    return {"dialect": "postgresql", "compacted": False, "not_reclaimed": not_reclaimed, **facts}


def remains(store: dict[str, Any], *, transcripts: list[str], unattributed_quarantine: int) -> list[str]:
    """One sentence for each place purged data may still be (derived artifacts are reported
    separately, by ``purge_derived``)."""
    out = []
    if store.get("dialect") == "sqlite" and store.get("compacted"):
        out.append("store and inbox compacted (SQLite VACUUM, write-ahead logs truncated): the deleted text is no "
                   "longer in those files; copies made earlier (backups, `ccrl store copy` targets) are not touched")
    out += [f"{store.get('dialect')}: {sentence}" for sentence in store.get("not_reclaimed", [])]
    if transcripts:
        out.append(f"Claude Code's own transcripts of the purged sessions ({len(transcripts)} file(s), e.g. "
                   f"{transcripts[0]}) are Claude Code's, not ccrl's, and stay; ccrl will not import them again")
    if unattributed_quarantine:
        out.append(f"{unattributed_quarantine} quarantined item(s) name no session, folder or transcript (e.g. a "
                   "payload whose redaction failed), so they cannot be matched; `ccrl purge --before DATE` or "
                   "`--all` removes them")
    return out
