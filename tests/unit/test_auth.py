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
    [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Bearer\tabc", "abc"), ("Basic abc", None), ("Bearer", None),
     ("Bearer   ", None), ("", None)],
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
    with pytest.raises(ValidationError, match="token number 2 is shorter") as exc:
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


def test_a_token_that_is_not_utf8_is_merely_wrong() -> None:
    # aiohttp hands header bytes that are not UTF-8 over as surrogate escapes
    auth = Auth([ADMIN])
    denied = auth.admin({"Authorization": "Bearer caf\udce9-token-1234567890"}, "x")
    assert denied is not None and denied.status == 403
    denied = auth.writer("ns", [token_digest(WRITER)], "caf\udce9-token-1234567890")
    assert denied is not None and denied.status == 403


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ("sha256:" + "A" * 64, None),  # a digest in upper case: kept as that digest
        ("SHA256:" + "ab" * 32, None),
        ("sha256:" + "g" * 64, "starts with 'sha256:' but is not a digest"),
        ("sha256:abc", "starts with 'sha256:' but is not a digest"),
        ("space-at-the-end-token ", "may hold only"),
        ("  leading-space-token-2", "may hold only"),
        ("caf\u00e9-token-1234567890", "may hold only"),
        ("tab\tinside-the-token-xx", "may hold only"),
    ],
)
def test_write_tokens_as_given(given: str, problem: str | None) -> None:
    doc = {"name": "ns", "targets": [{"type": "noop"}], "write_tokens": [given]}
    if problem is None:
        assert parse_namespace(doc).write_tokens == [given.lower()]
    else:
        with pytest.raises(NamespaceError, match=problem) as exc:
            parse_namespace(doc)
        assert given.strip() not in str(exc.value)  # the message never carries the token
