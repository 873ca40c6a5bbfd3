"""The ``walstream`` command: worker, namespaces, dead letters, local service stack, demo.

Error contract: every expected failure (no worker at the address, a timeout, an answer that is
not JSON, a 4xx/5xx answer, a bad namespace file, Kafka down at start, a port in use, no JDK or
Maven for ``stack up``) ends the command with ONE line on stderr that names the problem and the
fix, and a non-zero exit status (1; 2 for a usage error). Anything unexpected is reported the
same way, as one line. ``--debug`` / ``WALSTREAM_DEBUG=1`` also prints the traceback of the cause.

Every command that talks to a worker goes through :class:`WorkerApi`: one httpx client, one
timeout policy (``--timeout``), one place that turns transport and HTTP failures into messages.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import sys
import threading
import time
import traceback
import urllib.parse
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import click
import httpx
import orjson
import pydantic

from walstream.namespaces.model import NamespaceError, parse_namespace
from walstream.settings import Settings

DEFAULT_URL = "http://127.0.0.1:6066"
#: seconds to wait for a TCP connection to a worker (the whole answer waits ``--timeout``)
CONNECT_TIMEOUT_S = 5.0
DEBUG_HINT = "run with --debug for the traceback"


@dataclass(frozen=True)
class CliOptions:
    """The global options, handed to every command through ``ctx.obj``."""

    url: str
    timeout_s: float
    debug: bool
    #: True when ``--url`` / ``WALSTREAM_URL`` was given (not the default)
    url_given: bool


def _one_line(text: str) -> str:
    """``text`` on one line: line breaks and the caret lines of YAML's error marks removed."""
    parts = [p.strip() for p in str(text).splitlines()]
    return " ".join(p for p in parts if p and set(p) != {"^"})


def _debug_requested(ctx: click.Context) -> bool:
    obj = ctx.find_object(CliOptions)
    if obj is not None:
        return obj.debug
    return os.environ.get("WALSTREAM_DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}


class WalstreamGroup(click.Group):
    """The root group: turns any exception a command did not expect into one line.

    Click prints :class:`click.ClickException` as one ``Error: ...`` line; everything else
    would be a traceback. With ``--debug`` the cause's traceback is printed first.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            if exc.__cause__ is not None and _debug_requested(ctx):
                traceback.print_exception(exc.__cause__, file=sys.stderr)
            raise
        except (click.exceptions.Exit, click.Abort, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            # a closed pipe (`walstream ... | head`) is click's to handle: it exits quietly
            if _debug_requested(ctx) or (isinstance(exc, OSError) and exc.errno == errno.EPIPE):
                raise
            raise click.ClickException(
                f"unexpected error: {type(exc).__name__}: {_one_line(str(exc))} ({DEBUG_HINT}; please report it)"
            ) from exc


def _validate_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A worker address must be an absolute http(s) URL; say so before any request."""
    if value is None:
        return None
    try:
        u = httpx.URL(value)
    except httpx.InvalidURL as exc:
        raise click.BadParameter(f"{value!r} is not a URL: {exc}") from None
    if u.scheme not in ("http", "https") or not u.host:
        raise click.BadParameter(f"{value!r} is not an http(s) URL, e.g. {DEFAULT_URL}")
    return str(value).rstrip("/")


@click.group(cls=WalstreamGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="walstream", prog_name="walstream", message="%(prog)s %(version)s")
@click.option(
    "--url",
    envvar="WALSTREAM_URL",
    default=DEFAULT_URL,
    show_default=True,
    show_envvar=True,
    callback=_validate_url,
    help="Address of any walstream worker's HTTP API (namespace and dlq commands talk to it).",
)
@click.option(
    "--timeout",
    "timeout_s",
    envvar="WALSTREAM_TIMEOUT_S",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    show_envvar=True,
    help=f"Seconds to wait for a worker's answer (connecting waits at most {CONNECT_TIMEOUT_S:.0f}).",
)
@click.option(
    "--debug", is_flag=True, envvar="WALSTREAM_DEBUG", show_envvar=True, help="On an error, also print its traceback."
)
@click.pass_context
def main(ctx: click.Context, url: str, timeout_s: float, debug: bool) -> None:
    """walstream: a write-ahead log service on Kafka.

    Errors are one line on stderr and a non-zero exit status.
    """
    source = ctx.get_parameter_source("url")
    ctx.obj = CliOptions(
        url=url, timeout_s=timeout_s, debug=debug, url_given=source is not click.core.ParameterSource.DEFAULT
    )


def _settings() -> Settings:
    """The worker settings from ``WALSTREAM_*``; a bad value is one line naming the variable."""
    try:
        return Settings()
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"WALSTREAM_{'_'.join(str(p) for p in e['loc']).upper()}={e.get('input')!r}: {e['msg']}"
            for e in exc.errors()
        )
        raise click.ClickException(f"invalid setting: {problems}") from exc


def _check_port_free(host: str, port: int, what: str, fix: str) -> None:
    """Fail with one line when ``host:port`` cannot be listened on (in use, or not our address).

    Binding with SO_REUSEADDR, as the servers we start do, so a port in TIME_WAIT counts as free.
    A check, not a reservation: another process may still take the port right after.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise click.ClickException(f"{what}: cannot resolve host {host!r} ({exc.strerror}); {fix}") from exc
    family, type_, proto, _, addr = infos[0]
    with socket.socket(family, type_, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise click.ClickException(
                    f"{what}: port {port} on {host} is already in use by another process; {fix}"
                ) from exc
            raise click.ClickException(f"{what}: cannot listen on {host}:{port} ({exc.strerror}); {fix}") from exc


# -- worker ------------------------------------------------------------------------------


@main.command()
@click.option(
    "--loglevel",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
    help="Log level of the worker's log on stderr.",
)
def worker(loglevel: str) -> None:
    """Run a worker: delivery agents and the HTTP API, until SIGTERM or Ctrl-C.

    Configured by WALSTREAM_* environment variables (see walstream/settings.py): Kafka at
    WALSTREAM_BROKER, the API on WALSTREAM_WEB_HOST:WALSTREAM_WEB_PORT.
    """
    run_worker(_settings(), loglevel)


def _exit_after_deadline(timeout_s: float) -> None:
    logging.getLogger(__name__).error(
        "worker did not stop within %.0f s (WALSTREAM_SHUTDOWN_TIMEOUT_S); exiting now", timeout_s
    )
    logging.shutdown()
    os._exit(0)


def _start_error(exc: Exception, settings: Settings) -> click.ClickException:
    """One line for a worker that could not start its services (Kafka, mostly)."""
    from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError

    if isinstance(exc, (KafkaConnectionError, KafkaTimeoutError, asyncio.TimeoutError, ConnectionError)):
        return click.ClickException(
            f"cannot start the worker: no Kafka answers at {settings.broker} "
            f"({_one_line(str(exc)) or type(exc).__name__})."
            " Start it with `walstream stack up --services kafka` or point WALSTREAM_BROKER at one."
        )
    return click.ClickException(
        f"cannot start the worker: {type(exc).__name__}: {_one_line(str(exc))} "
        f"(Kafka at {settings.broker}, WALSTREAM_BROKER; {DEBUG_HINT})"
    )


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Run one worker in this process until it stops; start-up failures are ClickExceptions."""
    import faust

    from walstream.app import build_app

    try:
        settings.datadir.mkdir(parents=True, exist_ok=True)  # Faust expects it to exist
    except OSError as exc:
        raise click.ClickException(
            f"cannot create the data directory {settings.datadir} ({exc.strerror}); "
            "set WALSTREAM_DATADIR to a writable directory"
        ) from exc
    # Faust would find out only after joining the group, with a 60-line traceback in its log
    _check_port_free(
        settings.web_host,
        settings.web_port,
        "cannot start the worker's HTTP API",
        "stop what uses it or set WALSTREAM_WEB_PORT (and WALSTREAM_WEB_HOST) to a free address",
    )
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    wal = build_app(settings)
    logging.basicConfig(level=loglevel.upper(), format="[%(asctime)s] [%(levelname)s] %(name)s: %(message)s")
    # aiokafka logs each failed bootstrap as an ERROR line; the exception below says the same
    # thing once, with the fix, so those lines are held back while starting.
    aiokafka_log = logging.getLogger("aiokafka")
    level = aiokafka_log.level
    aiokafka_log.setLevel(logging.CRITICAL)
    try:
        loop.run_until_complete(wal.start_services())
    except Exception as exc:
        raise _start_error(exc, settings) from exc
    finally:
        aiokafka_log.setLevel(level)

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


# -- talking to a worker -----------------------------------------------------------------


def _seg(value: str) -> str:
    """One URL path segment: a name or id with ``/``, ``?`` or ``%`` must not change the route."""
    return urllib.parse.quote(value, safe="")


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception httpx/httpcore wrapped (a ConnectionRefusedError, a gaierror...)."""
    seen: set[int] = set()
    cur: BaseException = exc
    while id(cur) not in seen:
        seen.add(id(cur))
        nxt = cur.__cause__ or cur.__context__
        if nxt is None and cur.args and isinstance(cur.args[0], BaseException):
            nxt = cur.args[0]
        if nxt is None:
            break
        cur = nxt
    return cur


def _answer_message(resp: httpx.Response) -> str:
    """What a worker said in an error answer: its JSON ``message``, else the start of the text."""
    try:
        doc = resp.json()
    except ValueError:
        text = _one_line(resp.text)
        return (text[:200] + " ...") if len(text) > 200 else (text or "(empty body)")
    if isinstance(doc, dict) and "message" in doc:
        return _one_line(str(doc["message"]))
    return _one_line(orjson.dumps(doc).decode())[:200]


class WorkerApi:
    """The CLI's one HTTP client to a worker, with one timeout policy.

    :meth:`request` returns the parsed JSON of a 2xx answer, or raises a
    :class:`click.ClickException` whose one-line message names the problem and the fix: no
    worker at the address, a name that does not resolve, a timeout, an answer that is not
    HTTP or not JSON, a 4xx/5xx answer (with the worker's ``message``).
    """

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._client = httpx.Client(
            base_url=url, timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, CONNECT_TIMEOUT_S))
        )

    def __enter__(self) -> WorkerApi:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._client.close()

    def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None) -> Any:
        """``method path`` on the worker; the parsed JSON answer, or a one-line ClickException."""
        what = f"{method} {path}"
        try:
            resp = self._client.request(method, path, json=json, params=params)
        except httpx.HTTPError as exc:
            raise click.ClickException(self._transport_message(exc, what)) from exc
        if resp.status_code >= 400:
            raise click.ClickException(
                f"{what} failed: the worker at {self.url} answered {resp.status_code} {resp.reason_phrase}: "
                f"{_answer_message(resp)}"
            )
        try:
            return resp.json()
        except ValueError as exc:
            kind = resp.headers.get("content-type", "no content-type")
            raise click.ClickException(
                f"{self.url} answered {what} with something that is not JSON ({kind}: "
                f"{_answer_message(resp)}); is --url / WALSTREAM_URL a walstream worker's HTTP API?"
            ) from exc

    def _transport_message(self, exc: httpx.HTTPError, what: str) -> str:
        cause = _root_cause(exc)
        check = "point --url / WALSTREAM_URL at a walstream worker"
        if isinstance(exc, httpx.ConnectTimeout):
            return (
                f"no walstream worker answers at {self.url}: no connection within "
                f"{min(self.timeout_s, CONNECT_TIMEOUT_S):g} s (host unreachable or firewalled?); {check}."
            )
        if isinstance(exc, httpx.TimeoutException):
            return (
                f"the worker at {self.url} did not answer {what} within {self.timeout_s:g} s; "
                "it may be overloaded or stuck: retry, or allow longer with --timeout / WALSTREAM_TIMEOUT_S."
            )
        if isinstance(cause, ConnectionRefusedError):
            return (
                f"no walstream worker answers at {self.url}: connection refused. "
                "Start one with `walstream worker` or point --url / WALSTREAM_URL at one."
            )
        if isinstance(cause, socket.gaierror):
            return f"cannot resolve the host of {self.url} ({cause.strerror or cause}); {check}."
        if isinstance(exc, httpx.ConnectError):
            return f"cannot connect to {self.url} ({_one_line(str(cause)) or type(cause).__name__}); {check}."
        if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
            return (
                f"{self.url} broke off {what} ({_one_line(str(exc)) or type(exc).__name__}); "
                f"is it a walstream worker? If so retry, else {check}."
            )
        return f"{what} to {self.url} failed: {type(exc).__name__}: {_one_line(str(exc))}; {check}."


def _api(ctx: click.Context, url: str | None) -> WorkerApi:
    """The client for this command: its own ``--url`` if given, else the global one."""
    opts = ctx.find_object(CliOptions)
    assert opts is not None, "commands run under main()"
    return WorkerApi(url or opts.url, opts.timeout_s)


def _echo_json(doc: Any) -> None:
    click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())


#: ``--url`` after a command (``walstream namespace list --url ...``) overrides the global one
url_option = click.option(
    "--url",
    default=None,
    callback=_validate_url,
    help="Worker address for this command; default: the global --url / WALSTREAM_URL.",
)


def _read_file(file: Path) -> bytes:
    """The bytes of a file named on the command line; a missing/unreadable file is one line."""
    try:
        return file.read_bytes()
    except FileNotFoundError as exc:
        raise click.ClickException(f"{file}: no such file") from exc
    except IsADirectoryError as exc:
        raise click.ClickException(f"{file}: is a directory, expected a YAML or JSON file") from exc
    except PermissionError as exc:
        raise click.ClickException(f"{file}: not readable (permission denied)") from exc
    except OSError as exc:
        raise click.ClickException(f"{file}: cannot read it ({exc.strerror or exc})") from exc


# -- namespaces --------------------------------------------------------------------------


@main.group()
def namespace() -> None:
    """Create, inspect and delete namespaces on the worker at --url."""


@namespace.command("apply")
@click.argument("file", type=click.Path(dir_okay=True, path_type=Path))
@url_option
@click.pass_context
def namespace_apply(ctx: click.Context, file: Path, url: str | None) -> None:
    """Create or update the namespace in FILE (YAML or JSON), validated here first."""
    try:
        cfg = parse_namespace(_read_file(file))
    except NamespaceError as exc:
        raise click.ClickException(f"{file}: {_one_line(str(exc)).replace('<byte string>', str(file))}") from None
    body = cfg.model_dump(mode="json", exclude={"version"})
    with _api(ctx, url) as api:
        doc = api.request("PUT", f"/v1/namespaces/{_seg(cfg.name)}", json=body)
    click.echo(f"namespace {doc['name']} applied (version {doc['version']})")


@namespace.command("list")
@url_option
@click.pass_context
def namespace_list(ctx: click.Context, url: str | None) -> None:
    """List namespaces: name, shard, version, target types."""
    with _api(ctx, url) as api:
        doc = api.request("GET", "/v1/namespaces")
    for ns in doc["namespaces"]:
        targets = ", ".join(t["type"] for t in ns["targets"])
        click.echo(f"{ns['name']}\tshard={ns['shard']}\tversion={ns['version']}\ttargets={targets}")


@namespace.command("show")
@click.argument("name")
@url_option
@click.pass_context
def namespace_show(ctx: click.Context, name: str, url: str | None) -> None:
    """Show one namespace's configuration as JSON."""
    with _api(ctx, url) as api:
        _echo_json(api.request("GET", f"/v1/namespaces/{_seg(name)}"))


@namespace.command("delete")
@click.argument("name")
@click.option("--force", is_flag=True, help="Also when entries are pending: they are dead-lettered.")
@url_option
@click.pass_context
def namespace_delete(ctx: click.Context, name: str, force: bool, url: str | None) -> None:
    """Delete a namespace (its topics and their entries are kept). Refused while entries are
    pending (delayed, retrying, held) unless --force, which dead-letters them."""
    with _api(ctx, url) as api:
        doc = api.request("DELETE", f"/v1/namespaces/{_seg(name)}", params={"force": "true" if force else "false"})
    dead = doc.get("dead_lettered", 0) if isinstance(doc, dict) else 0
    click.echo(f"namespace {name} deleted" + (f"; {dead} pending entries dead-lettered" if dead else ""))


# -- dead letters ------------------------------------------------------------------------


@main.group()
def dlq() -> None:
    """Inspect and redrive dead-lettered entries through the worker at --url."""


def _filters(error_class: str | None, since: str | None, until: str | None, limit: int) -> dict[str, Any]:
    return {k: v for k, v in {"error_class": error_class, "since": since, "until": until, "limit": limit}.items() if v}


filter_options = [
    click.option(
        "--error-class",
        type=click.Choice(["transient", "permanent", "undecodable", "no_namespace"]),
        help="Only dead letters of this class.",
    ),
    click.option("--since", help="Last failure at or after this ISO-8601 time."),
    click.option("--until", help="Last failure before this ISO-8601 time."),
    click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True, help="At most this many."),
]


def with_filters(f: Any) -> Any:
    for opt in reversed(filter_options):
        f = opt(f)
    return f


@dlq.command("list")
@click.argument("namespace")
@with_filters
@url_option
@click.pass_context
def dlq_list(
    ctx: click.Context,
    namespace: str,
    error_class: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    url: str | None,
) -> None:
    """List a namespace's dead letters (oldest failure first); the count goes to stderr."""
    with _api(ctx, url) as api:
        doc = api.request("GET", f"/v1/dlq/{_seg(namespace)}", params=_filters(error_class, since, until, limit))
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
@click.pass_context
def dlq_show(ctx: click.Context, namespace: str, entry_id: str, url: str | None) -> None:
    """Show the dead letters of one entry (one per failed target) as JSON."""
    with _api(ctx, url) as api:
        doc = api.request("GET", f"/v1/dlq/{_seg(namespace)}", params={"id": entry_id})
    if not doc["dead_letters"]:
        raise click.ClickException(f"no dead letter for {entry_id!r} in {namespace!r}")
    _echo_json(doc["dead_letters"])


@dlq.command("redrive")
@click.argument("namespace")
@click.option("--id", "ids", multiple=True, help="Entry id (repeatable); default: every match of the filters.")
@with_filters
@click.option(
    "--rate",
    type=click.FloatRange(min=0.02, max=1e6),
    callback=lambda ctx, param, value: _finite(param, value),
    default=50.0,
    show_default=True,
    help="Redrives per second (0.02 to a million).",
)
@click.option("--execute", is_flag=True, help="Really redrive (the default is a dry run).")
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(min=0, max=3600),
    callback=lambda ctx, param, value: _finite(param, value),
    default=30.0,
    show_default=True,
    help="Seconds to wait for the redriven entries' outcomes.",
)
@url_option
@click.pass_context
def dlq_redrive(
    ctx: click.Context,
    namespace: str,
    ids: tuple[str, ...],
    error_class: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    rate: float,
    execute: bool,
    wait_s: float,
    url: str | None,
) -> None:
    """Deliver dead-lettered entries again, with fresh attempts. Dry run unless --execute.

    Prints each entry's outcome (DELIVERED, DEAD with the reason: back in the dead-letter
    queue, or PENDING: not settled within --wait) and exits 1 unless all were delivered."""
    body: dict[str, Any] = {**_filters(error_class, since, until, limit), "dry_run": True}
    if ids:
        body["ids"] = list(ids)
    path = f"/v1/dlq/{_seg(namespace)}/redrive"
    with _api(ctx, url) as api:
        rows = api.request("POST", path, json=body)["would_redrive"]
        if not execute:
            for r in rows:
                click.echo(f"would redrive {r['id']} ({(r['target'] or {}).get('type', '-')}, {r['error_class']})")
            click.echo(f"dry run: {len(rows)} dead letter(s) match; add --execute to redrive them", err=True)
            return
        interval = 1.0 / rate
        done = 0
        sent_at_ms: int | None = None
        with click.progressbar(rows, label=f"redriving {len(rows)}", file=sys.stderr) as bar:
            for r in bar:
                started = time.monotonic()
                try:
                    answer = api.request(
                        "POST", path, json={"ids": [r["id"]], "dry_run": False, "limit": limit, "wait_s": 0}
                    )
                except click.ClickException as exc:
                    raise click.ClickException(
                        f"redrive stopped after {done} of {len(rows)} at {r['id']!r}: {exc.message}"
                    ) from exc.__cause__
                if sent_at_ms is None and isinstance(answer, dict):
                    sent_at_ms = answer.get("sent_at_ms")
                done += 1
                time.sleep(max(0.0, interval - (time.monotonic() - started)))
        outcomes = _redrive_outcomes(api, namespace, rows, sent_at_ms or 0, wait_s)
    for r, (outcome, message) in zip(rows, outcomes, strict=True):
        kind = (r["target"] or {}).get("type", "*")
        click.echo(f"{r['id']} ({kind}): {outcome}" + (f": {message}" if message else ""))
    delivered = sum(1 for o, _ in outcomes if o == "DELIVERED")
    if delivered < len(rows):
        dead = sum(1 for o, _ in outcomes if o == "DEAD")
        raise click.ClickException(
            f"redrove {len(rows)} dead letter(s): {delivered} delivered, {dead} dead-lettered again, "
            f"{len(rows) - delivered - dead} not settled within {wait_s:g} s"
        )
    click.echo(f"redrove {len(rows)} dead letter(s): all delivered")


def _finite(param: click.Parameter, value: float) -> float:
    """click's FloatRange lets nan through (every comparison with it is false)."""
    if value != value or value in (float("inf"), float("-inf")):
        raise click.BadParameter("expected a finite number", param=param)
    return value


def _redrive_outcomes(
    api: WorkerApi, namespace: str, rows: list[dict[str, Any]], sent_at_ms: int, wait_s: float
) -> list[tuple[str, str | None]]:
    """Each redriven dead letter's outcome from its entry's status: its target's state once the
    status was updated after the redrive (both times are the workers' clocks) and is final."""
    settled: dict[int, tuple[str, str | None]] = {}
    deadline = time.monotonic() + wait_s
    while True:
        for n, r in enumerate(rows):
            if n in settled:
                continue
            try:
                doc = api.request("GET", f"/v1/log/{_seg(namespace)}/{_seg(r['id'])}")
            except click.ClickException:
                continue  # not visible yet, or the fleet is settling: ask again
            updated = doc.get("updated_at")
            if not updated or datetime.fromisoformat(updated).timestamp() * 1000 < sent_at_ms - 1:
                continue
            t: dict[str, Any] | None = next(
                (x for x in doc.get("targets", []) if x.get("target") == r["target_id"]), None
            )
            if t is None:  # the whole entry (no target, or one its namespace no longer has)
                state, message = doc.get("state"), doc.get("last_error")
            else:
                state, message = t.get("state"), t.get("last_error")
            if state in ("DELIVERED", "DEAD", "CANCELLED"):
                settled[n] = (str(state), message if state == "DEAD" else None)
        if len(settled) == len(rows) or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    return [settled.get(n, ("PENDING", "not settled yet; see `walstream dlq list`")) for n in range(len(rows))]


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


def _runners(names: list[str]) -> list[Any]:
    """The runners of ``names``; an unknown service name is one line listing the known ones."""
    from walstream.stack.stack import runners

    try:
        return runners(names)
    except KeyError as exc:
        raise click.ClickException(str(exc.args[0])) from None
    except ValueError as exc:  # a WALSTREAM_STACK_*_PORT that is not a number
        raise click.ClickException(f"{exc}: the WALSTREAM_STACK_*_PORT variables take port numbers") from exc


#: each listening port of a stack service: (service, attribute) -> the variable that moves it
#: (the names walstream/stack/stack.py reads)
_STACK_PORTS = {
    ("kafka", "port"): "WALSTREAM_STACK_KAFKA_PORT",
    ("kafka", "controller_port"): "WALSTREAM_STACK_KAFKA_CONTROLLER_PORT",
    ("kafka-west", "port"): "WALSTREAM_STACK_KAFKA_WEST_PORT",
    ("kafka-west", "controller_port"): "WALSTREAM_STACK_KAFKA_WEST_CONTROLLER_PORT",
    ("cassandra", "native_port"): "WALSTREAM_STACK_CASSANDRA_PORT",
    ("cassandra", "storage_port"): "WALSTREAM_STACK_CASSANDRA_STORAGE_PORT",
    ("elasticsearch", "http_port"): "WALSTREAM_STACK_ELASTICSEARCH_PORT",
    ("elasticsearch", "transport_port"): "WALSTREAM_STACK_ELASTICSEARCH_TRANSPORT_PORT",
}


def _preflight(runner: Any) -> None:
    """Before starting a service that is not running: a JDK 17 and its ports free.

    Otherwise the JVM would die on start-up (or, worse, another process on the port would
    answer the health check) and the user would get the tail of a log instead of the cause.
    """
    from walstream.stack.service import StackError, java17_home

    svc = runner.service
    try:
        java17_home()
    except StackError as exc:
        raise click.ClickException(
            f"{svc.name}: {exc} (on Debian/Ubuntu: apt-get install openjdk-17-jre-headless)"
        ) from exc
    for (name, attr), var in _STACK_PORTS.items():
        port = getattr(svc, attr, None) if name == svc.name else None
        if isinstance(port, int):
            _check_port_free(
                "127.0.0.1",
                port,
                f"cannot start {svc.name}",
                f"stop what uses it (`walstream stack status` shows what this stack runs) or set {var} to a free port",
            )


def _stack_error(name: str, exc: Exception) -> click.ClickException:
    """One line for a service that failed to fetch or start; the details stay in its log."""
    from walstream.stack.maven import MavenError
    from walstream.stack.service import StackError

    if isinstance(exc, FileNotFoundError) and exc.filename == "mvn":
        return click.ClickException(
            f"{name}: Maven (mvn) is not on PATH; `walstream stack up` fetches the services with it "
            "(on Debian/Ubuntu: apt-get install maven)"
        )
    if isinstance(exc, MavenError):
        lines = str(exc).splitlines()
        errors = [ln.strip() for ln in lines[1:] if ln.strip().startswith("[ERROR]")]
        detail = errors[0] if errors else next((ln.strip() for ln in reversed(lines[1:]) if ln.strip()), "")
        return click.ClickException(
            f"{name}: {lines[0].rstrip(':')}: {detail[:300]} (is Maven Central reachable? {DEBUG_HINT})"
        )
    if isinstance(exc, StackError):
        first = str(exc).splitlines()[0].rstrip(":") if str(exc) else type(exc).__name__
        return click.ClickException(f"{name}: {first}; its log: `walstream stack logs {name}`")
    if isinstance(exc, OSError):
        return click.ClickException(f"{name}: {exc.strerror or exc} ({exc.filename or type(exc).__name__})")
    return click.ClickException(f"{name}: {type(exc).__name__}: {_one_line(str(exc))} ({DEBUG_HINT})")


services_option = click.option(
    "--services", default="", help="Comma-separated subset, e.g. kafka,cassandra (default: all three)."
)


@stack.command("up")
@services_option
@click.option("--second-region", is_flag=True, help="Also start a second Kafka cluster (kafka-west).")
def stack_up(services: str, second_region: bool) -> None:
    """Start the services (idempotent); returns when each one answers."""
    for r in _runners(_names(services, second_region)):
        if not r.running():
            _preflight(r)
        click.echo(f"{r.service.name}: starting ...", nl=False)
        try:
            r.up()
        except Exception as exc:
            click.echo(" failed")
            raise _stack_error(r.service.name, exc) from exc
        eps = " ".join(f"{k}={v}" for k, v in r.service.endpoints().items())
        click.echo(f" up (pid {r.pid()}) {eps}")


@stack.command("down")
@services_option
def stack_down(services: str) -> None:
    """Stop the services this stack started (by their pid files, never by name)."""
    from walstream.stack.stack import ALL, SECOND_REGION

    names = _names(services, False) if services else [SECOND_REGION, *reversed(ALL)]
    for r in _runners(names):
        try:
            stopped = r.down()
        except OSError as exc:
            raise click.ClickException(
                f"{r.service.name}: cannot stop pid {r.pid()} ({exc.strerror or exc}); was it started by another user?"
            ) from exc
        click.echo(f"{r.service.name}: {'stopped' if stopped else 'not running'}")


@stack.command("status")
def stack_status() -> None:
    """Say what runs where: pid, health, addresses, log file."""
    from walstream.stack.stack import ALL, SECOND_REGION

    for r in _runners([*ALL, SECOND_REGION]):
        pid = r.pid()
        if pid is None:
            click.echo(f"{r.service.name}: stopped")
            continue
        health = "healthy" if r.service.healthy() else "not answering"
        eps = " ".join(f"{k}={v}" for k, v in r.service.endpoints().items())
        click.echo(f"{r.service.name}: running pid={pid} {health} {eps} log={r.service.log_file}")


@stack.command("logs")
@click.argument("service")
@click.option("-n", "--lines", type=click.IntRange(min=1), default=50, show_default=True, help="How many lines.")
def stack_logs(service: str, lines: int) -> None:
    """Show the end of a service's log (kafka, cassandra, elasticsearch, kafka-west)."""
    [r] = _runners([service])
    try:
        click.echo(r.tail(lines))
    except OSError as exc:
        raise click.ClickException(f"{r.service.log_file}: cannot read it ({exc.strerror or exc})") from exc


# -- demo --------------------------------------------------------------------------------


@main.command()
@click.pass_context
def demo(ctx: click.Context) -> None:
    """Start a worker, create the demo namespace, write entries, keep serving until Ctrl-C.

    Needs Kafka, Cassandra and Elasticsearch (`walstream stack up`). The worker listens on
    WALSTREAM_WEB_PORT; --url / WALSTREAM_URL, when given, is where the demo reaches it.
    """
    from cassandra import DriverException
    from cassandra.cluster import NoHostAvailable

    from walstream.demo import run_demo

    opts = ctx.find_object(CliOptions)
    assert opts is not None, "commands run under main()"
    settings = _settings()
    _check_port_free(
        settings.web_host,
        settings.web_port,
        "cannot start the demo's worker",
        "stop what uses it (another worker?) or set WALSTREAM_WEB_PORT to a free port",
    )
    url = opts.url if opts.url_given else None
    try:
        code = run_demo(settings, url)
    except SystemExit as exc:
        # run_demo ends with SystemExit("worker exited ...") when its worker does not come up
        if isinstance(exc.code, str):
            raise click.ClickException(f"demo: {exc.code}; the worker's log above says why") from None
        raise
    except NoHostAvailable as exc:
        raise click.ClickException(
            f"demo: no Cassandra answers at {settings.cassandra_hosts}:{settings.cassandra_port} "
            "(WALSTREAM_CASSANDRA_HOSTS / WALSTREAM_CASSANDRA_PORT). Start it with `walstream stack up`."
        ) from exc
    except DriverException as exc:
        raise click.ClickException(f"demo: Cassandra failed: {_one_line(str(exc))}") from exc
    except httpx.HTTPStatusError as exc:
        raise click.ClickException(
            f"demo: the worker answered {exc.request.method} {exc.request.url.path} with "
            f"{exc.response.status_code}: {_answer_message(exc.response)}"
        ) from exc
    except httpx.HTTPError as exc:
        raise click.ClickException(f"demo: {type(exc).__name__} talking to the worker: {_one_line(str(exc))}") from exc
    ctx.exit(code)


if __name__ == "__main__":
    main()
