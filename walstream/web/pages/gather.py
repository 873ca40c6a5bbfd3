"""The data of the overview and fleet pages: every worker's report (walstream.worker_report)
added up. A worker that does not answer is listed as such and its share is missing: the
pages say so rather than show a smaller figure as the whole."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from walstream.context import WebContext
from walstream.tables.keys import target_id

#: the fleet-internal route each worker answers its report on
REPORT_PATH = "/v1/internal/report"


async def reports(ctx: WebContext) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """This worker's report and every peer's that answered, and ``{"worker", "error"}`` for
    each that did not."""
    got = [await ctx.report.report()]
    missing = []
    for a in await ctx.fleet.ask_peers(REPORT_PATH, timeout_s=5.0):
        if a.ok:
            got.append(a.body)
        else:
            missing.append({"worker": a.peer, "error": a.error or f"answered {a.status}"})
    return got, missing


async def fleet(ctx: WebContext) -> dict[str, Any]:
    """``{"workers": [report without its namespaces, ...], "missing": [...],
    "partitions": {partition: {"active": worker, "standby": [worker, ...]}}}``."""
    got, missing = await reports(ctx)
    partitions: dict[int, dict[str, Any]] = defaultdict(lambda: {"active": None, "standby": []})
    for r in got:
        for p in r["active"]:
            partitions[p]["active"] = r["worker"]
        for p in r["standby"]:
            partitions[p]["standby"].append(r["worker"])
    workers = [{k: v for k, v in r.items() if k != "namespaces"} for r in got]
    return {
        "workers": sorted(workers, key=lambda w: w["worker"]),
        "missing": missing,
        "partitions": {str(p): partitions[p] for p in sorted(partitions)},
    }


async def overview(ctx: WebContext) -> dict[str, Any]:
    """Per namespace, the sums over the workers that answered and are not settling (a
    rebalance or a recovery under way): ``lag`` (records not processed yet, per partition),
    ``delayed``/``pending``/``retrying``/``held``/``dead_letters`` entries, per target its
    entries not final there and whether its circuit is open on some worker; and the fleet's
    writes and deliveries per second; ``uncounted_partitions``: those no such worker holds
    (their entries are missing from every count). Only this worker's shard is counted:
    ``other_shards`` names the other shards' namespaces, with each shard's configured URL."""
    got, missing = await reports(ctx)
    # only settled workers' counts are added up; the partitions none of them holds are named
    counted = [r for r in got if not r["settling"]]
    covered = {p for r in counted for p in r["active"]}
    uncounted = [p for p in range(ctx.settings.partitions) if p not in covered]
    namespaces = []
    others: dict[str, list[str]] = defaultdict(list)
    for cfg in ctx.registry.all():
        if cfg.shard != ctx.settings.shard:  # delivered, and counted, by another fleet
            others[cfg.shard].append(cfg.name)
            continue
        sums: dict[str, Any] = {"delayed": 0, "pending": 0, "retrying": 0, "held": 0, "dead_letters": 0}
        lag: dict[str, int] = {}
        per_target: dict[str, int] = defaultdict(int)
        cut_short = False
        for r in counted:
            mine = r["namespaces"].get(cfg.name)
            if mine is None:  # the worker has not seen the namespace yet
                continue
            for k in sums:
                sums[k] += mine[k]
            for p, n in mine["lag"].items():
                lag[p] = lag.get(p, 0) + n
            for tid, n in mine["targets_pending"].items():
                per_target[tid] += n
            cut_short = cut_short or mine["cut_short"]
        targets = []
        for target in cfg.targets:
            tid = target_id(target.model_dump(mode="json"))  # as the deliverer names it
            targets.append({
                "target_id": tid,
                "type": target.type,
                "pending": per_target.get(tid, 0),
                "circuit_open": any(r["breakers"].get(tid, {}).get("open") for r in got),
            })
        namespaces.append({"name": cfg.name, "lag": sum(lag.values()), "lag_by_partition": lag,
                           "targets": targets, "cut_short": cut_short, **sums})

    def rate(name: str) -> float | None:
        known = [r["rates"][name] for r in got if r["rates"][name] is not None]
        return sum(known) if known else None

    return {
        "namespaces": namespaces,
        "writes_per_s": rate("writes_per_s"),
        "delivered_per_s": rate("delivered_per_s"),
        "workers": len(got),
        "missing": missing,
        "uncounted_partitions": uncounted,
        "shard": ctx.settings.shard,
        "other_shards": [{"shard": shard, "namespaces": sorted(names), "url": ctx.settings.shard_url_map.get(shard)}
                         for shard, names in sorted(others.items())],
    }
