"""nginx as the benchmark runs it: Debian's binary with a generated config, one worker, its own
ports, pid file, logs and temp directories, so a system nginx (Debian starts one on port 80 at
install) neither matters nor is touched."""

from __future__ import annotations

from pathlib import Path

BROTLI_STATIC = Path("/usr/lib/nginx/modules/ngx_http_brotli_static_module.so")


def command(config: Path) -> list[str]:
    # -e: the log nginx writes before it has read the config, which by default is /var/log/nginx
    return ["nginx", "-e", str(config.with_suffix(".log")), "-c", str(config)]


def _write(workdir: Path, name: str, *, modules: str = "", http: str) -> Path:
    config = workdir / f"{name}.conf"
    temporary = "\n    ".join(
        f"{kind}_temp_path {workdir}/{name}-{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    config.write_text(
        f"""{modules}
worker_processes 1;
daemon off;
pid {workdir}/{name}.pid;
error_log {config.with_suffix(".log")} warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    {temporary}
    {http}
}}
"""
    )
    return config


def static_config(root: Path, port: int, workdir: Path, name: str = "nginx-static") -> Path:
    """sendfile, open_file_cache, gzip_static, and brotli_static where Debian's module is."""
    has_brotli = BROTLI_STATIC.exists()
    return _write(
        workdir,
        name,
        modules=f"load_module {BROTLI_STATIC};" if has_brotli else "",
        http=f"""include /etc/nginx/mime.types;
    sendfile on;
    tcp_nopush on;
    open_file_cache max=10000 inactive=60s;
    open_file_cache_valid 60s;
    gzip_static on;
    {"brotli_static on;" if has_brotli else ""}
    server {{
        listen 127.0.0.1:{port};
        root {root};
        etag on;
    }}""",
    )


def proxy_config(upstream_port: int, port: int, workdir: Path) -> Path:
    """proxy_pass to an upstream keepalive pool over HTTP/1.1. Request bodies stream to the app
    as they arrive (proxy_request_buffering off), as offload streams them; responses are
    buffered as nginx does by default, except where the app says X-Accel-Buffering: no (the
    fan-out's event streams)."""
    return _write(
        workdir,
        "nginx-proxy",
        http=f"""upstream app {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_request_buffering off;
        }}
    }}""",
    )
