"""What the hook's rules miss is caught at ingest (detect-secrets' detectors), and leaves no
bytes behind: not in inbox.db, its WAL, the spool, nor the store's files.

The secrets are made in the formats of detect-secrets' detectors, with random values; each test
reads the bytes of every file in the data directory.
"""

from __future__ import annotations

import json
import random
import re
import sqlite3
import string
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import Session as DBSession
from sqlmodel import select

from ccrl.agent.capture import deep_redact
from ccrl.agent.capture.drain import drain, ensure_local_stores
from ccrl.agent.capture.importer import import_transcripts
from ccrl.agent.store.db import get_engine
from ccrl.agent.store.models import HookEvent, Trace
from ccrl.hooks import inbox, paths

from conftest import TRANSCRIPTS
from redact_cases import ORDINARY_CASES

ALNUM = string.ascii_letters + string.digits


def _rand(rng: random.Random, n: int, alphabet: str = ALNUM) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def detector_secrets(seed: int = 16) -> list[tuple[str, str, str]]:
    """``(marker kind, line of text holding the secret, the secret)`` in detect-secrets' formats."""
    rng = random.Random(seed)
    hexl = "0123456789abcdef"
    sendgrid = f"SG.{_rand(rng, 22)}.{_rand(rng, 43)}"
    gitlab = f"glpat-{_rand(rng, 20)}"
    pypi = "pypi-AgEIcHlwaS5vcmc" + _rand(rng, 80)
    azure = _rand(rng, 86) + "=="
    npm = "npm_" + _rand(rng, 36)
    discord = "M" + _rand(rng, 23) + "." + _rand(rng, 6) + "." + _rand(rng, 27)
    telegram = "1234567890:" + _rand(rng, 35)
    twilio = "AC" + _rand(rng, 32, string.ascii_lowercase + string.digits)
    mailchimp = _rand(rng, 32, hexl) + "-us12"
    square = "sq0csp-" + _rand(rng, 43)
    artifactory = "AKC" + _rand(rng, 60)
    password = _rand(rng, 18)
    return [
        ("sendgrid_api_key", f"export SENDGRID={sendgrid}", sendgrid),
        ("gitlab_token", f"glab auth login --hostname gitlab.example.com --token {gitlab}", gitlab),
        ("pypi_token", f"twine upload -p {pypi} dist/*", pypi),
        ("azure_storage_account_access_key",
         f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={azure};EndpointSuffix=core.windows.net", azure),
        ("npm_tokens", f"//registry.npmjs.org/:_authToken={npm}", npm),
        ("discord_bot_token", f"client.run('{discord}')", discord),
        ("telegram_bot_token", f"bot = Bot({telegram!r})", telegram),
        ("twilio_api_key", f"account = {twilio}", twilio),
        ("mailchimp_access_key", f"mc.set_config({{'api_key_part': '{mailchimp}'}})", mailchimp),
        ("square_oauth_secret", f"secret {square}", square),
        ("artifactory_credentials", f'X-JFrog-Art-Api: "{artifactory}"', artifactory),
        ("basic_auth_credentials", f"psql postgres://admin:{password}@db.internal:5432/app", password),
    ]


ORDINARY = [
    "import uuid\nrun_id = uuid.UUID('123e4567-e89b-12d3-a456-426614174000')\n",
    "git checkout 3f786850e387550fdab836ed7e6dc881de23001b && git log -1\n",
    'digest = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"\n',
    "API_KEY = os.getenv(\"API_KEY\")\nmax_tokens = 4096\n",
    "See https://docs.python.org/3/library/re.html#re.sub and mail dev@example.com.\n",
    "ssh://git@github.com:22/org/repo.git and git@github.com:org/repo.git\n",
    "def token_count(text: str) -> int:\n    return len(text.split())\n",
    "The build failed at step 12345678: see logs/run-2026-02-12T16:02:25.284Z.txt\n",
    "npm install --save-dev typescript@5.4.2 @types/node\n",
    "SELECT id, password_hash FROM users WHERE email = :email LIMIT 1;\n",
]


@pytest.mark.parametrize("kind,line,secret", detector_secrets(), ids=[c[0] for c in detector_secrets()])
def test_the_detector_pass_replaces_the_secret_with_a_typed_marker(kind, line, secret):
    out = deep_redact.detector_pass(line)
    assert secret not in out
    assert f"[REDACTED:{kind}]" in out


@pytest.mark.parametrize("text", ORDINARY + [text for _id, text, _expected in ORDINARY_CASES])
def test_the_detector_pass_leaves_ordinary_code_and_prose_alone(text):
    """These and the redaction battery's ordinary-code cases (tests/redact_cases.py)."""
    assert deep_redact.detector_pass(text) == text


def test_the_same_secret_elsewhere_in_the_text_goes_too():
    _kind, line, secret = detector_secrets()[0]
    out = deep_redact.detector_pass(f"{line}\necho token was {secret}\n")
    assert secret not in out


@pytest.mark.parametrize("kind,line,secret", detector_secrets()[:3], ids=[c[0] for c in detector_secrets()[:3]])
def test_raw_json_is_redacted_value_by_value_and_stays_valid(kind, line, secret):  # noqa: ARG001
    """The pass reads each JSON string's decoded text: the JSON's own quotes are never part of a
    value, numbers keep their bytes, and the event stays valid JSON."""
    raw = ('{"tool_input": {"command": ' + json.dumps(line + " -> Token:") + '}, "big": 1e400, '
           '"note": "-> Token:"}').encode()
    out = deep_redact.redact_bytes(raw)
    assert secret.encode() not in out and b"[REDACTED:" in out  # the hook's rules may name it first
    assert b'"big": 1e400' in out and b'"note": "-> Token:"' in out
    assert json.loads(out)["tool_input"]["command"].endswith(" -> Token:")


def test_a_long_line_is_scanned_in_pieces_and_still_caught():
    kind, line, secret = detector_secrets()[0]
    text = ("filler, " * 5000) + line + (" more" * 5000)
    out = deep_redact.detector_pass(text)
    assert secret not in out and f"[REDACTED:{kind}]" in out


# detect-secrets' assignment patterns start with this lookbehind, which Hypothesis cannot
# generate from; it adds no literal, so the rest of the pattern stands for the whole.
_LOOKBEHIND = "(?:(?<=\\W)|(?<=^))"


@pytest.mark.parametrize("name,pattern", [(name, p) for name, _k, patterns in deep_redact._detectors()
                                          for p in patterns],
                         ids=[f"{name}-{i}" for name, _k, patterns in deep_redact._detectors()
                              for i, _p in enumerate(patterns)])
def test_a_prefilter_never_skips_text_its_detector_would_match(name, pattern):
    """Every string a detector's pattern matches holds the literals its prefilter asks for."""
    source = re.compile(pattern.pattern.replace(_LOOKBEHIND, ""), pattern.flags)

    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.from_regex(source))
    def check(text):
        if pattern.search(text):
            assert deep_redact.may_match(name, text)

    check()


def _data_files(home: Path) -> list[Path]:
    files = [p for p in home.rglob("*") if p.is_file()]
    for directory in paths.spool_dirs(str(home)):
        files += [p for p in Path(directory).rglob("*") if p.is_file()]
    return files


def assert_nowhere_on_disk(home: Path, secrets: list[str]) -> None:
    """No secret's bytes in any file of the data directory or the spool directories."""
    files = _data_files(home)
    assert any(p.suffix == ".db" for p in files)
    for path in files:
        data = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, f"{secret[:12]}... is still in {path}"


def _older_version_event(received_at: float, text: str) -> bytes:
    """A payload as a hook whose rules did not know the secret's format stored it: unredacted."""
    return json.dumps({"session_id": "s-old", "hook_event_name": "UserPromptSubmit", "cwd": "/work/app",
                       "prompt": text}).encode()


def test_a_secret_that_reached_the_inbox_and_the_spool_leaves_no_bytes_after_a_drain(ccrl_home, tmp_path,
                                                                                     monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    ensure_local_stores()
    cases = detector_secrets()
    inbox_path = paths.inbox_path(str(ccrl_home))
    conn = sqlite3.connect(inbox_path)
    now = time.time()
    for i, (_kind, line, _secret) in enumerate(cases[:8]):
        conn.execute(inbox.INSERT_SQL, (now + i, _older_version_event(now + i, line)))
    conn.commit()
    conn.close()
    links = []
    for i, (_kind, line, _secret) in enumerate(cases[8:]):
        spooled = inbox.spool(str(ccrl_home), now + 100 + i, _older_version_event(now + 100 + i, line))
        # A second name for the file's blocks: once drained they must read as zeros.
        links.append(tmp_path / f"link-{i}")
        links[-1].hardlink_to(spooled)
    secrets = [secret for _k, _l, secret in cases]
    assert any(secret.encode() in Path(inbox_path).read_bytes() + _wal(inbox_path) for secret in secrets)

    # A hook's connection is open meanwhile (so the drain's close is not the last one, which
    # would checkpoint and remove the WAL by itself).
    hook_conn = sqlite3.connect(inbox_path)
    hook_conn.execute("SELECT count(*) FROM inbox").fetchone()
    try:
        report = drain()
        assert report.stored == len(cases) and not report.errors
        assert Path(inbox_path + "-wal").stat().st_size == 0
        with DBSession(get_engine()) as db:
            prompts = [e.payload["prompt"] for e in db.exec(select(HookEvent))]
        assert all("[REDACTED:" in prompt for prompt in prompts)
        get_engine().dispose()  # the store's own WAL is checkpointed on close, as on any exit
        assert_nowhere_on_disk(ccrl_home, secrets)
    finally:
        hook_conn.close()
    for link in links:
        assert set(link.read_bytes()) == {0}


def _wal(path: str) -> bytes:
    try:
        return Path(path + "-wal").read_bytes()
    except FileNotFoundError:
        return b""


def test_ccrl_import_stores_the_detector_findings_redacted(ccrl_home, tmp_path):
    """Through ``ccrl import`` of a real transcript whose first prompt now holds the secrets."""
    source = TRANSCRIPTS / "spotter" / "short.jsonl"
    lines = source.read_text().splitlines()
    cases = detector_secrets(seed=7)
    for i, line in enumerate(lines):
        entry = json.loads(line)
        if entry.get("type") == "user" and isinstance(entry.get("message", {}).get("content"), str):
            entry["message"]["content"] = "Use these:\n" + "\n".join(c[1] for c in cases)
            lines[i] = json.dumps(entry)
            break
    else:
        pytest.fail("no user prompt in the fixture")
    copy = tmp_path / "transcripts" / source.name
    copy.parent.mkdir()
    copy.write_text("\n".join(lines) + "\n")
    import_transcripts(copy)
    with DBSession(get_engine()) as db:
        prompts = [t.prompt for t in db.exec(select(Trace)) if t.prompt.startswith("Use these:")]
    # Caught by the hook's rules or by the detectors, whichever knows the format: every line
    # keeps its shape around a marker.
    assert prompts and prompts[0].count("[REDACTED:") >= len(cases)
    assert not any(secret in prompts[0] for _k, _l, secret in cases)
    get_engine().dispose()
    assert_nowhere_on_disk(ccrl_home, [secret for _k, _l, secret in cases])
