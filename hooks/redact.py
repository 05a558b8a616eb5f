"""Secret redaction, applied before anything touches disk. Standard library only.

Works on bytes (the hook's raw payload, which is JSON text: secrets sit inside JSON strings with
escaped quotes and ``\\n`` escapes) and on str (ingest redacts transcript text with the same
rules). Each secret becomes a typed marker such as ``[REDACTED:aws_access_key]`` so training
data keeps its shape.

Cost model: the hook runs on every tool call and most payloads hold no secret. Each rule
therefore lists lower-case *markers*, plain substrings of which at least one occurs in (the
lower-cased form of) anything the rule can match. A rule whose markers are all absent cannot
match, so it is neither compiled nor run, and ``re`` is not even imported when no rule applies.
tests/test_redact.py checks the marker invariant with Hypothesis (every string a pattern
matches contains one of its markers).

Patterns are ASCII-only (``re.ASCII``) so bytes and str behave the same, and so a
case-insensitive match can only happen on ASCII letters, which plain ``lower()`` also folds.
"""

# A quote as it appears in raw text ("), in a JSON string (\"), or in JSON nested in JSON (\\\").
_Q = r"""(?:\\*["'])"""
# Separator of an assignment: KEY=value, key: value, key => value (not ==, not a newline).
_SEP = r"[ \t]*(?:=>|:=|[:=])[ \t]*"

# Names that mark the value assigned to them as a secret. The pattern matches only the name's
# tail (the whole name is recovered by the callback: anchoring on a literal keeps the scan fast).
# The ``[_-]key`` family is weak (many code identifiers end in _key: primary_key, sort_key); the
# callback decides on those.
_SECRET_NAME_TAIL = (
    r"(?:password|passwd|passphrase|secret|token|credentials?|apikey|accesskey|privatekey|"
    r"[_\-]key|[_\-]pwd|[_\-]pass)"
)
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")

# (kind, pattern, markers, replacement). Order matters: whole key blocks and specific token
# formats first, then generic assignments, so a token inside an assignment keeps its kind.
# A replacement of None means the rule's callback (below) decides.
RULES: list[tuple[str, str, tuple[str, ...], str | None]] = [
    # A whole PEM block; if the END line is missing (a truncated read), everything up to the
    # end of the enclosing JSON string (or of the text) goes.
    ("private_key",
     r"-----BEGIN[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----"
     r"""(?:(?:[^"\\]|\\.)*?-----END[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----|(?:[^"\\]|\\.)*)""",
     ("private key",), "[REDACTED:private_key]"),
    ("anthropic_key", r"\bsk-ant-[A-Za-z0-9_\-]{16,}", ("sk-ant-",), "[REDACTED:anthropic_key]"),
    ("openai_key", r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}", ("sk-",),
     "[REDACTED:openai_key]"),
    ("github_token", r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,})",
     ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"), "[REDACTED:github_token]"),
    ("slack_token", r"\b(?:xox[abposr]-[A-Za-z0-9\-]{10,}|xapp-[0-9]-[A-Za-z0-9\-]{10,})",
     ("xox", "xapp-"), "[REDACTED:slack_token]"),
    ("slack_webhook", r"https://hooks\.slack\.com/services/[A-Za-z0-9/_\-]+", ("hooks.slack.com",),
     "[REDACTED:slack_webhook]"),
    ("stripe_key", r"\b(?:(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{10,}|whsec_[A-Za-z0-9]{20,})",
     ("k_live_", "k_test_", "whsec_"), "[REDACTED:stripe_key]"),
    ("google_api_key", r"\bAIza[0-9A-Za-z_\-]{35}", ("aiza",), "[REDACTED:google_api_key]"),
    ("google_oauth_token", r"\b(?:ya29\.[0-9A-Za-z_\-]{20,}|GOCSPX-[0-9A-Za-z_\-]{20,})",
     ("ya29.", "gocspx-"), "[REDACTED:google_oauth_token]"),
    ("aws_access_key", r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b", ("akia", "asia", "abia", "acca"),
     "[REDACTED:aws_access_key]"),
    ("aws_secret_key",
     r"(?i)(aws_?secret_?(?:access_?)?key" + _Q + r"?" + _SEP + _Q + r"?)[A-Za-z0-9/+=]{40}",
     ("awssecret", "aws_secret"), r"\1[REDACTED:aws_secret_key]"),
    ("jwt", r"\beyJ[A-Za-z0-9_\-]{5,}\.eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]{5,}", ("eyj",),
     "[REDACTED:jwt]"),
    ("bearer_token", r"(?i)\b((?:bearer|basic)[ \t]+)([A-Za-z0-9._~+/\-]{16,}=*)",
     ("bearer", "basic"), r"\1[REDACTED:bearer_token]"),
    # scheme://user:password@host; the user part and the host stay.
    # The user part cannot hold "[": a marker left by an earlier rule ([REDACTED:kind]) is no user.
    ("url_password", r"""(\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/\s@"'\\\[\]]+:)([^@\s"'\\/\[][^@\s"'\\/]*)(@)""",
     ("://",), r"\1[REDACTED:url_password]\3"),
    # NAME=value, name: "value", "name": "value", export NAME='value', --password=value,
    # config["password"] = "value".
    # An unquoted value runs to the end of its line (YAML/INI values may hold spaces); whether
    # it is code (primary_key=True, token = get_token()) is judged on its first word.
    ("secret",
     r"(?i)(" + _SECRET_NAME_TAIL + r")\b((?:" + _Q + r"\]?)?" + _SEP + r")"
     r"""(?:(\\*")([^"\\\r\n]{3,256})(\\*")|(')([^'"\\\r\n]{3,256})(')|([^\s"'\\,;`=][^\s"'\\,;`]{2,}(?:[ \t]+[^\s"'\\,;`]+)*))""",
     ("password", "passwd", "passphrase", "secret", "token", "credential", "apikey",
      "accesskey", "privatekey", "_key", "-key", "_pwd", "-pwd", "_pass", "-pass"),
     None),
]

# Values after a secret-looking name that are code, not secrets: keywords and type names
# (``primary_key=True``, ``password: str``), so ordinary source code keeps its meaning.
_CODE_WORDS = frozenset(
    "true false none null nil undefined lambda function new await async self this cls "
    "str string bytes int bool float dict list optional secretstr any object char void "
    "required default".split()
)
# Prefixes that make a *_key name a secret even in lower case (api_key, secret_key ...).
_STRONG_KEY_WORDS = ("api", "secret", "access", "private", "auth", "encrypt", "sign", "master",
                     "client", "license", "service", "session", "hmac", "jwt", "aws", "stripe")
# Values that only refer to a secret kept elsewhere: ${VAR}, $VAR, %(x)s, <your-key>, ***.
_REFERENCE_STARTS = ("$", "%", "<", "{", "*", "[REDACTED")


def _is_code_value(name: str, value: str) -> bool:
    """True when an unquoted value is a code expression rather than a literal secret."""
    bare = value.rstrip(")]},:;")
    low = bare.lower()
    if low in _CODE_WORDS or low.split("[", 1)[0] in _CODE_WORDS:
        return True  # primary_key=True, password: str, token: Optional[str]
    if low == name.rsplit(".", 1)[-1].lstrip("-").lower():
        return True  # a keyword argument passed through: password=password
    # An identifier (possibly dotted) that is called, indexed or dereferenced:
    # os.environ["X"], get_token(), self.api_key, settings.SECRET_KEY.
    head = bare.split("(", 1)[0].split("[", 1)[0]
    parts = head.split(".")
    identifiers = all(
        p and p.isascii() and (p[0].isalpha() or p[0] == "_") and p.replace("_", "a").isalnum()
        for p in parts
    )
    return identifiers and (len(parts) > 1 or len(head) < len(bare))


def _full_name(match) -> str:
    """The whole assigned name (``DB_PASSWORD``, ``self.api_key``) ending in the matched tail."""
    text, start = match.string, match.start()
    i = start
    if isinstance(text, bytes):
        while i > 0 and chr(text[i - 1]) in _NAME_CHARS:
            i -= 1
        return text[i:start].decode("ascii") + match.group(1).decode("ascii")
    while i > 0 and text[i - 1] in _NAME_CHARS:
        i -= 1
    return text[i:start] + match.group(1)


def _keep_assignment(name: str, sep: str, value: str, quoted: bool) -> bool:
    """Decide whether a ``name <sep> value`` match is code or a reference (kept as it is)."""
    if value.startswith(_REFERENCE_STARTS):
        return True  # ${VAR}, $VAR, <your-key>, *** and values already redacted
    upper_name = not any(c.islower() for c in name)
    low_name = name.lower()
    if low_name.endswith(("_key", "-key")) and not upper_name:
        # cache_key, primary_key, sort_key are code; api_key, secret_key are not.
        if not any(word in low_name for word in _STRONG_KEY_WORDS):
            return True
    if quoted:
        return False
    value = value.split()[0]
    if sep == "=" and upper_name:
        # Shell / .env style (NAME=value, no spaces): a literal unless it is a plain keyword.
        return value.lower() in _CODE_WORDS
    return _is_code_value(name, value)


def _secret_value(match) -> object:
    """Callback of the generic ``secret`` rule: redact the value unless it is code or a reference."""
    as_bytes = isinstance(match.string, bytes)
    groups = [g.decode("latin-1") if isinstance(g, bytes) else g for g in match.groups()]
    tail, sep, dq1, dqv, dq2, sq1, sqv, sq2, bare = groups
    quoted = bare is None
    value = dqv if dqv is not None else sqv if sqv is not None else bare
    if _keep_assignment(_full_name(match), sep.strip(" \t\"'\\"), value, quoted):
        return match.group(0)
    if dqv is not None:
        out = f"{tail}{sep}{dq1}[REDACTED:secret]{dq2}"
    elif sqv is not None:
        out = f"{tail}{sep}{sq1}[REDACTED:secret]{sq2}"
    else:
        out = f"{tail}{sep}[REDACTED:secret]"
    return out.encode("latin-1") if as_bytes else out


_compiled: dict[tuple[int, bool], tuple] = {}


def _rule(index: int, as_bytes: bool) -> tuple:
    """Compile rule ``index`` on first use (the hook only pays for rules its payload needs)."""
    key = (index, as_bytes)
    rule = _compiled.get(key)
    if rule is None:
        import re

        kind, pattern, _markers, repl = RULES[index]
        rx = re.compile(pattern.encode() if as_bytes else pattern, re.DOTALL | re.ASCII)
        if repl is None:
            sub = _secret_value
        else:
            sub = repl.encode() if as_bytes else repl
        rule = _compiled[key] = (kind, rx, sub)
    return rule


def rules_needed(low: bytes | str) -> list[int]:
    """Indexes of the rules whose markers occur in ``low`` (already lower-cased)."""
    if isinstance(low, bytes):
        return [i for i, rule in enumerate(_MARKERS_BYTES) if any(m in low for m in rule)]
    return [i for i, rule in enumerate(RULES) if any(m in low for m in rule[2])]


_MARKERS_BYTES = [tuple(m.encode() for m in rule[2]) for rule in RULES]


def may_contain_secret(data: bytes | str) -> bool:
    """Cheap pre-check: False guarantees that no rule can match ``data``."""
    return bool(rules_needed(data.lower()))


def redact_bytes(data: bytes) -> bytes:
    """Redact secrets in raw bytes (the hook's payload). Cheap when no marker is present."""
    needed = rules_needed(data.lower())
    for index in needed:
        _kind, rx, sub = _rule(index, True)
        data = rx.sub(sub, data)
    return data


def redact_text(text: str) -> str:
    """Redact secrets in text (transcript content at ingest)."""
    if not text:
        return text
    for index in rules_needed(text.lower()):
        _kind, rx, sub = _rule(index, False)
        text = rx.sub(sub, text)
    return text


def redact_obj(obj):
    """Redact every string inside a JSON-like value (dict keys kept as they are)."""
    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, dict):
        return {k: redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact_obj(v) for v in obj]
    return obj
