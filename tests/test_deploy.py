"""The Kubernetes manifests in deploy/k8s: valid against Kubernetes' own schemas (strict:
an unknown or misspelt field fails), and consistent with what krt does (probes, drain
time, the metrics the autoscaler reads)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import kubernetes_validate
import pytest
import trio
import yaml

from krt.server.openai_api import max_body_bytes
from tests.conftest import make_config

K8S = Path(__file__).resolve().parent.parent / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"
"""The oldest Kubernetes still supported upstream when this was written; what validates
here validates on the newer ones too (these kinds are stable APIs)."""
PRE_STOP_SECONDS = 5
CLOSE_MARGIN_SECONDS = 5
"""After the drain: closing the sockets (a second at most each, in parallel) and exiting."""


def manifests() -> list[tuple[str, dict]]:
    return [
        (f"{path.name}#{index}", document)
        for path in sorted(K8S.glob("*.yaml"))
        for index, document in enumerate(yaml.safe_load_all(path.read_text()))
        if document
    ]


@pytest.mark.parametrize(("name", "manifest"), manifests(), ids=[name for name, _ in manifests()])
def test_every_manifest_is_valid_kubernetes(name, manifest):
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def deployments() -> list[dict]:
    return [manifest for _, manifest in manifests() if manifest["kind"] == "Deployment"]


@pytest.mark.parametrize(
    "deployment",
    deployments(),
    ids=lambda d: d["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"],
)
def test_a_deployment_lets_a_drain_finish_and_probes_the_right_routes(deployment):
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {variable["name"]: variable.get("value") for variable in container["env"]}
    config = make_config(**{k: v for k, v in env.items() if v is not None and k != "KRT_ADMIN_SOCKET"})
    assert pod["terminationGracePeriodSeconds"] >= (
        PRE_STOP_SECONDS + config.server.drain_seconds + CLOSE_MARGIN_SECONDS
    )
    assert container["lifecycle"]["preStop"]["exec"]["command"][-1] == f"sleep {PRE_STOP_SECONDS}"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"  # 503 while draining
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"  # 200 while draining
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


@pytest.mark.trio
async def test_the_autoscaler_reads_metrics_krt_exports(harness):
    """Every series the adapter rules select is on krt's /metrics."""
    [adapter] = [m for _, m in manifests() if m["kind"] == "ConfigMap"]
    rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    [hpa] = [m for _, m in manifests() if m["kind"] == "HorizontalPodAutoscaler"]
    wanted = {metric["pods"]["metric"]["name"] for metric in hpa["spec"]["metrics"]}
    assert wanted == {rule["name"]["as"] for rule in rules}
    server = await harness.server()
    with trio.fail_after(10):
        async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
            await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            exposition = b""
            while chunk := await stream.receive_some():
                exposition += chunk
    names = {
        line.split("{")[0].split(" ")[0] for line in exposition.decode().splitlines() if line[:1].isalpha()
    }
    for rule in rules:
        series = rule["seriesQuery"].split("{")[0].strip("'")
        assert series in names, json.dumps(sorted(names))


def test_the_validation_catches_a_misspelt_field():
    """Strict validation is what makes the test above worth having."""
    deployment = deployments()[0]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    broken = {**deployment}
    broken["spec"] = {**deployment["spec"], "template": {**deployment["spec"]["template"]}}
    broken["spec"]["template"]["spec"] = {
        **deployment["spec"]["template"]["spec"],
        "containers": [{**container, "readynessProbe": container["readinessProbe"]}],
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_nginx_takes_every_body_krt_takes():
    """A long input krt would speak must not be refused by the proxy in front of it."""
    shipped = (Path(__file__).resolve().parent.parent / "deploy" / "nginx" / "krt.conf").read_text()
    [size] = re.findall(r"client_max_body_size (\d+)k;", shipped)
    most_chars = make_config().server.openai_max_input_chars
    assert int(size) * 1024 >= max_body_bytes(most_chars)
