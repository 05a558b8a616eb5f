"""The manual commands that number datasets, runs and cycles (`ccrl build-dataset`, `ccrl train`,
`ccrl agent once`) take a shared store's trainer lock, on a real PostgreSQL server: while a
training agent holds it they refuse, naming the store (without its password), instead of racing
it; once it is free they take it for their run and give it back after."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from postgres_helpers import pg_home, pg_server, pg_url  # noqa: F401  (fixtures)

runner = CliRunner()

COMMANDS = [
    ["build-dataset"],
    ["train", "--phase", "sft"],
    ["agent", "once"],
]


def _running_trainer():
    """A TrainerLock held as a running training agent holds it (its own connection)."""
    from ccrl.agent.core.config import get_settings
    from ccrl.agent.training.trainer_lock import TrainerLock

    lock = TrainerLock(get_settings())
    assert lock.hold()
    return lock


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a))
def test_manual_command_refuses_while_a_training_agent_holds_the_lock(pg_home, argv):
    from ccrl.agent.cli import app

    trainer = _running_trainer()
    try:
        result = runner.invoke(app, argv)
    finally:
        trainer.release()
    assert result.exit_code == 1, result.output
    message = " ".join(result.stderr.split())  # rich wraps long lines
    assert "another training agent holds the lock on postgresql+psycopg://ccrl@127.0.0.1:" in message
    assert "stop it or wait" in message


def test_a_free_lock_is_taken_for_the_command_and_given_back(pg_home):
    from ccrl.agent.cli import app
    from ccrl.agent.core.config import get_settings
    from ccrl.agent.training.trainer_lock import TrainerLock, TrainerLockBusy, manual_trainer_lock

    settings = get_settings()
    with manual_trainer_lock(settings) as held:
        assert held is not None and held.held
        other = TrainerLock(settings)
        assert other.hold() is False  # a training agent starting now only captures
        with pytest.raises(TrainerLockBusy, match="stop it or wait"):
            with manual_trainer_lock(settings):
                pass
    # An empty store: the build itself refuses (nothing to build), not the lock.
    result = runner.invoke(app, ["build-dataset"])
    assert "holds the lock" not in result.output + result.stderr
    agent = TrainerLock(settings)
    assert agent.hold() is True  # given back after the command
    agent.release()


def test_wait_polls_until_the_agent_lets_go(pg_home):
    import threading

    from ccrl.agent.core.config import get_settings
    from ccrl.agent.training.trainer_lock import manual_trainer_lock

    trainer = _running_trainer()
    releaser = threading.Timer(0.5, trainer.release)
    releaser.start()
    try:
        with manual_trainer_lock(get_settings(), wait=True, poll_s=0.1) as held:
            assert held is not None and held.held and not trainer.held
    finally:
        releaser.cancel()
        trainer.release()


def test_an_unreachable_store_is_named_without_its_password(ccrl_home, monkeypatch):
    from ccrl.agent.core.config import get_settings, reset_settings_cache
    from ccrl.agent.store.db import dispose_engines
    from ccrl.agent.training.trainer_lock import TrainerLockError, manual_trainer_lock

    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("CCRL_DATABASE_URL", f"postgresql+psycopg://ccrl:s3cret@127.0.0.1:{port}/ccrl")
    reset_settings_cache()
    dispose_engines()
    with pytest.raises(TrainerLockError) as caught:
        with manual_trainer_lock(get_settings()):
            pass
    assert f"cannot reach the store postgresql+psycopg://ccrl:***@127.0.0.1:{port}/ccrl" in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_a_local_sqlite_store_takes_no_lock(ccrl_home):
    from ccrl.agent.core.config import get_settings
    from ccrl.agent.training.trainer_lock import manual_trainer_lock

    with manual_trainer_lock(get_settings()) as held:
        assert held is None
