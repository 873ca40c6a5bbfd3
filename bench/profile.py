"""Profile one worker under the L3 load with py-spy: where its CPU goes per delivered entry.

``python -m bench.profile [noop|kafka]`` starts one ``walstream worker`` (fresh app id), applies
a namespace whose only target is ``noop`` (or a fresh ``kafka`` topic), writes ``PROFILE_N``
entries (default 100000) through ``POST /v1/log/batch`` the way ``bench.run``'s L3 rung does,
and samples the worker with ``py-spy record`` (100 Hz, idle frames left out) from the first POST
until every entry is delivered. It prints the worker's CPU µs per entry, and the functions with
the largest shares of the samples: *self* (the frame on top) and *total* (anywhere on the stack),
both as % of all samples. The collapsed stacks are kept in ``PROFILE_OUT`` (default
``/tmp/walstream-profile.txt``) for a flame graph or a closer look. Needs Kafka at
``WALSTREAM_BROKER``; every topic of the run is deleted at the end.
"""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

from bench.kafka_view import KafkaView
from bench.procstat import CpuWindow
from bench.run import BROKER, PARTITIONS, delivered, post_batches, put_namespace, wait_count, wait_owned
from bench.worker import Worker
from walstream.kafka_admin import TopicSpec, ensure_topics

N = int(os.environ.get("PROFILE_N", "100000"))
OUT = Path(os.environ.get("PROFILE_OUT", "/tmp/walstream-profile.txt"))
TOP = 30


def frame_name(frame: str) -> str:
    """``func (path/to/module.py:line)`` → ``module.py:func`` (lines merged)."""
    func, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    return f"{path.rsplit('/', 1)[-1]}:{func}"


def summarise(collapsed: Path) -> str:
    self_n: collections.Counter[str] = collections.Counter()
    total_n: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = [frame_name(f) for f in stack.split(";") if f and not f.startswith("process ")]
        if not frames:
            continue
        samples += n
        self_n[frames[-1]] += n
        for f in set(frames):
            total_n[f] += n
    if not samples:
        return "no samples"
    out = [f"{samples} samples", "", "self %   function"]
    out += [f"{100 * n / samples:6.1f}   {f}" for f, n in self_n.most_common(TOP)]
    out += ["", "total %  function"]
    out += [f"{100 * n / samples:6.1f}   {f}" for f, n in total_n.most_common(TOP * 2)]
    return "\n".join(out)


def start_spy(pid: int) -> subprocess.Popen[bytes]:
    """``py-spy record`` on ``pid`` until SIGINT, collapsed stacks into :data:`OUT`."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--rate", "100", "--format", "raw", "--output", str(OUT), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


async def main(kind: str) -> int:
    tag = f"prof{uuid.uuid4().hex[:6]}"
    root = Path(tempfile.mkdtemp(prefix="walstream-profile-"))
    (root / "w").mkdir()
    worker = Worker(root / "w", app_prefix=tag, partitions=PARTITIONS, broker=BROKER)
    ns = f"{tag}-{kind}"
    out_topic = f"bench.{tag}.out"
    spy: subprocess.Popen[bytes] | None = None
    kv = KafkaView(BROKER)
    await kv.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:
            await worker.wait_assigned(s, f"{worker.app_id}.commands:", 180)
            target = {"type": "noop"}
            if kind == "kafka":
                await ensure_topics(BROKER, [TopicSpec(out_topic, PARTITIONS, 1)])
                target = {"type": "kafka", "topic": out_topic}
            await put_namespace(s, worker, ns, target)
            await wait_owned(s, [worker], [ns])
            await post_batches(s, worker, ns, 2000)  # warm-up: connections, metadata
            base = 2000.0 if kind == "noop" else 0.0
            spy = start_spy(worker.pid)
            await asyncio.sleep(1.0)
            cpu = CpuWindow([worker.pid], None)
            started = time.monotonic()
            written, failed, first_error = await post_batches(s, worker, ns, N)
            acked_s = time.monotonic() - started

            async def count() -> float:
                if kind == "noop":
                    return await delivered(s, worker.url, ns) - base
                return float(await kv.end_total(out_topic)) - 2000

            await wait_count("delivered", count, written, [worker], started + 1800)
            elapsed = time.monotonic() - started
            per_1000 = cpu.per_1000(written)
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
            spy = None
            print(f"{kind}: {written} entries, {failed} failed {first_error}".rstrip())
            print(f"acked {written / acked_s:,.0f}/s, delivered {written / elapsed:,.0f}/s, "
                  f"worker CPU {1000 * (per_1000.get('worker') or 0):.0f} µs/entry")
            print(summarise(OUT))
            print(f"\ncollapsed stacks: {OUT}")
    finally:
        if spy is not None:
            spy.kill()
        worker.stop()
        shutil.rmtree(root, ignore_errors=True)
        await kv.delete_topics([t for t in await kv.admin.list_topics() if tag in t])
        await kv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "noop")))
