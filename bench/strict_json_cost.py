"""CPU cost of reading write bodies strictly (walstream/strict_json.py) against the
alternatives, on a ~1 KB mutation entry and a 1,000-entry batch (~1 MB).

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


def cpu_s(fn: Callable[[], Any], number: int, rounds: int = 7) -> float:
    return min(timeit.repeat(fn, number=number, repeat=rounds, timer=time.process_time)) / number


def main() -> None:
    one = orjson.dumps(entry(1))
    batch = orjson.dumps({"entries": [entry(i) for i in range(1000)]})
    print(f"entry {len(one)} bytes; batch {len(batch)} bytes")
    slow = strict_json._SLOW  # the stdlib decoder with duplicate/number hooks (the slow path)
    candidates: list[tuple[str, Callable[[bytes], Any]]] = [
        ("orjson.loads (not strict)", orjson.loads),
        ("jiter, duplicate keys detected", lambda b: jiter.from_json(b, catch_duplicate_keys=True)),
        ("strict_json.loads", strict_json.loads),
        ("strict_json.loads_batch", strict_json.loads_batch),
        ("stdlib json + hooks + walk", lambda b: strict_json._find(slow.decode(b.decode()), 0, 130, True)),
    ]
    for name, fn in candidates:
        t1 = cpu_s(functools.partial(fn, one), 2000)
        tb = cpu_s(functools.partial(fn, batch), 5)
        print(f"{name:34s} 1 KB entry {t1 * 1e6:6.1f} µs   1,000-entry batch {tb * 1e3:6.2f} ms")


if __name__ == "__main__":
    main()
