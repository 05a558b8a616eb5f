"""Ingest-time redaction: the hook's rules, then a second pass with detect-secrets' detectors.

The hook must stay fast and standard-library only, so its rules (``ccrl.hooks.redact``) cover
the common formats. Everything that reaches the store goes through here as well, where a
well-kept library adds what those rules miss (SendGrid, npm, GitLab, PyPI, Azure storage keys,
Twilio, Discord, Telegram, Mailchimp, Square, IBM, Artifactory, Cloudant, Softlayer ...). Each
finding becomes ``[REDACTED:<detect-secrets type in snake case>]``.

The detectors used are detect-secrets' format detectors (``PLUGINS``). Left out, on purpose:
the keyword and the Base64/hex high-entropy detectors (they fire on ordinary code: identifiers,
hashes, UUIDs), the IBM Cloud IAM detector (a keyword detector in effect: its prefix is
optional, so ``PASS: <any 44-character identifier>`` in test output matches), the public-IP
detector (an address is no secret), the private-key detector (it finds only the BEGIN line;
the hook's rule removes whole blocks) and the JWT detector (the hook's rule covers JWTs, and
the plugin's pattern is quadratic on a run of ``eyJ``).

Cost: a detector runs only on text holding the literals its patterns need (``PREFILTERS``),
and a text longer than ``MAX_CHUNK`` characters is scanned in pieces of at most that length,
cut at a line break, whitespace or punctuation where there is one, so no input makes a
pattern cost more than a piece's length squared (benchmarks/ingest_redaction.py measures it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from ccrl.hooks import redact as hook_rules

PLUGINS = (
    "ArtifactoryDetector", "AWSKeyDetector", "AzureStorageKeyDetector", "BasicAuthDetector",
    "CloudantDetector", "DiscordBotTokenDetector", "GitHubTokenDetector", "GitLabTokenDetector",
    "IbmCosHmacDetector", "MailchimpDetector", "NpmDetector",
    "OpenAIDetector", "PypiTokenDetector", "SendGridDetector", "SlackDetector",
    "SoftlayerDetector", "SquareOAuthDetector", "StripeDetector", "TelegramBotTokenDetector",
    "TwilioKeyDetector",
)
# Literals a detector's patterns cannot match without (read off detect-secrets 1.5.0's patterns;
# tests/test_secret_bytes.py checks it against strings generated from each pattern): groups
# that must each have one literal in the text, checked exactly or, for the patterns that ignore
# case, in the lower-cased text. Scanning is most of the pass's cost; a text without the
# literals is not scanned by that detector. A detector not listed is always run.
PREFILTERS: dict[str, tuple[tuple[bool, tuple[str, ...]], ...]] = {
    "ArtifactoryDetector": ((True, ("AKC", "AP")),),
    "AWSKeyDetector": ((False, ("a3t", "abia", "acca", "akia", "asia", "aws")),),
    "AzureStorageKeyDetector": ((True, ("AccountKey=",)),),
    "BasicAuthDetector": ((True, ("://",)),),
    "CloudantDetector": ((False, ("cl",)), (False, ("key", "pw", "pass", "token", ".cloudant.com"))),
    "GitHubTokenDetector": ((True, ("ghp_", "gho_", "ghu_", "ghs_", "ghr_")),),
    "GitLabTokenDetector": ((True, ("gl", "GR1348941")),),
    "IbmCosHmacDetector": ((False, ("secret",)), (False, ("key",))),
    "MailchimpDetector": ((True, ("-us",)),),
    "NpmDetector": ((True, ("_authToken=",)),),
    "OpenAIDetector": ((True, ("T3BlbkFJ",)),),
    "PypiTokenDetector": ((True, ("pypi-AgE",)),),
    "SendGridDetector": ((True, ("SG.",)),),
    "SlackDetector": ((False, ("xox", "hooks.slack.com")),),
    "SoftlayerDetector": ((False, ("sl", "softlayer")), (False, ("key", "pwd", "pass", "token", "softlayer"))),
    "SquareOAuthDetector": ((True, ("sq0csp-",)),),
    "StripeDetector": ((True, ("k_live_",)),),
    "TwilioKeyDetector": ((True, ("AC", "SK")),),
}
MAX_CHUNK = 2048
# A found value shorter than this is replaced only where it was found, never elsewhere.
_MIN_VALUE = 12
_DELIMITERS = " \t\r\n\"'=:"
_CUT = re.compile(r"[\s,;\"'`<>(){}\[\]]")


@lru_cache(maxsize=1)
def _detectors() -> tuple[tuple[str, str, tuple[re.Pattern[str], ...]], ...]:
    """``(detector name, marker kind, compiled patterns)`` per detector (imported on first use)."""
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class

    by_name = {cls.__name__: cls for cls in get_mapping_from_secret_type_to_class().values()}
    found = []
    for name in PLUGINS:
        cls = by_name[name]
        kind = re.sub(r"[^a-z0-9]+", "_", cls.secret_type.lower()).strip("_")
        found.append((name, kind, tuple(cls.denylist)))
    return tuple(found)


def may_match(name: str, text: str, lowered: str | None = None) -> bool:
    """False when detector ``name``'s patterns cannot match ``text`` (see ``PREFILTERS``)."""
    for exact, literals in PREFILTERS.get(name, ()):
        haystack = text if exact else (lowered if lowered is not None else text.lower())
        if not any(literal in haystack for literal in literals):
            return False
    return True


@lru_cache(maxsize=1)
def _filters() -> tuple[Any, ...]:
    from detect_secrets.filters import heuristic

    return (heuristic.is_sequential_string, heuristic.is_potential_uuid,
            heuristic.is_templated_secret, heuristic.is_not_alphanumeric_string)


def fingerprint() -> str:
    """What this pass is: the library's version and the detectors used (for re-redaction)."""
    from importlib.metadata import version

    return f"detect-secrets {version('detect-secrets')}: {','.join(PLUGINS)}; chunk {MAX_CHUNK}"


def _chunks(text: str) -> Iterator[tuple[int, str]]:
    """``(offset, piece)`` covering ``text`` in pieces of at most ``MAX_CHUNK`` characters, each
    cut after the last line break before the limit, else the last whitespace or punctuation
    (a text within the limit is one piece: one scan per detector)."""
    start = 0
    n = len(text)
    while start < n:
        end = min(n, start + MAX_CHUNK)
        if end < n:
            half = start + MAX_CHUNK // 2
            newline = text.rfind("\n", half, end)
            if newline >= 0:
                end = newline + 1
            else:
                cuts = [m.end() for m in _CUT.finditer(text, half, end)]
                if cuts:
                    end = cuts[-1]
        yield start, text[start:end]
        start = end


def _findings(piece: str) -> Iterator[tuple[int, int, str]]:
    """``(start, end, kind)`` of each secret the detectors find in ``piece``."""
    filters = _filters()
    lowered = piece.lower()
    for name, kind, patterns in _detectors():
        if not may_match(name, piece, lowered):
            continue
        for pattern in patterns:
            for m in pattern.finditer(piece):
                # The secret is the pattern's longest group when context precedes it (aws ...
                # secret = "<group>", ://user:<group>@), else the whole match (a group at the
                # match's start only names a prefix: (glpat|gldt)-...).
                group = max(range(1, m.re.groups + 1), default=0, key=lambda i: len(m.group(i) or ""))
                if group and (not m.group(group) or m.start(group) == m.start()):
                    group = 0
                start, end = m.span(group)
                if group == 0:  # some patterns take the delimiters around the token along
                    value = m.group(0)
                    start += len(value) - len(value.lstrip(_DELIMITERS))
                    end -= len(value) - len(value.rstrip(_DELIMITERS))
                value = piece[start:end]
                if not value or "REDACTED" in value or any(f(value) for f in filters):
                    continue
                yield start, end, kind


def redact_text(text: str) -> str:
    """The hook's rules, then the detectors, on one text value."""
    if not text:
        return text
    return detector_pass(hook_rules.redact_text(text))


def detector_pass(text: str) -> str:
    """The second pass alone: each secret detect-secrets' detectors find becomes a marker."""
    spans: list[tuple[int, int, str]] = []
    for offset, piece in _chunks(text):
        spans.extend((offset + a, offset + b, kind) for a, b, kind in _findings(piece))
    if not spans:
        return text
    # Longest first at equal starts; a span inside one kept is dropped.
    spans.sort(key=lambda s: (s[0], -s[1]))
    out, at = [], 0
    values = set()
    for start, end, kind in spans:
        if start < at:
            continue
        out.append(text[at:start])
        out.append(f"[REDACTED:{kind}]")
        if end - start >= _MIN_VALUE:
            values.add((text[start:end], kind))
        at = end
    out.append(text[at:])
    text = "".join(out)
    # The same secret elsewhere in the text (where the detector's context did not match).
    for value, kind in values:
        if value in text:
            text = text.replace(value, f"[REDACTED:{kind}]")
    return text


def redact_obj(obj: Any) -> Any:
    """Redact every string inside a JSON-like value (dict keys kept as they are)."""
    return hook_rules.redact_obj(obj, redact_text)


# A complete JSON string literal (linear: no nested quantifier can backtrack).
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*+"', re.DOTALL)


def _redact_json_string(match: re.Match[str]) -> str:
    literal = match.group(0)
    try:
        value = json.loads(literal)
    except ValueError:
        return literal
    redacted = detector_pass(value)
    return literal if redacted == value else json.dumps(redacted, ensure_ascii=False)


def redact_bytes(data: bytes) -> bytes:
    """Raw bytes (an inbox row, a quarantined line): the hook's rules, then the detectors on
    each JSON string value in it (its decoded text, so a bare quote of the JSON structure is
    never read as part of a value; numbers and layout keep their bytes). Bytes that are not UTF-8
    are left to the hook's rules."""
    data = hook_rules.redact_bytes(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return data
    if text.lstrip()[:1] not in ("{", "["):
        redacted = detector_pass(text)
    else:
        redacted = _JSON_STRING.sub(_redact_json_string, text)
        try:
            json.loads(text)
        except (ValueError, RecursionError):  # cut-off (or too deep) JSON: its unterminated last value is no literal
            redacted = detector_pass(redacted)
    return data if redacted == text else redacted.encode("utf-8")
