"""The ``walstream`` command: worker, namespaces, dead letters, local service stack, demo.

Error contract: every expected failure (no worker at the address, a timeout, an answer that is
not JSON, a 4xx/5xx answer, a bad namespace file, Kafka down at start, a port in use, no JDK or
Maven for ``stack up``) ends the command with ONE line on stderr that names the problem and the
fix, and a non-zero exit status (1; 2 for a usage error). Anything unexpected is reported the
same way, as one line. ``--debug`` / ``WALSTREAM_DEBUG=1`` also prints the traceback of the cause.

Every command that talks to a worker goes through :class:`Remote`, which runs it with the
Python client (:class:`walstream.client.WalstreamClient`: one timeout policy, ``--timeout``;
the bearer token, ``--token``) and is the one place that turns the client's errors into those
lines. Commands that read print ``--output text`` (for people) or ``json`` (the API's JSON).
"""

from __future__ import annotations

import asyncio
import difflib
import errno
import logging
import os
import re
import socket
import sys
import threading
import traceback
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any, TypeVar

import click
import httpx
import orjson
import pydantic
import yaml

from walstream import gc_tuning, log_format, log_redaction, strict_json
from walstream.client import (
    DeadLetter,
    EntryStatus,
    GroupStatus,
    JobStatus,
    NoAnswer,
    NotFound,
    RedriveOutcome,
    RedriveResult,
    UnexpectedAnswer,
    WalstreamClient,
    WalstreamError,
    WriteResult,
)
from walstream.mutations import MutationError, parse_mutations
from walstream.namespaces.model import NAME_RE, NamespaceConfig, NamespaceError, parse_namespace, validation_message
from walstream.requests import MAX_DELAY_MS, TimeText
from walstream.settings import Settings
from walstream.targets.base import ErrorClass
from walstream.wording import counted

DEFAULT_URL = "http://127.0.0.1:6066"
#: seconds to wait for a TCP connection to a worker (the whole answer waits ``--timeout``)
CONNECT_TIMEOUT_S = 5.0
DEBUG_HINT = "run with --debug for the traceback"
#: how many times ``walstream write`` asks again, with the same id, when the answer is UNKNOWN or lost
WRITE_RETRIES = 3

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class CliOptions:
    """The global options, handed to every command through ``ctx.obj``."""

    url: str
    timeout_s: float
    debug: bool
    #: True when ``--url`` / ``WALSTREAM_URL`` was given (not the default)
    url_given: bool
    #: sent as ``Authorization: Bearer`` to the worker
    token: str | None = field(default=None, repr=False)


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
    help="Address of any walstream worker's HTTP API (namespace, entry, write and dlq commands talk to it).",
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
    "--token",
    envvar="WALSTREAM_TOKEN",
    show_envvar=True,
    help="Bearer token for the worker's API (sent as Authorization: Bearer).",
)
@click.option(
    "--debug", is_flag=True, envvar="WALSTREAM_DEBUG", show_envvar=True, help="On an error, also print its traceback."
)
@click.pass_context
def main(ctx: click.Context, url: str, timeout_s: float, token: str | None, debug: bool) -> None:
    """walstream: a write-ahead log service on Kafka.

    Errors are one line on stderr and a non-zero exit status.
    """
    source = ctx.get_parameter_source("url")
    ctx.obj = CliOptions(
        url=url,
        timeout_s=timeout_s,
        debug=debug,
        url_given=source is not click.core.ParameterSource.DEFAULT,
        token=token or None,
    )


def _settings() -> Settings:
    """The worker settings from ``WALSTREAM_*``; a bad value is one line naming the variable."""
    try:
        return Settings()
    except pydantic.ValidationError as exc:
        def given(e: Any) -> str:
            field = Settings.model_fields.get(str(e["loc"][0])) if e["loc"] else None
            secret = field is not None and field.annotation is pydantic.SecretStr
            return "=<hidden>" if secret else f"={e.get('input')!r}"

        # an error of several settings together (no loc) names them in its message; its
        # input is every setting, secrets included: never shown
        problems = "; ".join(
            f"WALSTREAM_{'_'.join(str(p) for p in e['loc']).upper()}{given(e)}: {validation_message(e)}"
            if e["loc"] else validation_message(e)
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
        settings.web_bind or settings.web_host,
        settings.web_port,
        "cannot start the worker's HTTP API",
        "stop what uses it or set WALSTREAM_WEB_PORT (and WALSTREAM_WEB_BIND) to a free address",
    )
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    wal = build_app(settings)
    gc_tuning.tune_for_worker()  # after the build: the app's objects are not scanned again
    log_format.configure(settings.log_format, loglevel)
    log_redaction.install()  # aiohttp logs headers it cannot parse, tokens included
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

    as_json = log_format.logging_config(settings.log_format, loglevel)
    # quiet: Faust's start-up banner is printed, not logged, and would break a JSON log
    runner = faust.Worker(wal.faust, loop=loop, loglevel=loglevel, logging_config=as_json, quiet=as_json is not None)
    # Faust's start-up spinner sets the root logger to DEBUG (to show every record while it
    # spins) whenever the level is WARNING or above: every debug call in aiokafka and Faust
    # then built a log record, ~9 % of a busy worker's CPU (py-spy). No spinner, no DEBUG.
    runner.spinner = None
    runner.execute_from_commandline()


# -- talking to a worker -----------------------------------------------------------------


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


def _walstreams(resp: httpx.Response) -> bool:
    """An error answer as a walstream worker gives one: a JSON object with a ``message``."""
    try:
        doc = resp.json()
    except ValueError:
        return False
    return isinstance(doc, dict) and isinstance(doc.get("message"), str)


def _request_of(resp: httpx.Response) -> str:
    """``GET /v1/namespaces/a%2Fb``: the request an answer answers, as sent, without its query."""
    return f"{resp.request.method} {resp.request.url.raw_path.split(b'?')[0].decode()}"


@dataclass(frozen=True)
class Remote:
    """The worker a command talks to, through :class:`WalstreamClient`: its address, how long
    to wait for it, the bearer token. :meth:`run` turns every :class:`WalstreamError` into one
    line naming the problem and the fix (:meth:`error_line`)."""

    url: str
    timeout_s: float
    token: str | None = field(default=None, repr=False)

    @property
    def connect_timeout_s(self) -> float:
        return min(self.timeout_s, CONNECT_TIMEOUT_S)

    def run(self, work: Callable[[WalstreamClient], Awaitable[T]], request: str = "the request") -> T:
        """``work`` with a client to this worker, in an event loop of its own. ``request``
        names the call in an error that does not name it (a write refused through its result)."""

        async def session() -> T:
            async with WalstreamClient(
                self.url,
                timeout_s=self.timeout_s,
                connect_timeout_s=self.connect_timeout_s,
                retries=WRITE_RETRIES,
                token=self.token,
            ) as wal:
                return await work(wal)

        try:
            return asyncio.run(session())
        except WalstreamError as exc:
            raise click.ClickException(self.error_line(exc, request)) from exc
        except pydantic.ValidationError as exc:
            # the client validates answers against its models: this one has another shape
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise click.ClickException(
                f"the worker at {self.url} answered with JSON this walstream does not understand "
                f"({exc.error_count()} problem(s), first {exc.title} {where}: {first['msg']}); "
                f"is it a walstream worker of this version? ({DEBUG_HINT})"
            ) from exc

    def error_line(self, exc: WalstreamError, request: str = "the request") -> str:
        """One line for a failed call: what happened and what to do. ``request`` names the
        call when the error does not (a write refused through its result)."""
        check = "point --url / WALSTREAM_URL at a walstream worker"
        if isinstance(exc, NoAnswer):
            return {
                "refused": f"no walstream worker answers at {self.url}: connection refused. "
                "Start one with `walstream worker` or point --url / WALSTREAM_URL at one.",
                "unresolved": f"cannot resolve the host of {self.url} ({exc.detail}); {check}.",
                "connect_timeout": f"no walstream worker answers at {self.url}: no connection within "
                f"{self.connect_timeout_s:g} s (host unreachable or firewalled?); {check}.",
                "timeout": f"the worker at {self.url} did not answer {exc.request} within {self.timeout_s:g} s; "
                "it may be overloaded or stuck: retry, or allow longer with --timeout / WALSTREAM_TIMEOUT_S.",
                "connect": f"cannot connect to {self.url} ({exc.detail}); {check}.",
                "broken": f"{self.url} broke off {exc.request} ({exc.detail}); "
                f"is it a walstream worker? If so retry, else {check}.",
                "other": f"{exc.request} to {self.url} failed: {exc.detail}; {check}.",
            }[exc.reason]
        resp = exc.response
        if isinstance(exc, UnexpectedAnswer) and resp is not None:
            kind = resp.headers.get("content-type", "no content-type")
            what = "something that is not JSON" if exc.body is None else "JSON that is not a walstream answer"
            return (
                f"{self.url} answered {_request_of(resp)} with {what} ({kind}: {_answer_message(resp)}); "
                "is --url / WALSTREAM_URL a walstream worker's HTTP API?"
            )
        if resp is not None and not _walstreams(resp):
            kind = resp.headers.get("content-type", "no content-type")
            return (
                f"{_request_of(resp)} failed: {self.url} answered {resp.status_code} {resp.reason_phrase} with "
                f"no walstream message ({kind}: {_answer_message(resp)}): a proxy or another server answered, not "
                "a walstream worker; check --url / WALSTREAM_URL and that the worker behind it is up"
            )
        if resp is not None:
            fix = {
                401: "; give a token with --token or WALSTREAM_TOKEN",
                403: "; the token given (--token / WALSTREAM_TOKEN) is not allowed to do this: use another",
            }.get(resp.status_code, "")
            return (
                f"{_request_of(resp)} failed: the worker at {self.url} answered {resp.status_code} "
                f"{resp.reason_phrase}: {_answer_message(resp)}{fix}"
            )
        status = exc.status or 0
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "(an unknown status)"
        return f"{request} failed: the worker at {self.url} answered {status} {phrase}: {_one_line(exc.message)}"


def _remote(ctx: click.Context, url: str | None) -> Remote:
    """The worker of this command: its own ``--url`` if given, else the global one."""
    opts = ctx.find_object(CliOptions)
    assert opts is not None, "commands run under main()"
    return Remote(url or opts.url, opts.timeout_s, opts.token)


def _echo_json(doc: Any) -> None:
    click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())


def _echo_yaml(doc: Any) -> None:
    click.echo(_yaml(doc), nl=False)


def _yaml(doc: Any) -> str:
    """``doc`` as block YAML, keys sorted: the one text form of a namespace (show, diff)."""
    return str(yaml.safe_dump(doc, sort_keys=True, allow_unicode=True, default_flow_style=False))


#: ``--url`` after a command (``walstream namespace list --url ...``) overrides the global one
url_option = click.option(
    "--url",
    default=None,
    callback=_validate_url,
    help="Worker address for this command; default: the global --url / WALSTREAM_URL.",
)

#: every command that reads from a worker prints text for people or the API's JSON for programs
output_option = click.option(
    "-o",
    "--output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text: compact, for people; json: the API's JSON, for programs (jq).",
)


def _namespace_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A namespace's name, checked here: anything else would make the request's path another
    endpoint (``..``) or none."""
    if not NAME_RE.match(value):
        raise click.BadParameter(f"{value!r} is not a namespace name (a-z first, then a-z, 0-9, '_' and '-'; "
                                 "`walstream namespace list` shows them)")
    return value


def _read_file(file: Path, expected: str = "a YAML or JSON file") -> bytes:
    """The bytes of a file named on the command line; a missing/unreadable file is one line."""
    try:
        return file.read_bytes()
    except FileNotFoundError as exc:
        raise click.ClickException(f"{file}: no such file") from exc
    except IsADirectoryError as exc:
        raise click.ClickException(f"{file}: is a directory, expected {expected}") from exc
    except PermissionError as exc:
        raise click.ClickException(f"{file}: not readable (permission denied)") from exc
    except OSError as exc:
        raise click.ClickException(f"{file}: cannot read it ({exc.strerror or exc})") from exc


# -- namespaces --------------------------------------------------------------------------


@main.group()
def namespace() -> None:
    """Create, inspect and delete namespaces on the worker at --url; validate namespace files."""


def _load_namespace(file: Path) -> NamespaceConfig:
    """FILE read and validated as the worker will (``parse_namespace``); every problem on one line."""
    try:
        return parse_namespace(_read_file(file))
    except NamespaceError as exc:
        raise click.ClickException(f"{file}: {_one_line(str(exc)).replace('<byte string>', str(file))}") from None


@namespace.command("validate")
@click.argument("file", type=click.Path(dir_okay=True, path_type=Path))
def namespace_validate(file: Path) -> None:
    """Check a namespace file (YAML or JSON) here, without a worker: OK, or every problem."""
    cfg = _load_namespace(file)
    click.echo(f"{file}: OK (namespace {cfg.name}, {len(cfg.targets)} target(s))")


@namespace.command("apply")
@click.argument("file", type=click.Path(dir_okay=True, path_type=Path))
@click.option(
    "--dry-run", is_flag=True, help="Write nothing: show the difference from the live namespace (a unified diff)."
)
@url_option
@click.pass_context
def namespace_apply(ctx: click.Context, file: Path, dry_run: bool, url: str | None) -> None:
    """Create or update the namespace in FILE (YAML or JSON), validated here first."""
    cfg = _load_namespace(file)
    body = cfg.model_dump(mode="json", exclude={"version"})
    remote = _remote(ctx, url)
    if not dry_run:
        doc = remote.run(lambda wal: wal.put_namespace(cfg.name, body))
        click.echo(f"namespace {doc['name']} applied (version {doc['version']})")
        for region, outcome in sorted((doc.get("regions") or {}).items()):
            click.echo(f"  region {region}: {outcome}")
        return

    async def live(wal: WalstreamClient) -> dict[str, Any] | None:
        try:
            return await wal.namespace(cfg.name)
        except NotFound:
            return None

    current = remote.run(live)
    # the same normal form on both sides: what PUT would send, against what the worker holds
    new_text = _yaml(body)
    if current is None:
        click.echo(f"new namespace {cfg.name}: applying {file} would create it (dry run: nothing written)")
        old_text, old_name = "", "/dev/null"
    else:
        version = current.get("version")
        live_doc = {k: v for k, v in current.items() if k != "version"}
        try:
            # through the same model, so fields a worker of another version leaves out (their
            # defaults) do not show as changes
            live_doc = parse_namespace(live_doc).model_dump(mode="json", exclude={"version"})
        except NamespaceError:
            pass  # a field this CLI does not know: compare as the worker holds it
        old_text = _yaml(live_doc)
        old_name = f"{cfg.name} (live, version {version})"
        if old_text == new_text:
            click.echo(f"no changes: {file} matches namespace {cfg.name} (version {version})")
            return
        click.echo(f"namespace {cfg.name} would change (dry run: nothing written):")
    diff = difflib.unified_diff(
        old_text.splitlines(keepends=True), new_text.splitlines(keepends=True), fromfile=old_name, tofile=str(file)
    )
    click.echo("".join(diff), nl=False)


@namespace.command("list")
@output_option
@url_option
@click.pass_context
def namespace_list(ctx: click.Context, output: str, url: str | None) -> None:
    """List namespaces: name, shard, version, target types."""
    namespaces = _remote(ctx, url).run(lambda wal: wal.namespaces())
    if output == "json":
        _echo_json({"namespaces": namespaces})
        return
    for ns in namespaces:
        targets = ", ".join(t["type"] for t in ns["targets"])
        click.echo(f"{ns['name']}\tshard={ns['shard']}\tversion={ns['version']}\ttargets={targets}")


@namespace.command("show")
@click.argument("name", callback=_namespace_name)
@output_option
@url_option
@click.pass_context
def namespace_show(ctx: click.Context, name: str, output: str, url: str | None) -> None:
    """Show one namespace's configuration (text: YAML, as a namespace file)."""
    doc = _remote(ctx, url).run(lambda wal: wal.namespace(name))
    if output == "json":
        _echo_json(doc)
    else:
        _echo_yaml(doc)


@namespace.command("delete")
@click.argument("name", callback=_namespace_name)
@click.option("--force", is_flag=True, help="Also when entries are pending: they are dead-lettered.")
@url_option
@click.pass_context
def namespace_delete(ctx: click.Context, name: str, force: bool, url: str | None) -> None:
    """Delete a namespace (its topics and their entries are kept). Refused while entries are
    pending (delayed, retrying, held) unless --force, which dead-letters them."""
    doc = _remote(ctx, url).run(lambda wal: wal.delete_namespace(name, force=force))
    dead = doc.get("dead_lettered", 0)
    click.echo(f"namespace {name} deleted"
               + (f"; {counted(dead, 'pending entry', 'pending entries')} dead-lettered" if dead else ""))


# -- entries -----------------------------------------------------------------------------


def _deliver_at(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An ISO-8601 time with a timezone, checked here as the worker reads it (it refuses one
    without a timezone)."""
    if value is None:
        return None
    try:
        when = pydantic.TypeAdapter(TimeText).validate_python(value)
    except pydantic.ValidationError:
        raise click.BadParameter(f"{value!r} is not an ISO-8601 time, e.g. 2030-01-01T12:00:00Z") from None
    if when.tzinfo is None:
        raise click.BadParameter(f"{value!r} has no timezone; add one, e.g. {value}Z or {value}+02:00")
    return value


def _payload(payload: str | None, payload_file: Path | None) -> Any:
    """The entry's payload: PAYLOAD_JSON, ``-`` (stdin) or --payload-file, read as strictly as
    the worker reads it (a duplicate key, a number a double cannot hold: refused here)."""
    if (payload is None) == (payload_file is None):
        raise click.UsageError(
            "give the payload once: PAYLOAD_JSON, - (read from stdin) or --payload-file F"
            + ("" if payload is None else ", not both")
        )
    if payload_file is not None:
        raw, source = _read_file(payload_file, "a JSON file"), str(payload_file)
    elif payload == "-":
        raw, source = click.get_binary_stream("stdin").read(), "payload from stdin"
    else:
        raw, source = (payload or "").encode(), "PAYLOAD_JSON"
    try:
        return strict_json.loads(raw)
    except strict_json.StrictJSONError as exc:
        raise click.ClickException(f"{source}: not valid JSON: {_one_line(str(exc))}; nothing written") from exc


@main.command()
@click.argument("namespace", callback=_namespace_name)
@click.argument("payload", required=False, metavar="[PAYLOAD_JSON | -]")
@click.option(
    "--payload-file",
    type=click.Path(dir_okay=True, path_type=Path),
    help="Read the payload (JSON) from this file instead.",
)
@click.option("--key", help="Ordering and partition key; default: the id.")
@click.option("--id", "entry_id", help="Idempotency key; default: a new UUID4. The same id is never written twice.")
@click.option("--delay-ms", type=click.IntRange(min=0), help="Deliver no sooner than this many ms from now.")
@click.option(
    "--deliver-at", callback=_deliver_at, help="Deliver no sooner than this ISO-8601 time with a timezone."
)
@click.option("--group", "group_id", help="Write a member of this mutation group (with --seq; docs/groups.md).")
@click.option("--seq", type=click.IntRange(min=0), help="The member's place in its group, from 0.")
@output_option
@url_option
@click.pass_context
def write(
    ctx: click.Context,
    namespace: str,
    payload: str | None,
    payload_file: Path | None,
    key: str | None,
    entry_id: str | None,
    delay_ms: int | None,
    deliver_at: str | None,
    group_id: str | None,
    seq: int | None,
    output: str,
    url: str | None,
) -> None:
    """Write one entry to NAMESPACE; print its id, partition and offset once Kafka holds it.

    The payload is JSON: PAYLOAD_JSON, - (stdin) or --payload-file F. An answer that is
    UNKNOWN or lost is asked again with the same id, which never writes twice. A member of a
    mutation group: --group G --seq N (then `walstream entry commit NAMESPACE G --size S`)."""
    if delay_ms is not None and deliver_at is not None:
        raise click.UsageError("give --delay-ms or --deliver-at, not both")
    if (group_id is None) != (seq is None):
        raise click.UsageError("give --group and --seq together")
    value = _payload(payload, payload_file)
    options = {"key": key, "id": entry_id, "delay_ms": delay_ms, "deliver_at": deliver_at,
               "group": {"id": group_id, "seq": seq} if group_id is not None else None}
    # a refusal (4xx: nothing written) is raised; UNKNOWN is returned after the retries
    result = _remote(ctx, url).run(lambda wal: wal.write(namespace, value, **options), request="POST /v1/log")
    _known(namespace, result)
    if output == "json":
        _echo_json(result.model_dump(mode="json"))
        return
    click.echo(
        f"{result.durable}\tid={result.id}\tpartition={result.partition}\toffset={result.offset}"
        + ("\tduplicate (written before: the original answer)" if result.duplicate else "")
    )


def _known(namespace: str, result: WriteResult) -> None:
    """Raise the CLI error for a write still UNKNOWN after every retry."""
    if result.durable == "UNKNOWN":
        why = f"answered {result.status}: {result.message}" if result.status else result.message
        raise click.ClickException(
            f"write of {result.id!r} to {namespace!r} is UNKNOWN after {1 + WRITE_RETRIES} attempt(s) "
            f"({_one_line(str(why))}): "
            f"it may or may not be in the log. `walstream entry status {namespace} {result.id}` tells; "
            f"writing again with --id {result.id} never writes it twice."
        )


@main.group()
def entry() -> None:
    """An entry's state, and cancelling it, through the worker at --url."""


def _echo_status(st: EntryStatus, output: str) -> None:
    if output == "json":
        _echo_json(st.model_dump(mode="json"))
        return
    at = {"partition": st.partition, "offset": st.offset, "due_at": st.due_at, "updated_at": st.updated_at,
          "origin": st.origin}
    click.echo("\t".join([st.id, st.state, *(f"{k}={v.isoformat() if isinstance(v, datetime) else v}"
                                               for k, v in at.items() if v is not None)]))
    for t in st.targets:
        extra = [f"attempts={t.attempts}"]
        if t.next_attempt_at is not None and t.state == "RETRYING":
            extra.append(f"next_attempt_at={t.next_attempt_at.isoformat()}")
        if t.held_behind:
            extra.append(f"held_behind={t.held_behind}")
        if t.last_error:
            extra.append(f"last_error={_one_line(t.last_error)[:200]}")
        click.echo("\t".join([f"  {t.target}", t.type or "-", t.state, *extra]))
    if st.last_error and not st.targets:
        click.echo(f"  last_error={_one_line(st.last_error)[:200]}")
    for region, outcome in sorted((st.peers or {}).items()):
        click.echo(f"  region {region}: cancellation {_one_line(outcome)[:300]}")
    if st.message:
        click.echo(f"  {st.message}")


def wait_option(default_s: float, help: str) -> Callable[[F], F]:
    """``--wait S`` (seconds, 0 to 3600, finite)."""
    return click.option(
        "--wait",
        "wait_s",
        type=click.FloatRange(min=0, max=3600),
        callback=lambda ctx, param, value: _finite(param, value),
        default=default_s,
        show_default=True,
        help=help,
    )


@entry.command("status")
@click.argument("namespace", callback=_namespace_name)
@click.argument("entry_id", metavar="ID")
@wait_option(0.0, "Seconds to keep asking while the entry is not known yet (just written, not consumed).")
@output_option
@url_option
@click.pass_context
def entry_status(
    ctx: click.Context, namespace: str, entry_id: str, wait_s: float, output: str, url: str | None
) -> None:
    """Show an entry's state (DELAYED, PENDING, RETRYING, DELIVERED, DEAD, CANCELLED) and each
    target's: attempts, last error, next attempt."""
    remote = _remote(ctx, url)

    async def ask(wal: WalstreamClient) -> EntryStatus:
        try:
            return await wal.status(namespace, entry_id, wait_s=wait_s)
        except NotFound as exc:
            hint = "" if wait_s else "; an entry just written is known once consumed: add --wait 5"
            raise click.ClickException(remote.error_line(exc) + hint) from exc

    _echo_status(remote.run(ask), output)


@entry.command("commit")
@click.argument("namespace", callback=_namespace_name)
@click.argument("group_id", metavar="GROUP")
@click.option("--size", type=click.IntRange(min=1), required=True, help="How many members the group has.")
@click.option("--id", "entry_id", help="The marker's idempotency key; default: a new UUID4.")
@url_option
@click.pass_context
def entry_commit(ctx: click.Context, namespace: str, group_id: str, size: int, entry_id: str | None,
                 url: str | None) -> None:
    """Write the commit marker of mutation group GROUP: once its SIZE members (seq 0 to
    SIZE-1) are there, the group is applied (docs/groups.md)."""
    result = _remote(ctx, url).run(lambda wal: wal.commit_group(namespace, group_id, size, id=entry_id),
                                   request="POST /v1/log")
    _known(namespace, result)
    click.echo(f"{result.durable}\tid={result.id}\tpartition={result.partition}\toffset={result.offset}")


@entry.command("group")
@click.argument("namespace", callback=_namespace_name)
@click.argument("group_id", metavar="GROUP")
@output_option
@url_option
@click.pass_context
def entry_group(ctx: click.Context, namespace: str, group_id: str, output: str, url: str | None) -> None:
    """Show a mutation group's state (PENDING, COMMITTED, APPLIED, ABORTED, DEAD_LETTERED),
    its size, the members still missing and each target's progress (docs/groups.md)."""
    remote = _remote(ctx, url)

    async def ask(wal: WalstreamClient) -> GroupStatus:
        return await wal.group(namespace, group_id)

    st = remote.run(ask)
    if output == "json":
        _echo_json(st.model_dump(mode="json"))
        return
    size = "?" if st.size is None else str(st.size)
    click.echo("\t".join([st.id, st.state, f"members={st.members}/{size}", f"partition={st.partition}"]))
    if st.missing:
        shown = ",".join(map(str, st.missing[:20])) + (",..." if len(st.missing) > 20 else "")
        click.echo(f"  missing={shown}")
    for tid, state in sorted(st.targets.items()):
        click.echo(f"  {tid}\t{state}")
    if st.error:
        click.echo(f"  error={_one_line(st.error)[:200]}")


@entry.command("cancel")
@click.argument("namespace", callback=_namespace_name)
@click.argument("entry_id", metavar="ID")
@click.option("--key", help="The entry's key, when it is not its id (to cancel an entry not written yet).")
@output_option
@url_option
@click.pass_context
def entry_cancel(
    ctx: click.Context, namespace: str, entry_id: str, key: str | None, output: str, url: str | None
) -> None:
    """Cancel what of an entry is not delivered yet; print its state. An entry already
    DELIVERED or DEAD is refused (exit 1)."""
    _echo_status(_remote(ctx, url).run(lambda wal: wal.cancel(namespace, entry_id, key=key)), output)


# -- dead letters ------------------------------------------------------------------------


@main.group()
def dlq() -> None:
    """Inspect and redrive dead-lettered entries through the worker at --url."""


filter_options = [
    click.option(
        "--error-class",
        type=click.Choice([c.value for c in ErrorClass]),
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


def _letters_json(letters: list[DeadLetter]) -> dict[str, Any]:
    return {"dead_letters": [d.model_dump(mode="json") for d in letters]}


@dlq.command("list")
@click.argument("namespace", callback=_namespace_name)
@with_filters
@output_option
@url_option
@click.pass_context
def dlq_list(
    ctx: click.Context,
    namespace: str,
    error_class: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    output: str,
    url: str | None,
) -> None:
    """List a namespace's dead letters (oldest failure first); the count goes to stderr."""
    rows = _remote(ctx, url).run(
        lambda wal: wal.dead_letters(namespace, error_class=error_class, since=since, until=until, limit=limit)
    )
    if output == "json":
        _echo_json(_letters_json(rows))
    else:
        for r in rows:
            target = (r.target or {}).get("type", "-")
            click.echo(
                f"{r.id}\t{target}\t{r.error_class}\tattempts={r.attempts}\t"
                f"{r.last_failure_at.isoformat()}\t{_one_line(r.message)[:120]}"
            )
    click.echo(f"{len(rows)} dead letter(s)", err=True)


@dlq.command("show")
@click.argument("namespace", callback=_namespace_name)
@click.argument("entry_id")
@output_option
@url_option
@click.pass_context
def dlq_show(ctx: click.Context, namespace: str, entry_id: str, output: str, url: str | None) -> None:
    """Show the dead letters of one entry (one per failed target), in full."""
    rows = _remote(ctx, url).run(lambda wal: wal.dead_letters(namespace, id=entry_id))
    if not rows:
        raise click.ClickException(f"no dead letter for {entry_id!r} in {namespace!r}")
    doc = _letters_json(rows)
    if output == "json":
        _echo_json(doc)
    else:
        _echo_yaml(doc["dead_letters"])


@dlq.command("redrive")
@click.argument("namespace", callback=_namespace_name)
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
@wait_option(30.0, "Seconds to wait for the redriven entries' outcomes.")
@output_option
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
    output: str,
    url: str | None,
) -> None:
    """Deliver dead-lettered entries again, with fresh attempts. Dry run unless --execute.

    Prints each entry's outcome (DELIVERED, DEAD with the reason: back in the dead-letter
    queue, or PENDING: not settled within --wait) and exits 1 unless all were delivered."""
    remote = _remote(ctx, url)
    filters: dict[str, Any] = {"error_class": error_class, "since": since, "until": until, "limit": limit}

    async def redrive(wal: WalstreamClient) -> tuple[list[DeadLetter], RedriveResult]:
        listed = await wal.redrive(namespace, ids=list(ids) or None, dry_run=True, **filters)
        rows = listed.would_redrive
        missing = sorted(set(ids) - {r.id for r in rows})
        if missing:
            # an id asked for by name that matches nothing is a mistake to hear of, not a success
            raise click.ClickException(
                f"no dead letter matches id(s) {', '.join(map(repr, missing))} in namespace {namespace!r} "
                "(with the filters given); nothing was redriven: check the ids with `walstream dlq list`"
            )
        if not execute:
            return rows, listed
        interval = 1.0 / rate
        loop = asyncio.get_running_loop()
        # each entry's status as it was before its redrive: its outcome is a final state
        # written after that (the workers' own times; no clock of this machine involved)
        before: dict[str, datetime | None] = {}
        with click.progressbar(rows, label=f"redriving {len(rows)}", file=sys.stderr) as bar:
            for done, r in enumerate(bar):
                if r.id in before:
                    continue  # redriving an id redrives each of its dead targets that matches
                started = loop.time()
                before[r.id] = await _updated_at(wal, namespace, r.id)
                try:
                    await wal.redrive(namespace, ids=[r.id], dry_run=False, wait_s=0, **filters)
                except WalstreamError as exc:
                    raise click.ClickException(
                        f"redrive stopped after {done} of {len(rows)} at {r.id!r}: {remote.error_line(exc)}"
                    ) from exc
                await asyncio.sleep(max(0.0, interval - (loop.time() - started)))
        outcomes = await _redrive_outcomes(wal, namespace, rows, before, wait_s)
        count = Counter(o.outcome for o in outcomes)
        return rows, RedriveResult(
            dry_run=False,
            redriven=len(rows),
            delivered=count["DELIVERED"],
            dead=count["DEAD"],
            pending=count["PENDING"],
            results=outcomes,
        )

    rows, result = remote.run(redrive)
    if output == "json":
        _echo_json(result.model_dump(mode="json"))
    elif result.dry_run:
        for d in rows:
            click.echo(f"would redrive {d.id} ({(d.target or {}).get('type', '-')}, {d.error_class})")
    else:
        for d, o in zip(rows, result.results, strict=True):
            kind = (d.target or {}).get("type", "*")
            click.echo(f"{o.id} ({kind}): {o.outcome}" + (f": {o.message}" if o.message else ""))
    if result.dry_run:
        click.echo(f"dry run: {len(rows)} dead letter(s) match; add --execute to redrive them", err=True)
        return
    if result.delivered < result.redriven:
        raise click.ClickException(
            f"redrove {result.redriven} dead letter(s): {result.delivered} delivered, {result.dead} dead-lettered "
            f"again, {result.redriven - result.delivered - result.dead} not settled within {wait_s:g} s"
        )
    click.echo(f"redrove {result.redriven} dead letter(s): all delivered", err=output == "json")


def _finite(param: click.Parameter, value: float) -> float:
    """click's FloatRange lets nan through (every comparison with it is false)."""
    if value != value or value in (float("inf"), float("-inf")):
        raise click.BadParameter("expected a finite number", param=param)
    return value


async def _updated_at(wal: WalstreamClient, namespace: str, entry_id: str) -> datetime | None:
    """When the entry's status was last written; None when it is not known now."""
    try:
        return (await wal.status(namespace, entry_id)).updated_at
    except WalstreamError:
        return None


async def _redrive_outcomes(
    wal: WalstreamClient,
    namespace: str,
    rows: list[DeadLetter],
    before: dict[str, datetime | None],
    wait_s: float,
) -> list[RedriveOutcome]:
    """Each redriven dead letter's outcome from its entry's status: its target's state (the
    whole entry's for a letter without a target) once the status was written after the redrive
    (``before``: when it was last written before) and is final; PENDING after ``wait_s``."""
    settled: dict[int, RedriveOutcome] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        for n, r in enumerate(rows):
            if n in settled:
                continue
            try:
                st = await wal.status(namespace, r.id)
            except WalstreamError:
                continue  # not visible yet, or the fleet is settling: ask again
            earlier = before.get(r.id)
            if st.updated_at is None or (earlier is not None and st.updated_at <= earlier):
                continue
            t = next((x for x in st.targets if x.target == r.target_id), None)
            state, message = (st.state, st.last_error) if t is None else (t.state, t.last_error)
            if state in ("DELIVERED", "DEAD", "CANCELLED"):
                why = message if state == "DEAD" else None
                settled[n] = RedriveOutcome.model_validate(
                    {"id": r.id, "target_id": r.target_id, "outcome": state, "message": why}
                )
        if len(settled) == len(rows) or loop.time() >= deadline:
            break
        await asyncio.sleep(0.5)
    pending = f"not settled within {wait_s:g} s; see `walstream entry status {namespace} ID`"
    return [
        settled.get(n) or RedriveOutcome(id=r.id, target_id=r.target_id, outcome="PENDING", message=pending)
        for n, r in enumerate(rows)
    ]


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
        settings.web_bind or settings.web_host,
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



# -- bulk-delete -------------------------------------------------------------------------

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}


def _duration_ms(ctx: click.Context, param: click.Parameter, value: str) -> int:
    """``500ms``, ``90s``, ``10m``, ``1h`` as whole milliseconds."""
    found = _DURATION.match(value.strip())
    if found is None:
        raise click.BadParameter(f"{value!r} is not a duration: give e.g. 90s, 10m or 1h")
    return round(float(found.group(1)) * _UNIT_MS[found.group(2)])


def _bulk_keys(lines: list[str], table: str, key_column: str | None) -> list[tuple[int, dict[str, Any]]]:
    """Each non-blank line's number and delete mutation payload, checked as the worker checks
    it (a one-line error naming the first bad line, before anything is written)."""
    payloads = []
    for n, line in enumerate(lines, 1):
        text = line.rstrip("\n")
        if not text.strip():
            continue
        if key_column is not None:
            key: Any = {key_column: text}
        else:
            try:
                key = strict_json.loads(text.encode())
            except strict_json.StrictJSONError as exc:
                raise click.ClickException(
                    f"keys file line {n}: not JSON ({_one_line(str(exc))}); give a JSON object of the key's "
                    "columns, or --key-column NAME; nothing written"
                ) from exc
        payload = {"mutations": [{"table": table, "op": "delete", "key": key}]}
        try:
            parse_mutations(payload)
        except MutationError as exc:
            raise click.ClickException(f"keys file line {n}: {_one_line(str(exc))}; nothing written") from exc
        payloads.append((n, payload))
    return payloads


@main.command("bulk-delete")
@click.argument("namespace", callback=_namespace_name)
@click.option("--table", required=True, help="The table (Cassandra) / index suffix (Elasticsearch) to delete from.")
@click.option("--keys-file", required=True, type=click.File("r", encoding="utf-8"),
              help="One key per line: a JSON object of the key's columns, e.g. {\"id\": \"42\"}; or, with "
              "--key-column, the value of that one column. - reads stdin.")
@click.option("--key-column", help="The key's one column: each line of the keys file is its value.")
@click.option("--spread", default="0s", callback=_duration_ms, show_default=True,
              help="Spread the deletes over this long (90s, 10m, 1h): each is due a uniform 0..spread later "
              "(lifecycle.jitter_ms). Pace the target too (pacing.max_per_s) to bound its rate.")
@click.option("--run-id", help="Entry ids are RUN-ID:LINE (the key's line in the file). Run again with the run id "
              "printed first, the same file and options, after an interruption, and nothing is written twice. "
              "Default: a new one.")
@click.option("--batch", type=click.IntRange(1, 5000), default=500, show_default=True, help="Entries per request.")
@url_option
@click.pass_context
def bulk_delete(
    ctx: click.Context, namespace: str, table: str, keys_file: Any, key_column: str | None, spread: int,
    run_id: str | None, batch: int, url: str | None,
) -> None:
    """Delete many rows through the WAL (each delete an entry of NAMESPACE), with a progress
    bar; exits 1 unless every delete was acknowledged."""
    if spread > MAX_DELAY_MS:
        raise click.BadParameter(f"at most {MAX_DELAY_MS // 86_400_000} days", param_hint="'--spread'")
    payloads = _bulk_keys(keys_file.readlines(), table, key_column)
    if not payloads:
        raise click.ClickException("the keys file has no keys; nothing written")
    run = run_id or uuid.uuid4().hex[:12]
    click.echo(f"run id {run}: {len(payloads)} deletes to {namespace!r}" + (f", spread over {spread} ms" if spread
                                                                           else ""), err=True)
    lifecycle = {"jitter_ms": spread} if spread else None
    counts = {"written": 0, "duplicate": 0, "failed": 0, "unknown": 0}
    first_problem: list[str] = []

    async def send(wal: WalstreamClient) -> None:
        with click.progressbar(length=len(payloads), label="deleting", file=sys.stderr) as bar:
            for start in range(0, len(payloads), batch):
                chunk = payloads[start:start + batch]
                # the id names the key's line in the file: run again with the same file and options
                docs = [{"namespace": namespace, "id": f"{run}:{line}", "payload": p,
                         **({"lifecycle": lifecycle} if lifecycle else {})} for line, p in chunk]
                for r in await wal.write_batch(docs):
                    kind = ("duplicate" if r.duplicate else "written") if r.durable == "SUCCESS" else (
                        "failed" if r.durable == "FAILED" else "unknown")
                    counts[kind] += 1
                    if kind in ("failed", "unknown") and not first_problem:
                        first_problem.append(f"{r.id}: {r.durable} {r.message}")
                bar.update(len(chunk))

    _remote(ctx, url).run(send, request="POST /v1/log/batch")
    click.echo(f"written {counts['written']}, written before {counts['duplicate']}, refused {counts['failed']}, "
               f"unknown {counts['unknown']}" + (f"; first: {_one_line(first_problem[0])}" if first_problem else ""))
    if counts["failed"] or counts["unknown"]:
        ctx.exit(1)


# -- replay and jobs -------------------------------------------------------------------------


def _iso_time(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An ISO-8601 time with a timezone, checked here: a bad one is a one-line error."""
    if value is None:
        return None
    try:  # as the worker reads it
        parsed = pydantic.TypeAdapter(TimeText).validate_python(value)
    except pydantic.ValidationError:
        raise click.BadParameter(f"not an ISO-8601 time: {value!r} (e.g. 2026-11-30T10:00:00Z)") from None
    if parsed.tzinfo is None:
        raise click.BadParameter(f"{value!r} needs a timezone (e.g. 2026-11-30T10:00:00Z)")
    return value


#: a job's id as the worker makes it (walstream.jobs): ``<kind>.<namespace>.<12 hex digits>``
JOB_ID_RE = re.compile(r"^[a-z]+\.[a-z][a-z0-9_-]{0,62}\.[0-9a-f]{12}$")


def _job_id(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not JOB_ID_RE.match(value):
        raise click.BadParameter(f"{value!r} is not a job id (e.g. replay.catalog.3f2a9c1d0e4b: "
                                 "`walstream job list` shows them)")
    return value


def _echo_job(job: JobStatus, output: str) -> None:
    if output == "json":
        _echo_json(job.model_dump(mode="json"))
        return
    counts = ", ".join(f"{k} {v}" for k, v in sorted(job.counts.items()))
    click.echo(f"{job.id}\t{job.state}\t{job.progress:.0%}\t{counts or 'nothing yet'}"
               + (f"\terror={_one_line(job.error)}" if job.error else ""))


async def _follow(wal: WalstreamClient, job: JobStatus, label: str) -> JobStatus:
    """Poll ``job`` until it ends, with a progress bar on stderr; Ctrl-C cancels the job."""
    try:
        with click.progressbar(length=1000, label=label, file=sys.stderr) as bar:
            shown = 0
            while job.state == "RUNNING":
                await asyncio.sleep(1.0)
                job = await wal.job(job.id)
                step = int(job.progress * 1000) - shown
                if step > 0:
                    bar.update(step)
                    shown += step
    except asyncio.CancelledError:  # Ctrl-C: the job stops too
        await wal.cancel_job(job.id)
        click.echo(f"\ncancelled job {job.id}; what it did stays done", err=True)
        raise
    return job


@main.command()
@click.argument("namespace", callback=_namespace_name)
@click.option("--from", "from_", required=True, callback=_iso_time,
              help="Replay entries written from this time (ISO-8601 with a timezone, e.g. 2026-11-30T10:00:00Z).")
@click.option("--to", callback=_iso_time, help="Stop before this write time (default: the end of the WAL now).")
@click.option("--target", "targets", multiple=True,
              help="Only this target (repeatable): its id, as `walstream entry status` shows it, or its label "
              "(cassandra:KEYSPACE). Default: every target of the namespace.")
@click.option("--skip", "skips", multiple=True, help="An entry id not to replay (repeatable): the bad entry.")
@click.option("--skip-file", type=click.File("r", encoding="utf-8"),
              help="A file of entry ids not to replay, one per line (- reads stdin).")
@click.option("--rate", type=click.FloatRange(min=0.01, max=1e6), callback=lambda ctx, param, value: (
    None if value is None else _finite(param, value)), help="At most this many entries per second.")
@click.option("--dry-run", is_flag=True, help="Only count and list what would be applied.")
@click.option("--detach", is_flag=True, help="Start the job, print its id and return (follow it with "
              "`walstream job show ID`).")
@output_option
@url_option
@click.pass_context
def replay(
    ctx: click.Context, namespace: str, from_: str, to: str | None, targets: tuple[str, ...],
    skips: tuple[str, ...], skip_file: Any, rate: float | None, dry_run: bool, detach: bool, output: str,
    url: str | None,
) -> None:
    """Re-apply NAMESPACE's entries from a time, with their original write times (corruption
    recovery: restore a backup of the target, then replay from the backup's time, skipping
    the bad entries). Follows the job with a progress bar; Ctrl-C cancels it. Exits 1 unless
    every entry was applied."""
    skip = list(skips)
    if skip_file is not None:
        skip.extend(line.strip() for line in skip_file if line.strip())

    async def run(wal: WalstreamClient) -> JobStatus:
        job = await wal.replay(namespace, from_=from_, to=to, target=list(targets) or None, skip=skip, rate=rate,
                               dry_run=dry_run)
        plan = job.plan
        click.echo(f"job {job.id}: {'dry run over' if dry_run else 'replaying'} {plan.get('records', 0)} record(s) "
                   f"of {plan.get('topic')} from {plan.get('from')} to {plan.get('to') or 'now'}, to "
                   + ", ".join(f"{t['id']} ({t['label']})" for t in plan.get("targets", [])), err=True)
        return job if detach else await _follow(wal, job, "replaying")

    job = _remote(ctx, url).run(run, request=f"POST /v1/replay/{namespace}")
    _echo_job(job, output)
    if output != "json" and dry_run:
        for e in job.samples.get("would_apply", []):
            click.echo(f"would apply {e['id']} (key {e['key']}, written {e['written_at']}, partition "
                       f"{e['partition']} offset {e['offset']})")
    if detach:
        return
    if job.state != "SUCCEEDED":
        raise click.ClickException(f"replay {job.id} ended {job.state}" + (f": {job.error}" if job.error else ""))
    if job.counts.get("failed"):
        first = (job.samples.get("failed") or [{}])[0]
        raise click.ClickException(
            f"replay {job.id}: {job.counts['failed']} entr(ies) failed (first: {first.get('id')} at "
            f"{first.get('target')}: {_one_line(str(first.get('error')))}); `walstream job show {job.id} -o json` "
            "lists them"
        )


@main.group()
def index() -> None:
    """A namespace's secondary index (Elasticsearch) against its table (Cassandra)."""


@index.command("check")
@click.argument("namespace", callback=_namespace_name)
@click.option("--table", required=True, help="The Cassandra table; its index is <index_prefix><table>.")
@click.option("--repair", is_flag=True, help="Fix the drift through the WAL: puts of the rows' values and deletes "
              "of extra documents, to the index only, at their original write times (never over newer data).")
@click.option("--rate", type=click.FloatRange(min=1, max=1e6), callback=lambda ctx, param, value: (
    None if value is None else _finite(param, value)), help="At most this many rows and documents read per second.")
@output_option
@url_option
@click.pass_context
def index_check(ctx: click.Context, namespace: str, table: str, repair: bool, rate: float | None, output: str,
                url: str | None) -> None:
    """Compare NAMESPACE's Cassandra table with its Elasticsearch index by key and write time:
    rows missing from the index, documents older than their rows (stale), documents without
    a row (extra). Exits 1 when it finds drift; with --repair, when it could not fix some."""

    async def run(wal: WalstreamClient) -> JobStatus:
        job = await wal.index_check(namespace, table, repair=repair, rate=rate)
        click.echo(f"job {job.id}: checking {job.plan.get('table')} against index {job.plan.get('index')}", err=True)
        return await _follow(wal, job, "checking")

    job = _remote(ctx, url).run(run, request=f"POST /v1/index/{namespace}/{table}/check")
    if output == "json":
        _echo_json(job.model_dump(mode="json"))
    else:
        c = job.counts
        click.echo(f"{c.get('rows', 0)} rows, {c.get('documents', 0)} documents: {c.get('missing', 0)} missing, "
                   f"{c.get('stale', 0)} stale, {c.get('extra', 0)} extra, {c.get('index_newer', 0)} newer in the "
                   "index than the table" + (f"; repairs written {c.get('repairs_written', 0)}, failed "
                                             f"{c.get('repairs_failed', 0)}, unrepairable {c.get('unrepairable', 0)}"
                                             if repair else ""))
        for kind in ("missing", "stale", "extra", "index_newer"):
            for s in job.samples.get(kind, []):
                click.echo(f"  {kind}\t{s.get('id')}\t{orjson.dumps(s.get('key')).decode()}")
    if job.state != "SUCCEEDED":
        raise click.ClickException(f"index check {job.id} ended {job.state}" + (f": {job.error}" if job.error else ""))
    # a check fails on drift; a repair on drift it could not fix
    failing = ("repairs_failed", "unrepairable") if repair else ("missing", "stale", "extra")
    if any(job.counts.get(k) for k in failing):
        ctx.exit(1)


@main.group()
def job() -> None:
    """Background jobs (replays): show, list, cancel."""


@job.command("show")
@click.argument("job_id", callback=_job_id)
@output_option
@url_option
@click.pass_context
def job_show(ctx: click.Context, job_id: str, output: str, url: str | None) -> None:
    """A job's state, progress and counts."""
    _echo_job(_remote(ctx, url).run(lambda wal: wal.job(job_id)), output)


@job.command("list")
@output_option
@url_option
@click.pass_context
def job_list(ctx: click.Context, output: str, url: str | None) -> None:
    """The fleet's jobs, newest first."""
    listed = _remote(ctx, url).run(lambda wal: wal.jobs())
    if output == "json":
        _echo_json(listed.model_dump(mode="json"))
        return
    for j in listed.jobs:
        _echo_job(j, output)
    if listed.unknown:
        click.echo(f"not answering (their jobs are missing): {', '.join(listed.unknown)}", err=True)


@job.command("cancel")
@click.argument("job_id", callback=_job_id)
@output_option
@url_option
@click.pass_context
def job_cancel(ctx: click.Context, job_id: str, output: str, url: str | None) -> None:
    """Stop a job at its next step (what it did stays done)."""
    _echo_job(_remote(ctx, url).run(lambda wal: wal.cancel_job(job_id)), output)


# -- new-agent ---------------------------------------------------------------------------


@main.command("new-agent")
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Where to write NAME.py and test_NAME.py (agents/ in this repository).")
def new_agent_command(name: str, directory: Path) -> None:
    """Create a use-case agent NAME and its passing unit test (docs/agents.md).

    The agent consumes its own topic, keeps per-key state in a changelogged table and
    applies each record once per key; put it in agents/ (found at start) or in a package
    that lists it as a ``walstream.agents`` entry point."""
    from walstream.scaffold import ScaffoldError, new_agent

    try:
        written = new_agent(name, directory)
    except ScaffoldError as exc:
        raise click.ClickException(str(exc)) from None
    for path in written:
        click.echo(f"created {path}")
    click.echo(f"run its test: pytest {written[1]}")


if __name__ == "__main__":
    main()
