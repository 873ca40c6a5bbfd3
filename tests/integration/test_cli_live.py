"""The ``walstream`` command against a real worker: write, entry status and cancel of a delayed
entry, and ``namespace apply --dry-run`` showing a diff while writing nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Worker, put_namespace

pytestmark = pytest.mark.timeout(240)


def cli(w: Worker, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "walstream.cli", "--url", w.url, *args],
                          capture_output=True, text=True, timeout=120)


def ok_json(out: subprocess.CompletedProcess[str]) -> Any:
    assert out.returncode == 0, out
    return json.loads(out.stdout)


def test_write_status_and_cancel_a_delayed_entry(start_worker: Callable[..., Worker], unique: str) -> None:
    # Given a worker with a namespace
    w = start_worker()
    put_namespace(w, unique, [{"type": "noop"}])
    # When an entry due in ten minutes is written
    written = ok_json(cli(w, "write", unique, '{"n": 1}', "--id", "e1", "--key", "k1",
                          "--delay-ms", "600000", "-o", "json"))
    assert written["durable"] == "SUCCESS" and written["id"] == "e1" and written["duplicate"] is False
    # Then its status says DELAYED, where it is, and when it is due
    status = ok_json(cli(w, "entry", "status", unique, "e1", "--output", "json", "--wait", "10"))
    assert status["state"] == "DELAYED", status
    assert (status["partition"], status["offset"], status["key"]) == (written["partition"], written["offset"], "k1")
    assert status["due_at"] is not None
    # And writing it again answers the original (the id is an idempotency key)
    again = cli(w, "write", unique, '{"n": 1}', "--id", "e1", "--key", "k1", "--delay-ms", "600000")
    assert again.returncode == 0, again
    assert again.stdout.startswith(f"SUCCESS\tid=e1\tpartition={written['partition']}\toffset={written['offset']}")
    assert "duplicate" in again.stdout
    # When it is cancelled
    cancelled = cli(w, "entry", "cancel", unique, "e1")
    # Then it says CANCELLED, and so does its status from then on
    assert cancelled.returncode == 0, cancelled
    assert cancelled.stdout.startswith("e1\tCANCELLED"), cancelled.stdout
    assert ok_json(cli(w, "entry", "status", unique, "e1", "-o", "json"))["state"] == "CANCELLED"
    # And a write of bad input is one line, and writes nothing
    bad = cli(w, "write", unique, '{"n": 1, "n": 2}', "--id", "e2")
    assert bad.returncode == 1 and len(bad.stderr.splitlines()) == 1 and "duplicate key" in bad.stderr, bad
    unknown = cli(w, "entry", "status", unique, "e2")
    assert unknown.returncode == 1 and "answered 404 Not Found" in unknown.stderr, unknown


def test_apply_dry_run_shows_the_diff_and_writes_nothing(
    start_worker: Callable[..., Worker], unique: str, tmp_path: Path
) -> None:
    # Given a live namespace (version 1, eight attempts)
    w = start_worker()
    put_namespace(w, unique, [{"type": "noop"}], retry={"max_attempts": 8})
    live = ok_json(cli(w, "namespace", "show", unique, "-o", "json"))
    assert live["version"] == 1
    # When a file changing its retries is applied with --dry-run
    f = tmp_path / "ns.yaml"
    f.write_text(f"name: {unique}\ntargets:\n  - type: noop\nretry: {{max_attempts: 3}}\n")
    assert cli(w, "namespace", "validate", str(f)).stdout == f"{f}: OK (namespace {unique}, 1 target(s))\n"
    dry = cli(w, "namespace", "apply", str(f), "--dry-run")
    # Then the diff shows the change against the live version
    assert dry.returncode == 0, dry
    lines = dry.stdout.splitlines()
    assert lines[0] == f"namespace {unique} would change (dry run: nothing written):"
    assert f"--- {unique} (live, version 1)" in lines
    assert [ln for ln in lines[3:] if ln[:1] in "+-"] == ["-  max_attempts: 8", "+  max_attempts: 3"]
    # And nothing was written: the live namespace is unchanged
    assert ok_json(cli(w, "namespace", "show", unique, "-o", "json")) == live
    # A namespace that does not exist yet is said to be new, and is not created
    g = tmp_path / "new.yaml"
    g.write_text(f"name: {unique}new\ntargets:\n  - type: noop\n")
    new = cli(w, "namespace", "apply", str(g), "--dry-run")
    assert new.returncode == 0 and new.stdout.startswith(f"new namespace {unique}new: "), new
    assert unique + "new" not in cli(w, "namespace", "list").stdout
    # And applying the file for real gives version 2, after which a dry run finds no changes
    assert "version 2" in cli(w, "namespace", "apply", str(f)).stdout
    same = cli(w, "namespace", "apply", str(f), "--dry-run")
    assert same.stdout == f"no changes: {f} matches namespace {unique} (version 2)\n", same
