"""The dataset builder: captured traces → a numbered dataset version on disk and in the store.

``build_dataset`` streams the store and writes::

    CCRL_HOME/datasets/v<N>/            (or --out DIR)
      dataset_dict.json, train/, eval/  the main dataset: datasets.load_from_disk(path)
      rl_prompts/                       the RL prompt set: load_from_disk(path / "rl_prompts")
      jsonl/train.jsonl, eval.jsonl, rl_prompts.train.jsonl, rl_prompts.eval.jsonl
      tools.json                        the tool list given to the model
      README.md                         the dataset card

Streaming: traces are read in pages by id and each is turned into rows at once; the rows go
to a staging JSONL file (the split is only known at the end), and ``Dataset.from_generator``
writes Arrow from the JSONL in small batches. Memory holds one page, one entry per session
and the de-duplication index (about 1.5 KB per kept prompt), never the traces:
``benchmarks/build_dataset.py`` measures the peak for 2,000 and 10,000 traces.

Rows are in trace id order (trajectory before workflow for one trace) and written as canonical
JSON, so the same traces and settings give byte-identical JSONL and the same content hash.

Versions: a build whose content hash equals the latest version's (and whose folder still
exists) creates nothing and reports that version (``created: False``); ``--force`` or
``--out`` always record a new version. The split is by session (see ``session_bucket``) and
the eval threshold never shrinks between versions, so a trace never moves from eval to train;
a resumed or forked session takes its parent's side (``split_roots``).

Bad input (a tool input that is not a JSON object, a turn without an answer, …) is skipped,
counted by reason in the card and never stops the build.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ccrl.agent.core.config import Settings, get_settings
from ccrl.agent.core.dataset_config import JSONL_FILES, DatasetSettings
from ccrl.agent.datasets.dataset_card import BuildStats, render_card
from ccrl.agent.datasets.dataset_filters import PromptDeduper, trace_filter
from ccrl.trainers import conversation as conv
from ccrl.trainers import windows
from ccrl.trainers.signals import SIGNALS_VERSION, extract_signals, view

BUILDER_VERSION = 1
HASH_SPACE = 1 << 32
WRITER_BATCH_SIZE = 100  # rows per Arrow record batch: trajectories are large, keep batches small
INSTALL_HINT = "pip install 'ccrl[train]'"
WINDOW_MESSAGE_OVERHEAD = 5  # a chat template's role header and end-of-turn, in tokens


class DatasetBuildError(RuntimeError):
    """A build that cannot go on; the message says why and what to do."""


class DatasetsMissing(DatasetBuildError):
    """The ``datasets`` package (the [train] extra) is not installed."""


class NoUsableTraces(DatasetBuildError):
    """Every trace was dropped or skipped; ``stats`` says by what."""

    def __init__(self, message: str, stats: dict[str, Any]) -> None:
        super().__init__(message)
        self.stats = stats


@dataclass
class BuildResult:
    """What a build produced (or found already built)."""

    id: int
    number: int
    path: str
    content_hash: str
    created: bool
    trace_count: int
    train_count: int
    eval_count: int
    stats: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (``ccrl build-dataset --json``)."""
        return asdict(self)


def _require_datasets() -> Any:
    try:
        import datasets
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in ("datasets", "pyarrow"):
            raise DatasetsMissing(
                "building a dataset needs the 'datasets' package, which is not installed: "
                f"install it with {INSTALL_HINT}"
            ) from None
        raise
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    return datasets


# ---------------------------------------------------------------------------------------------
# Reading the store in pages
# ---------------------------------------------------------------------------------------------


def iter_traces(settings: Settings, page_size: int) -> Iterator[dict[str, Any]]:
    """Every trace in the store as ``records.trace_json`` dicts, in id order, one page at a time."""
    from sqlmodel import Session as DBSession
    from sqlmodel import col, select

    from ccrl.agent.store.db import get_engine
    from ccrl.agent.store.models import ToolCall, Trace
    from ccrl.agent.store.records import trace_json

    engine = get_engine(settings)
    last_id = 0
    while True:
        with DBSession(engine) as db:
            page = list(db.exec(select(Trace).where(col(Trace.id) > last_id).order_by(col(Trace.id)).limit(page_size)))
            if not page:
                return
            ids = [t.id for t in page]
            calls: dict[int, list[ToolCall]] = {i: [] for i in ids}
            for call in db.exec(select(ToolCall).where(col(ToolCall.trace_id).in_(ids))):
                calls[call.trace_id].append(call)
            dicts = [trace_json(t, calls[t.id]) for t in page]
        last_id = ids[-1]
        yield from dicts


def collect_tools(settings: Settings, page_size: int) -> conv.ToolCatalog:
    """The tools seen in every stored call, with parameter schemas (one streamed pass)."""
    from sqlmodel import Session as DBSession
    from sqlmodel import col, select

    from ccrl.agent.store.db import get_engine
    from ccrl.agent.store.models import ToolCall

    catalog = conv.ToolCatalog()
    engine = get_engine(settings)
    last_id = 0
    size = page_size * 20
    while True:
        with DBSession(engine) as db:
            rows = list(db.exec(select(ToolCall.id, ToolCall.name, ToolCall.input)
                                .where(col(ToolCall.id) > last_id).order_by(col(ToolCall.id)).limit(size)))
        if not rows:
            return catalog
        for _id, name, tool_input in rows:
            catalog.add(name, tool_input)
        last_id = rows[-1][0]


def _latest_version(settings: Settings) -> Any:
    from sqlmodel import Session as DBSession
    from sqlmodel import col, select

    from ccrl.agent.store.db import get_engine
    from ccrl.agent.store.models import DatasetVersion

    with DBSession(get_engine(settings)) as db:
        version = db.exec(select(DatasetVersion).order_by(col(DatasetVersion.number).desc()).limit(1)).first()
        if version is not None:
            db.expunge(version)
        return version


# ---------------------------------------------------------------------------------------------
# Split
# ---------------------------------------------------------------------------------------------


def session_bucket(session_id: str) -> int:
    """Where a session falls in the hash space [0, 2^32): the first 4 bytes of SHA-256 of its id.

    Depends on nothing but the id, so a session's side of the split is the same in every build.
    """
    return int.from_bytes(hashlib.sha256(session_id.encode()).digest()[:4], "big")


def split_roots(settings: Settings) -> dict[str, str]:
    """Session id -> the session whose bucket decides its split: a resumed or forked session
    shares message uuids with its parent (``session_lineage``) and goes where its family's first
    session goes, so no conversation is both trained on and held out."""
    from ccrl.agent.datasets.session_lineage import lineage_roots

    return lineage_roots(settings)


def eval_threshold(sessions: dict[str, tuple[int, int]], cfg: DatasetSettings, previous: int) -> int:
    """The bucket below which sessions are held out.

    Starts at ``eval_fraction`` (or the previous version's threshold, whichever is larger: it
    never shrinks), then takes whole sessions in bucket order until the eval split holds
    ``min_eval_decisions``, stopping before it would exceed ``max_eval_fraction`` of all
    decisions. ``sessions``: session id -> (bucket, next-action decisions).
    """
    threshold = max(int(cfg.eval_fraction * HASH_SPACE), previous)
    total = sum(d for _b, d in sessions.values())
    held = sum(d for b, d in sessions.values() if b < threshold)
    if held >= cfg.min_eval_decisions:
        return threshold
    cap = cfg.max_eval_fraction * total
    for bucket, decisions in sorted(v for v in sessions.values() if v[0] >= threshold):
        if held >= cfg.min_eval_decisions or held + decisions > cap:
            break
        held += decisions
        threshold = bucket + 1
    return threshold


# ---------------------------------------------------------------------------------------------
# Features (the Arrow schema; every row is validated against it)
# ---------------------------------------------------------------------------------------------


def _features(datasets: Any, rl: bool) -> Any:
    from datasets import Features, List, Value

    message = {
        "role": Value("string"),
        "content": Value("string"),
        "tool_calls": List({"type": Value("string"), "id": Value("string"),
                            "function": {"name": Value("string"), "arguments": Value("string")}}),
        "tool_call_id": Value("string"),
        "name": Value("string"),
    }
    common = {"trace_id": Value("int64"), "session_id": Value("string"), "parent_id": Value("int64"),
              "tools": Value("string")}
    if rl:
        return Features({"prompt": List(message), "reference_completion": Value("string"),
                         "reference_signals": Value("string"), "reference_tool_sequence": List(Value("string")),
                         **common})
    return Features({"messages": List(message), "format": Value("string"), "agent_type": Value("string"),
                     "decisions": Value("int32"), **common})


def _jsonl_rows(path: str) -> Iterator[dict[str, Any]]:
    """Generator for ``Dataset.from_generator``: the rows of one JSONL file."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            yield json.loads(line)


def _dataset_dict(datasets: Any, folder: Path, files: dict[str, Path], features: Any, cache: Path) -> None:
    """Write ``files`` (split -> JSONL) as a DatasetDict at ``folder`` (streamed, not in memory)."""
    splits = {}
    shards = {}
    for split, path in files.items():
        if path.stat().st_size == 0:
            # from_generator cannot make an empty split; an empty table needs one explicit shard.
            splits[split] = datasets.Dataset.from_dict({k: [] for k in features}, features=features)
            shards[split] = 1
        else:
            splits[split] = datasets.Dataset.from_generator(
                _jsonl_rows, features=features, cache_dir=str(cache), gen_kwargs={"path": str(path)},
                writer_batch_size=WRITER_BATCH_SIZE)
    datasets.DatasetDict(splits).save_to_disk(str(folder), num_shards=shards or None)


# ---------------------------------------------------------------------------------------------
# One trace → rows
# ---------------------------------------------------------------------------------------------


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def trajectory_tokens(messages: list[dict[str, Any]]) -> int:
    """Estimated tokens of a conversation as the model sees it (contents and rendered calls)."""
    chars = 0
    for message in messages:
        if message.get("role") == "assistant":
            chars += len(conv.render_assistant_text(message))
        else:
            chars += len(message.get("content") or "")
    return (chars + conv.CHARS_PER_TOKEN - 1) // conv.CHARS_PER_TOKEN


def _cuda_visible() -> bool:
    """Whether an NVIDIA GPU is visible, without importing torch (the builder never loads it)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def window_budget(settings: Settings) -> int:
    """The token budget of one SFT example that the card's window counts are estimated at:
    ``[dataset] window_tokens``, else ``[train] max_length``, else SFT's default for this machine."""
    return (settings.dataset.window_tokens or settings.train.max_length
            or (windows.GPU_BUDGET if _cuda_visible() else windows.CPU_BUDGET))


def _message_cost(message: dict[str, Any]) -> int:
    """Estimated tokens of one message as the template renders it (4 characters a token, plus
    the role header and end-of-turn)."""
    text = conv.render_assistant_text(message) if message.get("role") == "assistant" else message.get("content") or ""
    return conv.estimate_tokens(text) + WINDOW_MESSAGE_OVERHEAD


@dataclass
class RowWindows:
    """How SFT will cut one row into decision windows (estimated): its decisions, those that are
    a target of some window, and the windows."""

    decisions: int = 0
    trained: int = 0
    examples: int = 0

    def field(self) -> str:
        return f"{self.decisions},{self.trained},{self.examples}"


def row_windows(messages: list[dict[str, Any]], budget: int) -> RowWindows:
    """The windows of one row at ``budget`` tokens, estimated from characters."""
    plan = windows.plan_windows(messages, budget, _message_cost)
    return RowWindows(plan.decisions, plan.targeted, len(plan.windows))


@dataclass
class _Converted:
    rows: list[dict[str, Any]]
    rl: dict[str, Any]
    tokens: int
    decisions: int
    windows: list[RowWindows] = field(default_factory=list)


def _convert(trace: dict[str, Any], signals: dict[str, Any], tools: list[dict[str, Any]],
             formats: list[str], cfg: DatasetSettings, budget: int = windows.CPU_BUDGET) -> _Converted:
    """Rows and the RL prompt of one trace (raises ConversionError for bad input), with each
    row's decision windows at ``budget`` tokens."""
    tools_text = conv.tools_json(tools)
    meta = {"trace_id": trace.get("id"), "session_id": trace.get("session_id"),
            "parent_id": trace.get("parent_id"), "tools": tools_text}
    trajectory = conv.trace_to_messages(trace, tools=tools, tool_result_tokens=cfg.tool_result_tokens)
    decisions = conv.next_action_decisions(trajectory)
    workflow = conv.trace_to_workflow(trace, tools=tools, argument_max_chars=cfg.workflow_argument_max_chars,
                                      signals=signals)
    tokens = trajectory_tokens(trajectory if conv.TRAJECTORY in formats else workflow)
    rows = []
    for fmt, messages in ((conv.TRAJECTORY, trajectory), (conv.WORKFLOW, workflow)):
        if fmt in formats:
            rows.append({"messages": messages, "format": fmt, "agent_type": trace.get("agent_type"),
                         "decisions": decisions, **meta})
    rl = {"prompt": workflow[:2], "reference_completion": workflow[2]["content"],
          "reference_signals": _dumps(signals), "reference_tool_sequence": list(signals["tool_sequence"]), **meta}
    return _Converted(rows, rl, tokens, decisions, [row_windows(row["messages"], budget) for row in rows])


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def _private_tree(root: Path) -> None:
    """Dirs 0700, files 0600 (the dataset holds the user's code and prompts)."""
    for dirpath, dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o700)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o600)


def _content_hash(jsonl_dir: Path) -> str:
    digest = hashlib.sha256()
    for name in JSONL_FILES:
        digest.update(name.encode() + b"\0")
        with open(jsonl_dir / name, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def _next_number(settings: Settings, versions_dir: Path) -> int:
    latest = _latest_version(settings)
    on_disk = [int(p.name[1:]) for p in versions_dir.glob("v*") if p.name[1:].isdigit()]
    return max([latest.number if latest else 0, *on_disk]) + 1


def _check_out_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetBuildError(f"{out} already exists and is not an empty folder: choose a new --out path")


# ---------------------------------------------------------------------------------------------
# The build
# ---------------------------------------------------------------------------------------------


def _formats(fmt: str) -> list[str]:
    if fmt == "both":
        return [conv.TRAJECTORY, conv.WORKFLOW]
    if fmt in conv.FORMATS:
        return [fmt]
    raise DatasetBuildError(f"unknown format {fmt!r}: use trajectory, workflow or both")


def build_dataset(settings: Settings | None = None, *, fmt: str | None = None, out: str | Path | None = None,
                  force: bool = False) -> BuildResult:
    """Build a dataset version from every trace in the store (see the module docstring).

    Raises ``DatasetsMissing`` without the [train] extra, ``NoUsableTraces`` when nothing
    survives the filters, ``DatasetBuildError`` for an unusable ``--out``.
    """
    settings = settings or get_settings()
    datasets = _require_datasets()
    from ccrl.agent.core.lock import FileLock
    from ccrl.agent.store.db import ensure_private_dir

    cfg = settings.dataset
    formats = _formats(fmt or cfg.format)
    versions_dir = ensure_private_dir(settings.home / "datasets")
    out_path = Path(out).expanduser().resolve() if out else None
    if out_path is not None:
        _check_out_dir(out_path)
    lock = FileLock(versions_dir / ".build.lock", name="dataset build")
    with lock.hold("ccrl build-dataset", wait=True, timeout=600):
        # Holding the lock, any staging folder left here is from a build that was killed.
        for stale in versions_dir.glob(".ccrl-staging-*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging_parent = out_path.parent if out_path else versions_dir
        ensure_private_dir(staging_parent)
        staging = staging_parent / f".ccrl-staging-{uuid.uuid4().hex[:12]}"
        ensure_private_dir(staging)
        try:
            return _build(settings, cfg, formats, datasets, staging, versions_dir, out_path, force)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _build(settings: Settings, cfg: DatasetSettings, formats: list[str], datasets: Any, staging: Path,
           versions_dir: Path, out_path: Path | None, force: bool) -> BuildResult:
    previous = _latest_version(settings)
    previous_threshold = int((previous.config or {}).get("eval_threshold", 0)) if previous else 0

    catalog = collect_tools(settings, cfg.page_size)
    top_tools = {name for name, _n in catalog.calls.most_common(cfg.max_tools)}
    family_root = split_roots(settings)

    budget = window_budget(settings)
    stats = BuildStats()
    dedupe = PromptDeduper(cfg)
    tools_cache: dict[frozenset[str], list[dict[str, Any]]] = {}  # most traces share one list
    sessions: dict[str, tuple[int, int]] = {}
    candidates = staging / "candidates.jsonl"
    with open(candidates, "w", encoding="utf-8") as fh:
        for trace in iter_traces(settings, cfg.page_size):
            stats.traces_seen += 1
            trace_view = view(trace)
            signals = extract_signals(trace_view)
            reason = trace_filter(trace_view, signals, cfg)
            if reason:
                stats.drop(reason)
                continue
            names = frozenset(top_tools | set(signals["tool_sequence"]))
            if names not in tools_cache:
                tools_cache[names] = catalog.tools(only=set(names))
            tools = tools_cache[names]
            try:
                converted = _convert(trace, signals, tools, formats, cfg, budget)
            except conv.ConversionError as exc:
                stats.bad(exc.reason, trace.get("id"))
                continue
            if converted.tokens > cfg.max_tokens:
                stats.drop("too_long")
                continue
            reason = dedupe.check_and_add(trace["prompt"])
            if reason:
                stats.drop(reason)
                continue
            session_id = str(trace.get("session_id") or "")
            bucket = session_bucket(family_root.get(session_id, session_id))
            _b, held = sessions.get(session_id, (bucket, 0))
            sessions[session_id] = (bucket, held + converted.decisions)
            stats.keep(trace, signals, converted.tokens)
            # "bucket <tab> decisions <tab> kind <tab> windows <tab> row JSON": the split is decided
            # after the pass, and the rows are serialised once (JSON escapes tabs inside strings).
            for row, row_win in zip(converted.rows, converted.windows):
                fh.write(f"{bucket}\t{converted.decisions}\t{row['format']}\t{row_win.field()}\t{_dumps(row)}\n")
            fh.write(f"{bucket}\t{converted.decisions}\trl\t{RowWindows().field()}\t{_dumps(converted.rl)}\n")

    if stats.kept == 0:
        summary = stats.as_dict()
        dropped = ", ".join(f"{k}: {v}" for k, v in summary["dropped"].items() if v)
        bad = ", ".join(f"{k}: {v}" for k, v in summary["bad_input"].items())
        raise NoUsableTraces(
            f"no usable traces: {stats.traces_seen} seen"
            + (f"; dropped by filters ({dropped})" if dropped else "")
            + (f"; skipped as bad input ({bad})" if bad else "")
            + ". Capture more sessions (ccrl import, or the hooks) or loosen the [dataset] filters.",
            summary,
        )

    threshold = eval_threshold(sessions, cfg, previous_threshold)
    for bucket, _d in sessions.values():
        stats.split_sessions["eval" if bucket < threshold else "train"] += 1

    jsonl_dir = staging / "jsonl"
    jsonl_dir.mkdir(mode=0o700)
    handles = {name: open(jsonl_dir / name, "w", encoding="utf-8") for name in JSONL_FILES}
    try:
        with open(candidates, encoding="utf-8") as fh:
            for line in fh:
                bucket, decisions, kind, row_win, payload = line.split("\t", 4)
                split = "eval" if int(bucket) < threshold else "train"
                if kind == "rl":  # one per trace
                    stats.split_traces[split] += 1
                    stats.split_decisions[split] += int(decisions)
                    stats.rl_prompts[split] += 1
                    handles[f"rl_prompts.{split}.jsonl"].write(payload)
                else:
                    stats.split_rows[f"{split}/{kind}"] += 1
                    stats.windows(f"{split}/{kind}", *map(int, row_win.split(",")))
                    handles[f"{split}.jsonl"].write(payload)
    finally:
        for handle in handles.values():
            handle.close()
    candidates.unlink()
    content_hash = _content_hash(jsonl_dir)

    if (previous is not None and not force and out_path is None and previous.content_hash == content_hash
            and Path(previous.path).is_dir()):
        return BuildResult(id=previous.id, number=previous.number, path=previous.path,
                           content_hash=previous.content_hash, created=False, trace_count=previous.trace_count,
                           train_count=previous.train_count, eval_count=previous.eval_count,
                           stats=previous.stats, config=previous.config)

    cache = staging / ".cache"
    _dataset_dict(datasets, staging, {s: jsonl_dir / f"{s}.jsonl" for s in ("train", "eval")},
                  _features(datasets, rl=False), cache)
    _dataset_dict(datasets, staging / "rl_prompts",
                  {s: jsonl_dir / f"rl_prompts.{s}.jsonl" for s in ("train", "eval")},
                  _features(datasets, rl=True), cache)
    shutil.rmtree(cache, ignore_errors=True)
    all_tools = catalog.tools(only=top_tools)
    (staging / "tools.json").write_text(json.dumps(all_tools, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

    number = _next_number(settings, versions_dir)
    final = out_path or versions_dir / f"v{number}"
    config = {
        "dataset": cfg.model_dump(),
        "formats": formats,
        "eval_threshold": threshold,
        "eval_threshold_fraction": threshold / HASH_SPACE,
        "window_tokens": budget,
        "window_result_tokens": windows.DEFAULT_SHORTENED_RESULT_TOKENS,
        "builder_version": BUILDER_VERSION,
        "signals_version": SIGNALS_VERSION,
    }
    summary = stats.as_dict()
    created_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    (staging / "README.md").write_text(
        render_card(number=number, path=str(final), content_hash=content_hash, created_at=created_at,
                    stats=summary, config=config), encoding="utf-8")
    _private_tree(staging)
    if final.exists():
        final.rmdir()  # an empty --out folder (checked above)
    os.replace(staging, final)
    try:
        return _record(settings, number, final, content_hash, stats, summary, config)
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)
        raise


def _record(settings: Settings, number: int, final: Path, content_hash: str, stats: BuildStats,
            summary: dict[str, Any], config: dict[str, Any]) -> BuildResult:
    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import DatasetVersion

    train_rows = sum(v for k, v in stats.split_rows.items() if k.startswith("train/"))
    eval_rows = sum(v for k, v in stats.split_rows.items() if k.startswith("eval/"))
    with session_scope(settings) as db:
        version = DatasetVersion(number=number, path=str(final), content_hash=content_hash,
                                 trace_count=stats.kept, train_count=train_rows, eval_count=eval_rows,
                                 stats=summary, config=config)
        db.add(version)
        db.flush()
        version_id = version.id
    return BuildResult(id=version_id, number=number, path=str(final), content_hash=content_hash, created=True,
                       trace_count=stats.kept, train_count=train_rows, eval_count=eval_rows,
                       stats=summary, config=config)
