"""Entry status across the fleet: what an entry's state is, and which entries are pending.

An entry's state document lives in the entries table of the partition its record is in
(walstream.tables.entry_state); a worker reads its *active* partitions only (a standby copy may lag)
and asks the other workers for theirs through the fleet router (walstream.fleet). A worker
that cannot say (it did not answer, or it is recovering its tables) is named in the answer:
while it is, "not found" means "not known now", never "never written".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from walstream.fleet import Fleet
from walstream.tables import ordered
from walstream.tables.entry_state import FINAL, EntryStates, best, cancelled_targets
from walstream.tables.held import KeyOrder
from walstream.tables.schedule import Schedule


class FleetIncomplete(Exception):
    """A worker of the fleet could not say what it holds: an answer would be incomplete."""


class EntryStatus:
    """Reads entry states and pending entries from this worker's tables and the fleet's.

    ``active_partitions()`` gives the partitions this worker consumes actively; ``settling()``
    is true while its tables may be behind their changelogs (a rebalance or a recovery)."""

    def __init__(
        self,
        states: EntryStates,
        schedule: Schedule,
        key_order: KeyOrder,
        fleet: Fleet,
        active_partitions: Callable[[], list[int]],
        settling: Callable[[], bool],
    ) -> None:
        self.states = states
        self.schedule = schedule
        self.key_order = key_order
        self.fleet = fleet
        self.active_partitions = active_partitions
        self.settling = settling

    def _unheld(self) -> list[int]:
        return self.fleet.unheld(self.states.table.changelog_name, self.states.table.partitions)

    def local(self, namespace: str, entry_id: str) -> list[dict[str, Any]]:
        """The entry's documents in this worker's active partitions (outside an event)."""
        actives = ordered.partitions(self.states.table, set(self.active_partitions()))
        return self.states.find(namespace, entry_id, actives)

    def held_here(self, namespace: str, entry_id: str) -> list[dict[str, Any]]:
        """The entry's documents in every partition this worker holds, active or standby (a
        standby copy may lag): what the write path knows of an id without asking anyone."""
        return self.states.find(namespace, entry_id, ordered.partitions(self.states.table))

    def local_answer(self, namespace: str, entry_id: str) -> tuple[dict[str, Any] | None, bool]:
        """What this worker can say of the entry to a peer: its best document, and whether
        that is known (False while its tables settle and the document is not final: a table
        being recovered may still hold an older pending state)."""
        doc = best(self.local(namespace, entry_id))
        known = not self.settling() or (doc is not None and doc.get("state") in FINAL)
        return doc, known

    async def find(self, namespace: str, entry_id: str) -> tuple[dict[str, Any] | None, list[str]]:
        """The entry's state document from the fleet's tables (each worker's active
        partitions), and the workers that could not say (down, or recovering their tables)."""
        # a table being recovered may still hold an older state (seen: entries delivered
        # before a restart answered DELAYED from the worker's own RocksDB while it recovered):
        # meanwhile only final states are taken from it
        unknown = [self.fleet.self_url] if self.settling() else []
        unheld = self._unheld()
        if unheld:
            unknown.append(f"partitions {unheld} (held by no worker yet)")
        docs = [d for d in self.local(namespace, entry_id) if not unknown or d.get("state") in FINAL]
        path = f"/v1/log/{quote(namespace, safe='')}/{quote(entry_id, safe='')}"
        for a in await self.fleet.ask_peers(path, {"local": "1"}):
            if a.ok:
                docs.append(a.body["_doc"])
            elif a.status != 404:
                unknown.append(a.peer)
        return best(docs), unknown

    def local_pending(self, namespace: str) -> set[str]:
        """Ids of ``namespace``'s entries waiting in this worker's active partitions: timers,
        held entries, and state documents not final."""
        actives = set(self.active_partitions())
        ids: set[str] = set()
        for p in ordered.partitions(self.schedule.table, actives):
            ids.update(str(t.entry.get("id")) for _, t in self.schedule.of_namespace(p, namespace))
        for p in ordered.partitions(self.key_order.held, actives):
            ids.update(str(item["entry"].get("id")) for _, item in self.key_order.of_namespace(p, namespace))
        for p in ordered.partitions(self.states.table, actives):
            ids.update(d["id"] for d in self.states.of_namespace(p, namespace) if d["state"] not in FINAL)
        return ids

    async def pending(self, namespace: str) -> set[str]:
        """Ids of ``namespace``'s pending entries across the fleet. Raises
        :class:`FleetIncomplete` while this worker settles or a peer cannot say."""
        bodies = await self._peers_complete(f"/v1/internal/pending/{quote(namespace, safe='')}", "it holds")
        ids = self.local_pending(namespace)
        for body in bodies:
            ids.update(body["ids"])
        return ids

    async def _peers_complete(self, path: str, what: str) -> list[Any]:
        """Every peer's answer to ``path``, once this worker and the fleet can say all they
        hold; :class:`FleetIncomplete` otherwise (``what``: which entries, in its message)."""
        if self.settling():
            raise FleetIncomplete("this worker is recovering its tables; retry shortly")
        if unheld := self._unheld():
            raise FleetIncomplete(f"partitions {unheld} are held by no worker yet; retry shortly")
        answers = await self.fleet.ask_peers(path, timeout_s=10.0)
        for a in answers:
            if not a.ok:
                raise FleetIncomplete(f"worker {a.peer} did not say which entries {what}; retry shortly")
        return [a.body for a in answers]

    def local_cancelled(self, namespace: str) -> dict[str, list[str]]:
        """``namespace``'s entries with cancelled targets in this worker's active partitions
        (walstream.replay.cancelled_targets)."""
        actives = set(self.active_partitions())
        partitions = ordered.partitions(self.states.table, actives)
        docs = (d for p in partitions for d in self.states.of_namespace(p, namespace, containing=b'"CANCELLED"'))
        return cancelled_targets(docs)

    async def cancelled(self, namespace: str) -> dict[str, list[str]]:
        """``namespace``'s entries with cancelled targets across the fleet (known while their
        state documents are kept). Raises :class:`FleetIncomplete` as :meth:`pending` does."""
        path = f"/v1/internal/cancelled/{quote(namespace, safe='')}"
        bodies = await self._peers_complete(path, "it knows as cancelled")
        out = self.local_cancelled(namespace)
        for body in bodies:
            for entry_id, tids in body["cancelled"].items():
                out.setdefault(entry_id, []).extend(tids)
        return out
