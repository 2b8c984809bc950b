"""One redaction for every secret the project could print, log, store or send to Prefect.

Two kinds of secret are masked with ``***``:

- the credentials of a URL (``http://user:pass@host/api`` -> ``http://***@host/api``), wherever a URL appears in
  text;
- the value of every setting whose name says key, token, secret or password (``hf_token``, ``api_key``,
  ``aws_secret_access_key``), in a configuration or engine arguments; such a value, once seen by
  :func:`remember_secret`, is masked in any text too (an engine that echoes its arguments, an error message).

:func:`redact` is the one function: for text, for JSON-like values (dicts, lists) and for pydantic secrets."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

from pydantic import SecretStr

MASK = "***"
SECRET_WORDS = frozenset({"key", "apikey", "token", "secret", "password", "passwd", "pwd", "credential",
                          "credentials"})
_URL_CREDENTIALS = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#@\s'\"<>]+)@")
_MIN_REMEMBERED = 4  # shorter values would mask ordinary words
_known: set[str] = set()
_lock = threading.Lock()


def secret_name(name: str) -> bool:
    """Whether a setting's name says it holds a secret: one of its words (``hf_token``: hf, token) is key, token,
    secret or password (``max_tokens`` is not: tokens is a count)."""
    words = re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(name)).lower())
    return any(word in SECRET_WORDS for word in words)


def remember_secret(value: Any) -> None:
    """Mask ``value`` in any text :func:`redact` sees from now on (this process)."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, str) and len(value) >= _MIN_REMEMBERED and value != MASK:
        with _lock:
            _known.add(value)


def remember_secrets(value: Any, name: str = "") -> None:
    """Remember every secret-named value inside a JSON-like value (a config's engine arguments)."""
    if isinstance(value, dict):
        for key, item in value.items():
            remember_secrets(item, str(key))
    elif isinstance(value, list | tuple):
        for item in value:
            remember_secrets(item, name)
    elif secret_name(name):
        remember_secret(value)
    elif isinstance(value, str):
        remember_url_credentials(value)


def remember_url_credentials(text: str) -> None:
    """Remember the credentials of every URL in ``text`` (``user:pass``, and ``pass`` alone): an error that
    quotes them without the scheme (``Invalid bucket name "user:pass@bucket"``) is masked too."""
    for match in _URL_CREDENTIALS.finditer(text):
        userinfo = match["userinfo"]
        remember_secret(userinfo)
        remember_secret(userinfo.partition(":")[2])


def url_has_credentials(text: str) -> bool:
    """Whether ``text`` holds a URL with credentials (``scheme://user:pass@...``)."""
    return _URL_CREDENTIALS.search(text) is not None


def redact_text(text: str) -> str:
    """``text`` with URL credentials and remembered secret values masked."""
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    with _lock:
        known = sorted(_known, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    """A JSON-like value with ``fn`` applied to every string in it (dict keys kept)."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, list | tuple):
        return [map_strings(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: map_strings(v, fn) for k, v in value.items()}
    return value


def redact(value: Any, name: str = "") -> Any:
    """The one redaction: text, a pydantic secret, or a JSON-like value whose secret-named entries are masked and
    whose strings are redacted as text. ``name``: the setting ``value`` is the value of."""
    if isinstance(value, SecretStr) or (secret_name(name) and value not in (None, "")):
        return MASK
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return redact_text(value) if isinstance(value, str) else value
