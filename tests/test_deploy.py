"""Deploying model versions to Ollama through the real ``ollama`` client, against the Ollama API
server in ``tests/ollama_server.py`` (it renders the registered Go template with Go and runs the
registered GGUF in llama-cpp-python, so a test can "ollama run" the deployed model)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from export_helpers import EXAMPLES, SYSTEM, expected_reply, overfit_gguf
from ollama_server import OllamaTestServer, build_go_renderer

NAME = "cc-claude-agent"


@pytest.fixture(scope="session")
def shared(run_shared_dir) -> Path:
    return run_shared_dir("export-shared")


@pytest.fixture(scope="session")
def go_binary(tmp_path_factory) -> Path:
    return build_go_renderer(tmp_path_factory.mktemp("go"))


@pytest.fixture
def ollama_server(tmp_path, go_binary, monkeypatch):
    with OllamaTestServer(tmp_path / "ollama", go_binary) as server:
        monkeypatch.setenv("OLLAMA_HOST", server.host)
        yield server


@pytest.fixture
def versions(ccrl_home, shared):
    """Three candidate versions (q8_0, q4_k_m and f16 files of the overfit tiny model), as
    ``ccrl export`` records them. Returns ``{number: quant}``."""
    from ccrl.agent.core.config import get_settings
    from ccrl.agent.release.versions import add_history, gguf_dir
    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import ModelVersion
    from ccrl.trainers.evaluate import weights_digest

    info = overfit_gguf(shared)
    settings = get_settings()
    out = gguf_dir(settings)
    out.mkdir(parents=True, exist_ok=True)
    numbers = {}
    with session_scope(settings) as session:
        for number, quant in enumerate(("q8_0", "q4_k_m", "f16"), start=1):
            variant = info["variants"][quant]
            path = out / f"{NAME}-v{number}-{quant}.gguf"
            shutil.copy2(variant["path"], path)
            export = {**info["result"], "quant": quant}
            export.pop("path")
            # As `ccrl eval` leaves it: the gate passed, on exactly these weights.
            gate = {"passed": True, "reason": "beats the base model and the baselines", "judged": "candidate-gguf",
                    "weights_sha256": weights_digest(path)}
            version = ModelVersion(number=number, base_model="tiny-random-llama", gguf_path=str(path),
                                   gguf_sha256=variant["sha256"], quant=quant, size_bytes=variant["size"],
                                   metrics={"export": export}, gate=gate)
            add_history(version, "exported", quant=quant)
            session.add(version)
            numbers[number] = quant
    return numbers


def _client():
    import ollama

    return ollama.Client()  # OLLAMA_HOST


def _digest(client, tag: str) -> str:
    return {m.model: m.digest for m in client.list().models}[tag]


def _rows():
    from ccrl.agent.core.config import get_settings
    from ccrl.agent.release.versions import list_versions
    from ccrl.agent.store.db import session_scope

    with session_scope(get_settings()) as session:
        rows = list_versions(session)
        for row in rows:
            session.expunge(row)
    return {row.number: row for row in rows}


def test_deploy_registers_the_version_and_ollama_runs_it(ollama_server, versions):
    from ccrl.agent.release.deploy import deploy_version, modelfile_system, parse_show_parameters
    from ccrl.trainers.ollama_template import family

    lines = []
    version = deploy_version(number=1, progress=lines.append)

    assert (version.status, version.ollama_tag) == ("deployed", f"{NAME}:v1") and version.deployed_at
    digest = f"sha256:{version.gguf_sha256}"
    requests = ollama_server.requests
    assert requests.index(("HEAD", f"/api/blobs/{digest}")) < requests.index(("POST", f"/api/blobs/{digest}"))
    assert ("POST", "/api/create") in requests and ("POST", "/api/copy") in requests
    assert any("uploading" in line for line in lines) and any("ollama: success" in line for line in lines)

    client = _client()
    assert _digest(client, f"{NAME}:latest") == _digest(client, f"{NAME}:v1")
    shown = client.show(NAME)
    assert shown.template == family("chatml").template
    assert modelfile_system(shown.modelfile) == SYSTEM["content"]
    assert parse_show_parameters(shown.parameters) == {"num_ctx": [8192], "stop": ["<|im_end|>", "<|im_start|>"]}
    assert "tools" in shown.capabilities

    # "ollama run cc-claude-agent": the deployed model answers as trained and stops at its turn's end.
    for conversation in EXAMPLES:
        answer = client.generate(model=NAME, prompt=conversation[1]["content"], options={"temperature": 0})
        assert answer.response == expected_reply(conversation)
        assert answer.done_reason == "stop"
    chat = client.chat(model=NAME, messages=[{"role": "user", "content": "Count to three."}],
                       options={"temperature": 0})
    assert chat.message.content == "One, two, three." and chat.done_reason == "stop"

    row = _rows()[1]
    assert row.metrics["ollama"]["parameters"] == {"stop": ["<|im_end|>", "<|im_start|>"], "num_ctx": 8192}
    assert [e["event"] for e in row.metrics["history"]] == ["exported", "deployed"]


def test_the_upload_is_skipped_when_ollama_already_has_the_blob(ollama_server, versions):
    from ccrl.agent.release.deploy import deploy_version

    rows = _rows()
    digest = _client().create_blob(rows[2].gguf_path)  # e.g. an earlier, interrupted deployment
    assert digest == f"sha256:{rows[2].gguf_sha256}"
    ollama_server.requests.clear()

    lines = []
    deploy_version(number=2, progress=lines.append)
    assert ("HEAD", f"/api/blobs/{digest}") in ollama_server.requests
    assert not [r for r in ollama_server.requests if r[0] == "POST" and r[1].startswith("/api/blobs/")]
    assert any("upload skipped" in line for line in lines)
    assert _rows()[2].metrics["history"][-1]["uploaded"] is False


def test_rollback_and_deploying_any_kept_version(ollama_server, versions):
    from ccrl.agent.release.deploy import deploy_version, rollback
    from ccrl.agent.release.versions import VersionError

    client = _client()
    deploy_version(number=1)
    deploy_version(number=2)
    rows = _rows()
    assert (rows[1].status, rows[2].status, rows[3].status) == ("retired", "deployed", "candidate")
    assert _digest(client, f"{NAME}:latest") == _digest(client, f"{NAME}:v2")

    restored = rollback(reason="v2 answers worse")
    assert restored.number == 1
    rows = _rows()
    assert (rows[1].status, rows[2].status) == ("deployed", "rejected")
    assert rows[2].metrics["history"][-1] == {**rows[2].metrics["history"][-1], "event": "rolled back", "to": 1,
                                             "reason": "v2 answers worse"}
    assert _digest(client, f"{NAME}:latest") == _digest(client, f"{NAME}:v1")

    with pytest.raises(VersionError, match="no version to roll back to"):
        rollback()
    with pytest.raises(VersionError, match="was rejected"):
        deploy_version(number=2)
    with pytest.raises(VersionError, match="--force needs --reason"):
        deploy_version(number=2, force=True)
    deploy_version(number=2, force=True, reason="the regression was in the eval set, not the model")
    rows = _rows()
    assert rows[2].status == "deployed" and rows[1].status == "retired"
    forced = [e for e in rows[2].metrics["history"] if e["event"] == "deployed" and e.get("forced")]
    assert forced and forced[-1]["reason"] == "the regression was in the eval set, not the model"
    # The evaluation gate's own record of the override (ccrl.agent.evaluation.gate).
    assert rows[2].gate["override"]["reason"] == "the regression was in the eval set, not the model"
    assert rows[2].metrics["history"][-1]["event"] == "gate overridden"
    assert _digest(client, f"{NAME}:latest") == _digest(client, f"{NAME}:v2")

    deploy_version(number=3)  # any kept version, by number
    assert _digest(client, f"{NAME}:latest") == _digest(client, f"{NAME}:v3")
    assert rollback().number == 2


def test_rollback_registers_the_target_again_when_ollama_lost_it(ollama_server, versions):
    from ccrl.agent.release.deploy import deploy_version, rollback

    deploy_version(number=1)
    deploy_version(number=2)
    client = _client()
    client.delete(f"{NAME}:v1")
    assert f"{NAME}:v1" not in {m.model for m in client.list().models}
    rollback()
    assert _digest(client, f"{NAME}:latest") == _digest(client, f"{NAME}:v1")
    assert client.generate(model=NAME, prompt="Count to three.", options={"temperature": 0}).response == "One, two, three."


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_ollama_is_a_clear_error_and_the_version_stays_a_candidate(ccrl_home, versions, monkeypatch):
    from ccrl.agent.release.deploy import OllamaUnreachable, deploy_version

    host = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("OLLAMA_HOST", host)
    with pytest.raises(OllamaUnreachable) as failure:
        deploy_version(number=1)
    message = str(failure.value)
    assert f"OLLAMA_HOST={host}" in message and "ollama serve" in message and "stays" in message
    row = _rows()[1]
    assert row.status == "candidate" and row.ollama_tag is None and row.deployed_at is None
    assert row.metrics["history"][-1]["event"] == "deploy failed"

    proc = subprocess.run([str(Path(sys.executable).parent / "ccrl"), "deploy", "--version", "1"],
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": "250"})
    assert proc.returncode == 1 and "OLLAMA_HOST" in proc.stderr and "Traceback" not in proc.stderr
    assert _rows()[1].status == "candidate"


def test_an_ollama_error_mid_deployment_leaves_nothing_half_registered(ollama_server, versions):
    from ccrl.agent.release.deploy import DeployError, deploy_version

    deploy_version(number=1)
    client = _client()
    latest_before = _digest(client, f"{NAME}:latest")

    ollama_server.state.fail_next["POST /api/copy"] = (500, "disk full")
    with pytest.raises(DeployError, match="disk full") as failure:
        deploy_version(number=2)
    assert "HTTP 500" in str(failure.value) and "was not deployed" in str(failure.value)
    tags = {m.model for m in client.list().models}
    assert f"{NAME}:v2" not in tags  # removed again: it was never pointed at
    assert _digest(client, f"{NAME}:latest") == latest_before
    rows = _rows()
    assert (rows[1].status, rows[2].status) == ("deployed", "candidate")

    ollama_server.state.fail_next["POST /api/create"] = (500, "out of memory")
    with pytest.raises(DeployError, match="out of memory"):
        deploy_version(number=2)
    assert f"{NAME}:v2" not in {m.model for m in client.list().models}
    deploy_version(number=2)  # the next try (the agent's next cycle) succeeds
    assert _rows()[2].status == "deployed"


def test_a_file_changed_since_export_is_not_registered(ollama_server, versions):
    from ccrl.agent.release.deploy import DeployError, deploy_version

    path = Path(_rows()[1].gguf_path)
    with open(path, "ab") as handle:
        handle.write(b"\0")
    # Forced past the gate (which would judge the changed file again first): the upload's own check.
    with pytest.raises(DeployError, match="changed since it was exported"):
        deploy_version(number=1, force=True, reason="testing the upload check")
    assert not _client().list().models
    assert _rows()[1].status == "candidate"


def test_deploy_holds_to_the_gate_on_the_weights_it_judged(ollama_server, versions):
    from ccrl.agent.release.deploy import VersionError, deploy_version
    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import ModelVersion

    with session_scope() as session:
        session.get(ModelVersion, _rows()[1].id).gate = {}
    with pytest.raises(VersionError, match=r"has not been through the evaluation gate: run `ccrl eval --version 1`"):
        deploy_version(number=1)
    # A decision made on other weights does not count: the gate judges these again, which needs
    # the held-out split of a dataset version (there is none here), so nothing is registered.
    with session_scope() as session:
        session.get(ModelVersion, _rows()[2].id).gate = {**_rows()[2].gate, "weights_sha256": "0" * 64}
    with pytest.raises(VersionError, match="cannot check model version 2 against the evaluation gate"):
        deploy_version(number=2)
    assert not _client().list().models
    assert (_rows()[1].status, _rows()[2].status) == ("candidate", "candidate")
    deploy_version(number=3)  # its recorded decision is on its own weights
    assert _rows()[3].status == "deployed"


def test_ollama_refuses_adapters_quantizing_a_gguf_and_a_wrong_digest(ollama_server, versions):
    """The documented 400s, through the real client (what ccrl avoids by merging and quantizing
    before registering)."""
    import ollama

    client = _client()
    row = _rows()[1]
    digest = client.create_blob(row.gguf_path)
    with pytest.raises(ollama.ResponseError) as adapters:
        client.create(model="x", files={"m.gguf": digest}, adapters={"a.gguf": digest})
    assert adapters.value.status_code == 400 and "adapters" in adapters.value.error
    with pytest.raises(ollama.ResponseError) as quantize:
        client.create(model="x", files={"m.gguf": digest}, quantize="q4_K_M")
    assert quantize.value.status_code == 400 and "quantiz" in quantize.value.error
    wrong = "sha256:" + "0" * 64
    import httpx

    response = httpx.post(f"{ollama_server.host}/api/blobs/{wrong}", content=b"GGUF not this")
    assert response.status_code == 400 and "digest mismatch" in response.text
    with pytest.raises(ollama.ResponseError) as missing:
        client.create(model="x", files={"m.gguf": wrong})
    assert missing.value.status_code == 400
    assert not client.list().models


def test_deploy_keeps_the_deployed_and_rollback_target_files_under_retention(ollama_server, versions, monkeypatch):
    from ccrl.agent.core.config import reset_settings_cache
    from ccrl.agent.release.deploy import deploy_version, rollback

    monkeypatch.setenv("CCRL_AGENT__KEEP_MODEL_VERSIONS", "1")
    reset_settings_cache()
    deploy_version(number=1)
    rows = _rows()
    # keep=1 keeps the newest (v3) and the deployed one (v1); v2's file goes and it is retired.
    assert Path(rows[1].gguf_path).is_file() and Path(rows[3].gguf_path).is_file()
    assert rows[2].gguf_path is None and rows[2].status == "retired"
    deploy_version(number=3)
    rows = _rows()
    # v1 is now the rollback target: its file stays although it is neither newest nor deployed.
    assert Path(rows[1].gguf_path).is_file() and rows[1].status == "retired"
    assert rollback().number == 1


def test_the_cli(ollama_server, versions):
    ccrl = str(Path(sys.executable).parent / "ccrl")
    env = {**os.environ, "COLUMNS": "250"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([ccrl, *args], capture_output=True, text=True, env=env)

    first = run("deploy", "--json")  # the newest candidate
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["number"] == 3 and "upload" in first.stderr
    second = run("deploy", "--version", "1")
    assert second.returncode == 0 and f"{NAME}:v1" in second.stdout and "ollama run cc-claude-agent" in second.stdout
    listed = json.loads(run("models", "list", "--json").stdout)
    assert [(v["number"], v["status"], v["rollback_target"]) for v in listed] == [
        (1, "deployed", False), (2, "candidate", False), (3, "retired", True)]
    table = run("models", "list").stdout
    assert "rollback target" in table and "deployed" in table
    back = run("rollback", "--json", "--reason", "testing")
    assert back.returncode == 0 and json.loads(back.stdout)["number"] == 3
    refused = run("deploy", "--version", "1", "--force")
    assert refused.returncode == 2 and "--reason" in refused.stderr
    nothing = run("rollback")
    assert nothing.returncode == 1 and "no version to roll back to" in nothing.stderr
    shown = run("models", "show", "1").stdout
    assert "rolled back" in shown and "deployed" in shown


def _users_own_model(client, name: str, gguf: str, system: str = "You are my own assistant.") -> str:
    """A model the user made themselves (``ollama create``): returns its digest in ``ollama list``."""
    digest = client.create_blob(gguf)
    for status in client.create(model=name, files={"own.gguf": digest}, template="{{ .Prompt }}", system=system,
                                stream=True):
        pass
    assert status.status == "success"
    return _digest(client, name if ":" in name else f"{name}:latest")


def _forget_version(number: int) -> str:
    """Drop a version's row, leaving its GGUF: a file ccrl never exported, as far as the store knows.
    Returns its path."""
    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import ModelVersion

    with session_scope() as session:
        row = session.get(ModelVersion, _rows()[number].id)
        path = row.gguf_path
        session.delete(row)
    return path


def test_deploy_refuses_a_name_holding_models_ccrl_did_not_create(ollama_server, versions):
    """``ccrl deploy --name llama3.2`` with the user's own llama3.2 in Ollama: refused with what to do,
    nothing changed, unless --force (with a reason), which is recorded."""
    from ccrl.agent.release.deploy import deploy_version
    from ccrl.agent.release.versions import VersionError

    client = _client()
    own = _forget_version(3)
    latest = _users_own_model(client, "llama3.2", own)
    small = _users_own_model(client, "llama3.2:1b", own, system="Another one of mine.")
    other = _users_own_model(client, "mistral", own)
    ollama_server.requests.clear()

    with pytest.raises(VersionError) as refused:
        deploy_version(number=1, name="llama3.2")
    message = str(refused.value)
    assert "llama3.2:latest" in message and "llama3.2:1b" in message and "did not create" in message
    assert "--name" in message and "--force --reason" in message and "Nothing was changed" in message
    assert not [r for r in ollama_server.requests if r[0] in ("POST", "DELETE") and r[1] != "/api/show"]
    assert {m.model: m.digest for m in client.list().models} == {
        "llama3.2:latest": latest, "llama3.2:1b": small, "mistral:latest": other}
    assert _rows()[1].status == "candidate"

    # The same through the CLI: a clear error, exit 1, no traceback.
    ccrl = str(Path(sys.executable).parent / "ccrl")
    proc = subprocess.run([ccrl, "deploy", "--version", "1", "--name", "LLAMA3.2"], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "300"})
    assert proc.returncode == 1 and "did not create" in proc.stderr and "Traceback" not in proc.stderr

    # Names ccrl's own models, or no model at all, are fine; other names' models do not matter.
    deploy_version(number=1)
    deploy_version(number=2)
    assert _digest(client, f"{NAME}:latest") == _digest(client, f"{NAME}:v2")

    # --force (a reason required) replaces llama3.2:latest, and the version's history says so.
    row = deploy_version(number=1, name="llama3.2", force=True, reason="my old llama3.2 experiment can go")
    assert _digest(client, "llama3.2:latest") == _digest(client, "llama3.2:v1") != latest
    assert _digest(client, "llama3.2:1b") == small
    event = row.metrics["history"][-1]
    assert event["event"] == "deployed" and event["reason"] == "my old llama3.2 experiment can go"
    assert sorted(event["replaced_models_ccrl_did_not_create"]) == ["llama3.2:1b", "llama3.2:latest"]


def test_rollback_refuses_a_name_holding_models_ccrl_did_not_create(ollama_server, versions):
    from ccrl.agent.release.deploy import deploy_version, rollback
    from ccrl.agent.release.versions import VersionError

    client = _client()
    deploy_version(number=1)
    deploy_version(number=2)
    latest = _users_own_model(client, "mine", _forget_version(3))
    with pytest.raises(VersionError, match=r"Ollama already has mine:latest, which ccrl did not create"):
        rollback(name="mine")
    assert _digest(client, "mine:latest") == latest
    assert _rows()[2].status == "deployed"


def test_ccrl_knows_its_models_by_their_weights_or_its_system_prompt(ollama_server, versions):
    """A model is ccrl's when its GGUF is one the store exported (by sha256) or, for a store that
    was reset, when it carries ccrl's system prompt; same weights under another prompt are not."""
    from ccrl.agent.release.deploy import created_by_ccrl, deploy_version
    from ccrl.trainers.conversation import system_prompt

    client = _client()
    deploy_version(number=1)
    digests = {row.gguf_sha256 for row in _rows().values()}
    shown = client.show(f"{NAME}:v1")
    assert created_by_ccrl(shown, digests)
    assert created_by_ccrl(shown, set())  # the store forgot it: its system prompt still says so
    own = _forget_version(3)
    _users_own_model(client, "lookalike", own, system=system_prompt([{"name": "Read"}]))
    _users_own_model(client, "stranger", own)
    assert created_by_ccrl(client.show("lookalike"), set())
    assert not created_by_ccrl(client.show("stranger"), {row.gguf_sha256 for row in _rows().values()})


def test_retention_deletes_only_files_inside_the_models_folder(ollama_server, versions, tmp_path, monkeypatch):
    """Versions whose recorded files are elsewhere (a path outside CCRL_HOME/models, a symlink
    from inside it to a file outside) are pruned from the store's view, and the files stay."""
    from ccrl.agent.core.config import reset_settings_cache
    from ccrl.agent.release.deploy import deploy_version
    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import ModelVersion

    rows = _rows()
    outside = tmp_path / "users-files" / "keep-me.gguf"
    outside.parent.mkdir()
    shutil.copy2(rows[1].gguf_path, outside)
    linked_target = tmp_path / "users-files" / "also-mine.gguf"
    shutil.copy2(rows[2].gguf_path, linked_target)
    link = Path(rows[2].gguf_path)
    link.unlink()
    link.symlink_to(linked_target)
    with session_scope() as session:
        session.get(ModelVersion, rows[1].id).gguf_path = str(outside)
    monkeypatch.setenv("CCRL_AGENT__KEEP_MODEL_VERSIONS", "1")
    reset_settings_cache()

    deploy_version(number=3)  # keep=1: v3 stays; v1's and v2's files are pruned
    rows = _rows()
    assert outside.is_file() and linked_target.is_file() and link.is_symlink()
    for number, path in ((1, outside), (2, link)):
        assert rows[number].gguf_path is None and rows[number].status == "retired"
        event = rows[number].metrics["history"][-1]
        assert event["event"].startswith("file left in place by retention") and event["path"] == str(path)
    assert Path(rows[3].gguf_path).is_file()


def test_owned_files_are_judged_on_their_real_path(tmp_path):
    from ccrl.agent.core.owned_paths import remove_owned_file

    root = tmp_path / "home" / "models"
    (root / "gguf").mkdir(parents=True)
    inside = root / "gguf" / "v1.gguf"
    inside.write_bytes(b"GGUF")
    beside = tmp_path / "home" / "ccrl.db"
    beside.write_bytes(b"store")
    assert not remove_owned_file(root / "gguf" / ".." / ".." / "ccrl.db", root) and beside.exists()
    assert not remove_owned_file(root / "gguf", root) and (root / "gguf").is_dir()
    link = root / "gguf" / "link.gguf"
    link.symlink_to(inside)
    assert remove_owned_file(link, root) and not inside.exists() and not link.is_symlink()
    assert remove_owned_file(root / "gguf" / "gone.gguf", root)
