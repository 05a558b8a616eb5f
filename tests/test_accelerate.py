"""Training across several processes with ``accelerate launch`` (``[train] accelerate_config``).

Unit tests: the config value (shipped name, user file, errors), the launch command, the QLoRA
loading settings per strategy, the rank read from the environment, the process-tree kill.

For real, on this CPU machine: the ``ddp`` config runs two CPU processes (torchrun + gloo); the
agent's child runner trains the tiny random Llama for two steps with them, and the run's metrics
show both ranks in one process group, with one adapter and one set of metrics written. A second
run is stopped from the agent's side while the ranks train: every rank checkpoints at the same
step, the step is ``interrupted``, and no process of the launch is left.
The GPU strategies (FSDP-QLoRA, DDP-QLoRA, ZeRO-3) are not run here: see
``scripts/gpu-accelerate-check.sh``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ccrl.trainers.distributed import LoadSettings, RankInfo, load_settings, rank_info
from ccrl.trainers.launch import (
    STRATEGIES,
    LaunchError,
    LaunchPlan,
    configs_dir,
    descendants,
    kill_tree,
    launch_command,
    read_config,
    resolve_launch,
)

REPO = Path(__file__).resolve().parent.parent

# --- the config value ---------------------------------------------------------------------------


def test_no_config_is_one_process_and_num_processes_alone_is_an_error():
    assert resolve_launch(None) is None and resolve_launch("  ") is None and resolve_launch(None, 1) is None
    with pytest.raises(LaunchError, match="train.num_processes needs train.accelerate_config"):
        resolve_launch(None, 2)


def test_shipped_configs_exist_install_and_carry_what_qlora_needs():
    assert set(STRATEGIES) == {"ddp", "fsdp", "zero3"}
    types = {name: read_config(configs_dir() / file)["distributed_type"] for name, file in STRATEGIES.items()}
    assert types == {"ddp": "MULTI_GPU", "fsdp": "FSDP", "zero3": "DEEPSPEED"}
    fsdp = read_config(configs_dir() / STRATEGIES["fsdp"])["fsdp_config"]
    # PEFT's FSDP-QLoRA guide: no original params (memory), rank 0 loads and broadcasts.
    assert fsdp["fsdp_use_orig_params"] is False and fsdp["fsdp_cpu_ram_efficient_loading"] is True
    assert fsdp["fsdp_sync_module_states"] is True
    # A full state dict: every checkpoint holds an ordinary adapter file that resuming looks for.
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert read_config(configs_dir() / STRATEGIES["zero3"])["deepspeed_config"]["zero_stage"] == 3
    for file in STRATEGIES.values():  # ccrl passes --num_processes; a fixed 8 would be wrong on most machines
        assert "num_processes" not in read_config(configs_dir() / file)
    # Installed as package data (tests/test_wheel.py checks the built wheel holds them).
    import tomllib

    setuptools_table = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "*.yaml" in setuptools_table["package-data"]["ccrl.trainers.accelerate_configs"]


def test_names_resolve_to_the_shipped_files_with_one_process_per_gpu():
    plan = resolve_launch("ddp", gpus=4)
    assert plan.config_file == configs_dir() / "ddp.yaml" and plan.num_processes == 4
    assert plan.distributed_type == "MULTI_GPU" and plan.main_process_port is not None
    assert resolve_launch("fsdp", 2, gpus=4).num_processes == 2
    with pytest.raises(LaunchError, match="5 training processes asked for .* only 4 CUDA GPU"):
        resolve_launch("ddp", 5, gpus=4)


def test_without_a_gpu_only_ddp_runs_and_needs_a_process_count():
    assert resolve_launch("ddp", 2, gpus=0).num_processes == 2
    with pytest.raises(LaunchError, match="no CUDA GPU is visible: set train.num_processes"):
        resolve_launch("ddp", gpus=0)
    with pytest.raises(LaunchError, match=r"'fsdp' \(FSDP\) needs CUDA GPUs"):
        resolve_launch("fsdp", 2, gpus=0)


def test_unknown_names_and_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(LaunchError, match=r"'dpp' is not a known name: use ddp, fsdp, zero3 or the path"):
        resolve_launch("dpp", gpus=2)
    with pytest.raises(LaunchError, match="is a file that does not exist"):
        resolve_launch(str(tmp_path / "nope.yaml"), gpus=2)
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(LaunchError, match="is not an accelerate config"):
        resolve_launch(str(bad), gpus=2)


def test_a_user_config_keeps_its_own_process_count_and_port(tmp_path):
    own = tmp_path / "mine.yaml"
    own.write_text("distributed_type: MULTI_GPU\nnum_processes: 3\nmain_process_port: 29999\n")
    plan = resolve_launch(str(own), gpus=8)
    assert (plan.num_processes, plan.main_process_port, plan.name) == (3, None, str(own))
    assert resolve_launch(str(own), 2, gpus=8).num_processes == 2  # train.num_processes wins
    with pytest.raises(LaunchError, match="3 training processes asked for"):
        resolve_launch(str(own), gpus=2)


def test_zero3_without_deepspeed_says_how_to_install_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    with pytest.raises(LaunchError, match="uses DeepSpeed, which is not installed: pip install deepspeed"):
        resolve_launch("zero3", gpus=2)


def test_the_launch_command_runs_the_trainer_module_under_accelerate():
    plan = LaunchPlan(configs_dir() / "ddp.yaml", "ddp", "MULTI_GPU", 2, 29601)
    cmd = launch_command(plan, "ccrl.trainers.sft", ["DATA", "OUT", "MODEL", "{}"])
    assert cmd == [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(configs_dir() / "ddp.yaml"),
                   "--num_processes", "2", "--main_process_port", "29601",
                   "-m", "ccrl.trainers.sft", "DATA", "OUT", "MODEL", "{}"]


def test_settings_take_the_launch_from_config_and_environment(ccrl_home, monkeypatch):
    from ccrl.agent.core.config import Settings

    assert (Settings().train.accelerate_config, Settings().train.num_processes) == (None, None)
    monkeypatch.setenv("CCRL_TRAIN__ACCELERATE_CONFIG", "fsdp")
    monkeypatch.setenv("CCRL_TRAIN__NUM_PROCESSES", "4")
    assert (Settings().train.accelerate_config, Settings().train.num_processes) == ("fsdp", 4)


def test_a_bad_launch_fails_before_a_run_is_recorded(ccrl_home, monkeypatch):
    from sqlmodel import select

    from ccrl.agent.core.config import Settings
    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import TrainingRun
    from ccrl.agent.training.training import TrainingError, run_training

    monkeypatch.setenv("CCRL_TRAIN__ACCELERATE_CONFIG", "ddq")
    with pytest.raises(TrainingError, match="'ddq' is not a known name"):
        run_training("sft", settings=Settings())
    with session_scope() as session:
        assert session.exec(select(TrainingRun)).all() == []


# --- inside the ranks ---------------------------------------------------------------------------


def test_rank_and_strategy_come_from_the_launchers_environment():
    assert rank_info({}) == RankInfo() and not RankInfo().launched and RankInfo().is_main
    base = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"}
    assert rank_info(base) == RankInfo(3, 1, 4, "ddp")
    assert rank_info({**base, "ACCELERATE_USE_FSDP": "true"}).strategy == "fsdp"
    assert rank_info({**base, "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}).strategy == "zero3"
    assert not rank_info(base).is_main


def test_qlora_loading_settings_per_strategy():
    import torch

    bf16 = torch.bfloat16
    # One process / DDP: a whole copy per GPU, pinned to this rank's device; PEFT's k-bit prep.
    assert load_settings(None, four_bit=True, compute_dtype=bf16) == LoadSettings({"": 0}, None, bf16, True)
    assert load_settings("ddp", four_bit=True, compute_dtype=bf16, local_rank=3) == LoadSettings({"": 3}, None, bf16, True)
    assert load_settings("ddp", four_bit=False, compute_dtype=bf16, local_rank=1).device_map == {"": 1}
    assert load_settings("zero2", four_bit=True, compute_dtype=bf16, local_rank=1).device_map == {"": 1}
    # FSDP and ZeRO-3 shard: no device map, 4-bit packed in the compute dtype, no fp32 upcast.
    for strategy in ("fsdp", "zero3"):
        assert load_settings(strategy, four_bit=True, compute_dtype=bf16, local_rank=1) == LoadSettings(None, bf16, bf16, False)
        assert load_settings(strategy, four_bit=False, compute_dtype=bf16) == LoadSettings(None)


# --- processes ----------------------------------------------------------------------------------


def test_kill_tree_reaches_processes_in_sessions_of_their_own(tmp_path):
    # Like torchrun's ranks: the grandchild starts a new session, out of reach of killpg.
    script = ("import subprocess, sys, time; "
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True); "
              "print(p.pid, flush=True); time.sleep(120)")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    grandchild = int(parent.stdout.readline())
    assert grandchild in descendants(parent.pid)
    kill_tree(parent.pid)
    parent.wait(timeout=10)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{grandchild}").exists() and time.monotonic() < deadline:
        # A zombie of a dead parent is reaped by init; its state says so.
        if Path(f"/proc/{grandchild}/stat").read_text().split(") ")[1].startswith("Z"):
            break
        time.sleep(0.1)
    stat = Path(f"/proc/{grandchild}/stat")
    assert not stat.exists() or stat.read_text().split(") ")[1].startswith("Z")


# --- for real: two CPU processes through the agent's child runner --------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from ccrl.trainers.base_models import build_tiny_llama

    from conftest import embedded_tokenizer_dir

    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny", embedded_tokenizer_dir())


def _ddp_cycle(monkeypatch, tiny_model: Path, **env: str) -> tuple[object, int]:
    """A store with a dataset version and a cycle at its SFT step, settings for a 2-process
    CPU DDP run of the tiny model."""
    from ccrl.agent.core.config import Settings, reset_settings_cache
    from ccrl.agent.daemon.cycle import plan_steps
    from ccrl.agent.datasets.datasets import build_dataset
    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import Cycle

    from agent_helpers import add_usable_traces

    values = {"CCRL_TRAIN__ACCELERATE_CONFIG": "ddp", "CCRL_TRAIN__NUM_PROCESSES": "2",
              "CCRL_TRAIN__BASE_MODEL": str(tiny_model), "CCRL_TRAIN__MAX_STEPS": "2",
              "CCRL_TRAIN__BATCH_SIZE": "1", "CCRL_TRAIN__GRADIENT_ACCUMULATION_STEPS": "1",
              "CCRL_TRAIN__MAX_LENGTH": "512", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **env}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    reset_settings_cache()
    settings = Settings()
    add_usable_traces(settings, 12)
    version_id = build_dataset(settings).id
    with session_scope(settings) as db:
        cycle = Cycle(number=1, status="running", steps=plan_steps(1, settings.agent), step="sft",
                      dataset_version_id=version_id)
        db.add(cycle)
        db.flush()
        return settings, cycle.id


def _pids_running(module: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                state = Path(f"/proc/{entry}/stat").read_text().split(") ")[1][0]
            except OSError:
                continue
            if module in cmdline and state != "Z":
                found.append(int(entry))
    return found


def _in_this_home(pids: list[int], home: Path) -> list[int]:
    return [p for p in pids if str(home) in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")]


@pytest.mark.slow
def test_two_process_ddp_sft_through_the_child_runner(ccrl_home, monkeypatch, tiny_model):
    from ccrl.agent.daemon.child import ChildRunner
    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import TrainingRun

    settings, cycle_id = _ddp_cycle(monkeypatch, tiny_model)
    progress: list[dict] = []
    outcome = ChildRunner(settings.home, threading.Event(), stop_timeout=30, on_progress=progress.append).run("sft", cycle_id)
    assert outcome.status == "done", outcome.error
    with session_scope(settings) as db:
        run = db.get(TrainingRun, outcome.result["run_id"])
        status, metrics, output_dir = run.status, run.metrics, Path(run.output_dir)
    assert status == "completed"
    # Both ranks were one process group (gloo on the CPU) and trained the same two steps.
    assert (metrics["world_size"], metrics["distributed"], metrics["distributed_type"]) == (2, "ddp", "MULTI_CPU")
    assert (metrics["global_step"], metrics["max_steps"]) == (2, 2)
    assert metrics["eval_loss_before"] > 0 and metrics["eval_loss_after"] > 0
    # One adapter, one merged model and one metrics file, written by rank 0 alone.
    assert (output_dir / "final" / "adapter_model.safetensors").is_file()
    assert (output_dir / "merged" / "model.safetensors").is_file()
    assert json.loads((output_dir / "metrics.json").read_text())["metrics"]["world_size"] == 2
    assert not list(output_dir.glob(".final.tmp*"))
    assert any("SFT step 2/2" in p.get("message", "") for p in progress)  # rank 0's progress reached the agent
    assert _in_this_home(_pids_running("ccrl.trainers.sft"), ccrl_home) == []


@pytest.mark.slow
def test_a_stop_reaches_every_rank_which_checkpoint_at_the_same_step(ccrl_home, monkeypatch, tiny_model):
    from ccrl.agent.daemon.child import ChildRunner
    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import TrainingRun

    settings, cycle_id = _ddp_cycle(monkeypatch, tiny_model, CCRL_TRAIN__MAX_STEPS="200")
    stop = threading.Event()

    def on_progress(record: dict) -> None:
        if (record.get("step") or 0) >= 1:  # the ranks are training: ask the step to stop
            stop.set()

    outcome = ChildRunner(settings.home, stop, stop_timeout=60, on_progress=on_progress).run("sft", cycle_id)
    assert outcome.status == "interrupted", outcome.error
    with session_scope(settings) as db:
        run = db.exec(TrainingRun.__table__.select()).one()  # type: ignore[attr-defined]
        status, error, output_dir = run.status, run.error, Path(run.output_dir)
    assert status == "interrupted" and "stopped on request at step" in error
    checkpoints = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert checkpoints and (checkpoints[-1] / "adapter_model.safetensors").is_file()
    # Both ranks saved their RNG state at that step: they stopped together.
    assert {p.name for p in checkpoints[-1].glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    assert _in_this_home(_pids_running("ccrl.trainers.sft"), ccrl_home) == []


def test_ccrl_train_reports_a_bad_launch_and_rl_says_it_runs_in_one_process(ccrl_home, monkeypatch):
    from typer.testing import CliRunner

    from ccrl.agent.cli import app
    from ccrl.agent.core.config import Settings
    from ccrl.agent.training.training import TrainingError, run_training

    monkeypatch.setenv("CCRL_TRAIN__ACCELERATE_CONFIG", str(ccrl_home / "missing.yaml"))
    result = CliRunner().invoke(app, ["train", "--phase", "sft"])
    message = " ".join(result.stderr.split())  # rich wraps long lines
    assert result.exit_code == 1 and "is a file that does not exist: use ddp, fsdp, zero3" in message
    assert "Traceback" not in result.output

    monkeypatch.setenv("CCRL_TRAIN__ACCELERATE_CONFIG", "ddp")
    events: list[dict] = []
    with pytest.raises(TrainingError):  # no dataset yet; the notice comes first
        run_training("rl", settings=Settings(), emit=events.append)
    assert any("applies to SFT only" in e.get("message", "") for e in events)
