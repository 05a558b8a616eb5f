"""What "new traces since the last cycle" means on a store several agents write at once, on a
real PostgreSQL server: ids come from a sequence when a row is inserted, not when it commits,
so a trace can commit after a cycle started although its id is below every id that cycle saw.
Counting above an id watermark would never count it; marking covered traces does."""

from __future__ import annotations

from sqlalchemy import text

from agent_helpers import add_usable_traces
from postgres_helpers import pg_home, pg_server, pg_url  # noqa: F401  (fixtures)

COPY_TRACE = text(
    "INSERT INTO traces (session_id, key, seq, prompt, response, reasoning, steps, signals, status, source, "
    "created_at, updated_at, user_name, hostname) SELECT session_id, CAST(:key AS VARCHAR), seq, prompt || CAST(:key AS TEXT), response, "
    "reasoning, steps, signals, status, source, created_at, updated_at, :member, hostname FROM traces "
    "WHERE id = :id RETURNING id")


def test_a_trace_committed_after_the_cycle_started_counts_for_the_next(pg_home):
    from ccrl.agent.core.config import get_settings
    from ccrl.agent.daemon.cycle import CycleEngine, max_trace_id, threshold
    from ccrl.agent.store.db import get_engine, session_scope
    from ccrl.agent.store.models import Cycle

    settings = get_settings()
    ids = add_usable_traces(settings, 50)
    engine = get_engine(settings)

    # Agent A rebuilds a session: its new trace takes the next id, and its transaction is still open...
    slow = engine.connect()
    slow_id = slow.execute(COPY_TRACE, {"key": "late-a", "member": "a", "id": ids[0]}).scalar()
    # ...while agent B stores a trace with a higher id and commits.
    with engine.begin() as fast:
        fast_id = fast.execute(COPY_TRACE, {"key": "quick-b", "member": "b", "id": ids[1]}).scalar()
    assert slow_id < fast_id

    # The trainer starts a cycle now: it sees B's trace, not A's uncommitted one.
    cycle_id = CycleEngine(settings).ensure_cycle()
    with session_scope(settings) as db:
        cycle = db.get(Cycle, cycle_id)
        assert cycle.new_traces == 51 and cycle.trace_watermark == fast_id == max_trace_id(db)
        watermark = cycle.trace_watermark
    slow.commit()  # A's trace arrives, with an id below the cycle's watermark
    slow.close()
    assert slow_id < watermark  # an id watermark would never count it

    with session_scope(settings) as db:
        db.get(Cycle, cycle_id).status = "completed"
    with session_scope(settings) as db:
        th = threshold(db, settings.agent)
        assert th.new == 1  # A's trace counts towards the next cycle
        covered = dict(db.exec(text("SELECT key, covered_by_cycle FROM traces WHERE key IN ('late-a', 'quick-b')")).all())
    assert covered == {"late-a": None, "quick-b": 1}
