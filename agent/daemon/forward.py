"""Forwarding captured events to a store on a server (a team's shared PostgreSQL).

There is no separate forwarding queue: the hook's local inbox (and its spool files) *is* the
queue. The hook only ever appends to that local SQLite file, so it never waits on the network.
The agent's ingest job drains it into the store (``drain.drain``), which is already exactly
what forwarding needs:

- batches: up to ``drain.BATCH_ROWS`` events per store transaction;
- idempotent: each event's identity is ``drain.event_key`` (a hash of its exact arrival time
  and payload), unique in ``hook_events``, inserted with ``ON CONFLICT DO NOTHING``; an event
  sent again (its batch committed on the server but the answer was lost, so the inbox rows
  were not deleted) is a no-op;
- nothing lost: inbox rows and spool files are deleted only after the store transaction that
  holds them has committed; an unreachable server raises before that, and they stay.

What this module adds is the agent's side of an unreachable server: :class:`Forwarder` runs
the ingest function it is given, and after a failure to reach the store waits before trying again, doubling the wait up
to ``MAX_BACKOFF_S`` (no hammering of a server that is down, no error logged every few
seconds), and tries at once again after a success.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ccrl.agent.core.config import Settings
from ccrl.agent.store.remote import unreachable

FIRST_BACKOFF_S = 2.0
MAX_BACKOFF_S = 300.0


@dataclass
class Forwarder:
    """Ingest (drain + rebuild) with a growing pause while the store cannot be reached."""

    settings: Settings
    ingest: Callable[[Settings], dict[str, Any]]
    first_backoff_s: float = FIRST_BACKOFF_S
    max_backoff_s: float = MAX_BACKOFF_S
    clock: Callable[[], float] = time.monotonic
    failures: int = 0
    retry_at: float = 0.0
    last_error: str | None = None

    def due(self) -> bool:
        return self.clock() >= self.retry_at

    def run(self) -> dict[str, Any] | None:
        """Ingest once if not backing off. Returns the ingest report, or None when skipped or
        when the store could not be reached (``last_error`` says why; the events stay in the
        inbox). Any other failure raises."""
        if not self.due():
            return None
        try:
            report = self.ingest(self.settings)
        except Exception as exc:  # noqa: BLE001 - sorted below: only unreachable stores back off
            if not unreachable(exc):
                raise
            self.failures += 1
            wait = min(self.max_backoff_s, self.first_backoff_s * 2 ** (self.failures - 1))
            self.retry_at = self.clock() + wait
            self.last_error = f"store unreachable ({type(exc).__name__}: {_first_line(exc)}); " \
                              f"events stay in the local inbox, next try in {wait:.0f}s"
            return None
        self.failures, self.retry_at, self.last_error = 0, 0.0, None
        return report


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [""])[0][:300]
