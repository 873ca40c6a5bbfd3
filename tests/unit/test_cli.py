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
from click.testing import CliRunner, Result

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
]
CLIENT_IDS = [" ".join(c) for c in CLIENT_COMMANDS]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the caller's worker address or debug flag, or touches the real stack."""
    for var in ("WALSTREAM_URL", "WALSTREAM_DEBUG", "WALSTREAM_TIMEOUT_S"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WALSTREAM_STACK_DIR", str(tmp_path / "stack-state"))
    monkeypatch.setenv("WALSTREAM_CACHE_DIR", str(tmp_path / "stack-cache"))


def free_port() -> int:
    """A port nothing listens on (bound, read, released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    """A real HTTP server in a thread, answering what ``respond`` says; records each request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.respond: Responder = lambda m, p, b: (200, "application/json", b"{}")
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(n) if n else b""
                body = json.loads(raw) if raw else None
                server.requests.append((self.command, self.path))
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


def run(args: list[str], env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, args, env=env)


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


@pytest.mark.parametrize("command", CLIENT_COMMANDS, ids=CLIENT_IDS)
def test_a_404_answer_is_one_line_with_the_servers_message(command: list[str], ns_file: Path, server: Server) -> None:
    server.answer(404, {"message": "unknown namespace 'orders'"})
    line = one_line_error(run(["--url", server.url, *cmd(command, ns_file)]))
    assert "answered 404 Not Found: unknown namespace 'orders'" in line


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
    assert "answered 502 Bad Gateway: <html> <h1>502 Bad Gateway</h1> </html>" in line


def test_json_of_an_unexpected_shape_is_one_line(server: Server) -> None:
    server.answer(200, ["not", "a", "namespace", "list"])
    line = one_line_error(run(["--url", server.url, "namespace", "list"]))
    assert line.startswith("Error: unexpected error: TypeError") and "--debug" in line


def test_a_redrive_that_fails_midway_says_how_far_it_got(server: Server) -> None:
    # Given two dead letters match, and the worker refuses the second redrive
    def respond(method: str, path: str, body: Any) -> tuple[int, str, bytes]:
        if body["dry_run"]:
            rows = [{"id": i, "target": {"type": "noop"}, "error_class": "permanent"} for i in ("a", "b")]
            return 200, "application/json", json.dumps({"would_redrive": rows}).encode()
        if body["ids"] == ["a"]:
            return 200, "application/json", b'{"redriven": []}'
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


def test_names_are_one_path_segment(server: Server) -> None:
    # a name with "/" or "?" must not reach another route
    server.answer(404, {"message": "unknown namespace"})
    one_line_error(run(["--url", server.url, "namespace", "show", "a/b?c"]))
    assert server.requests == [("GET", "/v1/namespaces/a%2Fb%3Fc")]


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
        "process; stop what uses it or set WALSTREAM_WEB_PORT (and WALSTREAM_WEB_HOST) to a free address"
    ]


def test_worker_with_an_invalid_setting_is_one_line_naming_the_variable() -> None:
    line = one_line_error(run(["worker"], env={"WALSTREAM_WEB_PORT": "abc"}))
    assert line.startswith("Error: invalid setting: WALSTREAM_WEB_PORT='abc': Input should be a valid integer")


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
