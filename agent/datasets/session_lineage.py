"""Session families: a resumed (``claude --resume``/``--continue``) or forked (``--fork-session``)
session's transcript repeats its parent's messages under their original ``uuid``s (and points at
them with ``parentUuid``/``leafUuid``), so sessions that share a message uuid are one
conversation. The dataset builder keeps a family on one side of the train/eval split, and
evaluation leaves out a held-out session whose family was trained on. Read-only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ccrl.agent.core.config import Settings

UUID_FIELD = re.compile(rb'"(?:uuid|parentUuid|leafUuid|logicalParentUuid)"\s*:\s*"([0-9A-Za-z_-]{8,})"')
"""Transcript fields that name a message: a line's own id and the ids it continues. Matched on
the raw bytes (no JSON parse: a build reads every stored session's transcript); a nested field
of the same name only adds an id no other session's message has."""


def transcript_uuids(paths: Iterable[str | Path]) -> set[str]:
    """Every message uuid the transcripts name (unreadable files and lines are skipped: this
    only links sessions, it never decides what is stored)."""
    found: set[str] = set()
    for path in paths:
        try:
            handle = open(path, "rb")
        except OSError:
            continue
        with handle:
            for raw in handle:
                found.update(m.decode("ascii") for m in UUID_FIELD.findall(raw))
    return found


def session_transcripts(transcript_path: str | None) -> list[Path]:
    """A stored session's transcript and its ``subagents/`` files, those still on disk."""
    from ccrl.agent.capture.transcript import subagent_files

    if not transcript_path or not Path(transcript_path).is_file():
        return []
    return [Path(transcript_path), *subagent_files(transcript_path)]


class _Families:
    """Union-find over session ids."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, item: str) -> str:
        self.parent.setdefault(item, item)
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def _stored_sessions(settings: Settings) -> tuple[dict[str, tuple[Any, str | None]], dict[str, str],
                                                  list[tuple[str, str]]]:
    """(session id -> (started_at, transcript path)), (trace user uuid -> session id), and
    pairs of sessions linked by a subagent trace whose parent trace is in another session."""
    from sqlalchemy.orm import aliased
    from sqlmodel import Session as DBSession
    from sqlmodel import col, select

    from ccrl.agent.store.db import get_engine
    from ccrl.agent.store.models import Session, Trace

    parent = aliased(Trace)
    with DBSession(get_engine(settings)) as db:
        sessions = {sid: (started, path) for sid, started, path in
                    db.exec(select(Session.id, Session.started_at, Session.transcript_path))}
        owners = {u: sid for u, sid in db.exec(select(Trace.user_uuid, Trace.session_id)
                                               .where(col(Trace.user_uuid).is_not(None)))}
        links = list(db.exec(select(Trace.session_id, parent.session_id)
                             .join(parent, parent.id == Trace.parent_id)
                             .where(Trace.session_id != parent.session_id)))
    return sessions, owners, links


def lineage_roots(settings: Settings) -> dict[str, str]:
    """Session id -> the id of its family's first session (earliest start, then id), for every
    stored session that shares a message uuid (or a subagent link) with another; sessions
    without relatives are left out. The first session is the parent a resume or fork came from."""
    sessions, owners, links = _stored_sessions(settings)
    families = _Families()
    for child, parent in links:
        families.union(parent, child)
    for sid, (_started, path) in sessions.items():
        for uuid in transcript_uuids(session_transcripts(path)):
            owner = owners.get(uuid)
            if owner is not None and owner != sid:
                families.union(owner, sid)
    members: dict[str, list[str]] = {}
    for sid in list(families.parent):
        members.setdefault(families.find(sid), []).append(sid)
    roots: dict[str, str] = {}
    for group in members.values():
        if len(group) < 2:
            continue

        def first(sid: str) -> tuple[int, str, str]:
            started = sessions.get(sid, (None, None))[0]
            return (started is None, started.isoformat() if started is not None else "", sid)

        root = min(group, key=first)
        roots.update({sid: root for sid in group})
    return roots


def family_members(roots: dict[str, str], session_ids: Iterable[str]) -> set[str]:
    """``session_ids`` and every session of their families (``roots`` from :func:`lineage_roots`)."""
    wanted = {str(s) for s in session_ids}
    family_roots = {roots[s] for s in wanted if s in roots}
    return wanted | {s for s, r in roots.items() if r in family_roots}


def family_of(settings: Settings, session_ids: Iterable[str]) -> tuple[set[str], set[str]]:
    """The sessions of the families of ``session_ids`` (themselves included) and every message
    uuid they hold (their traces' user-line uuids and their transcripts' uuids, when still on
    disk): what a model trained on those sessions has seen."""
    from sqlmodel import Session as DBSession
    from sqlmodel import col, select

    from ccrl.agent.store.db import get_engine
    from ccrl.agent.store.models import Session, Trace

    members = family_members(lineage_roots(settings), session_ids)
    uuids: set[str] = set()
    chunk = 500
    ordered = sorted(members)
    with DBSession(get_engine(settings)) as db:
        for start in range(0, len(ordered), chunk):
            part = ordered[start:start + chunk]
            uuids.update(u for u in db.exec(select(Trace.user_uuid).where(col(Trace.session_id).in_(part))) if u)
            for path in db.exec(select(Session.transcript_path).where(col(Session.id).in_(part))):
                uuids |= transcript_uuids(session_transcripts(path))
    return members, uuids
