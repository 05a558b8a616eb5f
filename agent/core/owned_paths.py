"""Which files ccrl may delete: only those inside a folder it owns (``CCRL_HOME/models``, ...),
judged on the real path (symlinks followed, ``..`` resolved). A path the database names
elsewhere (a row edited by hand, a store copied from another machine, a symlink out of the
folder) is never deleted: the caller reports it and leaves it alone."""

from __future__ import annotations

from pathlib import Path


def within(path: Path, root: Path) -> bool:
    """Whether ``path``, resolved, is inside ``root``, resolved."""
    return path.resolve().is_relative_to(root.resolve())


def remove_owned_file(path: Path, root: Path) -> bool:
    """Delete the file ``path`` when it, resolved, is a file inside ``root`` (a symlink inside
    ``root`` to such a file goes with it). False, and nothing deleted, when it is anywhere else
    or not a file; a missing file counts as removed."""
    target = path.resolve()
    if not target.is_relative_to(root.resolve()):
        return False
    if target.exists() and not target.is_file():
        return False
    target.unlink(missing_ok=True)
    if path.is_symlink() and within(path.parent, root):
        path.unlink(missing_ok=True)
    return True
