"""The command line: flags and ``OFFLOAD_*`` variables mapped onto `Config`, then `serve`.

Flags win over the environment. A bad setting prints one line naming it and exits with 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from offload import __version__
from offload.config import Config, ConfigError
from offload.server import serve

EXIT_BAD_SETTING = 2


@dataclass(frozen=True)
class Option:
    """One flag: the `Config` field it sets, how its text becomes a value, and its help."""

    flag: str
    field: str
    parse: Callable[[str], object]
    help: str
    metavar: str

    @property
    def environment_variable(self) -> str:
        return "OFFLOAD_" + self.flag.removeprefix("--").upper().replace("-", "_")


def _parse_port(text: str) -> int:
    if not text.strip().isdigit():
        raise ValueError("is not a port number")
    return int(text)


def _parse_seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError("is not a number of seconds") from None


OPTIONS = (
    Option(
        "--upstream",
        "upstream",
        str,
        "the app: HOST:PORT or http://HOST:PORT; without it, misses are 404",
        "ADDRESS",
    ),
    Option("--static", "static", Path, "directory of static assets served directly", "DIR"),
    Option("--host", "host", str, "address of the public and admin listeners", "HOST"),
    Option("--port", "port", _parse_port, "port of the public listener", "PORT"),
    Option("--admin-port", "admin_port", _parse_port, "port of /livez and the admin API", "PORT"),
    Option(
        "--read-timeout",
        "read_timeout_seconds",
        _parse_seconds,
        "seconds the app may take to start its response before offload answers 504",
        "SECONDS",
    ),
    Option(
        "--connect-timeout",
        "connect_timeout_seconds",
        _parse_seconds,
        "seconds to wait for a connection to the app before offload answers 502",
        "SECONDS",
    ),
)
OPTION_BY_FIELD = {option.field: option for option in OPTIONS}


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
        epilog="Every flag can also be set as OFFLOAD_<FLAG>, e.g. OFFLOAD_UPSTREAM; flags win.",
    )
    for option in OPTIONS:
        default = defaults[option.field].default
        shown = "" if default is None else f" (default: {default})"
        parser.add_argument(
            option.flag,
            dest=option.field,
            metavar=option.metavar,
            help=f"{option.help}{shown}; env {option.environment_variable}",
        )
    parser.add_argument("--version", action="version", version=f"offload {__version__}")
    return parser


def parse_config(argv: Sequence[str], environ: Mapping[str, str]) -> Config:
    """Build the `Config` from flags, then the environment; exit 2 on a bad setting."""
    arguments = vars(create_parser().parse_args(argv))
    values: dict[str, object] = {}
    for option in OPTIONS:
        text = arguments[option.field]
        if text is None:
            text = environ.get(option.environment_variable) or None  # empty means unset
        if text is None:
            continue
        try:
            values[option.field] = option.parse(text)
        except ValueError as error:
            fail(f"{_source(option, arguments, environ)} {text!r} {error}")
    try:
        return Config(**values)  # type: ignore[arg-type]  # each parser returns its field's type
    except ConfigError as error:
        option = OPTION_BY_FIELD[error.setting]
        value = "" if error.value is None else f" {str(error.value)!r}"
        fail(f"{_source(option, arguments, environ)}{value}: {error.reason}")


def _source(option: Option, arguments: Mapping[str, object], environ: Mapping[str, str]) -> str:
    """Name the place a value came from, so the error points where the user must look."""
    if arguments[option.field] is None and option.environment_variable in environ:
        return option.environment_variable
    return option.flag


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``offload`` command and ``python -m offload``."""
    config = parse_config(sys.argv[1:] if argv is None else argv, os.environ)
    serve(config)
    return 0
