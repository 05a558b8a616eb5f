"""Throughput and memory of ``build_dataset`` on a store of 10,000 traces, against a baseline
measured in the same run.

The store is filled with copies of the real fixture traces that survive the default filters
and the length budget (their steps, tool calls and outputs unchanged; each copy gets its own session, tool-call ids
and a prompt of random words, so that de-duplication keeps them). Five traces per session.

Each measurement runs in a fresh child process (so peak memory is that run's own):

- ``baseline``: read the same traces with the same paging and write ``json.dumps`` of each
  trace's JSON form to a file: the floor for anything that reads every trace;
- ``build``: ``ccrl.agent.datasets.datasets.build_dataset`` with the default settings (both formats).

It prints wall and CPU seconds (CPU time is what to compare on a busy machine: wall time
includes waiting for other processes), traces per CPU second, the ratio build/baseline, and
the peak memory of each child for a small store and the full one: if the builder held every
trace in memory, its peak anonymous memory would grow with the store. Usage::

    .venv/bin/python benchmarks/build_dataset.py [--traces 10000] [--small 2000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(os.environ.get("CCRL_FIXTURES", REPO.parent / "shared" / "fixtures" / "claude-code")) / "transcripts"
TRACES_PER_SESSION = 5


def _use_home(home: Path) -> None:
    os.environ["CCRL_HOME"] = str(home)
    os.environ["XDG_CONFIG_HOME"] = str(home.parent / "xdg-config")
    for name in ("CCRL_DATABASE_URL", "CCRL_CONFIG", "CCRL_DISABLE"):
        os.environ.pop(name, None)
    from ccrl.agent.core.config import reset_settings_cache
    from ccrl.agent.store.db import dispose_engines

    reset_settings_cache()
    dispose_engines()


def templates(workdir: Path) -> list[tuple[dict, list[dict]]]:
    """(trace row, tool call rows) of the fixture traces the default filters keep (bad input and
    traces over the length budget left out: a copy of them would only measure a skip)."""
    from sqlmodel import Session as DBSession
    from sqlmodel import select

    from ccrl.agent.capture.importer import import_transcripts
    from ccrl.agent.core.config import get_settings
    from ccrl.agent.datasets.dataset_filters import trace_filter
    from ccrl.agent.datasets.datasets import trajectory_tokens
    from ccrl.agent.store.db import get_engine
    from ccrl.agent.store.models import ToolCall, Trace
    from ccrl.agent.store.records import trace_json
    from ccrl.trainers.conversation import ConversionError, trace_to_messages
    from ccrl.trainers.signals import extract_signals

    _use_home(workdir / "fixtures-home")
    import_transcripts(FIXTURES)
    cfg = get_settings().dataset
    out = []
    with DBSession(get_engine()) as db:
        for trace in db.exec(select(Trace).order_by(Trace.id)):
            calls = list(db.exec(select(ToolCall).where(ToolCall.trace_id == trace.id).order_by(ToolCall.seq)))
            record = trace_json(trace, calls)
            if trace_filter(record, extract_signals(record), cfg) is not None:
                continue
            try:
                tokens = trajectory_tokens(trace_to_messages(record, tool_result_tokens=cfg.tool_result_tokens))
            except ConversionError:
                continue
            if tokens <= cfg.max_tokens:
                out.append((trace.model_dump(), [c.model_dump() for c in calls]))
    return out


def fill_store(home: Path, n_traces: int, rows: list[tuple[dict, list[dict]]], seed: int = 7) -> None:
    """A store of ``n_traces`` copies of the template traces (bulk inserts)."""
    from ccrl.agent.store.db import get_engine
    from ccrl.agent.store.models import Session, ToolCall, Trace

    _use_home(home)
    engine = get_engine()
    rng = random.Random(seed)
    vocabulary = ["".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(rng.randint(2, 4)))
                  for _ in range(3000)]
    sessions, traces, calls = [], [], []

    def flush() -> None:
        with engine.begin() as conn:
            if sessions:
                conn.execute(Session.__table__.insert(), sessions)
            if traces:
                conn.execute(Trace.__table__.insert(), traces)
            if calls:
                conn.execute(ToolCall.__table__.insert(), calls)
        sessions.clear(), traces.clear(), calls.clear()

    for i in range(n_traces):
        trace, trace_calls = rows[i % len(rows)]
        session_id = f"bench-session-{i // TRACES_PER_SESSION:06d}"
        if i % TRACES_PER_SESSION == 0:
            sessions.append({"id": session_id, "created_at": trace["created_at"], "updated_at": trace["updated_at"]})
        prefix = f"b{i}_"
        steps = [dict(s, tool_use_id=prefix + s["tool_use_id"]) if s.get("tool_use_id") else s for s in trace["steps"]]
        prompt = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(12, 40)))
        traces.append({**trace, "id": i + 1, "session_id": session_id, "key": f"bench-{i}", "parent_id": None,
                       "prompt": prompt, "steps": steps, "signals": {}})
        for call in trace_calls:
            calls.append({**call, "id": None, "trace_id": i + 1, "tool_use_id": prefix + (call["tool_use_id"] or str(call["id"]))})
        if len(traces) >= 500:
            flush()
    flush()


class AnonPeak:
    """Highest anonymous resident memory (heap, not file pages) seen by a sampling thread.

    ``ru_maxrss`` also counts file pages mapped while Arrow reads its own files back, which the
    kernel can drop at will; what a builder holding every trace would grow is anonymous memory.
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    @staticmethod
    def now_kib() -> int:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
        return 0

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, self.now_kib())
            self._stop.wait(interval)

    def __enter__(self) -> AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, self.now_kib())


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(mode: str, home: str) -> dict:
    """One measurement, in this (fresh) process."""
    _use_home(Path(home))
    from ccrl.agent.core.config import get_settings

    settings = get_settings()
    phases: dict[str, float] = {}
    with AnonPeak() as anon:
        start, cpu0 = time.perf_counter(), _cpu()
        if mode == "baseline":
            from ccrl.agent.datasets.datasets import iter_traces

            n = 0
            with open(Path(home) / "baseline.jsonl", "w", encoding="utf-8") as fh:
                for trace in iter_traces(settings, settings.dataset.page_size):
                    fh.write(json.dumps(trace, ensure_ascii=False) + "\n")
                    n += 1
            extra = {"traces": n}
        else:
            from ccrl.agent.datasets import datasets as ds

            # time the two phases: the streamed pass over the store, and the Arrow writes
            original_hash, original_write = ds._content_hash, ds._dataset_dict

            def content_hash(*args: object) -> str:
                phases["stream_cpu_s"] = round(_cpu() - cpu0, 2)
                return original_hash(*args)

            def dataset_dict(*args: object, **kwargs: object) -> None:
                before = _cpu()
                original_write(*args, **kwargs)
                phases["arrow_cpu_s"] = round(phases.get("arrow_cpu_s", 0.0) + _cpu() - before, 2)

            ds._content_hash, ds._dataset_dict = content_hash, dataset_dict
            result = ds.build_dataset(settings, force=True)
            extra = {"traces": result.stats["traces_seen"], "kept": result.trace_count,
                     "rows": result.train_count + result.eval_count}
        seconds, cpu = time.perf_counter() - start, _cpu() - cpu0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"mode": mode, "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
            "peak_rss_mib": round(peak_kib / 1024, 1), "peak_anon_mib": round(anon.peak_kib / 1024, 1),
            **phases, **extra}


def run_child(mode: str, home: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(home)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=2_000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "HOME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return

    with tempfile.TemporaryDirectory(prefix="ccrl-bench-") as tmp:
        work = Path(tmp)
        rows = templates(work)
        results = {}
        for size in sorted({args.small, args.traces}):
            home = work / f"home-{size}"
            fill_store(home, size, rows)
            baseline = run_child("baseline", home)
            build = run_child("build", home)
            results[size] = {"baseline": baseline, "build": build,
                             "ratio": round(build["cpu_seconds"] / baseline["cpu_seconds"], 2)}
    report = {"template_traces": len(rows), "runs": results}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"store: copies of {len(rows)} real fixture traces (kept by the default filters), "
          f"{TRACES_PER_SESSION} traces per session; each run in a fresh process")
    print(f"{'traces':>7} {'variant':>9} {'wall s':>8} {'CPU s':>7} {'traces/CPU s':>13} {'peak RSS MiB':>13} "
          f"{'peak anon MiB':>14}")
    for size, r in results.items():
        for name in ("baseline", "build"):
            m = r[name]
            print(f"{size:>7} {name:>9} {m['seconds']:>8.1f} {m['cpu_seconds']:>7.1f} "
                  f"{m['traces'] / m['cpu_seconds']:>13.1f} {m['peak_rss_mib']:>13} {m['peak_anon_mib']:>14}")
        b = r["build"]
        print(f"{'':>7} build/baseline CPU time: {r['ratio']}x (streamed pass {b.get('stream_cpu_s')} s, "
              f"Arrow writes {b.get('arrow_cpu_s')} s); kept {b['kept']} traces, {b['rows']} rows")
    if len(results) > 1:
        small, big = results[min(results)]["build"], results[max(results)]["build"]
        print(f"peak anonymous memory of the build: {small['peak_anon_mib']} MiB at {min(results)} traces, "
              f"{big['peak_anon_mib']} MiB at {max(results)} ({big['peak_anon_mib'] - small['peak_anon_mib']:+.1f} MiB "
              f"for {max(results) - min(results)} more traces); peak RSS incl. mapped Arrow files "
              f"{small['peak_rss_mib']} → {big['peak_rss_mib']} MiB")


if __name__ == "__main__":
    main()
