"""Config and Upstream: valid values are kept, bad ones raise ConfigError naming the setting."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from offload.config import Config, ConfigError, Upstream
from tests.servers import FIXTURES


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("localhost:3000", "localhost", 3000),
        ("http://localhost:3000", "localhost", 3000),
        ("http://localhost:3000/", "localhost", 3000),
        ("127.0.0.1:8000", "127.0.0.1", 8000),
        ("[::1]:3000", "::1", 3000),
        ("app_1.internal:65535", "app_1.internal", 65535),
    ],
)
def test_upstream_parse_accepts_host_port_forms(text: str, host: str, port: int) -> None:
    assert Upstream.parse(text) == Upstream(host=host, port=port)


@pytest.mark.parametrize(
    "text",
    [
        "localhost",
        ":3000",
        "localhost:",
        "localhost:0",
        "localhost:70000",
        "localhost:abc",
        "https://localhost:3000",
        "ftp://localhost:3000",
        "a b:3000",
        "-app:3000",
        "app..internal:3000",
        ("x" * 64) + ".internal:3000",
        ".".join(["abc"] * 70) + ":3000",
        "[nonsense]:3000",
        "unix:relative.sock",
    ],
)
def test_upstream_parse_rejects_malformed_addresses(text: str) -> None:
    with pytest.raises(ValueError, match=r".+"):
        Upstream.parse(text)


def test_unix_upstream_keeps_its_path() -> None:
    upstream = Upstream.parse("unix:/run/app.sock")
    assert upstream.unix_path == "/run/app.sock"
    assert upstream.base_url == "http://localhost"
    assert upstream.origins == ()


def test_loopback_upstream_origins_cover_every_loopback_name() -> None:
    assert Upstream.parse("localhost:3000").origins == (
        "http://localhost:3000",
        "http://127.0.0.1:3000",
        "http://[::1]:3000",
    )
    assert Upstream.parse("app:8000").origins == ("http://app:8000",)


def test_upstream_base_url_brackets_ipv6() -> None:
    assert Upstream.parse("[::1]:3000").base_url == "http://[::1]:3000"


def test_config_resolves_the_static_root() -> None:
    config = Config(static=Path("static_fixtures/../static_fixtures"))
    assert config.static == FIXTURES


@pytest.mark.parametrize(
    ("options", "setting"),
    [
        ({}, "upstream"),
        ({"upstream": "nope"}, "upstream"),
        ({"static": Path("/no/such/dir")}, "static"),
        ({"static": FIXTURES / "index.html"}, "static"),
        ({"static": FIXTURES, "port": 0}, "port"),
        ({"static": FIXTURES, "port": 65536}, "port"),
        ({"static": FIXTURES, "admin_port": -1}, "admin_port"),
        ({"static": FIXTURES, "port": 9000, "admin_port": 9000}, "admin_port"),
        ({"static": FIXTURES, "read_timeout_seconds": 0}, "read_timeout_seconds"),
        ({"static": FIXTURES, "connect_timeout_seconds": float("nan")}, "connect_timeout_seconds"),
    ],
)
def test_bad_settings_raise_config_error_naming_the_setting(
    options: dict[str, object], setting: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        Config(**options)  # type: ignore[arg-type]
    assert raised.value.setting == setting


TOKEN = "s3cret-admin-token-0123456789"


def test_admin_token_is_read_from_its_file_without_the_line_end(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}\n")
    config = Config(static=FIXTURES, admin_token_file=token_file)
    assert config.admin_token == TOKEN
    assert dataclasses.replace(config, port=8081).admin_token == TOKEN  # a copy reads it again


def test_admin_token_is_in_no_repr() -> None:
    config = Config(static=FIXTURES, admin_token=TOKEN)
    assert config.admin_token == TOKEN
    assert TOKEN not in repr(config)
    assert "admin_token_file=None" in repr(config)


@pytest.mark.parametrize(
    ("written", "token", "reason"),
    [
        ("", None, "is empty"),
        ("\n \n", None, "is empty"),
        ("short\n", None, "at least 16"),
        (TOKEN + " " + TOKEN, None, "at least 16"),  # not one token
        ("x" * 5000, None, "larger than 4 KiB"),
        (TOKEN, TOKEN + "-other", "give it one way"),
        (None, None, "no such file"),
    ],
)
def test_bad_admin_token_file_raises_config_error_without_the_token(
    tmp_path: Path, written: str | None, token: str | None, reason: str
) -> None:
    token_file = tmp_path / "token"
    if written is not None:
        token_file.write_text(written)
    with pytest.raises(ConfigError) as raised:
        Config(static=FIXTURES, admin_token=token, admin_token_file=token_file)
    assert (raised.value.setting, raised.value.value) == ("admin_token_file", str(token_file))
    assert reason in raised.value.reason
    assert TOKEN not in str(raised.value)


@pytest.mark.parametrize("token", ["short", TOKEN + "\n", "tøken-0123456789abcdef", "a b" * 8])
def test_bad_admin_token_raises_config_error_without_the_token(token: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Config(static=FIXTURES, admin_token=token)
    assert (raised.value.setting, raised.value.value) == ("admin_token", None)
    assert token not in str(raised.value)
