"""The ``walstream`` command: worker, namespaces, local service stack, demo."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click
import httpx
import orjson

from walstream.namespaces.model import NamespaceError, parse_namespace
from walstream.settings import Settings

DEFAULT_URL = "http://127.0.0.1:6066"


@click.group()
def main() -> None:
    """walstream: a write-ahead log service on Kafka."""


# -- worker ------------------------------------------------------------------------------


@main.command()
@click.option("--loglevel", default="info", show_default=True)
def worker(loglevel: str) -> None:
    """Run a worker (delivery agents + HTTP API). Configured by WALSTREAM_* variables."""
    run_worker(Settings(), loglevel)


def _exit_after_deadline(timeout_s: float) -> None:
    logging.getLogger(__name__).error(
        "worker did not stop within %.0f s (WALSTREAM_SHUTDOWN_TIMEOUT_S); exiting now", timeout_s
    )
    logging.shutdown()
    os._exit(0)


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    import faust

    from walstream.app import build_app

    settings.datadir.mkdir(parents=True, exist_ok=True)  # Faust expects it to exist
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    wal = build_app(settings)
    logging.basicConfig(level=loglevel.upper(), format="[%(asctime)s] [%(levelname)s] %(name)s: %(message)s")
    try:
        loop.run_until_complete(wal.start_services())
    except Exception as exc:
        raise click.ClickException(f"cannot start: {exc} (is Kafka up at {settings.broker}?)") from exc

    stopping: list[asyncio.Task[None]] = []

    @wal.faust.on_before_shutdown.connect  # type: ignore[arg-type]
    def _stop(sender: Any, **kwargs: Any) -> None:
        stopping.append(loop.create_task(wal.stop_services()))
        # aiokafka can hang for good when the worker stops in the middle of a group rebalance
        # (seen: heartbeats to a coordinator whose connection Faust closed). By then the
        # delivery agent has committed what it finished; the rest is read again by the next
        # owner, so leaving without the remaining clean-up loses nothing.
        deadline = threading.Timer(settings.shutdown_timeout_s, _exit_after_deadline, (settings.shutdown_timeout_s,))
        deadline.daemon = True
        deadline.start()

    runner = faust.Worker(wal.faust, loop=loop, loglevel=loglevel)
    # Faust's start-up spinner sets the root logger to DEBUG (to show every record while it
    # spins) whenever the level is WARNING or above: every debug call in aiokafka and Faust
    # then built a log record, ~9 % of a busy worker's CPU (py-spy). No spinner, no DEBUG.
    runner.spinner = None
    runner.execute_from_commandline()


# -- namespaces --------------------------------------------------------------------------


def _client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=30.0)


def _check(resp: httpx.Response) -> Any:
    try:
        doc = resp.json()
    except ValueError:
        doc = {"message": resp.text}
    if resp.status_code >= 400:
        raise click.ClickException(f"{resp.status_code}: {doc.get('message', doc)}")
    return doc


def _echo_json(doc: Any) -> None:
    click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())


url_option = click.option(
    "--url", envvar="WALSTREAM_URL", default=DEFAULT_URL, show_default=True, help="any worker's HTTP API"
)


@main.group()
def namespace() -> None:
    """Create, inspect and delete namespaces."""


@namespace.command("apply")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@url_option
def namespace_apply(file: Path, url: str) -> None:
    """Create or update the namespace in FILE (YAML or JSON)."""
    try:
        cfg = parse_namespace(file.read_bytes())
    except NamespaceError as exc:
        raise click.ClickException(f"{file}: {exc}") from None
    body = orjson.dumps(cfg.model_dump(mode="json", exclude={"version"}))
    with _client(url) as c:
        doc = _check(c.put(f"/v1/namespaces/{cfg.name}", content=body, headers={"content-type": "application/json"}))
    click.echo(f"namespace {doc['name']} applied (version {doc['version']})")


@namespace.command("list")
@url_option
def namespace_list(url: str) -> None:
    """List namespaces."""
    with _client(url) as c:
        doc = _check(c.get("/v1/namespaces"))
    for ns in doc["namespaces"]:
        targets = ", ".join(t["type"] for t in ns["targets"])
        click.echo(f"{ns['name']}\tshard={ns['shard']}\tversion={ns['version']}\ttargets={targets}")


@namespace.command("show")
@click.argument("name")
@url_option
def namespace_show(name: str, url: str) -> None:
    """Show one namespace."""
    with _client(url) as c:
        _echo_json(_check(c.get(f"/v1/namespaces/{name}")))


@namespace.command("delete")
@click.argument("name")
@url_option
def namespace_delete(name: str, url: str) -> None:
    """Delete a namespace (its topics and their entries are kept)."""
    with _client(url) as c:
        _check(c.delete(f"/v1/namespaces/{name}"))
    click.echo(f"namespace {name} deleted")


# -- dead letters ------------------------------------------------------------------------


@main.group()
def dlq() -> None:
    """Inspect and redrive dead-lettered entries."""


def _filters(error_class: str | None, since: str | None, until: str | None, limit: int) -> dict[str, Any]:
    return {k: v for k, v in {"error_class": error_class, "since": since, "until": until, "limit": limit}.items() if v}


filter_options = [
    click.option("--error-class", type=click.Choice(["transient", "permanent", "undecodable", "no_namespace"])),
    click.option("--since", help="last failure at or after this ISO-8601 time"),
    click.option("--until", help="last failure before this ISO-8601 time"),
    click.option("--limit", default=1000, show_default=True),
]


def with_filters(f: Any) -> Any:
    for opt in reversed(filter_options):
        f = opt(f)
    return f


@dlq.command("list")
@click.argument("namespace")
@with_filters
@url_option
def dlq_list(
    namespace: str, error_class: str | None, since: str | None, until: str | None, limit: int, url: str
) -> None:
    """List a namespace's dead letters (oldest failure first)."""
    with _client(url) as c:
        doc = _check(c.get(f"/v1/dlq/{namespace}", params=_filters(error_class, since, until, limit)))
    rows = doc["dead_letters"]
    for r in rows:
        target = (r["target"] or {}).get("type", "-")
        click.echo(
            f"{r['id']}\t{target}\t{r['error_class']}\tattempts={r['attempts']}\t"
            f"{r['last_failure_at']}\t{r['message'][:120]}"
        )
    click.echo(f"{len(rows)} dead letter(s)", err=True)


@dlq.command("show")
@click.argument("namespace")
@click.argument("entry_id")
@url_option
def dlq_show(namespace: str, entry_id: str, url: str) -> None:
    """Show the dead letters of one entry (one per failed target)."""
    with _client(url) as c:
        doc = _check(c.get(f"/v1/dlq/{namespace}", params={"id": entry_id}))
    if not doc["dead_letters"]:
        raise click.ClickException(f"no dead letter for {entry_id!r} in {namespace!r}")
    _echo_json(doc["dead_letters"])


@dlq.command("redrive")
@click.argument("namespace")
@click.option("--id", "ids", multiple=True, help="entry id (repeatable); default: every match of the filters")
@with_filters
@click.option("--rate", type=float, default=50.0, show_default=True, help="redrives per second")
@click.option("--execute", is_flag=True, help="really redrive (the default is a dry run)")
@url_option
def dlq_redrive(
    namespace: str,
    ids: tuple[str, ...],
    error_class: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    rate: float,
    execute: bool,
    url: str,
) -> None:
    """Deliver dead-lettered entries again, with fresh attempts. Dry run unless --execute."""
    if rate <= 0:
        raise click.BadParameter("must be positive", param_hint="--rate")
    body: dict[str, Any] = {**_filters(error_class, since, until, limit), "dry_run": True}
    if ids:
        body["ids"] = list(ids)
    with _client(url) as c:
        rows = _check(c.post(f"/v1/dlq/{namespace}/redrive", json=body))["would_redrive"]
        if not execute:
            for r in rows:
                click.echo(f"would redrive {r['id']} ({(r['target'] or {}).get('type', '-')}, {r['error_class']})")
            click.echo(f"dry run: {len(rows)} dead letter(s) match; add --execute to redrive them", err=True)
            return
        interval = 1.0 / rate
        with click.progressbar(rows, label=f"redriving {len(rows)}", file=sys.stderr) as bar:
            for r in bar:
                started = time.monotonic()
                _check(
                    c.post(f"/v1/dlq/{namespace}/redrive", json={"ids": [r["id"]], "dry_run": False, "limit": limit})
                )
                time.sleep(max(0.0, interval - (time.monotonic() - started)))
    click.echo(f"redrove {len(rows)} dead letter(s)")


# -- stack -------------------------------------------------------------------------------


@main.group()
def stack() -> None:
    """Run real Kafka, Cassandra and Elasticsearch locally (fetched from Maven Central)."""


def _names(services: str, second_region: bool) -> list[str]:
    from walstream.stack.stack import ALL, SECOND_REGION

    names = [s.strip() for s in services.split(",") if s.strip()] if services else list(ALL)
    if second_region and SECOND_REGION not in names:
        names.append(SECOND_REGION)
    return names


services_option = click.option("--services", default="", help="comma-separated subset, e.g. kafka,cassandra")


@stack.command("up")
@services_option
@click.option("--second-region", is_flag=True, help="also start a second Kafka cluster (kafka-west)")
def stack_up(services: str, second_region: bool) -> None:
    """Start the services (idempotent); returns when each one answers."""
    from walstream.stack.stack import runners

    try:
        rs = runners(_names(services, second_region))
    except KeyError as exc:
        raise click.ClickException(str(exc.args[0])) from None
    for r in rs:
        click.echo(f"{r.service.name}: starting ...", nl=False)
        try:
            r.up()
        except Exception as exc:
            click.echo(" failed")
            raise click.ClickException(f"{r.service.name}: {exc}") from None
        eps = " ".join(f"{k}={v}" for k, v in r.service.endpoints().items())
        click.echo(f" up (pid {r.pid()}) {eps}")


@stack.command("down")
@services_option
def stack_down(services: str) -> None:
    """Stop the services this stack started (by their pid files)."""
    from walstream.stack.stack import ALL, SECOND_REGION, runners

    names = _names(services, False) if services else [SECOND_REGION, *reversed(ALL)]
    for r in runners(names):
        stopped = r.down()
        click.echo(f"{r.service.name}: {'stopped' if stopped else 'not running'}")


@stack.command("status")
def stack_status() -> None:
    """Say what runs where."""
    from walstream.stack.stack import ALL, SECOND_REGION, runners

    for r in runners([*ALL, SECOND_REGION]):
        pid = r.pid()
        if pid is None:
            click.echo(f"{r.service.name}: stopped")
            continue
        health = "healthy" if r.service.healthy() else "not answering"
        eps = " ".join(f"{k}={v}" for k, v in r.service.endpoints().items())
        click.echo(f"{r.service.name}: running pid={pid} {health} {eps} log={r.service.log_file}")


@stack.command("logs")
@click.argument("service")
@click.option("-n", "--lines", default=50, show_default=True)
def stack_logs(service: str, lines: int) -> None:
    """Show the end of a service's log."""
    from walstream.stack.stack import runners

    try:
        [r] = runners([service])
    except KeyError as exc:
        raise click.ClickException(str(exc.args[0])) from None
    click.echo(r.tail(lines))


# -- demo --------------------------------------------------------------------------------


@main.command()
def demo() -> None:
    """Start a worker, create the demo namespace, write entries, keep serving until Ctrl-C."""
    from walstream.demo import run_demo

    sys.exit(run_demo(Settings(), os.environ.get("WALSTREAM_URL") or None))


if __name__ == "__main__":
    main()
