"""The admin listener: its own port, nothing of the public edge (readiness, drain and metrics
are in test_observe.py)."""

from __future__ import annotations

import httpx

from tests.servers import Offload


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
