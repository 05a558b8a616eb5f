"""``ccrl-hook`` (``ccrl.hooks.capture``): the one command Claude Code runs for every hook event.

Contract with Claude Code (see ../shared/docs/claude-code.md): exit 0, print nothing, never
block, never lose an event. Plain stdout on UserPromptSubmit/SessionStart would be added to
Claude's context and exit 2 would block the session, so the hook never writes to stdout or
stderr and always leaves with status 0.

Hot path, standard library only: read stdin (bounded wait), honour opt-out, redact, INSERT
one row into the inbox in ``CCRL_HOME``; if that fails for any reason, write a spool file
(``inbox.py``). The drain (``ccrl.agent.capture.drain``) stores or quarantines both later.

Claude Code runs :func:`hook_command` (``command.py``): this file by path under
``python -S -E`` (the venv's ``site`` and .pth files cost more than the whole hook), so the
siblings are imported as top-level modules then. Python compiles a script run by path on
every run (no .pyc), so the code lives in ``handler.py`` (loaded from its cached .pyc) and
this file stays a few lines; benchmarks/hook_latency.py measures the difference.
"""

if __package__:
    from .command import hook_command
    from .handler import capture, ignored_path, main, opted_out, read_stdin
else:  # run by path (python -S -E .../hooks/capture.py): siblings are on sys.path[0]
    from handler import capture, ignored_path, main, opted_out, read_stdin

__all__ = ["capture", "hook_command", "ignored_path", "main", "opted_out", "read_stdin"]

if __name__ == "__main__":
    main()
