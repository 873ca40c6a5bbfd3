"""CPU cost of reading write bodies strictly (walstream/strict_json.py) against the
alternatives, on a ~1 KB mutation entry and a 1,000-entry batch (~1 MB), and on the same
with 20 computed floats per entry (17 significant digits, like ``0.1 + 0.2``: each needs
the round-trip check's Decimal comparison, the worst case of an accepted float).

Run: ``.venv/bin/python -m bench.strict_json_cost`` (no services needed). CPU time
(``time.process_time``) is reported, the minimum of several rounds, so that other load on a
shared machine disturbs it less. The figures are recorded in docs/architecture.md.
"""

from __future__ import annotations

import functools
import time
import timeit
import uuid
from collections.abc import Callable
from typing import Any

import jiter
import orjson

from walstream import strict_json


def entry(i: int) -> dict[str, Any]:
    return {
        "namespace": "catalog",
        "id": str(uuid.uuid4()),
        "key": f"movie:{i}",
        "lifecycle": {"delay_ms": 5000},
        "payload": {
            "mutations": [
                {
                    "table": "movies",
                    "op": "put",
                    "key": {"id": str(i)},
                    "value": {
                        "title": "Heat " * 20,
                        "year": 1995,
                        "rating": 8.3,
                        "runtime_min": 170,
                        "director": "Michael Mann",
                        "language": "en",
                        "genres": ["crime", "drama", "thriller"],
                        "cast": [{"name": "Al Pacino", "role": "Hanna"}, {"name": "Val Kilmer", "role": "Chris"}],
                        "updated_at": "2026-11-26T12:00:00Z",
                        "ts_us": 1764158400000000 + i,
                        "summary": "A group of professional thieves start to feel the heat " * 6,
                    },
                },
                {"table": "movies_by_year", "op": "delete", "key": {"year": 1995, "id": str(i)}},
            ]
        },
    }


def float_entry(i: int) -> dict[str, Any]:
    e = entry(i)
    e["payload"]["mutations"][0]["value"]["scores"] = [(i + k) / 3 + 0.1 for k in range(20)]
    return e


def jiter_lossless(b: bytes) -> Any:
    return jiter.from_json(b, catch_duplicate_keys=True, float_mode="lossless-float")


def cpu_s(fn: Callable[[], Any], number: int, rounds: int = 7) -> float:
    return min(timeit.repeat(fn, number=number, repeat=rounds, timer=time.process_time)) / number


def main() -> None:
    slow = strict_json._SLOW  # the stdlib decoder with duplicate/number hooks (the slow path)
    candidates: list[tuple[str, Callable[[bytes], Any]]] = [
        ("orjson.loads (not strict)", orjson.loads),
        ("jiter, duplicate keys detected", lambda b: jiter.from_json(b, catch_duplicate_keys=True)),
        ("jiter, + lossless floats", jiter_lossless),
        ("strict_json.loads", strict_json.loads),
        ("strict_json.loads_batch", strict_json.loads_batch),
        ("stdlib json + hooks + walk", lambda b: strict_json._find(slow.decode(b.decode()), 0, 130, True)),
    ]
    for make in (entry, float_entry):
        one = orjson.dumps(make(1))
        batch = orjson.dumps({"entries": [make(i) for i in range(1000)]})
        print(f"{make.__name__}: {len(one)} bytes; batch {len(batch)} bytes")
        for name, fn in candidates:
            t1 = cpu_s(functools.partial(fn, one), 2000)
            tb = cpu_s(functools.partial(fn, batch), 5)
            print(f"  {name:34s} 1 entry {t1 * 1e6:6.1f} µs   1,000-entry batch {tb * 1e3:6.2f} ms")


if __name__ == "__main__":
    main()
