"""The command line: flags and ``OFFLOAD_*`` variables mapped onto `Config`, then `serve`; and
``offload compress DIR``, the build step that writes ``.br``/``.gz`` files.

Flags win over the environment. A bad setting prints one line naming it and exits with 2.
A secret has a variable and no flag (`ENVIRONMENT_ONLY`): a flag's value shows in ``ps``.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from offload.config import Config, ConfigError
from offload.server import serve
from offload.static.compress import compress_directory
from offload.version import __version__

EXIT_BAD_SETTING = 2
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True)
class Option:
    """One flag: the `Config` field it sets, how its text becomes a value, and its help.

    A ``switch`` takes no value and sets ``switch_value``; its variable takes 1/0, true/false.
    A ``repeatable`` flag may be given many times; its variable separates values with ``;``.
    """

    flag: str
    field: str
    help: str
    metavar: str = ""
    parse: Callable[[str], object] = str
    switch: bool = False
    switch_value: bool = True
    repeatable: bool = False
    separator: str = ";"  # between repeated values in the environment variable

    @property
    def environment_variable(self) -> str:
        return "OFFLOAD_" + self.flag.removeprefix("--").upper().replace("-", "_")

    def from_text(self, text: str) -> object:
        """The field's value from a variable's text (a flag's, for non-switches)."""
        if self.switch:
            if text.strip().lower() not in _TRUE | _FALSE:
                raise ValueError("is not one of 1, 0, true, false, yes, no, on, off")
            return self.switch_value if text.strip().lower() in _TRUE else not self.switch_value
        if self.repeatable:
            parts = (part.strip() for part in text.split(self.separator))
            return tuple(self.parse(part) for part in parts if part)
        return self.parse(text)


def _parse_integer(what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        digits = text.strip().removeprefix("-")
        if not (digits.isascii() and digits.isdigit()):
            raise ValueError(f"is not {what}")
        return int(text)

    return parse


def _parse_seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError("is not a number of seconds") from None


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def _parse_size(text: str) -> int:
    number, unit = text.strip().upper().removesuffix("B"), ""
    if number[-1:] in _SIZE_UNITS:
        number, unit = number[:-1], number[-1]
    if not (number.isascii() and number.isdigit()):
        raise ValueError("is not a size in bytes, e.g. 10M")
    return int(number) * _SIZE_UNITS[unit]


def _parse_networks(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _parse_cache_rule(text: str) -> tuple[str, str]:
    glob, equals, value = text.partition("=")
    if not equals or not glob.strip() or not value.strip():
        raise ValueError("is not GLOB=VALUE, e.g. '/downloads/*=no-store'")
    return glob.strip(), value.strip()


OPTIONS = (
    Option(
        "--upstream",
        "upstream",
        "the app: HOST:PORT or http://HOST:PORT; without it, misses are 404",
        "ADDRESS",
    ),
    Option("--static", "static", "directory of static assets served directly", "DIR", Path),
    Option(
        "--host",
        "host",
        "address of the public listener, and of the admin one without --admin-host",
        "HOST",
    ),
    Option(
        "--port", "port", "port of the public listener", "PORT", _parse_integer("a port number")
    ),
    Option(
        "--admin-port",
        "admin_port",
        "port of /livez, /readyz, /metrics and /drain",
        "PORT",
        _parse_integer("a port number"),
    ),
    Option(
        "--admin-host",
        "admin_host",
        "address of the admin listener (default: the --host address)",
        "HOST",
    ),
    Option(
        "--admin-token-file",
        "admin_token_file",
        "file holding the bearer token that opens POST/DELETE /drain to other machines "
        "(or set the token itself in OFFLOAD_ADMIN_TOKEN)",
        "FILE",
        Path,
    ),
    Option(
        "--read-timeout",
        "read_timeout_seconds",
        "seconds the app may take to start its response before offload answers 504",
        "SECONDS",
        _parse_seconds,
    ),
    Option(
        "--connect-timeout",
        "connect_timeout_seconds",
        "seconds to wait for a connection to the app before offload answers 504",
        "SECONDS",
        _parse_seconds,
    ),
    Option(
        "--cache-max-age",
        "cache_max_age_seconds",
        "Cache-Control max-age for unfingerprinted files other than HTML (default: no-cache)",
        "SECONDS",
        _parse_integer("a whole number of seconds"),
    ),
    Option(
        "--cache-control",
        "cache_control_rules",
        "Cache-Control for paths matching GLOB, first match wins (repeatable)",
        "GLOB=VALUE",
        _parse_cache_rule,
        repeatable=True,
    ),
    Option(
        "--no-compress-static",
        "compress_static",
        "do not build br/gzip variants at run time (.br/.gz files are still used)",
        switch=True,
        switch_value=False,
    ),
    Option(
        "--in-memory-max-bytes",
        "in_memory_max_bytes",
        "files up to this size are held in memory once requested (64 MiB in all)",
        "BYTES",
        _parse_integer("a number of bytes"),
    ),
    Option(
        "--internal-prefix",
        "internal_prefix",
        "static files under this path are served only through the app's X-Accel-Redirect",
        "PATH",
    ),
    Option(
        "--no-compress-proxied",
        "compress_proxied",
        "do not compress the app's responses for clients that accept br or gzip",
        switch=True,
        switch_value=False,
    ),
    Option(
        "--max-body-size",
        "max_body_bytes",
        "largest request body sent to the app; larger ones get 413 (suffixes K, M, G)",
        "BYTES",
        _parse_size,
    ),
    Option(
        "--trusted-proxies",
        "trusted_proxies",
        "comma-separated addresses or CIDRs whose X-Forwarded-* headers are kept",
        "CIDR,...",
        _parse_networks,
    ),
    Option(
        "--upstream-max-connections",
        "upstream_max_connections",
        "most connections open to the app at once; 0 for no limit",
        "N",
        _parse_integer("a number of connections"),
    ),
    Option(
        "--breaker-failures",
        "breaker_failures",
        "consecutive failures reaching the app that open the circuit breaker; 0: no breaker",
        "N",
        _parse_integer("a number of failures"),
    ),
    Option(
        "--breaker-cooldown",
        "breaker_cooldown_seconds",
        "seconds an open breaker answers 503 before one probe request may reach the app",
        "SECONDS",
        _parse_seconds,
    ),
    Option(
        "--breaker-on-5xx",
        "breaker_on_5xx",
        "count the app's own 5xx responses as failures too",
        switch=True,
    ),
    Option(
        "--upstream-max-concurrency",
        "upstream_max_concurrency",
        "most requests at the app at once; as many more wait, the rest get 503; 0: no cap",
        "N",
        _parse_integer("a number of requests"),
    ),
    Option(
        "--app-restart",
        "app_restart",
        "with -- COMMAND: restart the app when it exits: never, on-failure or always",
        "POLICY",
    ),
    Option(
        "--app-log",
        "app_log",
        "with -- COMMAND: the app's output as it is (raw) or as JSON lines (json)",
        "FORMAT",
    ),
    Option(
        "--app-ready-path",
        "app_ready_path",
        "readiness also needs a 2xx from this path of the app, e.g. /health",
        "PATH",
    ),
    Option(
        "--hook",
        "hooks",
        "ASGI middleware MODULE:ATTR wrapping the edge, first outermost (repeatable)",
        "MODULE:ATTR",
        repeatable=True,
        separator=",",
    ),
    Option("--hook-dir", "hook_dir", "directory hooks are imported from", "DIR", Path),
    Option("--debug", "debug", "show the traceback when a hook fails to load", switch=True),
    Option(
        "--access-log", "access_log", "one line per request on stdout: json, text or off", "FORMAT"
    ),
    Option(
        "--drain-timeout",
        "drain_timeout_seconds",
        "seconds requests in flight may take to finish after SIGTERM",
        "SECONDS",
        _parse_seconds,
    ),
    Option(
        "--client-header-timeout",
        "client_header_timeout_seconds",
        "seconds a request head may take to arrive whole; past it, 408",
        "SECONDS",
        _parse_seconds,
    ),
    Option(
        "--client-body-timeout",
        "client_body_timeout_seconds",
        "seconds a request body may pause between two reads; past it, 408",
        "SECONDS",
        _parse_seconds,
    ),
    Option(
        "--max-connections",
        "max_connections",
        "open client connections past which requests get 503 with Retry-After; 0: no limit",
        "N",
        _parse_integer("a number of connections"),
    ),
    Option(
        "--workers",
        "workers",
        "processes serving the public port; the admin API sums their metrics",
        "N",
        _parse_integer("a number of processes"),
    ),
    Option(
        "--spa",
        "spa",
        "static-only single-page app: paths without a file extension get /index.html",
        switch=True,
    ),
)
OPTION_BY_FIELD = {option.field: option for option in OPTIONS}
# Config fields set only by a variable: the admin token would show in `ps` as a flag's value
ENVIRONMENT_ONLY = {"admin_token": "OFFLOAD_ADMIN_TOKEN"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        fail(message)


def fail(message: str) -> NoReturn:
    """Stop start-up with one line on stderr and exit status 2."""
    print(f"offload: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_BAD_SETTING)


def create_parser() -> argparse.ArgumentParser:
    defaults = Config.__dataclass_fields__
    parser = _Parser(
        prog="offload",
        description="Serve files from --static and stream every other request to --upstream.",
        epilog="Every flag can also be set as OFFLOAD_<FLAG>, e.g. OFFLOAD_UPSTREAM; flags win. "
        "'offload compress DIR' writes .br/.gz files next to compressible files.",
    )
    for option in OPTIONS:
        default = defaults[option.field].default
        shown = "" if option.switch or default in (None, ()) else f" (default: {default})"
        help_text = f"{option.help}{shown}; env {option.environment_variable}"
        if option.switch:
            parser.add_argument(option.flag, dest=option.field, action="store_true", help=help_text)
        else:
            action = "append" if option.repeatable else "store"
            parser.add_argument(
                option.flag,
                dest=option.field,
                metavar=option.metavar,
                action=action,
                help=help_text,
            )
    parser.add_argument("--version", action="version", version=f"offload {__version__}")
    return parser


def parse_config(
    argv: Sequence[str], environ: Mapping[str, str], command: Sequence[str] = ()
) -> Config:
    """Build the `Config` from flags, then the environment, and the app's ``command`` (what
    follows ``--``); exit 2 on a bad setting."""
    arguments = vars(create_parser().parse_args(argv))
    values: dict[str, object] = {"command": tuple(command)}
    for name, variable in ENVIRONMENT_ONLY.items():
        if environ.get(variable):  # empty means unset
            values[name] = environ[variable]
    for option in OPTIONS:
        given = arguments[option.field]
        text = environ.get(option.environment_variable) or None  # empty means unset
        value: object = None
        try:
            if option.switch and given:
                value = option.switch_value
            elif given not in (None, False):
                value = (
                    tuple(map(option.parse, given)) if option.repeatable else option.parse(given)
                )
            elif text is not None:
                value = option.from_text(text)
        except ValueError as error:
            shown = given if given not in (None, False) else text
            fail(f"{_source(option, arguments, environ)} {shown!r} {error}")
        if value is not None:
            values[option.field] = value
    try:
        return Config(**values)  # type: ignore[arg-type]  # each parser returns its field's type
    except ConfigError as error:
        value = "" if error.value is None else f" {str(error.value)!r}"
        if error.setting in ENVIRONMENT_ONLY:  # a secret: its value is never shown
            fail(f"{ENVIRONMENT_ONLY[error.setting]}: {error.reason}")
        option = OPTION_BY_FIELD[error.setting]
        fail(f"{_source(option, arguments, environ)}{value}: {error.reason}")


def _source(option: Option, arguments: Mapping[str, object], environ: Mapping[str, str]) -> str:
    """Name the place a value came from, so the error points where the user must look."""
    if arguments[option.field] in (None, False) and environ.get(option.environment_variable):
        return option.environment_variable
    return option.flag


def compress_main(argv: Sequence[str]) -> int:
    """``offload compress DIR``: precompress a build output at maximum quality."""
    parser = _Parser(
        prog="offload compress",
        description="Write .br and .gz next to every compressible file under DIR, at maximum "
        "quality; skips files that would not shrink and sidecars that are up to date.",
    )
    parser.add_argument("directory", metavar="DIR", type=Path)
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    arguments = parser.parse_args(argv)
    if not arguments.directory.is_dir():
        fail(f"compress: {str(arguments.directory)!r} is not a directory")
    report = compress_directory(arguments.directory)
    if not arguments.quiet:
        for line in report.written:
            print(f"wrote {line}")
    print(f"offload compress: {report.summary()}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``offload`` command and ``python -m offload``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compress"]:
        return compress_main(argv[1:])
    flags, command = (
        (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    )
    config = parse_config(flags, os.environ, command)
    try:
        return serve(config)
    except ConfigError as error:  # a hook that fails, a port in use, an address not here
        if config.debug and error.__cause__ is not None:
            traceback.print_exception(error.__cause__)
        fail(f"{OPTION_BY_FIELD[error.setting].flag} {str(error.value)!r}: {error.reason}")
    except RuntimeError as error:  # the app's command could not be started
        fail(f"-- {' '.join(command)!r}: {error}")
