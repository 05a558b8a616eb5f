"""Forwarded events per second from 4 agents into one PostgreSQL store, against baselines
measured in the same run.

A real PostgreSQL server is started from ``initdb`` (as the tests start it:
``tests/postgres_helpers.py``). Every agent is a process of its own with its own data directory
(``CCRL_HOME``), whose hook inbox is filled beforehand with ``--events`` distinct PostToolUse
events of about 2 KB (a Read of a source file, as Claude Code sends it); its machine name is
its own (``CCRL_HOSTNAME``). Each variant forwards into a fresh database (migrated before the
clock starts), and the clock runs from a common start signal until the last process is done:

- ``plain INSERT``: one process, ``psycopg`` ``executemany`` of the same rows, already parsed
  and keyed, 500 per transaction with ``ON CONFLICT (event_key) DO NOTHING``: the floor for
  storing these rows, without reading the inbox, parsing, redacting or hashing;
- ``1 agent``: one process running the agent's forwarding (``drain.drain``: the inbox read in
  batches of 500, each event parsed, redacted, keyed and inserted, the batch's inbox rows
  deleted after its commit);
- ``4 agents``: four such processes at once, each with its own inbox, into one database.

It prints events per second of each, the 4-agent aggregate against one agent alone and against
the plain INSERT, and checks that every event was stored exactly once. Usage::

    .venv/bin/python benchmarks/forward_throughput.py [--events 5000] [--agents 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))
from hook_latency import post_tool_use_payload  # noqa: E402  (the same event the hook benchmark sends)

PAYLOAD_BYTES = 2048
BATCH = 500


def events(agent: int, n: int) -> list[tuple[float, bytes]]:
    """``n`` distinct events of ``agent``: their own arrival times, sessions and tool-use ids."""
    template = json.loads(post_tool_use_payload(PAYLOAD_BYTES))
    t0 = 1_770_000_000.0 + agent * 100_000
    out = []
    for i in range(n):
        event = dict(template, session_id=f"bench-{agent}-{i // 50:05d}", tool_use_id=f"toolu_{agent}_{i:07d}")
        out.append((t0 + i / 1000, json.dumps(event).encode()))
    return out


def fill_inbox(home: Path, agent: int, n: int) -> None:
    import sqlite3

    from ccrl.hooks.inbox import ensure_inbox
    from ccrl.hooks.paths import inbox_path

    path = inbox_path(str(home))
    ensure_inbox(path)
    with sqlite3.connect(path) as conn:
        conn.executemany("INSERT INTO inbox (received_at, payload) VALUES (?, ?)", events(agent, n))


def agent_env(home: Path, url: str, agent: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CCRL_CONFIG", "CCRL_DISABLE")}
    env.update(CCRL_HOME=str(home), XDG_CONFIG_HOME=str(home / "xdg-config"), CCRL_DATABASE_URL=url,
               CCRL_HOSTNAME=f"agent-{agent}", CCRL_MEMBER=f"member-{agent}")
    return env


def child(mode: str, agent: int, n: int) -> None:
    """One process of a variant: get ready, say so, wait for the start line on stdin, work,
    print what it did as JSON."""
    from ccrl.agent.core.config import get_settings
    from ccrl.agent.store.db import get_engine

    settings = get_settings()
    engine = get_engine(settings)  # connected and migrated before the clock starts
    rows = []
    if mode == "plain":
        from ccrl.agent.capture.drain import ID_FIELDS, event_key

        for received_at, payload in events(agent, n):
            event = json.loads(payload)
            rows.append((event_key(received_at, payload), received_at, event["hook_event_name"],
                         *(event.get(k) for k in ID_FIELDS), payload.decode(), f"member-{agent}", f"agent-{agent}"))
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.perf_counter()
    if mode == "plain":
        import psycopg

        url = settings.db_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(url) as conn:
            for i in range(0, len(rows), BATCH):
                with conn.transaction(), conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO hook_events (event_key, received_at, event, session_id, tool_use_id, prompt_id, "
                        "agent_id, payload, user_name, hostname) VALUES (%s, to_timestamp(%s), %s, %s, %s, %s, %s, "
                        "%s::json, %s, %s) ON CONFLICT (event_key) DO NOTHING", rows[i:i + BATCH])
        stored = len(rows)
    else:
        from ccrl.agent.capture.drain import drain

        report = drain(settings)
        stored = report.stored
        assert report.errors == [] and report.duplicates == 0, report
    seconds = time.perf_counter() - start
    engine.dispose()
    print(json.dumps({"stored": stored, "seconds": seconds}), flush=True)


def run_variant(mode: str, agents: int, n: int, url: str, work: Path) -> dict:
    procs = []
    for agent in range(agents):
        home = work / f"{mode}-{agents}-{agent}"
        home.mkdir(parents=True)
        if mode == "drain":
            fill_inbox(home, agent, n)
        procs.append(subprocess.Popen([sys.executable, __file__, "--child", mode, str(agent), str(n)],
                                      env=agent_env(home, url, agent), stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True))
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready"
    start = time.perf_counter()
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = [json.loads(proc.stdout.readline()) for proc in procs]
    wall = time.perf_counter() - start
    for proc in procs:
        if proc.wait(timeout=60) != 0:
            raise SystemExit(f"a {mode} process failed")
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        total, distinct = conn.execute("SELECT COUNT(*), COUNT(DISTINCT event_key) FROM hook_events").fetchone()
    if (total, distinct) != (agents * n, agents * n):
        raise SystemExit(f"{mode} x{agents}: stored {total} events ({distinct} distinct), expected {agents * n}")
    return {"processes": agents, "events": agents * n, "wall_s": round(wall, 3),
            "events_per_s": round(agents * n / wall, 1), "slowest_process_s": round(max(r["seconds"] for r in results), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000, help="events per agent")
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "AGENT", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), int(args.child[2]))
        return

    from postgres_helpers import PostgresServer, find_bin_dir

    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise SystemExit("no PostgreSQL server binaries (postgres, initdb, pg_ctl)")
    server = PostgresServer(bin_dir)
    try:
        server.start()
        server.wait_ready()
        with tempfile.TemporaryDirectory(prefix="ccrl-bench-") as tmp:
            work = Path(tmp)
            results = {
                "plain INSERT": run_variant("plain", 1, args.events * args.agents, server.create_database(), work),
                "1 agent": run_variant("drain", 1, args.events, server.create_database(), work),
                f"{args.agents} agents": run_variant("drain", args.agents, args.events, server.create_database(), work),
            }
    finally:
        server.cleanup()
    many, one, plain = results[f"{args.agents} agents"], results["1 agent"], results["plain INSERT"]
    report = {"payload_bytes": PAYLOAD_BYTES, "cpus": os.cpu_count(), "load": round(os.getloadavg()[0], 1),
              "variants": results,
              "ratio_agents_to_one_agent": round(many["events_per_s"] / one["events_per_s"], 2),
              "ratio_agents_to_plain_insert": round(many["events_per_s"] / plain["events_per_s"], 2),
              "ratio_one_agent_to_plain_insert": round(one["events_per_s"] / plain["events_per_s"], 2)}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"PostgreSQL from initdb on this machine ({report['cpus']} CPUs, load {report['load']}); "
          f"~{PAYLOAD_BYTES} B PostToolUse events; each variant into a fresh database; every event stored once")
    print(f"{'variant':>14} {'processes':>9} {'events':>7} {'wall s':>7} {'events/s':>9}")
    for name, r in results.items():
        print(f"{name:>14} {r['processes']:>9} {r['events']:>7} {r['wall_s']:>7.2f} {r['events_per_s']:>9.0f}")
    print(f"{args.agents} agents / 1 agent: {report['ratio_agents_to_one_agent']}x; "
          f"{args.agents} agents / plain INSERT: {report['ratio_agents_to_plain_insert']}x; "
          f"1 agent / plain INSERT: {report['ratio_one_agent_to_plain_insert']}x")


if __name__ == "__main__":
    main()
