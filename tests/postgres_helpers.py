"""A real PostgreSQL server for the tests: ``initdb`` into a fresh directory, ``postgres`` on a
free local TCP port, trust authentication for one superuser (``ccrl``), stopped at the end.

Found on ``PATH`` (``postgres``, ``initdb``) or in Debian's ``/usr/lib/postgresql/<N>/bin``
(``.ci/run`` installs Debian's postgresql when neither is there). PostgreSQL refuses to run as
root, so under root the server runs as the ``postgres`` user when it exists, else ``nobody``;
its directory is created outside pytest's private temporary folders (0700, root's) so that
user can reach it.

Each test gets a database of its own (:meth:`PostgresServer.create_database`), so tests never
see each other's rows; the server itself is started once per session.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

SUPERUSER = "ccrl"
ROOT_PREFIX = "ccrl-pg-"


def find_bin_dir() -> Path | None:
    """The directory holding ``postgres``, ``initdb`` and ``pg_ctl``, or None."""
    on_path = shutil.which("postgres"), shutil.which("initdb"), shutil.which("pg_ctl")
    if all(on_path):
        return Path(on_path[0]).parent  # type: ignore[arg-type]

    def version(path: str) -> tuple[int, ...]:
        try:
            return tuple(int(p) for p in Path(path).parent.name.split("."))
        except ValueError:
            return (0,)

    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if all(os.access(os.path.join(candidate, b), os.X_OK) for b in ("postgres", "initdb", "pg_ctl")):
            return Path(candidate)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_orphans(bin_dir: Path) -> None:
    """Stop and remove the servers of test runs that were killed before their cleanup ran
    (their owner.pid names a process that is gone)."""
    for root in glob.glob(os.path.join(tempfile.gettempdir(), ROOT_PREFIX + "*")):
        try:
            owner = int(Path(root, "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if _alive(owner):
            continue
        data = Path(root) / "data"
        if (data / "postmaster.pid").exists():
            subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           cwd=root, user=_run_as(), capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> str | None:
    """The unprivileged user to run the server as when we are root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a postgres nor a nobody user exists to run PostgreSQL as")


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory; :meth:`stop` and :meth:`start` keep its
    data and port, so a test can take the server away and bring it back."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.user = _run_as()
        self.root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX))
        (self.root / "owner.pid").write_text(str(os.getpid()))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = _free_port()
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        os.chmod(self.root, 0o700)
        self._run([str(bin_dir / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "-A", "trust",
                   "-E", "UTF8", "--no-sync", "--locale=C"])

    def _run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
        # The server's user cannot read root's cwd: run from its own directory.
        result = subprocess.run(argv, cwd=self.root, user=self.user, capture_output=True, text=True,
                                env={**os.environ, "LC_ALL": "C"}, timeout=120)
        if check and result.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}{result.stderr}{log}")
        return result

    def start(self) -> None:
        # fsync off: only an OS crash could lose data, and tests never outlive the machine.
        # synchronous_commit stays on: a test that crashes the server (stop("immediate"))
        # must find every transaction that committed.
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off "
                   "-c full_page_writes=off -c max_connections=100")
        self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
                   "-t", "60", "-o", options, "start"])

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast`` ends open connections; ``immediate`` is a crash)."""
        self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"], check=False)

    def running(self) -> bool:
        return self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "status"], check=False).returncode == 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def wait_ready(self, timeout: float = 30.0) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres",
                                     connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def cleanup(self) -> None:
        if not self.root.exists():
            return
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# pytest fixtures (import them into a test module: ``from postgres_helpers import pg_server``)

import atexit  # noqa: E402

import pytest  # noqa: E402

_server: PostgresServer | None = None


def shared_server() -> PostgresServer:
    """The one server of this test process, started on first use (however many test modules
    import the fixtures), stopped and removed at exit. Parallel test workers (pytest-xdist)
    each start their own, in its own directory on its own port."""
    global _server
    if _server is None:
        bin_dir = find_bin_dir()
        if bin_dir is None:
            pytest.skip("no PostgreSQL server binaries (postgres, initdb, pg_ctl) on PATH or in "
                        "/usr/lib/postgresql/*/bin; .ci/run installs Debian's postgresql")
        stop_orphans(bin_dir)
        server = PostgresServer(bin_dir)
        atexit.register(server.cleanup)
        for attempt in range(3):
            try:
                server.start()
                break
            except RuntimeError:
                # Another process (a parallel test worker) took the free port first: another one.
                if attempt == 2:
                    raise
                server.port = _free_port()
        server.wait_ready()
        _server = server
    if not _server.running():  # a test stopped it and failed before starting it again
        _server.start()
        _server.wait_ready()
    return _server


@pytest.fixture(scope="session")
def pg_server() -> PostgresServer:
    return shared_server()


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> str:
    """A fresh, empty database on the shared server."""
    return pg_server.create_database()


@pytest.fixture
def pg_home(ccrl_home: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``ccrl_home`` whose store is a fresh PostgreSQL database (``CCRL_DATABASE_URL``)."""
    from ccrl.agent.core.config import reset_settings_cache
    from ccrl.agent.store.db import dispose_engines

    monkeypatch.setenv("CCRL_DATABASE_URL", pg_url)
    reset_settings_cache()
    dispose_engines()
    return ccrl_home
