"""Credentials kept out of what ccrl prints and logs: a database URL shown with its password
masked, error text scrubbed of it, settings whose name says they are secret masked.

Parsed by hand rather than with SQLAlchemy's ``make_url``: a password written unencoded with
``@`` or ``/`` in it makes ``make_url`` split the URL in the wrong place and show the rest of
the password as the host, and its masking leaves query-string credentials (``?password=``).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus

MASK = "***"

# Words that make a setting's, or a query parameter's, value a secret (``api_key``,
# ``sslpassword``, ``access_token``; not ``max_tokens``, a count).
_SECRET_WORDS = r"password|passwd|passphrase|pwd|secret|token|key|apikey|credentials?|auth"
_SECRET_NAME_PART = rf"(?:[\w.\-]*[_\-.]|\b(?:ssl|db|api)?)(?:{_SECRET_WORDS})"
_SECRET_NAME = re.compile(rf"^{_SECRET_NAME_PART}$", re.IGNORECASE)
# A query-string parameter (or a keyword in a ``key=value`` connection string) named as a
# secret, and its value.
_SECRET_PARAM = re.compile(rf"(?P<name>(?<![\w.\-]){_SECRET_NAME_PART})="
                           r"""(?P<value>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^&\s'"]+)""", re.IGNORECASE)
# A URL in free text (an error message): a scheme, "://", and everything up to a space or quote.
_URL = re.compile(r"\b[A-Za-z][\w+.\-]{0,30}://[^\s'\"<>]*")
# The scheme and separators of a URL written without "://".
_SCHEME_TYPO = re.compile(r"[A-Za-z][\w+.\-]{0,30}[:/]*|")
# What follows the "@" that ends a URL's userinfo: a host (name, IPv4, [IPv6]), maybe a port,
# then the path, query or fragment, the URL's end, or punctuation around it.
_HOST = re.compile(r"[\w.\-%]*(?:\[[0-9A-Fa-f:.%]+\])?(?::\d*)?(?:[/?#),;\]]|$)")


def is_secret_name(name: str) -> bool:
    """Whether a setting or parameter named ``name`` holds a secret (its last word says so)."""
    return bool(_SECRET_NAME.match(name.rsplit(".", 1)[-1]))


def _credentials(url: str) -> tuple[int, int, str, str] | None:
    """Where ``url``'s userinfo is and what it holds: (start, end, user, password), or None
    when it has no password. Passwords may hold "@", ":", "/" and "?" unencoded: the userinfo
    ends at the last "@" a host follows, before the query when one such "@" is there. A URL
    missing its "://" (``postgresql:/u:pw@h``, a typo SQLAlchemy rejects, quoting it) is read
    from the end of its scheme and slashes, or from its start."""
    scheme_end = url.find("://") + 3
    starts = [scheme_end] if scheme_end >= 3 else [_SCHEME_TYPO.match(url).end(), 0]
    for start in starts:
        ats = [i for i in range(start, len(url)) if url[i] == "@" and _HOST.match(url, i + 1)]
        if not ats:
            return None
        query = url.find("?", start)
        before_query = [i for i in ats if query < 0 or i < query]
        end = (before_query or ats)[-1]
        userinfo = url[start:end]
        if ":" in re.split(r"[/?#]", userinfo, maxsplit=1)[0]:
            user, _, password = userinfo.partition(":")
            return start, end, user, password
    return None  # a user alone, or an "@" in the path or the query


def mask_url(url: str) -> str:
    """``url`` with its password, and every query parameter named as a secret, replaced by
    ``***``; the user, host, port, database and other parameters are kept."""
    if not isinstance(url, str):
        return url
    found = _credentials(url)
    masked = url
    if found is not None:
        start, end, user, _ = found
        masked = f"{url[:start]}{user}:{MASK}{url[end:]}"
    return _SECRET_PARAM.sub(lambda m: f"{m.group('name')}={MASK}", masked)


def url_secrets(url: str) -> list[str]:
    """Every secret ``url`` carries (its password and secret query values), in each form it may
    take in a message: as written, percent-decoded, percent- and plus-encoded. Longest first."""
    if not isinstance(url, str):
        return []
    raw: list[str] = []
    found = _credentials(url)
    if found is not None and found[3]:
        raw.append(found[3])
    raw += [m.group("value") for m in _SECRET_PARAM.finditer(url)]
    forms = set()
    for value in raw:
        for decoded in {value, unquote(value), unquote_plus(value)}:
            forms.update({decoded, quote(decoded, safe=""), quote_plus(decoded), quote(decoded)})
    return sorted((f for f in forms if f), key=len, reverse=True)


def scrub_password(text: str, url: str | None = None) -> str:
    """``text`` (an error message, a log line) with ``url``'s secrets, in any encoding, and the
    credentials of any URL or ``password=`` parameter it contains replaced by ``***``."""
    if not isinstance(text, str):
        return text
    for secret in url_secrets(url) if url else []:
        text = text.replace(secret, MASK)
    return scrub_urls(text)


def scrub_urls(text: str) -> str:
    """Every URL password and secret parameter in ``text`` replaced by ``***``."""
    text = _URL.sub(lambda m: mask_url(m.group(0)), text)
    return _SECRET_PARAM.sub(lambda m: f"{m.group('name')}={MASK}", text)


def mask_setting(name: str, value: Any) -> Any:
    """A setting's value as shown: ``***`` when its name says it is a secret (and it is set),
    a URL with its credentials masked, anything else as it is."""
    if value in (None, ""):
        return value
    if is_secret_name(name):
        return MASK
    if isinstance(value, str) and "@" in value:
        return mask_url(value)
    return value
