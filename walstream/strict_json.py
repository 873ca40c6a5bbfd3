"""Strict JSON reading: the one parser for every JSON body the HTTP API reads.

A body is refused (never silently changed) when it holds:

- a duplicate key in any object, at any depth (JSON parsers usually keep the last one);
- an integer outside the 64-bit range ``[-2**63, 2**64 - 1]`` (orjson would turn it into a
  float and walstream's envelope, written with orjson, cannot hold it anyway);
- a number literal that a 64-bit float (the double of every JSON reader, orjson's included)
  cannot hold: beyond its range (``1e400`` would become infinity), or a literal that does not
  round-trip (see below);
- ``NaN``, ``Infinity`` or ``-Infinity`` (not JSON);
- arrays/objects nested more than :data:`MAX_DEPTH` levels below the document they belong to
  (an entry, a namespace, a request body): every record derived from an entry embeds it a few
  levels deeper (DLQ records, timers, state rows), and orjson refuses to *encode* anything
  nested deeper than 254 levels, so 128 leaves ample room and no record can become unwritable;
- a string that is not valid Unicode (a lone surrogate escape such as ``"\\ud800"``), as a
  value or as a key, at any depth: it cannot be encoded as UTF-8, so no record could hold it.

The round-trip rule for a number with a fraction or an exponent: it is read as the nearest
IEEE-754 double ``f``, and accepted only when ``Decimal(literal) == Decimal(repr(f))``, i.e.
the literal and the shortest text of ``f`` have the same value, so that every later writer
(orjson in the WAL record, Cassandra's drivers, Elasticsearch) writes back the number the
client sent. ``0.1``, ``1.5e-7``, ``3.14159``, ``1.50``, ``1E+2`` and any double's own repr
(``0.30000000000000004``) pass; ``9007199254740993.0``, ``2147483647.0000001`` and
``12345678901234567890.123`` (more significant digits than a double keeps), and ``1e-400``
(which would become ``0.0``) are refused, naming where, with the fix: send it as a string.
Integer literals (no fraction, no exponent) are exact Python ints, bounded as above.

Cost (measured on a ~1 KB entry and a 1,000-entry batch, see docs/architecture.md): the fast
path is `jiter <https://github.com/pydantic/jiter>`_ (pydantic's Rust JSON parser, which
detects duplicate keys, and which keeps each float literal's text: ``float_mode=
"lossless-float"``) plus one pass over the parsed value for numbers and depth, which turns
each float literal into a ``float`` after checking that it round-trips. Only a body
that the fast path refuses is read again by the slow path (the stdlib parser with hooks), which
finds *where* each problem is, so that a batch can refuse its bad entries one by one.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import jiter
import orjson
from jiter import LosslessFloat

#: the deepest nesting of arrays/objects below a document (an entry, a namespace, a body)
MAX_DEPTH = 128
_TOO_DEEP = "nested deeper than"

INT_MIN = -(1 << 63)
INT_MAX = (1 << 64) - 1

Path = tuple[str | int, ...]


def format_path(path: Path) -> str:
    """``("payload", "mutations", 0, "key")`` → ``payload.mutations.0.key``.

    The result is always encodable as UTF-8: a key holding a lone surrogate (the very problem
    being named) is written with a backslash escape, so that no answer naming it fails."""
    return ".".join(printable(p) if type(p) is str else str(p) for p in path)


def printable(s: str) -> str:
    """``s`` with what UTF-8 cannot encode (lone surrogates) as ``\\udc00`` escapes: text
    that can always be sent in an answer."""
    return s if _valid_text(s) else s.encode("utf-8", "backslashreplace").decode("utf-8")


class StrictJSONError(ValueError):
    """A body is refused. ``path`` locates the problem (empty: the whole body);
    ``malformed`` is true when the body is not JSON at all (syntax, encoding)."""

    def __init__(self, reason: str, path: Path = (), *, malformed: bool = False) -> None:
        self.reason = reason
        self.path = path
        self.malformed = malformed
        super().__init__(f"{format_path(path)}: {reason}" if path else reason)


class Refused(dict[str, Any]):
    """Stands in a batch for an item that failed strict reading (see :func:`loads_batch`).

    It holds only the item's ``"id"`` (when that was a plain string), so the item's answer can
    name it; ``error`` says what was wrong, with a path relative to the item.
    """

    def __init__(self, error: StrictJSONError, item_id: str | None) -> None:
        super().__init__({} if item_id is None else {"id": item_id})
        self.error = error


def loads(data: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """The value of a JSON document, or :class:`StrictJSONError` naming its first problem."""
    doc, slow = _parse(data, max_depth)
    found = _check(doc, max_depth, slow)
    if found is not None:
        raise _error(found)
    return float(doc) if type(doc) is LosslessFloat else doc  # checked: it round-trips


def loads_batch(data: bytes | str, *, field: str = "entries", max_depth: int = MAX_DEPTH) -> Any:
    """Like :func:`loads`, for a body ``{field: [item, ...]}`` whose items are answered one
    by one: an item with a problem is replaced by a :class:`Refused` (the other items are
    returned as parsed), and ``max_depth`` counts from each item.

    A body of another shape is read as by :func:`loads` (the caller refuses its shape).
    Raises :class:`StrictJSONError` for a problem outside the items, or for a body that
    cannot be read at all (not JSON; nested so deeply that the parser gives up).
    """
    doc, slow = _parse(data, max_depth, outer_levels=2)
    items = doc.get(field) if type(doc) is dict and len(doc) == 1 else None
    if type(items) is not list:
        found = _check(doc, max_depth, slow)
        if found is not None:
            raise _error(found)
        return float(doc) if type(doc) is LosslessFloat else doc
    for i, item in enumerate(items):
        found = _check(item, max_depth, slow)
        if found is None:
            if type(item) is LosslessFloat:
                items[i] = float(item)  # checked: it round-trips
            continue
        # name the item by its id when that is unambiguous
        item_id = item.get("id") if isinstance(item, dict) and getattr(item, "key", None) != "id" else None
        usable = type(item_id) is str and _valid_text(item_id)  # the answer must encode
        items[i] = Refused(_error(found), item_id if usable else None)
    return doc


# --- parsing ------------------------------------------------------------------------------


def _parse(data: bytes | str, max_depth: int, outer_levels: int = 0) -> tuple[Any, bool]:
    """The parsed value and whether the slow path made it (then it may hold markers).

    ``outer_levels``: levels of the body above its documents (2 for a batch's items)."""
    try:
        return jiter.from_json(
            # surrogatepass: a lone surrogate in a str reaches the slow path, which names it
            data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data,
            allow_inf_nan=False,
            catch_duplicate_keys=True,
            cache_mode="keys",
            # each float keeps its literal, to be checked (and made a float) by _clean
            float_mode="lossless-float",
        ), False
    except ValueError as exc:
        fast_error = str(exc)
    # The fast parser refused the body: read it again, marking each problem in place, to
    # tell a malformed body from one whose problems have a place (and maybe an item).
    try:
        text = data if isinstance(data, str) else data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StrictJSONError(f"not UTF-8 ({exc.reason} at byte {exc.start})", malformed=True) from None
    try:
        doc = _SLOW.decode(text)
    except json.JSONDecodeError as exc:
        raise StrictJSONError(f"{exc.msg}: line {exc.lineno} column {exc.colno}", malformed=True) from None
    except RecursionError:
        raise StrictJSONError(f"{_TOO_DEEP} {max_depth} levels") from None
    if _find(doc, 0, max_depth + outer_levels, True) is None:
        # nothing the slow path can place: trust the fast parser's verdict
        raise StrictJSONError(fast_error, malformed=True)
    return doc, True


class _Bad:
    """Marks a value the slow path refused (a number out of range, NaN, Infinity)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class _Duplicates(dict[str, Any]):
    """An object with a repeated key (marked by the slow path); ``key`` is the first repeat."""

    key: str


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    marked = _Duplicates(obj)
    seen: set[str] = set()
    for k, _ in pairs:
        if k in seen:
            marked.key = k
            break
        seen.add(k)
    return marked


def _int(literal: str) -> Any:
    # no int() for a long literal: it costs quadratic time and Python refuses > 4300 digits
    digits = len(literal.lstrip("-"))
    if digits > 20 or not INT_MIN <= (v := int(literal)) <= INT_MAX:
        return _Bad(_out_of_range(_shorten(literal)))
    return v


def _out_of_range(number: str) -> str:
    return f"integer {number} is outside the 64-bit range; send it as a string"


def _float(literal: str) -> Any:
    v = _exact_float(literal, float(literal))
    return _Bad(_float_problem(literal)) if v is None else v


#: the smallest normal double: below it a double keeps fewer digits
_MIN_NORMAL = 2.2250738585072014e-308


def _exact_float(literal: str, v: float) -> float | None:
    """``v``, the double of a JSON number literal with a fraction or an exponent, or None when
    it does not hold the literal's value (the round-trip rule of the module docstring)."""
    if v - v != 0.0:  # inf
        return None
    # Cheap cases first (measured: ~0.1-0.3 µs against ~1 µs for repr + Decimal). A literal
    # of at most 16 characters has at most 15 significant digits, and a double holds any
    # such decimal in its normal range (DBL_DIG = 15); next, a client that writes floats as
    # their shortest text (orjson, JavaScript) sends what orjson writes back (shortest digits,
    # like repr, perhaps in another exponent form: then the exact comparison decides).
    if len(literal) <= 16 and abs(v) >= _MIN_NORMAL:
        return v
    if orjson.dumps(v) == literal.encode() or Decimal(literal) == Decimal(repr(v)):
        return v
    return None


def _float_problem(literal: str) -> str:
    if float(literal) - float(literal) != 0.0:
        return "number is beyond the range of a 64-bit float; send it as a string"
    return f"{_shorten(literal)} cannot be held exactly by a JSON reader's double; send it as a string"


def _constant(literal: str) -> Any:
    return _Bad(f"{literal} is not a JSON number")


def _shorten(literal: str) -> str:
    return literal if len(literal) <= 40 else f"{literal[:12]}…({len(literal)} characters)"


_SLOW = json.JSONDecoder(object_pairs_hook=_object, parse_int=_int, parse_float=_float, parse_constant=_constant)


# --- checking -----------------------------------------------------------------------------

#: a problem found by :func:`_find`: the path to it, innermost first, and the reason
_Found = tuple[list[str | int], str]


def _error(found: _Found) -> StrictJSONError:
    reversed_path, reason = found
    path = tuple(reversed(reversed_path))
    if reason.startswith(_TOO_DEEP):
        path = path[:1]  # the field that is too deep; the full path would be a long chain
    return StrictJSONError(reason, path)


def _check(v: Any, max_depth: int, slow: bool) -> _Found | None:
    """The first problem in the document ``v``, or None."""
    if not slow and _clean(v, 0, max_depth):
        return None
    return _find(v, 0, max_depth, slow)


def _clean(v: Any, level: int, max_depth: int) -> bool:
    """Whether a value from the fast parser is free of problems (numbers, depth); on the way,
    each float literal (a ``LosslessFloat``) that round-trips is replaced by its ``float``.

    The hot path of every write: one walk, no paths, no keys (measured: ~40% cheaper than
    :func:`_find`); :func:`_find` then says where a problem is. A container's floats are
    replaced in a second loop over it, only when it has any (most containers have none).
    """
    t = type(v)
    if t is dict:
        values = v.values()
    elif t is list:
        values = v
    else:
        if t is int:
            return bool(INT_MIN <= v <= INT_MAX)
        if t is LosslessFloat:
            return _exact_float(str(v), float(v)) is not None
        return True
    if level > max_depth:
        return False
    level += 1
    floats = False
    for x in values:
        tx = type(x)
        if tx is str or tx is bool or x is None:
            continue
        if tx is LosslessFloat:
            floats = True
        elif not _clean(x, level, max_depth):
            return False
    if floats:
        for k, x in v.items() if t is dict else enumerate(v):
            if type(x) is LosslessFloat:
                f = _exact_float(str(x), float(x))
                if f is None:
                    return False
                v[k] = f  # an existing key or index: safe while iterating
    return True


def _find(v: Any, level: int, max_depth: int, slow: bool) -> _Found | None:
    """The first problem in ``v`` (a container ``level`` levels below its document), or None.

    Built for speed on the good case: no path is built until a problem is found, and the
    value is walked once. Markers and strings are looked at only after the slow path.
    """
    t = type(v)
    if t is dict or t is _Duplicates:
        if level > max_depth:
            return [], f"{_TOO_DEEP} {max_depth} levels"
        if t is _Duplicates:
            return [], f"duplicate key {v.key!r}"
        for k, x in v.items():
            tx = type(x)
            if slow and not _valid_text(k):
                return [k], "key is not valid Unicode (a lone surrogate)"
            if tx is str:
                if slow and not _valid_text(x):
                    return [k], "string is not valid Unicode (a lone surrogate)"
                continue
            if tx is bool or x is None:
                continue
            found = _find(x, level + 1, max_depth, slow)
            if found is not None:
                found[0].append(k)
                return found
        return None
    if t is list:
        if level > max_depth:
            return [], f"{_TOO_DEEP} {max_depth} levels"
        for i, x in enumerate(v):
            tx = type(x)
            if tx is str:
                if slow and not _valid_text(x):
                    return [i], "string is not valid Unicode (a lone surrogate)"
                continue
            if tx is bool or x is None:
                continue
            found = _find(x, level + 1, max_depth, slow)
            if found is not None:
                found[0].append(i)
                return found
        return None
    if t is int:
        if v > INT_MAX or v < INT_MIN:
            return [], _out_of_range(_shorten(str(v)) if v.bit_length() < 10_000 else f"of {v.bit_length()} bits")
        return None
    if t is LosslessFloat:
        literal = str(v)
        return None if _exact_float(literal, float(v)) is not None else ([], _float_problem(literal))
    if t is _Bad:
        return [], v.reason
    if t is str and slow and not _valid_text(v):
        return [], "string is not valid Unicode (a lone surrogate)"
    return None


def _valid_text(s: str) -> bool:
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
