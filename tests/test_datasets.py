"""The dataset builder and ``ccrl build-dataset``: on the imported Claude Code fixtures and on
hand-made traces stored in a real SQLite store."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import datasets as hf_datasets
import pytest
from sqlmodel import Session as DBSession
from sqlmodel import select
from typer.testing import CliRunner

from ccrl.agent.capture.importer import import_transcripts
from ccrl.agent.cli import app
from ccrl.agent.core.config import get_settings, reset_settings_cache
from ccrl.agent.core.dataset_config import DatasetSettings
from ccrl.agent.datasets import datasets as ds
from ccrl.agent.datasets.dataset_filters import MinHasher, PromptDeduper, jaccard, prompt_features
from ccrl.agent.store.db import dispose_engines, get_engine, session_scope
from ccrl.agent.store.models import DatasetVersion, Session, ToolCall, Trace
from ccrl.trainers import conversation as conv
from conftest import TRANSCRIPTS
from test_signals import TraceBuilder


def use_home(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    monkeypatch.setenv("CCRL_HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home.parent / "xdg-config"))
    for name in ("CCRL_DATABASE_URL", "CCRL_CONFIG", "CCRL_DISABLE"):
        monkeypatch.delenv(name, raising=False)
    reset_settings_cache()
    dispose_engines()


def build_cli(*args: str) -> dict:
    result = CliRunner().invoke(app, ["build-dataset", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def fixtures_v1(tmp_path_factory):
    """The fixture transcripts imported into a fresh store, then `ccrl build-dataset` once."""
    home = tmp_path_factory.mktemp("fixtures") / "home"
    with pytest.MonkeyPatch.context() as mp:
        use_home(mp, home)
        report = import_transcripts(TRANSCRIPTS)
        assert report.errors == [] and report.traces > 20
        result = build_cli()
        with DBSession(get_engine()) as db:
            rows = list(db.exec(select(DatasetVersion)))
            traces = {t.id: t for t in db.exec(select(Trace))}
            for t in traces.values():
                db.expunge(t)
        yield {"home": home, "result": result, "rows": rows, "traces": traces, "report": report}
        dispose_engines()
        reset_settings_cache()


# --------------------------------------------------------------------------------------------
# On the imported fixtures


def test_fixture_build_writes_both_formats_the_card_the_split_and_a_row(fixtures_v1):
    result, home = fixtures_v1["result"], fixtures_v1["home"]
    assert result["created"] is True and result["number"] == 1
    path = Path(result["path"])
    assert path == home / "datasets" / "v1"
    for name in ("README.md", "dataset_dict.json", "tools.json", "train", "eval", "rl_prompts",
                 *(f"jsonl/{f}" for f in ds.JSONL_FILES)):
        assert (path / name).exists(), name
    (row,) = fixtures_v1["rows"]
    assert (row.number, row.path, row.content_hash) == (1, str(path), result["content_hash"])
    assert row.trace_count == result["trace_count"] > 0
    assert row.config["formats"] == ["trajectory", "workflow"]
    stats = row.stats
    assert stats["traces_seen"] == fixtures_v1["report"].traces
    assert stats["traces_kept"] + sum(stats["dropped"].values()) + sum(stats["bad_input"].values()) \
        == stats["traces_seen"]
    assert stats["splits"]["train"]["rows"] == {"trajectory": stats["splits"]["train"]["traces"],
                                                "workflow": stats["splits"]["train"]["traces"]}
    assert row.train_count + row.eval_count == 2 * row.trace_count


def test_fixture_dataset_loads_with_load_from_disk(fixtures_v1):
    path = Path(fixtures_v1["result"]["path"])
    data = hf_datasets.load_from_disk(str(path))
    assert set(data) == {"train", "eval"}
    stats = fixtures_v1["rows"][0].stats
    assert data["train"].num_rows == fixtures_v1["rows"][0].train_count
    assert data["eval"].num_rows == fixtures_v1["rows"][0].eval_count
    assert set(data["train"].column_names) == {"messages", "tools", "format", "trace_id", "session_id",
                                               "parent_id", "agent_type", "decisions"}
    for row in data["train"]:
        tools = json.loads(row["tools"])
        names = {t["function"]["name"] for t in tools}
        roles = [m["role"] for m in row["messages"]]
        assert roles[:2] == ["system", "user"] and roles[-1] == "assistant"
        for message in row["messages"]:
            for call in message["tool_calls"] or []:
                assert call["function"]["name"] in names
                assert isinstance(json.loads(call["function"]["arguments"]), dict)
        if row["format"] == "workflow":
            assert len(row["messages"]) == 3
            assert conv.parse_workflow(row["messages"][2]["content"]).errors == []
        else:
            assert row["decisions"] == conv.next_action_decisions(row["messages"])
            for message in row["messages"]:
                if message["role"] == "assistant":  # the text form round-trips through the parser
                    parsed = conv.parse_assistant_text(conv.render_assistant_text(message))
                    assert parsed.errors == [] and len(parsed.calls) == len(message["tool_calls"] or [])
    rl = hf_datasets.load_from_disk(str(path / "rl_prompts"))
    assert rl["train"].num_rows == stats["splits"]["train"]["rl_prompts"]
    first = rl["train"][0]
    assert [m["role"] for m in first["prompt"]] == ["system", "user"]
    assert json.loads(first["reference_signals"])["tool_sequence"] == first["reference_tool_sequence"]


def test_fixture_split_is_by_session_and_keeps_subagent_links(fixtures_v1):
    path = Path(fixtures_v1["result"]["path"])
    traces = fixtures_v1["traces"]
    seen: dict[str, set[str]] = {}
    parent_links = 0
    for split in ("train", "eval"):
        for line in (path / "jsonl" / f"{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            seen.setdefault(row["session_id"], set()).add(split)
            stored = traces[row["trace_id"]]
            assert row["session_id"] == stored.session_id and row["parent_id"] == stored.parent_id
            parent_links += row["parent_id"] is not None
            expected = "eval" if ds.session_bucket(row["session_id"]) < fixtures_v1["rows"][0].config["eval_threshold"] \
                else "train"
            assert split == expected
    assert all(len(splits) == 1 for splits in seen.values())
    assert parent_links > 0  # subagent runs are in the dataset, linked to their parents
    assert fixtures_v1["rows"][0].stats["subagent_traces_kept"] > 0


def test_fixture_card_reports_counts_filters_split_and_histograms(fixtures_v1):
    row = fixtures_v1["rows"][0]
    card = (Path(row.path) / "README.md").read_text()
    stats = row.stats
    assert f"traces seen: **{stats['traces_seen']}**, kept: **{stats['traces_kept']}**" in card
    for name, count in stats["dropped"].items():
        assert f"| `{name}` |" in card and card.split(f"| `{name}` |")[1].split("\n")[0].endswith(f"| {count} |")
    eval_decisions = stats["splits"]["eval"]["next_action_decisions"]
    assert "Held-out next-action decisions" in card and f"**{eval_decisions}**" in card
    assert "### Tool calls" in card and "### Exploration depth" in card and "### Behaviour signals" in card
    top_tool, top_count = next(iter(stats["tools"].items()))
    assert f"| `{top_tool}` | {top_count} |" in card
    assert row.content_hash in card
    # Decision windows: the budgets, every decision trained, the examples.
    train = stats["splits"]["train"]["windows"]
    assert train["decisions"] > 0 and train["share_trained"] == 1.0 and train["examples"] >= stats["splits"]["train"]["traces"]
    assert f"windows of at most **{row.config['window_tokens']} tokens**" in card
    assert f"tool-result budget of **{row.config['dataset']['tool_result_tokens']} tokens**" in card
    assert f"| train | {train['decisions']} | {train['decisions']} | 100.00% | {train['examples']} |" in card


def test_fixture_files_are_private(fixtures_v1):
    path = Path(fixtures_v1["result"]["path"])
    for dirpath, _dirs, files in os.walk(path):
        assert stat.S_IMODE(os.stat(dirpath).st_mode) == 0o700
        for name in files:
            assert stat.S_IMODE(os.stat(os.path.join(dirpath, name)).st_mode) == 0o600


def test_fixture_rows_render_through_a_chat_template(fixtures_v1):
    """The rows feed a Jinja chat template that writes assistant turns as the conversation
    module does (the SFT templates are tested against it again in the SFT tests)."""
    from jinja2 import Environment

    template = Environment().from_string(
        "{% for m in messages %}<|{{ m.role }}|>"
        "{% if m.role == 'assistant' %}{{ m.content or '' }}"
        "{% if m.tool_calls %}{% for c in m.tool_calls %}{% if m.content or not loop.first %}\n{% endif %}"
        '<tool_call>{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments }}}</tool_call>'
        "{% endfor %}{% endif %}{% else %}{{ m.content }}{% endif %}<|end|>{% endfor %}")
    data = hf_datasets.load_from_disk(fixtures_v1["result"]["path"])
    for row in data["train"]:
        text = template.render(messages=row["messages"])
        expected = "".join(f"<|{m['role']}|>" + (conv.render_assistant_text(m) if m["role"] == "assistant"
                                                  else m["content"]) + "<|end|>" for m in row["messages"])
        assert text == expected


# --------------------------------------------------------------------------------------------
# Rebuilds


def test_rebuild_without_new_traces_is_identical(ccrl_home):
    import_transcripts(TRANSCRIPTS)
    first = build_cli()
    second = build_cli()
    assert second["created"] is False
    assert (second["number"], second["content_hash"], second["path"]) == \
        (first["number"], first["content_hash"], first["path"])
    assert sorted(p.name for p in (ccrl_home / "datasets").iterdir() if not p.name.startswith(".")) == ["v1"]
    forced = build_cli("--force")
    assert forced["created"] is True and forced["number"] == 2 and forced["content_hash"] == first["content_hash"]
    v1, v2 = (ccrl_home / "datasets" / "v1" / "jsonl"), (ccrl_home / "datasets" / "v2" / "jsonl")
    for name in ds.JSONL_FILES:
        assert (v1 / name).read_bytes() == (v2 / name).read_bytes()
    with DBSession(get_engine()) as db:
        assert [v.number for v in db.exec(select(DatasetVersion))] == [1, 2]


def test_a_killed_builds_staging_folder_is_cleaned_up(ccrl_home):
    store([good_trace("s1", "a good task to learn from")])
    stale = ccrl_home / "datasets" / ".ccrl-staging-0123456789ab"
    (stale / "jsonl").mkdir(parents=True)
    (stale / "jsonl" / "train.jsonl").write_text("{}\n")
    result = ds.build_dataset(get_settings())
    assert not stale.exists()
    assert sorted(p.name for p in (ccrl_home / "datasets").iterdir() if p.is_dir()) == ["v1"]
    assert result.number == 1


def test_page_size_does_not_change_the_result(ccrl_home, monkeypatch):
    import_transcripts(TRANSCRIPTS)
    whole = ds.build_dataset(get_settings())
    monkeypatch.setenv("CCRL_DATASET__PAGE_SIZE", "2")
    reset_settings_cache()
    paged = ds.build_dataset(get_settings(), force=True)
    assert paged.content_hash == whole.content_hash and paged.number == 2


def test_out_dir_and_formats(ccrl_home, tmp_path):
    import_transcripts(TRANSCRIPTS)
    out = tmp_path / "my-dataset"
    result = build_cli("--format", "workflow", "--out", str(out))
    assert result["path"] == str(out) and result["created"]
    data = hf_datasets.load_from_disk(str(out))
    assert set(data["train"]["format"]) == {"workflow"}
    again = CliRunner().invoke(app, ["build-dataset", "--out", str(out)])
    assert again.exit_code == 1 and "already exists" in again.stderr
    traj = build_cli("--format", "trajectory")
    assert traj["number"] == 2 and traj["content_hash"] != result["content_hash"]


# --------------------------------------------------------------------------------------------
# Hand-made traces in a real store


def store(traces: list[dict]) -> list[int]:
    """Store trace dicts (records form) as rows; tool_use ids made unique per trace."""
    ids = []
    with session_scope() as db:
        for t in traces:
            if db.get(Session, t["session_id"]) is None:
                db.add(Session(id=t["session_id"]))
                db.flush()
            n = db.exec(select(Trace)).all()
            prefix = f"t{len(n)}_"
            steps = json.loads(json.dumps(t["steps"]))
            for step in steps:
                if step.get("tool_use_id"):
                    step["tool_use_id"] = prefix + step["tool_use_id"]
            row = Trace(session_id=t["session_id"], key=f"key-{len(n)}", seq=len(n), prompt=t["prompt"],
                        response=t.get("response", ""), steps=steps, status=t.get("status", "complete"),
                        parent_id=t.get("parent_id"), agent_id=t.get("agent_id"), cwd=t.get("cwd"))
            db.add(row)
            db.flush()
            results = {s["tool_use_id"]: s for s in steps if s.get("kind") == "tool_result"}
            seq = 0
            for s in steps:
                if s.get("kind") == "tool_use":
                    res = results.get(s["tool_use_id"], {})
                    db.add(ToolCall(trace_id=row.id, tool_use_id=s["tool_use_id"], seq=seq, name=s["name"],
                                    input=s["input"] if isinstance(s["input"], dict) else {},
                                    output=res.get("output"), is_error=bool(res.get("is_error"))))
                    seq += 1
            ids.append(row.id)
    return ids


def good_trace(session: str, prompt: str, **extra) -> dict:
    return (TraceBuilder(prompt)
            .think("First, I need to see how the module is laid out before changing anything.")
            .say("Let me look at the code.")
            .calls(("Read", {"file_path": f"/repo/{session}.py"}), ("Grep", {"pattern": "def main"}))
            .say("Now I'll make the change.")
            .call("Edit", {"file_path": f"/repo/{session}.py", "old_string": "a", "new_string": "b"})
            .say("Changed it.")
            .build(session_id=session, **extra))


def test_bad_input_is_skipped_and_counted(ccrl_home):
    corrupt = good_trace("s-bad-1", "corrupt input please")
    corrupt["steps"][2]["input"] = "{not json"
    unanswered = good_trace("s-bad-2", "no answer here please")
    unanswered["steps"].pop()  # the final answer
    ids = store([good_trace("s-ok", "a good task to learn from"), corrupt, unanswered])
    result = ds.build_dataset(get_settings())
    assert result.trace_count == 1
    assert result.stats["bad_input"] == {"corrupt_tool_input": 1, "empty_response": 1}
    assert result.stats["bad_input_examples"] == {"corrupt_tool_input": [ids[1]], "empty_response": [ids[2]]}
    card = (Path(result.path) / "README.md").read_text()
    assert "| `corrupt_tool_input` | 1 |" in card and "| `empty_response` | 1 |" in card


def test_filters_drop_and_count(ccrl_home, monkeypatch):
    monkeypatch.setenv("CCRL_DATASET__DROP_REDACTED_PROMPTS", "true")
    monkeypatch.setenv("CCRL_DATASET__MAX_TOKENS", "600")
    reset_settings_cache()
    long_prompt = "Refactor the payment module so that refunds and partial captures share one code path"
    one_call = TraceBuilder("just one call").say("Let me look.").call("Read", {"file_path": "/a"}).say("ok") \
        .build(session_id="s4")
    no_reasoning = TraceBuilder("no reasoning at all").call("Read", {"file_path": "/a"}) \
        .call("Read", {"file_path": "/b"}).say("ok").build(session_id="s5")
    huge = good_trace("s6", "a very long one")
    huge["steps"][-1]["text"] = "word " * 2000
    store([
        good_trace("s1", long_prompt),
        good_trace("s2", "  refactor the PAYMENT module so that refunds and partial captures share one code path "),
        good_trace("s3", long_prompt + ", please."),
        good_trace("s3", "Interrupted work", status="interrupted"),
        good_trace("s3", "Still running", status="open"),
        good_trace("s3", "use the key [REDACTED:openai_key] to call the API"),
        one_call, no_reasoning, huge,
        good_trace("s7", "Something else entirely different"),
    ])
    result = ds.build_dataset(get_settings())
    dropped = {k: v for k, v in result.stats["dropped"].items() if v}
    assert dropped == {"duplicate_prompt": 1, "near_duplicate_prompt": 1, "incomplete": 2, "redacted_prompt": 1,
                       "too_few_tool_calls": 1, "too_little_reasoning": 1, "too_long": 1}
    assert result.trace_count == 2


def test_a_long_trace_is_cut_into_windows_that_train_every_decision(ccrl_home, monkeypatch):
    monkeypatch.setenv("CCRL_DATASET__WINDOW_TOKENS", "300")
    monkeypatch.setenv("CCRL_DATASET__FORMAT", "trajectory")
    reset_settings_cache()
    builder = TraceBuilder("Rename the helper in every module of the package").think("First, I need to see how each module uses the helper before changing anything.")
    for i in range(40):
        builder = builder.say(f"Module {i} next.").call("Read", {"file_path": f"/repo/m{i}.py"},
                                                        output=f"def helper_{i}():\n    pass\n" * 3)
    store([builder.say("Renamed it everywhere.").build(session_id="s1")])
    result = ds.build_dataset(get_settings())
    windows = result.stats["splits"]["train"]["windows"] if result.train_count else result.stats["splits"]["eval"]["windows"]
    assert result.config["window_tokens"] == 300
    assert windows["decisions"] == 41 and windows["decisions_trained"] == 41 and windows["share_trained"] == 1.0
    assert 41 > windows["examples"] > 5  # several windows, some holding more than one decision
    assert windows["by_format"] == {"trajectory": {"decisions": 41, "decisions_trained": 41,
                                                   "examples": windows["examples"]}}


def test_subagents_can_be_excluded(ccrl_home, monkeypatch):
    (parent,) = store([good_trace("s1", "parent task")])
    store([good_trace("s1", "the subagent's own task", parent_id=parent, agent_id="a1")])
    assert ds.build_dataset(get_settings()).trace_count == 2
    monkeypatch.setenv("CCRL_DATASET__INCLUDE_SUBAGENTS", "false")
    reset_settings_cache()
    result = ds.build_dataset(get_settings())
    assert result.trace_count == 1 and result.stats["dropped"]["subagent"] == 1


def test_no_usable_traces_is_a_clear_error(ccrl_home):
    store([TraceBuilder("hi").say("Hello!").build(session_id="s1")])
    result = CliRunner().invoke(app, ["build-dataset"])
    assert result.exit_code == 1
    assert "no usable traces: 1 seen; dropped by filters (too_few_tool_calls: 1)" in result.stderr
    assert "Traceback" not in result.output


def test_missing_datasets_package_names_the_extra(ccrl_home, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ds.DatasetsMissing, match=r"pip install 'ccrl\[train\]'"):
        ds.build_dataset(get_settings())
    result = CliRunner().invoke(app, ["build-dataset"])
    assert result.exit_code == 1 and "pip install 'ccrl[train]'" in result.stderr


def test_split_is_stable_when_data_is_added(ccrl_home, monkeypatch):
    monkeypatch.setenv("CCRL_DATASET__MIN_EVAL_DECISIONS", "0")
    monkeypatch.setenv("CCRL_DATASET__EVAL_FRACTION", "0.25")
    reset_settings_cache()
    store([good_trace(f"first-{n}", f"task number {n} of the first batch") for n in range(24)])
    v1 = ds.build_dataset(get_settings())
    eval_v1 = {json.loads(line)["trace_id"] for line in (Path(v1.path) / "jsonl/eval.jsonl").read_text().splitlines()}
    assert 0 < len(eval_v1) < 24
    store([good_trace(f"second-{n}", f"task number {n} of the second batch") for n in range(24)])
    v2 = ds.build_dataset(get_settings())
    eval_v2 = {json.loads(line)["trace_id"] for line in (Path(v2.path) / "jsonl/eval.jsonl").read_text().splitlines()}
    assert eval_v1 <= eval_v2
    train_v2 = {json.loads(line)["trace_id"] for line in (Path(v2.path) / "jsonl/train.jsonl").read_text().splitlines()}
    assert not train_v2 & eval_v2 and len(train_v2 | eval_v2) == 48


def test_eval_grows_by_whole_sessions_to_the_decision_target_within_the_cap():
    cfg = DatasetSettings(eval_fraction=0.0, min_eval_decisions=10, max_eval_fraction=0.7)
    sessions = {"a": (100, 4), "b": (200, 4), "c": (300, 4), "d": (400, 8)}
    threshold = ds.eval_threshold(sessions, cfg, previous=0)
    assert threshold == 301  # a, b, c: 12 decisions ≥ 10, d never considered
    capped = DatasetSettings(eval_fraction=0.0, min_eval_decisions=100, max_eval_fraction=0.3)
    assert ds.eval_threshold(sessions, capped, previous=0) == 101  # a (4 of 20) fits, b would exceed 6
    assert ds.eval_threshold(sessions, capped, previous=350) == 350  # never shrinks
    assert ds.session_bucket("abc") == ds.session_bucket("abc") < ds.HASH_SPACE


def test_prompt_deduper():
    dedupe = PromptDeduper(DatasetSettings())
    base = "Please refactor the payment module so refunds and partial captures share one code path"
    assert dedupe.check_and_add(base) is None
    assert dedupe.check_and_add(base.upper() + "  ") == "duplicate_prompt"
    assert dedupe.check_and_add(base + " today") == "near_duplicate_prompt"
    assert dedupe.check_and_add("Write a haiku about the sea and the wind over the dunes at night") is None
    assert dedupe.check_and_add("continue") is None
    assert dedupe.check_and_add("continue") == "duplicate_prompt"
    a, b = prompt_features(base), prompt_features(base + " today")
    assert jaccard(a, b) == pytest.approx(27 / 29)  # 14 words + 13 pairs; "today" adds a word and a pair
    hasher = MinHasher()
    estimate = float((hasher.signature(a) == hasher.signature(b)).mean())
    assert abs(estimate - jaccard(a, b)) < 0.1
    assert (hasher.signature(a) == MinHasher().signature(a)).all()  # same signature in every build
