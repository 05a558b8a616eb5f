"""The first-party modules of the checkout, found on disk: what the wheel test and the
architecture test each check against (so a module neither knows about still counts)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The three code folders and the package each installs as (pyproject.toml's package-dir).
FOLDERS = {"hooks": "ccrl.hooks", "agent": "ccrl.agent", "trainers": "ccrl.trainers"}


def checkout_modules() -> dict[str, Path]:
    """Every first-party module in the checkout, by the name it installs as, with its file."""
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if "__pycache__" in parts:
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found
