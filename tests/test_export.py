"""GGUF export on real tiny models: merge → convert (llama.cpp's converter from the
llama-cpp-python sdist) → quantize → verify in llama-cpp-python → publish atomically; and the
model-version record that ``ccrl export`` makes of it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from export_helpers import EXAMPLES, converter_cache, expected_reply, overfit_gguf, overfit_model, tiny_base
from ccrl.trainers.export import (
    PARTIAL_PREFIX,
    ExportError,
    choose_quant,
    cleanup_partial_exports,
    convert_to_gguf,
    converter_dir,
    export_adapter,
    export_model,
    gguf_summary,
    quantize,
    sha256_file,
)
from ccrl.trainers.ollama_template import strip_generation_markers


@pytest.fixture(scope="session")
def shared(run_shared_dir) -> Path:
    return run_shared_dir("export-shared")


def _llama(path: Path, **kwargs):
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=1, n_threads_batch=1, verbose=False, **kwargs)


def _published(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir()) if out.is_dir() else []


def test_adapter_round_trip_merges_converts_loads_and_generates(shared, tmp_path):
    """A LoRA adapter on the tiny base: merged in full precision, converted, kept at f32 (so the
    logits can be compared), loaded in llama-cpp-python and run through the embedded template."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ccrl.trainers.chat_templates import load_template, save_template

    torch.set_num_threads(1)
    torch.manual_seed(0)
    base_dir = tiny_base(shared)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                            "up_proj", "down_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, config)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(str(adapter))
    save_template(tokenizer, "chatml", adapter)
    merged = peft_model.merge_and_unload()

    out = tmp_path / "gguf"
    result = export_adapter(adapter, out, name="tiny-lora", cache_dir=converter_cache(), quant="f32",
                            require_stop=False, threads=1)

    assert result.path == out / "tiny-lora-f32.gguf" and _published(out) == ["tiny-lora-f32.gguf"]
    assert oct(result.path.stat().st_mode & 0o777) == "0o600"
    assert result.sha256 == sha256_file(result.path) and result.size_bytes == result.path.stat().st_size
    assert (result.quant, result.quant_reason, result.family) == ("f32", "requested", "chatml")
    assert set(result.timings) >= {"merge_s", "convert_s", "quantize_s", "verify_s"}
    check = result.verification
    assert check.chat_template_ok and check.chat_format == "chat_template.default"
    assert check.end_of_turn == "<|im_end|>" and check.eos_token_id == check.end_of_turn_id
    assert check.end_of_turn_id in check.end_of_generation_ids and check.completion_tokens > 0
    assert check.problems == []

    # The GGUF embeds the training template, minus TRL's generation markers.
    from gguf import GGUFReader

    reader = GGUFReader(str(result.path))
    embedded = reader.get_field("tokenizer.chat_template").contents()
    assert embedded == strip_generation_markers(load_template("chatml"))
    assert not re.search(r"\{%-?\s*(end)?generation", embedded)

    # The adapter really is in the file: llama.cpp's logits match the merged model, not the base.
    text = "<|im_start|>user\nWhat is in app.py?<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        want = merged(input_ids=torch.tensor([ids])).logits[0].numpy()
        base_logits = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)(
            input_ids=torch.tensor([ids])).logits[0].numpy()
    llm = _llama(result.path, logits_all=True)
    try:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
        llm.eval(ids)
        got = llm.scores[: len(ids)]
    finally:
        llm.close()
    import numpy as np

    assert np.abs(got - want).max() < 1e-2 * max(1.0, np.abs(want).max())
    assert np.abs(base_logits - want).max() > 20 * np.abs(got - want).max()


def test_k_quants_apply_to_rows_of_256_and_auto_picks_8_bits_for_small_models(shared, tmp_path):
    from gguf import GGMLQuantizationType, GGUFReader

    view = tmp_path / "f16.gguf"
    convert_to_gguf(tiny_base(shared), view, converter=converter_dir(converter_cache()), outtype="f16",
                    log_file=tmp_path / "convert.log", threads=1)
    summary = gguf_summary(view)
    assert summary["matrices_off_k_block"] == 0 and summary["n_params"] < 20_000_000
    assert choose_quant(summary).name == "q8_0" and "too small" in choose_quant(summary).reason

    q4 = tmp_path / "q4_k_m.gguf"
    quantize(view, q4, "q4_k_m", threads=1)
    types = {t.name: t.tensor_type for t in GGUFReader(str(q4)).tensors if t.name.startswith("blk.")}
    k_types = {GGMLQuantizationType.Q4_K, GGMLQuantizationType.Q6_K}
    matrices = [name for name in types if name.endswith("_proj.weight") or ".attn_" in name or ".ffn_" in name]
    assert matrices and all(types[n] in k_types for n in matrices if not n.endswith("norm.weight"))
    assert q4.stat().st_size < 0.45 * view.stat().st_size

    big = {"n_params": 8_000_000_000, "matrices": 224, "matrices_off_k_block": 0}
    assert choose_quant(big).name == "q4_k_m"
    smollm_like = {"n_params": 1_500_000_000, "matrices": 211, "matrices_off_k_block": 181}
    assert choose_quant(smollm_like).name == "q8_0" and "multiple of 256" in choose_quant(smollm_like).reason
    assert choose_quant(big, "Q5_K_M").name == "q5_k_m"
    with pytest.raises(ExportError, match="unknown quantization"):
        choose_quant(big, "q4_k_xl")


def test_a_model_that_learned_to_answer_stops_at_the_end_of_its_turn(shared):
    """The overfit tiny model, exported with auto quantization: it answers its examples exactly,
    through the template embedded in the GGUF, and ends with <|im_end|>."""
    info = overfit_gguf(shared)
    result = info["result"]
    assert result["quant"] == "q8_0" and result["family"] == "chatml"
    check = result["verification"]
    assert check["stopped_at_end_of_turn"] and check["finish_reason"] == "stop"
    assert check["reply"] == "Hello there!" == check["expected_reply"]
    assert check["completion_tokens"] < check["max_tokens"]

    llm = _llama(Path(result["path"]), chat_format="chat_template.default", seed=0)
    try:
        for conversation in EXAMPLES:
            reply = llm.create_chat_completion(messages=conversation[:-1], max_tokens=64, temperature=0.0)
            assert reply["choices"][0]["message"]["content"] == expected_reply(conversation)
            assert reply["choices"][0]["finish_reason"] == "stop"
            assert reply["usage"]["completion_tokens"] < 64
    finally:
        llm.close()


def test_a_model_that_does_not_stop_fails_verification_and_nothing_is_published(shared, tmp_path):
    out = tmp_path / "gguf"
    with pytest.raises(ExportError, match="did not end its turn") as failure:
        export_model(tiny_base(shared), out, name="random", cache_dir=converter_cache(), threads=1,
                     probe=EXAMPLES[0][:-1])
    assert "was not kept" in str(failure.value)
    assert _published(out) == []


def test_a_model_without_its_training_template_is_refused(shared, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny_base(shared), bare)
    (bare / "chat_template.jinja").unlink()
    (bare / "ccrl_template.json").unlink()
    with pytest.raises(ExportError, match="no chat template"):
        export_model(bare, tmp_path / "gguf", name="bare", cache_dir=converter_cache())


_EXPORT_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from ccrl.trainers.export import export_model
    export_model(Path(sys.argv[1]), Path(sys.argv[2]), name="interrupted", cache_dir=Path(sys.argv[3]),
                 require_stop=False, threads=1)
""")


def _start_export(model: Path, out: Path) -> subprocess.Popen:
    converter_dir(converter_cache())  # fetched already: the child starts converting at once
    # SIGINT back to its default in the child: a test run started in the background (`make test &`)
    # inherits an ignored SIGINT, and Python then never turns it into KeyboardInterrupt.
    return subprocess.Popen([sys.executable, "-c", _EXPORT_SCRIPT, str(model), str(out), str(converter_cache())],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_conversion(out: Path, proc: subprocess.Popen) -> Path:
    deadline = time.monotonic() + 600  # an upper bound for a slow, busy machine, not a timing
    while time.monotonic() < deadline:
        partial = list(out.glob(f"{PARTIAL_PREFIX}*/convert.log"))
        if partial and partial[0].stat().st_size > 0:
            return partial[0].parent
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.1)
    raise AssertionError("the export never started converting")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["interrupted", "killed"])
def test_an_interrupted_export_leaves_no_half_file(shared, tmp_path, sig):
    out = tmp_path / "gguf"
    proc = _start_export(tiny_base(shared), out)
    work = _wait_for_conversion(out, proc)
    os.kill(proc.pid, sig)
    proc.wait(timeout=60)
    assert not list(out.glob("*.gguf"))
    if sig == signal.SIGINT:
        assert not work.exists()  # the export removed its own work folder on the way out
    else:
        assert work.exists()  # a killed process cannot clean up; the next export does
        assert cleanup_partial_exports(out) == [work]
    assert _published(out) == []


def test_export_run_records_a_candidate_version_and_applies_retention(ccrl_home, shared):
    """``export_run`` on a finished SFT run (its ``merged/`` folder): a numbered candidate with the
    file's sha256 and the export's facts; older files go beyond ``keep``, never the deployed one's."""
    import shutil

    from ccrl.agent.core.config import get_settings
    from ccrl.agent.release.versions import export_run, gguf_dir, history, list_versions, mark_deployed
    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import ModelVersion, TrainingRun, utcnow

    settings = get_settings()
    run_dir = ccrl_home / "models" / "sft" / "run-1"
    shutil.copytree(overfit_model(shared), run_dir / "merged")
    with session_scope(settings) as session:
        session.add(TrainingRun(phase="sft", status="completed", base_model="tiny-random-llama",
                                output_dir=str(run_dir), finished_at=utcnow()))
        # Two older versions with files; the first one is deployed.
        for number in (1, 2):
            path = gguf_dir(settings) / f"old-v{number}.gguf"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"GGUF old")
            session.add(ModelVersion(number=number, base_model="old", gguf_path=str(path), gguf_sha256="0" * 64))
        session.flush()
        mark_deployed(session, session.get(ModelVersion, 1), "cc-claude-agent:v1")

    lines = []
    version = export_run(settings=settings, keep=1, threads=1, probe=EXAMPLES[1][:-1],
                         expected_reply=expected_reply(EXAMPLES[1]), progress=lines.append)

    assert version.number == 3 and version.status == "candidate"
    path = Path(version.gguf_path)
    assert path == gguf_dir(settings) / "cc-claude-agent-v3-q8_0.gguf" and path.is_file()
    assert version.gguf_sha256 == sha256_file(path) and version.size_bytes == path.stat().st_size
    assert (version.sft_run_id, version.rl_run_id, version.quant) == (1, None, "q8_0")
    export = version.metrics["export"]
    assert export["run_id"] == 1 and export["source"] == "merged" and export["family"] == "chatml"
    assert export["verification"]["reply"] == "One, two, three."
    assert [e["event"] for e in history(version)] == ["exported"]
    assert any("quantization q8_0" in line for line in lines) and any("published" in line for line in lines)
    with session_scope(settings) as session:
        rows = {v.number: v for v in list_versions(session)}
        # keep=1: v3 is the newest, v1 is deployed; v2's file goes and it is retired.
        assert rows[1].gguf_path and Path(rows[1].gguf_path).is_file() and rows[1].status == "deployed"
        assert rows[2].gguf_path is None and rows[2].status == "retired"
        assert not (gguf_dir(settings) / "old-v2.gguf").exists()
        assert history(rows[2])[-1]["event"] == "file removed by retention"
    assert not list(gguf_dir(settings).glob(f"{PARTIAL_PREFIX}*"))


def test_ccrl_export_json_and_models_commands(ccrl_home, shared):
    """The CLI end to end: ``ccrl export --json``, ``ccrl models list --json``, ``models show``."""
    import shutil

    from ccrl.agent.core.config import get_settings
    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import TrainingRun, utcnow

    run_dir = ccrl_home / "models" / "sft" / "run-1"
    shutil.copytree(overfit_model(shared), run_dir / "merged")
    with session_scope(get_settings()) as session:
        session.add(TrainingRun(phase="sft", status="completed", base_model="tiny", output_dir=str(run_dir),
                                finished_at=utcnow()))
    env = {**os.environ, "COLUMNS": "250"}  # rich wraps tables at 80 columns without a terminal
    ccrl = [str(Path(sys.executable).parent / "ccrl")]
    # The export fetches the converter into CCRL_HOME/cache: seed it from the test cache.
    shutil.copytree(converter_dir(converter_cache()), ccrl_home / "cache" / converter_dir(converter_cache()).name)
    proc = subprocess.run([*ccrl, "export", "--json", "--threads", "1"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    exported = json.loads(proc.stdout)
    assert exported["number"] == 1 and exported["status"] == "candidate" and exported["file_present"]
    assert "published" in proc.stderr

    listed = json.loads(subprocess.run([*ccrl, "models", "list", "--json"], capture_output=True, text=True,
                                       env=env, check=True).stdout)
    assert [(v["number"], v["status"], v["rollback_target"]) for v in listed] == [(1, "candidate", False)]
    shown = subprocess.run([*ccrl, "models", "show", "1"], capture_output=True, text=True, env=env, check=True).stdout
    assert "cc-claude-agent-v1-q8_0.gguf" in shown and "exported" in shown
    missing = subprocess.run([*ccrl, "models", "show", "9"], capture_output=True, text=True, env=env)
    assert missing.returncode == 1 and "there is no model version 9" in missing.stderr and "Traceback" not in missing.stderr
    again = subprocess.run([*ccrl, "export", "--run", "7"], capture_output=True, text=True, env=env)
    assert again.returncode == 1 and "there is no training run 7" in again.stderr
