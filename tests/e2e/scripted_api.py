"""A scripted, local Anthropic Messages API, good enough to drive the real Claude Code CLI.

Claude Code (``claude -p``) POSTs ``/v1/messages?beta=true`` with ``"stream": true``; this server
answers with the same server-sent events the real API sends, so the CLI really runs the tools,
fires the real hooks and writes a real transcript. Standard library only.

How replies are chosen
----------------------
A *script* is a list of *steps*; a step is one assistant message: a list of blocks
(:func:`thinking`, :func:`text`, :func:`tool_use`). A step holding a ``tool_use`` block ends with
``stop_reason: tool_use`` (Claude Code runs the tools and sends the next request); any other step
ends the turn (``end_turn``).

Scripts are registered under a key (:meth:`ScriptedAPI.add_script`); a prompt selects one by
containing ``[scenario:KEY]``. For each request the server finds the latest *real* user prompt
(a user message that is not only tool results) and counts the assistant messages after it: that
count is the step to answer with. Replies therefore depend only on the request, never on server
state, so retries, several concurrent sessions and ``--continue`` (a second prompt with its own
key, asked in the same conversation) all work.

Requests that do not belong to a script (no tools offered, or no ``[scenario:…]`` key, e.g. a
title or summary side request) get :data:`SIDE_REPLY` and do not consume a step. Every request
is recorded in :attr:`ScriptedAPI.requests`; anything that is not ``POST /v1/messages`` is
answered sensibly and recorded in :attr:`ScriptedAPI.unknown` so a test can show what the CLI
asked for.

What Claude Code 2.1.328 sends (observed): only ``POST /v1/messages?beta=true`` with
``stream: true``, ``thinking: {"type": "adaptive"}``, ``model: "claude-opus-5-5"``, 14 tools and
``metadata.user_id`` (a JSON string holding the ``session_id``); ``messages`` may hold a
``role: "system"`` message after the first prompt, the first prompt comes as text blocks (a
``<system-reminder>`` block, then the prompt), thinking blocks go back with their signatures,
and results of parallel calls come back in completion order. With
``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1`` there were no side requests and no other endpoint.

Usage (the demo uses the same API to produce sample sessions; tests/e2e/harness.py runs the
CLI as an isolated user)::

    with ScriptedAPI() as api:
        key = api.add_script("fix-typo", [
            [thinking("Find the typo first."), tool_use("Grep", {"pattern": "teh"})],
            [text("Fixed.")],
        ])
        user = Sandbox(scratch_dir, api, find_claude())
        user.claude(f"Fix the typo [scenario:{key}]", project_dir).check()

Run as a module (``python -m tests.e2e.scripted_api --project /tmp/scratch --port 8765``) to lay
out and serve the stock scenarios of :mod:`tests.e2e.scenarios` by hand; each is selected by
``[scenario:NAME]`` in a prompt given in its sub-folder of the scratch dir.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

SCENARIO_RE = re.compile(r"\[scenario:([A-Za-z0-9_.\-]+)\]")
SIDE_REPLY = "ok"
DEFAULT_MODEL = "claude-sonnet-4-5"


# --- script building blocks ---------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """One content block of a scripted assistant message."""

    type: str  # "thinking", "text" or "tool_use"
    text: str = ""
    name: str = ""
    input: dict[str, Any] = field(default_factory=dict)


def thinking(text: str) -> Block:
    """A thinking block (streamed as ``thinking_delta`` + ``signature_delta``)."""
    return Block("thinking", text=text)


def text(text: str) -> Block:
    """A text block (streamed as ``text_delta``)."""
    return Block("text", text=text)


def tool_use(name: str, input: dict[str, Any]) -> Block:
    """A tool call (streamed as ``input_json_delta``); its id is made fresh per reply."""
    return Block("tool_use", name=name, input=dict(input))


Step = list[Block]
Script = list[Step]


def final_text(script: Script) -> str:
    """The text Claude Code prints for this script with ``-p``: the last step's text blocks."""
    return "".join(b.text for b in script[-1] if b.type == "text")


# --- reading requests ---------------------------------------------------------------------


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [b for b in content if isinstance(b, dict)]
    return []


def is_real_prompt(message: dict[str, Any]) -> bool:
    """A user message that carries a prompt, not only tool results."""
    if message.get("role") != "user":
        return False
    blocks = _blocks(message.get("content"))
    return any(b.get("type") == "text" for b in blocks) and not any(
        b.get("type") == "tool_result" for b in blocks
    )


def locate(body: dict[str, Any]) -> tuple[str | None, int]:
    """The scenario key of the latest real prompt and how many assistant messages follow it."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if not is_real_prompt(message):
            continue
        keys = [
            match.group(1)
            for b in _blocks(message.get("content"))
            if b.get("type") == "text"
            for match in SCENARIO_RE.finditer(str(b.get("text", "")))
        ]
        if not keys:
            continue
        step = sum(1 for m in messages[index + 1 :] if m.get("role") == "assistant")
        return keys[-1], step
    return None, 0


# --- writing replies ----------------------------------------------------------------------


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def _usage(output_tokens: int = 0) -> dict[str, int]:
    return {
        "input_tokens": 10,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def _chunks(value: str, size: int = 24) -> list[str]:
    """Split a delta into several events, as the real API streams."""
    return [value[i : i + size] for i in range(0, len(value), size)] or [""]


def stream_events(step: Step, model: str) -> list[tuple[str, dict[str, Any]]]:
    """The server-sent events of one assistant message, in order."""
    message_id = _new_id("msg_e2e_")
    events: list[tuple[str, dict[str, Any]]] = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": _usage(1),
                },
            },
        )
    ]
    output_tokens = 0
    for index, block in enumerate(step):
        if block.type == "thinking":
            start = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [{"type": "thinking_delta", "thinking": c} for c in _chunks(block.text)]
            deltas.append({"type": "signature_delta", "signature": "sig-" + secrets.token_hex(16)})
            output_tokens += len(block.text.split())
        elif block.type == "text":
            start = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": c} for c in _chunks(block.text)]
            output_tokens += len(block.text.split())
        elif block.type == "tool_use":
            start = {"type": "tool_use", "id": _new_id("toolu_e2e_"), "name": block.name, "input": {}}
            payload = json.dumps(block.input)
            deltas = [{"type": "input_json_delta", "partial_json": c} for c in _chunks(payload)]
            output_tokens += len(payload) // 4
        else:
            raise ValueError(f"unknown block type {block.type!r}")
        events.append(("content_block_start", {"type": "content_block_start", "index": index, "content_block": start}))
        for delta in deltas:
            events.append(("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}))
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    stop_reason = "tool_use" if any(b.type == "tool_use" for b in step) else "end_turn"
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": max(output_tokens, 1)},
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def message_json(step: Step, model: str) -> dict[str, Any]:
    """The same reply as one JSON message, for a request with ``"stream": false``."""
    message: dict[str, Any] = {}
    content: list[dict[str, Any]] = []
    for name, data in stream_events(step, model):
        if name == "message_start":
            message = data["message"]
        elif name == "content_block_start":
            content.append(dict(data["content_block"]))
        elif name == "content_block_delta":
            block, delta = content[data["index"]], data["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                block["signature"] = delta["signature"]
            elif delta["type"] == "input_json_delta":
                block["_json"] = block.get("_json", "") + delta["partial_json"]
        elif name == "message_delta":
            message["stop_reason"] = data["delta"]["stop_reason"]
            message["usage"]["output_tokens"] = data["usage"]["output_tokens"]
    for block in content:
        if "_json" in block:
            block["input"] = json.loads(block.pop("_json"))
    message["content"] = content
    return message


# --- the server ---------------------------------------------------------------------------


@dataclass
class Request:
    """One request the server saw, kept for assertions and debugging."""

    method: str
    path: str
    body: Any
    scenario: str | None = None
    step: int | None = None
    kind: str = "unknown"  # "script", "side" or "unknown"


class ScriptedAPI:
    """A threaded Messages API on 127.0.0.1 answering from registered scripts.

    ``port=0`` (the default) binds a free port; :attr:`url` says which.
    """

    def __init__(self, model: str = DEFAULT_MODEL, port: int = 0) -> None:
        self.model = model
        self.port = port
        self.scripts: dict[str, Script] = {}
        self.requests: list[Request] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle
    def start(self) -> ScriptedAPI:
        """Bind a free port and serve in a background thread."""
        handler = type("Handler", (_Handler,), {"api": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="scripted-api", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> ScriptedAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base URL to give Claude Code as ``ANTHROPIC_BASE_URL``."""
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # scripts
    def add_script(self, key: str, script: Script) -> str:
        """Register ``script`` under ``key`` (letters, digits, ``_.-``); returns the key."""
        if not SCENARIO_RE.fullmatch(f"[scenario:{key}]"):
            raise ValueError(f"bad scenario key {key!r}")
        if not script or any(b.type == "tool_use" for b in script[-1]):
            raise ValueError("a script's last step must end the turn (no tool_use)")
        with self._lock:
            self.scripts[key] = script
        return key

    def requests_for(self, key: str) -> list[Request]:
        """The scripted requests answered for ``key``, in arrival order."""
        with self._lock:
            return [r for r in self.requests if r.scenario == key and r.kind == "script"]

    @property
    def unknown(self) -> list[Request]:
        """Requests that were not Messages API calls (endpoints this server does not model)."""
        with self._lock:
            return [r for r in self.requests if r.kind == "unknown"]

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def choose(self, body: dict[str, Any]) -> tuple[Step, Request]:
        """The step that answers ``body`` and the record describing the choice."""
        key, step = locate(body)
        record = Request("POST", "/v1/messages", body, key, step, "side")
        with self._lock:
            script = self.scripts.get(key) if key else None
        if script is None or not body.get("tools"):
            return [text(SIDE_REPLY)], record
        record.kind = "script"
        if step >= len(script):
            message = f"scenario {key!r} has {len(script)} steps; request asks for step {step + 1}"
            with self._lock:
                self.errors.append(message)
            return [text(f"[scripted-api error: {message}]")], record
        return script[step], record


class _Handler(BaseHTTPRequestHandler):
    api: ScriptedAPI
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Quiet: requests are recorded on the api object instead."""

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send_json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _unknown(self, body: Any) -> None:
        self.api._record(Request(self.command, self.path, body))
        if self.command == "HEAD":
            self._send_json(200, {})
            return
        self._send_json(
            404,
            {"type": "error", "error": {"type": "not_found_error", "message": f"{self.command} {self.path} is not scripted"}},
        )

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib naming
        self._unknown(None)

    def do_GET(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path
        if path == "/v1/models":
            self.api._record(Request("GET", self.path, None, kind="models"))
            model = {"type": "model", "id": self.api.model, "display_name": self.api.model, "created_at": "2025-01-01T00:00:00Z"}
            self._send_json(200, {"data": [model], "has_more": False, "first_id": model["id"], "last_id": model["id"]})
            return
        self._unknown(None)

    def do_POST(self) -> None:  # noqa: N802
        raw = self._read_body()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = raw.decode("utf-8", "replace")
        path = urlsplit(self.path).path
        if path == "/v1/messages/count_tokens" and isinstance(body, dict):
            self.api._record(Request("POST", self.path, body, kind="count_tokens"))
            self._send_json(200, {"input_tokens": max(1, len(json.dumps(body)) // 4)})
            return
        if path != "/v1/messages" or not isinstance(body, dict):
            self._unknown(body)
            return
        step, record = self.api.choose(body)
        record.path = self.path
        self.api._record(record)
        model = str(body.get("model") or self.api.model)
        if body.get("stream"):
            self._send_stream(stream_events(step, model))
        else:
            self._send_json(200, message_json(step, model))

    def _send_stream(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        for name, data in events:
            self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()
        self.close_connection = True


def main() -> None:
    """Serve the stock scenarios on a fixed port until interrupted (for trying the CLI by hand)."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", required=True, help="scratch directory to lay the scenario projects out in")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    args = parser.parse_args()
    from . import scenarios  # run as `python -m tests.e2e.scripted_api` from the repo root

    with ScriptedAPI(port=args.port) as api:
        for key, script in scenarios.stock(args.project).items():
            api.add_script(key, script)
        print(f"ANTHROPIC_BASE_URL={api.url}  scenarios: {', '.join(api.scripts)}", flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
