"""End to end: the real Claude Code CLI, scripted by a local Messages API, captured by ccrl.

One isolated user (``captured``) installs ccrl's hooks with ``ccrl hooks install --scope user``
and runs every scenario as a real ``claude -p`` process, all at the same time (so the store
sees several sessions at once), then ``ccrl ingest``. A second isolated user (``plain``) runs the
multi-step scenario without hooks, to compare Claude's output. The tests then check the raw hook
events and the traces that ``ccrl traces list/show --json`` report against the scripts that
produced them (tests/e2e/scenarios.py).
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from . import scenarios as sc
from .harness import ClaudeRun, Sandbox
from .scripted_api import ScriptedAPI

# Needs the real Claude Code CLI (installed by `make setup`); `-m "not slow"` leaves these out.
pytestmark = pytest.mark.slow

CONCURRENT = 3


@dataclass
class Case:
    """A scenario as run: its unique key, the scenario, the project it ran in and the outcome."""

    key: str
    scenario: sc.Scenario
    project: Path
    run: ClaudeRun | None = None

    @property
    def prompt(self) -> str:
        return self.scenario.prompt_for(self.key)


@dataclass
class World:
    """Everything the scenarios produced, collected once for all tests of this module."""

    captured: Sandbox
    plain: Sandbox
    cases: dict[str, Case]
    plain_case: Case
    events_before_ingest: list[dict[str, Any]]
    data_files_before_ingest: dict[str, bytes]
    traces: list[dict[str, Any]]
    listed: list[dict[str, Any]]
    listed_after_second_ingest: list[dict[str, Any]]
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase, for the report

    def trace(self, name: str) -> dict[str, Any]:
        """The one trace whose prompt is this case's prompt."""
        prompt = self.cases[name].prompt
        found = [t for t in self.traces if t["prompt"] == prompt]
        assert len(found) == 1, f"{len(found)} traces with prompt {prompt!r}; prompts: {[t['prompt'] for t in self.traces]}"
        return found[0]

    def events(self, name: str) -> list[dict[str, Any]]:
        """The raw hook events of this case's session(s), in arrival order."""
        session_ids = {e["session_id"] for e in self.events_before_ingest if e.get("prompt") == self.cases[name].prompt}
        assert len(session_ids) == 1, f"UserPromptSubmit for {name}: sessions {session_ids}"
        return [e for e in self.events_before_ingest if e.get("session_id") in session_ids]


def _unique(name: str) -> str:
    return f"{name}-{secrets.token_hex(4)}"


def _add(api: ScriptedAPI, sandbox: Sandbox, scenario_builder, name: str, project: Path | None = None, *extra) -> Case:
    project = project or sandbox.project(name)
    scenario = scenario_builder(project, *extra)
    return Case(api.add_script(_unique(name), scenario.script), scenario, project)


def _data_files(root: Path) -> dict[str, bytes]:
    """Every file under ``root``, byte for byte (SQLite files, WAL and shm included)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(sandbox_factory, scripted_api: ScriptedAPI, e2e_timings: dict[str, float]) -> World:
    clock = time.monotonic()
    timings = e2e_timings

    def lap(label: str) -> None:
        nonlocal clock
        now = time.monotonic()
        timings[label] = round(now - clock, 2)
        clock = now

    captured = sandbox_factory("captured")
    plain = sandbox_factory("plain")
    captured.install_hooks()
    lap("ccrl hooks install")

    cases: dict[str, Case] = {
        "multi-step": _add(scripted_api, captured, sc.multi_step, "multi-step"),
        "failed-retry": _add(scripted_api, captured, sc.failed_then_retry, "failed-retry"),
        "parallel": _add(scripted_api, captured, sc.parallel_reads, "parallel"),
        "secrets": _add(scripted_api, captured, sc.env_secrets, "secrets"),
    }
    continue_project = captured.project("continue")
    first, second = sc.continued(continue_project)
    cases["continue-1"] = Case(scripted_api.add_script(_unique("continue-1"), first.script), first, continue_project)
    cases["continue-2"] = Case(scripted_api.add_script(_unique("continue-2"), second.script), second, continue_project)
    shared = captured.project("concurrent")  # several sessions at once, in the same project
    for i in range(CONCURRENT):
        cases[f"concurrent-{i}"] = _add(scripted_api, captured, sc.concurrent, f"concurrent-{i}", shared, i)
    # The same scenario, in the same kind of project, run by a user without ccrl's hooks.
    plain_project = plain.project("multi-step")
    plain_case = _add(scripted_api, plain, sc.multi_step, "multi-step", plain_project)

    # Every session at once, except the --continue prompt, which must follow its first prompt.
    pending = {name: captured.start_claude(case.prompt, case.project) for name, case in cases.items() if name != "continue-2"}
    plain_pending = plain.start_claude(plain_case.prompt, plain_project)
    cases["continue-1"].run = pending.pop("continue-1").wait()
    if cases["continue-1"].run.returncode == 0:
        pending["continue-2"] = captured.start_claude(cases["continue-2"].prompt, continue_project, continue_session=True)
    for name, started in pending.items():
        cases[name].run = started.wait()
    plain_case.run = plain_pending.wait()
    lap(f"{len(cases) + 1} claude runs (concurrent)")
    for case in [*cases.values(), plain_case]:
        assert case.run is not None, f"{case.key} did not run: its --continue predecessor failed"
        case.run.check()
    assert not scripted_api.errors, scripted_api.errors

    events = captured.inbox_events()
    data_before = _data_files(captured.ccrl_home)
    captured.ccrl("ingest")
    lap("ccrl ingest")
    traces = captured.traces()
    listed = captured.trace_list()
    lap("ccrl traces list + show")
    captured.ccrl("ingest")
    traces_again = captured.trace_list()
    lap("second ingest + list")
    timings |= {f"claude {name}": round(case.run.seconds, 2) for name, case in cases.items()}
    return World(captured, plain, cases, plain_case, events, data_before, traces, listed, traces_again, timings)


# --- helpers for assertions ---------------------------------------------------------------


def _transcript_sessions(sandbox: Sandbox, project: Path) -> set[str]:
    """Session ids Claude Code wrote transcripts for in this project (file names, no parsing)."""
    folder = sandbox.home / ".claude" / "projects" / re.sub(r"[^A-Za-z0-9]", "-", str(project))
    return {p.stem for p in folder.glob("*.jsonl")}


def _assert_inputs(trace: dict[str, Any], scenario: sc.Scenario) -> None:
    """Each call's input holds exactly what the script sent (Claude Code may add defaults)."""
    assert len(trace["tool_calls"]) == len(scenario.tool_inputs)
    for call, expected in zip(trace["tool_calls"], scenario.tool_inputs, strict=True):
        assert {k: call["input"].get(k) for k in expected} == expected, call


def _step_outline(trace: dict[str, Any]) -> list[tuple[str, str]]:
    outline = []
    for step in trace["steps"]:
        if step["kind"] in ("thinking", "text"):
            outline.append((step["kind"], step["text"]))
        elif step["kind"] == "tool_use":
            outline.append(("tool_use", step["name"]))
        else:
            outline.append((step["kind"], ""))
    return outline


def _script_outline(scenario: sc.Scenario) -> list[tuple[str, str]]:
    """The steps a complete trace of this script holds, in order (tool results after each message)."""
    outline = []
    for step in scenario.script:
        for block in step:
            outline.append((block.type, block.name if block.type == "tool_use" else block.text))
        outline += [("tool_result", "") for block in step if block.type == "tool_use"]
    return outline


def _assert_complete_trace(world: World, name: str) -> dict[str, Any]:
    """The checks every scenario shares; returns the trace."""
    case = world.cases[name]
    trace = world.trace(name)
    assert trace["prompt"] == case.prompt
    assert trace["response"] == case.scenario.response
    assert trace["reasoning"] == case.scenario.reasoning
    assert trace["tool_sequence"] == case.scenario.tool_sequence
    assert [c["name"] for c in trace["tool_calls"]] == case.scenario.tool_sequence
    _assert_inputs(trace, case.scenario)
    assert _step_outline(trace) == _script_outline(case.scenario)
    assert trace["status"] == "complete"
    assert trace["parent_id"] is None
    assert isinstance(trace["signals"], dict)
    assert trace["cwd"] == str(case.project)
    assert trace["session_id"] in _transcript_sessions(world.captured, case.project)
    # Claude's stdout with -p is the final answer.
    assert case.run.stdout == (case.scenario.response + "\n").encode()
    return trace


# --- raw capture --------------------------------------------------------------------------


def test_hooks_fire_for_every_event_of_every_session(world: World) -> None:
    """Before ingest: each session's raw events are in the inbox, once each, in order."""
    assert world.captured.settings_file.is_file()
    for name, case in world.cases.items():
        if name.startswith("continue"):
            continue
        events = world.events(name)
        names = [e["hook_event_name"] for e in events]
        assert names[:2] == ["SessionStart", "UserPromptSubmit"], (name, names)
        assert names[-2:] == ["Stop", "SessionEnd"], (name, names)
        assert names.count("UserPromptSubmit") == names.count("Stop") == 1, (name, names)
        pre = [e["tool_use_id"] for e in events if e["hook_event_name"] == "PreToolUse"]
        post = [e["tool_use_id"] for e in events if e["hook_event_name"] in ("PostToolUse", "PostToolUseFailure")]
        assert len(pre) == len(set(pre)) and sorted(pre) == sorted(post), (name, names)
        position = {(e["hook_event_name"].startswith("Pre"), e.get("tool_use_id")): n for n, e in enumerate(events)}
        assert all(position[True, i] < position[False, i] for i in pre), (name, names)
        # Every scripted call fires its hooks, except the Edit that fails input validation.
        assert len(pre) == len(case.scenario.tool_sequence) - (name == "failed-retry"), (name, names)
        assert events[-2]["last_assistant_message"] == case.scenario.response

    # --continue resumes the same session: a second SessionStart (source "resume"), same id.
    events = world.events("continue-1")
    assert [e["hook_event_name"] for e in events] == 2 * [
        "SessionStart", "UserPromptSubmit", "PreToolUse", "PostToolUse", "Stop", "SessionEnd"
    ]
    assert [e["source"] for e in events if e["hook_event_name"] == "SessionStart"] == ["startup", "resume"]
    assert [e["prompt"] for e in events if e["hook_event_name"] == "UserPromptSubmit"] == [
        world.cases["continue-1"].prompt,
        world.cases["continue-2"].prompt,
    ]


def test_tool_input_validation_failures_fire_no_hook(world: World) -> None:
    """Claude Code 2.1.328 rejects an Edit whose old_string is missing before PreToolUse: the
    failed call is only in the transcript. A Bash exiting non-zero fires PostToolUseFailure."""
    events = world.events("failed-retry")
    tools = [(e["hook_event_name"], e["tool_name"]) for e in events if "tool_name" in e]
    assert tools == [
        ("PreToolUse", "Read"), ("PostToolUse", "Read"),
        ("PreToolUse", "Edit"), ("PostToolUse", "Edit"),  # the corrected Edit only
        ("PreToolUse", "Bash"), ("PostToolUseFailure", "Bash"),
        ("PreToolUse", "Bash"), ("PostToolUse", "Bash"),
    ]
    failure = next(e for e in events if e["hook_event_name"] == "PostToolUseFailure")
    assert failure["error"] == "Exit code 3"


# --- traces -------------------------------------------------------------------------------


def test_multi_step_session(world: World) -> None:
    trace = _assert_complete_trace(world, "multi-step")
    assert trace["tool_sequence"] == ["Glob", "Grep", "Read", "Edit"]
    assert [c["is_error"] for c in trace["tool_calls"]] == [False] * 4
    assert "app/greet.py" in trace["tool_calls"][0]["output"]
    assert "Helo" in trace["tool_calls"][2]["output"]
    assert (world.cases["multi-step"].project / "app" / "greet.py").read_text().count("Hello,") == 1


def test_failed_tool_calls_and_retries(world: World) -> None:
    trace = _assert_complete_trace(world, "failed-retry")
    assert trace["tool_sequence"] == ["Read", "Edit", "Edit", "Bash", "Bash"]
    assert [c["is_error"] for c in trace["tool_calls"]] == [False, True, False, True, False]
    assert "String to replace not found" in trace["tool_calls"][1]["output"]
    assert "Exit code 3" in trace["tool_calls"][3]["output"]
    assert trace["tool_calls"][4]["output"].strip() == "1"
    results = [s for s in trace["steps"] if s["kind"] == "tool_result"]
    assert [s["is_error"] for s in results] == [False, True, False, True, False]
    assert "port = 9090" in (world.cases["failed-retry"].project / "config.ini").read_text()


def test_parallel_tool_calls(world: World) -> None:
    trace = _assert_complete_trace(world, "parallel")
    a, b = trace["tool_calls"]
    assert (a["name"], b["name"]) == ("Read", "Read")
    assert a["input"]["file_path"].endswith("src/a.txt") and "alpha" in a["output"]
    assert b["input"]["file_path"].endswith("src/b.txt") and "beta" in b["output"]
    assert a["id"] != b["id"]
    uses = [s for s in trace["steps"] if s["kind"] == "tool_use"]
    assert uses[0]["message_id"] == uses[1]["message_id"], "parallel calls come from one assistant message"


def test_continue_adds_a_trace_to_the_same_session(world: World) -> None:
    first = _assert_complete_trace(world, "continue-1")
    second = _assert_complete_trace(world, "continue-2")
    assert first["session_id"] == second["session_id"]
    assert first["id"] != second["id"]
    assert _transcript_sessions(world.captured, world.cases["continue-1"].project) == {first["session_id"]}
    assert [t["prompt"] for t in world.traces if t["session_id"] == first["session_id"]] in (
        [first["prompt"], second["prompt"]],
        [second["prompt"], first["prompt"]],
    )
    assert first["started_at"] < second["started_at"]
    assert "release 1.2" in second["tool_calls"][0]["output"]


def test_concurrent_sessions_are_captured_without_cross_talk(world: World) -> None:
    traces = [_assert_complete_trace(world, f"concurrent-{i}") for i in range(CONCURRENT)]
    assert len({t["session_id"] for t in traces}) == CONCURRENT
    assert {t["session_id"] for t in traces} == _transcript_sessions(world.captured, world.cases["concurrent-0"].project)
    for i, trace in enumerate(traces):
        text = json.dumps(trace)
        others = [f"item{j}" for j in range(CONCURRENT) if j != i]
        assert f"item{i}.txt" in text and not any(o in text for o in others), (i, trace)
        assert f"item number {i}" in trace["tool_calls"][0]["output"]
        assert trace["tool_calls"][1]["output"].split()[0] == str(len(f"item number {i}\n"))


def test_every_session_becomes_exactly_its_traces(world: World) -> None:
    """Nothing extra: one trace per prompt run, and a second ingest changes nothing."""
    assert sorted(t["prompt"] for t in world.traces) == sorted(c.prompt for c in world.cases.values())
    assert world.listed_after_second_ingest == world.listed
    assert [t["id"] for t in world.listed] == [t["id"] for t in world.traces]


# --- output unchanged, secrets kept out ---------------------------------------------------


def test_cli_calls_only_the_scripted_messages_api(world: World, scripted_api: ScriptedAPI) -> None:
    """Each prompt took exactly one request per script step, and the CLI asked for nothing else
    (with CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1): a new endpoint after a version bump shows here."""
    assert [(r.method, r.path) for r in scripted_api.unknown] == []
    side = [r for r in scripted_api.requests if r.kind == "side"]  # no tools offered, or no scenario key
    assert [(r.path, r.body.get("model"), len(r.body.get("messages") or [])) for r in side] == []
    for case in [*world.cases.values(), world.plain_case]:
        requests = scripted_api.requests_for(case.key)
        assert [r.step for r in requests] == list(range(len(case.scenario.script))), case.key
        assert all(r.path == "/v1/messages?beta=true" and r.body["stream"] is True for r in requests)


def test_claude_output_is_unchanged_by_the_hooks(world: World) -> None:
    hooked, plain = world.cases["multi-step"].run, world.plain_case.run
    assert plain.stdout == hooked.stdout == (world.plain_case.scenario.response + "\n").encode()
    assert plain.stderr == hooked.stderr == b""
    assert not world.plain.ccrl_home.exists() and not world.plain.settings_file.exists()


def test_hooks_add_nothing_to_what_claude_sees(world: World, scripted_api: ScriptedAPI) -> None:
    """The conversation sent to the API is the same with and without ccrl's hooks."""

    def normalised(case: Case) -> str:
        """The messages of every request of this case, with what differs by design replaced."""
        requests = scripted_api.requests_for(case.key)
        assert len(requests) == len(case.scenario.script)
        text = json.dumps([r.body["messages"] for r in requests], sort_keys=True)
        text = text.replace(str(case.project), "<project>").replace(case.key, "<key>")
        text = re.sub(r"toolu_e2e_[0-9a-f]+", "<tool_use_id>", text)
        return re.sub(r"sig-[0-9a-f]+", "<signature>", text)

    hooked = normalised(world.cases["multi-step"])
    plain = normalised(world.plain_case)
    assert hooked == plain


def _secret_forms() -> list[bytes]:
    """Each secret as it could appear on disk: raw and with JSON-escaped slashes."""
    forms = []
    for value in sc.SECRETS.values():
        forms += [value.encode(), value.replace("/", "\\/").encode()]
    return forms


def test_no_secret_reaches_the_data_dir(world: World, scripted_api: ScriptedAPI) -> None:
    case = world.cases["secrets"]
    # The secrets really went through Claude Code: both tool results sent to the API hold them,
    # and so does Claude Code's own transcript (which ingest reads).
    sent = json.dumps([r.body["messages"] for r in scripted_api.requests_for(case.key)])
    transcripts = b"".join(
        p.read_bytes() for p in (world.captured.home / ".claude" / "projects").rglob("*.jsonl")
    )
    for value in sc.SECRETS.values():
        assert sent.count(value) >= 2 and value.encode() in transcripts, value
    home = world.captured.ccrl_home
    for label, files in (("before ingest", world.data_files_before_ingest), ("after ingest", _data_files(home))):
        assert any(name.startswith("inbox.db") for name in files), (label, sorted(files))
        for name, data in files.items():
            for secret in _secret_forms():
                assert secret not in data, f"{label}: a secret from .env is in {home / name}"
    everything = b"".join(_data_files(home).values())
    for marker in sc.SECRET_MARKERS:
        assert marker.encode() in everything, marker
    # Private by default: nothing in the data dir is readable by other users.
    for path in [home, *home.rglob("*")]:
        assert path.stat().st_mode & 0o077 == 0, f"{path} is {oct(path.stat().st_mode)}"
    # The fallback spool locations outside the data dir hold nothing either.
    for spool in world.captured.tmp.glob("ccrl-spool-*"):
        assert not any(p.is_file() for p in spool.rglob("*")), spool

    trace = _assert_complete_trace(world, "secrets")
    for call in trace["tool_calls"]:
        assert "DEBUG=1" in call["output"]
        for marker in sc.SECRET_MARKERS:
            assert marker in call["output"], (call["name"], marker)
