"""The redaction battery (tests/redact_cases.py): every secret case caught and every ordinary
case untouched, through ``redact`` directly, through the installed hook command and through
``ccrl import``, with the raw bytes of every file in the data directory checked; generated
secret-free code and prose unchanged; adversarial inputs finish with the right output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccrl.agent.capture.drain import ensure_local_stores
from ccrl.hooks.redact import redact_bytes, redact_obj, redact_text
from redact_cases import ORDINARY_CASES, SECRET_CASES, adversarial_inputs

CCRL = Path(sys.executable).parent / "ccrl"


def encoded_forms(secret: str) -> list[bytes]:
    """The ways a secret's bytes can sit in a file: as is, and JSON-escaped once or twice."""
    once = json.dumps(secret)[1:-1]
    twice = json.dumps(once)[1:-1]
    return list(dict.fromkeys(f.encode() for f in (secret, once, twice)))


def leaked(data: bytes, secrets: list[str]) -> list[str]:
    return [s for s in secrets if any(form in data for form in encoded_forms(s))]


# ----------------------------------------------------------------------------------------------
# The battery through redact directly

def test_the_battery_has_the_size_the_readme_reports():
    assert len(SECRET_CASES) >= 100 and len(ORDINARY_CASES) >= 30
    assert len({case_id for case_id, _, _ in SECRET_CASES}) == len(SECRET_CASES)
    assert all(secrets for _, _, secrets in SECRET_CASES)


@pytest.mark.parametrize(("case_id", "text", "secrets"), SECRET_CASES, ids=[c[0] for c in SECRET_CASES])
def test_secret_case_is_redacted_in_text_and_in_every_json_form(case_id, text, secrets):
    out = redact_text(text)
    assert not leaked(out.encode(), secrets)
    assert "[REDACTED:" in out
    assert redact_text(out) == out  # idempotent: a second pass (ingest) changes nothing
    # The hook's payload: the text as a command, as tool output, and JSON inside tool output.
    payload = json.dumps({
        "hook_event_name": "PostToolUse", "tool_name": "Bash",
        "tool_input": {"command": text},
        "tool_response": {"stdout": text, "stderr": json.dumps({"echo": text})},
    }).encode()
    raw = redact_bytes(payload)
    assert not leaked(raw, secrets)
    parsed = json.loads(raw)  # still valid JSON: the shape survives
    assert parsed["tool_name"] == "Bash" and "[REDACTED:" in parsed["tool_input"]["command"]
    assert not leaked(json.dumps(redact_obj(json.loads(payload))).encode(), secrets)
    # After a label on the same line, as a prompt may hold it ("django-secret-key: SECRET_KEY = ...").
    labelled = f"{case_id}: {text}"
    assert not leaked(redact_text(labelled).encode(), secrets)
    assert not leaked(redact_bytes(json.dumps({"prompt": labelled}).encode()), secrets)


@pytest.mark.parametrize(("case_id", "text", "expected"), ORDINARY_CASES, ids=[c[0] for c in ORDINARY_CASES])
def test_ordinary_case_comes_back_as_expected(case_id, text, expected):
    expected = text if expected is None else expected
    assert redact_text(text) == expected
    payload = json.dumps({"tool_input": {"command": text}, "tool_response": {"stdout": text}}).encode()
    parsed = json.loads(redact_bytes(payload))
    assert parsed == {"tool_input": {"command": expected}, "tool_response": {"stdout": expected}}
    if expected == text:
        assert redact_bytes(payload) == payload
    # After a label on the same line, as a prompt may hold it.
    assert redact_text(f"{case_id}: {text}") == f"{case_id}: {expected}"


def test_a_file_of_secrets_keeps_its_lines_and_everything_else():
    """A Read of a config file: each secret goes, each other line stays as it was."""
    text = "\n".join(t for _, t, _ in SECRET_CASES) + "\nPORT=8000\nDEBUG=false\n"
    out = redact_text(text)
    assert not leaked(out.encode(), [s for _, _, secrets in SECRET_CASES for s in secrets])
    assert out.endswith("\nPORT=8000\nDEBUG=false\n")
    assert out.count("\n") <= text.count("\n")


# ----------------------------------------------------------------------------------------------
# Generated secret-free code and prose: unchanged

_SECRET_NAMES = ["token", "api_key", "password", "secret", "auth_token", "db_password", "client_secret",
                 "TOKEN", "API_KEY", "SECRET_KEY", "apiKey", "accessToken", "passwd", "private_key",
                 "refresh_token", "self.token", "config.api_key", "x_api_key"]
_IDENTS = st.from_regex(r"[a-z][a-z0-9]{0,8}(?:_[a-z0-9]{1,8}){0,2}", fullmatch=True)
_TYPES = st.sampled_from(["str", "int", "bool", "Optional[str]", "str | None", "SecretStr", "string", "bytes",
                          "Token", "dict[str, str]"])
_ENV_NAMES = st.from_regex(r"[A-Z][A-Z0-9]{0,6}(?:_[A-Z0-9]{1,6}){0,2}", fullmatch=True)
_EXPRESSIONS = st.one_of(
    st.builds(lambda f, a: f"{f}({a})", _IDENTS, _IDENTS),                      # get_token(session)
    st.builds(lambda o, a: f"{o}.{a}", _IDENTS, _IDENTS),                        # self.token
    st.builds(lambda o, a, b: f"{o}.{a}.{b}()", _IDENTS, _IDENTS, _IDENTS),
    st.builds(lambda n: f'os.getenv("{n}")', _ENV_NAMES),
    st.builds(lambda n: f'os.environ["{n}"]', _ENV_NAMES),
    st.builds(lambda n: f"process.env.{n}", _ENV_NAMES),
    st.builds(lambda n: f'ENV.fetch("{n}")', _ENV_NAMES),
    st.builds(lambda n: f'std::env::var("{n}")', _ENV_NAMES),
    st.builds(lambda n: f"${{{n}}}", _ENV_NAMES),
    st.floats(0, 1e6, allow_nan=False).map(lambda x: f"{x:.3f}"),
    st.sampled_from(["None", "True", "False", "null", "undefined", "nil", "self", "this"]),
)
_STATEMENTS = st.one_of(
    st.builds(lambda n, e: f"{n} = {e}", st.sampled_from(_SECRET_NAMES), _EXPRESSIONS),
    st.builds(lambda n, e: f"    {n} = {e}\n", st.sampled_from(_SECRET_NAMES), _EXPRESSIONS),
    st.builds(lambda n, t: f"{n}: {t}", st.sampled_from(_SECRET_NAMES), _TYPES),
    st.builds(lambda n, t, e: f"{n}: {t} = {e}", st.sampled_from(_SECRET_NAMES), _TYPES, _EXPRESSIONS),
    st.builds(lambda n, e: f"const {n} = {e};", st.sampled_from(_SECRET_NAMES), _EXPRESSIONS),
    st.builds(lambda n, e: f"{n} := {e}", st.sampled_from(_SECRET_NAMES), _EXPRESSIONS),
    st.builds(lambda f, n, t: f"def {f}({n}: {t}) -> {t}:", _IDENTS, st.sampled_from(["token", "password", "api_key"]), _TYPES),
    st.builds(lambda n: f"if {n} is None:\n    raise ValueError('missing {n}')", st.sampled_from(_SECRET_NAMES)),
    st.builds(lambda n, m: f"{n}=max_{m}", st.sampled_from(["password", "token", "api_key"]), _IDENTS),
    # Whole numbers are kept after token and key names (max_token = 4096); after a password
    # name they may be a PIN, so those are not generated here.
    st.builds(lambda n, i: f"{n} = {i}", st.sampled_from(["max_token", "token", "TOKEN_TTL", "api_key", "secret"]),
              st.integers(-10**9, 10**9)),
)
_HASHES = st.one_of(
    st.binary(min_size=20, max_size=20).map(bytes.hex),                          # git SHA-1
    st.binary(min_size=32, max_size=32).map(lambda b: "sha256:" + b.hex()),
    st.uuids().map(str),
)
_WORDS = st.sampled_from(
    "the a token tokens password secret key keys api bearer basic auth credential value rotate "
    "expired refresh session cache rate limit set run test suite then and or of to in for is "
    "must never store commit config file user access private public sk model video library".split())
# A hash after "bearer" reads as a bearer token (and is redacted): hashes come after neutral words.
_HASH_PHRASES = st.builds(lambda w, h: f"{w} {h}", st.sampled_from(["commit", "digest", "session", "id", "at"]), _HASHES)
_PROSE = st.lists(st.one_of(_WORDS, _HASH_PHRASES), min_size=3, max_size=14).map(" ".join).map(lambda s: s + ".")
_ORDINARY = st.lists(st.one_of(_STATEMENTS, _PROSE, _HASHES), min_size=1, max_size=5).map("\n".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_ORDINARY)
def test_generated_code_and_prose_without_secrets_come_back_unchanged(text):
    assert redact_text(text) == text
    payload = json.dumps({"tool_response": {"stdout": text}}).encode()
    assert redact_bytes(payload) == payload


# ----------------------------------------------------------------------------------------------
# Adversarial inputs: linear patterns finish, with the right output

@pytest.mark.parametrize(("case_id", "text", "expected"), adversarial_inputs(300_000),
                         ids=[c[0] for c in adversarial_inputs(1000)])
def test_adversarial_input_of_300_kb_finishes_with_the_right_output(case_id, text, expected):
    assert len(text) >= 250_000
    assert redact_text(text) == expected
    assert redact_bytes(text.encode()) == expected.encode()


def test_adversarial_inputs_run_in_well_under_a_minute_each_in_a_child():
    """A hang guard, not a timing claim: a quadratic rule takes minutes on these inputs
    (url_password and jwt took 13-15 s on 160-360 KB before); benchmarks/redact_rules.py times them."""
    code = ("import sys; sys.path.insert(0, 'tests'); from redact_cases import adversarial_inputs; "
            "from ccrl.hooks.redact import redact_bytes, redact_text\n"
            "for _, text, expected in adversarial_inputs(400_000):\n"
            "    assert redact_bytes(text.encode()) == expected.encode()\n"
            "print('done')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "done"


# ----------------------------------------------------------------------------------------------
# End to end: the installed hook command and `ccrl import`, then the bytes of every file

def _data_files(home: Path, tmp_path: Path) -> list[Path]:
    """Every file the hook, the drain, ingest or import may have written: the data directory
    (store, inbox.db and its -wal/-shm, spool) and the spool fallbacks (runtime dir, temp dir)."""
    roots = [home, tmp_path / "xdg-runtime", tmp_path / "tmp"]
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]


def _leaks_on_disk(home: Path, tmp_path: Path, secrets: list[str]) -> dict[str, list[str]]:
    found = {}
    for path in _data_files(home, tmp_path):
        bad = leaked(path.read_bytes(), secrets)
        if bad:
            found[str(path.relative_to(tmp_path))] = bad
    return found


def _ccrl(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(CCRL), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


@pytest.fixture
def home(ccrl_home, tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    return ccrl_home


ALL_SECRETS = [s for _, _, secrets in SECRET_CASES for s in secrets]


def test_battery_through_the_installed_hook_then_drain_and_ingest_leaves_no_secret_on_disk(home, tmp_path):
    command = _ccrl("hooks", "command").stdout.strip()
    assert "capture.py" in command
    project = tmp_path / "project"
    project.mkdir()
    session = "5e55-b477-e4y"
    cases = [(c, t) for c, t, _ in SECRET_CASES] + [(c, t) for c, t, _ in ORDINARY_CASES]
    for n, (case_id, text) in enumerate(cases):
        if n == len(cases) // 2:
            # The first half went to spool files (no inbox yet, as before the agent first
            # runs); the rest goes to the inbox, as usual.
            assert (home / "spool").is_dir()
            ensure_local_stores()
        events = [
            {"hook_event_name": "UserPromptSubmit", "prompt": f"{case_id}: {text}"},
            {"hook_event_name": "PreToolUse", "tool_name": "Bash", "tool_use_id": f"toolu_{n:04d}",
             "tool_input": {"command": text, "description": case_id}},
            {"hook_event_name": "PostToolUse", "tool_name": "Bash", "tool_use_id": f"toolu_{n:04d}",
             "tool_input": {"command": text}, "tool_response": {"stdout": text, "stderr": "", "interrupted": False}},
        ]
        for event in events:
            payload = json.dumps({"session_id": session, "cwd": str(project),
                                  "transcript_path": str(tmp_path / "none.jsonl"), **event}).encode()
            proc = subprocess.run(["/bin/sh", "-c", command], input=payload, capture_output=True, timeout=60,
                                  cwd=project)
            assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")
    # What the hook wrote (inbox.db, its WAL, any spool file) holds no secret...
    assert _data_files(home, tmp_path)
    assert _leaks_on_disk(home, tmp_path, ALL_SECRETS) == {}
    # ...and neither does anything after the agent's drain and ingest.
    _ccrl("ingest")
    assert _leaks_on_disk(home, tmp_path, ALL_SECRETS) == {}
    # Ordinary commands arrived exactly as they were typed.
    from sqlmodel import Session as DBSession
    from sqlmodel import select

    from ccrl.agent.store.db import get_engine
    from ccrl.agent.store.models import HookEvent, Quarantine

    with DBSession(get_engine()) as db:
        events = list(db.exec(select(HookEvent)).all())
        quarantined = [(q.reason, q.payload[:200]) for q in db.exec(select(Quarantine)).all()]
    assert quarantined == []
    assert len(events) == 3 * len(cases)
    commands = {e.payload["tool_input"]["description"]: e.payload["tool_input"]["command"]
                for e in events if e.payload.get("hook_event_name") == "PreToolUse"}
    for case_id, text, expected in ORDINARY_CASES:
        assert commands[case_id] == (text if expected is None else expected)


def _transcript_line(kind: str, uuid: str, n: int, message: dict, session: str, cwd: Path) -> str:
    return json.dumps({"type": kind, "uuid": uuid, "parentUuid": None, "sessionId": session, "cwd": str(cwd),
                       "version": "2.1.39", "gitBranch": "main", "isSidechain": False,
                       "timestamp": f"2026-02-10T10:{n // 60 % 60:02d}:{n % 60:02d}.000Z", "message": message})


def test_battery_through_ccrl_import_leaves_no_secret_on_disk(home, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    session = "1mp0-b477-e4y"
    folder = tmp_path / "claude" / "projects" / "-project"
    folder.mkdir(parents=True)
    lines = []
    for n, (case_id, text, _) in enumerate(SECRET_CASES + [(c, t, [t]) for c, t, _ in ORDINARY_CASES]):
        tid = f"toolu_{n:04d}"
        lines += [
            _transcript_line("user", f"u{n}", n, {"role": "user", "content": f"{case_id}: {text}"}, session, project),
            _transcript_line("assistant", f"a{n}", n, {"id": f"msg_{n}", "model": "claude-opus-4-6", "role": "assistant",
                                                       "content": [{"type": "thinking", "thinking": f"I will run {text}",
                                                                    "signature": "sig"}]}, session, project),
            _transcript_line("assistant", f"b{n}", n, {"id": f"msg_{n}", "model": "claude-opus-4-6", "role": "assistant",
                                                       "content": [{"type": "tool_use", "id": tid, "name": "Bash",
                                                                    "input": {"command": text}}]}, session, project),
            _transcript_line("user", f"r{n}", n, {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": tid, "content": text, "is_error": False}]}, session, project),
            _transcript_line("assistant", f"c{n}", n, {"id": f"msg_{n}b", "model": "claude-opus-4-6", "role": "assistant",
                                                       "content": [{"type": "text", "text": f"Done: {text}"}]}, session, project),
        ]
    lines.append("{not json " + SECRET_CASES[0][1].replace("\n", " "))  # a corrupt line is quarantined, redacted
    (folder / f"{session}.jsonl").write_text("\n".join(lines) + "\n")
    report = json.loads(_ccrl("import", str(folder), "--json").stdout)
    assert report, report
    assert _data_files(home, tmp_path)
    assert _leaks_on_disk(home, tmp_path, ALL_SECRETS) == {}
    # The traces were built (the import did store the sessions, with the secrets replaced).
    from sqlmodel import Session as DBSession
    from sqlmodel import select

    from ccrl.agent.store.db import get_engine
    from ccrl.agent.store.models import Trace

    with DBSession(get_engine()) as db:
        prompts = [t.prompt for t in db.exec(select(Trace)).all()]
    assert len(prompts) >= len(SECRET_CASES)
    assert sum("[REDACTED:" in p for p in prompts) >= len(SECRET_CASES) - 5
    for case_id, text, expected in ORDINARY_CASES:
        assert f"{case_id}: {text if expected is None else expected}" in prompts
