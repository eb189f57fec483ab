"""Keep Postgres passwords out of reprs, logs and exception messages.

A sharded pool holds one DSN per shard and per replica, and every one of them may carry a
password.  Those DSNs end up in places an operator copies into tickets: ``repr(pool)``, log
lines, ``stats()``, ``health()`` and the text of exceptions (asyncpg and the OS resolver are
free to echo connection parameters back).  Two tools cover this:

* :func:`redact_dsn` rewrites one DSN -- URL form or libpq key/value form -- with the password
  replaced by ``***``;
* :class:`Redactor` remembers every secret the pool was given and scrubs arbitrary text and
  exceptions *in place* (the exception keeps its class, so ``except asyncpg.X`` still works).

Scrubbing only happens on error paths and when building reports, never on the query hot path.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit, urlunsplit

__all__ = ["MASK", "Redactor", "dsn_password", "redact_dsn"]

MASK = "***"

# ``password=secret`` / ``password='se cret'`` inside a libpq key/value DSN or a URL query.
_KV_PASSWORD = re.compile(r"(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)")
# ``[ENCRYPTED] PASSWORD <literal>`` in SQL (CREATE/ALTER ROLE), in every quoting style
# ('..', E'..', $$..$$, $tag$..$tag$): error texts may quote a password rotation's statement,
# and the new password is not known to us yet.  (The slow-query log keeps no literal at all.)
_SQL_PASSWORD = re.compile(
    r"(?i)(\bpassword\s+)(?:'(?:[^']|'')*'|E'(?:[^'\\]|\\.|'')*'"
    r"|\$([A-Za-z_][A-Za-z_0-9]*|)\$.*?\$\2\$)",
    re.DOTALL,
)


def dsn_password(dsn: str) -> str | None:
    """The password embedded in ``dsn`` (URL netloc, ``?password=`` or key/value form)."""
    if "://" in dsn:
        try:
            parts = urlsplit(dsn)
            if parts.password:
                return unquote(parts.password)
        except ValueError:
            pass
    match = _KV_PASSWORD.search(dsn)
    if match:
        value = match.group(2)
        if value.startswith("'") and value.endswith("'") and len(value) >= 2:
            value = value[1:-1]
        return unquote(value)
    return None


def redact_dsn(dsn: str) -> str:
    """Return ``dsn`` with its password replaced by ``***``; the rest is kept for debugging."""
    out = dsn
    if "://" in dsn:
        try:
            parts = urlsplit(dsn)
            if parts.password is not None:
                userinfo, _, hostinfo = parts.netloc.rpartition("@")
                user = userinfo.split(":", 1)[0]
                out = urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{hostinfo}"))
        except ValueError:
            # Unparseable URL: fall back to masking everything between ':' and '@'.
            out = re.sub(r"(://[^:/@]*:)[^@]*@", rf"\g<1>{MASK}@", dsn)
    return _KV_PASSWORD.sub(rf"\g<1>{MASK}", out)


class Redactor:
    """Masks a known set of secrets wherever they appear.

    Pattern-based redaction of DSNs is not enough: an error message may contain the bare
    password (``password authentication failed ... 'hunter2'``) or a DSN in a form we do not
    parse.  So the pool registers every password it was handed and masks the literal strings.
    """

    __slots__ = ("_secrets",)

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets: set[str] = set()
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        """Remember ``secret``; very short strings are ignored (they would mask too much)."""
        if secret and len(secret) >= 3:
            self._secrets.add(secret)

    def add_dsn(self, dsn: str | None) -> None:
        """Remember the password inside ``dsn``, if any."""
        if dsn:
            self.add(dsn_password(dsn))

    def text(self, value: str) -> str:
        """Mask every known secret and every DSN password pattern in ``value``."""
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        if "password" in value.lower() or "://" in value:
            value = _scrub_patterns(value)
        return value

    def exception(self, exc: BaseException) -> BaseException:
        """Scrub ``exc`` (args and asyncpg's message/detail/hint) in place; return it.

        The class is preserved so callers' ``except`` clauses behave exactly as with plain
        asyncpg.  Chained causes are scrubbed too, since tracebacks print them.
        """
        seen: set[int] = set()
        current: BaseException | None = exc
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            self._scrub_one(current)
            current = current.__cause__ or current.__context__
        return exc

    def _scrub_one(self, exc: BaseException) -> None:
        with contextlib.suppress(AttributeError, TypeError):
            exc.args = tuple(self.text(a) if isinstance(a, str) else a for a in exc.args)
        for attr in ("message", "detail", "hint", "strerror"):
            value = getattr(exc, attr, None)
            if isinstance(value, str):
                with contextlib.suppress(AttributeError, TypeError):
                    setattr(exc, attr, self.text(value))
        if isinstance(exc, BaseExceptionGroup):
            for sub in exc.exceptions:
                self.exception(sub)


_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")


def _scrub_patterns(value: str) -> str:
    """Mask passwords recognisable by their form: in URLs, ``password=`` and SQL literals."""
    value = _URL.sub(lambda m: redact_dsn(m.group(0)), value)
    value = _SQL_PASSWORD.sub(rf"\g<1>'{MASK}'", value)
    return _KV_PASSWORD.sub(rf"\g<1>{MASK}", value)
