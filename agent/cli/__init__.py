"""The ``ccrl`` command. One module per command group; this file only assembles them.

Heavy libraries (torch, transformers, datasets) are imported inside the commands that need
them, never at module level, so ``ccrl --help`` and ``ccrl status`` stay fast.
"""

from __future__ import annotations

import typer

from ccrl.agent.cli import admin, capture, dataset, hooks_cmd, traces, train
from ccrl.agent.cli import agent_cmd, config_cmd, runs_cmd, service_cmd
from ccrl.agent.cli import demo_cmd, doctor_cmd
from ccrl.agent.cli import eval_cmd
from ccrl.agent.cli import models_cmd
from ccrl.agent.cli import store_cmd

app = typer.Typer(
    name="ccrl",
    help="Learn a local model that works the way Claude Code works, from your own sessions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module adds its own commands: top-level ones through register(app), groups as sub-apps.
capture.register(app)  # ingest, import
admin.register(app)  # status, purge
dataset.register(app)  # build-dataset
train.register(app)  # train
eval_cmd.register(app)  # eval, ab, ab report
models_cmd.register(app)  # export, deploy, rollback, models list|show
demo_cmd.register(app)  # demo
doctor_cmd.register(app)  # doctor
app.add_typer(hooks_cmd.app, name="hooks")
app.add_typer(traces.app, name="traces")
app.add_typer(config_cmd.app, name="config")
app.add_typer(agent_cmd.app, name="agent")
app.add_typer(service_cmd.app, name="service")
app.add_typer(runs_cmd.app, name="runs")
app.add_typer(store_cmd.app, name="store")


def main() -> None:
    from ccrl.trainers.library_noise import silence_library_noise

    silence_library_noise()
    app()
