"""Wall time of ``ccrl status`` on a store of 100,000 traces, against baselines measured in the
same run.

The store (SQLite, the default) is filled with bulk inserts of traces shaped like what ingest
stores from a real turn (``tests/agent_helpers.py``: reasoning, two tool calls with results, an
answer, the signals ingest computes; each with its own session every 5 traces, prompt and
tool-call ids), one hook event each, so that ``ccrl status`` sees a store of that size: its
COUNTs, the newest event, and the agent's threshold ("usable traces since the last cycle").
Variants, each a fresh process run the way a user runs it, interleaved round-robin so that
machine noise hits every variant alike:

- ``import only``: ``python -c "import ccrl.agent.cli"``: the interpreter and the CLI's imports;
- ``empty store``: ``ccrl status --json`` on a data directory whose store is empty;
- ``N traces``: ``ccrl status --json`` on the full store.

It prints the median and max wall time of each and the ratio of the full store's median to the
empty store's. Usage::

    .venv/bin/python benchmarks/status_100k.py [--traces 100000] [--runs 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from agent_helpers import _prompt, _steps  # noqa: E402  (the trace shape the agent's tests use)
from build_dataset import _use_home  # noqa: E402  (this folder is on sys.path when run as a script)

CCRL = Path(sys.executable).parent / "ccrl"
TRACES_PER_SESSION = 5
TEMPLATES = 50


def fill_store(home: Path, n_traces: int) -> None:
    """``n_traces`` traces, their tool calls and one hook event each, by bulk inserts of 1,000."""
    from ccrl.agent.store.db import get_engine
    from ccrl.agent.store.models import HookEvent, Session, ToolCall, Trace
    from ccrl.agent.store.records import trace_json
    from ccrl.trainers.signals import extract_signals

    _use_home(home)
    engine = get_engine()
    signals = []
    for t in range(TEMPLATES):  # what ingest would store; the same for every copy of a template
        steps = _steps(t)
        signals.append(extract_signals(trace_json(Trace(id=1, session_id="s", key="k", prompt=_prompt(t),
                                                        response=steps[-1]["text"], steps=steps, status="complete"),
                                                  [])))
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    sessions, traces, calls, events = [], [], [], []

    def flush() -> None:
        with engine.begin() as conn:
            for table, rows in ((Session, sessions), (Trace, traces), (ToolCall, calls), (HookEvent, events)):
                if rows:
                    conn.execute(table.__table__.insert(), rows)
                rows.clear()

    for i in range(n_traces):
        session_id = f"bench-{i // TRACES_PER_SESSION:06d}"
        when = t0 + timedelta(seconds=30 * i)
        if i % TRACES_PER_SESSION == 0:
            sessions.append({"id": session_id, "project_path": f"/work/p{i % 97}", "source": "hook",
                             "created_at": when, "updated_at": when, "user_name": "bench", "hostname": "bench"})
        steps = _steps(i)
        traces.append({"id": i + 1, "session_id": session_id, "key": f"uuid:{i:07d}", "seq": i % TRACES_PER_SESSION,
                       "prompt": _prompt(i), "response": steps[-1]["text"],
                       "reasoning": [steps[0]["text"], steps[1]["text"], steps[4]["text"]], "steps": steps,
                       "signals": signals[i % TEMPLATES], "status": "complete", "source": "both",
                       "cwd": f"/work/p{i % 97}", "started_at": when, "ended_at": when + timedelta(seconds=20),
                       "created_at": when, "updated_at": when, "user_name": "bench", "hostname": "bench"})
        for n, s in enumerate(s for s in steps if s["kind"] == "tool_use"):
            calls.append({"trace_id": i + 1, "tool_use_id": s["tool_use_id"], "seq": n, "name": s["name"],
                          "input": s["input"], "output": "ok", "is_error": False, "is_interrupt": False})
        events.append({"event_key": f"{i:064x}", "received_at": when, "event": "UserPromptSubmit",
                       "session_id": session_id, "payload": {"hook_event_name": "UserPromptSubmit",
                                                             "session_id": session_id, "prompt": _prompt(i)},
                       "user_name": "bench", "hostname": "bench"})
        if len(traces) >= 1000:
            flush()
    flush()


def environment(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CCRL_DATABASE_URL", "CCRL_CONFIG", "CCRL_DISABLE")}
    env.update(CCRL_HOME=str(home), XDG_CONFIG_HOME=str(home.parent / "xdg-config"))
    return env


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ccrl-bench-") as tmp:
        work = Path(tmp)
        empty, full = work / "home-empty", work / "home-full"
        fill_store(empty, 0)
        started = time.perf_counter()
        fill_store(full, args.traces)
        fill_s = time.perf_counter() - started
        sqlite_mib = (full / "ccrl.db").stat().st_size / 2**20
        variants = {
            "import only": ([sys.executable, "-c", "import ccrl.agent.cli"], environment(empty)),
            "empty store": ([str(CCRL), "status", "--json"], environment(empty)),
            f"{args.traces} traces": ([str(CCRL), "status", "--json"], environment(full)),
        }
        for argv, env in variants.values():  # warm the page cache and the migrations check once
            timed(argv, env)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.runs):
            for name, (argv, env) in variants.items():
                times[name].append(timed(argv, env))
        check = json.loads(subprocess.run(variants[f"{args.traces} traces"][0], env=environment(full),
                                          capture_output=True, text=True).stdout)
    summary = {name: {"median_s": round(statistics.median(t), 3), "max_s": round(max(t), 3)} for name, t in times.items()}
    empty_median = summary["empty store"]["median_s"]
    report = {"traces": check["store"]["traces"], "tool_calls": check["store"]["tool_calls"],
              "threshold": check["agent"].get("threshold"), "fill_s": round(fill_s, 1),
              "sqlite_mib": round(sqlite_mib, 1), "runs": args.runs, "load": os.getloadavg()[0], "variants": summary,
              "ratio_full_to_empty": round(summary[f"{args.traces} traces"]["median_s"] / empty_median, 2)}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"store: {report['traces']:,} traces, {report['tool_calls']:,} tool calls ({report['sqlite_mib']} MiB SQLite, "
          f"filled in {report['fill_s']} s); {args.runs} runs each, interleaved; load {report['load']:.1f}")
    print(f"{'variant':>16} {'median s':>9} {'max s':>7}")
    for name, m in summary.items():
        print(f"{name:>16} {m['median_s']:>9.3f} {m['max_s']:>7.3f}")
    print(f"ccrl status on {args.traces:,} traces / on an empty store: {report['ratio_full_to_empty']}x")


if __name__ == "__main__":
    main()
