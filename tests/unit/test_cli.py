"""The ``walstream`` command fails as a user needs it to: one line naming the problem and the fix.

Client commands run against a closed port and against a tiny real HTTP server in a thread
(answering errors, non-JSON, nothing at all); start-up commands against a taken port, a
missing JDK/Maven, Kafka or Cassandra down. Nothing here reaches the shared services:
every test gets its own stack and cache directories, and the worker tests use a closed broker.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner, Result

from tests.unit.conftest import free_port
from walstream.cli import main

# every wait below is bounded on its own (HTTP timeouts, subprocess timeouts); this only turns
# a hang into a failure where pytest-timeout is installed
pytestmark = pytest.mark.timeout(60)

#: (method, path, body) -> (status, content-type, body)
Responder = Callable[[str, str, Any], tuple[int, str, bytes]]

NS_YAML = "name: orders\ntargets:\n  - type: noop\n"

#: every command that talks to a worker; ``{file}`` is a valid namespace file
CLIENT_COMMANDS = [
    ["namespace", "apply", "{file}"],
    ["namespace", "list"],
    ["namespace", "show", "orders"],
    ["namespace", "delete", "orders"],
    ["dlq", "list", "orders"],
    ["dlq", "show", "orders", "e1"],
    ["dlq", "redrive", "orders"],
    ["dlq", "redrive", "orders", "--execute"],
    ["entry", "status", "orders", "e1"],
    ["entry", "cancel", "orders", "e1"],
    ["replay", "orders", "--from", "2026-11-30T10:00:00Z"],
    ["job", "show", "replay.orders.0123456789ab"],
    ["job", "list"],
    ["job", "cancel", "replay.orders.0123456789ab"],
]
CLIENT_IDS = [" ".join(c) for c in CLIENT_COMMANDS]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the caller's worker address or debug flag, or touches the real stack."""
    for var in ("WALSTREAM_URL", "WALSTREAM_DEBUG", "WALSTREAM_TIMEOUT_S"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WALSTREAM_STACK_DIR", str(tmp_path / "stack-state"))
    monkeypatch.setenv("WALSTREAM_CACHE_DIR", str(tmp_path / "stack-cache"))


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port some other process (here: a socket) listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


@pytest.fixture
def ns_file(tmp_path: Path) -> Path:
    f = tmp_path / "orders.yaml"
    f.write_text(NS_YAML)
    return f


class Server:
    """A real HTTP server in a thread, answering what ``respond`` says; records each request
    (``requests``: method and path; ``received``: also the JSON body and the headers)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.received: list[tuple[str, str, Any, dict[str, str]]] = []
        self.respond: Responder = lambda m, p, b: (200, "application/json", b"{}")
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(n) if n else b""
                body = json.loads(raw) if raw else None
                server.requests.append((self.command, self.path))
                server.received.append((self.command, self.path, body, dict(self.headers.items())))
                status, ctype, out = server.respond(self.command, self.path, body)
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_PUT = do_POST = do_DELETE = _any

            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def answer(self, status: int, body: Any, ctype: str = "application/json") -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.respond = lambda m, p, b: (status, ctype, raw)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


@pytest.fixture
def silent_url() -> Iterator[str]:
    """Accepts connections (the kernel's backlog) but never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def run(args: list[str], env: dict[str, str] | None = None, input: str | None = None) -> Result:
    return CliRunner().invoke(main, args, env=env, input=input)


def dead_letter(entry_id: str, target_id: str = "t1") -> dict[str, Any]:
    """A dead letter as ``GET /v1/dlq/{ns}`` lists it."""
    return {
        "id": entry_id,
        "namespace": "orders",
        "key": entry_id,
        "target": {"type": "noop"},
        "target_id": target_id,
        "error_class": "permanent",
        "message": "refused by the target",
        "attempts": 1,
        "first_failure_at": "2030-01-01T00:00:00.000+00:00",
        "last_failure_at": "2030-01-01T00:00:01.000+00:00",
        "source": {"topic": "wal.orders", "partition": 0, "offset": 7},
    }


def cmd(command: list[str], file: Path) -> list[str]:
    return [a.replace("{file}", str(file)) for a in command]


def one_line_error(result: Result) -> str:
    """The single stderr line of a failed command (asserting there is exactly one)."""
    assert result.exit_code != 0, result.output
    # CliRunner catches what escapes; only click's own exit is a handled failure
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# -- against no worker -------------------------------------------------------------------


@pytest.mark.parametrize("command", CLIENT_COMMANDS, ids=CLIENT_IDS)
def test_no_worker_at_the_address_is_one_line_naming_it_and_the_fix(command: list[str], ns_file: Path) -> None:
    # Given nothing listens at the address
    url = f"http://127.0.0.1:{free_port()}"
    # When a client command runs against it
    line = one_line_error(run(["--url", url, *cmd(command, ns_file)]))
    # Then one line says what is wrong and what to do
    assert line == (
        f"Error: no walstream worker answers at {url}: connection refused. "
        "Start one with `walstream worker` or point --url / WALSTREAM_URL at one."
    )


@pytest.mark.parametrize("command", CLIENT_COMMANDS, ids=CLIENT_IDS)
def test_a_worker_that_does_not_answer_in_time_is_one_line(command: list[str], ns_file: Path, silent_url: str) -> None:
    line = one_line_error(run(["--url", silent_url, "--timeout", "0.3", *cmd(command, ns_file)]))
    assert f"the worker at {silent_url} did not answer" in line and "--timeout" in line


def test_a_host_that_does_not_resolve_is_one_line() -> None:
    line = one_line_error(run(["--url", "http://walstream-test.invalid:6066", "namespace", "list"]))
    assert "cannot resolve the host of http://walstream-test.invalid:6066" in line


def test_an_address_that_is_not_an_http_url_is_a_usage_error() -> None:
    result = run(["--url", "localhost:6066", "namespace", "list"])
    assert result.exit_code == 2
    assert "'localhost:6066' is not an http(s) URL" in result.stderr
    assert "Traceback" not in result.output


# -- against a server that answers badly -------------------------------------------------


@pytest.mark.parametrize("command", CLIENT_COMMANDS, ids=CLIENT_IDS)
def test_a_5xx_answer_is_one_line_with_the_servers_message(command: list[str], ns_file: Path, server: Server) -> None:
    server.answer(500, {"message": "disk on fire"})
    line = one_line_error(run(["--url", server.url, *cmd(command, ns_file)]))
    assert f"the worker at {server.url} answered 500 Internal Server Error: disk on fire" in line
    method, path = line.split()[1:3]  # the request that failed, as sent
    assert (method, path) in [(m, p.split("?")[0]) for m, p in server.requests]


@pytest.mark.parametrize("command", CLIENT_COMMANDS, ids=CLIENT_IDS)
def test_a_404_answer_is_one_line_with_the_servers_message(command: list[str], ns_file: Path, server: Server) -> None:
    server.answer(404, {"message": "unknown namespace 'orders'"})
    line = one_line_error(run(["--url", server.url, *cmd(command, ns_file)]))
    assert "answered 404 Not Found: unknown namespace 'orders'" in line


@pytest.mark.parametrize(("status", "fix"), [(401, "--token or WALSTREAM_TOKEN"), (403, "use another")])
def test_a_401_or_403_names_the_token_option(status: int, fix: str, ns_file: Path, server: Server) -> None:
    server.answer(status, {"message": "changing a namespace needs an admin token"})
    line = one_line_error(run(["--url", server.url, "namespace", "apply", str(ns_file)]))
    assert "needs an admin token" in line and fix in line


@pytest.mark.parametrize("command", CLIENT_COMMANDS, ids=CLIENT_IDS)
def test_an_answer_that_is_not_json_is_one_line(command: list[str], ns_file: Path, server: Server) -> None:
    # Given something that is not a walstream worker answers 200 with HTML
    server.answer(200, b"<html>\n<body>welcome to nginx</body>\n</html>\n", ctype="text/html")
    line = one_line_error(run(["--url", server.url, *cmd(command, ns_file)]))
    assert "is not JSON (text/html: <html> <body>welcome to nginx</body> </html>)" in line
    assert "WALSTREAM_URL" in line


def test_an_error_page_that_is_not_json_is_quoted_on_one_line(server: Server) -> None:
    server.answer(502, b"<html>\n<h1>502 Bad Gateway</h1>\n</html>", ctype="text/html")
    line = one_line_error(run(["--url", server.url, "namespace", "list"]))
    assert "answered 502 Bad Gateway with no walstream message (text/html: <html> <h1>502 Bad Gateway</h1> " \
        "</html>): a proxy or another server answered, not a walstream worker" in line
    assert "the worker at" not in line  # not said to be walstream's answer


def test_a_4xx_that_is_not_walstreams_is_not_called_the_workers(server: Server) -> None:
    server.answer(404, b"404 page not found", ctype="text/plain")
    line = one_line_error(run(["--url", server.url, "entry", "status", "orders", "e1"]))
    assert "answered 404 Not Found with no walstream message (text/plain: 404 page not found)" in line
    assert "the worker at" not in line


def test_json_that_is_not_an_object_is_one_line(server: Server) -> None:
    server.answer(200, ["not", "a", "namespace", "list"])
    line = one_line_error(run(["--url", server.url, "namespace", "list"]))
    assert line == (
        f"Error: {server.url} answered GET /v1/namespaces with JSON that is not a walstream answer "
        """(application/json: ["not","a","namespace","list"]); """
        "is --url / WALSTREAM_URL a walstream worker's HTTP API?"
    )


def test_json_of_an_unexpected_shape_is_one_line(server: Server) -> None:
    # an object, but not one this walstream knows: a dead letter without its fields
    server.answer(200, {"dead_letters": [{"id": "e1"}]})
    line = one_line_error(run(["--url", server.url, "dlq", "list", "orders"]))
    assert line.startswith(f"Error: the worker at {server.url} answered with JSON this walstream does not understand")
    assert "DeadLetter" in line and "--debug" in line
    # and a shape nothing checks is still one line, pointing at --debug
    server.answer(200, {"unexpected": True})
    line = one_line_error(run(["--url", server.url, "namespace", "list"]))
    assert line.startswith("Error: unexpected error: KeyError") and "--debug" in line


def test_a_redrive_that_fails_midway_says_how_far_it_got(server: Server) -> None:
    # Given two dead letters match, and the worker refuses the second redrive
    def respond(method: str, path: str, body: Any) -> tuple[int, str, bytes]:
        if method == "GET":  # the entries' states before their redrive
            return 404, "application/json", b'{"message": "no entry"}'
        if body["dry_run"]:
            rows = [dead_letter(i) for i in ("a", "b")]
            return 200, "application/json", json.dumps({"dry_run": True, "would_redrive": rows}).encode()
        if body["ids"] == ["a"]:
            return 200, "application/json", b'{"dry_run": false, "redriven": 1}'
        return 503, "application/json", b'{"message": "owner of partition 3 is down"}'

    server.respond = respond
    result = run(["--url", server.url, "dlq", "redrive", "orders", "--execute", "--rate", "1000"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.splitlines()[-1] == (
        f"Error: redrive stopped after 1 of 2 at 'b': POST /v1/dlq/orders/redrive failed: the worker at "
        f"{server.url} answered 503 Service Unavailable: owner of partition 3 is down"
    )


# -- the address: --url, WALSTREAM_URL, per command ---------------------------------------


def test_url_option_is_used(server: Server) -> None:
    server.answer(200, {"namespaces": []})
    result = run(["--url", server.url, "namespace", "list"])
    assert result.exit_code == 0, result.output
    assert server.requests == [("GET", "/v1/namespaces")]


def test_walstream_url_is_used(server: Server) -> None:
    server.answer(200, {"namespaces": [{"name": "orders", "shard": "default", "version": 2, "targets": []}]})
    result = run(["namespace", "list"], env={"WALSTREAM_URL": server.url})
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("orders\tshard=default\tversion=2")
    assert server.requests == [("GET", "/v1/namespaces")]


def test_a_commands_own_url_overrides_the_global_one(server: Server) -> None:
    server.answer(200, {"namespaces": []})
    closed = f"http://127.0.0.1:{free_port()}"
    result = run(["namespace", "list", "--url", server.url], env={"WALSTREAM_URL": closed})
    assert result.exit_code == 0, result.output
    assert server.requests == [("GET", "/v1/namespaces")]


@pytest.mark.parametrize("command", [
    ["namespace", "show", "{name}"], ["namespace", "delete", "{name}"],
    ["replay", "{name}", "--from", "2026-01-01T00:00Z"], ["dlq", "list", "{name}"],
    ["entry", "status", "{name}", "e1"], ["index", "check", "{name}", "--table", "t"],
])
@pytest.mark.parametrize("name", ["a/b?c", "..", ".", "", "Orders"])
def test_a_namespace_argument_that_is_no_name_is_refused_before_any_request(
    server: Server, command: list[str], name: str
) -> None:
    # a name with "/", "?" or only dots would reach another route ("GET /v1" for "..")
    result = run(["--url", server.url, *[a.replace("{name}", name) for a in command]])
    assert result.exit_code == 2 and "is not a namespace name" in result.stderr, result.stderr
    assert server.requests == []


def test_help_shows_the_address_option_its_variable_and_default() -> None:
    result = run(["--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "--url TEXT" in text and "env var: WALSTREAM_URL; default: http://127.0.0.1:6066" in text


def test_version_is_the_packages() -> None:
    result = run(["--version"])
    assert result.exit_code == 0
    assert result.output == f"walstream {importlib.metadata.version('walstream')}\n"


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, c in group.commands.items():
        yield (*prefix, name), c
        if isinstance(c, click.Group):
            yield from _commands(c, (*prefix, name))


def test_every_command_and_option_says_what_it_does() -> None:
    for path, command in [((), main), *_commands(main)]:
        result = run([*path, "--help"])
        assert result.exit_code == 0, path
        assert (command.help or "").strip(), f"{' '.join(path)} has no description"
        for p in command.params:
            if isinstance(p, click.Option):
                assert p.help, f"{' '.join(path)} {p.opts[0]} has no help"


# -- --debug -----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["--debug", "WALSTREAM_DEBUG=1"])
def test_debug_shows_the_traceback_of_the_cause(how: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    args, env = (["--debug"], None) if how == "--debug" else ([], {"WALSTREAM_DEBUG": "1"})
    result = run([*args, "--url", url, "namespace", "list"], env=env)
    assert result.exit_code == 1
    assert "Traceback" in result.stderr and "httpx.ConnectError" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("Error: no walstream worker answers at")


# -- namespace files ---------------------------------------------------------------------


def test_a_missing_namespace_file_is_one_line(tmp_path: Path) -> None:
    line = one_line_error(run(["namespace", "apply", str(tmp_path / "nope.yaml")]))
    assert line == f"Error: {tmp_path / 'nope.yaml'}: no such file"


def test_a_directory_as_namespace_file_is_one_line(tmp_path: Path) -> None:
    line = one_line_error(run(["namespace", "apply", str(tmp_path)]))
    assert line == f"Error: {tmp_path}: is a directory, expected a YAML or JSON file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_namespace_file_is_one_line(ns_file: Path) -> None:
    ns_file.chmod(0)
    line = one_line_error(run(["namespace", "apply", str(ns_file)]))
    assert line == f"Error: {ns_file}: not readable (permission denied)"


def test_an_invalid_namespace_file_is_one_line_with_every_problem(tmp_path: Path, server: Server) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("name: ok\ntargets:\n  - type: carrier-pigeon\nretry: {max_attempts: 0}\n")
    line = one_line_error(run(["--url", server.url, "namespace", "apply", str(f)]))
    assert "targets.0: unknown target type 'carrier-pigeon'" in line
    assert "retry.max_attempts: Input should be greater than or equal to 1" in line
    assert server.requests == []  # nothing was sent


def test_a_namespace_file_that_is_not_yaml_is_one_line_naming_the_file(tmp_path: Path) -> None:
    f = tmp_path / "broken.yaml"
    f.write_text("name: [ok\ntargets: 1\n")
    line = one_line_error(run(["namespace", "apply", str(f)]))
    assert line.startswith(f"Error: {f}: not valid YAML or JSON:") and "line 2" in line


# -- start-up commands -------------------------------------------------------------------


def _worker(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``walstream worker`` in its own process (it owns the event loop and Faust's globals)."""
    full = {**os.environ, "WALSTREAM_DATADIR": str(tmp_path / "worker"), "WALSTREAM_APP_ID": "cli-unit", **env}
    return subprocess.run(
        [sys.executable, "-m", "walstream.cli", "worker"], env=full, capture_output=True, text=True, timeout=60
    )


def test_worker_with_kafka_down_is_one_line(tmp_path: Path) -> None:
    broker = f"127.0.0.1:{free_port()}"
    out = _worker({"WALSTREAM_BROKER": broker, "WALSTREAM_WEB_PORT": str(free_port())}, tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    [line] = out.stderr.splitlines()
    assert line.startswith(f"Error: cannot start the worker: no Kafka answers at {broker}")
    assert "WALSTREAM_BROKER" in line and "walstream stack up" in line


def test_worker_on_a_taken_port_is_one_line(tmp_path: Path, taken_port: int) -> None:
    # the broker is closed too: the port must be checked first, before anything starts
    env = {"WALSTREAM_BROKER": f"127.0.0.1:{free_port()}", "WALSTREAM_WEB_PORT": str(taken_port)}
    out = _worker(env, tmp_path)
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        f"Error: cannot start the worker's HTTP API: port {taken_port} on 127.0.0.1 is already in use by another "
        "process; stop what uses it or set WALSTREAM_WEB_PORT (and WALSTREAM_WEB_BIND) to a free address"
    ]


def test_worker_with_an_invalid_setting_is_one_line_naming_the_variable() -> None:
    line = one_line_error(run(["worker"], env={"WALSTREAM_WEB_PORT": "abc"}))
    assert line.startswith("Error: invalid setting: WALSTREAM_WEB_PORT='abc': Input should be a valid integer")


@pytest.mark.parametrize("env", [
    {"WALSTREAM_REGION": "north", "WALSTREAM_REGION_BROKERS": "east=127.0.0.1:9092"},
    {"WALSTREAM_REGION_BROKERS": "east=127.0.0.1:9092"},
    {"WALSTREAM_REGION": "east"},
])
def test_a_bad_region_setting_is_one_line_that_shows_no_other_setting(env: dict[str, str]) -> None:
    token = "a-secret-admin-token-0123456789"
    line = one_line_error(run(["worker"], env={"WALSTREAM_ADMIN_TOKENS": token, **env}))
    assert line.startswith("Error: invalid setting: WALSTREAM_REGION"), line
    assert token not in line and "admin" not in line and "{" not in line


@pytest.fixture
def fake_jdk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A JDK 17 home as walstream checks for one, and a PATH without mvn: nothing downloads."""
    home = tmp_path / "jdk17"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "java").touch(mode=0o755)
    monkeypatch.setenv("WALSTREAM_JAVA17_HOME", str(home))
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    return home


def test_stack_up_on_a_taken_port_is_one_line(fake_jdk: Path, taken_port: int) -> None:
    env = {"WALSTREAM_STACK_KAFKA_PORT": str(taken_port), "WALSTREAM_STACK_KAFKA_CONTROLLER_PORT": str(free_port())}
    line = one_line_error(run(["stack", "up", "--services", "kafka"], env=env))
    assert f"port {taken_port} on 127.0.0.1 is already in use" in line
    assert "set WALSTREAM_STACK_KAFKA_PORT to a free port" in line


def test_stack_up_without_a_jdk_is_one_line(fake_jdk: Path, tmp_path: Path) -> None:
    env = {
        "WALSTREAM_JAVA17_HOME": str(tmp_path / "no-jdk"),
        "WALSTREAM_STACK_KAFKA_PORT": str(free_port()),
        "WALSTREAM_STACK_KAFKA_CONTROLLER_PORT": str(free_port()),
    }
    line = one_line_error(run(["stack", "up", "--services", "kafka"], env=env))
    assert line.startswith("Error: kafka: no JDK 17 found; set WALSTREAM_JAVA17_HOME")


def test_stack_up_without_maven_is_one_line(fake_jdk: Path) -> None:
    env = {
        "WALSTREAM_STACK_KAFKA_PORT": str(free_port()),
        "WALSTREAM_STACK_KAFKA_CONTROLLER_PORT": str(free_port()),
    }
    line = one_line_error(run(["stack", "up", "--services", "kafka"], env=env))
    assert line.startswith("Error: kafka: Maven (mvn) is not on PATH")


def test_stack_with_an_unknown_service_or_a_bad_port_is_one_line() -> None:
    line = one_line_error(run(["stack", "logs", "zookeeper"]))
    assert line == "Error: unknown service 'zookeeper'; known: kafka, cassandra, elasticsearch, kafka-west"
    line = one_line_error(run(["stack", "status"], env={"WALSTREAM_STACK_CASSANDRA_PORT": "ninety"}))
    assert "WALSTREAM_STACK_*_PORT" in line and "'ninety'" in line


def test_demo_with_cassandra_down_is_one_line() -> None:
    env = {"WALSTREAM_CASSANDRA_PORT": str(free_port()), "WALSTREAM_WEB_PORT": str(free_port())}
    line = one_line_error(run(["demo"], env=env))
    assert line.startswith("Error: demo: no Cassandra answers at 127.0.0.1:")
    assert "`walstream stack up`" in line


def test_demo_on_a_taken_port_is_one_line(taken_port: int) -> None:
    line = one_line_error(run(["demo"], env={"WALSTREAM_WEB_PORT": str(taken_port)}))
    assert f"port {taken_port} on 127.0.0.1 is already in use" in line and "WALSTREAM_WEB_PORT" in line


@pytest.mark.parametrize("args", [["--wait", "nan"], ["--wait", "inf"], ["--rate", "1e-300"], ["--rate", "nan"]])
def test_redrive_refuses_waits_and_rates_that_never_end(args: list[str]) -> None:
    result = CliRunner().invoke(main, ["dlq", "redrive", "ns", "--execute", *args])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output


def test_settings_refuse_infinite_durations(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from walstream.settings import Settings

    monkeypatch.setenv("WALSTREAM_ENTRY_RETENTION_S", "inf")
    with pytest.raises(ValidationError, match="finite"):
        Settings()


# -- writing entries ----------------------------------------------------------------------


def routes(table: dict[tuple[str, str], Any]) -> Responder:
    """Answers ``(method, path without query)`` from ``table``: a (status, JSON) pair, or a
    list of them answered in turn (the last one again once they run out); else 404."""

    def respond(method: str, path: str, body: Any) -> tuple[int, str, bytes]:
        answer = table.get((method, path.split("?")[0]), (404, {"message": f"no route {method} {path}"}))
        if isinstance(answer, list):
            answer = answer.pop(0) if len(answer) > 1 else answer[0]
        status, doc = answer
        return status, "application/json", json.dumps(doc).encode()

    return respond


WRITTEN = {"durable": "SUCCESS", "id": "e1", "partition": 2, "offset": 17}


def writes(server: Server) -> list[Any]:
    """The bodies of the writes the server received."""
    return [body for method, path, body, _ in server.received if (method, path) == ("POST", "/v1/log")]


def test_write_prints_where_the_entry_is_and_sends_what_was_given(server: Server) -> None:
    # Given a worker that takes the write
    server.respond = routes({("POST", "/v1/log"): (200, WRITTEN)})
    # When an entry is written with a key, an id and a delay
    result = run(["--url", server.url, "write", "orders", '{"title": "Heat", "year": 1995}',
                  "--key", "movie:42", "--id", "e1", "--delay-ms", "5000"])
    # Then it says where the entry is, and the worker got exactly that entry
    assert result.exit_code == 0, result.output
    assert result.stdout == "SUCCESS\tid=e1\tpartition=2\toffset=17\n"
    assert writes(server) == [{"namespace": "orders", "id": "e1", "key": "movie:42",
                               "payload": {"title": "Heat", "year": 1995}, "lifecycle": {"delay_ms": 5000}}]


def test_write_output_json_is_the_apis_answer(server: Server) -> None:
    server.respond = routes({("POST", "/v1/log"): (200, {**WRITTEN, "duplicate": True})})
    result = run(["--url", server.url, "write", "orders", "1", "--id", "e1", "-o", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["durable"] == "SUCCESS" and (doc["id"], doc["partition"], doc["offset"]) == ("e1", 2, 17)
    assert doc["duplicate"] is True


def test_write_gives_an_entry_without_id_one_and_prints_it(server: Server) -> None:
    server.respond = lambda m, p, b: (200, "application/json", json.dumps({**WRITTEN, "id": b["id"]}).encode())
    result = run(["--url", server.url, "write", "orders", "{}"])
    assert result.exit_code == 0, result.output
    [sent] = writes(server)
    assert len(sent["id"]) == 36 and f"id={sent['id']}\t" in result.stdout


@pytest.mark.parametrize("how", ["stdin", "file"])
def test_write_reads_the_payload_from_stdin_or_a_file(how: str, server: Server, tmp_path: Path) -> None:
    server.respond = routes({("POST", "/v1/log"): (200, WRITTEN)})
    f = tmp_path / "payload.json"
    f.write_text('{"n": [1, 2.5, "x"]}')
    args, stdin = (["-"], f.read_text()) if how == "stdin" else (["--payload-file", str(f)], None)
    result = run(["--url", server.url, "write", "orders", *args, "--deliver-at", "2030-01-01T12:00:00Z"], input=stdin)
    assert result.exit_code == 0, result.output
    [sent] = writes(server)
    assert sent["payload"] == {"n": [1, 2.5, "x"]} and sent["lifecycle"] == {"deliver_at": "2030-01-01T12:00:00Z"}


def test_a_deliver_at_the_worker_reads_is_sent(server: Server) -> None:
    # the CLI reads times as the worker does: a lower-case "z" is UTC there too
    server.respond = routes({("POST", "/v1/log"): (200, WRITTEN)})
    result = run(["--url", server.url, "write", "orders", "1", "--deliver-at", "2030-01-01T12:00:00z"])
    assert result.exit_code == 0, result.output
    [sent] = writes(server)
    assert sent["lifecycle"] == {"deliver_at": "2030-01-01T12:00:00z"}


def test_an_unknown_answer_is_asked_again_with_the_same_id(server: Server) -> None:
    # Given a worker that answers UNKNOWN once (Kafka did not say in time), then the outcome
    unknown = {"durable": "UNKNOWN", "id": "e1", "message": "no acknowledgement in time"}
    server.respond = routes({("POST", "/v1/log"): [(503, unknown), (200, {**WRITTEN, "duplicate": True})]})
    result = run(["--url", server.url, "write", "orders", "1", "--id", "e1"])
    # Then the same entry was sent twice, with its id, and the second answer is printed
    assert result.exit_code == 0, result.output
    assert [w["id"] for w in writes(server)] == ["e1", "e1"]
    assert result.stdout.startswith("SUCCESS\tid=e1\tpartition=2\toffset=17\tduplicate")


def test_a_write_still_unknown_after_the_retries_is_one_line_saying_what_to_do(server: Server) -> None:
    server.answer(503, {"durable": "UNKNOWN", "id": "e1", "message": "no acknowledgement in time"})
    line = one_line_error(run(["--url", server.url, "write", "orders", "1", "--id", "e1"]))
    assert line == (
        "Error: write of 'e1' to 'orders' is UNKNOWN after 4 attempt(s) (answered 503: no acknowledgement in time): "
        "it may or may not be in the log. `walstream entry status orders e1` tells; "
        "writing again with --id e1 never writes it twice."
    )
    assert [w["id"] for w in writes(server)] == ["e1"] * 4


def test_a_write_to_no_worker_is_one_line_and_not_unknown() -> None:
    """Refused on every attempt: the write was never sent, so it is certainly not written
    (not UNKNOWN), and the line says how to get a worker."""
    url = f"http://127.0.0.1:{free_port()}"
    line = one_line_error(run(["--url", url, "write", "orders", "1", "--id", "e1"]))
    assert line.startswith(f"Error: no walstream worker answers at {url}: connection refused. Start one"), line
    assert "UNKNOWN" not in line


def test_a_refused_write_is_one_line_with_the_workers_message(server: Server) -> None:
    server.answer(400, {"durable": "FAILED", "message": "payload: a mutation payload is required"})
    line = one_line_error(run(["--url", server.url, "write", "orders", "1"]))
    assert line == (
        f"Error: POST /v1/log failed: the worker at {server.url} answered 400 Bad Request: "
        "payload: a mutation payload is required"
    )
    assert len(writes(server)) == 1  # a refusal is not retried


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (['{"a": 1'], 1, "PAYLOAD_JSON: not valid JSON"),
        (['{"a": 1, "a": 2}'], 1, "duplicate key"),
        (["9007199254740993.0"], 1, "send it as a string"),
        ([], 2, "give the payload once"),
        (["1", "--payload-file", "x.json"], 2, "not both"),
        (["--payload-file", "/nonexistent/p.json"], 1, "/nonexistent/p.json: no such file"),
        (["1", "--delay-ms", "10", "--deliver-at", "2030-01-01T00:00:00Z"], 2, "--delay-ms or --deliver-at"),
        (["1", "--deliver-at", "2030-01-01T00:00:00"], 2, "has no timezone"),
        (["1", "--deliver-at", "tomorrow"], 2, "is not an ISO-8601 time"),
        (["1", "--delay-ms", "-5"], 2, "-5 is not in the range"),
    ],
    ids=["truncated", "duplicate-key", "inexact-number", "no-payload", "two-payloads", "missing-file",
         "delay-and-deliver-at", "naive-time", "not-a-time", "negative-delay"],
)
def test_bad_write_input_is_one_line_and_writes_nothing(
    args: list[str], code: int, says: str, server: Server
) -> None:
    server.respond = routes({("POST", "/v1/log"): (200, WRITTEN)})
    result = run(["--url", server.url, "write", "orders", *args])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and says in result.stderr, result.stderr
    if code == 1:
        one_line_error(result)
    assert server.requests == []


# -- entries -----------------------------------------------------------------------------

STATUS = {
    "id": "e/1", "namespace": "orders", "key": "k", "state": "DELAYED", "partition": 1, "offset": 5,
    "written_at": "2030-01-01T00:00:00.000+00:00", "due_at": "2030-01-01T01:00:00.000+00:00",
    "updated_at": "2030-01-01T00:00:00.010+00:00", "last_error": None,
    "targets": [{"target": "t1", "type": "noop", "state": "DELAYED", "attempts": 0, "last_error": None,
                 "next_attempt_at": None, "held_behind": None}],
}


def test_entry_status_prints_the_state_and_each_targets(server: Server) -> None:
    server.respond = routes({("GET", "/v1/log/orders/e%2F1"): (200, STATUS)})
    result = run(["--url", server.url, "entry", "status", "orders", "e/1"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "e/1\tDELAYED\tpartition=1\toffset=5\tdue_at=2030-01-01T01:00:00+00:00\tupdated_at=2030-01-01T00:00:00.010000+00:00",
        "  t1\tnoop\tDELAYED\tattempts=0",
    ]
    assert server.requests == [("GET", "/v1/log/orders/e%2F1")]


def test_entry_status_output_json_is_the_apis_answer(server: Server) -> None:
    server.respond = routes({("GET", "/v1/log/orders/e%2F1"): (200, STATUS)})
    result = run(["--url", server.url, "entry", "status", "orders", "e/1", "--output", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert {k: doc[k] for k in ("id", "namespace", "state", "partition", "offset")} == {
        "id": "e/1", "namespace": "orders", "state": "DELAYED", "partition": 1, "offset": 5}
    assert doc["targets"][0]["target"] == "t1" and doc["targets"][0]["state"] == "DELAYED"


def test_entry_status_waits_for_an_entry_not_consumed_yet(server: Server) -> None:
    not_yet = (404, {"message": "no entry 'e/1' in namespace 'orders'"})
    server.respond = routes({("GET", "/v1/log/orders/e%2F1"): [not_yet, not_yet, (200, STATUS)]})
    result = run(["--url", server.url, "entry", "status", "orders", "e/1", "--wait", "10"])
    assert result.exit_code == 0, result.output
    assert len(server.requests) == 3


def test_entry_status_of_an_unknown_entry_is_one_line_suggesting_wait(server: Server) -> None:
    server.answer(404, {"message": "no entry 'e1' in namespace 'orders' (never written, not yet consumed, ...)"})
    line = one_line_error(run(["--url", server.url, "entry", "status", "orders", "e1"]))
    assert "answered 404 Not Found: no entry 'e1' in namespace 'orders'" in line and line.endswith("add --wait 5")


def test_entry_cancel_sends_the_key_and_prints_the_state(server: Server) -> None:
    server.respond = routes({("DELETE", "/v1/log/orders/e1"): (200, {**STATUS, "id": "e1", "state": "CANCELLED"})})
    result = run(["--url", server.url, "entry", "cancel", "orders", "e1", "--key", "k/1"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("e1\tCANCELLED\t")
    assert server.requests == [("DELETE", "/v1/log/orders/e1?key=k%2F1")]
    json_out = run(["--url", server.url, "entry", "cancel", "orders", "e1", "-o", "json"])
    assert json.loads(json_out.stdout)["state"] == "CANCELLED"


def test_cancelling_a_delivered_entry_is_one_line(server: Server) -> None:
    server.answer(409, {**STATUS, "state": "DELIVERED", "message": "entry is already DELIVERED"})
    line = one_line_error(run(["--url", server.url, "entry", "cancel", "orders", "e1"]))
    assert line == (
        f"Error: DELETE /v1/log/orders/e1 failed: the worker at {server.url} answered 409 Conflict: "
        "entry is already DELIVERED"
    )


# -- namespace validate, apply --dry-run ---------------------------------------------------

LIVE = {"name": "orders", "shard": "default", "targets": [{"type": "noop"}],
        "retry": {"initial_delay_ms": 100, "multiplier": 2.0, "max_delay_ms": 30000, "max_attempts": 8,
                  "jitter": 0.2},
        "ordering": "key", "description": "", "version": 4}


def test_validate_says_ok_without_a_worker(ns_file: Path) -> None:
    result = run(["--url", f"http://127.0.0.1:{free_port()}", "namespace", "validate", str(ns_file)])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{ns_file}: OK (namespace orders, 1 target(s))\n"


def test_validate_names_every_problem_on_one_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("name: Bad\ntargets:\n  - type: carrier-pigeon\nretry: {max_attempts: 0}\nordering: yes\n")
    line = one_line_error(run(["namespace", "validate", str(f)]))
    assert line.startswith(f"Error: {f}: name: ")
    for problem in ("targets.0: unknown target type 'carrier-pigeon'",
                    "retry.max_attempts: Input should be greater than or equal to 1", "ordering: "):
        assert problem in line


def test_validate_reads_files_as_apply_does(tmp_path: Path) -> None:
    # YAML 1.2 core schema, as the worker: `010` is refused
    f = tmp_path / "octal.yaml"
    f.write_text("name: orders\ntargets: [{type: noop}]\nretry: {max_attempts: 010}\n")
    validated, applied = (one_line_error(run(["namespace", c, str(f)])) for c in ("validate", "apply"))
    assert validated == applied and "010" in validated


def test_dry_run_shows_the_difference_and_writes_nothing(tmp_path: Path, server: Server) -> None:
    # Given a live namespace, and a file that changes its retries
    server.respond = routes({("GET", "/v1/namespaces/orders"): (200, LIVE)})
    f = tmp_path / "orders.yaml"
    f.write_text("name: orders\ntargets: [{type: noop}]\nretry: {max_attempts: 3}\n")
    # When it is applied with --dry-run
    result = run(["--url", server.url, "namespace", "apply", str(f), "--dry-run"])
    # Then the diff shows the change, and only a GET was sent
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "namespace orders would change (dry run: nothing written):"
    assert lines[1:3] == ["--- orders (live, version 4)", f"+++ {f}"]
    assert [ln for ln in lines[3:] if ln[:1] in "+-"] == ["-  max_attempts: 8", "+  max_attempts: 3"]
    assert server.requests == [("GET", "/v1/namespaces/orders")]


def test_dry_run_of_the_live_config_says_no_changes(ns_file: Path, server: Server) -> None:
    server.respond = routes({("GET", "/v1/namespaces/orders"): (200, LIVE)})
    result = run(["--url", server.url, "namespace", "apply", str(ns_file), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"no changes: {ns_file} matches namespace orders (version 4)\n"


def test_dry_run_of_a_new_namespace_says_so(ns_file: Path, server: Server) -> None:
    server.answer(404, {"message": "unknown namespace 'orders'"})
    result = run(["--url", server.url, "namespace", "apply", str(ns_file), "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"new namespace orders: applying {ns_file} would create it (dry run: nothing written)"
    assert "+name: orders" in lines and "+- type: noop" in lines
    assert server.requests == [("GET", "/v1/namespaces/orders")]


def test_dry_run_of_an_invalid_file_asks_nothing(tmp_path: Path, server: Server) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("name: orders\ntargets: []\n")
    line = one_line_error(run(["--url", server.url, "namespace", "apply", str(f), "--dry-run"]))
    assert "targets: List should have at least 1 item" in line
    assert server.requests == []


@pytest.mark.parametrize("answer", [(500, {"message": "disk on fire"}), (200, ["not", "a", "namespace"])])
def test_dry_run_failures_are_one_line(answer: tuple[int, Any], ns_file: Path, server: Server) -> None:
    server.answer(*answer)
    line = one_line_error(run(["--url", server.url, "namespace", "apply", str(ns_file), "--dry-run"]))
    assert line.startswith(("Error: GET /v1/namespaces/orders failed: ", f"Error: {server.url} answered GET"))
    assert [m for m, _ in server.requests] == ["GET"]


def test_dry_run_against_no_worker_is_one_line(ns_file: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    line = one_line_error(run(["--url", url, "namespace", "apply", str(ns_file), "--dry-run"]))
    assert line.startswith(f"Error: no walstream worker answers at {url}: connection refused.")


# -- --output on every read command --------------------------------------------------------


def test_namespace_list_and_show_output_json(server: Server) -> None:
    server.respond = routes({("GET", "/v1/namespaces"): (200, {"namespaces": [LIVE]}),
                             ("GET", "/v1/namespaces/orders"): (200, LIVE)})
    listed = run(["--url", server.url, "namespace", "list", "-o", "json"])
    shown = run(["--url", server.url, "namespace", "show", "orders", "--output", "json"])
    assert json.loads(listed.stdout) == {"namespaces": [LIVE]}
    assert json.loads(shown.stdout) == LIVE
    text = run(["--url", server.url, "namespace", "show", "orders"])
    assert yaml.safe_load(text.stdout) == LIVE  # text: YAML, as a namespace file


def test_dlq_list_and_show_output_json(server: Server) -> None:
    server.respond = routes({("GET", "/v1/dlq/orders"): (200, {"dead_letters": [dead_letter("a")]})})
    for command in (["dlq", "list", "orders"], ["dlq", "show", "orders", "a"]):
        result = run(["--url", server.url, *command, "-o", "json"])
        assert result.exit_code == 0, result.output
        [row] = json.loads(result.stdout)["dead_letters"]
        assert row["id"] == "a" and row["target_id"] == "t1" and row["source"]["offset"] == 7
        assert row["first_failure_at"].startswith("2030-01-01T00:00:00")
    listed = run(["--url", server.url, "dlq", "list", "orders"])
    assert listed.stdout.startswith("a\tnoop\tpermanent\tattempts=1\t2030-01-01T00:00:01+00:00\trefused by the target")
    assert server.requests[0] == ("GET", "/v1/dlq/orders?limit=1000")
    assert server.requests[1] == ("GET", "/v1/dlq/orders?id=a")


def test_redrive_dry_run_output_json(server: Server) -> None:
    server.respond = routes({("POST", "/v1/dlq/orders/redrive"): (200, {"dry_run": True,
                                                                          "would_redrive": [dead_letter("a")]})})
    result = run(["--url", server.url, "dlq", "redrive", "orders", "-o", "json", "--error-class", "permanent"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["dry_run"] is True and [d["id"] for d in doc["would_redrive"]] == ["a"]
    [(_, _, body, _)] = server.received
    assert body["dry_run"] is True and body["error_class"] == "permanent"


def redriving(server: Server, updated_after: list[str], state_after: str) -> None:
    """A worker with dead letter 'a' (target t1), DEAD since 00:00:01; its status answers
    ``updated_after`` in turn after the redrive (the last one again), with t1 in ``state_after``."""
    before = {**STATUS, "id": "a", "state": "DEAD", "updated_at": "2030-01-01T00:00:01.000+00:00",
              "targets": [{**STATUS["targets"][0], "state": "DEAD", "last_error": "refused"}]}
    redriven: list[bool] = []

    def respond(method: str, path: str, body: Any) -> tuple[int, str, bytes]:
        if method == "POST" and body["dry_run"]:
            doc: Any = {"dry_run": True, "would_redrive": [dead_letter("a")]}
        elif method == "POST":
            redriven.append(True)
            doc = {"dry_run": False, "redriven": 1, "pending": 1}
        elif not redriven:
            doc = before
        else:
            at = updated_after.pop(0) if len(updated_after) > 1 else updated_after[0]
            target = {**before["targets"][0], "state": state_after, "last_error": "refused again"}
            doc = {**before, "state": state_after, "updated_at": at, "targets": [target]}
        return 200, "application/json", json.dumps(doc).encode()

    server.respond = respond


def test_redrive_reports_each_outcome_written_after_it(server: Server) -> None:
    redriving(server, ["2030-01-01T00:00:01.000+00:00", "2030-01-01T00:05:00.000+00:00"], "DELIVERED")
    result = run(["--url", server.url, "dlq", "redrive", "orders", "--execute", "--rate", "1000", "--wait", "10"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["a (noop): DELIVERED", "redrove 1 dead letter(s): all delivered"]
    # and -o json prints what the API answers an executed redrive (the summary goes to stderr)
    redriving(server, ["2030-01-01T00:05:00.000+00:00"], "DELIVERED")
    as_json = run(["--url", server.url, "dlq", "redrive", "orders", "--execute", "-o", "json", "--wait", "10"])
    assert as_json.stderr.splitlines()[-1] == "redrove 1 dead letter(s): all delivered"
    doc = json.loads(as_json.stdout)
    assert (doc["dry_run"], doc["redriven"], doc["delivered"]) == (False, 1, 1)
    assert doc["results"] == [{"id": "a", "target_id": "t1", "outcome": "DELIVERED", "message": None}]


def test_redrive_does_not_take_the_state_before_it_for_its_outcome(server: Server) -> None:
    # Given the entry's status is never written again after the redrive (it still says DEAD)
    redriving(server, ["2030-01-01T00:00:01.000+00:00"], "DEAD")
    result = run(["--url", server.url, "dlq", "redrive", "orders", "--execute", "--wait", "1"])
    # Then its outcome is PENDING, not the DEAD of before
    assert result.exit_code == 1
    assert result.stdout.startswith("a (noop): PENDING: not settled within 1 s")
    assert result.stderr.splitlines()[-1] == (
        "Error: redrove 1 dead letter(s): 0 delivered, 0 dead-lettered again, 1 not settled within 1 s")


def test_redrive_reports_a_new_death_with_its_reason(server: Server) -> None:
    redriving(server, ["2030-01-01T00:05:00.000+00:00"], "DEAD")
    result = run(["--url", server.url, "dlq", "redrive", "orders", "--execute", "--wait", "10"])
    assert result.exit_code == 1
    assert result.stdout.startswith("a (noop): DEAD: refused again")
    assert "0 delivered, 1 dead-lettered again, 0 not settled" in result.stderr


# -- the token -----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["--token", "WALSTREAM_TOKEN"])
def test_the_token_is_sent_as_a_bearer_token(how: str, server: Server) -> None:
    server.respond = routes({("GET", "/v1/namespaces"): (200, {"namespaces": []}),
                             ("POST", "/v1/log"): (200, WRITTEN)})
    args, env = (["--token", "s3cret"], None) if how == "--token" else ([], {"WALSTREAM_TOKEN": "s3cret"})
    assert run([*args, "--url", server.url, "namespace", "list"], env=env).exit_code == 0
    assert run([*args, "--url", server.url, "write", "orders", "1"], env=env).exit_code == 0
    assert [h.get("Authorization") for _, _, _, h in server.received] == ["Bearer s3cret"] * 2


def test_without_a_token_no_authorization_is_sent(server: Server) -> None:
    server.answer(200, {"namespaces": []})
    assert run(["--url", server.url, "namespace", "list"], env={"WALSTREAM_TOKEN": ""}).exit_code == 0
    [(_, _, _, headers)] = server.received
    assert "Authorization" not in headers


# -- shell completion ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shell", "expected"),
    [
        ("bash", "complete -o nosort -F _walstream_completion walstream"),
        ("zsh", "#compdef walstream"),
        ("fish", "complete --no-files --command walstream"),
    ],
)
def test_the_completion_script_is_produced(shell: str, expected: str) -> None:
    # what the README tells to run: _WALSTREAM_COMPLETE=<shell>_source walstream
    result = CliRunner().invoke(main, [], prog_name="walstream", env={"_WALSTREAM_COMPLETE": f"{shell}_source"})
    assert result.exit_code == 0, result.output
    assert expected in result.stdout


def test_completion_offers_the_commands() -> None:
    env = {"_WALSTREAM_COMPLETE": "bash_complete", "COMP_WORDS": "walstream entry s", "COMP_CWORD": "2"}
    result = CliRunner().invoke(main, [], prog_name="walstream", env=env)
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == ["plain,status"]


@pytest.mark.parametrize("value, problem", [
    ("yesterday", "not an ISO-8601 time"),
    ("2026-11-30T10:00:00", "needs a timezone"),
])
def test_a_replay_time_that_is_not_one_is_a_usage_error_naming_it(value: str, problem: str) -> None:
    result = run(["replay", "orders", "--from", value])
    assert result.exit_code == 2 and problem in result.stderr and "--from" in result.stderr, result.stderr


@pytest.mark.parametrize("job_id", ["", ".", "..", "replay.orders", "replay.orders.x/../y"])
def test_a_job_id_that_is_not_one_is_a_usage_error(job_id: str) -> None:
    result = run(["job", "show", job_id])
    assert result.exit_code == 2 and "is not a job id" in result.stderr, result.stderr
