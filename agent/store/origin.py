"""Who and which machine captured data come from, for a store a team shares.

The member is the user name (``CCRL_MEMBER`` overrides the login name: the same person on
several machines, or a login name that differs from the one the team knows); the machine is
the host name (``CCRL_HOSTNAME`` overrides it). Read on every call, never cached.
"""

from __future__ import annotations

import getpass
import os
import socket


def member() -> str:
    """This member's name."""
    explicit = os.environ.get("CCRL_MEMBER", "").strip()
    if explicit:
        return explicit
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, no USER/LOGNAME: the uid says who
        return f"uid-{os.getuid()}"


def hostname() -> str:
    """This machine's name."""
    return os.environ.get("CCRL_HOSTNAME", "").strip() or socket.gethostname() or "localhost"


def stamp() -> dict[str, str]:
    """The origin columns of a captured row (``user_name``, ``hostname``)."""
    return {"user_name": member(), "hostname": hostname()}
