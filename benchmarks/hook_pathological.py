"""Wall time and peak memory of the capture hook on pathological inputs of up to 50 MB.

Each input goes on stdin of the installed hook command, run as Claude Code runs it
(``sh -c COMMAND``), and of a baseline: ``sh -c '<python> -S -E -c <read stdin to the end in
1 MiB chunks>'``, a bare start of the same interpreter that reads the same bytes and keeps
none. Wall time is from start to exit; peak RSS is the ``ru_maxrss`` that ``wait4`` reports for
the shell and what it ran (measured by a small launcher: see ``LAUNCHER``). The goal (issue 16): every input under 1 s and 150 MB.

Inputs: one 50 MB single-line JSON string value; 50 MB of short lines; deeply nested JSON;
invalid UTF-8 inside a JSON value; random binary; a value of ``a:a@`` repeats (the URL password
pattern's worst case); a value of ``eyJ`` repeats (the JWT pattern's); an object of a million
tiny values. Usage::

    .venv/bin/python benchmarks/hook_pathological.py [--mb 50] [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

from ccrl.hooks import capture, paths
from ccrl.hooks.inbox import ensure_inbox

GOAL_S = 1.0
GOAL_RSS_MB = 150.0
BASELINE_CODE = "import os\nwhile os.read(0, 1 << 20): pass"


def _event(value: bytes) -> bytes:
    """A PostToolUse event whose tool output is ``value`` (raw bytes inside the JSON string)."""
    head = (b'{"session_id": "5f0c2a4e-8b1d-4c3e-9a7f-2d6e1b0c9a8f", "cwd": "/home/dev/app", '
            b'"hook_event_name": "PostToolUse", "tool_name": "Bash", '
            b'"tool_use_id": "toolu_01PATHOLOGICAL", "tool_input": {"command": "cat big"}, '
            b'"tool_response": {"stdout": "')
    return head + value + b'", "stderr": "", "interrupted": false}}'


def _repeat(unit: bytes, size: int) -> bytes:
    return unit * (size // len(unit))


def pathological_inputs(size: int) -> dict[str, Callable[[], bytes]]:
    """Name -> a function making that input of about ``size`` bytes (made on demand: 50 MB each)."""
    return {
        "single-line value": lambda: _event(_repeat(b"x", size)),
        "many short lines": lambda: _repeat(b"ok line\n", size),
        "deeply nested JSON": lambda: b'{"hook_event_name": "Stop", "a": ' + _repeat(b"[", size // 2)
        + _repeat(b"]", size // 2) + b"}",
        "invalid UTF-8": lambda: _event(_repeat(b"caf\xe9 \xff\xfe ", size)),
        "binary": lambda: os.urandom(size),
        "a:a@ repeats": lambda: _event(b"https://" + _repeat(b"a:a@", size)),
        "eyJ repeats": lambda: _event(_repeat(b"eyJ", size)),
        "a million tiny values": lambda: b'{"hook_event_name": "Stop", "v": ['
        + _repeat(b'"a",', size)[:-1] + b"]}",
    }


# Runs ``sh -c COMMAND`` and writes its peak RSS (KiB, from wait4) to the file named first. A
# small launcher of its own, because a child's peak RSS starts at its parent's at fork time
# (and survives exec): forked from this process, which holds the 50 MB input, every command
# would read as at least that big.
LAUNCHER = """import os, sys
pid = os.fork()
if pid == 0:
    os.execvp("sh", ["sh", "-c", sys.argv[2]])
_pid, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_once(command: str, stdin: bytes, env: dict[str, str]) -> tuple[float, float, int, bytes]:
    """``(seconds, peak RSS in MB, exit status, output)`` of ``sh -c command`` fed ``stdin``
    (the time includes the launcher's start, the same for every command)."""
    rss_file = tempfile.NamedTemporaryFile(prefix="ccrl-rss-", delete=False)
    rss_file.close()
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-S", "-E", "-c", LAUNCHER, rss_file.name, command],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)

    def feed() -> None:
        try:
            proc.stdin.write(stdin)  # type: ignore[union-attr]
        except BrokenPipeError:
            pass
        finally:
            try:
                proc.stdin.close()  # type: ignore[union-attr]
            except BrokenPipeError:
                pass

    writer = threading.Thread(target=feed)
    writer.start()
    output = proc.stdout.read()  # type: ignore[union-attr]
    proc.wait()
    elapsed = time.perf_counter() - start
    writer.join()
    try:
        with open(rss_file.name) as fh:
            rss_kib = int(fh.read() or 0)
    finally:
        os.unlink(rss_file.name)
    return elapsed, rss_kib / 1024, proc.returncode, output


def hook_env(tmp: str) -> tuple[str, dict[str, str]]:
    """A fresh data directory with the inbox set up, and the environment to run the hook in."""
    home = os.path.join(tmp, "home")
    ensure_inbox(paths.inbox_path(home))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CCRL_", "PYTHON"))}
    env.update(XDG_RUNTIME_DIR=os.path.join(tmp, "run"), TMPDIR=tmp)
    return home, env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=50.0, help="size of each input in MB")
    parser.add_argument("--runs", type=int, default=3, help="runs per input and variant (the worst is reported)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    size = int(args.mb * 1_000_000)
    python = os.path.abspath(sys.executable)
    baseline = f"{shlex.quote(python)} -S -E -c {shlex.quote(BASELINE_CODE)}"
    results = {}
    with tempfile.TemporaryDirectory(prefix="ccrl-bench-") as tmp:
        home, env = hook_env(tmp)
        hook = capture.hook_command(home)
        for name, make in pathological_inputs(size).items():
            data = make()
            base_runs, hook_runs = [], []
            for _ in range(args.runs):  # interleaved: machine noise hits both alike
                base_runs.append(run_once(baseline, data, env))
                hook_runs.append(run_once(hook, data, env))
            bad = [r for r in hook_runs if r[2] != 0 or r[3]]
            if bad:
                raise SystemExit(f"{name}: the hook exited {bad[0][2]} with output {bad[0][3][:200]!r}")
            worst_s = max(r[0] for r in hook_runs)
            worst_mb = max(r[1] for r in hook_runs)
            base_s = statistics.median(r[0] for r in base_runs)
            base_mb = statistics.median(r[1] for r in base_runs)
            results[name] = {
                "bytes": len(data),
                "hook_worst_s": round(worst_s, 3), "hook_median_s": round(statistics.median(r[0] for r in hook_runs), 3),
                "baseline_median_s": round(base_s, 3), "time_ratio": round(worst_s / base_s, 2),
                "hook_peak_rss_mb": round(worst_mb, 1), "baseline_peak_rss_mb": round(base_mb, 1),
                "rss_ratio": round(worst_mb / base_mb, 2),
                "goal_met": worst_s < GOAL_S and worst_mb < GOAL_RSS_MB,
            }
            del data
        import sqlite3

        conn = sqlite3.connect(paths.inbox_path(home))
        stored = conn.execute("SELECT count(*) FROM inbox").fetchone()[0]
        largest = conn.execute("SELECT max(length(payload)) FROM inbox").fetchone()[0]
        conn.close()
        spooled = sum(len(os.listdir(d)) for d in paths.spool_dirs(home) if os.path.isdir(d))
    summary = {"python": python, "hook_command": hook, "runs": args.runs, "results": results,
               "rows_in_inbox": stored, "largest_row_bytes": largest, "spool_files": spooled,
               "hook_runs": args.runs * len(results),
               "goal": f"every input < {GOAL_S} s and < {GOAL_RSS_MB} MB peak RSS",
               "goal_met": all(r["goal_met"] for r in results.values())}
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"python {python}; {args.runs} runs per input and variant; worst hook run reported")
    print(f"hook command: {hook}")
    print(f"{'input':22} {'MB':>6} {'hook s':>7} {'base s':>7} {'x':>6} {'hook MB':>8} {'base MB':>8} {'x':>6}")
    for name, r in results.items():
        print(f"{name:22} {r['bytes'] / 1e6:>6.1f} {r['hook_worst_s']:>7.3f} {r['baseline_median_s']:>7.3f} "
              f"{r['time_ratio']:>6.2f} {r['hook_peak_rss_mb']:>8.1f} {r['baseline_peak_rss_mb']:>8.1f} "
              f"{r['rss_ratio']:>6.2f}")
    print(f"events stored: {stored} in the inbox (largest row {largest} bytes), {spooled} spooled, "
          f"of {summary['hook_runs']} hook runs")
    print(f"goal ({summary['goal']}): {'met' if summary['goal_met'] else 'NOT met'}")


if __name__ == "__main__":
    main()
