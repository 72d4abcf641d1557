"""The admin listener: its own port, nothing of the public edge (readiness, drain and metrics
are in test_observe.py)."""

from __future__ import annotations

import httpx
import pytest

from tests.servers import FIXTURES, Offload, free_port, run_offload


def test_livez_answers_200_on_the_admin_port(offload: Offload) -> None:
    response = httpx.get(offload.admin_url + "/livez")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"


def test_livez_head_answers_200_without_a_body(offload: Offload) -> None:
    response = httpx.head(offload.admin_url + "/livez")
    assert response.status_code == 200
    assert response.content == b""


def test_livez_refuses_other_methods_with_405_and_allow(offload: Offload) -> None:
    response = httpx.post(offload.admin_url + "/livez")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"


def test_admin_port_serves_no_static_file_and_no_app_path(offload: Offload) -> None:
    assert httpx.get(offload.admin_url + "/style.css").status_code == 404
    assert httpx.get(offload.admin_url + "/api/echo").status_code == 404


def test_admin_host_moves_the_admin_listener_only() -> None:
    # 127.0.0.2 is loopback too on Linux: the admin API on an address of its own, as when only
    # the kubelet should reach it
    with run_offload("--static", FIXTURES, admin_host="127.0.0.2") as server:
        assert httpx.get(f"http://127.0.0.2:{server.admin_port}/livez").status_code == 200
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{server.admin_port}/livez")
        assert httpx.get(f"{server.url}/style.css").status_code == 200


def test_admin_host_may_share_the_public_port_number() -> None:
    port = free_port()
    with run_offload("--static", FIXTURES, port=port, admin_port=port, admin_host="127.0.0.2"):
        assert httpx.get(f"http://127.0.0.2:{port}/livez").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/style.css").status_code == 200
