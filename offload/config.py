"""offload's settings as one frozen value, and the checks that turn a bad setting into one
clear start-up error instead of a failure on the first request."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A setting that offload cannot start with: ``setting`` is the `Config` field name."""

    def __init__(self, setting: str, value: object, reason: str) -> None:
        super().__init__(f"{setting} {value!r}: {reason}")
        self.setting = setting
        self.value = value
        self.reason = reason


@dataclass(frozen=True)
class Upstream:
    """Where the app listens: a TCP address, or a Unix socket (``unix_path``).

    >>> Upstream.parse("localhost:3000").base_url
    'http://localhost:3000'
    >>> Upstream.parse("unix:/run/app.sock").unix_path
    '/run/app.sock'
    """

    host: str
    port: int
    unix_path: str | None = None

    @classmethod
    def parse(cls, text: str) -> Upstream:
        """Parse ``HOST:PORT``, ``http://HOST:PORT`` or ``unix:PATH``; raise `ValueError` with
        the reason."""
        if text.startswith("unix:"):
            path = text.removeprefix("unix:")
            if not path.startswith("/"):
                raise ValueError("expected unix:/absolute/path/to/app.sock")
            return cls(host="localhost", port=80, unix_path=path)
        address = text.removeprefix("http://").removesuffix("/")
        if "://" in address:
            raise ValueError("expected HOST:PORT or http://HOST:PORT")
        host, colon, port_text = address.rpartition(":")
        if not colon or not host or not port_text.isdigit():
            raise ValueError("expected HOST:PORT or http://HOST:PORT")
        host = _parse_host(host)
        return cls(host=host, port=_parse_port(int(port_text)))

    @property
    def base_url(self) -> str:
        """The origin requests are addressed to (for a Unix socket, a placeholder host: the
        client's own Host header is what the app sees)."""
        if self.unix_path is not None:
            return "http://localhost"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def origins(self) -> tuple[str, ...]:
        """The app's own origins, as they may appear in an absolute ``Location`` it sends."""
        if self.unix_path is not None:
            return ()
        loopback = ("localhost", "127.0.0.1", "::1")
        hosts = loopback if self.host in loopback else (self.host,)
        return tuple(f"http://{f'[{host}]' if ':' in host else host}:{self.port}" for host in hosts)

    def __str__(self) -> str:
        return f"unix:{self.unix_path}" if self.unix_path else self.base_url.removeprefix("http://")


MAX_WORKERS = 64
# RFC 6750 §2.1: what may follow "Bearer "; at least 16 characters, so it cannot be guessed
# through the admin port (`openssl rand -hex 32` makes one)
_ADMIN_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]{16,}=*")
ADMIN_TOKEN_FILE_MAX_BYTES = 4096
APP_RESTART_POLICIES = ("never", "on-failure", "always")
_HOST_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def _parse_host(host: str) -> str:
    if host.startswith("[") and host.endswith("]"):
        ipaddress.IPv6Address(host[1:-1])  # raises ValueError with the reason
        return host[1:-1]
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{host[:80]!r} is not a host name or address")
    return host


def _parse_port(port: int) -> int:
    if not 1 <= port <= 65535:
        raise ValueError("port must be between 1 and 65535")
    return port


@dataclass(frozen=True)
class Config:
    """Everything offload needs to start, checked when it is built.

    >>> Config(static=Path("static_fixtures"), upstream="localhost:3000").port
    8080

    Field names are the command-line flags with ``_`` for ``-`` (units spelled out:
    ``read_timeout_seconds`` is ``--read-timeout``). A bad value raises `ConfigError`.
    """

    upstream: str | None = None
    static: Path | None = None
    host: str = "0.0.0.0"
    port: int = 8080
    admin_port: int = 9901
    admin_host: str | None = None  # None: the same address as the public listener
    # The bearer token that opens POST/DELETE /drain to other machines (admin_access.py):
    # OFFLOAD_ADMIN_TOKEN, or read from admin_token_file at start-up. Never in a repr or a log.
    admin_token: str | None = field(default=None, repr=False)
    admin_token_file: Path | None = None
    read_timeout_seconds: float = 60.0
    connect_timeout_seconds: float = 5.0
    cache_max_age_seconds: int | None = None
    cache_control_rules: tuple[tuple[str, str], ...] = ()
    compress_static: bool = True
    in_memory_max_bytes: int = 64 * 1024
    spa: bool = False
    internal_prefix: str | None = None
    compress_proxied: bool = True
    max_body_bytes: int | None = None
    trusted_proxies: tuple[str, ...] = ()
    upstream_max_connections: int = 0
    hooks: tuple[str, ...] = ()
    hook_dir: Path | None = None
    debug: bool = False
    access_log: str = "json"
    drain_timeout_seconds: float = 25.0
    workers: int = 1
    client_header_timeout_seconds: float = 10.0
    client_body_timeout_seconds: float = 60.0
    max_connections: int = 4096
    breaker_failures: int = 5  # consecutive failures that open the breaker; 0: no breaker
    breaker_cooldown_seconds: float = 5.0
    breaker_on_5xx: bool = False
    upstream_max_concurrency: int = 0  # 0: no cap
    app_restart: str = "never"
    app_log: str = "raw"
    app_ready_path: str | None = None
    command: tuple[str, ...] = ()  # `offload ... -- COMMAND`: the app, run as offload's child

    def __post_init__(self) -> None:
        if self.upstream is None and self.static is None:
            raise ConfigError(
                "upstream", None, "nothing to serve: give an upstream, a static root, or both"
            )
        if self.upstream is not None:
            try:
                Upstream.parse(self.upstream)
            except ValueError as error:
                raise ConfigError("upstream", self.upstream, str(error)) from None
        if self.static is not None:
            object.__setattr__(self, "static", _check_static_root(self.static))
        for name in ("port", "admin_port"):
            try:
                _parse_port(getattr(self, name))
            except ValueError as error:
                raise ConfigError(name, getattr(self, name), str(error)) from None
        if self.port == self.admin_port and self.admin_address == self.host:
            raise ConfigError("admin_port", self.admin_port, "must differ from the public port")
        if self.max_connections < 0:
            raise ConfigError("max_connections", self.max_connections, "must be >= 0")
        self._check_admin_token()
        for name in (
            "read_timeout_seconds",
            "connect_timeout_seconds",
            "client_header_timeout_seconds",
            "client_body_timeout_seconds",
        ):
            seconds = getattr(self, name)
            if not (seconds > 0 and math.isfinite(seconds)):
                raise ConfigError(name, seconds, "must be a positive number of seconds")
        self._check_static_options()
        self._check_proxy_options()
        self._check_resilience_options()
        if self.command and self.upstream is None:
            # readiness waits for the app's port: without one there is nothing to wait for
            raise ConfigError("upstream", None, "-- COMMAND needs --upstream, the app's address")
        if self.access_log not in ("json", "text", "off"):
            raise ConfigError("access_log", self.access_log, "expected json, text or off")
        if not (self.drain_timeout_seconds >= 0 and math.isfinite(self.drain_timeout_seconds)):
            raise ConfigError("drain_timeout_seconds", self.drain_timeout_seconds, "must be >= 0")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ConfigError("workers", self.workers, f"expected 1 to {MAX_WORKERS}")
        if self.hook_dir is not None and not Path(self.hook_dir).is_dir():
            raise ConfigError("hook_dir", str(self.hook_dir), "is not a directory")

    def _check_admin_token(self) -> None:
        """Read ``admin_token_file`` into ``admin_token``; either way, the token must be one.
        The token itself is never named in an error."""
        token = self.admin_token
        if self.admin_token_file is not None:
            from_file = _read_admin_token(self.admin_token_file)
            # equal when this Config is a copy of one that read the file (dataclasses.replace)
            if token is not None and token != from_file:
                raise ConfigError(
                    "admin_token_file",
                    str(self.admin_token_file),
                    "the admin token is set in the environment too: give it one way",
                )
            object.__setattr__(self, "admin_token", token := from_file)
        if token is not None and not _ADMIN_TOKEN.fullmatch(token):
            source = "admin_token" if self.admin_token_file is None else "admin_token_file"
            shown = None if self.admin_token_file is None else str(self.admin_token_file)
            raise ConfigError(
                source,
                shown,
                "the admin token must be at least 16 letters, digits or -._~+/ "
                "(e.g. openssl rand -hex 32)",
            )

    def _check_proxy_options(self) -> None:
        if self.max_body_bytes is not None and self.max_body_bytes < 0:
            raise ConfigError("max_body_bytes", self.max_body_bytes, "must be >= 0")
        if self.upstream_max_connections < 0:
            raise ConfigError(
                "upstream_max_connections", self.upstream_max_connections, "must be >= 0"
            )
        for cidr in self.trusted_proxies:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError("trusted_proxies", cidr, "is not an address or CIDR") from None
        prefix = self.internal_prefix
        if prefix is not None and not (
            prefix.startswith("/") and prefix.endswith("/") and prefix != "/"
        ):
            raise ConfigError("internal_prefix", prefix, "expected a path like /protected/")

    def _check_resilience_options(self) -> None:
        for name in ("breaker_failures", "upstream_max_concurrency"):
            if getattr(self, name) < 0:
                raise ConfigError(name, getattr(self, name), "must be >= 0")
        cooldown = self.breaker_cooldown_seconds
        if not (cooldown > 0 and math.isfinite(cooldown)):
            raise ConfigError("breaker_cooldown_seconds", cooldown, "must be a positive number")
        if self.app_restart not in APP_RESTART_POLICIES:
            raise ConfigError(
                "app_restart", self.app_restart, "expected never, on-failure or always"
            )
        if self.app_log not in ("raw", "json"):
            raise ConfigError("app_log", self.app_log, "expected raw or json")
        for name, default in (("app_restart", "never"), ("app_log", "raw")):
            if getattr(self, name) != default and not self.command:
                raise ConfigError(name, getattr(self, name), "applies to an app run as -- COMMAND")
        path = self.app_ready_path
        if path is not None:
            if self.upstream is None:
                raise ConfigError("app_ready_path", path, "needs --upstream, the app's address")
            if not (path.startswith("/") and path.isascii()) or any(
                ord(char) <= 32 or ord(char) == 127 for char in path
            ):
                raise ConfigError("app_ready_path", path, "expected a path like /health")

    @property
    def trusted_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in self.trusted_proxies)

    def _check_static_options(self) -> None:
        if self.cache_max_age_seconds is not None and self.cache_max_age_seconds < 0:
            raise ConfigError("cache_max_age_seconds", self.cache_max_age_seconds, "must be >= 0")
        if self.in_memory_max_bytes < 0:
            raise ConfigError("in_memory_max_bytes", self.in_memory_max_bytes, "must be >= 0")
        for glob, value in self.cache_control_rules:
            if not glob or not value or "\n" in value or "\r" in value:
                rule = f"{glob}={value}"
                raise ConfigError("cache_control_rules", rule, "expected GLOB=VALUE")
        if self.spa and self.static is None:
            raise ConfigError("spa", True, "needs a static root")
        if self.spa and self.upstream is not None:
            # a miss cannot both fall back to index.html and reach the app
            raise ConfigError(
                "spa", True, "serves index.html for misses: use it without an upstream"
            )

    @property
    def admin_address(self) -> str:
        """Where the admin listener binds: ``--admin-host``, or ``--host`` when not given."""
        return self.host if self.admin_host is None else self.admin_host

    @property
    def upstream_address(self) -> Upstream | None:
        """The parsed upstream, or ``None`` in static-only mode."""
        return None if self.upstream is None else Upstream.parse(self.upstream)


def _check_static_root(static: Path) -> Path:
    root = Path(static)
    try:
        if not root.is_dir():
            reason = "does not exist" if not root.exists() else "is not a directory"
            raise ConfigError("static", str(static), reason)
        if not os.access(root, os.R_OK | os.X_OK):
            raise ConfigError("static", str(static), "is not readable")
        return root.resolve()
    except OSError as error:  # a name too long, a parent that cannot be searched
        raise ConfigError("static", str(static), error.strerror or str(error)) from None


def _read_admin_token(path: Path) -> str:
    """The token in a file (a Kubernetes Secret mounted as a file, say), without the line end
    an editor adds; `ConfigError` when it cannot be read or is empty."""
    try:
        with open(path, "rb") as file:
            data = file.read(ADMIN_TOKEN_FILE_MAX_BYTES + 1)
    except OSError as error:
        reason = (error.strerror or str(error)).lower()
        raise ConfigError("admin_token_file", str(path), reason) from None
    if len(data) > ADMIN_TOKEN_FILE_MAX_BYTES:
        raise ConfigError("admin_token_file", str(path), "is larger than 4 KiB: not a token")
    token = data.strip().decode("latin-1")
    if not token:
        raise ConfigError("admin_token_file", str(path), "is empty")
    return token


def config_fields() -> tuple[str, ...]:
    """The names of every `Config` field, in order: the CLI maps a flag onto each."""
    return tuple(field.name for field in dataclasses.fields(Config))
