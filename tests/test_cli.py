"""The command line: flags and OFFLOAD_* variables map onto Config; bad settings exit 2 with
one line and no traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from offload import __version__
from offload.cli import ENVIRONMENT_ONLY, OPTIONS, parse_config
from offload.config import config_fields
from tests.servers import FIXTURES, ROOT


def run_cli(*arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "offload", *arguments],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**_environ_without_offload_variables(), **(env or {})},
        timeout=30,
        check=False,
    )


def _environ_without_offload_variables() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("OFFLOAD_")}


def test_every_config_field_has_exactly_one_flag() -> None:
    given_after_double_dash = {"command"}  # offload [options] -- COMMAND ...
    flagged = sorted(option.field for option in OPTIONS)
    not_flagged = given_after_double_dash | set(ENVIRONMENT_ONLY)
    assert flagged == sorted(set(config_fields()) - not_flagged)


def test_environment_variable_names_follow_the_flag() -> None:
    names = {option.flag: option.environment_variable for option in OPTIONS}
    assert names["--upstream"] == "OFFLOAD_UPSTREAM"
    assert names["--admin-port"] == "OFFLOAD_ADMIN_PORT"
    assert names["--read-timeout"] == "OFFLOAD_READ_TIMEOUT"


def test_environment_sets_values_and_flags_win() -> None:
    environ = {
        "OFFLOAD_STATIC": str(FIXTURES),
        "OFFLOAD_PORT": "7000",
        "OFFLOAD_ADMIN_PORT": "7001",
    }
    config = parse_config(["--port", "8000", "--read-timeout", "2.5"], environ)
    assert config.static == FIXTURES
    assert config.port == 8000
    assert config.admin_port == 7001
    assert config.read_timeout_seconds == 2.5


def test_switches_and_repeatable_flags() -> None:
    argv = ["--static", str(FIXTURES), "--spa", "--no-compress-static"]
    argv += ["--cache-control", "*.pdf=no-store", "--cache-control", "/a/*=public, max-age=9"]
    config = parse_config(argv, {})
    assert config.spa is True
    assert config.compress_static is False
    assert config.cache_control_rules == (("*.pdf", "no-store"), ("/a/*", "public, max-age=9"))


def test_switches_and_repeatable_flags_from_the_environment() -> None:
    environ = {
        "OFFLOAD_STATIC": str(FIXTURES),
        "OFFLOAD_SPA": "true",
        "OFFLOAD_NO_COMPRESS_STATIC": "1",
        "OFFLOAD_CACHE_CONTROL": "*.pdf=no-store; /a/*=public, max-age=9",
        "OFFLOAD_CACHE_MAX_AGE": "120",
        "OFFLOAD_IN_MEMORY_MAX_BYTES": "1024",
    }
    config = parse_config([], environ)
    assert config.spa is True
    assert config.compress_static is False
    assert config.cache_control_rules == (("*.pdf", "no-store"), ("/a/*", "public, max-age=9"))
    assert config.cache_max_age_seconds == 120
    assert config.in_memory_max_bytes == 1024
    assert parse_config([], {**environ, "OFFLOAD_SPA": "off"}).spa is False


@pytest.mark.parametrize(
    ("text", "size"),
    [("0", 0), ("1024", 1024), ("1K", 1024), ("10M", 10 * 1024**2), ("2gb", 2 * 1024**3)],
)
def test_max_body_size_takes_suffixes(text: str, size: int) -> None:
    config = parse_config(["--upstream", "localhost:3000", "--max-body-size", text], {})
    assert config.max_body_bytes == size


def test_proxy_flags_from_the_environment() -> None:
    environ = {
        "OFFLOAD_UPSTREAM": "unix:/run/app.sock",
        "OFFLOAD_TRUSTED_PROXIES": "10.0.0.0/8, ::1",
        "OFFLOAD_NO_COMPRESS_PROXIED": "yes",
        "OFFLOAD_UPSTREAM_MAX_CONNECTIONS": "32",
    }
    config = parse_config([], environ)
    assert config.trusted_proxies == ("10.0.0.0/8", "::1")
    assert config.compress_proxied is False
    assert config.upstream_max_connections == 32
    assert config.upstream_address is not None
    assert config.upstream_address.unix_path == "/run/app.sock"


def test_watchdog_flags_apply_to_the_command_after_the_double_dash() -> None:
    argv = ["--upstream", "localhost:3000", "--app-restart", "on-failure", "--app-log", "json"]
    config = parse_config(argv, {"OFFLOAD_APP_READY_PATH": "/health"}, ["node", "app.js"])
    assert (config.app_restart, config.app_log) == ("on-failure", "json")
    assert config.app_ready_path == "/health"
    assert config.command == ("node", "app.js")


def test_hooks_from_flags_and_a_comma_separated_variable() -> None:
    argv = ["--static", str(FIXTURES), "--hook", "a:one", "--hook", "b:two", "--debug"]
    config = parse_config(argv, {})
    assert config.hooks == ("a:one", "b:two")
    assert config.debug is True
    from_environment = parse_config(["--static", str(FIXTURES)], {"OFFLOAD_HOOK": "a:one, b:two"})
    assert from_environment.hooks == ("a:one", "b:two")


def test_empty_environment_variable_counts_as_unset() -> None:
    config = parse_config(["--static", str(FIXTURES)], {"OFFLOAD_UPSTREAM": "", "OFFLOAD_PORT": ""})
    assert config.upstream is None
    assert config.port == 8080


def test_defaults_match_the_design_card() -> None:
    config = parse_config(["--static", str(FIXTURES)], {})
    assert (config.host, config.port, config.admin_port) == ("0.0.0.0", 8080, 9901)
    assert config.upstream is None


@pytest.mark.parametrize(
    ("arguments", "env", "named"),
    [
        (["--static", "/no/such/dir"], {}, "--static '/no/such/dir'"),
        (["--static", str(FIXTURES / "index.html")], {}, "--static"),
        (["--upstream", "localhost"], {}, "--upstream 'localhost'"),
        (["--upstream", "https://app:3000"], {}, "--upstream"),
        (["--upstream", "unix:app.sock"], {}, "--upstream 'unix:app.sock'"),
        (["--static", str(FIXTURES), "--port", "70000"], {}, "--port '70000'"),
        (["--static", str(FIXTURES), "--port", "http"], {}, "--port 'http'"),
        (["--static", str(FIXTURES), "--admin-port", "8080"], {}, "--admin-port"),
        (["--static", str(FIXTURES), "--read-timeout", "soon"], {}, "--read-timeout 'soon'"),
        (["--static", str(FIXTURES), "--connect-timeout", "0"], {}, "--connect-timeout"),
        ([], {"OFFLOAD_STATIC": "/no/such/dir"}, "OFFLOAD_STATIC '/no/such/dir'"),
        (["--static", str(FIXTURES)], {"OFFLOAD_PORT": "-5"}, "OFFLOAD_PORT '-5'"),
        ([], {}, "nothing to serve"),
        (["--static", str(FIXTURES), "--no-such-flag"], {}, "--no-such-flag"),
        (["--static", str(FIXTURES), "--cache-control", "no-equals"], {}, "--cache-control"),
        (["--static", str(FIXTURES), "--cache-max-age", "-1"], {}, "--cache-max-age '-1'"),
        (["--static", str(FIXTURES), "--cache-max-age", "soon"], {}, "--cache-max-age 'soon'"),
        (["--static", str(FIXTURES), "--in-memory-max-bytes", "1k"], {}, "--in-memory-max-bytes"),
        (["--static", str(FIXTURES), "--upstream", "localhost:3000", "--spa"], {}, "--spa"),
        (["--upstream", "localhost:3000", "--spa"], {}, "--spa"),
        (["--static", str(FIXTURES)], {"OFFLOAD_SPA": "maybe"}, "OFFLOAD_SPA 'maybe'"),
        (["--upstream", "localhost:3000", "--max-body-size", "ten"], {}, "--max-body-size 'ten'"),
        (["--upstream", "localhost:3000", "--trusted-proxies", "10.0.0.0/33"], {}, "--trusted"),
        (["--upstream", "localhost:3000", "--trusted-proxies", "nope"], {}, "'nope'"),
        (["--static", str(FIXTURES), "--internal-prefix", "protected"], {}, "--internal-prefix"),
        (["--upstream", "a:1", "--upstream-max-connections", "-1"], {}, "--upstream-max-conn"),
        (["--static", str(FIXTURES), "--workers", "0"], {}, "--workers '0'"),
        (["--static", str(FIXTURES), "--workers", "two"], {}, "--workers 'two'"),
        (["--static", str(FIXTURES)], {"OFFLOAD_WORKERS": "65"}, "OFFLOAD_WORKERS '65'"),
        (["--upstream", "a:1", "--app-restart", "always"], {}, "--app-restart 'always'"),
        (["--upstream", "a:1"], {"OFFLOAD_APP_LOG": "json"}, "OFFLOAD_APP_LOG 'json'"),
        (["--upstream", "a:1", "--app-restart", "sometimes", "--", "true"], {}, "'sometimes'"),
        (["--upstream", "a:1", "--app-log", "xml", "--", "true"], {}, "--app-log 'xml'"),
        (["--upstream", "a:1", "--app-ready-path", "health"], {}, "--app-ready-path 'health'"),
        (["--static", str(FIXTURES), "--app-ready-path", "/health"], {}, "--app-ready-path"),
    ],
)
def test_bad_setting_exits_2_with_one_line_naming_it(
    arguments: list[str], env: dict[str, str], named: str
) -> None:
    result = run_cli(*arguments, env=env)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("offload: error: ")
    assert named in lines[0]
    assert "Traceback" not in result.stderr


def test_port_in_use_exits_2_with_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = run_cli("--static", str(FIXTURES), "--host", "127.0.0.1", "--port", port)
    assert result.returncode == 2
    expected = f"--port '{port}': cannot listen on 127.0.0.1:{port}: address already in use"
    assert result.stderr.splitlines() == [f"offload: error: {expected}"]


@pytest.mark.parametrize("host", ["999.1.1.1", "10.255.255.254", "no such host"])
def test_host_that_cannot_be_listened_on_exits_2_with_one_line(host: str) -> None:
    result = run_cli("--static", str(FIXTURES), "--host", host, "--port", "8089")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"offload: error: --host '{host}': cannot listen")


def test_python_dash_m_offload_reports_its_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"offload {__version__}"


def test_help_lists_every_flag_and_its_variable() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for option in OPTIONS:
        assert option.flag in result.stdout
        assert option.environment_variable in result.stdout


def test_admin_host_that_cannot_be_listened_on_names_its_flag() -> None:
    result = run_cli(
        "--static", str(FIXTURES), "--host", "127.0.0.1", "--admin-host", "10.255.255.254"
    )
    assert result.returncode == 2
    assert result.stderr.startswith("offload: error: --admin-host '10.255.255.254': cannot listen")


ADMIN_TOKEN = "s3cret-admin-token-0123456789"


def test_admin_token_from_its_variable_or_a_file(tmp_path: Path) -> None:
    token_file = tmp_path / "admin-token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    static = ["--static", str(FIXTURES)]
    assert parse_config(static, {"OFFLOAD_ADMIN_TOKEN": ADMIN_TOKEN}).admin_token == ADMIN_TOKEN
    from_flag = parse_config([*static, "--admin-token-file", str(token_file)], {})
    assert from_flag.admin_token == ADMIN_TOKEN
    from_variable = parse_config(static, {"OFFLOAD_ADMIN_TOKEN_FILE": str(token_file)})
    assert from_variable.admin_token == ADMIN_TOKEN
    assert parse_config(static, {"OFFLOAD_ADMIN_TOKEN": ""}).admin_token is None
    assert "--admin-token" not in {option.flag for option in OPTIONS}  # ps would show it


@pytest.mark.parametrize(
    ("written", "env", "named"),
    [
        ("", {}, "--admin-token-file '{path}': is empty"),
        (None, {}, "--admin-token-file '{path}': no such file or directory"),
        ("short", {}, "--admin-token-file '{path}': the admin token must be at least 16"),
        (None, {"OFFLOAD_ADMIN_TOKEN": "short-s3cret"}, "OFFLOAD_ADMIN_TOKEN: the admin token"),
        (ADMIN_TOKEN, {"OFFLOAD_ADMIN_TOKEN": "other-s3cret-0123456789"}, "give it one way"),
    ],
)
def test_bad_admin_token_exits_2_with_one_line_that_never_shows_it(
    tmp_path: Path, written: str | None, env: dict[str, str], named: str
) -> None:
    token_file = tmp_path / "admin-token"
    if written is not None:
        token_file.write_text(written)
    flags = ["--admin-token-file", str(token_file)] if written is not None or not env else []
    result = run_cli("--static", str(FIXTURES), *flags, env=env)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert named.format(path=token_file) in lines[0]
    for secret in (written, *env.values()):
        assert not secret or secret not in lines[0]
