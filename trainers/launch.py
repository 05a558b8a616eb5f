"""Training across several GPUs: ``[train] accelerate_config`` → ``accelerate launch``.

``accelerate_config`` is empty (one process, as always), one of the names ``ddp``, ``fsdp``,
``zero3`` (configs shipped in ``accelerate_configs/``, modelled on TRL's
``examples/accelerate_configs`` with QLoRA's needs), or the path of the user's own accelerate
YAML. ``num_processes`` empty = every visible GPU (or the user config's own ``num_processes``).

The trainer runs as ``python -m accelerate.commands.launch --config_file CFG --num_processes N
-m ccrl.trainers.sft ...``: the same entry module that runs a single-process training in a
child, started once per rank by accelerate (torchrun). Everything around training (the store's
run rows, resuming, the continuation dataset) stays in the one process that asked for the run;
only the training itself is distributed. Rank 0 prints the result on stdout and its progress
events as JSON lines on stderr, which this module forwards; the other ranks stay silent.

Stopping: torchrun starts every rank in a session of its own, so a process-group signal never
reaches them. A stop request goes to the ranks directly (SIGTERM: they agree on a step, save a
checkpoint and exit); a kill walks the whole process tree (``kill_tree``). Ranks also watch their
launcher and stop themselves if it disappears.

This module imports neither torch nor accelerate at import time: the agent reads it.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STRATEGIES = {"ddp": "ddp.yaml", "fsdp": "fsdp.yaml", "zero3": "zero3.yaml"}
"""The configs shipped with ccrl, by the name ``train.accelerate_config`` takes."""


class LaunchError(RuntimeError):
    """The multi-process launch cannot start as configured; the message says what to change."""


def configs_dir() -> Path:
    """Where the shipped accelerate configs live (installed as package data)."""
    return Path(__file__).resolve().parent / "accelerate_configs"


@dataclass(frozen=True)
class LaunchPlan:
    """How one training run is launched."""

    config_file: Path
    name: str
    """``ddp``, ``fsdp``, ``zero3``, or the user's config path as given."""
    distributed_type: str
    """The config's ``distributed_type`` (MULTI_GPU, FSDP, DEEPSPEED...)."""
    num_processes: int
    main_process_port: int | None = None
    """Set when the config names none: a free port, so two runs on one machine do not collide."""

    def describe(self) -> str:
        return f"{self.num_processes} processes with accelerate ({self.name}: {self.distributed_type})"


def read_config(path: Path) -> dict[str, Any]:
    """An accelerate YAML config as a dict (``LaunchError`` when it is not one)."""
    import yaml  # accelerate's own dependency

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise LaunchError(f"cannot read the accelerate config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise LaunchError(f"{path} is not an accelerate config (expected a YAML mapping such as `accelerate config` writes)")
    return data


def gpu_count() -> int:
    """CUDA devices this process sees (0 without torch or without a GPU)."""
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def resolve_launch(accelerate_config: str | None, num_processes: int | None = None, *,
                   gpus: int | None = None) -> LaunchPlan | None:
    """The launch for these settings, or None for a single process. ``gpus`` defaults to the
    CUDA devices visible here. Raises ``LaunchError`` for a name or file that does not exist,
    DeepSpeed missing for a DeepSpeed config, or more processes than GPUs."""
    if accelerate_config is None or not str(accelerate_config).strip():
        if num_processes not in (None, 1):
            raise LaunchError("train.num_processes needs train.accelerate_config (ddp, fsdp, zero3 or a config file)")
        return None
    value = str(accelerate_config).strip()
    if value in STRATEGIES:
        path = configs_dir() / STRATEGIES[value]
    else:
        path = Path(value).expanduser()
        if not path.is_file():
            hint = "a file that does not exist" if ("/" in value or value.endswith((".yaml", ".yml"))) else "not a known name"
            raise LaunchError(f"train.accelerate_config {value!r} is {hint}: use ddp, fsdp, zero3 or the path of an "
                              "accelerate config file (`accelerate config --config_file PATH` writes one)")
    config = read_config(path)
    distributed_type = str(config.get("distributed_type", "NO")).upper()
    if distributed_type == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        raise LaunchError(f"train.accelerate_config {value!r} uses DeepSpeed, which is not installed: "
                          "pip install deepspeed (on the machine with the GPUs)")
    gpus = gpu_count() if gpus is None else gpus
    from_config = config.get("num_processes")
    wanted = num_processes or (from_config if value not in STRATEGIES and isinstance(from_config, int) and from_config > 0 else None)
    if gpus > 0:
        wanted = wanted or gpus
        if wanted > gpus:
            raise LaunchError(f"{wanted} training processes asked for (train.num_processes or the config's num_processes), "
                              f"but only {gpus} CUDA GPU(s) are visible: one process per GPU")
    else:
        if distributed_type in ("FSDP", "DEEPSPEED"):
            raise LaunchError(f"train.accelerate_config {value!r} ({distributed_type}) needs CUDA GPUs; without one, "
                              "only ddp runs (several CPU processes, for testing)")
        if not wanted:
            raise LaunchError("no CUDA GPU is visible: set train.num_processes to the number of CPU processes to run, "
                              "or leave train.accelerate_config empty")
    port = None if config.get("main_process_port") else _free_port()
    return LaunchPlan(path, value, distributed_type, int(wanted), port)


def launch_command(plan: LaunchPlan, module: str, args: list[str]) -> list[str]:
    """``python -m accelerate.commands.launch --config_file CFG --num_processes N -m MODULE ARGS``."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(plan.config_file),
           "--num_processes", str(plan.num_processes)]
    if plan.main_process_port is not None:
        cmd += ["--main_process_port", str(plan.main_process_port)]
    return [*cmd, "-m", module, *args]


# ---------------------------------------------------------------------------------------------
# Processes


def _children_by_parent() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name (field 2) may hold spaces or parentheses: split after its last ')'.
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1:
            tree[int(fields[1])].append(int(entry))
    return tree


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (the ranks, for an accelerate launcher)."""
    return list(_children_by_parent().get(pid, []))


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, whatever session or group it moved to."""
    tree = _children_by_parent()
    found: list[int] = []
    todo = list(tree.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(tree.get(child, []))
    return found


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to ``pid`` and every process below it (ranks of a launcher included).

    The tree is read before anything is signalled: once a parent dies its children are
    re-parented and could no longer be found from it."""
    for target in [*descendants(pid), pid]:
        try:
            os.kill(target, sig)
        except (ProcessLookupError, PermissionError):
            pass


@dataclass
class LaunchOutcome:
    """How a launched training ended."""

    returncode: int
    result: dict[str, Any] | None
    """Rank 0's final JSON line on stdout (``{"metrics", "artifacts"}`` or ``{"stopped"}``)."""
    errors: list[str]
    """Messages of ``{"event": "error"}`` lines from any rank."""
    tail: list[str]
    """The last lines of other output (the launcher's own report of a crashed rank)."""
    stop_sent: bool


def run_launched(cmd: list[str], *, emit: Callable[[dict[str, Any]], None],
                 should_stop: Callable[[], bool] | None = None, env: dict[str, str] | None = None,
                 poll_seconds: float = 0.5) -> LaunchOutcome:
    """Run a launcher and wait for it, forwarding rank 0's events to ``emit``.

    When ``should_stop()`` turns true the ranks get SIGTERM once (they checkpoint and end). If
    this function is left early (an exception, Ctrl-C, a second stop signal) the whole tree is
    killed, so no rank keeps training on its own."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, bufsize=1, env=env)
    result: list[dict[str, Any]] = []
    errors: list[str] = []
    tail: collections.deque[str] = collections.deque(maxlen=25)

    def read_stdout() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            record = _json_line(line)
            if record is not None and ({"metrics", "stopped"} & set(record)):
                result.append(record)
            elif line.strip():
                tail.append(line.rstrip())
                sys.stderr.write(line)

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            record = _json_line(line)
            if record is not None and "event" in record:
                if record["event"] == "error":
                    errors.append(str(record.get("message", "")))
                elif record["event"] != "stopped":
                    emit(record)
                continue
            if line.strip():
                tail.append(line.rstrip())
            sys.stderr.write(line)

    readers = [threading.Thread(target=fn, daemon=True) for fn in (read_stdout, read_stderr)]
    for reader in readers:
        reader.start()
    stop_sent = False
    try:
        while True:
            try:
                returncode = proc.wait(timeout=poll_seconds)
                break
            except subprocess.TimeoutExpired:
                pass
            if not stop_sent and should_stop is not None and should_stop():
                stop_sent = True
                for rank in children(proc.pid):
                    try:
                        os.kill(rank, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
    except BaseException:
        kill_tree(proc.pid)
        proc.wait()
        raise
    finally:
        for reader in readers:
            reader.join(timeout=5)
    return LaunchOutcome(returncode, result[-1] if result else None, errors, list(tail), stop_sent)


def _json_line(line: str) -> dict[str, Any] | None:
    text = line.strip()
    if not (text.startswith("{") and text.endswith("}")):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def watch_launcher(on_gone: Callable[[], None], interval: float = 1.0) -> None:
    """In a rank: call ``on_gone`` once if the launcher that started us dies (we would be an
    orphan training on its own)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                on_gone()
                return

    threading.Thread(target=watch, daemon=True, name="ccrl-watch-launcher").start()
