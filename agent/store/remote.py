"""Whether the store is a database server, and whether an error means it could not be reached.

Its own module because the scheduler, the forwarder, the trainer lock, purges and store copies
all ask, and none of them should import another for it.
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from ccrl.agent.core.config import Settings


def is_remote(settings: Settings) -> bool:
    """True when the store is a database server rather than a local SQLite file."""
    return not settings.db_url.startswith("sqlite")


def unreachable(exc: BaseException) -> bool:
    """True for a failure to reach or keep a connection to the store (server down, network
    gone, connection cut mid-transaction), as opposed to a bug or a rejected row."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    return isinstance(exc, DBAPIError) and bool(getattr(exc, "connection_invalidated", False))
