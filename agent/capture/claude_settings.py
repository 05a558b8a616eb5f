"""ccrl's entries in Claude Code settings files: add, remove, inspect.

Claude Code reads hooks from ``~/.claude/settings.json`` (user), ``<project>/.claude/settings.json``
(project, shared) and ``<project>/.claude/settings.local.json`` (project, private). The shape is::

    {"hooks": {"PostToolUse": [{"matcher": "*", "hooks": [{"type": "command", "command": "…",
                                                            "timeout": 10}]}]}}

Everything else in those files belongs to the user (permissions, env, statusLine, their own
hooks, unknown keys) and must come out of an install or uninstall unchanged. So the merge works
on the parsed JSON (``settings_json``: numbers keep their text), touches only entries ccrl
wrote, and writes atomically (temp file in the same directory, fsync, rename) after keeping a
backup. A file that is not plain JSON, or whose ``hooks`` has a shape we do not understand, is
refused untouched: guessing there could drop a user's hooks.

ccrl's own entries are those whose command is exactly one ccrl writes or wrote
(``ccrl.hooks.command.parse``), for any interpreter, checkout or ``CCRL_HOME``: a re-install
after the virtual environment moved, or an upgrade from the legacy form, replaces the old
entry instead of adding one, and a user's command is never taken for ccrl's.
"""

from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from ccrl.agent.capture.settings_json import SettingsFileError, kind, parse_settings, render
from ccrl.hooks import command as hook_commands

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


def is_ccrl_command(command: str) -> bool:
    """True when ``command`` is exactly a command ccrl writes or wrote (see
    ``ccrl.hooks.command.parse``), whatever interpreter, checkout or CCRL_HOME it names."""
    return hook_commands.is_ccrl_command(command)


def is_ccrl_hook(hook: Any) -> bool:
    """True for a hook entry (one element of a group's ``hooks`` list) that is ccrl's."""
    return (
        isinstance(hook, dict)
        and hook.get("type", "command") == "command"
        and isinstance(hook.get("command"), str)
        and is_ccrl_command(hook["command"])
    )


def runs_ccrl_hook(command: str) -> bool:
    """Whether a command ccrl did not write still runs ccrl's capture hook: a hand-made entry
    (the ``ccrl-hook`` script, ``python -m ccrl.hooks.capture``, ccrl's capture.py by path).
    It is the user's and stays as it is; it is worth a word, as it captures every event again."""
    if is_ccrl_command(command):
        return False
    from shlex import split

    try:
        tokens = split(command)
    except ValueError:
        tokens = command.split()
    while tokens and ("=" in tokens[0] and not tokens[0].startswith("=") or tokens[0] in ("env", "exec")):
        tokens = tokens[1:]
    if not tokens:
        return False
    if os.path.basename(tokens[0]) == "ccrl-hook":
        return True
    if not os.path.basename(tokens[0]).startswith("python"):
        return False
    if "ccrl.hooks.capture" in tokens[1:] and tokens[tokens.index("ccrl.hooks.capture") - 1] == "-m":
        return True
    return any(hook_commands.is_capture_script(token, missing=False) for token in tokens[1:] if os.path.basename(token) == "capture.py")


def hand_made_ccrl_entries(settings: dict[str, Any]) -> list[str]:
    """The commands in ``settings`` that run ccrl's hook without being ccrl's (``runs_ccrl_hook``)."""
    found = []
    hooks = settings.get("hooks")
    for groups in hooks.values() if isinstance(hooks, dict) else ():
        for group in groups if isinstance(groups, list) else ():
            for hook in group.get("hooks", ()) if isinstance(group, dict) else ():
                command = hook.get("command") if isinstance(hook, dict) else None
                if isinstance(command, str) and runs_ccrl_hook(command):
                    found.append(command)
    return list(dict.fromkeys(found))


def command_program(command: str) -> str | None:
    """The interpreter a ccrl hook command runs (None for any other command)."""
    parsed = hook_commands.parse(command)
    return parsed.python if parsed else None


def program_exists(program: str | None) -> bool:
    """True when ``program`` is an executable file."""
    return bool(program) and os.path.isfile(program) and os.access(program, os.X_OK)


# ---------------------------------------------------------------------------------------------
# Reading and checking


def check_hooks_shape(settings: dict[str, Any], path: Path) -> None:
    """Raise SettingsFileError unless ``hooks`` has the documented shape in every event:
    ``{event: [{"matcher"?: …, "hooks": [{…}, …]}, …]}``. Unknown keys at any level are fine
    (kept as they are); a ``null`` where a container belongs is not (Claude Code rejects it)."""
    if "hooks" not in settings:
        return
    hooks = settings["hooks"]
    if not isinstance(hooks, dict):
        raise SettingsFileError(f'{path}: "hooks" is {kind(hooks)}, expected an object. Nothing was changed.')
    for event, groups in hooks.items():
        where = f'{path}: hooks.{event}'
        if not isinstance(groups, list):
            raise SettingsFileError(f"{where} is {kind(groups)}, expected a list. Nothing was changed.")
        for i, group in enumerate(groups):
            if not isinstance(group, dict):
                raise SettingsFileError(f"{where}[{i}] is {kind(group)}, expected an object. Nothing was changed.")
            inner = group.get("hooks")
            if not isinstance(inner, list):
                raise SettingsFileError(
                    f'{where}[{i}].hooks is {kind(inner) if "hooks" in group else "missing"}, '
                    "expected a list. Nothing was changed."
                )
            for j, hook in enumerate(inner):
                if not isinstance(hook, dict):
                    raise SettingsFileError(
                        f"{where}[{i}].hooks[{j}] is {kind(hook)}, expected an object. Nothing was changed."
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

    An existing ccrl entry in a group with ccrl's matcher gets the new command where it stands
    (a re-install changes one string, the entry's other keys stay); ccrl entries anywhere else are removed; groups that only
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
                    # Only the command changes: a timeout (or any key) the user set stays.
                    after.append({**hook, "command": command})
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
    # Entries of the user's that run ccrl's hook too (kept; see hand_made_ccrl_entries).
    hand_made: list[str] = field(default_factory=list)


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
        check_hooks_shape(settings, path)
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
    if not is_ccrl_command(command):
        # It could never be recognised again: a second install would add it twice.
        raise ValueError(f"not a command ccrl writes: {command!r} (use ccrl.hooks.command.hook_command)")
    change = update_settings_file(path, lambda s: with_ccrl_hooks(s, command), create=True)
    raw, _ = _read(change.path)
    change.hand_made = hand_made_ccrl_entries(parse_settings(raw, change.path)) if raw is not None else []
    return change


def uninstall(path: Path) -> Change:
    """Remove ccrl's hook entries (only those) from the settings file ``path``."""
    return update_settings_file(path, without_ccrl_hooks, create=False)


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
    # Where those commands send events: their CCRL_HOME; None for a legacy command without one
    # (the hook then used whatever data directory Claude Code's environment gave it).
    homes: list[str | None] = field(default_factory=list)
    # Some entries still have the legacy form, which blocks Claude Code once its files are gone.
    legacy: bool = False
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
        check_hooks_shape(settings, path)
    except SettingsFileError as exc:
        status.error = str(exc)
        return status
    found = ccrl_commands(settings)
    status.events = [event for event in HOOK_EVENTS if event in found]
    status.missing_events = [event for event in HOOK_EVENTS if event not in found]
    status.installed = not status.missing_events
    status.commands = sorted({cmd for cmds in found.values() for cmd in cmds})
    parsed = [p for cmd in status.commands if (p := hook_commands.parse(cmd))]
    programs = sorted({p.python for p in parsed})
    status.interpreters = [Interpreter(path=p, exists=program_exists(p)) for p in programs]
    scripts = sorted({p.script for p in parsed})
    status.homes = sorted({p.home for p in parsed}, key=lambda home: (home is not None, home or ""))
    status.legacy = any(p.legacy for p in parsed)
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
