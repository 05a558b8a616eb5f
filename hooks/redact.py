"""Secret redaction, applied before anything touches disk. Standard library only.

Works on bytes (the hook never decodes its payload) and on str (ingest redacts transcript
text with the same rules). Each secret becomes a typed marker such as
``[REDACTED:aws_access_key]`` so training data keeps its shape.

The hot path first looks for cheap lower-case markers with plain substring searches and only
compiles the patterns when one is present: most tool payloads hold no secret.
"""

from __future__ import annotations

# Lower-case substrings; if none occurs in the lower-cased payload, no pattern can match.
MARKERS: tuple[bytes, ...] = (
    b"akia", b"asia", b"abia", b"acca", b"aws", b"sk-", b"gh", b"github_pat_", b"xox",
    b"hooks.slack.com", b"_live_", b"_test_", b"aiza", b"ya29.", b"eyj", b"private key",
    b"://", b"key", b"token", b"secret", b"passw", b"pwd",
)

# (kind, pattern, replacement template). Order matters: specific token formats first, then
# generic assignments, so a token inside an assignment keeps its specific kind.
_RULES: list[tuple[str, str, str]] = [
    ("private_key",
     r"-----BEGIN[ A-Z0-9]*PRIVATE KEY( BLOCK)?-----.*?-----END[ A-Z0-9]*PRIVATE KEY( BLOCK)?-----",
     "[REDACTED:private_key]"),
    ("anthropic_key", r"sk-ant-[A-Za-z0-9_\-]{16,}", "[REDACTED:anthropic_key]"),
    ("openai_key", r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}", "[REDACTED:openai_key]"),
    ("github_token", r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,})", "[REDACTED:github_token]"),
    ("slack_token", r"\bxox[abposr]-[A-Za-z0-9\-]{10,}", "[REDACTED:slack_token]"),
    ("slack_webhook", r"https://hooks\.slack\.com/services/[A-Za-z0-9/_\-]+", "[REDACTED:slack_webhook]"),
    ("stripe_key", r"\b(?:sk|rk|pk|whsec)_(?:live|test)_[A-Za-z0-9]{10,}", "[REDACTED:stripe_key]"),
    ("google_api_key", r"\bAIza[0-9A-Za-z_\-]{35}", "[REDACTED:google_api_key]"),
    ("google_oauth_token", r"\bya29\.[0-9A-Za-z_\-]{20,}", "[REDACTED:google_oauth_token]"),
    ("aws_access_key", r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b", "[REDACTED:aws_access_key]"),
    ("aws_secret_key",
     r"(?i)(aws_?secret_?(?:access_?)?key[\"']?\s*[:=]\s*[\"']?)[A-Za-z0-9/+=]{40}",
     r"\1[REDACTED:aws_secret_key]"),
    ("jwt", r"\beyJ[A-Za-z0-9_\-]{5,}\.eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]{5,}", "[REDACTED:jwt]"),
    ("url_password",
     r"(\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/\s@\"'\\]+:)([^@\s\"'\\/]+)(@)",
     r"\1[REDACTED:url_password]\3"),
    # KEY=value / TOKEN: value / password = "value" (shell, .env, YAML, code).
    ("secret_assignment",
     r"(?i)(\b[A-Z0-9_.\-]*(?:_KEY|_TOKEN|_SECRET|SECRET_KEY|API_?KEY|PASSWORD|PASSWD|_PWD)\b[\"']?\s*[:=]\s*[\"']?)"
     r"(?!\[REDACTED)([^\s\"'\\,;]{3,})",
     r"\1[REDACTED:secret]"),
    # JSON: "password": "value", "api_key": "value", ...
    ("secret_json_field",
     r"(?i)(\\?\"(?:password|passwd|secret|client_secret|api_?key|access_?token|auth_?token|token|private_key)\\?\"\s*:\s*\\?\")"
     r"(?!\[REDACTED)([^\"\\]{3,})",
     r"\1[REDACTED:secret]"),
]

_compiled_bytes: list | None = None
_compiled_str: list | None = None


def _compile(as_bytes: bool) -> list:
    import re

    rules = []
    for kind, pattern, repl in _RULES:
        if as_bytes:
            rules.append((kind, re.compile(pattern.encode(), re.DOTALL), repl.encode()))
        else:
            rules.append((kind, re.compile(pattern, re.DOTALL), repl))
    return rules


def may_contain_secret(data: bytes) -> bool:
    low = data.lower()
    return any(marker in low for marker in MARKERS)


def redact_bytes(data: bytes) -> bytes:
    """Redact secrets in raw bytes (the hook's payload). Cheap when no marker is present."""
    global _compiled_bytes
    if not may_contain_secret(data):
        return data
    if _compiled_bytes is None:
        _compiled_bytes = _compile(True)
    for _kind, rx, repl in _compiled_bytes:
        data = rx.sub(repl, data)
    return data


def redact_text(text: str) -> str:
    """Redact secrets in text (transcript content at ingest)."""
    global _compiled_str
    if not text or not may_contain_secret(text.encode("utf-8", "surrogatepass")):
        return text
    if _compiled_str is None:
        _compiled_str = _compile(False)
    for _kind, rx, repl in _compiled_str:
        text = rx.sub(repl, text)
    return text


def redact_obj(obj):
    """Redact every string inside a JSON-like value (dict keys kept as they are)."""
    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, dict):
        return {k: redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact_obj(v) for v in obj]
    return obj
