"""Redaction (ccrl.hooks.redact): every secret kind, the payload shapes the hook really sees,
realistic non-secrets left alone, and the marker pre-check that lets the hook skip ``re``."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ccrl.hooks import redact
from ccrl.hooks.redact import RULES, may_contain_secret, redact_bytes, redact_obj, redact_text, rules_needed

# (kind, text holding the secret, the secret itself). Formats follow each vendor's documented
# token shape; the values are made up.
SECRETS = [
    ("aws_access_key", "aws_access_key_id = AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
    ("aws_access_key", "creds: ASIAY34FZKBOKMUTVV7A in use", "ASIAY34FZKBOKMUTVV7A"),
    ("aws_secret_key", "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
     "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    ("aws_secret_key", 'AWS_SECRET_ACCESS_KEY="je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY"',
     "je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY"),
    ("anthropic_key", "client = Anthropic(api_key='sk-ant-api03-Xy9fQ2LmN8pR4tV6wZ1aB3cD5eF7gH9jK')",
     "sk-ant-api03-Xy9fQ2LmN8pR4tV6wZ1aB3cD5eF7gH9jK"),
    ("openai_key", "OPENAI: sk-proj-4fGh7JkL9mN2pQ5rS8tV1wX3yZ6aB0cD", "sk-proj-4fGh7JkL9mN2pQ5rS8tV1wX3yZ6aB0cD"),
    ("github_token", "git clone https://ghp_16C7e42F292c6912E7710c838347Ae178B4a@github.com/o/r",
     "ghp_16C7e42F292c6912E7710c838347Ae178B4a"),
    ("github_token", "token github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuv",
     "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuv"),
    ("slack_token", "SLACK xoxb-2345678901-3456789012-AbCdEfGhIjKlMnOpQrStUvWx",
     "xoxb-2345678901-3456789012-AbCdEfGhIjKlMnOpQrStUvWx"),
    ("slack_webhook", "curl -X POST https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
     "T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"),
    ("stripe_key", "stripe.api_key = sk_live_4eC39HqLyjWDarjtT1zdp7dc", "sk_live_4eC39HqLyjWDarjtT1zdp7dc"),
    ("stripe_key", "endpoint secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
    ("google_api_key", "maps?key=AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe", "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe"),
    ("google_oauth_token", "access ya29.a0AfH6SMBx7d2Kz9QeLrTn4VwYpU1oJ", "ya29.a0AfH6SMBx7d2Kz9QeLrTn4VwYpU1oJ"),
    ("jwt", "Cookie: session=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
     "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"),
    ("bearer_token", "curl -H 'Authorization: Bearer 8f14e45fceea167a5a36dedd4bea2543'",
     "8f14e45fceea167a5a36dedd4bea2543"),
    ("url_password", "DATABASE_URL=postgres://app:Sup3rS3cret@db.internal:5432/app", "Sup3rS3cret"),
    ("url_password", "pip install --index-url https://deploy:gl1tter-pass@pypi.example.com/simple x",
     "gl1tter-pass"),
    ("secret", "DB_PASSWORD=hunter2-prod", "hunter2-prod"),
    ("secret", "export STRIPE_WEBHOOK_TOKEN=t0k3n-value-123", "t0k3n-value-123"),
    ("secret", "SECRET_KEY = 'django-insecure-9x#f@l2'", "django-insecure-9x#f@l2"),
    ("secret", "password: correct horse battery staple", "correct horse battery staple"),
    ("secret", 'PASSPHRASE="correct horse battery staple"', "correct horse battery staple"),
    ("secret", "mysql --user=root --password=Tr0ub4dor3", "Tr0ub4dor3"),
    ("secret", "ENCRYPTION_KEY=0f1e2d3c4b5a69788796a5b4c3d2e1f0", "0f1e2d3c4b5a69788796a5b4c3d2e1f0"),
    ("secret", '$config["db_pass"] = "p4ssw0rd!";', "p4ssw0rd!"),
    ("secret", "'password' => 'laravel-s3cr3t'", "laravel-s3cr3t"),
    ("secret", "x-api-key: a1b2c3d4e5f6", "a1b2c3d4e5f6"),
    ("private_key",
     "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA1c7+9z5Pad7OejecsQ0bu3aozN3tihPmljnnudb9G3HECdnH\n"
     "lWu2/a1gB9JW5TBQ+AVpum9Okx7KfqkfBKL9mcHgSL0yWMdjMfNOqNtrQqKlN4kE\n-----END RSA PRIVATE KEY-----",
     "MIIEowIBAAKCAQEA1c7+9z5Pad7OejecsQ0bu3aozN3tihPmljnnudb9G3HECdnH"),
    ("private_key",
     "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtz\n"
     "-----END OPENSSH PRIVATE KEY-----", "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtz"),
]

# Realistic text that must come through unchanged.
NOT_SECRETS = [
    "key = dict_key",
    "for key, value in mapping.items():",
    "id: int | None = Field(default=None, primary_key=True)",
    "session_id: str = Field(foreign_key=\"sessions.id\", index=True)",
    "items.sort(key=lambda item: item.name)",
    "cache_key = f\"user:{user_id}\"",
    "sort_key = 'created_at'",
    "password: str",
    "def login(username: str, password: str) -> bool:",
    "token: Optional[str] = None",
    "api_key = os.environ[\"OPENAI_API_KEY\"]",
    "token = get_token(session)",
    "self.api_key = api_key",
    "connect(host=host, password=password)",
    "const apiKey = process.env.API_KEY;",
    "if password == \"\":",
    "API_KEY=${API_KEY}",
    "export GITHUB_TOKEN=$GH_TOKEN",
    "api_key: <your-api-key>",
    "max_tokens=1024, total_tokens = 12",
    "the tokenizer splits tokens; a secretary keeps the passwords list",
    "commit 3f786850e387550fdab836ed7e6dc881de23001b",
    "session 550e8400-e29b-41d4-a716-446655440000",
    "/home/dev/.ssh/id_ed25519.pub and /etc/ssl/private/",
    "https://github.com/anthropics/claude-code/blob/main/README.md",
    "git@github.com:owner/repo.git",
    "ssh://git@host:22/repo.git",
    "docs say: a private key must never be committed",
    "task-list-manager risk-assessment disk-usage",
    "Basic auth is configured elsewhere",
    "$ ls -la ~/.aws",
]


@pytest.mark.parametrize(("kind", "text", "secret"), SECRETS, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(SECRETS)])
def test_each_secret_kind_is_redacted_in_text_and_in_json_bytes(kind, text, secret):
    out = redact_text(text)
    assert secret not in out
    assert f"[REDACTED:{kind}]" in out
    # The hook sees the same text inside a JSON payload: escaped quotes and newlines.
    payload = json.dumps({"tool_input": {"command": text}, "tool_response": {"stdout": text}}).encode()
    redacted = redact_bytes(payload)
    assert secret.encode() not in redacted
    assert json.dumps(secret)[1:-1].encode() not in redacted
    assert f"[REDACTED:{kind}]".encode() in redacted
    assert json.loads(redacted)  # still valid JSON: the shape survives


@pytest.mark.parametrize("text", NOT_SECRETS)
def test_ordinary_code_and_identifiers_are_left_alone(text):
    assert redact_text(text) == text
    payload = json.dumps({"tool_response": {"content": text}}).encode()
    assert redact_bytes(payload) == payload


def test_env_file_read_by_the_read_tool():
    env = ("# local settings\nDEBUG=true\nDATABASE_URL=postgres://app:pg-pass-9@localhost/app\n"
           "STRIPE_SECRET_KEY=sk_test_51H8abcDEFghiJKLmno\nAWS_SECRET_ACCESS_KEY=je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY\n"
           "SESSION_SECRET=s3ss10n-s3cr3t\nPORT=8000\n")
    payload = json.dumps({
        "hook_event_name": "PostToolUse", "tool_name": "Read",
        "tool_input": {"file_path": "/app/.env"},
        "tool_response": {"type": "text", "file": {"filePath": "/app/.env", "content": env}},
    }).encode()
    out = redact_bytes(payload)
    for secret in (b"pg-pass-9", b"sk_test_51H8abcDEFghiJKLmno", b"je7MtGbClwBF", b"s3ss10n-s3cr3t"):
        assert secret not in out
    content = json.loads(out)["tool_response"]["file"]["content"]
    assert "DEBUG=true\n" in content and "PORT=8000\n" in content  # non-secrets and lines kept
    assert content.count("\n") == env.count("\n")
    assert "STRIPE_SECRET_KEY=[REDACTED:stripe_key]" in content


def test_export_in_a_bash_command_with_escaped_quotes():
    command = 'export API_TOKEN="tok-1234567" && export DB_PASS=\'pw-7654321\' && ./deploy.sh'
    out = redact_bytes(json.dumps({"tool_input": {"command": command}}).encode())
    assert b"tok-1234567" not in out and b"pw-7654321" not in out
    assert json.loads(out)["tool_input"]["command"] == (
        'export API_TOKEN="[REDACTED:secret]" && export DB_PASS=\'[REDACTED:secret]\' && ./deploy.sh')


def test_json_nested_in_a_json_string():
    inner = json.dumps({"password": "inner-s3cret", "user": "bob"})
    outer = json.dumps({"tool_response": {"stdout": inner}}).encode()
    out = redact_bytes(outer)
    assert b"inner-s3cret" not in out
    assert json.loads(json.loads(out)["tool_response"]["stdout"]) == {"password": "[REDACTED:secret]", "user": "bob"}


def test_truncated_private_key_is_redacted_to_the_end_of_its_string():
    # `head -3 id_rsa`: no END line. The key material must still go, the next field stays.
    partial = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA1c7+9z5Pad7Oejec\nsQ0bu3aozN3tihPmljnnudb9G3HE\n"
    payload = json.dumps({"stdout": partial, "stderr": "done"}).encode()
    out = json.loads(redact_bytes(payload))
    assert out == {"stdout": "[REDACTED:private_key]", "stderr": "done"}
    assert redact_text("cat key:\n" + partial) == "cat key:\n[REDACTED:private_key]"


def test_redact_obj_redacts_strings_at_any_depth_and_keeps_keys():
    obj = {"a": ["x", {"b": "token ghp_16C7e42F292c6912E7710c838347Ae178B4a"}], "n": 3, "ok": None}
    assert redact_obj(obj) == {"a": ["x", {"b": "token [REDACTED:github_token]"}], "n": 3, "ok": None}


def test_payload_without_markers_is_returned_as_is_without_importing_re():
    # The hook's common case: nothing can match, so no rule is compiled at all.
    payload = json.dumps({"hook_event_name": "PostToolUse", "tool_response": {"stdout": "3 files changed"}}).encode()
    assert not may_contain_secret(payload)
    assert rules_needed(payload.lower()) == []
    assert redact_bytes(payload) is payload


# ----------------------------------------------------------------------------------------------
# Properties

_PATTERNS = [re.compile(pattern, re.DOTALL | re.ASCII) for _kind, pattern, _markers, _repl in RULES]


@pytest.mark.parametrize("index", range(len(RULES)), ids=[rule[0] for rule in RULES])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_precheck_never_misses_a_string_a_pattern_matches(index, data):
    """The pre-check (plain substring markers) must say yes whenever the rule could match."""
    text = data.draw(st.from_regex(_PATTERNS[index]))
    assume(_PATTERNS[index].search(text))
    assert index in rules_needed(text.lower())
    assert may_contain_secret(text)
    raw = text.encode("utf-8", "surrogatepass")
    assert re.compile(RULES[index][1].encode(), re.DOTALL).search(raw)
    assert index in rules_needed(raw.lower())
    assert may_contain_secret(raw)


def _redact_with_every_rule(data: bytes) -> bytes:
    """Reference: apply every rule in order, with no pre-check at all."""
    for index in range(len(RULES)):
        _kind, rx, sub = redact._rule(index, True)
        data = rx.sub(sub, data)
    return data


_samples = st.one_of(
    *[st.from_regex(p) for p in _PATTERNS],
    st.text(max_size=40),
    st.sampled_from(NOT_SECRETS),
    st.sampled_from([text for _k, text, _s in SECRETS]),
)
_mixtures = st.lists(_samples, min_size=1, max_size=6).map(lambda parts: " ".join(parts))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mixtures)
def test_precheck_only_skips_rules_that_would_change_nothing(text):
    raw = text.encode("utf-8", "surrogatepass")
    assert redact_bytes(raw) == _redact_with_every_rule(raw)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mixtures)
def test_redaction_is_idempotent_and_bytes_agree_with_text(text):
    once = redact_text(text)
    assert redact_text(once) == once
    if text.isascii():
        assert redact_bytes(text.encode()) == once.encode()


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=10), st.one_of(st.text(max_size=30), _samples), max_size=5))
def test_redacted_json_payload_stays_valid_json(obj):
    raw = json.dumps(obj).encode()
    out = redact_bytes(raw)
    assert isinstance(json.loads(out), dict)


@pytest.mark.parametrize("doc", [
    {"_PWD": 100, "hook_event_name": "PreToolUse"},
    {"password": 12345678},
    {"db": {"passwd": 4242424242, "port": 5432}},
    {"list": [{"x_pass": 99999}]},
    {"_PWD": [None], "secret": {"a": 7}, "password": 12345678},
    {"tool_input": {"content": json.dumps({"password": 31415926})}},
])
def test_a_bare_json_value_after_a_secret_name_keeps_the_json_valid(doc):
    """A secret name's bare value in JSON (a number) is redacted inside the name's own quotes, so
    the event stays valid JSON (a closing brace is never taken for part of the value)."""
    raw = json.dumps(doc)
    for out in (redact_bytes(raw.encode()).decode(), redact_text(raw)):
        assert "[REDACTED:secret]" in out
        assert json.loads(out)  # still JSON, at every nesting level
        assert not any(str(v) in out for v in (100, 12345678, 4242424242, 99999, 31415926))
