"""The shell command Claude Code runs for ccrl's hook: built here, and recognised here.

Standard library only, but not on the hook's hot path (``capture.py`` run by path never
imports it). ccrl recognises an entry in a settings file as its own only when its command is
exactly one of the forms below, as ccrl renders them, so a user's hook is never taken for it.
"""

import os
import sys
from typing import NamedTuple

# The script Claude Code runs, next to this file.
CAPTURE_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "capture.py")
# How every version of hooks/capture.py starts; identifies ccrl's script behind a command of
# the legacy form (a user's own ``hooks/capture.py`` with the same shape does not start so).
CAPTURE_SCRIPT_MARKER = b'"""``ccrl-hook``'


class HookCommand(NamedTuple):
    """What a ccrl hook command runs. ``home`` is None for a legacy command without
    ``CCRL_HOME`` (the hook then used the data directory of Claude Code's environment)."""

    python: str
    script: str
    home: str | None
    legacy: bool


def render(python: str, script: str, home: str) -> str:
    """Today's form: a POSIX sh list that runs the hook only if its interpreter and script are
    still there, silences anything they print, drains stdin otherwise, and always exits 0.

    Exit 2 from a hook blocks Claude Code (every tool call, every prompt), and Python exits 2
    when its script is missing; so a moved or deleted installation must end here in silence.
    ``cat`` runs only when the hook did not (or failed): Claude Code then still finds a reader
    for the event it writes. ``CCRL_HOME`` is always set, so the hook never depends on the
    ``XDG_DATA_HOME`` or ``HOME`` Claude Code happens to run with.
    """
    from shlex import quote

    py, sc = quote(python), quote(script)
    return (f"[ -x {py} ] && [ -f {sc} ] && CCRL_HOME={quote(home)} {py} -S -E {sc} "
            ">/dev/null 2>&1 || cat >/dev/null 2>&1 || true")


def render_legacy(python: str, script: str, home: str | None) -> str:
    """The form ccrl wrote before (up to the release that added ``render``):
    ``[CCRL_HOME=<home> ]<python> -S -E <script>``. Kept only to recognise old entries."""
    from shlex import quote

    command = f"{quote(python)} -S -E {quote(script)}"
    return f"CCRL_HOME={quote(home)} {command}" if home is not None else command


def hook_command(home: str | None = None) -> str:
    """The exact command ``ccrl hooks install`` writes into Claude Code's settings: the absolute
    interpreter running ccrl (no venv on PATH needed), ``-S -E`` (no ``site``, no ``PYTHON*``
    variables: fastest start, nothing can shadow a module), this checkout's ``capture.py``, and
    ``CCRL_HOME`` pinned to ``home`` (default: the data directory in effect) as an absolute
    path."""
    if __package__:
        from . import paths
    else:  # pragma: no cover - imported as a top-level module next to paths.py
        import paths
    home = os.path.abspath(os.path.expanduser(home)) if home else paths.data_home()
    return render(os.path.abspath(sys.executable), CAPTURE_SCRIPT, home)


def is_capture_script(path: str, missing: bool) -> bool:
    """Whether the file at ``path`` starts like ccrl's capture.py; ``missing`` is the answer
    for a file that is gone. Behind a legacy command a gone script counts as ccrl's (a moved
    venv or checkout): only ccrl wrote that exact form, and a re-install must replace it."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(CAPTURE_SCRIPT_MARKER)) == CAPTURE_SCRIPT_MARKER
    except FileNotFoundError:
        return missing
    except OSError:
        return False


def parse(command: str) -> HookCommand | None:
    """The interpreter, script and home of a command ccrl wrote (today's form or the legacy
    one), else None. Matching is exact: the command must be what ``render`` (or
    ``render_legacy``) gives for the paths it names."""
    if not isinstance(command, str):
        return None
    from shlex import split

    try:
        tokens = split(command)
    except ValueError:
        return None
    if len(tokens) == 23 and tokens[0] == "[" and tokens[10].startswith("CCRL_HOME="):
        python, script, home = tokens[2], tokens[7], tokens[10][len("CCRL_HOME="):]
        if render(python, script, home) == command:
            return HookCommand(python, script, home, legacy=False)
        return None
    home = None
    if tokens and tokens[0].startswith("CCRL_HOME="):
        home = tokens.pop(0)[len("CCRL_HOME="):]
    if len(tokens) != 4 or tokens[1:3] != ["-S", "-E"]:
        return None
    python, script = tokens[0], tokens[3]
    if not (os.path.isabs(python) and os.path.basename(python).startswith("python")):
        return None
    if not (os.path.isabs(script) and script.endswith("/hooks/capture.py")):
        return None
    if home is not None and not os.path.isabs(home):
        return None
    if render_legacy(python, script, home) != command or not is_capture_script(script, missing=True):
        return None
    return HookCommand(python, script, home, legacy=True)


def is_ccrl_command(command: str) -> bool:
    """True when ``command`` is one ccrl wrote (see ``parse``)."""
    return parse(command) is not None
