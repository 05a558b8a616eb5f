"""``ccrl traces list|show``: look at captured traces.

``show --json`` prints ``ccrl.agent.store.records.trace_json`` exactly: that is the stable interface
tools and tests read. ``list --json`` rows have stable keys too (see ``list_rows``).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, NoReturn

import typer
from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ccrl.agent.core.config import get_settings

app = typer.Typer(help="Look at captured traces.", no_args_is_help=True)

_out = Console(highlight=False)
_err = Console(stderr=True, highlight=False)

EXCERPT_CHARS = 120
_INPUT_CHARS = 300
_OUTPUT_CHARS = 400


def _fail(message: str, code: int = 1) -> NoReturn:
    _err.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(code)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def excerpt(text: str | None, limit: int = EXCERPT_CHARS) -> str:
    """One line of at most ``limit`` characters: whitespace collapsed, ``…`` when cut."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def _utc(value: datetime | str | None) -> datetime | None:
    """A stored time as an aware UTC datetime (the store keeps UTC, with or without an offset)."""
    if value is None:
        return None
    if isinstance(value, str):  # some drivers return text for expressions over datetimes
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _local_time(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M") if value else "-"


def list_rows(limit: int, session: str | None) -> list[dict[str, Any]]:
    """Newest traces first: ``id, session_id, parent_id, started_at (ISO, UTC), status,
    tool_calls, tool_errors, prompt_excerpt``. One query; prompts are cut in the database."""
    from sqlalchemy import Integer, cast, func, select

    from ccrl.agent.store.db import get_engine
    from ccrl.agent.store.models import ToolCall, Trace

    calls = (
        select(
            ToolCall.trace_id.label("trace_id"),
            func.count().label("n"),
            func.sum(cast(ToolCall.is_error, Integer)).label("errors"),
        )
        .group_by(ToolCall.trace_id)
        .subquery()
    )
    when = func.coalesce(Trace.started_at, Trace.created_at)
    query = (
        select(
            Trace.id,
            Trace.session_id,
            Trace.parent_id,
            when.label("started_at"),
            Trace.status,
            func.substr(Trace.prompt, 1, EXCERPT_CHARS * 4).label("prompt"),
            func.coalesce(calls.c.n, 0).label("tool_calls"),
            func.coalesce(calls.c.errors, 0).label("tool_errors"),
        )
        .outerjoin(calls, calls.c.trace_id == Trace.id)
        .order_by(when.desc(), Trace.id.desc())
    )
    if session:
        query = query.where(Trace.session_id.startswith(session, autoescape=True))
    if limit > 0:
        query = query.limit(limit)
    with get_engine(get_settings()).connect() as conn:
        rows = conn.execute(query).all()
    result = []
    for row in rows:
        started = _utc(row.started_at)
        result.append(
            {
                "id": row.id,
                "session_id": row.session_id,
                "parent_id": row.parent_id,
                "started_at": started.isoformat() if started else None,
                "status": row.status,
                "tool_calls": int(row.tool_calls),
                "tool_errors": int(row.tool_errors),
                "prompt_excerpt": excerpt(row.prompt),
            }
        )
    return result


@app.command("list")
def list_traces(
    limit: int = typer.Option(20, "--limit", "-n", min=0, help="How many traces (newest first); 0 = all."),
    session: str | None = typer.Option(None, "--session", help="Only this session's traces (id or id prefix)."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON (a list of objects)."),
) -> None:
    """Captured traces, newest first: id, session, time, tool calls, prompt."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        rows = list_rows(limit, session)
    except (SQLAlchemyError, OSError) as exc:
        _fail(f"cannot read the store: {exc}")
    if as_json:
        _print_json(rows)
        return
    if not rows:
        where = f" for session {session}" if session else ""
        _out.print(f"No traces{escape(where)} yet. Capture some with `ccrl hooks install`, or backfill with `ccrl import`.")
        return
    cells = []
    for row in rows:
        tools = str(row["tool_calls"]) + (f" ({row['tool_errors']} err)" if row["tool_errors"] else "")
        started = datetime.fromisoformat(row["started_at"]) if row["started_at"] else None
        ident = str(row["id"]) + (f" ↳{row['parent_id']}" if row["parent_id"] else "")
        cells.append((ident, row["session_id"][:8], _local_time(started), tools, Text(row["prompt_excerpt"])))
    table = Table(title="traces (newest first)", expand=True)
    # Fixed columns keep their full width; the prompt takes what is left, cut with an ellipsis.
    for i, (name, justify) in enumerate((("id", "right"), ("session", "left"), ("time", "left"), ("tools", "right"))):
        width = max(len(name), *(len(cell[i]) for cell in cells))
        table.add_column(name, justify=justify, no_wrap=True, min_width=width)
    table.add_column("prompt", overflow="ellipsis", no_wrap=True, ratio=1)
    for cell in cells:
        table.add_row(*cell)
    _out.print(table)


def load_trace(trace_id: int) -> dict[str, Any] | None:
    """The trace's stable JSON form (``records.trace_json``), or None when there is no such id."""
    from sqlmodel import Session as DBSession
    from sqlmodel import select

    from ccrl.agent.store.db import get_engine
    from ccrl.agent.store.models import ToolCall, Trace
    from ccrl.agent.store.records import trace_json

    with DBSession(get_engine(get_settings())) as db:
        trace = db.get(Trace, trace_id)
        if trace is None:
            return None
        calls = list(db.exec(select(ToolCall).where(ToolCall.trace_id == trace_id)).all())
        return trace_json(trace, calls)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"… [{len(text) - limit} more characters]"


def _render(record: dict[str, Any]) -> Group:
    """The human form: prompt, reasoning, tool calls (errors marked), response, signals."""
    head = Text()
    head.append(f"trace {record['id']}", style="bold")
    head.append(f"  session {record['session_id']}  {record['status']}")
    if record["started_at"]:
        head.append(f"  {record['started_at']}")
    if record["parent_id"] is not None:
        head.append(f"  subagent of trace {record['parent_id']}")
        if record["agent_type"]:
            head.append(f" ({record['agent_type']})")
    parts: list[Any] = [head, Panel(Text(record["prompt"] or ""), title="prompt", title_align="left")]
    if record["reasoning"]:
        reasoning = Text()
        for i, block in enumerate(record["reasoning"], 1):
            if i > 1:
                reasoning.append("\n\n")
            reasoning.append(f"{i}. ", style="bold")
            reasoning.append(block)
        parts.append(Panel(reasoning, title="reasoning", title_align="left"))
    if record["tool_calls"]:
        calls = Text()
        for i, call in enumerate(record["tool_calls"], 1):
            if i > 1:
                calls.append("\n")
            calls.append(f"{i}. {call['name']}", style="bold")
            if call["is_error"]:
                calls.append("  ✗ error", style="bold red")
            if call["duration_ms"] is not None:
                calls.append(f"  {call['duration_ms']} ms", style="dim")
            calls.append("\n   input: ")
            calls.append(_clip(json.dumps(call["input"], ensure_ascii=False), _INPUT_CHARS))
            if call["output"]:
                calls.append("\n   output: ")
                calls.append(_clip(call["output"], _OUTPUT_CHARS), style="red" if call["is_error"] else "")
        parts.append(Panel(calls, title=f"tool calls ({len(record['tool_calls'])})", title_align="left"))
    response = Text(record["response"]) if record["response"] else Text("(no answer captured)", style="dim")
    parts.append(Panel(response, title="response", title_align="left"))
    signals = record["signals"]
    parts.append(
        Panel(
            Text(json.dumps(signals, indent=2, ensure_ascii=False) if signals else "none extracted yet"),
            title="signals",
            title_align="left",
        )
    )
    return Group(*parts)


@app.command("show")
def show(
    trace_id: int = typer.Argument(..., metavar="ID", help="The trace's id (see `ccrl traces list`)."),
    as_json: bool = typer.Option(False, "--json", help="Print the trace's stable JSON form."),
) -> None:
    """One trace in full: prompt, reasoning, tool calls (errors marked), response, signals."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        record = load_trace(trace_id)
    except (SQLAlchemyError, OSError) as exc:
        _fail(f"cannot read the store: {exc}")
    if record is None:
        _fail(f"no trace with id {trace_id}. `ccrl traces list` shows the ids.")
    if as_json:
        _print_json(record)
        return
    _out.print(_render(record))
