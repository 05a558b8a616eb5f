"""Scripted Claude Code sessions: each builder lays out a small scratch project and returns the
script that works on it (see :mod:`tests.e2e.scripted_api` for how scripts are served).

Every builder takes the project directory (tools need absolute paths) and returns a
:class:`Scenario`: the prompt to give ``claude -p`` (without the ``[scenario:KEY]`` tag, which
:meth:`Scenario.prompt_for` adds) and the script. The tests assert captured traces against these
same objects, so the expectations live next to the replies that produce them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .scripted_api import Script, final_text, text, thinking, tool_use

# Fake but well-formed secrets: each matches a redaction rule of ccrl.hooks.redact.
SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAQYLPMN5HFIQR7XZA",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzq8Hk2Lm9T",
    "OPENAI_API_KEY": "sk-proj-Q7vX2mN9pL4kR8sT1wY6zB3cD5fG0hJ",
    "GITHUB_TOKEN": "ghp_R4nD0mT0k3nV4lu3F0rT3st1ngXyZ98765",
}
# The markers ccrl's redaction puts in their place.
SECRET_MARKERS = (
    "[REDACTED:aws_access_key]",
    "[REDACTED:aws_secret_key]",
    "[REDACTED:openai_key]",
    "[REDACTED:github_token]",
)


@dataclass
class Scenario:
    """A prompt plus the script that answers it."""

    name: str
    prompt: str
    script: Script

    def prompt_for(self, key: str) -> str:
        """The prompt as given to Claude Code, tagged so the server picks this script."""
        return f"{self.prompt} [scenario:{key}]"

    @property
    def response(self) -> str:
        """Claude's final answer (what ``claude -p`` prints, without the trailing newline)."""
        return final_text(self.script)

    @property
    def tool_sequence(self) -> list[str]:
        """Tool names in call order."""
        return [b.name for step in self.script for b in step if b.type == "tool_use"]

    @property
    def tool_inputs(self) -> list[dict]:
        """Tool inputs in call order."""
        return [b.input for step in self.script for b in step if b.type == "tool_use"]

    @property
    def reasoning(self) -> list[str]:
        """Thinking and text blocks before the final answer, in order."""
        return [b.text for step in self.script[:-1] for b in step if b.type in ("thinking", "text")]


def _write(path: Path, content: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return path


def multi_step(project: Path) -> Scenario:
    """Explore (Glob, Grep), read, edit, answer; thinking and text before the tool calls."""
    greet = _write(project / "app" / "greet.py", 'def greet(name):\n    return f"Helo, {name}!"\n')
    _write(project / "app" / "__init__.py", "")
    _write(project / "README.md", "# greeter\n")
    return Scenario(
        "multi-step",
        "The greeting has a typo, please fix it.",
        [
            [
                thinking("The user reports a typo in a greeting. I should find where greetings are defined."),
                text("Let me look at the project's Python files first."),
                tool_use("Glob", {"pattern": "**/*.py", "path": str(project)}),
            ],
            [
                thinking("There is app/greet.py. Search for the misspelled word to be sure."),
                tool_use("Grep", {"pattern": "Helo", "path": str(project), "output_mode": "content", "-n": True}),
            ],
            [
                text("Found it in app/greet.py; reading the file before editing."),
                tool_use("Read", {"file_path": str(greet)}),
            ],
            [
                thinking("Line 2 says Helo; it should be Hello."),
                tool_use("Edit", {"file_path": str(greet), "old_string": "Helo,", "new_string": "Hello,"}),
            ],
            [text("Fixed the typo in app/greet.py: the greeting now says \"Hello\".")],
        ],
    )


def failed_then_retry(project: Path) -> Scenario:
    """An Edit whose old_string is missing and a Bash command exiting 3, each then corrected."""
    config = _write(project / "config.ini", "[server]\nport = 8080\n")
    return Scenario(
        "failed-retry",
        "Change the server port to 9090 and check the config parses.",
        [
            [tool_use("Read", {"file_path": str(config)})],
            [
                text("Updating the port."),
                tool_use("Edit", {"file_path": str(config), "old_string": "port=8080", "new_string": "port=9090"}),
            ],
            [
                thinking("The edit failed: the file has spaces around '='. Retry with the exact text."),
                tool_use("Edit", {"file_path": str(config), "old_string": "port = 8080", "new_string": "port = 9090"}),
            ],
            [
                tool_use(
                    "Bash",
                    {"command": "grep -q 'port = 9091' config.ini || exit 3", "description": "Check the port"},
                ),
            ],
            [
                thinking("Exit 3: I checked for the wrong port number. Check for 9090."),
                tool_use(
                    "Bash",
                    {"command": "grep -c 'port = 9090' config.ini", "description": "Check the new port"},
                ),
            ],
            [text("The server port is now 9090 and config.ini has the new value.")],
        ],
    )


def parallel_reads(project: Path) -> Scenario:
    """Two Reads in one assistant message."""
    a = _write(project / "src" / "a.txt", "alpha\n")
    b = _write(project / "src" / "b.txt", "beta\n")
    return Scenario(
        "parallel",
        "Compare src/a.txt and src/b.txt.",
        [
            [
                text("Reading both files at once."),
                tool_use("Read", {"file_path": str(a)}),
                tool_use("Read", {"file_path": str(b)}),
            ],
            [text("a.txt says alpha and b.txt says beta: they differ.")],
        ],
    )


def continued(project: Path) -> tuple[Scenario, Scenario]:
    """Two prompts of one session: the second is asked with ``claude -p --continue``."""
    notes = _write(project / "NOTES.md", "- buy milk\n- ship release 1.2\n")
    first = Scenario(
        "continue-1",
        "What is in NOTES.md?",
        [
            [tool_use("Read", {"file_path": str(notes)})],
            [text("NOTES.md lists two items: buy milk, ship release 1.2.")],
        ],
    )
    second = Scenario(
        "continue-2",
        "Which release does it mention?",
        [
            [
                thinking("The user asks about the release in the same notes; grep to quote it exactly."),
                tool_use("Grep", {"pattern": "release", "path": str(notes), "output_mode": "content"}),
            ],
            [text("It mentions release 1.2.")],
        ],
    )
    return first, second


def concurrent(project: Path, index: int) -> Scenario:
    """One of several sessions run at the same time in the same project: distinct files and text."""
    item = _write(project / f"item{index}.txt", f"item number {index}\n")
    return Scenario(
        f"concurrent-{index}",
        f"Summarise item{index}.txt.",
        [
            [
                thinking(f"Session {index}: read item{index}.txt."),
                tool_use("Read", {"file_path": str(item)}),
            ],
            [
                tool_use("Bash", {"command": f"wc -c item{index}.txt", "description": f"Size of item {index}"}),
            ],
            [text(f"item{index}.txt holds the text 'item number {index}'.")],
        ],
    )


def env_secrets(project: Path) -> Scenario:
    """A project with a ``.env`` of secrets that Claude reads (Read) and prints (Bash cat)."""
    body = "".join(f"{name}={value}\n" for name, value in SECRETS.items())
    env = _write(project / ".env", "# local credentials\n" + body + "DEBUG=1\n")
    return Scenario(
        "secrets",
        "Which services does .env configure?",
        [
            [
                text("Let me read the environment file."),
                tool_use("Read", {"file_path": str(env)}),
            ],
            [tool_use("Bash", {"command": "cat .env", "description": "Print .env"})],
            [text("It configures AWS, OpenAI and GitHub credentials, plus DEBUG=1.")],
        ],
    )


def stock(project: str | Path) -> dict[str, Script]:
    """Every scenario laid out under ``project`` (one sub-folder each), keyed by name."""
    root = Path(project).resolve()
    scenarios: list[Scenario] = [
        multi_step(root / "multi-step"),
        failed_then_retry(root / "failed-retry"),
        parallel_reads(root / "parallel"),
        *continued(root / "continue"),
        *(concurrent(root / "concurrent", i) for i in range(3)),
        env_secrets(root / "secrets"),
    ]
    return {s.name: s.script for s in scenarios}


__all__ = [
    "SECRETS",
    "SECRET_MARKERS",
    "Scenario",
    "concurrent",
    "continued",
    "env_secrets",
    "failed_then_retry",
    "multi_step",
    "parallel_reads",
    "stock",
]
