"""Masking of secrets in URLs, headers, log records and any other text.

Secrets are known in two ways. Some are recognised by where they sit: the password
of a URL, the value of an ``Authorization`` or ``Cookie`` header, a query parameter
named like ``token`` or ``api_key``. Others are registered when the configuration is
loaded: every value substituted from a ``${VARIABLE}`` reference, so a token that
also appears in a redirect URL or in an error message is masked there too.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

#: Text that replaces a secret.
MASK = "***"

#: Header names whose values are always secret (compared in lower case).
SECRET_HEADER_NAMES = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"}
)

# The password of a URL's userinfo, for URLs that urlsplit rejects.
_USERINFO_PASSWORD_RE = re.compile(r"(//[^/@:]*:)[^/@]*@")

_SECRET_NAME_RE = re.compile(
    r"(token|secret|passw|api[-_]?key|apikey|auth|signature|sig$|session|credential)",
    re.IGNORECASE,
)

#: Registered secrets shorter than this are not masked in free text, because
#: masking "1" or "ab" everywhere would garble output without protecting anything.
_MIN_SECRET_LENGTH = 4

_registered: set[str] = set()
_registered_lock = threading.Lock()
_pattern: re.Pattern[str] | None = None


def register_secret(value: str) -> None:
    """Remember ``value`` as a secret, so that ``mask_text`` hides it everywhere."""
    global _pattern
    if len(value) < _MIN_SECRET_LENGTH:
        return

    with _registered_lock:
        if value in _registered:
            return
        _registered.add(value)
        variants = set(_registered) | {quote(s, safe="") for s in _registered}
        longest_first = sorted(variants, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(s) for s in longest_first))


def is_secret_name(name: str) -> bool:
    """Tell whether a header or query parameter name suggests a secret value."""
    return name.lower() in SECRET_HEADER_NAMES or bool(_SECRET_NAME_RE.search(name))


def mask_text(text: str) -> str:
    """Replace every registered secret in ``text`` with the mask."""
    pattern = _pattern
    if pattern is None or not text:
        return text
    return pattern.sub(MASK, text)


def mask_url(url: str) -> str:
    """Mask the password, secret-looking query values and registered secrets of a URL."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return mask_text(_USERINFO_PASSWORD_RE.sub(rf"\1{MASK}@", url))

    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{hostport}" if has_password else f"{MASK}@{hostport}"

    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        masked_pairs = [(k, MASK if is_secret_name(k) else v) for k, v in pairs]
        query = urlencode(masked_pairs, safe="*")

    masked = urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    return mask_text(masked)


def mask_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Return a copy of ``headers`` with secret values masked."""
    return {
        name: MASK if is_secret_name(name) else mask_text(value)
        for name, value in headers.items()
    }


class RedactingFilter(logging.Filter):
    """Logging filter that masks registered secrets in the final message.

    It formats the record's message once, masks it, and stores the result back
    with no arguments, so every handler after it gets the masked text.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if _pattern is None:
            return True
        message = record.getMessage()
        masked = mask_text(message)
        if masked != message:
            record.msg = masked
            record.args = None
        return True
