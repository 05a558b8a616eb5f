"""Export a trained model to a verified GGUF: merge → convert → quantize → verify → publish.

1. **Merge** (adapters only): the LoRA adapter goes into its base in full precision
   (``ccrl.trainers.merge``). SFT runs already write ``merged/``, which is used as it is.
2. **Convert**: llama.cpp's ``convert_hf_to_gguf.py`` turns the Hugging Face folder into a
   16-bit GGUF. No package installs that script, but it ships inside the llama-cpp-python sdist;
   ccrl downloads the sdist of the *installed* llama-cpp-python version once (``pip download``)
   and keeps only the converter under ``CCRL_HOME/cache/``, so converter and runtime come from
   one llama.cpp commit and no llama.cpp code is part of ccrl.
   The GGUF embeds the training chat template (without TRL's ``{% generation %}`` markers) and
   the end-of-turn token as end-of-sequence.
3. **Quantize** with ``llama_cpp.llama_model_quantize``: ``q4_k_m`` by default; ``q8_0`` when the
   model is too small to survive 4 bits (under 1B parameters, e.g. SmolLM2-135M) or when most
   weight matrices have rows that are not a multiple of 256 (K-quants fall back to other types
   there). Any llama.cpp file type can be asked for by name.
4. **Verify**: the file loads in ``llama_cpp.Llama``; its metadata holds the chat template and the
   end-of-turn token, which the runtime treats as end of generation; it generates through the
   embedded template; and, for a model that has learned to answer, it stops at the end of its
   turn. A file that fails is never published.
5. **Publish** atomically: all work happens in ``<out_dir>/.partial-…/``; the verified file is
   renamed into ``out_dir`` at the end. An interrupted export leaves no half file: its partial
   folder is removed on the way out, or by the next export when the process was killed.

Trainers never touch the database: this returns an :class:`ExportResult`; ``ccrl.agent.release.versions``
records it as a model version.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ccrl.trainers import chat_templates
from ccrl.trainers.ollama_template import detect_family, family as ollama_family, strip_generation_markers

LLAMA_CPP_DIST = "llama-cpp-python"
CONVERTER_SCRIPT = "convert_hf_to_gguf.py"
# What the converter needs from the sdist's vendor/llama.cpp/ folder (and its licence).
CONVERTER_PATHS = (CONVERTER_SCRIPT, "conversion/", "gguf-py/", "LICENSE")
DEFAULT_QUANT = "q4_k_m"
SMALL_QUANT = "q8_0"
SMALL_MODEL_PARAMS = 1_000_000_000
K_QUANT_BLOCK = 256
UNQUANTIZED = ("f32", "f16", "bf16")
PARTIAL_PREFIX = ".partial-"
PROBE_MAX_TOKENS = 256

Progress = Callable[[str], None]


class ExportError(RuntimeError):
    """An export step failed; the message says what happened and what to do."""


@dataclass
class QuantChoice:
    """The llama.cpp file type to write, and why."""

    name: str
    reason: str


@dataclass
class Verification:
    """What was checked on the final file before it was published."""

    chat_template_ok: bool
    end_of_turn: str
    end_of_turn_id: int
    eos_token_id: int
    end_of_generation_ids: list[int]
    chat_format: str
    probe: list[dict[str, Any]]
    reply: str
    finish_reason: str
    completion_tokens: int
    max_tokens: int
    stopped_at_end_of_turn: bool
    expected_reply: str | None = None
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (stored with the model version)."""
        return asdict(self)


@dataclass
class ExportResult:
    """A published, verified GGUF and how it was made."""

    path: Path
    sha256: str
    size_bytes: int
    quant: str
    quant_reason: str
    family: str
    end_of_turn: str
    stop_tokens: list[str]
    context_length: int | None
    n_params: int
    source_dir: str
    unquantized_size_bytes: int
    llama_cpp_version: str
    verification: Verification
    timings: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (stored with the model version)."""
        data = asdict(self)
        data["path"] = str(self.path)
        return data


# ---------------------------------------------------------------------------------------------
# Small pieces
# ---------------------------------------------------------------------------------------------


def _say(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)


def human_size(n: float) -> str:
    """Bytes as a short human-readable size."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file (the digest Ollama stores the blob under)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def installed_llama_cpp_version() -> str:
    """The installed llama-cpp-python version, or a clear error when it is missing."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(LLAMA_CPP_DIST)
    except PackageNotFoundError:
        raise ExportError(
            "llama-cpp-python is not installed, and GGUF export needs it (quantization and "
            "verification). Install it with `pip install 'ccrl[gguf]'` (it compiles llama.cpp: "
            "about 4 minutes on 2 cores) or `make setup`."
        ) from None


def _llama_cpp() -> Any:
    installed_llama_cpp_version()
    import logging

    import llama_cpp

    # llama.cpp logs every tensor while quantizing; keep its errors only (Llama(verbose=True)
    # turns the rest back on for whoever wants it).
    logger = logging.getLogger("llama-cpp-python")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.ERROR)
    return llama_cpp


def quant_types() -> dict[str, int]:
    """Every llama.cpp file type by lower-case name (``q4_k_m``, ``q8_0``, ``f16``, …)."""
    llama_cpp = _llama_cpp()
    types = {name[len("LLAMA_FTYPE_MOSTLY_"):].lower(): getattr(llama_cpp, name)
             for name in dir(llama_cpp) if name.startswith("LLAMA_FTYPE_MOSTLY_")}
    types["f32"] = llama_cpp.LLAMA_FTYPE_ALL_F32
    return types


def default_threads() -> int:
    """Threads for llama.cpp: 1 on a small machine (2 threads on 2 busy cores ran 10x slower),
    half the cores on a bigger one."""
    cores = os.cpu_count() or 1
    return 1 if cores <= 2 else cores // 2


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------
# The converter, from the llama-cpp-python sdist
# ---------------------------------------------------------------------------------------------


def converter_dir(cache_dir: Path, *, version: str | None = None, progress: Progress | None = None) -> Path:
    """llama.cpp's HF→GGUF converter for the installed llama-cpp-python, cached in ``cache_dir``.

    Fetched once per version with ``pip download --no-deps --no-binary :all:`` (the sdist,
    about 77 MB); only the converter, its ``conversion`` package and its own ``gguf-py`` are
    kept (a few MB). Concurrent callers wait for one download.
    """
    version = version or installed_llama_cpp_version()
    cache_dir = Path(cache_dir)
    target = cache_dir / f"llama.cpp-converter-{version}"
    if (target / CONVERTER_SCRIPT).is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _exclusive(cache_dir / ".llama.cpp-converter.lock"):
        if (target / CONVERTER_SCRIPT).is_file():
            return target
        _say(progress, f"fetching llama.cpp's GGUF converter from the {LLAMA_CPP_DIST} {version} sdist (once)")
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".converter-") as tmp:
            download = Path(tmp) / "sdist"
            proc = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                 "--disable-pip-version-check", "-d", str(download), f"{LLAMA_CPP_DIST}=={version}"],
                capture_output=True, text=True,
            )
            archives = sorted(download.glob("*.tar.gz")) if download.is_dir() else []
            if proc.returncode != 0 or not archives:
                tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
                raise ExportError(
                    f"could not download the {LLAMA_CPP_DIST} {version} sdist, which carries llama.cpp's "
                    f"GGUF converter (pip said:\n{tail}\n). Check the network or the package index "
                    "configured for pip, then run the export again."
                )
            out = Path(tmp) / "converter"
            _extract_converter(archives[0], out)
            os.replace(out, target)
    return target


def _extract_converter(archive: Path, out: Path) -> None:
    with tarfile.open(archive) as tar:
        members = []
        for member in tar.getmembers():
            parts = member.name.split("/", 1)
            if len(parts) != 2 or not parts[1].startswith("vendor/llama.cpp/"):
                continue
            inner = parts[1][len("vendor/llama.cpp/"):]
            if any(inner == p or (p.endswith("/") and inner.startswith(p)) for p in CONVERTER_PATHS):
                member.name = inner
                members.append(member)
        if not any(m.name == CONVERTER_SCRIPT for m in members):
            raise ExportError(f"{archive.name} has no vendor/llama.cpp/{CONVERTER_SCRIPT}; this "
                              f"{LLAMA_CPP_DIST} version cannot be used for export")
        tar.extractall(out, members=members, filter="data")


# ---------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------


def _read_chat_template(model_dir: Path) -> str:
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = model_dir / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text()).get("chat_template")
        if isinstance(template, str):
            return template
    raise ExportError(
        f"{model_dir} has no chat template (chat_template.jinja): export needs the template the "
        "model was trained with. Export a model saved by `ccrl train`."
    )


def model_family(model_dir: Path) -> tuple[str, str]:
    """(family name, training chat template) of a model folder saved by ccrl's trainer."""
    template = _read_chat_template(model_dir)
    try:
        name = chat_templates.read_template_info(model_dir)["family"]
    except (chat_templates.TemplateError, KeyError):
        name = detect_family(template)
    ollama_family(name)  # raises for a family Ollama has no template for
    return name, template


def _template_view(model_dir: Path, view: Path, template: str) -> None:
    """``view``: the model folder (symlinks) with the GGUF-ready template in place of the
    training one. Nothing is copied but small JSON files."""
    view.mkdir(mode=0o700)
    for entry in model_dir.iterdir():
        if entry.name in ("chat_template.jinja", "chat_template.json", "tokenizer_config.json"):
            continue
        (view / entry.name).symlink_to(entry.resolve())
    config_path = model_dir / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        config.pop("chat_template", None)
        (view / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (view / "chat_template.jinja").write_text(template, encoding="utf-8")


def convert_to_gguf(model_dir: Path, out_file: Path, *, converter: Path, outtype: str, log_file: Path,
                    threads: int | None = None) -> None:
    """Run llama.cpp's converter on a Hugging Face folder (its output in ``log_file``)."""
    cmd = [sys.executable, str(converter / CONVERTER_SCRIPT), str(model_dir), "--outfile", str(out_file),
           "--outtype", outtype]
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with open(log_file, "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0 or not out_file.is_file():
        tail = "\n".join(log_file.read_text(errors="replace").strip().splitlines()[-15:])
        raise ExportError(f"llama.cpp's converter failed on {model_dir} (exit {proc.returncode}):\n{tail}")


def gguf_summary(path: Path) -> dict[str, Any]:
    """Parameter count, context length and weight-matrix row widths of a GGUF."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def value(name: str) -> Any:
        found = reader.get_field(name)
        return None if found is None else found.contents()

    arch = value("general.architecture")
    matrices = [t for t in reader.tensors if len(t.shape) >= 2 and t.name.endswith(".weight")]
    off_block = [t.name for t in matrices if int(t.shape[0]) % K_QUANT_BLOCK]
    return {
        "architecture": arch,
        "n_params": int(sum(int(t.n_elements) for t in reader.tensors)),
        "context_length": value(f"{arch}.context_length") if arch else None,
        "matrices": len(matrices),
        "matrices_off_k_block": len(off_block),
    }


def choose_quant(summary: dict[str, Any], requested: str = "auto") -> QuantChoice:
    """The file type to write: an explicit name, or ``auto`` (see the module docstring)."""
    requested = requested.lower()
    if requested != "auto":
        if requested not in quant_types():
            raise ExportError(f"unknown quantization {requested!r}; llama.cpp knows: {', '.join(sorted(quant_types()))}")
        return QuantChoice(requested, "requested")
    n_params = summary["n_params"]
    if n_params < SMALL_MODEL_PARAMS:
        return QuantChoice(SMALL_QUANT, f"{n_params / 1e6:.0f}M parameters: too small to survive 4 bits, so 8 bits")
    total, off = summary["matrices"], summary["matrices_off_k_block"]
    if total and off * 2 > total:
        return QuantChoice(SMALL_QUANT, f"{off} of {total} weight matrices have rows that are not a multiple of "
                                        f"{K_QUANT_BLOCK}, where K-quants fall back to other types")
    return QuantChoice(DEFAULT_QUANT, "default for models of 1B parameters and more")


def quantize(src: Path, dst: Path, quant: str, *, threads: int | None = None, allow_requantize: bool = False) -> None:
    """Quantize a GGUF with llama.cpp (``llama_model_quantize``). ``allow_requantize``: accept an
    already quantized source (quality suffers; exports always start from 16 bits)."""
    llama_cpp = _llama_cpp()
    types = quant_types()
    if quant not in types:
        raise ExportError(f"unknown quantization {quant!r}; llama.cpp knows: {', '.join(sorted(types))}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = types[quant]
    params.nthread = threads or default_threads()
    params.allow_requantize = allow_requantize
    status = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), llama_cpp.byref(params))
    if status != 0 or not dst.is_file():
        raise ExportError(
            f"llama.cpp could not quantize to {quant} (status {status}). Types below 3 bits need an "
            "importance matrix; pick q4_k_m, q5_k_m, q6_k or q8_0."
        )


def default_probe() -> list[dict[str, Any]]:
    """The conversation the verification generates from: the agent's system prompt and a
    request any model that learned to answer finishes in a few words."""
    from ccrl.trainers.conversation import system_prompt

    return [{"role": "system", "content": system_prompt([])},
            {"role": "user", "content": "Say hello in one short sentence."}]


def verify_gguf(
    path: Path,
    *,
    chat_template: str,
    end_of_turn: str,
    probe: list[dict[str, Any]] | None = None,
    expected_reply: str | None = None,
    require_stop: bool = True,
    max_tokens: int = PROBE_MAX_TOKENS,
    threads: int | None = None,
) -> Verification:
    """Load ``path`` in llama-cpp-python and check it (see the module docstring).

    ``require_stop``: the reply must end with the end-of-turn token within ``max_tokens``
    (off only for an untrained model, which cannot know when to stop). ``expected_reply``: the
    exact reply (a model overfit on known examples). Problems are listed in ``.problems``.
    """
    llama_cpp = _llama_cpp()
    started = time.monotonic()
    probe = probe or default_probe()
    try:
        llm = llama_cpp.Llama(
            model_path=str(path), n_ctx=2048, n_threads=threads or default_threads(),
            n_threads_batch=threads or default_threads(), verbose=False, seed=0,
            chat_format="chat_template.default",
        )
    except (ValueError, RuntimeError) as exc:
        raise ExportError(f"the exported GGUF does not load in llama.cpp: {exc}") from exc
    problems: list[str] = []
    try:
        metadata = llm.metadata
        embedded = metadata.get("tokenizer.chat_template")
        template_ok = embedded == chat_template
        if not template_ok:
            problems.append("the GGUF's tokenizer.chat_template is not the training template"
                            if embedded else "the GGUF has no chat template (tokenizer.chat_template)")
        eos_id = int(metadata.get("tokenizer.ggml.eos_token_id", -1))
        eot_tokens = llm.tokenize(end_of_turn.encode(), add_bos=False, special=True)
        eot_id = eot_tokens[0] if len(eot_tokens) == 1 else -1
        if eot_id < 0:
            problems.append(f"{end_of_turn} is not a single token of the GGUF's vocabulary")
        if eos_id != eot_id:
            problems.append(f"the GGUF's end-of-sequence token is id {eos_id}, not the end of turn {end_of_turn} ({eot_id})")
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        eog = [t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)]
        if eot_id not in eog:
            problems.append(f"llama.cpp does not end generation at {end_of_turn}")
        if llm.chat_format != "chat_template.default":
            problems.append(f"llama-cpp-python chose the chat format {llm.chat_format!r}, not the embedded template")
        reply = llm.create_chat_completion(messages=probe, max_tokens=max_tokens, temperature=0.0, seed=0)
        choice = reply["choices"][0]
        text = choice["message"].get("content") or ""
        completion_tokens = int(reply["usage"]["completion_tokens"])
        stopped = choice["finish_reason"] == "stop" and completion_tokens < max_tokens
        if require_stop and not stopped:
            problems.append(f"the model did not end its turn within {max_tokens} tokens (reply: {text[:120]!r})")
        if expected_reply is not None and text != expected_reply:
            problems.append(f"the reply {text[:120]!r} is not the expected {expected_reply[:120]!r}")
        return Verification(
            chat_template_ok=template_ok, end_of_turn=end_of_turn, end_of_turn_id=eot_id, eos_token_id=eos_id,
            end_of_generation_ids=eog, chat_format=str(llm.chat_format), probe=probe, reply=text,
            finish_reason=str(choice["finish_reason"]), completion_tokens=completion_tokens, max_tokens=max_tokens,
            stopped_at_end_of_turn=stopped, expected_reply=expected_reply,
            seconds=round(time.monotonic() - started, 2), problems=problems,
        )
    finally:
        llm.close()


# ---------------------------------------------------------------------------------------------
# The whole export
# ---------------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_partial_exports(out_dir: Path) -> list[Path]:
    """Remove the work folders of exports whose process is gone (killed mid-way)."""
    removed = []
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return removed
    for entry in out_dir.glob(f"{PARTIAL_PREFIX}*"):
        owner = entry / "owner.pid"
        try:
            pid = int(owner.read_text().strip())
        except (OSError, ValueError):
            pid = -1
        if pid > 0 and _pid_alive(pid):  # still running (this process included)
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def export_model(
    model_dir: Path,
    out_dir: Path,
    *,
    name: str,
    cache_dir: Path,
    quant: str = "auto",
    probe: list[dict[str, Any]] | None = None,
    expected_reply: str | None = None,
    require_stop: bool = True,
    threads: int | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    """Convert, quantize, verify and publish the Hugging Face model in ``model_dir`` (a merged
    model saved by ccrl, carrying its training template) as ``<out_dir>/<name>-<quant>.gguf``.

    ``cache_dir`` keeps the converter between exports. Raises :class:`ExportError` (nothing is
    published) when a step or the verification fails.
    """
    model_dir, out_dir = Path(model_dir).resolve(), Path(out_dir)
    if not (model_dir / "config.json").is_file():
        raise ExportError(f"{model_dir} is not a Hugging Face model folder (no config.json)")
    family_name, training_template = model_family(model_dir)
    gguf_template = strip_generation_markers(training_template)
    info = ollama_family(family_name)
    version = installed_llama_cpp_version()
    converter = converter_dir(cache_dir, version=version, progress=progress)

    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    cleanup_partial_exports(out_dir)
    work = out_dir / f"{PARTIAL_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
    work.mkdir(mode=0o700)
    (work / "owner.pid").write_text(str(os.getpid()))
    timings: dict[str, float] = {}
    try:
        view = work / "model"
        _template_view(model_dir, view, gguf_template)
        requested = quant.lower()
        outtype = requested if requested in UNQUANTIZED else "auto"
        unquantized = work / f"{name}-{outtype}.gguf"
        _say(progress, f"converting {model_dir} to GGUF ({outtype}) with llama.cpp {version}'s converter")
        started = time.monotonic()
        convert_to_gguf(view, unquantized, converter=converter, outtype=outtype, log_file=work / "convert.log",
                        threads=threads)
        timings["convert_s"] = round(time.monotonic() - started, 2)
        unquantized_size = unquantized.stat().st_size
        summary = gguf_summary(unquantized)
        choice = choose_quant(summary, requested)
        _say(progress, f"converted: {human_size(unquantized_size)}, {summary['n_params'] / 1e6:.1f}M parameters; "
                       f"quantization {choice.name} ({choice.reason})")
        final = work / f"{name}-{choice.name}.gguf"
        started = time.monotonic()
        if choice.name == requested and requested in UNQUANTIZED:
            os.replace(unquantized, final)
        else:
            quantize(unquantized, final, choice.name, threads=threads)
            unquantized.unlink()
        timings["quantize_s"] = round(time.monotonic() - started, 2)
        _say(progress, f"quantized to {choice.name}: {human_size(final.stat().st_size)}; verifying in llama.cpp")
        verification = verify_gguf(final, chat_template=gguf_template, end_of_turn=info.end_of_turn, probe=probe,
                                   expected_reply=expected_reply, require_stop=require_stop, threads=threads)
        timings["verify_s"] = verification.seconds
        if verification.problems:
            raise ExportError("the exported GGUF failed verification and was not kept:\n- "
                              + "\n- ".join(verification.problems))
        _say(progress, f"verified: reply {verification.reply[:60]!r} ({verification.completion_tokens} tokens, "
                       f"{'ended its turn' if verification.stopped_at_end_of_turn else 'did not end its turn'})")
        started = time.monotonic()
        digest = sha256_file(final)
        timings["sha256_s"] = round(time.monotonic() - started, 2)
        dest = out_dir / final.name
        if dest.exists():
            raise ExportError(f"{dest} already exists; a published GGUF is never overwritten")
        os.chmod(final, 0o600)
        os.replace(final, dest)
        _say(progress, f"published {dest} ({human_size(dest.stat().st_size)}, sha256 {digest[:12]})")
        return ExportResult(
            path=dest, sha256=digest, size_bytes=dest.stat().st_size, quant=choice.name, quant_reason=choice.reason,
            family=family_name, end_of_turn=info.end_of_turn, stop_tokens=list(info.stop),
            context_length=summary["context_length"], n_params=summary["n_params"], source_dir=str(model_dir),
            unquantized_size_bytes=unquantized_size, llama_cpp_version=version, verification=verification,
            timings=timings,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def export_adapter(
    adapter_dir: Path,
    out_dir: Path,
    *,
    name: str,
    cache_dir: Path,
    base: str | None = None,
    progress: Progress | None = None,
    **kwargs: Any,
) -> ExportResult:
    """Merge a LoRA adapter into its base in full precision, then :func:`export_model`.

    The merged folder is temporary (inside ``out_dir``'s partial area) and removed afterwards.
    """
    from ccrl.trainers.merge import MergeError, merge_adapter

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    work = out_dir / f"{PARTIAL_PREFIX}merge-{uuid.uuid4().hex[:8]}"
    work.mkdir(mode=0o700)
    (work / "owner.pid").write_text(str(os.getpid()))
    try:
        _say(progress, f"merging the adapter {adapter_dir} into its base in full precision")
        started = time.monotonic()
        try:
            merged = merge_adapter(Path(adapter_dir), work / "merged", base=base)
        except MergeError as exc:
            raise ExportError(str(exc)) from exc
        merge_s = round(time.monotonic() - started, 2)
        result = export_model(merged, out_dir, name=name, cache_dir=cache_dir, progress=progress, **kwargs)
        result.timings = {"merge_s": merge_s, **result.timings}
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)
