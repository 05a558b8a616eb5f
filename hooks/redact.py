"""Secret redaction, applied before anything touches disk. Standard library only.

Works on bytes (the hook's raw payload, which is JSON text: secrets sit inside JSON strings with
escaped quotes and ``\\n`` escapes) and on str (ingest redacts transcript text with the same
rules). Each secret becomes a typed marker such as ``[REDACTED:aws_access_key]`` so training
data keeps its shape. The rules themselves are in ``redact_rules.py``; this module runs them
and decides, for the rules that need judgement, whether a match is a secret or ordinary code.

Cost model: the hook runs on every tool call and most payloads hold no secret. Each rule
therefore lists lower-case *markers*, plain substrings of which at least one occurs in (the
lower-cased form of) anything the rule can match. A rule whose markers are all absent cannot
match, so it is neither compiled nor run, and ``re`` is not even imported when no rule applies.
tests/test_redact.py checks the marker invariant with Hypothesis (every string a pattern
matches contains one of its markers).

Patterns are ASCII-only (``re.ASCII``) so bytes and str behave the same, and so a
case-insensitive match can only happen on ASCII letters, which plain ``lower()`` also folds.
"""

if __package__:
    from .redact_rules import RULES
else:  # imported by hooks/handler.py run by path: siblings are top-level modules
    from redact_rules import RULES

__all__ = ["RULES", "may_contain_secret", "redact_bytes", "redact_obj", "redact_text", "rules_needed"]

_BLANKS = (" ", "\t", 32, 9)  # str and bytes items
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
# Values after a secret-looking name that are code, not secrets: keywords and type names
# (``primary_key=True``, ``password: str``), so ordinary source code keeps its meaning.
_CODE_WORDS = frozenset(
    "true false none null nil undefined lambda function fn func new await async self this cls "
    "str string bytes int bool float dict list optional secretstr any object char void "
    "required default return yield if else not and or is in of typeof const let var final "
    "readonly static private public protected nullable".split()
)
# Plain variable names commonly assigned to secret-named variables (``token = tok``): code.
_VARIABLE_WORDS = frozenset(
    "token tok password passwd pwd secret key value val creds credentials auth data result res "
    "response resp config cfg settings options opts args kwargs params env environ input raw "
    "text item entry header headers cookie session user payload body".split()
)
# Prefixes that make a *_key name a secret even in lower case (api_key, secret_key ...).
_STRONG_KEY_WORDS = ("api", "secret", "access", "private", "auth", "encrypt", "sign", "master",
                     "client", "license", "service", "session", "hmac", "jwt", "aws", "stripe",
                     "account", "azure", "consumer", "app", "admin", "deploy", "webhook")
# Values that only refer to a secret kept elsewhere: ${VAR}, $VAR, %(x)s, <your-key>, ***.
_REFERENCE_STARTS = ("$", "%", "<", "{", "*", "[REDACTED", "...", "\u2026")
_PLACEHOLDERS = frozenset(("redacted", "[redacted]", "-"))
# Values that say they are to be filled in: your_api_key, <your-token>, example-key, xxxx.
_PLACEHOLDER_STARTS = ("your", "example", "placeholder", "replace", "insert", "enter-", "enter_", "xxx")


def _text(value) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _looks_random(value: str, min_length: int = 8) -> bool:
    """True for token-like strings: letters and digits mixed, or letters whose case flips often
    (a random mix, not a word or camelCase); false for words joined by separators
    (``sk-video-processing-library``, ``user_profile_v2``). Judges call it inside re.sub."""
    import re

    if len(value) < min_length:
        return False
    parts = [p for p in re.split(r"[-_.:/ ]+", value) if p]
    if len(parts) > 1 and all(re.fullmatch(r"[A-Z]?[a-z]+[0-9]*|[0-9]+", p) for p in parts):
        return False
    letters = [c for c in value if c.isascii() and c.isalpha()]
    if letters and any(c.isdigit() for c in value):
        return True
    flips = sum(a.isupper() != b.isupper() for a, b in zip(letters, letters[1:]))
    return flips >= max(4, len(letters) // 4)


# Identifiers that read as words: authToken, SecretStr, db_password (a random token rarely
# does). Only judges use them, and judges run inside re.sub: re is imported by then.
_CAMEL_CASE = r"(?:[a-z]+|[A-Z][a-z]+)(?:[A-Z][a-z]+)+"
_SNAKE_CASE = r"_?[a-z][a-z0-9]*(?:_[a-z0-9]+)+"


def _is_number(value: str) -> bool:
    try:
        float(value.replace("_", ""))
    except ValueError:
        return False
    return True


def _is_identifier(part: str) -> bool:
    return bool(part) and part.isascii() and (part[0].isalpha() or part[0] == "_") \
        and part.replace("_", "a").isalnum()


def _is_code_value(name: str, value: str, sep: str) -> bool:
    """True when an unquoted value is a code expression rather than a literal secret."""
    bare = value.rstrip(")]},:;")
    low = bare.lower()
    if low in _CODE_WORDS or low.split("[", 1)[0] in _CODE_WORDS:
        return True  # primary_key=True, password: str, token: Optional[str]
    if low == name.rsplit(".", 1)[-1].lstrip("-").lower():
        return True  # a keyword argument passed through: password=password
    # An identifier (possibly dotted) that is called, indexed or dereferenced:
    # os.environ["X"], get_token(), self.api_key, settings.SECRET_KEY, std::env::var("X").
    head = bare.split("(", 1)[0].split("[", 1)[0]
    parts = head.replace("::", ".").replace("->", ".").split(".")
    if not all(_is_identifier(p) for p in parts):
        return False
    if len(parts) > 1 or len(head) < len(bare):
        return True
    if low in _VARIABLE_WORDS:
        return True  # token = tok, password = value
    import re

    if re.fullmatch(_CAMEL_CASE, head):
        return True  # token = authToken, password: SecretStr
    # A snake_case variable in code (password = db_password); in YAML (":") it is a value.
    return "=" in sep and bool(re.fullmatch(_SNAKE_CASE, head))


def _keep_assignment(name: str, sep: str, value: str, quoted: bool, line_start: bool) -> bool:
    """Decide whether a ``name <sep> value`` match is code, prose or a reference (kept)."""
    if _is_reference(value):
        return True  # ${VAR}, $VAR, <your-key>, your_api_key, *** and values already redacted
    upper_name = not any(c.islower() for c in name)
    low_name = name.lower()
    if low_name.endswith(("_key", "-key")) and not any(word in low_name for word in _STRONG_KEY_WORDS):
        # cache_key = "user:1", STORAGE_KEY = 'todos', sort_key are code; api_key, secret_key
        # are not; MY_KEY=6f2b... (random-looking) is a secret whatever the name.
        if upper_name and not quoted and sep == "=":
            return False  # shell / .env style: MY_KEY=value
        return not _looks_random(value, 16)
    if low_name.endswith(("_auth", "-auth")):
        # user_auth = basic is code; NPM_AUTH=dXNlcjpw... is not.
        return not _looks_random(value)
    if quoted:
        return False
    words = value.split()
    first = words[0]
    if first.lower() in _CODE_WORDS:
        return True
    if _is_number(first) and (not first.isdigit() or not any(w in low_name for w in ("pass", "pwd", "pin"))):
        return True  # max_token = 4096, timeout = 0.5 (a whole number after a password name may be a PIN)
    bare_sep = sep.strip(" \t\"'\\]")
    if sep == "=" and upper_name:
        return False  # shell / .env style (NAME=value, no spaces): a literal
    if _is_code_value(name, first, bare_sep):
        return True
    if not line_start and bare_sep == ":" and first.isalpha() and first[1:].islower():
        return True  # prose: "the token: expired", "note the token: Rotate it"
    if len(words) > 2 and words[1] in ("=", ":=", "==", "+=", "=>"):
        return True  # the value is itself an assignment ("label-token: max_token = 4096"), judged on its own
    if bare_sep == ":" and "=" in first.rstrip("=") and _is_identifier(first.split("=", 1)[0]):
        return True  # settings listed after a name: "a.secret: Staging=? Worktree=?"
    if line_start and (len(words) > 5 or sum("=" in w for w in words) > 1):
        return True  # a sentence after "Token:", or settings (a.secret: Staging=? Worktree=?)
    return False


def _full_name(match, tail_start: int) -> str:
    """The whole assigned name (``DB_PASSWORD``, ``self.api_key``) ending at the matched tail.
    Bounded look-back (64 characters): the cost of a match never depends on what precedes it."""
    text = match.string
    i, floor = tail_start, max(0, tail_start - 64)
    if isinstance(text, bytes):
        while i > floor and chr(text[i - 1]) in _NAME_CHARS:
            i -= 1
        name = text[i:tail_start].decode("ascii")
        escaped = i > 0 and text[i - 1] == 0x5C
    else:
        while i > floor and text[i - 1] in _NAME_CHARS:
            i -= 1
        name = text[i:tail_start]
        escaped = i > 0 and text[i - 1] == "\\"
    if escaped and name[:1] in ("n", "r", "t"):
        name = name[1:]  # "\nDB_PASSWORD": the n belongs to the escape, not to the name
    return name


# ---------------------------------------------------------------------------------------------
# Judges: for a rule whose replacement is None, return the name of the group to redact, or
# None to keep the match as it is.

def _judge_secret(match) -> str | None:
    groups = match.groupdict()
    if groups.get("lv") is not None:  # a whole line: name, separator, multi-word value
        pre = _text(groups["pre"]).strip(" \t")
        name = pre[1:].strip(" \t") if pre.startswith("-") else pre
        value, sep = _text(groups["lv"]).rstrip(" \t"), _text(groups["sep"])
        keep = _keep_assignment(name, sep, value, False, True)
        return None if keep else "lv"
    for group, quoted in (("dv", True), ("sv", True), ("bv", False)):
        if groups.get(group) is not None:
            value = _text(groups[group])
            if quoted and (len(value) < 3 or not any(c.isalnum() for c in value)):
                return None  # "", "..", or JSON structure read as text (`Token:"}, {"`)
            if group == "dv" and isinstance(match.string, bytes) and not groups["q"] \
                    and b'"' not in groups["sep"]:
                # In the hook's JSON payload a bare " after an unquoted name ends the JSON
                # string (`..."Token:"}`): structure, not a quoted value. (A text quote is \".)
                return None
            name = _full_name(match, match.start("tail")) + _text(groups["tail"])
            keep = _keep_assignment(name, _text(groups["sep"]), value, quoted, False)
            return None if keep else group
    return None


def _is_reference(value: str) -> bool:
    low = value.lower()
    return value.startswith(_REFERENCE_STARTS) or low in _PLACEHOLDERS or low.startswith(_PLACEHOLDER_STARTS)


def _judge_value(match) -> str | None:
    """Keep references ($VAR, <key>, already redacted) and keywords; redact literals."""
    value = _text(match.group("v")).strip("'\"\\")
    if not value or _is_reference(value) or value.lower() in _CODE_WORDS:
        return None
    return "v"


def _judge_random(match) -> str | None:
    value = _text(match.group("v"))
    return "v" if _looks_random(value, 16) and not _is_reference(value) else None


def _judge_url_password(match) -> str | None:
    value = _text(match.group("v"))
    head = value.split("/", 1)[0]
    if _is_reference(value) or (head.isdigit() and (head == value or value[len(head)] == "/")):
        return None  # a reference, or host:port/path@... (a port, not a password)
    return "v"


def _judge_cli_user(match) -> str | None:
    value = _text(match.group("v"))
    if _is_reference(value) or value.isdigit() or value.startswith("("):
        return None  # -u 1000:1000 (uid:gid), -u "$USER:$PASS"
    return "v"


def _judge_cli_flag(match) -> str | None:
    value = _text(match.group("v")).strip("'\"\\")
    if not value or _is_reference(value) or value.startswith(("/", "./", "~", "@")) or value.lower() in (
            "stdin", "-", "true", "false", "none", "null"):
        return None  # --password-file style paths, --token @file, --password stdin
    return "v"


def _judge_base64_pem(match) -> str | None:
    import binascii

    chunk = _text(match.group("v"))[:64]
    try:
        head = binascii.a2b_base64(chunk[: len(chunk) // 4 * 4])
    except (binascii.Error, ValueError):
        return "v"
    return "v" if b"PRIVATE KEY" in head else None


_JUDGES = {
    "secret": _judge_secret,
    "private_key": _judge_base64_pem,
    "openai_key": _judge_random,
    "huggingface_token": _judge_random,
    "authorization_header": _judge_random,
    "bearer_token": _judge_random,
    "url_password": _judge_url_password,
    "xml_secret": _judge_value,
    "connection_string_password": _judge_value,
    "netrc_password": _judge_value,
    "cli_password": _judge_value,
}


def _quote_of(sep):
    """The closing quote of a quoted name in an assignment's separator (``"`` or ``\\"``, as
    bytes or text), or an empty value when the name is not quoted."""
    quote_char = b'"' if isinstance(sep, bytes) else '"'
    at = sep.find(quote_char)
    if at < 0:
        return sep[:0]
    begin = at
    while begin > 0 and sep[begin - 1:begin] in (b"\\", "\\"):
        begin -= 1
    return sep[begin:at + 1]


def _callback(kind: str, index: int, as_bytes: bool):
    judge = _JUDGES[kind]
    if kind == "cli_password":
        pattern = RULES[index][1]
        judge = _judge_cli_user if "--proxy-user" in pattern else (
            _judge_cli_flag if "[_\\-]?key" in pattern else _judge_value)
    marker = f"[REDACTED:{kind}]".encode() if as_bytes else f"[REDACTED:{kind}]"

    def sub(match):
        group = judge(match)
        whole = match.group(0)
        if group is None:
            return whole
        start, end = match.span(group)
        if group == "lv":  # a line's value: its trailing blanks stay
            while end > start and whole[end - 1 - match.start()] in _BLANKS:
                end -= 1
        base = match.start()
        if group == "bv":
            # After a quoted name ("pin": 1234, or \"pin\": 1234 in JSON inside JSON) the value
            # is a JSON scalar: the marker takes the name's quote, so the JSON stays valid.
            quote = _quote_of(match.group("sep"))
            if quote:
                return whole[:start - base] + quote + marker + quote + whole[end - base:]
        return whole[:start - base] + marker + whole[end - base:]

    return sub


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
            sub = _callback(kind, index, as_bytes)
        else:
            sub = repl.encode() if as_bytes else repl
        rule = _compiled[key] = (kind, rx, sub)
    return rule


# Marker -> rules it enables, so each distinct marker is searched for once.
_MARKER_RULES: dict[str, list[int]] = {}
for _index, (_kind, _pattern, _markers, _repl) in enumerate(RULES):
    for _marker in _markers:
        _MARKER_RULES.setdefault(_marker, []).append(_index)
_MARKERS_STR = tuple(_MARKER_RULES.items())
_MARKERS_BYTES = tuple((m.encode(), rules) for m, rules in _MARKERS_STR)


def rules_needed(low: bytes | str) -> list[int]:
    """Indexes of the rules whose markers occur in ``low`` (already lower-cased), in order."""
    table = _MARKERS_BYTES if isinstance(low, bytes) else _MARKERS_STR
    needed = set()
    for marker, rules in table:
        if marker in low:
            needed.update(rules)
    return sorted(needed)


def may_contain_secret(data: bytes | str) -> bool:
    """Cheap pre-check: False guarantees that no rule can match ``data``."""
    return bool(rules_needed(data.lower()))


def redact_bytes(data: bytes) -> bytes:
    """Redact secrets in raw bytes (the hook's payload). Cheap when no marker is present."""
    for index in rules_needed(data.lower()):
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


def redact_obj(obj, redact=None):
    """Redact every string inside a JSON-like value (dict keys kept as they are), with these
    rules or, for ingest's second pass, the text function ``redact``."""
    redact = redact or redact_text
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: redact_obj(v, redact) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact_obj(v, redact) for v in obj]
    return obj
