"""Who may do what (the auth contract of the design card).

- ``WALSTREAM_ADMIN_TOKENS`` set (comma separated): namespace changes, dead-letter redrive (and
  later replay, index repair and the web views) need ``Authorization: Bearer <admin token>``.
  Unset, they are open (a worker on loopback, a trusted network).
- A namespace with ``write_tokens`` needs one of them (or an admin token) on every write and
  cancellation of its entries.
- No token: 401. A token that is not one of those: 403.

Tokens are kept only as SHA-256 digests (``sha256:<hex>``, :func:`token_digest`): the worker's
settings are hashed at start, a namespace's write tokens when it is applied. A presented
token is hashed and compared with every digest in constant time (:func:`hmac.compare_digest`,
no early exit), and no message, log line or answer ever carries a token.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

#: how a stored token looks: its SHA-256, hex
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
#: what a token given in a configuration may be made of: RFC 6750's b64token (what a client
#: can send after ``Bearer `` unchanged), so no space, no control character, no non-ASCII
TOKEN_RE = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")
#: the shortest token accepted (a token is a secret, not a password: generate it)
MIN_TOKEN_CHARS = 16


def token_digest(token: str) -> str:
    """``sha256:<64 hex>`` of ``token`` (UTF-8; bytes a header carried that are not UTF-8
    are hashed as they came, so such a token is merely wrong, never an error)."""
    return "sha256:" + hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def stored_token(token: str, what: str) -> str:
    """A configured token as kept: its digest. A digest given (``sha256:`` and 64 hex digits,
    either case) is kept as such, lower-cased. Raises ValueError (naming ``what``, never the
    token) for one that is too short, not a b64token, or looks like a digest but is not one
    (it would otherwise be kept as a working token itself)."""
    if token.lower().startswith("sha256:"):
        if not DIGEST_RE.match(token.lower()):
            raise ValueError(f"{what} starts with 'sha256:' but is not a digest (64 hex digits after it)")
        return token.lower()
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"{what} is shorter than {MIN_TOKEN_CHARS} characters")
    if not TOKEN_RE.match(token):
        raise ValueError(f"{what} may hold only letters, digits and -._~+/ (then '=' at the end)")
    return token_digest(token)


def bearer(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None when there is none (or
    another scheme)."""
    value = headers.get("Authorization") or headers.get("authorization")
    if not value:
        return None
    parts = value.split(None, 1)  # any whitespace between the scheme and the token
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return None
    return parts[1].strip() or None


def _matches(token: str, digests: Iterable[str]) -> bool:
    presented = token_digest(token).encode()
    found = False
    for d in digests:  # every digest is compared: the time taken does not say which matched
        found |= hmac.compare_digest(presented, d.encode())
    return found


@dataclass(frozen=True)
class Denied:
    """A refusal: ``status`` 401 (no token) or 403 (not an allowed token), and a message that
    names what is needed (never the token)."""

    status: int
    message: str


class Auth:
    """The worker's admin tokens (as digests) and the checks every view uses."""

    def __init__(self, admin_tokens: Iterable[str]) -> None:
        self._admin = tuple(token_digest(t) for t in admin_tokens)

    def admin(self, headers: Mapping[str, str], what: str) -> Denied | None:
        """None when ``what`` (e.g. "changing a namespace") may be done with these headers."""
        return self.admin_token(bearer(headers), what)

    def admin_token(self, token: str | None, what: str) -> Denied | None:
        """None when ``what`` may be done with ``token`` (given however: a header, or the
        operator's pages' cookie)."""
        if not self._admin:
            return None
        if token is None:
            return Denied(401, f"{what} needs Authorization: Bearer <admin token> (WALSTREAM_ADMIN_TOKENS is set)")
        if not _matches(token, self._admin):
            return Denied(403, f"{what} needs an admin token; the token given is not one")
        return None

    def writer(self, namespace: str, write_tokens: Iterable[str], token: str | None) -> Denied | None:
        """None when ``token`` may write to (and cancel entries of) ``namespace``, whose
        ``write_tokens`` are digests; a namespace without any is open."""
        digests = tuple(write_tokens)
        if not digests:
            return None
        if token is None:
            return Denied(
                401, f"writing to (or cancelling entries of) namespace {namespace!r} needs Authorization: "
                "Bearer <one of its write tokens>"
            )
        if not _matches(token, (*digests, *self._admin)):  # an admin token may write too
            return Denied(403, f"the token given is not a write token of namespace {namespace!r}")
        return None
