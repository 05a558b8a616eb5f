"""Claude Code settings files as JSON: read strictly, write back without changing the user's values.

A settings file is the user's. ccrl reads it only if it is plain JSON that Claude Code's own
parser (``JSON.parse``) reads the same way, and writes back every value as it was: numbers keep
their exact text (``1e400`` stays ``1e400``, never ``Infinity``; ``1.50`` stays ``1.50``), keys
keep their order. Anything it cannot read that way is refused (``SettingsFileError``) and left
untouched.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any


class SettingsFileError(Exception):
    """A settings file ccrl must not change: unreadable, not JSON, or an unexpected shape."""


class NumberText:
    """A JSON number exactly as written in the file (Python's float would turn ``1e400`` into
    ``inf``, written back as ``Infinity``, which is not JSON; ints and floats would lose their
    spelling). Compared by its text."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NumberText) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"NumberText({self.text!r})"

    def __deepcopy__(self, memo: dict) -> NumberText:
        return self


def _unique_keys(path: Path) -> Any:
    def build(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                # JSON.parse keeps the last value, Python too: a rewrite would silently drop the
                # first one, which may be the setting the user meant. Let them decide.
                raise SettingsFileError(
                    f"{path} has the key {key!r} twice in the same object (Claude Code uses only "
                    "the last one). Nothing was changed; remove one of them and run the command again."
                )
            result[key] = value
        return result

    return build


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_settings(raw: bytes, path: Path) -> dict[str, Any]:
    """Parse a settings file's bytes. An empty (or blank) file counts as ``{}``."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raise SettingsFileError(
            f"{path} starts with a byte order mark, which Claude Code's JSON parser rejects. Nothing "
            "was changed; save it as UTF-8 without a BOM and run the command again."
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SettingsFileError(f"{path} is not UTF-8 text ({exc}). Nothing was changed; fix or move it, "
                                "then run the command again.") from exc
    if not text.strip():
        return {}
    try:
        data = json.loads(text, parse_constant=_reject_constant, parse_float=NumberText, parse_int=NumberText,
                          object_pairs_hook=_unique_keys(path))
    except SettingsFileError:
        raise
    except (ValueError, RecursionError) as exc:
        raise SettingsFileError(
            f"{path} is not valid JSON ({exc}). Nothing was changed; fix the file (or move it "
            "away) and run the command again."
        ) from exc
    if not isinstance(data, dict):
        raise SettingsFileError(f"{path} holds {kind(data)}, not a JSON object. Nothing was changed.")
    return data


def kind(value: Any) -> str:
    """A JSON value's type in words, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, NumberText) or type(value) in (int, float):
        return "a number"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(type(value), type(value).__name__)


def _string(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (``"\ud800"`` in the file): keep it escaped
        return json.dumps(value)
    return json.dumps(value, ensure_ascii=False)


def _encode(value: Any, indent: str, level: int) -> str:
    """``json.dumps(value, indent=indent, ensure_ascii=False)``, but numbers as written."""
    if isinstance(value, NumberText):
        return value.text
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, dict):
        if not value:
            return "{}"
        inner = indent * (level + 1)
        items = (f"{inner}{_string(k)}: {_encode(v, indent, level + 1)}" for k, v in value.items())
        return "{\n" + ",\n".join(items) + "\n" + indent * level + "}"
    if isinstance(value, list):
        if not value:
            return "[]"
        inner = indent * (level + 1)
        return "[\n" + ",\n".join(inner + _encode(v, indent, level + 1) for v in value) + "\n" + indent * level + "]"
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value!r} cannot be written as JSON")
    return json.dumps(value)  # ccrl's own values: bool, None, int


def _indent_of(raw: bytes | None) -> str:
    """The indentation the file already uses (so a merge does not reformat it), default 2."""
    if raw:
        match = re.match(rb'\s*\{\s*?\n([ \t]+)"', raw)
        if match:
            return match.group(1).decode()
    return "  "


def render(settings: dict[str, Any], previous: bytes | None = None) -> bytes:
    """Settings as the bytes ccrl writes: the file's own indentation, UTF-8, final newline."""
    try:
        text = _encode(settings, _indent_of(previous), 0)
    except RecursionError as exc:
        raise SettingsFileError("the settings are nested too deeply to write back safely; nothing was changed") from exc
    return (text + "\n").encode("utf-8")
