"""A ``walstream worker`` subprocess for benchmarks: its own app id, data dir and port."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Worker:
    """One ``walstream worker`` subprocess with its own app id, datadir and port."""

    def __init__(
        self, root: Path, *, app_prefix: str, partitions: int, broker: str, app_id: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """Start the worker now. ``app_id`` joins an existing fleet; by default a fresh one
        (``<app_prefix>-<random>``). ``root`` (which must exist) holds its data dir and log."""
        self.dir = root
        self.port = free_port()
        self.app_id = app_id or f"{app_prefix}-{uuid.uuid4().hex[:8]}"
        self.datadir = root / "data"
        env = {
            **os.environ,
            "WALSTREAM_APP_ID": self.app_id,
            "WALSTREAM_WEB_PORT": str(self.port),
            "WALSTREAM_DATADIR": str(self.datadir),
            "WALSTREAM_PARTITIONS": str(partitions),
            "WALSTREAM_BROKER": broker,
            **(env or {}),
        }
        self.log_path = root / "worker.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "walstream.cli", "worker", "--loglevel", "warning"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def health(self, s: aiohttp.ClientSession) -> dict[str, Any]:
        async with s.get(f"{self.url}/v1/health") as r:
            r.raise_for_status()
            doc: dict[str, Any] = await r.json()
            return doc

    async def wait_assigned(self, s: aiohttp.ClientSession, prefix: str, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited ({self.proc.returncode}); see {self.log_path}")
            try:
                if any(t.startswith(prefix) for t in (await self.health(s))["assigned"]):
                    return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
        raise RuntimeError(f"worker never got {prefix!r} assigned; see {self.log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
