"""walstream.auth: bearer parsing, digests, the admin and write checks; tokens kept only as
digests in settings reprs and namespace configs."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from walstream.auth import Auth, bearer, token_digest
from walstream.namespaces.model import NamespaceError, parse_namespace
from walstream.settings import Settings

pytestmark = pytest.mark.timeout(30)

ADMIN = "admin-token-0123456789"
WRITER = "writer-token-0123456789"


@pytest.mark.parametrize(
    ("header", "token"),
    [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), ("Bearer", None), ("", None)],
)
def test_bearer(header: str, token: str | None) -> None:
    assert bearer({"Authorization": header}) == token


def test_admin_checks_say_what_is_needed_and_never_the_token() -> None:
    auth = Auth([ADMIN])
    missing = auth.admin({}, "changing a namespace")
    wrong = auth.admin({"Authorization": "Bearer guess-guess-guess"}, "changing a namespace")
    assert missing is not None and missing.status == 401 and "admin token" in missing.message
    assert wrong is not None and wrong.status == 403 and "guess" not in wrong.message
    assert auth.admin({"Authorization": f"Bearer {ADMIN}"}, "x") is None
    assert Auth([]).admin({}, "x") is None  # no admin tokens: open


def test_write_checks() -> None:
    auth = Auth([ADMIN])
    digests = [token_digest(WRITER)]
    assert auth.writer("ns", [], None) is None  # no write tokens: open
    denied = auth.writer("ns", digests, None)
    assert denied is not None and denied.status == 401
    denied = auth.writer("ns", digests, "nope-nope-nope-nope")
    assert denied is not None and denied.status == 403
    assert auth.writer("ns", digests, WRITER) is None
    assert auth.writer("ns", digests, ADMIN) is None  # an admin may write too


def test_settings_keep_admin_tokens_secret_and_refuse_short_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WALSTREAM_ADMIN_TOKENS", f"{ADMIN}, other-token-0123456789")
    s = Settings()
    assert s.admin_token_list == [ADMIN, "other-token-0123456789"]
    assert ADMIN not in repr(s) and ADMIN not in str(s.model_dump())
    monkeypatch.setenv("WALSTREAM_ADMIN_TOKENS", f"{ADMIN},short")
    with pytest.raises(ValidationError, match="number \\[2\\] are shorter") as exc:
        Settings()
    assert "short'" not in str(exc.value) and ADMIN not in str(exc.value)


def test_a_namespace_keeps_write_tokens_as_digests() -> None:
    cfg = parse_namespace({"name": "ns", "targets": [{"type": "noop"}], "write_tokens": [WRITER, WRITER]})
    assert cfg.write_tokens == [token_digest(WRITER)]
    # applying what GET shows keeps the same digests
    assert parse_namespace(cfg.model_dump(mode="json")).write_tokens == cfg.write_tokens
    with pytest.raises(NamespaceError, match="shorter than 16"):
        parse_namespace({"name": "ns", "targets": [{"type": "noop"}], "write_tokens": ["short"]})


def test_the_command_line_never_prints_a_bad_admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from walstream.cli import main

    monkeypatch.setenv("WALSTREAM_ADMIN_TOKENS", f"{ADMIN},short")
    for args in (["worker"], ["--debug", "worker"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1
        assert "WALSTREAM_ADMIN_TOKENS=<hidden>" in result.output
        assert ADMIN not in result.output and "short'" not in result.output
