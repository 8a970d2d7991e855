"""The Kubernetes manifests (deploy/kubernetes, docs/kubernetes.md) are valid and fit
together, offline: every object passes the API schemas that ``kubernetes-validate`` ships
(strict: an unknown field is an error), the ConfigMap's config passes ``llm-router
check`` with exactly the environment the Secret gives the pods, and the objects agree
with one another (selectors, ports, probes, the shutdown timings, the read-only root)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

K8S = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
# The oldest API version the manifests are held to, and the newest the validator ships.
VERSIONS = ["1.25", kubernetes_validate.latest_version()]


def _resources() -> list[str]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    resources: list[str] = kustomization["resources"]
    return resources


def _objects() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object the kustomization applies, by (kind, name)."""
    out = {}
    for name in _resources():
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            out[doc["kind"], doc["metadata"]["name"]] = doc
    return out


def _config(objects: dict[tuple[str, str], dict[str, Any]]) -> str:
    data: dict[str, str] = objects["ConfigMap", "llm-router-config"]["data"]
    return data["config.yaml"]


def _router_container(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    pod = objects["Deployment", "llm-router"]["spec"]["template"]["spec"]
    container: dict[str, Any] = pod["containers"][0]
    return container


def _mount(objects: dict[tuple[str, str], dict[str, Any]], volume: str) -> str:
    """Where the router container mounts ``volume``."""
    mount = next(m for m in _router_container(objects)["volumeMounts"] if m["name"] == volume)
    path: str = mount["mountPath"]
    return path


def test_kustomization_applies_every_manifest_in_the_directory() -> None:
    files = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(_resources()) == files


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_passes_the_kubernetes_api_schema(version: str) -> None:
    objects = _objects()
    assert {kind for kind, _ in objects} >= {
        "Namespace", "Secret", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget",
        "HorizontalPodAutoscaler", "StatefulSet"}
    problems = []
    for (kind, name), doc in objects.items():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            problems.append(f"{kind}/{name} at {where}: {exc.message}")
    assert not problems, f"against Kubernetes {version}:\n" + "\n".join(problems)


def test_validator_refuses_an_unknown_field() -> None:
    # Strict mode is what catches a misspelt key, which Kubernetes would silently drop.
    deployment = _objects()["Deployment", "llm-router"]
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 45
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


def test_configmap_config_passes_check_with_the_secrets_environment(tmp_path: Path) -> None:
    objects = _objects()
    path = tmp_path / "config.yaml"
    # Provider keys are files of the Secret llm-router-provider-keys, where the pods mount
    # it: lay them out the same way here, so a key_file naming no key of it fails.
    keys_dir = tmp_path / "provider-keys"
    keys_dir.mkdir()
    for name, value in objects["Secret", "llm-router-provider-keys"]["stringData"].items():
        (keys_dir / name).write_text(value)
    mount = _mount(objects, "provider-keys")
    config = _config(objects)
    assert f"key_file: {mount}/" in config
    path.write_text(config.replace(f"{mount}/", f"{keys_dir}/"))
    # The pods' ${VAR}s come from the Secret through envFrom, and from nothing else: an
    # unset variable without a default fails the check.
    assert _router_container(objects)["envFrom"] == [
        {"secretRef": {"name": "llm-router-keys"}}]
    env = dict(objects["Secret", "llm-router-keys"]["stringData"])
    env["PATH"] = os.environ.get("PATH", "")
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    check = subprocess.run([sys.executable, "-m", "llm_router", "check", str(path)],
                           capture_output=True, text=True, env=env, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "OK" in check.stdout and "warning" not in (check.stdout + check.stderr).lower()


def test_objects_agree_on_names_labels_and_ports() -> None:
    objects = _objects()
    deployment = objects["Deployment", "llm-router"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for kind in ("Service", "PodDisruptionBudget"):
        selector = objects[kind, "llm-router"]["spec"]["selector"]
        assert selector.get("matchLabels", selector).items() <= labels.items(), kind
    hpa = objects["HorizontalPodAutoscaler", "llm-router"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": "llm-router"}
    assert hpa["minReplicas"] >= 2
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]
    container = _router_container(objects)
    # kustomize's `images` rewrites the image by name: a name no container uses does nothing.
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert [i["name"] for i in kustomization["images"]] == [container["image"]]
    port = container["ports"][0]["containerPort"]
    config = yaml.safe_load(_config(objects))
    assert config["port"] == port and container["args"][-1] == "/etc/llm-router/config.yaml"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port
    assert annotations["prometheus.io/path"] == "/metrics"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    # Every replica shares one Redis, which keeps its data across restarts.
    redis = objects["StatefulSet", "llm-router-redis"]
    url = config["state"]["redis_url"]
    assert re.fullmatch(r"redis://:\$\{REDIS_PASSWORD\}@llm-router-redis:6379/0", url)
    assert redis["spec"]["serviceName"] == "llm-router-redis"
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    # Only the routers may reach it.
    policy = objects["NetworkPolicy", "llm-router-redis"]["spec"]
    redis_labels = redis["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= redis_labels.items()
    assert [p["podSelector"]["matchLabels"] for p in policy["ingress"][0]["from"]] == [
        deployment["spec"]["selector"]["matchLabels"]]


def test_pods_stop_without_failing_a_request() -> None:
    objects = _objects()
    pod = objects["Deployment", "llm-router"]["spec"]["template"]["spec"]
    config = yaml.safe_load(_config(objects))
    command = _router_container(objects)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    assert pre_stop > 0 and config["shutdown_delay_s"] > 0
    # The kubelet's countdown starts with preStop; SIGKILL must come after the drain.
    assert (pod["terminationGracePeriodSeconds"]
            > pre_stop + config["shutdown_delay_s"] + config["shutdown_grace_s"])
    strategy = objects["Deployment", "llm-router"]["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0


def test_pods_run_unprivileged_on_a_read_only_root_with_measured_requests() -> None:
    objects = _objects()
    for kind, name in (("Deployment", "llm-router"), ("StatefulSet", "llm-router-redis")):
        pod = objects[kind, name]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert {"cpu", "memory"} <= container["resources"]["requests"].keys(), name
            assert "memory" in container["resources"]["limits"], name
    container = _router_container(objects)
    # The config is mounted as its directory: a subPath mount is never updated.
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert mount["mountPath"] == "/etc/llm-router" and "subPath" not in mount
    # So are the provider keys, from the Secret, beside the config rather than inside it.
    keys = next(m for m in container["volumeMounts"] if m["name"] == "provider-keys")
    assert "subPath" not in keys and keys["readOnly"] is True
    assert not keys["mountPath"].startswith(mount["mountPath"] + "/")
    pod = objects["Deployment", "llm-router"]["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "provider-keys")
    assert volume["secret"]["secretName"] == "llm-router-provider-keys"
    # Nothing to write but /tmp: Redis holds the state, so there is no usage snapshot.
    assert "snapshot_path" not in (yaml.safe_load(_config(objects)).get("usage") or {})
