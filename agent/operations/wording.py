"""Counts in words for reports: ``1 step``, ``2 steps``, never ``1 steps``."""

from __future__ import annotations

from typing import Any


def plural(count: Any, noun: str, nouns: str | None = None) -> str:
    """``"<count> <noun>"``, the noun plural unless the count is exactly one (``nouns`` for an
    irregular plural). A missing count (None) reads as ``"? steps"``."""
    shown = "?" if count is None else count
    return f"{shown} {noun if count == 1 else (nouns or noun + 's')}"
