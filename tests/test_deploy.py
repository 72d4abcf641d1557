"""The deployment files: both Dockerfiles pass hadolint, the Kubernetes manifests pass
kubernetes-validate --strict, and the pod keeps its shape (offload a native sidecar, probes on
the admin port, the drain in the app's preStop hook). The linters come with the test extra."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml  # PyYAML, installed with kubernetes-validate

from tests.servers import FIXTURES, Offload

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DOCKERFILES = [ROOT / "Dockerfile", ROOT / "examples" / "node-app" / "Dockerfile"]
MANIFESTS = sorted((ROOT / "examples" / "kubernetes").glob("*.yaml"))
COMPOSE = ROOT / "examples" / "node-app" / "compose.yaml"
# Native sidecars (initContainers with restartPolicy: Always) are stable since 1.33.
KUBERNETES_VERSIONS = ["1.33.0", None]  # None: the newest the installed package knows
ADMIN_PORT = 9901


def tool(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: install the test extra (pip install -e '.[test]')")
    return path


def run(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("HADOLINT_")}
    return subprocess.run(
        [str(arg) for arg in args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
        check=False,
    )


@pytest.fixture(scope="module")
def hadolint_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Our own config, so that no .hadolint.yaml or user config can hide a rule; info and
    style findings fail too."""
    path = tmp_path_factory.mktemp("hadolint") / "hadolint.yaml"
    path.write_text("ignored: []\nfailure-threshold: style\n")
    return path


def hadolint(
    config: Path, *args: str | Path, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    flags = ("--config", config, "--disable-ignore-pragma", "--no-color")
    return run(tool("hadolint"), *flags, *args, stdin=stdin)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile_passes_hadolint(dockerfile: Path, hadolint_config: Path) -> None:
    result = hadolint(hadolint_config, dockerfile)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_hadolint_reports_what_it_should(hadolint_config: Path) -> None:
    result = hadolint(hadolint_config, "-", stdin="FROM python:3.11-slim\nRUN pip install flask\n")
    assert result.returncode != 0
    assert "DL3013" in result.stdout
    assert "DL3042" in result.stdout


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS, ids=lambda v: v or "newest")
def test_manifests_pass_kubernetes_validate_strict(version: str | None) -> None:
    assert MANIFESTS, "no manifests under examples/kubernetes/"
    pin = ["-k", version] if version else []
    result = run(tool("kubernetes-validate"), "--strict", *pin, *MANIFESTS)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert not re.search(r"^(WARN|ERROR)", output, re.MULTILINE), output
    assert output.count(" passed for resource ") == sum(len(load(path)) for path in MANIFESTS)


def test_kubernetes_validate_strict_rejects_an_unknown_field(tmp_path: Path) -> None:
    deployment = resource("Deployment")
    offload = by_name(deployment["spec"]["template"]["spec"]["initContainers"])["offload"]
    offload["restartPolicyy"] = offload.pop("restartPolicy")
    broken = tmp_path / "deployment.yaml"
    broken.write_text(yaml.safe_dump(deployment))
    result = run(tool("kubernetes-validate"), "--strict", "-k", "1.33.0", broken)
    assert result.returncode != 0
    assert "restartPolicyy" in result.stdout + result.stderr


# The shape of the pod: cheap checks of what the schemas cannot say.


def load(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def resource(kind: str) -> dict[str, Any]:
    found = [doc for path in MANIFESTS for doc in load(path) if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def pod() -> dict[str, Any]:
    spec: dict[str, Any] = resource("Deployment")["spec"]["template"]["spec"]
    return spec


def by_name(containers: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {container["name"]: container for container in containers}


def port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    numbers = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    assert numbers, f"{container['name']} has no port named {port!r}"
    return int(numbers[0])


def number(pattern: str, text: str) -> int:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not found in {text!r}"
    return int(match.group(1))


def test_offload_is_a_native_sidecar_after_the_asset_copy(pod: dict[str, Any]) -> None:
    init = pod["initContainers"]
    assert [c["name"] for c in init] == ["copy-assets", "offload"]
    copy, offload = init
    assert "restartPolicy" not in copy
    assert offload["restartPolicy"] == "Always"
    assert "offload" not in by_name(pod["containers"])
    args = offload["args"]
    assert args[args.index("--upstream") + 1] == "127.0.0.1:3000"
    assert args[args.index("--static") + 1] == "/srv"
    (written,) = copy["volumeMounts"]
    (served,) = offload["volumeMounts"]
    assert written["name"] == served["name"]
    assert served == {"name": written["name"], "mountPath": "/srv", "readOnly": True}
    volumes = by_name(pod["volumes"])
    assert "emptyDir" in volumes[served["name"]]


def test_probes_use_the_admin_port(pod: dict[str, Any]) -> None:
    offload = by_name(pod["initContainers"])["offload"]
    probes = {
        name: offload[name]["httpGet"]
        for name in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    paths = {name: (get["path"], port_number(offload, get["port"])) for name, get in probes.items()}
    assert paths == {
        "startupProbe": ("/livez", ADMIN_PORT),
        "livenessProbe": ("/livez", ADMIN_PORT),
        "readinessProbe": ("/readyz", ADMIN_PORT),
    }


def test_the_app_drains_offload_before_it_stops(pod: dict[str, Any]) -> None:
    app = by_name(pod["containers"])["app"]
    command = app["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["node", "-e"]
    script = command[2]
    assert re.search(r'call\("POST", drain', script)
    assert f'"http://127.0.0.1:{ADMIN_PORT}/drain"' in script
    wait = number(r"\?wait=(\d+)", script)
    settle = number(r"setTimeout\(resolve, (\d+)\)", script) / 1000
    offload = by_name(pod["initContainers"])["offload"]
    drain_timeout = int(offload["args"][offload["args"].index("--drain-timeout") + 1])
    assert pod["terminationGracePeriodSeconds"] > settle + wait + drain_timeout
    env = {item["name"]: item["value"] for item in app["env"]}
    assert env == {"HOST": "127.0.0.1", "PORT": "3000"}


def test_the_prestop_hook_drains_a_real_offload(
    pod: dict[str, Any], start_offload: Callable[..., Offload]
) -> None:
    """Node's fetch, as the hook runs it, passes the admin API's control check: it calls over
    loopback, names 127.0.0.1 as Host and sends no Origin (only Sec-Fetch-Mode: cors)."""
    server = start_offload("--static", FIXTURES)
    script = by_name(pod["containers"])["app"]["lifecycle"]["preStop"]["exec"]["command"][2]
    drain = f"{server.admin_url}/drain"
    script = script.replace(f"http://127.0.0.1:{ADMIN_PORT}/drain", drain)
    script = re.sub(r"setTimeout\(resolve, \d+\)", "setTimeout(resolve, 0)", script)
    result = run("node", "-e", script)
    assert result.returncode == 0, result.stderr
    wait = number(r"\?wait=(\d+)", script)
    assert result.stdout.splitlines() == [f"POST {drain} 200", f"GET {drain}?wait={wait} 200"]
    readiness = httpx.get(f"{server.admin_url}/readyz")
    assert (readiness.status_code, readiness.text.strip()) == (503, "Service Unavailable: draining")


def test_network_policy_opens_the_admin_port_to_monitoring_only(pod: dict[str, Any]) -> None:
    policy = resource("NetworkPolicy")["spec"]
    labels = resource("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    sources = {port["port"]: rule["from"] for rule in policy["ingress"] for port in rule["ports"]}
    offload = by_name(pod["initContainers"])["offload"]
    public = port_number(offload, "http")
    assert set(sources) == {public, port_number(offload, "admin")} == {public, ADMIN_PORT}
    assert sources[public] == [{"namespaceSelector": {}}]  # any pod in the cluster
    monitoring = {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    assert sources[ADMIN_PORT] == [{"namespaceSelector": monitoring}]


def test_every_container_is_limited_and_locked_down(pod: dict[str, Any]) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["enableServiceLinks"] is False  # else a Service could set OFFLOAD_* variables
    for container in pod["initContainers"] + pod["containers"]:
        resources = container["resources"]
        for bound in ("requests", "limits"):
            assert set(resources[bound]) == {"cpu", "memory"}, (container["name"], bound)
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert context["runAsUser"] != 0, container["name"]


def test_service_sends_port_80_to_offload(pod: dict[str, Any]) -> None:
    service = resource("Service")
    labels = resource("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    offload = by_name(pod["initContainers"])["offload"]
    assert (port["port"], port_number(offload, port["targetPort"])) == (80, 8080)


def test_compose_shares_the_assets_through_a_volume() -> None:
    (compose,) = load(COMPOSE)
    services = compose["services"]
    offload = services["offload"]
    assert offload["command"] == ["--upstream", "app:3000", "--static", "/srv"]
    assert offload["build"] == "../.."
    assert offload["ports"] == ["8080:8080"]
    assert offload["depends_on"] == {
        "assets": {"condition": "service_completed_successfully"},
        "app": {"condition": "service_healthy"},
    }
    (mount,) = offload["volumes"]
    assert (mount["source"], mount["target"], mount["read_only"]) == ("assets", "/srv", True)
    assert services["assets"]["image"] == services["app"]["image"]
    assert services["assets"]["volumes"] == ["assets:/export"]
    assert "assets" in compose["volumes"]


def test_offload_image_shape() -> None:
    text = (ROOT / "Dockerfile").read_text()
    final = text[text.rindex("\nFROM ") :]
    assert "FROM python:3.11-slim AS builder" in text
    assert "pip wheel" in text
    assert "--no-index" in final
    assert "--no-cache-dir" in final
    assert re.search(r"^USER 10001(:10001)?$", final, re.MULTILINE)
    assert re.search(r"^EXPOSE 8080 9901$", final, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["offload"\]$', final, re.MULTILINE)
    assert re.search(r"^HEALTHCHECK .*\n?.*/livez", final, re.MULTILINE)


def test_the_license_the_metadata_names_is_in_the_repository_and_the_image() -> None:
    # hatchling puts LICENSE into the wheel (dist-info/licenses/) when it is in the build context
    assert 'license = "MIT"' in (ROOT / "pyproject.toml").read_text()
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")
    copied = re.search(r"^COPY (.*) \./$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert copied is not None
    assert "LICENSE" in copied.group(1).split()
