"""ccrl's entries in Claude Code settings files: add, remove, inspect.

Claude Code reads hooks from ``~/.claude/settings.json`` (user), ``<project>/.claude/settings.json``
(project, shared) and ``<project>/.claude/settings.local.json`` (project, private). The shape is::

    {"hooks": {"PostToolUse": [{"matcher": "*", "hooks": [{"type": "command", "command": "…",
                                                            "timeout": 10}]}]}}

Everything else in those files belongs to the user (permissions, env, statusLine, their own
hooks) and must come out of an install or uninstall unchanged in meaning. So the merge works on
the parsed JSON, touches only entries whose command is ccrl's hook, and writes atomically
(temp file in the same directory, fsync, rename) after keeping a backup. A file that is not
valid JSON, or whose ``hooks`` has a shape we do not understand, is refused untouched: guessing
there could drop a user's hooks.

ccrl's own entries are recognised by what their command runs (ccrl's ``hooks/capture.py``,
the ``ccrl.hooks.capture`` module or the ``ccrl-hook`` script; see ``is_ccrl_command``), not by
equality with today's command, so a re-install after the virtual environment moved, or with
another ``CCRL_HOME``, replaces the old entry instead of adding one.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

SCOPES = ("user", "project", "local")

# Every event ccrl captures (see ../shared/docs/claude-code.md). Failed tool calls fire only
# PostToolUseFailure, so it is as necessary as PostToolUse.
HOOK_EVENTS = (
    "UserPromptSubmit",
    "PreToolUse",
    "PostToolUse",
    "PostToolUseFailure",
    "Stop",
    "SubagentStart",
    "SubagentStop",
    "SessionStart",
    "SessionEnd",
    "PreCompact",
)
# Events whose matcher is a tool name; "*" = every tool. The other events either ignore the
# matcher or match on something else (session source, compaction trigger, agent type), where
# leaving it out matches everything.
TOOL_EVENTS = frozenset({"PreToolUse", "PostToolUse", "PostToolUseFailure"})
TOOL_MATCHER = "*"
# Seconds. The hook takes tens of milliseconds; this only bounds a pathological stall (a wedged
# filesystem). Synchronous on purpose: Claude Code kills async hooks at teardown in -p mode and
# the final Stop/SessionEnd would be lost.
HOOK_TIMEOUT_S = 10

BACKUP_SUFFIX = ".ccrl-backup-"
_TEMP_SUFFIX = ".ccrl-tmp"
# Forms of ccrl's hook besides the script path (see is_ccrl_command).
_CCRL_MODULE = re.compile(r"(?<![\w.])ccrl\.hooks\.capture(?![\w])")
_CCRL_FILE = re.compile(r"(^|/)ccrl/hooks/capture\.py$")
_ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


class SettingsFileError(Exception):
    """A settings file ccrl must not change: unreadable, not JSON, or an unexpected shape."""


# ---------------------------------------------------------------------------------------------
# Where the files are, what ccrl's entries look like


def settings_path(scope: str, project_dir: Path | str | None = None) -> Path:
    """The settings file of ``scope`` (user, project or local); project scopes use ``project_dir``
    (default: the current directory)."""
    if scope == "user":
        return Path.home() / ".claude" / "settings.json"
    base = Path(project_dir) if project_dir is not None else Path.cwd()
    base = base.expanduser().resolve()
    if scope == "project":
        return base / ".claude" / "settings.json"
    if scope == "local":
        return base / ".claude" / "settings.local.json"
    raise ValueError(f"unknown scope {scope!r}; expected one of {', '.join(SCOPES)}")


def hook_entry(command: str) -> dict[str, Any]:
    """ccrl's hook entry for one event: a synchronous command with a timeout."""
    return {"type": "command", "command": command, "timeout": HOOK_TIMEOUT_S}


def _new_group(event: str, command: str) -> dict[str, Any]:
    if event in TOOL_EVENTS:
        return {"matcher": TOOL_MATCHER, "hooks": [hook_entry(command)]}
    return {"hooks": [hook_entry(command)]}


def hooks_block(command: str) -> dict[str, Any]:
    """The whole ``{"hooks": …}`` block ccrl installs (also what settings.example.json shows)."""
    return {"hooks": {event: [_new_group(event, command)] for event in HOOK_EVENTS}}


def _split(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError:
        return command.split()


def _leading_program(tokens: list[str]) -> list[str]:
    """The tokens from the program on: drops ``VAR=value`` prefixes, ``env`` and ``exec``."""
    for i, token in enumerate(tokens):
        if not (_ENV_ASSIGNMENT.match(token) or token in ("env", "exec")):
            return tokens[i:]
    return []


def hook_script(command: str) -> str | None:
    """The script of a ``<python> [-flags…] <dir>/hooks/capture.py`` command, else None.

    That is how ``hook_command`` writes ccrl's hook: the file by absolute path, so the hook
    starts without ``site`` and works without the venv on PATH.
    """
    args = _leading_program(_split(command))
    if len(args) < 2 or not os.path.basename(args[0]).startswith("python"):
        return None
    *flags, script = args[1:]
    if not all(flag.startswith("-") for flag in flags):
        return None
    if os.path.basename(script) != "capture.py" or os.path.basename(os.path.dirname(script)) != "hooks":
        return None
    return script


def _is_ccrl_script(script: str) -> bool:
    """Whether a ``…/hooks/capture.py`` is ccrl's. A file that exists must name ccrl (its
    docstring introduces ``ccrl-hook``; a user's own ``~/.claude/hooks/capture.py`` does not);
    one that is gone is taken for ccrl's old copy (a moved venv or checkout), which a
    re-install must replace."""
    try:
        with open(script, "rb") as handle:
            return b"ccrl" in handle.read(1 << 16).lower()
    except FileNotFoundError:
        return True
    except OSError:
        return False


def is_ccrl_command(command: str) -> bool:
    """True when a hook command runs ccrl's capture hook, whatever interpreter or CCRL_HOME.

    Recognised forms: ``<python> [-flags] <dir>/hooks/capture.py`` (see ``hook_script``),
    ``-m ccrl.hooks.capture`` or ``-c "…ccrl.hooks.capture…"``, a path ending in
    ``ccrl/hooks/capture.py``, and the ``ccrl-hook`` console script.
    """
    for token in _split(command):
        if _CCRL_MODULE.search(token) or _CCRL_FILE.search(token):
            return True
        if os.path.basename(token) == "ccrl-hook":
            return True
    script = hook_script(command)
    return script is not None and _is_ccrl_script(script)


def is_ccrl_hook(hook: Any) -> bool:
    """True for a hook entry (one element of a group's ``hooks`` list) that is ccrl's."""
    return (
        isinstance(hook, dict)
        and hook.get("type", "command") == "command"
        and isinstance(hook.get("command"), str)
        and is_ccrl_command(hook["command"])
    )


def command_program(command: str) -> str | None:
    """The program a hook command starts (after ``VAR=value`` prefixes, ``env`` and ``exec``)."""
    args = _leading_program(_split(command))
    return args[0] if args else None


def program_exists(program: str | None) -> bool:
    """True when ``program`` is an executable file (looked up on PATH when not a path)."""
    if not program:
        return False
    if os.sep in program:
        return os.path.isfile(program) and os.access(program, os.X_OK)
    return shutil.which(program) is not None


# ---------------------------------------------------------------------------------------------
# Reading and checking


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_settings(raw: bytes, path: Path) -> dict[str, Any]:
    """Parse a settings file's bytes. An empty file counts as ``{}`` (nothing to keep)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SettingsFileError(f"{path} is not UTF-8 text ({exc}); fix or move it, then retry.") from exc
    if not text.strip():
        return {}
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise SettingsFileError(
            f"{path} is not valid JSON ({exc}). Nothing was changed; fix the file (or move it "
            "away) and run the command again."
        ) from exc
    if not isinstance(data, dict):
        raise SettingsFileError(
            f"{path} holds a JSON {type(data).__name__}, not an object. Nothing was changed."
        )
    return data


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def check_hooks_shape(settings: dict[str, Any], path: Path, events: tuple[str, ...] | None = None) -> None:
    """Raise SettingsFileError unless ``hooks`` (and the given events, default all) have the
    documented shape: ``{event: [{"matcher"?: str, "hooks": [{…}, …]}, …]}``."""
    hooks = settings.get("hooks")
    if hooks is None:
        return
    if not isinstance(hooks, dict):
        raise SettingsFileError(f'{path}: "hooks" is {_kind(hooks)}, expected an object. Nothing was changed.')
    for event in events if events is not None else tuple(hooks):
        groups = hooks.get(event)
        if groups is None:
            continue
        where = f'{path}: hooks.{event}'
        if not isinstance(groups, list):
            raise SettingsFileError(f"{where} is {_kind(groups)}, expected a list. Nothing was changed.")
        for i, group in enumerate(groups):
            if not isinstance(group, dict):
                raise SettingsFileError(f"{where}[{i}] is {_kind(group)}, expected an object. Nothing was changed.")
            inner = group.get("hooks")
            if not isinstance(inner, list):
                raise SettingsFileError(
                    f'{where}[{i}].hooks is {_kind(inner) if inner is not None else "missing"}, '
                    "expected a list. Nothing was changed."
                )
            for j, hook in enumerate(inner):
                if not isinstance(hook, dict):
                    raise SettingsFileError(
                        f"{where}[{i}].hooks[{j}] is {_kind(hook)}, expected an object. Nothing was changed."
                    )


# ---------------------------------------------------------------------------------------------
# The merge itself: pure functions on parsed settings


def _is_ccrl_group(group: dict[str, Any], event: str) -> bool:
    """A group ccrl's entry may live in: ccrl's own matcher for the event."""
    matcher = group.get("matcher")
    if event in TOOL_EVENTS:
        return matcher == TOOL_MATCHER
    return matcher in (None, "", TOOL_MATCHER)


def with_ccrl_hooks(settings: dict[str, Any], command: str) -> dict[str, Any]:
    """A copy of ``settings`` with ccrl's hook registered for every event, exactly once.

    An existing ccrl entry in a group with ccrl's matcher is replaced where it stands (so a
    re-install changes one string); ccrl entries anywhere else are removed; groups that only
    held a ccrl entry go with it; if no entry was replaced, a new group is appended. Other
    hooks, groups and settings keep their values and order.
    """
    new = copy.deepcopy(settings)
    hooks = new.setdefault("hooks", {})
    for event in HOOK_EVENTS:
        groups = hooks.setdefault(event, [])
        placed = False
        kept_groups = []
        for group in groups:
            before = group["hooks"]
            after = []
            for hook in before:
                if not is_ccrl_hook(hook):
                    after.append(hook)
                elif not placed and _is_ccrl_group(group, event):
                    after.append(hook_entry(command))
                    placed = True
            if before and not after:
                continue  # the group held only ccrl entries that moved elsewhere
            group["hooks"] = after
            kept_groups.append(group)
        if not placed:
            kept_groups.append(_new_group(event, command))
        hooks[event] = kept_groups
    return new


def without_ccrl_hooks(settings: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``settings`` with every ccrl hook entry removed, and the groups, event lists and
    ``hooks`` object that only held ccrl entries removed with them. Nothing else changes."""
    new = copy.deepcopy(settings)
    hooks = new.get("hooks")
    if not isinstance(hooks, dict) or not hooks:
        return new
    for event in list(hooks):
        groups = hooks[event]
        if not isinstance(groups, list) or not groups:
            continue
        kept_groups = []
        for group in groups:
            inner = group.get("hooks") if isinstance(group, dict) else None
            if not isinstance(inner, list):
                kept_groups.append(group)
                continue
            after = [hook for hook in inner if not is_ccrl_hook(hook)]
            if inner and not after:
                continue
            group["hooks"] = after
            kept_groups.append(group)
        if kept_groups:
            hooks[event] = kept_groups
        else:
            del hooks[event]
    if not hooks:
        del new["hooks"]
    return new


def ccrl_commands(settings: dict[str, Any]) -> dict[str, list[str]]:
    """ccrl's hook commands per event, as found in ``settings`` (tolerant of odd shapes)."""
    found: dict[str, list[str]] = {}
    hooks = settings.get("hooks")
    if not isinstance(hooks, dict):
        return found
    for event, groups in hooks.items():
        if not isinstance(groups, list):
            continue
        for group in groups:
            inner = group.get("hooks") if isinstance(group, dict) else None
            if not isinstance(inner, list):
                continue
            for hook in inner:
                if is_ccrl_hook(hook):
                    found.setdefault(event, []).append(hook["command"])
    return found


# ---------------------------------------------------------------------------------------------
# Files: atomic writes, backups


def _indent_of(raw: bytes | None) -> str | int:
    """The indentation the file already uses (so a merge does not reformat it), default 2."""
    if raw:
        match = re.match(rb'\s*\{\s*?\n([ \t]+)"', raw)
        if match:
            return match.group(1).decode()
    return 2


def render(settings: dict[str, Any], previous: bytes | None = None) -> bytes:
    """Settings as the bytes ccrl writes: the file's own indentation, UTF-8, final newline."""
    return (json.dumps(settings, indent=_indent_of(previous), ensure_ascii=False) + "\n").encode()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None = None) -> None:
    """Replace ``path`` with ``data`` in one rename: readers see the old file or the new one,
    never half of it, and a failure leaves no temp file behind."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        if owner is not None:
            try:
                os.chown(tmp, *owner)
            except OSError:
                pass  # not root: the file is ours anyway
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def write_backup(path: Path, data: bytes, mode: int) -> Path:
    """Keep ``data`` (the file as it was) next to it as ``<name>.ccrl-backup-<UTC time>``."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for attempt in range(1000):
        suffix = "" if attempt == 0 else f"-{attempt}"
        backup = path.with_name(f"{path.name}{BACKUP_SUFFIX}{stamp}{suffix}")
        try:
            fd = os.open(backup, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            continue
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # exactly the original's mode, whatever the umask
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return backup
    raise SettingsFileError(f"could not create a backup of {path}: too many backups with the same time")


@dataclass
class Change:
    """What an install or uninstall did to one settings file."""

    path: Path
    changed: bool
    created: bool = False
    backup: Path | None = None


def _read(path: Path) -> tuple[bytes | None, os.stat_result | None]:
    try:
        return path.read_bytes(), path.stat()
    except FileNotFoundError:
        return None, None
    except IsADirectoryError as exc:
        raise SettingsFileError(f"{path} is a directory, not a settings file.") from exc
    except OSError as exc:
        raise SettingsFileError(f"cannot read {path}: {exc.strerror}.") from exc


def update_settings_file(
    path: Path,
    transform: Callable[[dict[str, Any]], dict[str, Any]],
    create: bool,
    check_events: tuple[str, ...] | None = None,
) -> Change:
    """Apply ``transform`` to the settings in ``path`` and write the result if it differs.

    A symlinked settings file (dotfile managers) is updated at its target. ``create`` says
    whether a missing file (and its directory) may be created. The file is read again just
    before writing: if Claude Code (or anything else) changed it meanwhile, the merge starts
    over from the new content instead of overwriting that change.
    """
    path = Path(os.path.realpath(path))
    for _ in range(5):
        raw, stat = _read(path)
        settings = parse_settings(raw, path) if raw is not None else {}
        check_hooks_shape(settings, path, check_events)
        new = transform(settings)
        if raw is not None and new == settings:
            return Change(path=path, changed=False)
        if raw is None and not create:
            return Change(path=path, changed=False)
        data = render(new, raw)
        if raw is None:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        again, _ = _read(path)
        if again != raw:
            continue
        backup = None
        if raw is not None and stat is not None:
            mode = stat.st_mode & 0o7777
            backup = write_backup(path, raw, mode)
            write_atomic(path, data, mode, (stat.st_uid, stat.st_gid))
        else:
            # Private by default: settings can hold env secrets.
            write_atomic(path, data, 0o600)
        return Change(path=path, changed=True, created=raw is None, backup=backup)
    raise SettingsFileError(f"{path} kept changing while ccrl tried to update it; try again.")


def install(path: Path, command: str) -> Change:
    """Register ``command`` as ccrl's hook for every event in the settings file ``path``."""
    return update_settings_file(path, lambda s: with_ccrl_hooks(s, command), create=True, check_events=HOOK_EVENTS)


def uninstall(path: Path) -> Change:
    """Remove ccrl's hook entries (only those) from the settings file ``path``."""
    return update_settings_file(path, without_ccrl_hooks, create=False, check_events=())


# ---------------------------------------------------------------------------------------------
# Status


@dataclass
class Interpreter:
    path: str | None
    exists: bool


@dataclass
class ScopeStatus:
    """Whether ccrl's hook is installed in one settings file, and whether it can still run."""

    scope: str
    path: str
    exists: bool
    installed: bool = False
    events: list[str] = field(default_factory=list)
    missing_events: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    interpreters: list[Interpreter] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)
    runnable: bool = False
    up_to_date: bool = False
    hooks_disabled: bool = False
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def scope_status(scope: str, path: Path, expected_command: str | None = None) -> ScopeStatus:
    """Inspect ``path`` without changing it. ``installed`` means every event has ccrl's hook;
    ``runnable`` that every interpreter (and hook script) those commands name exists;
    ``missing_files`` lists the ones that do not; ``up_to_date`` that every
    entry equals ``expected_command`` (today's command for this CCRL_HOME and interpreter)."""
    status = ScopeStatus(scope=scope, path=str(path), exists=path.exists())
    try:
        raw, _ = _read(path)
        settings = parse_settings(raw, path) if raw is not None else {}
    except SettingsFileError as exc:
        status.error = str(exc)
        return status
    found = ccrl_commands(settings)
    status.events = [event for event in HOOK_EVENTS if event in found]
    status.missing_events = [event for event in HOOK_EVENTS if event not in found]
    status.installed = not status.missing_events
    status.commands = sorted({cmd for cmds in found.values() for cmd in cmds})
    programs = sorted({command_program(cmd) or "" for cmd in status.commands})
    status.interpreters = [Interpreter(path=p or None, exists=program_exists(p)) for p in programs]
    scripts = sorted({script for cmd in status.commands if (script := hook_script(cmd))})
    status.missing_files = [i.path or "" for i in status.interpreters if not i.exists]
    status.missing_files += [script for script in scripts if not os.path.isfile(script)]
    status.runnable = bool(status.commands) and not status.missing_files
    status.up_to_date = (
        status.installed
        and expected_command is not None
        and all(cmds == [expected_command] for cmds in found.values())
    )
    status.hooks_disabled = settings.get("disableAllHooks") is True
    return status
