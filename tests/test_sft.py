"""SFT: real training steps on a tiny random Llama (SmolLM2's tokenizer), the assistant-only loss
mask checked token by token, resume after SIGKILL, stop on request, the agent's run records and
``ccrl train``.

Datasets here are built by hand in exactly the dataset builder's shape (``messages`` with
``tool_calls`` whose ``arguments`` are JSON strings, ``tool`` messages, a ``tools`` JSON-string
column, train/eval splits), written with ``save_to_disk`` like a dataset version.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import torch

from ccrl.trainers.base_models import build_tiny_llama, cpu_has_fast_bf16, mixed_precision_bf16
from ccrl.trainers.chat_templates import load_template, read_template_info
from ccrl.trainers.conversation import render_assistant_text
from ccrl.trainers.sft import (
    CPU_NOTICE,
    SFTError,
    SFTRunConfig,
    SFTStopped,
    build_trainer,
    last_complete_checkpoint,
    resolve_quant,
    run_dir_is_locked,
    train_sft,
)

from conftest import embedded_tokenizer_dir

torch.set_num_threads(1)  # the machine is shared: one core per test process
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _call(i: int, name: str, args: dict) -> dict:
    return {"type": "function", "id": f"toolu_{i}", "function": {"name": name, "arguments": json.dumps(args)}}


def conversation(i: int) -> dict:
    """One trajectory-format example: parallel calls, a call-only turn, tool results, an answer."""
    path = f"src/m{i % 5}.py"
    messages = [
        {"role": "system", "content": "You are a coding agent. Tools: Read, Grep, Edit."},
        {"role": "user", "content": f"Fix test {i}"},
        {"role": "assistant", "content": "First, read the file.",
         "tool_calls": [_call(1, "Read", {"file_path": path}), _call(2, "Grep", {"pattern": f"t{i}"})]},
        {"role": "tool", "tool_call_id": "toolu_1", "name": "Read", "content": f"x = {i}"},
        {"role": "tool", "tool_call_id": "toolu_2", "name": "Grep", "content": f"{path}:1"},
        {"role": "assistant", "tool_calls": [_call(3, "Edit", {"file_path": path, "new": str(i + 1)})]},
        {"role": "tool", "tool_call_id": "toolu_3", "name": "Edit", "content": "ok"},
        {"role": "assistant", "content": f"Fixed: x is {i + 1}."},
    ]
    tools = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}} for n in ("Read", "Grep", "Edit")]
    return {"messages": messages, "format": "trajectory", "trace_id": i, "tools": json.dumps(tools)}


def write_dataset(path: Path, n_train: int = 8, n_eval: int = 2) -> Path:
    """Train rows are traces 0..n_train-1, eval rows the traces after them (eval traces keep
    their ids when a later version adds train traces, as the builder's split guarantees)."""
    from datasets import Dataset, DatasetDict

    train = [conversation(i) for i in range(n_train)]
    evals = [conversation(1000 + i) for i in range(n_eval)]
    DatasetDict(train=Dataset.from_list(train), eval=Dataset.from_list(evals)).save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    return build_tiny_llama(root / "tiny", embedded_tokenizer_dir())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "v1")


def small(**overrides) -> SFTRunConfig:
    """Settings that keep a run to seconds: short sequences (no tool schemas in the prompt),
    no accumulation, no merge."""
    values = dict(max_length=256, use_tools_column=False, gradient_accumulation_steps=1,
                  per_device_eval_batch_size=2, merge=False, eval_each_epoch=False, save_steps=2, cpu_threads=1)
    values.update(overrides)
    return SFTRunConfig(**values)


# --- configuration ----------------------------------------------------------------------------


def test_defaults_follow_the_design_and_reject_unknown_settings():
    config = SFTRunConfig()
    assert (config.lora_r, config.lora_alpha, config.learning_rate, config.num_train_epochs) == (16, 32, 2e-4, 3.0)
    assert config.per_device_train_batch_size == 2 and config.gradient_accumulation_steps > 1
    assert set(config.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert config.gpu_max_length >= 4096 and config.cpu_max_length < config.gpu_max_length
    assert SFTRunConfig.from_dict(config.to_dict()) == config
    with pytest.raises(SFTError, match="unknown SFT setting.*lora_rank"):
        SFTRunConfig.from_dict({"lora_rank": 8})


def test_quantization_choice_per_machine():
    assert resolve_quant("auto", cuda=True) == (True, None)
    assert resolve_quant("auto", cuda=False) == (False, CPU_NOTICE)
    assert resolve_quant("none", cuda=True) == (False, None)
    assert resolve_quant("4bit", cuda=True) == (True, None)
    with pytest.raises(SFTError, match="--quant 4bit needs a CUDA GPU"):
        resolve_quant("4bit", cuda=False)
    with pytest.raises(SFTError, match="unknown quantization"):
        resolve_quant("8bit", cuda=False)


def test_cpu_precision_is_bf16_only_where_the_cpu_has_it_unless_told():
    assert mixed_precision_bf16(cuda=False, cpu_bf16=None) == cpu_has_fast_bf16()
    assert mixed_precision_bf16(cuda=False, cpu_bf16=True) is True
    assert mixed_precision_bf16(cuda=False, cpu_bf16=False) is False


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU precision setting")
@pytest.mark.parametrize("cpu_bf16", [False, True])
def test_both_cpu_precisions_train_and_are_recorded(dataset, tiny_model, tmp_path, cpu_bf16):
    result = train_sft(dataset, tmp_path / "run", str(tiny_model), small(max_steps=2, cpu_bf16=cpu_bf16, max_length=256),
                       emit=lambda event: None, progress_bar=False)
    m = result.metrics
    assert m["bf16"] is cpu_bf16 and m["global_step"] == 2
    # The adapter is trained and saved in full precision either way (bf16 is autocast only).
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "run" / "final" / "adapter_model.safetensors"))
    assert weights and all(t.dtype == torch.float32 for t in weights.values())
    assert m["eval_loss_after"] < m["eval_loss_before"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_explicit_4bit_without_cuda_fails_before_touching_anything(tmp_path, dataset, tiny_model):
    with pytest.raises(SFTError, match="needs a CUDA GPU"):
        train_sft(dataset, tmp_path / "out", str(tiny_model), small(quant="4bit"))
    assert not (tmp_path / "out").exists()


def test_bad_datasets_are_clear_errors(tmp_path, tiny_model):
    from datasets import Dataset, DatasetDict

    with pytest.raises(SFTError, match="cannot load the dataset"):
        train_sft(tmp_path / "missing", tmp_path / "o1", str(tiny_model), small())
    DatasetDict(train=Dataset.from_list([{"text": "hi"}])).save_to_disk(str(tmp_path / "plain"))
    with pytest.raises(SFTError, match="no `messages` column"):
        train_sft(tmp_path / "plain", tmp_path / "o2", str(tiny_model), small())
    empty = Dataset.from_list([conversation(0)]).filter(lambda _row: False)
    DatasetDict(train=empty).save_to_disk(str(tmp_path / "empty"))
    with pytest.raises(SFTError, match="empty"):
        train_sft(tmp_path / "empty", tmp_path / "o3", str(tiny_model), small())


def test_formats_select_rows_and_tools_stay_out_unless_asked(tmp_path):
    from datasets import Dataset, DatasetDict

    from ccrl.trainers.sft import _load_splits

    rows = [conversation(i) for i in range(4)]
    rows[1]["format"] = rows[3]["format"] = "workflow"
    DatasetDict(train=Dataset.from_list(rows), eval=Dataset.from_list(rows[:2])).save_to_disk(str(tmp_path / "d"))
    train, evals = _load_splits(tmp_path / "d", use_tools=False)
    assert (len(train), len(evals), train.column_names) == (4, 2, ["messages"])
    train, evals = _load_splits(tmp_path / "d", use_tools=True, formats=["workflow"])
    assert (len(train), len(evals), train.column_names) == (2, 1, ["messages", "tools"])
    DatasetDict(train=Dataset.from_list([{"messages": rows[0]["messages"]}])).save_to_disk(str(tmp_path / "plain"))
    with pytest.raises(SFTError, match="no `format` column"):
        _load_splits(tmp_path / "plain", use_tools=False, formats=["trajectory"])


# --- a real run -----------------------------------------------------------------------------------


def test_assistant_only_labels_token_by_token(dataset, tiny_model, tmp_path):
    """Every token's label, after TRL's preparation, is its id on the assistant's text and
    end-of-turn token and -100 everywhere else (system, user, tools, headers, tool results)."""
    from ccrl.trainers.sft import _load_splits

    train, evals = _load_splits(dataset, use_tools=True)
    trainer, resolved = build_trainer(train, evals, tmp_path / "out", str(tiny_model), small(max_length=2048),
                                      cuda=False, four_bit=False, progress_bar=False)
    assert resolved["template_family"] == "chatml"
    tok = trainer.processing_class
    head, end = "<|im_start|>assistant\n", "<|im_end|>"
    for n, example in enumerate(trainer.train_dataset):
        source = train[n]
        text = tok.apply_chat_template(source["messages"], tools=json.loads(source["tools"]), tokenize=False)
        encoded = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        assert example["input_ids"] == encoded["input_ids"]
        # Where each assistant message's text (and its end-of-turn token) sits in the rendered text.
        spans, cursor = [], 0
        for message in source["messages"]:
            if message["role"] != "assistant":
                continue
            expected = head + render_assistant_text(message) + end
            start = text.index(expected, cursor) + len(head)
            spans.append((start, start + len(expected) - len(head)))
            cursor = spans[-1][1]
        assert len(spans) == 3
        masked = 0
        for token_id, label, (a, b) in zip(example["input_ids"], example["labels"], encoded["offset_mapping"]):
            inside = any(s <= a and b <= e for s, e in spans)
            assert label == (token_id if inside else -100), (tok.decode([token_id]), a, b)
            masked += inside
        end_id = tok.convert_tokens_to_ids(end)
        # Three assistant turns, each closed by a trained end-of-turn token.
        assert sum(1 for t, lab in zip(example["input_ids"], example["labels"]) if t == end_id and lab == t) == 3
        assert 0 < masked < len(example["input_ids"])


def test_sft_run_writes_adapter_merged_model_template_and_curve(dataset, tiny_model, tmp_path):
    events = []
    out = tmp_path / "run"
    result = train_sft(dataset, out, str(tiny_model), small(max_steps=4, merge=True, eval_each_epoch=True, use_tools_column=True, max_length=384),
                       emit=events.append, progress_bar=False)
    m = result.metrics
    cuda = torch.cuda.is_available()  # on CUDA the same run is 4-bit QLoRA
    assert (m["global_step"], m["max_steps"], m["device"], m["quant"], m["max_length"]) == \
        (4, 4, "cuda" if cuda else "cpu", "4bit" if cuda else "none", 384)
    # 384 tokens with the tool schemas in the system turn: each conversation takes more than one
    # window, and every one of its 3 decisions is trained once.
    assert m["train_conversations"] == 8 and m["train_decisions"] == m["train_decisions_trained"] == 24
    assert m["train_examples"] > 8 and m["eval_examples"] >= 2
    assert m["windows"]["train"]["share_trained"] == 1.0 and m["windows"]["eval"]["decisions_trained"] == 6
    assert m["train_tokens"] > 0 and m["tokens_per_second"] > 0 and m["peak_memory_bytes"] > 0
    assert m["bf16"] is mixed_precision_bf16(cuda, None)  # bf16 autocast where the hardware has it
    assert m["eval_loss_before"] > 0 and m["eval_loss_after"] > 0
    assert ({"event": "notice", "message": CPU_NOTICE} in events) is not cuda
    progress = [e for e in events if e["event"] == "train.progress" and "loss" in e]
    assert [e["step"] for e in progress] == [1, 2, 3, 4] and all(e["max_steps"] == 4 for e in progress)
    # The adapter, with the training template saved beside it.
    final = out / "final"
    assert (final / "adapter_model.safetensors").is_file()
    assert json.loads((final / "adapter_config.json").read_text())["r"] == 16
    assert (final / "chat_template.jinja").read_text() == load_template("chatml")
    assert read_template_info(final)["end_of_turn"] == "<|im_end|>"
    assert read_template_info(final)["tools_in_training"] is True  # this run rendered the tool schemas
    # The merged model for export carries the same template.
    merged = out / "merged"
    assert (merged / "model.safetensors").is_file() and (merged / "chat_template.jinja").read_text() == load_template("chatml")
    assert read_template_info(merged)["name"] == "chatml"
    # Checkpoints, loss curve (train points per step, eval before and after), metrics file.
    assert last_complete_checkpoint(out).name == "checkpoint-4"
    curve = json.loads((out / "loss_curve.json").read_text())
    assert [p["step"] for p in curve["train"]] == [1, 2, 3, 4]
    assert curve["eval"][0] == {"step": 0, "loss": m["eval_loss_before"]} and curve["eval"][-1]["loss"] == m["eval_loss_after"]
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "metrics.json").read_text())["metrics"]["global_step"] == 4
    # Private by default.
    assert (out.stat().st_mode & 0o777) == 0o700
    assert ((final / "adapter_model.safetensors").stat().st_mode & 0o777) == 0o600
    assert not run_dir_is_locked(out)


def test_other_inputs_in_the_same_folder_are_refused(dataset, tiny_model, tmp_path):
    out = tmp_path / "run"
    train_sft(dataset, out, str(tiny_model), small(max_steps=1), progress_bar=False, emit=lambda e: None)
    with pytest.raises(SFTError, match="other inputs"):
        train_sft(dataset, out, str(tiny_model), small(max_steps=1, learning_rate=1e-3), progress_bar=False, emit=lambda e: None)


def test_stop_on_request_checkpoints_and_the_next_start_resumes(dataset, tiny_model, tmp_path):
    out = tmp_path / "run"
    calls = {"n": 0}

    def stop_after_three_steps() -> bool:
        calls["n"] += 1
        return calls["n"] >= 3

    # 512 tokens hold each conversation's 3 decisions in one window: 8 examples / batch 2 = 4 steps
    config = small(num_train_epochs=1.0, save_steps=100, max_length=512)
    with pytest.raises(SFTStopped, match="step 3 of 4"):
        train_sft(dataset, out, str(tiny_model), config, progress_bar=False, emit=lambda e: None,
                  should_stop=stop_after_three_steps)
    assert last_complete_checkpoint(out).name == "checkpoint-3" and not (out / "final").exists()
    result = train_sft(dataset, out, str(tiny_model), config, progress_bar=False, emit=lambda e: None)
    assert (result.metrics["resumed_from"], result.metrics["global_step"], result.metrics["max_steps"]) == ("checkpoint-3", 4, 4)


def _has_checkpoint(out: Path) -> bool:
    for state in out.glob("checkpoint-*/trainer_state.json"):
        try:
            json.loads(state.read_text())
            return True
        except ValueError:
            continue
    return False


def test_resume_after_sigkill_reaches_the_same_total_steps(dataset, tiny_model, tmp_path):
    """A training process killed with SIGKILL after a checkpoint continues from it on the next
    start and ends at the step count an uninterrupted run would have (2 epochs x 4 steps)."""
    out = tmp_path / "run"
    config = json.dumps(small(num_train_epochs=2.0, save_steps=2, max_length=512).to_dict())
    cmd = [sys.executable, "-m", "ccrl.trainers.sft", str(dataset), str(out), str(tiny_model), config]
    proc = subprocess.Popen(cmd, env=SUBPROCESS_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600  # an upper bound for a slow, busy machine, not a timing
    try:
        while not _has_checkpoint(out):  # read-only polling: never disturb the writer
            assert proc.poll() is None, f"trainer ended before a checkpoint: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "no checkpoint within 600 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    killed_at = int(last_complete_checkpoint(out).name.split("-")[1])
    assert killed_at < 8 and not (out / "final").exists()
    assert not run_dir_is_locked(out)  # the kernel released the dead process's lock

    # Restart (in this process: the kill above was real; a second interpreter start only costs time).
    events = []
    result = train_sft(dataset, out, str(tiny_model), SFTRunConfig.from_dict(json.loads(config)),
                       emit=events.append, progress_bar=False)
    metrics = result.metrics
    assert metrics["resumed_from"] == f"checkpoint-{killed_at}"
    assert (metrics["global_step"], metrics["max_steps"]) == (8, 8)
    assert {"event": "notice", "message": f"Resuming from checkpoint-{killed_at}."} in events
    state = json.loads((last_complete_checkpoint(out) / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    # Each step logged once across both processes (the resumed one picks up after the checkpoint).
    steps = [p["step"] for p in json.loads((out / "loss_curve.json").read_text())["train"]]
    assert steps == list(range(1, 9))


# --- the agent's runs and `ccrl train` -----------------------------------------------------------


@pytest.fixture(autouse=False)
def small_batches(monkeypatch):
    """Agent runs read [train] settings: one sequence per forward pass keeps them short."""
    from ccrl.agent.core.config import reset_settings_cache

    monkeypatch.setenv("CCRL_TRAIN__BATCH_SIZE", "1")
    reset_settings_cache()


def _add_version(number: int, path: Path) -> int:
    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import DatasetVersion

    with session_scope() as session:
        version = DatasetVersion(number=number, path=str(path))
        session.add(version)
        session.flush()
        return version.id


def test_agent_records_a_completed_run(ccrl_home, small_batches, dataset, tiny_model):
    from ccrl.agent.core.config import get_settings
    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import TrainingRun
    from ccrl.agent.training.training import run_training

    version_id = _add_version(1, dataset)
    with session_scope() as session:  # an interrupted run saved with a setting this version lacks
        stale = TrainingRun(phase="sft", status="interrupted", output_dir=str(ccrl_home / "gone"),
                            config={"sft": {"lora_rank": 8}, "dataset_path": str(dataset), "model_source": "x"})
        session.add(stale)
        session.flush()
        stale_id = stale.id
    events = []
    run = run_training("sft", base_model=str(tiny_model), max_steps=1, emit=events.append, progress_bar=False)
    assert run.id != stale_id
    with session_scope() as session:
        old = session.get(TrainingRun, stale_id)
        assert old.status == "failed" and "cannot resume" in old.error and "lora_rank" in old.error
    assert run.status == "completed" and run.phase == "sft" and run.dataset_version_id == version_id
    assert Path(run.output_dir) == ccrl_home / "models" / "sft" / f"run-{run.id}"
    assert ((ccrl_home / "models" / "sft").stat().st_mode & 0o777) == 0o700
    assert run.base_model == str(tiny_model) and run.parent_run_id is None
    assert run.config["sft"]["lora_r"] == get_settings().train.lora_r and run.config["sft"]["max_steps"] == 1
    assert run.config["start"]["reason"].startswith("base model given explicitly")
    m = run.metrics
    assert m["global_step"] == 1 and m["eval_loss_before"] > 0 and m["eval_loss_after"] > 0
    assert Path(m["artifacts"]["merged"], "model.safetensors").is_file()
    assert Path(m["artifacts"]["loss_curve_png"]).is_file()
    start = next(e for e in events if e["event"] == "start")
    assert (start["run_id"], start["base_model"], start["dataset_version"]) == (run.id, str(tiny_model), 1)
    with session_scope() as session:
        stored = session.get(TrainingRun, run.id)
        assert stored.status == "completed" and stored.finished_at is not None and stored.metrics["global_step"] == 1


def test_agent_resumes_an_interrupted_run(ccrl_home, small_batches, dataset, tiny_model):
    from ccrl.agent.core.config import get_settings
    from ccrl.agent.training.training import TrainingStopped, resumable_run, run_training

    _add_version(1, dataset)
    with pytest.raises(TrainingStopped, match="step 1 of 2"):
        run_training("sft", base_model=str(tiny_model), max_steps=2, progress_bar=False, emit=lambda e: None,
                     should_stop=lambda: True)
    interrupted = resumable_run(get_settings(), "sft", None)
    assert interrupted is not None and interrupted.status == "interrupted"
    events = []
    # Different options on the next start do not change a resumed run: it keeps its own.
    run = run_training("sft", max_steps=50, progress_bar=False, emit=events.append)
    assert run.id == interrupted.id and run.status == "completed"
    assert (run.metrics["resumed_from"], run.metrics["global_step"], run.metrics["max_steps"]) == ("checkpoint-1", 2, 2)
    assert any("Resuming SFT run" in e.get("message", "") for e in events)


def test_a_stop_request_ends_the_cycle_step_as_stopped(ccrl_home, small_batches, dataset, tiny_model, monkeypatch):
    """The SFT step as the agent's child runs it: the stop flag its SIGTERM handler sets reaches
    the trainer, the run is interrupted at a checkpoint, and the step runner ends the step with
    the child's ``StepStopped`` (training itself knows nothing of the child)."""
    from ccrl.agent.core.config import get_settings, reset_settings_cache
    from ccrl.agent.daemon import child, steps
    from ccrl.agent.daemon.cycle import plan_steps
    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import Cycle
    from ccrl.agent.training.training import resumable_run

    monkeypatch.setenv("CCRL_TRAIN__BASE_MODEL", str(tiny_model))
    monkeypatch.setenv("CCRL_TRAIN__MAX_STEPS", "2")
    reset_settings_cache()
    settings = get_settings()
    version_id = _add_version(1, dataset)
    with session_scope() as session:
        cycle = Cycle(number=1, status="running", steps=plan_steps(1, settings.agent), step="sft",
                      dataset_version_id=version_id)
        session.add(cycle)
        session.flush()
        cycle_id = cycle.id
    child._stop.set()
    try:
        with pytest.raises(child.StepStopped, match="step 1 of 2"):
            steps.run_step("sft", cycle_id, settings)
    finally:
        child._stop.clear()
    interrupted = resumable_run(settings, "sft", 1)
    assert interrupted is not None and interrupted.status == "interrupted"


def test_continuation_starts_from_the_deployed_model_with_new_traces_and_replay(ccrl_home, small_batches, tmp_path, tiny_model):
    from ccrl.agent.core.config import get_settings
    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import ModelVersion, utcnow
    from ccrl.agent.training.training import REPLAY_FRACTION, choose_start, run_training

    _add_version(1, write_dataset(tmp_path / "v1", n_train=8))
    first = run_training("sft", base_model=str(tiny_model), max_steps=1, progress_bar=False, emit=lambda e: None)
    with session_scope() as session:
        session.add(ModelVersion(number=1, status="deployed", sft_run_id=first.id, deployed_at=utcnow()))
    _add_version(2, write_dataset(tmp_path / "v2", n_train=12))  # traces 8..11 are new

    run = run_training("sft", max_steps=1, progress_bar=False, emit=lambda e: None)
    assert run.parent_run_id == first.id and run.base_model == f"model v1 (run {first.id})"
    assert run.config["model_source"] == str(Path(first.output_dir) / "merged")
    assert "accepted (deployed) model v1" in run.config["start"]["reason"]
    replay = round(4 * REPLAY_FRACTION)
    assert run.config["continuation"] == {"new_examples": 4, "replay_examples": replay, "skipped_seen": 8 - replay}
    assert run.metrics["train_conversations"] == 4 + replay and run.metrics["eval_examples"] >= 2
    from datasets import load_from_disk

    trained_on = load_from_disk(run.config["dataset_path"])["train"]["trace_id"]
    assert {8, 9, 10, 11} <= set(trained_on) and len(set(trained_on) & set(range(8))) == replay

    settings = get_settings()
    from_base = choose_start(settings, from_base=True, base_model=str(tiny_model))
    assert from_base.source == str(tiny_model) and from_base.parent_run_id is None
    assert from_base.reason.startswith("--from-base")


def test_agent_errors_are_clear_and_leave_no_row(ccrl_home, dataset, tiny_model):
    from sqlmodel import select

    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import TrainingRun
    from ccrl.agent.training.training import TrainingError, run_training

    with pytest.raises(TrainingError, match="no dataset yet: run `ccrl build-dataset`"):
        run_training("sft", base_model=str(tiny_model))
    with pytest.raises(TrainingError, match="not available here"):
        run_training("distill")
    _add_version(1, dataset)
    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match="needs a CUDA GPU"):
            run_training("sft", base_model=str(tiny_model), quant="4bit")
    with session_scope() as session:
        assert session.exec(select(TrainingRun)).all() == []


def test_ccrl_train_cli(ccrl_home, small_batches, dataset, tiny_model):
    from typer.testing import CliRunner

    from ccrl.agent.cli import app
    from ccrl.agent.core.lock import pipeline_lock

    runner = CliRunner()
    no_data = runner.invoke(app, ["train", "--phase", "sft", "--base-model", str(tiny_model)])
    assert no_data.exit_code == 1 and "no dataset yet" in no_data.stderr and "Traceback" not in no_data.output
    assert runner.invoke(app, ["train", "--phase", "distill"]).exit_code == 2

    _add_version(1, dataset)
    if not torch.cuda.is_available():
        four_bit = runner.invoke(app, ["train", "--quant", "4bit", "--base-model", str(tiny_model)])
        assert four_bit.exit_code == 1 and "needs a CUDA GPU" in four_bit.stderr

    lock = pipeline_lock(ccrl_home)
    with lock.hold("cycle 3: sft", agent=True):
        busy = runner.invoke(app, ["train", "--base-model", str(tiny_model), "--max-steps", "1"])
    assert busy.exit_code == 1 and "the agent is busy with cycle 3: sft" in busy.stderr

    ok = runner.invoke(app, ["train", "--phase", "sft", "--base-model", str(tiny_model), "--max-steps", "1", "--json"])
    assert ok.exit_code == 0, ok.stderr
    run = json.loads(ok.stdout)
    assert run["status"] == "completed" and run["metrics"]["global_step"] == 1 and run["phase"] == "sft"
    # Progress without a terminal: structured lines on stderr, stdout keeps only the JSON.
    events = [json.loads(line) for line in ok.stderr.splitlines() if line.startswith("{")]
    assert any(e["event"] == "start" and "base model given explicitly" in e["reason"] for e in events)
    assert any(e["event"] == "train.progress" and e.get("step") == 1 for e in events)
