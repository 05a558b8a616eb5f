"""An Ollama API server for the test suite (no Ollama can be installed here).

It implements the endpoints ccrl uses, as the Ollama API documentation specifies them, so the
real ``ollama`` Python client talks to it unchanged:

- ``HEAD /api/blobs/<digest>``: 200 when the blob exists, 404 when not.
- ``POST /api/blobs/<digest>``: stores the body; 201, or 400 when its sha256 is not the digest.
- ``POST /api/create``: ``files`` (one GGUF blob), ``template``, ``system``, ``parameters``;
  NDJSON status lines ending in ``success`` (one object when ``stream`` is false). 400 for
  ``adapters`` (LoRA adapters are no longer supported), for ``quantize`` on a GGUF, for a
  missing blob, a file that is not a GGUF, a template Go cannot parse or an unknown parameter.
- ``GET /api/tags``, ``POST /api/show``, ``DELETE /api/delete``, ``POST /api/copy``.
- ``POST /api/generate`` and ``POST /api/chat``: the registered template is rendered by Go's
  ``text/template`` (``tests/go_render``, the way Ollama renders it) and the registered GGUF
  runs in llama-cpp-python (one thread), stopping at the model's stop parameters: a test can
  "ollama run" a deployed model.

Models live in memory; blobs in a folder. ``requests`` records every (method, path) served;
``fail_next`` makes one chosen request fail, as an Ollama that errors mid-deployment would.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

GO_RENDER_SOURCE = Path(__file__).resolve().parent / "go_render"
DIGEST_RE = re.compile(r"^sha256[:-]([0-9a-f]{64})$")
# Modelfile parameters Ollama accepts (api.Options and api.Runner field names).
KNOWN_PARAMETERS = {
    "num_keep", "seed", "num_predict", "top_k", "top_p", "min_p", "typical_p", "repeat_last_n",
    "temperature", "repeat_penalty", "presence_penalty", "frequency_penalty", "stop",
    "num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread",
}
# general.file_type values that are not quantized (F32, F16, BF16).
UNQUANTIZED_FILE_TYPES = {0, 1, 32}


class GoNotInstalled(RuntimeError):
    """Go is needed to render Ollama templates in tests."""


def build_go_renderer(out_dir: Path) -> Path:
    """Compile ``tests/go_render`` with Debian's golang into ``out_dir`` and return the binary."""
    go = shutil.which("go")
    if go is None:
        raise GoNotInstalled(
            "Go is not installed: Ollama templates are Go text/templates and the tests render them "
            "with Go. Install it with `apt-get install golang-go` (`make setup` does)."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = out_dir / "go_render"
    env = dict(os.environ)
    env.setdefault("GOCACHE", str(out_dir / "gocache"))
    env.setdefault("GOPATH", str(out_dir / "gopath"))
    env["GOFLAGS"] = "-mod=mod"
    env["CGO_ENABLED"] = "0"
    subprocess.run([go, "build", "-o", str(binary), "."], cwd=GO_RENDER_SOURCE, env=env, check=True,
                   capture_output=True, text=True)
    return binary


def go_render(binary: Path, mode: str, template: str, messages: list[dict] | None = None,
              tools: list[dict] | None = None) -> str:
    """Run the Go renderer: ``render`` (the prompt Ollama v0.14+ would build), ``render-legacy``
    (the same as Ollama v0.2.6 to v0.13 built it), ``tag`` or ``vars``."""
    payload = json.dumps({"template": template, "messages": messages or [], "tools": tools or []})
    proc = subprocess.run([str(binary), mode], input=payload.encode(), capture_output=True)
    if proc.returncode != 0:
        raise ValueError(proc.stderr.decode(errors="replace").strip())
    return proc.stdout.decode()


def normalize_name(name: str) -> str:
    """Ollama's short form: ``model`` means ``model:latest``; names compare case-insensitively."""
    name = name.strip().lower()
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def go_value(value: Any) -> str:
    """A parameter value as Go's ``%#v`` prints it (how ``show`` lists parameters)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def format_parameters(parameters: dict[str, Any]) -> str:
    """``show``'s ``parameters``: one ``name value`` line per value, lists one line per item."""
    lines = []
    for key in sorted(parameters):
        values = parameters[key] if isinstance(parameters[key], list) else [parameters[key]]
        lines += [f"{key:<30} {go_value(v)}" for v in values]
    return "\n".join(lines)


@dataclass
class Model:
    """One registered model (a manifest)."""

    name: str
    gguf_digest: str
    gguf_size: int
    template: str
    system: str
    parameters: dict[str, Any]
    details: dict[str, Any]
    model_info: dict[str, Any]
    modified_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())

    @property
    def digest(self) -> str:
        manifest = {"gguf": self.gguf_digest, "template": self.template, "system": self.system,
                    "parameters": self.parameters}
        return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _gguf_summary(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(details, model_info) of a GGUF file, as ``show`` and ``tags`` report them. Read with
    llama.cpp itself (gguf-py's reader takes seconds on a 49k-token vocabulary)."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=16, n_threads=1, n_threads_batch=1, verbose=False)
    try:
        meta = dict(llm.metadata)
        n_params = int(llama_cpp.llama_model_n_params(llm.model))
    finally:
        llm.close()
    arch = meta.get("general.architecture", "unknown")
    file_type = int(meta.get("general.file_type", -1))
    quant_names = {0: "F32", 1: "F16", 7: "Q8_0", 15: "Q4_K_M", 14: "Q4_K_S", 17: "Q5_K_M", 18: "Q6_K", 32: "BF16"}
    details = {
        "parent_model": "",
        "format": "gguf",
        "family": arch,
        "families": [arch],
        "parameter_size": f"{n_params / 1e6:.1f}M" if n_params < 1e9 else f"{n_params / 1e9:.1f}B",
        "quantization_level": quant_names.get(file_type, str(file_type)),
    }
    info: dict[str, Any] = {"general.architecture": arch, "general.file_type": file_type,
                            "general.parameter_count": n_params}
    for key in (f"{arch}.context_length", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.bos_token_id"):
        if key in meta:
            info[key] = int(meta[key])
    return details, info


class OllamaState:
    """Blobs on disk, models in memory, loaded GGUFs cached by digest."""

    def __init__(self, root: Path, go_binary: Path) -> None:
        self.blob_dir = root / "blobs"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.go_binary = go_binary
        self.models: dict[str, Model] = {}
        self.lock = threading.RLock()
        self.generate_lock = threading.Lock()
        self.llms: dict[str, Any] = {}
        self.requests: list[tuple[str, str]] = []
        # "METHOD /path" -> (status, message): the next such request fails that way (an Ollama
        # that errors mid-deployment), then the entry is removed.
        self.fail_next: dict[str, tuple[int, str]] = {}

    def blob_path(self, digest: str) -> Path:
        match = DIGEST_RE.match(digest)
        if not match:
            raise HTTPError(400, f"invalid digest format: {digest}")
        return self.blob_dir / f"sha256-{match.group(1)}"

    def model(self, name: str) -> Model:
        with self.lock:
            model = self.models.get(normalize_name(name))
        if model is None:
            raise HTTPError(404, f"model '{name}' not found")
        return model

    def llm(self, model: Model) -> Any:
        import llama_cpp

        if model.gguf_digest not in self.llms:
            n_ctx = int(model.parameters.get("num_ctx") or 2048)
            self.llms[model.gguf_digest] = llama_cpp.Llama(
                model_path=str(self.blob_path(model.gguf_digest)), n_ctx=min(n_ctx, 4096),
                n_threads=1, n_threads_batch=1, verbose=False, seed=0,
            )
        return self.llms[model.gguf_digest]

    def close(self) -> None:
        for llm in self.llms.values():
            llm.close()
        self.llms.clear()


class Handler(BaseHTTPRequestHandler):
    state: OllamaState
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    # --- plumbing -------------------------------------------------------------------------

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _json_body(self) -> dict[str, Any]:
        raw = self._body()
        try:
            data = json.loads(raw or b"{}")
        except ValueError as exc:
            raise HTTPError(400, f"invalid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise HTTPError(400, "request body must be a JSON object")
        return data

    def _send(self, status: int, body: bytes = b"", content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, data: Any) -> None:
        self._send(status, json.dumps(data).encode())

    def _stream(self, objects: list[dict[str, Any]]) -> None:
        body = b"".join(json.dumps(o).encode() + b"\n" for o in objects)
        self._send(200, body, "application/x-ndjson")

    def _dispatch(self, routes: dict[str, Any]) -> None:
        self.state.requests.append((self.command, self.path))
        try:
            failure = self.state.fail_next.pop(f"{self.command} {self.path}", None)
            if failure is not None:
                self._body()
                raise HTTPError(*failure)
            for pattern, handler in routes.items():
                match = re.fullmatch(pattern, self.path)
                if match:
                    handler(*match.groups())
                    return
            raise HTTPError(404, f"404 page not found: {self.path}")
        except HTTPError as exc:
            self._send_json(exc.status, {"error": exc.message})

    def do_HEAD(self) -> None:
        self._dispatch({r"/api/blobs/([^/]+)": self.head_blob, r"/": lambda: self._send(200)})

    def do_GET(self) -> None:
        self._dispatch({
            r"/": lambda: self._send(200, b"Ollama is running", "text/plain"),
            r"/api/tags": self.tags,
            r"/api/version": lambda: self._send_json(200, {"version": "0.0.0-ccrl-test"}),
        })

    def do_POST(self) -> None:
        self._dispatch({
            r"/api/blobs/([^/]+)": self.post_blob,
            r"/api/create": self.create,
            r"/api/show": self.show,
            r"/api/copy": self.copy,
            r"/api/generate": self.generate,
            r"/api/chat": self.chat,
        })

    def do_DELETE(self) -> None:
        self._dispatch({r"/api/delete": self.delete})

    # --- blobs ----------------------------------------------------------------------------

    def head_blob(self, digest: str) -> None:
        self._send(200 if self.state.blob_path(digest).is_file() else 404)

    def post_blob(self, digest: str) -> None:
        path = self.state.blob_path(digest)
        body = self._body()
        actual = "sha256:" + hashlib.sha256(body).hexdigest()
        if actual != digest.replace("sha256-", "sha256:"):
            raise HTTPError(400, f"digest mismatch, expected '{digest}', got '{actual}'")
        tmp = path.with_name(path.name + ".partial")
        tmp.write_bytes(body)
        os.replace(tmp, path)
        self._send(201)

    # --- models ---------------------------------------------------------------------------

    def create(self) -> None:
        req = self._json_body()
        name = req.get("model") or req.get("name")
        if not name:
            raise HTTPError(400, "model is required")
        if req.get("adapters"):
            raise HTTPError(400, "LoRA adapters are not supported: merge the adapter into the model")
        files = req.get("files") or {}
        if not files:
            raise HTTPError(400, "neither 'from' nor 'files' was specified")
        ggufs = {fname: digest for fname, digest in files.items() if fname.endswith(".gguf")}
        if len(ggufs) != 1:
            raise HTTPError(400, "expected exactly one .gguf file in 'files'")
        for fname in files:
            if "/" in fname or fname.startswith(".."):
                raise HTTPError(400, f"file name must be relative: {fname}")
        (fname, digest), = ggufs.items()
        blob = self.state.blob_path(digest)
        if not blob.is_file():
            raise HTTPError(400, f"blob {digest} not found: upload it with POST /api/blobs/{digest}")
        with open(blob, "rb") as handle:
            if handle.read(4) != b"GGUF":
                raise HTTPError(400, f"{fname} is not a GGUF file")
        details, model_info = _gguf_summary(blob)
        if req.get("quantize"):
            raise HTTPError(400, "quantization is not supported for a GGUF file: quantize it before creating the model")
        parameters = req.get("parameters") or {}
        unknown = sorted(set(parameters) - KNOWN_PARAMETERS)
        if unknown:
            raise HTTPError(400, f"invalid parameter(s): {', '.join(unknown)}")
        stop = parameters.get("stop", [])
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise HTTPError(400, "parameter 'stop' must be a list of strings")
        template = req.get("template") or "{{ .Prompt }}"
        try:
            go_render(self.state.go_binary, "vars", template)
        except ValueError as exc:
            raise HTTPError(400, f"template error: {exc}") from None
        model = Model(
            name=normalize_name(name), gguf_digest=digest, gguf_size=blob.stat().st_size,
            template=template, system=req.get("system") or "", parameters=parameters,
            details=details, model_info=model_info,
        )
        with self.state.lock:
            self.state.models[model.name] = model
        statuses = [
            {"status": "parsing GGUF"},
            {"status": f"using existing layer {digest}"},
            {"status": "creating new layer sha256:" + hashlib.sha256(template.encode()).hexdigest()},
            {"status": "writing manifest"},
            {"status": "success"},
        ]
        if req.get("stream") is False:
            self._send_json(200, {"status": "success"})
        else:
            self._stream(statuses)

    def tags(self) -> None:
        with self.state.lock:
            models = list(self.state.models.values())
        self._send_json(200, {"models": [
            {"name": m.name, "model": m.name, "modified_at": m.modified_at, "size": m.gguf_size,
             "digest": m.digest, "details": m.details} for m in models
        ]})

    def show(self) -> None:
        req = self._json_body()
        model = self.state.model(req.get("model") or req.get("name") or "")
        vars_ = go_render(self.state.go_binary, "vars", model.template).split()
        capabilities = ["completion"] + (["tools"] if "tools" in vars_ else [])
        modelfile = (
            f"# Modelfile generated by \"ollama show\"\nFROM {self.state.blob_path(model.gguf_digest)}\n"
            f'TEMPLATE """{model.template}"""\n'
            + (f'SYSTEM """{model.system}"""\n' if model.system else "")
            + "".join(f"PARAMETER {k} {go_value(v)}\n" for k, vs in sorted(model.parameters.items())
                      for v in (vs if isinstance(vs, list) else [vs]))
        )
        self._send_json(200, {
            "modelfile": modelfile,
            "parameters": format_parameters(model.parameters),
            "template": model.template,
            "system": model.system,
            "details": model.details,
            "model_info": model.model_info,
            "capabilities": capabilities,
            "modified_at": model.modified_at,
        })

    def copy(self) -> None:
        req = self._json_body()
        source = self.state.model(req.get("source") or "")
        destination = normalize_name(req.get("destination") or "")
        with self.state.lock:
            self.state.models[destination] = Model(
                name=destination, gguf_digest=source.gguf_digest, gguf_size=source.gguf_size,
                template=source.template, system=source.system, parameters=dict(source.parameters),
                details=source.details, model_info=source.model_info,
            )
        self._send(200)

    def delete(self) -> None:
        req = self._json_body()
        name = normalize_name(req.get("model") or req.get("name") or "")
        with self.state.lock:
            if self.state.models.pop(name, None) is None:
                raise HTTPError(404, f"model '{req.get('model')}' not found")
        self._send(200)

    # --- inference ------------------------------------------------------------------------

    def _run(self, model: Model, prompt: str, options: dict[str, Any]) -> tuple[str, str, int, int]:
        params = {**model.parameters, **(options or {})}
        stop = list(params.get("stop") or [])
        with self.state.generate_lock:
            llm = self.state.llm(model)
            # Ollama's runner adds BOS when the GGUF asks for it; the rendered text's special
            # tokens (<|im_start|>, ...) are parsed as such.
            add_bos = str(llm.metadata.get("tokenizer.ggml.add_bos_token", "false")).lower() == "true"
            tokens = llm.tokenize(prompt.encode(), add_bos=add_bos, special=True)
            out = llm.create_completion(
                tokens, max_tokens=int(params.get("num_predict") or 128),
                temperature=float(params.get("temperature", 0.8)), top_k=int(params.get("top_k", 40)),
                top_p=float(params.get("top_p", 0.9)), seed=int(params.get("seed", 0)), stop=stop or None,
            )
        choice = out["choices"][0]
        usage = out["usage"]
        return choice["text"], choice["finish_reason"], usage["prompt_tokens"], usage["completion_tokens"]

    def _render(self, model: Model, messages: list[dict[str, Any]], tools: list[dict] | None) -> str:
        try:
            return go_render(self.state.go_binary, "render", model.template, messages, tools)
        except ValueError as exc:
            raise HTTPError(500, f"template: {exc}") from None

    def generate(self) -> None:
        req = self._json_body()
        model = self.state.model(req.get("model") or "")
        if req.get("raw"):
            prompt = req.get("prompt") or ""
        else:
            system = req.get("system") or model.system
            messages = ([{"role": "system", "content": system}] if system else [])
            messages.append({"role": "user", "content": req.get("prompt") or ""})
            prompt = self._render(model, messages, None)
        text, finish, n_prompt, n_eval = self._run(model, prompt, req.get("options") or {})
        final = {"model": req["model"], "created_at": datetime.now(timezone.utc).isoformat(),
                 "response": text, "done": True, "done_reason": "stop" if finish == "stop" else "length",
                 "prompt_eval_count": n_prompt, "eval_count": n_eval}
        if req.get("stream") is False:
            self._send_json(200, final)
        else:
            self._stream([{**final, "done": False, "done_reason": None}, {**final, "response": ""}])

    def chat(self) -> None:
        req = self._json_body()
        model = self.state.model(req.get("model") or "")
        messages = list(req.get("messages") or [])
        if model.system and (not messages or messages[0].get("role") != "system"):
            messages.insert(0, {"role": "system", "content": model.system})
        tools = req.get("tools") or None
        prompt = self._render(model, messages, tools)
        text, finish, n_prompt, n_eval = self._run(model, prompt, req.get("options") or {})
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if tools:
            content, calls = _parse_tool_calls(text)
            if calls:
                message = {"role": "assistant", "content": content, "tool_calls": calls}
        final = {"model": req["model"], "created_at": datetime.now(timezone.utc).isoformat(),
                 "message": message, "done": True, "done_reason": "stop" if finish == "stop" else "length",
                 "prompt_eval_count": n_prompt, "eval_count": n_eval}
        if req.get("stream") is False:
            self._send_json(200, final)
        else:
            self._stream([{**final, "done": False, "done_reason": None},
                          {**final, "message": {"role": "assistant", "content": ""}}])


_TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def _parse_tool_calls(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Calls written as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (the tag the
    template declares), and the text before the first one."""
    calls = []
    for match in _TOOL_CALL_RE.finditer(text):
        try:
            obj = json.loads(match.group(1))
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("name"), str):
            calls.append({"function": {"index": len(calls), "name": obj["name"], "arguments": obj.get("arguments") or {}}})
    first = text.find("<tool_call>")
    return (text[:first].rstrip("\n") if first >= 0 else text), calls


class OllamaTestServer:
    """The server on 127.0.0.1 and a free port, in a background thread."""

    def __init__(self, root: Path, go_binary: Path) -> None:
        self.state = OllamaState(root, go_binary)
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.host = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "OllamaTestServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)
        self.state.close()

    @property
    def requests(self) -> list[tuple[str, str]]:
        return self.state.requests

    def has_blob(self, digest: str) -> bool:
        return self.state.blob_path(digest).is_file()
