"""One shared :class:`Target` instance per distinct target config, for the worker's life."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import orjson
from pydantic import Field, TypeAdapter

from walstream.namespaces.model import (
    CassandraTargetConfig,
    ElasticsearchTargetConfig,
    HttpTargetConfig,
    KafkaTargetConfig,
    NoopTargetConfig,
    RegionTargetConfig,
    TargetConfig,
)
from walstream.settings import Settings
from walstream.targets.base import Target

log = logging.getLogger(__name__)

#: what a delivery target may be: a namespace's targets, or forwarding to a peer region
AnyTargetConfig = Annotated[TargetConfig | RegionTargetConfig, Field(discriminator="type")]
_adapter: TypeAdapter[AnyTargetConfig] = TypeAdapter(AnyTargetConfig)


class TargetPool:
    """Builds targets lazily from config and shares them (connections are per config)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._targets: dict[bytes, Target] = {}

    def get(self, cfg: AnyTargetConfig | dict[str, Any]) -> Target:
        model = _adapter.validate_python(cfg) if isinstance(cfg, dict) else cfg
        cache_key = orjson.dumps(model.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
        target = self._targets.get(cache_key)
        if target is None:
            target = self._build(model)
            self._targets[cache_key] = target
        return target

    def _build(self, cfg: AnyTargetConfig) -> Target:
        s = self.settings
        if isinstance(cfg, RegionTargetConfig):
            from walstream.targets.region import RegionTarget, UnknownRegion

            brokers = s.region_broker_map.get(cfg.region)
            if brokers is None:  # a config from a region that knows more regions than this one
                return UnknownRegion(cfg)
            return RegionTarget(cfg, brokers, s.target_timeout_s)
        if isinstance(cfg, CassandraTargetConfig):
            from walstream.targets.cassandra import CassandraTarget

            hosts = cfg.hosts or [h.strip() for h in s.cassandra_hosts.split(",") if h.strip()]
            return CassandraTarget(cfg, hosts, cfg.port or s.cassandra_port, s.target_timeout_s)
        if isinstance(cfg, ElasticsearchTargetConfig):
            from walstream.targets.elasticsearch import ElasticsearchTarget

            return ElasticsearchTarget(cfg, cfg.url or s.elasticsearch_url, s.target_timeout_s)
        if isinstance(cfg, KafkaTargetConfig):
            from walstream.targets.kafka import KafkaTarget

            return KafkaTarget(cfg, cfg.bootstrap or s.broker, s.target_timeout_s)
        if isinstance(cfg, HttpTargetConfig):
            from walstream.targets.http import HttpTarget

            return HttpTarget(cfg)
        if isinstance(cfg, NoopTargetConfig):
            from walstream.targets.noop import NoopTarget

            return NoopTarget()
        raise TypeError(f"no target for {cfg!r}")  # unreachable: the config union is closed

    async def close(self) -> None:
        for target in self._targets.values():
            try:
                await target.close()
            except Exception:
                log.exception("closing target %s failed", target.label)
        self._targets.clear()
