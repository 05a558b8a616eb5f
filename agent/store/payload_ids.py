"""Whose a captured payload is (its session id and cwd), even when it is not valid JSON.

Purging by session or project must find quarantined input too, and quarantined payloads are
exactly the ones that did not parse: cut off mid-write (a killed hook, a stdin timeout), not
UTF-8, or corrupt transcript lines. Their top-level keys are still there in the bytes, so this
reads them with a scanner that follows JSON's structure (strings, brackets) without needing
the document to be complete or well-formed. One linear pass; never raises.
"""

from __future__ import annotations

import json
import re
from typing import Any

SESSION_KEYS = ("session_id", "sessionId")  # hook events; transcript lines
CWD_KEY = "cwd"

_STRUCTURE = re.compile(rb'["{}\[\]:,]')
# The rest of a JSON string after its opening quote, through the closing quote (unrolled so it
# runs in linear time; escapes, including escaped newlines, are one unit).
_STRING_REST = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


def _decode_string(token: bytes) -> str | None:
    try:
        value = json.loads(token.decode("utf-8", "replace"))
    except ValueError:
        return None
    return value if isinstance(value, str) else None


def top_level_strings(raw: bytes, keys: tuple[str, ...]) -> dict[str, str]:
    """The string values of ``keys`` among the top-level members of the JSON object ``raw``
    starts with, read as far as the bytes go (a truncated or malformed tail is ignored)."""
    wanted = set(keys)
    found: dict[str, str] = {}
    depth = 0
    previous = b""  # the last structural token at depth 1 ("{", ",", ":")
    key: str | None = None
    pos = 0
    while len(found) < len(wanted):
        match = _STRUCTURE.search(raw, pos)
        if match is None:
            break
        token, pos = match.group(), match.end()
        if token == b'"':
            end = _STRING_REST.match(raw, pos)
            if end is None:
                break  # cut off inside a string: nothing after it is readable
            start, pos = pos - 1, end.end()
            if depth != 1:
                continue
            if previous in (b"{", b","):
                key = _decode_string(raw[start:pos])
            elif previous == b":" and key in wanted and key not in found:
                value = _decode_string(raw[start:pos])
                if value is not None:
                    found[key] = value
            previous = b"string"
        elif token in (b"{", b"["):
            depth += 1
            if depth == 1:
                if token == b"[":
                    break  # not an object
                previous = b"{"
        elif token in (b"}", b"]"):
            depth -= 1
            if depth < 1:
                break
        elif depth == 1:
            previous = token
            if token == b",":
                key = None
    return found


def payload_ids(payload: bytes | str | dict[str, Any] | None) -> tuple[str | None, str | None]:
    """``(session_id, cwd)`` of a captured payload: a parsed hook event or transcript line, or
    the raw bytes of one that may be truncated or malformed. None where it does not say."""
    if payload is None:
        return None, None
    if isinstance(payload, dict):
        session = next((payload[k] for k in SESSION_KEYS if isinstance(payload.get(k), str)), None)
        cwd = payload.get(CWD_KEY)
        return session, cwd if isinstance(cwd, str) else None
    raw = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else bytes(payload)
    found = top_level_strings(raw, (*SESSION_KEYS, CWD_KEY))
    session = next((found[k] for k in SESSION_KEYS if k in found), None)
    return session, found.get(CWD_KEY)
