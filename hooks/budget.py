"""The hook's per-event size budget: what is kept of a payload larger than it. Standard library.

Claude Code may hand the hook any amount of stdin (a Write of a huge file, a runaway tool
output). Parsing, redacting or storing all of it would cost memory and time past the hook's
timeout, and a killed hook loses the event. So the hook keeps the first ``EVENT_BUDGET_BYTES``
of stdin and only counts the rest (``handler.read_stdin``), and :func:`fit` turns that head into
a payload that says it was cut: when it is JSON, the value being read at the cut ends with a
``[TRUNCATED: ...]`` marker, the open containers are closed, and the top-level object gets a
``ccrl_truncated`` member (kept and original sizes), so the event is still a usable hook event;
anything else keeps its head followed by the marker (the drain quarantines it with its reason).
Redaction then runs on the result, so its cost is bounded by the budget too.
"""

EVENT_BUDGET_BYTES = 256 << 10
# A head needing more JSON tokens than this to repair (deeply nested or millions of tiny
# values) is kept as raw bytes instead: the walk below is a Python loop, bounded by this.
MAX_REPAIR_TOKENS = 200_000
TRUNCATED_KEY = "ccrl_truncated"


def marker(kept: int, total: int) -> str:
    """The text left where the payload was cut (kept by redaction: no rule matches it)."""
    return f"[TRUNCATED: ccrl kept the first {kept} of {total} bytes of this event]"


def fit(head: bytes, total: int, budget: int = EVENT_BUDGET_BYTES) -> bytes:
    """The payload to store for an event of ``total`` bytes whose first bytes are ``head``.

    Unchanged when it fits the budget; otherwise a JSON repair of the head (see the module
    docstring), or the raw head plus the marker.
    """
    if total <= budget and len(head) <= budget:
        return head
    head = head[:budget]
    note = marker(len(head), total)
    if head.lstrip()[:1] == b"{":
        repaired = _repair_json(head, note, total)
        if repaired is not None:
            return repaired
    return head + b"\n" + note.encode()


def _string_cut(body: bytes) -> bytes:
    """The contents of an unterminated JSON string, cut back so that appending text and a quote
    gives a valid string: no half escape, no half UTF-8 character."""
    # A run of backslashes of odd length at the end is a half escape.
    stripped = body.rstrip(b"\\")
    if (len(body) - len(stripped)) % 2:
        body = body[:-1]
    # A \uXXXX escape cut short.
    at = body.rfind(b"\\u", max(0, len(body) - 5))
    if at >= 0 and len(body) - at < 6:
        run = len(body[:at]) - len(body[:at].rstrip(b"\\"))
        if run % 2 == 0:  # the backslash before u is itself an escape's start
            body = body[:at]
    # A multi-byte UTF-8 character cut short: drop its lead byte and continuation bytes.
    i = len(body)
    while i > 0 and len(body) - i < 4 and 0x80 <= body[i - 1] < 0xC0:
        i -= 1
    if i > 0 and body[i - 1] >= 0xC0:
        need = 2 if body[i - 1] < 0xE0 else 3 if body[i - 1] < 0xF0 else 4
        if len(body) - (i - 1) < need:
            body = body[: i - 1]
    return body


def _repair_json(head: bytes, note: str, total: int) -> bytes | None:
    """Close the JSON text ``head`` was cut from; None when it is not JSON as far as it goes or
    needs more than ``MAX_REPAIR_TOKENS`` tokens."""
    if head.count(b'"') + head.count(b"{") + head.count(b"[") > 2 * MAX_REPAIR_TOKENS:
        return None
    import json
    import re

    token = re.compile(
        rb'[ \t\r\n]*+(?:("[^"\\]*+(?:\\.[^"\\]*+)*+")|([{}\[\]:,])|([^ \t\r\n{}\[\]:,"]++)|(")|\Z)', re.S)
    stack: list[int] = []  # b"{"[0] or b"["[0] per open container
    expect_key = False  # in an object, the next string is a key
    last = b""  # kind of the last significant token: s(tring) v(alue) { [ : , k(ey)
    last_start = 0
    top_members = 0
    pos = 0
    cut_string: bytes | None = None
    for count, m in enumerate(token.finditer(head)):
        if count > MAX_REPAIR_TOKENS:
            return None
        if m.start() != pos:
            return None  # not JSON
        pos = m.end()
        string, punct, word, open_quote = m.group(1, 2, 3, 4)
        start = m.start(m.lastindex) if m.lastindex else pos
        if string is not None:
            if stack and stack[-1] == 0x7B and expect_key:
                last, expect_key = b"k", False
                if len(stack) == 1:
                    top_members += 1
            else:
                last = b"v"
        elif punct is not None:
            p = punct[0]
            if p in (0x7B, 0x5B):
                stack.append(p)
                expect_key = p == 0x7B
                last = punct
            elif p in (0x7D, 0x5D):
                if not stack:
                    return None
                stack.pop()
                if not stack:
                    return None  # the whole text fit after all: not a cut payload
                last = b"v"
            elif p == 0x3A:
                last = b":"
            else:
                expect_key = bool(stack) and stack[-1] == 0x7B
                last = b","
        elif word is not None:
            last = b"w"
        elif open_quote is not None:
            cut_string = head[start + 1:]
            break
        else:
            break
        last_start = start
    if not stack:
        return None
    if cut_string is not None:
        out = head[:m.start(4)] + b'"' + _string_cut(cut_string) + note.encode() + b'"'
        if stack[-1] == 0x7B and expect_key:  # the cut string was a key
            out += b":null"
            if len(stack) == 1:
                top_members += 1
    elif last == b"w":  # a number or literal, possibly cut short: drop it
        out = head[:last_start].rstrip()
        out += b"null"
    elif last == b":":
        out = head + b"null"
    elif last == b",":
        out = head[:last_start]
    elif last == b"k":
        out = head + b":null"
    else:
        out = head
    for opener in reversed(stack[1:]):
        out += b"}" if opener == 0x7B else b"]"
    if stack[0] == 0x7B:
        member = json.dumps({TRUNCATED_KEY: {"kept_bytes": len(head), "original_bytes": total,
                                             "note": note}})[1:-1].encode()
        out += (b"," if top_members else b"") + member + b"}"
    else:
        out += b"]"
    return out
