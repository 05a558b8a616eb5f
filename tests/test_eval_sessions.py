"""Session families (resumed and forked copies share message uuids) and ``ccrl eval --sessions``
on the real fixture transcripts: a tiny trained candidate, its base and the baselines scored
on sessions the store has never seen; opt-outs honoured, sessions seen in training excluded,
nothing written to the store."""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from conftest import FIXTURES, embedded_tokenizer_dir  # noqa: E402
from eval_helpers import train_tiny_agent, write_dataset_version  # noqa: E402

TRANSCRIPTS = FIXTURES / "transcripts"
TWO_TURNS = TRANSCRIPTS / "claude-code-viewer" / "fe5e1c67-53e7-4862-81ae-d0e013e3270b.jsonl"  # two prompts: a parent and its continuation


def _with_session_id(line: str, session_id: str, cwd: str | None = None) -> str:
    try:
        obj = json.loads(line)
    except ValueError:
        return line
    if isinstance(obj, dict) and "sessionId" in obj:
        obj["sessionId"] = session_id
    if isinstance(obj, dict) and cwd is not None and "cwd" in obj:
        obj["cwd"] = cwd
    return json.dumps(obj) + "\n"


def write_copy(source: Path, folder: Path, session_id: str, *, cwd: str | None = None,
               upto_last_turn: bool = False) -> Path:
    """A copy of a transcript under another session id, as ``claude --resume`` or
    ``--fork-session`` writes one: the same messages with the same uuids. ``upto_last_turn``:
    only the lines before its last prompt (the parent session, before it was resumed)."""
    from ccrl.agent.capture.transcript import parse_transcript

    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    if upto_last_turn:
        last = parse_transcript(source).turns[-1].uuid
        cut = next(i for i, line in enumerate(lines) if f'"uuid":"{last}"' in line.replace(" ", ""))
        lines = lines[:cut]
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{session_id}.jsonl"
    out.write_text("".join(_with_session_id(line, session_id, cwd) for line in lines), encoding="utf-8")
    return out


# --- session families and the split -------------------------------------------------------------------


def _loose_dataset_filters(monkeypatch) -> None:
    for key, value in {"MIN_TOOL_CALLS": "0", "MIN_REASONING_CHARS": "0", "MIN_REASONING_STEPS": "0",
                       "DROP_INCOMPLETE": "false", "DROP_DUPLICATE_PROMPTS": "false",
                       "DROP_NEAR_DUPLICATE_PROMPTS": "false", "MIN_EVAL_DECISIONS": "0",
                       "MAX_EVAL_FRACTION": "0.99", "FORMAT": "trajectory"}.items():
        monkeypatch.setenv(f"CCRL_DATASET__{key}", value)


def test_a_resumed_session_stays_in_its_parents_split(ccrl_home, tmp_path, monkeypatch):
    """The parent session ends after its first prompt; the resumed session repeats it (same
    uuids) and goes on. Their own hashes put them on opposite sides of the split; the family
    goes where the parent goes."""
    from ccrl.agent.capture.importer import import_transcripts, peek_session_id
    from ccrl.agent.core.config import get_settings, reset_settings_cache
    from ccrl.agent.datasets import datasets as ds
    from ccrl.agent.datasets.session_lineage import family_of, lineage_roots

    parent_id = peek_session_id(TWO_TURNS)
    parent_bucket = ds.session_bucket(parent_id)
    child_id = next(f"resumed-{k}" for k in range(1000)
                    if abs(ds.session_bucket(f"resumed-{k}") - parent_bucket) > ds.HASH_SPACE // 4
                    and max(ds.session_bucket(f"resumed-{k}"), parent_bucket) < 0.95 * ds.HASH_SPACE)
    child_bucket = ds.session_bucket(child_id)
    write_copy(TWO_TURNS, tmp_path / "parent", parent_id, upto_last_turn=True)
    write_copy(TWO_TURNS, tmp_path / "child", child_id)
    _loose_dataset_filters(monkeypatch)
    fraction = (parent_bucket + child_bucket) / 2 / ds.HASH_SPACE  # between the two: they split apart
    monkeypatch.setenv("CCRL_DATASET__EVAL_FRACTION", f"{fraction:.6f}")
    reset_settings_cache()
    settings = get_settings()
    assert import_transcripts(tmp_path / "parent", settings).traces >= 1
    child = import_transcripts(tmp_path / "child", settings)
    assert child.duplicates_skipped >= 1 and child.traces >= 1  # the repeated turn is stored once

    assert lineage_roots(settings) == {parent_id: parent_id, child_id: parent_id}
    members, uuids = family_of(settings, {parent_id})
    assert members == {parent_id, child_id} and len(uuids) > 10

    result = ds.build_dataset(settings)
    sides: dict[str, set[str]] = {}
    for split in ("train", "eval"):
        for line in open(Path(result.path) / "jsonl" / f"{split}.jsonl", encoding="utf-8"):
            sides.setdefault(json.loads(line)["session_id"], set()).add(split)
    parent_side = "eval" if parent_bucket < fraction * ds.HASH_SPACE else "train"
    assert sides == {parent_id: {parent_side}, child_id: {parent_side}}


# --- eval --sessions --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    from ccrl.trainers.base_models import build_tiny_llama

    root = tmp_path_factory.mktemp("eval-sessions")
    data = write_dataset_version(root / "datasets" / "v1")
    base = build_tiny_llama(root / "base-model", embedded_tokenizer_dir(), hidden_size=64,
                            intermediate_size=128, num_heads=2, num_kv_heads=1)
    return {"data": data, "base": base, "trained": train_tiny_agent(base, data, root / "trained")}


SEEN_BY_ID = TRANSCRIPTS / "claude-code-viewer" / "1af7fc5e-8455-4414-9ccd-011d40f70b2a.jsonl"
SMALL = {"CCRL_EVAL__DECISION_MAX_NEW_TOKENS": "12", "CCRL_EVAL__THREADS": "1", "CCRL_EVAL__EVALUATE_GGUF": "false",
         "CCRL_EVAL__RESAMPLES": "200"}


@pytest.fixture
def candidate_store(ccrl_home, monkeypatch, trained, tmp_path):
    """A store holding the candidate (model version 1 on dataset v1) and one real session
    (``SEEN_BY_ID``'s, imported), which the dataset's train split names: the candidate trained
    on it. Returns the folder of transcripts to evaluate on: every fixture transcript, plus a
    resumed copy of the trained session under a new id, plus a copy of a session whose project
    opted out with ``.ccrl-ignore``."""
    from ccrl.agent.capture.importer import import_transcripts, peek_session_id
    from ccrl.agent.core.config import reset_settings_cache
    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import DatasetVersion, ModelVersion, TrainingRun

    for key, value in SMALL.items():
        monkeypatch.setenv(key, value)
    reset_settings_cache()
    dataset = tmp_path / "v1"
    shutil.copytree(trained["data"], dataset)
    seen_id = peek_session_id(SEEN_BY_ID)
    row = json.loads((dataset / "jsonl" / "train.jsonl").read_text().splitlines()[0])
    with open(dataset / "jsonl" / "train.jsonl", "a") as fh:
        fh.write(json.dumps({**row, "session_id": seen_id}) + "\n")
    assert import_transcripts(SEEN_BY_ID).traces == 1
    out = ccrl_home / "models" / "sft" / "run-1"
    shutil.copytree(trained["trained"], out / "merged")
    with session_scope() as session:
        version = DatasetVersion(number=1, path=str(dataset), config={})
        session.add(version)
        session.flush()
        run = TrainingRun(phase="sft", status="completed", dataset_version_id=version.id, output_dir=str(out),
                          base_model="tiny", config={"model_source": str(trained["base"])})
        session.add(run)
        session.flush()
        session.add(ModelVersion(number=1, status="candidate", sft_run_id=run.id, dataset_version_id=version.id))

    folder = tmp_path / "sessions"
    shutil.copytree(TRANSCRIPTS, folder / "fixtures")
    write_copy(SEEN_BY_ID, folder / "resumed", "resumed-from-a-trained-session")
    project = tmp_path / "private-project"
    project.mkdir()
    (project / ".ccrl-ignore").write_text("")
    write_copy(TRANSCRIPTS / "agentlogs" / "crud.jsonl", folder / "opted-out", "opted-out-session",
               cwd=str(project / "src"))
    return folder


def _store_snapshot(home: Path) -> tuple[bytes, dict[str, int]]:
    from ccrl.agent.store.db import dispose_engines

    dispose_engines()  # closes the connections: the WAL is checkpointed into the file
    path = home / "ccrl.db"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        counts = {t: db.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    return path.read_bytes(), counts


def test_eval_sessions_on_the_fixture_transcripts(candidate_store, ccrl_home):
    from typer.testing import CliRunner

    from ccrl.agent.capture.importer import discover
    from ccrl.agent.cli import app
    from ccrl.trainers.metrics import SESSION_BOOTSTRAP

    before = _store_snapshot(ccrl_home)
    result = CliRunner().invoke(app, ["eval", "--sessions", str(candidate_store), "--max-decisions", "16",
                                      "--seed", "3", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert _store_snapshot(ccrl_home) == before  # nothing written: same bytes, same rows

    # The exact shape asked for.
    assert {"decisions", "sessions", "skipped", "excluded_seen", "candidate", "models", "paired",
            "interval_method"} <= set(report)
    assert set(report["models"]) == {"candidate", "base", "bigram", "most_frequent"}
    for name, metrics in report["models"].items():
        assert set(metrics) == {"next_action", "tool_name", "arguments"}
        for metric, entry in metrics.items():
            if name in ("bigram", "most_frequent") and metric == "arguments":
                assert entry is None
                continue
            assert set(entry) == {"value", "low", "high", "n"} and isinstance(entry["n"], int)
            assert (entry["value"] is None) == (entry["n"] == 0)
            if entry["n"]:
                assert entry["low"] <= entry["value"] <= entry["high"]
    assert set(report["paired"]) == {"candidate_vs_bigram", "candidate_vs_base", "candidate_vs_most_frequent"}
    for diff in report["paired"].values():
        assert diff["metric"] == "next_action" and diff["n"] == 16 and diff["low"] <= diff["diff"] <= diff["high"]
    assert report["candidate"] == {"version": 1, "run": 1, "form": "hf", "dataset_version": 1,
                                   "weights_sha256": report["candidate"]["weights_sha256"]}
    assert len(report["candidate"]["weights_sha256"]) == 64
    assert report["interval_method"].startswith(SESSION_BOOTSTRAP) and "200 resamples, seed 3" in report["interval_method"]

    # Counts: every session found; the opted-out one and the two seen in training left out.
    sessions = {e.session_id for e in discover(candidate_store)}
    assert report["sessions_found"] == len(sessions) == 14  # 12 fixture sessions and the two copies
    assert report["sessions_opted_out"] == 1
    # Seen in training: the trained session itself, its resumed copy, and fe5e1c67, a real
    # continuation of it (its first line, a summary, names 1af7fc5e's last message as leafUuid).
    assert report["excluded_seen"] == 3
    assert report["decisions"] == 16 and report["models"]["candidate"]["next_action"]["n"] == 16
    assert report["skipped"]["not_sampled"] > 0
    assert 2 <= report["sessions"] <= len(sessions) - 3
    chains = report["chains"]
    assert chains["main"]["decisions"] + chains["subagent"]["decisions"] == 16
    for chain in chains.values():
        assert chain["models"]["candidate"]["next_action"]["n"] == chain["decisions"]

    # Seeded: the same command gives the same numbers; the human form names the method.
    again = CliRunner().invoke(app, ["eval", "--sessions", str(candidate_store), "--max-decisions", "16",
                                     "--seed", "3", "--json"])
    assert {k: v for k, v in json.loads(again.stdout).items() if k != "seconds"} == \
        {k: v for k, v in report.items() if k != "seconds"}


def test_eval_sessions_opt_outs_and_bad_input(candidate_store, ccrl_home, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from ccrl.agent.cli import app

    only_opted_out = tmp_path / "only-opted-out"
    shutil.copytree(candidate_store / "opted-out", only_opted_out)
    result = CliRunner().invoke(app, ["eval", "--sessions", str(only_opted_out)])
    assert result.exit_code == 1 and "1 opted out" in result.output
    missing = CliRunner().invoke(app, ["eval", "--sessions", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and "no such file or directory" in missing.output
    both = CliRunner().invoke(app, ["eval", "--sessions", str(only_opted_out), "--fold", "dev"])
    assert both.exit_code == 2
    monkeypatch.setenv("CCRL_DISABLE", "1")
    disabled = CliRunner().invoke(app, ["eval", "--sessions", str(candidate_store)])
    assert disabled.exit_code == 1 and "CCRL_DISABLE is set" in disabled.output
