"""Config and Upstream: valid values are kept, bad ones raise ConfigError naming the setting."""

from __future__ import annotations

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
