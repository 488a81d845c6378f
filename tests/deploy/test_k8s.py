"""deploy/k8s, checked without a cluster: against the Kubernetes schemas and against the code.

Every resource the kustomization applies (the generated experiments ConfigMap included) is
validated offline, in strict mode (unknown fields are errors), with the JSON schemas that
kubernetes-validate ships, for the newest Kubernetes version it knows. Then the manifests are read
as data: ports, probe paths, settings, the experiment, the image's user and the selectors must be
the ones the code, docker/Dockerfile and the other manifests use.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from typing import Any, cast
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from fastapi.routing import APIRoute

from service.config import Settings
from service.errors import Unauthorized
from service.experiments import load_experiment
from service.routes import check_admin, router
from service.state import AppState
from tests.deploy.stack import DOCKER, REPO, load_yaml
from tests.deploy.test_compose import SERVICES, SETTINGS_ENV, built

K8S = REPO / "deploy" / "k8s"
KUSTOMIZATION: dict[str, Any] = load_yaml(K8S / "kustomization.yaml")
TRAIN = K8S / "train"  # the training Job, a kustomization applied on its own
TRAIN_KUSTOMIZATION: dict[str, Any] = load_yaml(TRAIN / "kustomization.yaml")
ROUTES = {r.path for r in router.routes if isinstance(r, APIRoute)}
KUBERNETES = kubernetes_validate.latest_version()


def generated_configmaps() -> list[dict[str, Any]]:
    """configMapGenerator's ConfigMaps, as kustomize builds them (before the name's hash suffix)."""
    out = []
    for generator in KUSTOMIZATION.get("configMapGenerator", []):
        data = {}
        for entry in generator["files"]:
            key, _, path = entry.rpartition("=")
            data[key or PurePosixPath(path).name] = (K8S / path).read_text()
        out.append(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data}
        )
    return out


def resources() -> list[dict[str, Any]]:
    """Every resource `kubectl apply -k deploy/k8s` creates, then the training Job's
    (`kubectl apply -k deploy/k8s/train`)."""
    docs = [d for f in KUSTOMIZATION["resources"] for d in yaml.safe_load_all((K8S / f).read_text()) if d]
    train = [
        d for f in TRAIN_KUSTOMIZATION["resources"] for d in yaml.safe_load_all((TRAIN / f).read_text()) if d
    ]
    return docs + generated_configmaps() + train


def resource(kind: str, name: str) -> dict[str, Any]:
    (found,) = [r for r in resources() if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


DEPLOYMENT = resource("Deployment", "mailrec")
POD = DEPLOYMENT["spec"]["template"]
(CONTAINER,) = POD["spec"]["containers"]


def env() -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in CONTAINER.get("env", [])}


def settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings a pod gets: the image's ENV, then the manifest's literal values."""
    for key in [k for k in os.environ if k.startswith("MAILREC_")]:
        monkeypatch.delenv(key)
    _, instructions = built("service")
    for ins in instructions:
        if ins.name == "ENV":
            for word in shlex.split(ins.args):
                key, _, value = word.partition("=")
                if key.startswith("MAILREC_"):
                    monkeypatch.setenv(key, value)
    for name, entry in env().items():
        if "value" in entry:
            monkeypatch.setenv(name, entry["value"])
    return Settings()


def mount_path(volume_name: str) -> tuple[str, bool]:
    (mount,) = [m for m in CONTAINER["volumeMounts"] if m["name"] == volume_name]
    return mount["mountPath"], bool(mount.get("readOnly"))


def volume(name: str) -> dict[str, Any]:
    (found,) = [v for v in POD["spec"]["volumes"] if v["name"] == name]
    return found


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


# --- the tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("doc", resources(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_resource_is_valid_against_the_kubernetes_schemas(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES, strict=True)  # raises ValidationError


def test_strict_validation_refuses_an_unknown_field() -> None:
    broken = yaml.safe_load((K8S / "bundles.yaml").read_text())
    broken["spec"]["accesModes"] = broken["spec"].pop("accessModes")
    with pytest.raises(kubernetes_validate.ValidationError, match="accesModes"):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_kustomization_applies_every_manifest_of_the_folder() -> None:
    applied = {
        *KUSTOMIZATION["resources"],
        *(f for g in KUSTOMIZATION["configMapGenerator"] for f in g["files"]),
    }
    present = {p.name for p in K8S.iterdir() if p.is_file()} - {"kustomization.yaml"}
    assert applied == present, f"applied but missing: {applied - present}; not applied: {present - applied}"
    assert {p.name for p in K8S.iterdir() if p.is_dir()} == {TRAIN.name}
    train_present = {p.name for p in TRAIN.iterdir()} - {"kustomization.yaml"}
    assert set(TRAIN_KUSTOMIZATION["resources"]) == train_present
    (image,) = KUSTOMIZATION["images"]
    assert image["name"] == CONTAINER["image"] == SERVICES["service"]["image"]  # docker/Dockerfile's
    assert built("service")[0] == DOCKER / "Dockerfile"


def test_ports_are_the_settings_port(monkeypatch: pytest.MonkeyPatch) -> None:
    port = settings(monkeypatch).port
    (container_port,) = CONTAINER["ports"]
    assert container_port["containerPort"] == port
    assert POD["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    service = resource("Service", "mailrec")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [container_port["name"]]
    _, instructions = built("service")
    assert any(i.name == "EXPOSE" and i.args == str(port) for i in instructions)


def test_environment_names_are_settings_with_valid_values(monkeypatch: pytest.MonkeyPatch) -> None:
    names = set(env())
    assert names <= SETTINGS_ENV, f"not settings: {names - SETTINGS_ENV}"
    loaded = settings(monkeypatch)  # raises on an invalid value
    assert loaded.host == "0.0.0.0" and loaded.workers == 1


def test_redis_url_points_at_the_redis_service(monkeypatch: pytest.MonkeyPatch) -> None:
    url = urlsplit(settings(monkeypatch).redis_url or "")
    assert url.scheme == "redis"
    redis = resource("Service", url.hostname or "")
    assert url.port in [p["port"] for p in redis["spec"]["ports"]]
    pods = resource("Deployment", url.hostname or "")["spec"]["template"]
    assert matches(redis["spec"]["selector"], pods["metadata"]["labels"])
    (container,) = pods["spec"]["containers"]
    assert container["args"] == SERVICES["redis"]["command"]  # the compose stack's cache settings


def test_probes_are_routes_of_the_app() -> None:
    paths = {
        probe: CONTAINER[probe]["httpGet"]["path"]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert set(paths.values()) <= ROUTES, f"not routes: {set(paths.values()) - ROUTES}"
    # readiness is the route that waits for the bundles; liveness checks nothing but the process
    assert paths == {"startupProbe": "/livez", "livenessProbe": "/livez", "readinessProbe": "/readyz"}
    (port,) = CONTAINER["ports"]
    assert all(CONTAINER[p]["httpGet"]["port"] == port["name"] for p in paths)


def test_prometheus_annotations_scrape_the_metrics_route() -> None:
    annotations = POD["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics" and "/metrics" in ROUTES


def test_experiment_is_the_compose_one_mounted_where_the_setting_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loaded = settings(monkeypatch)
    experiments = Path(str(loaded.experiments))
    configmap = volume("experiments")["configMap"]["name"]
    (generated,) = [c for c in generated_configmaps() if c["metadata"]["name"] == configmap]
    mounted, read_only = mount_path("experiments")
    assert read_only and experiments.parent == Path(mounted)
    assert generated["data"][experiments.name] == (DOCKER / "experiments.toml").read_text()
    experiment = load_experiment(K8S / experiments.name)
    for variant in experiment.variants:
        assert variant.bundle.is_relative_to(loaded.bundle_dir), variant.bundle


def test_bundles_are_a_shared_volume_mounted_read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    mounted, read_only = mount_path("bundles")
    assert read_only and Path(mounted) == settings(monkeypatch).bundle_dir
    claim = volume("bundles")["persistentVolumeClaim"]
    assert claim["readOnly"] is True
    pvc = resource("PersistentVolumeClaim", claim["claimName"])
    assert set(pvc["spec"]["accessModes"]) & {"ReadOnlyMany", "ReadWriteMany"}  # pods on many nodes


def test_admin_token_comes_from_the_secret_and_its_empty_value_opens_nothing() -> None:
    ref = env()["MAILREC_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
    secret = resource("Secret", ref["name"])
    token = secret["stringData"][ref["key"]]
    assert token == ""  # the repository holds no token; README says how to set one
    state = cast(AppState, SimpleNamespace(settings=Settings(admin_token=token)))
    for given in (None, "", "guess"):
        credentials = None if given is None else SimpleNamespace(credentials=given)
        with pytest.raises(Unauthorized):
            check_admin(state, cast(Any, credentials))


def test_security_context_runs_as_the_image_user() -> None:
    _, instructions = built("service")
    image_user = [i.args for i in instructions if i.name == "USER"][-1]
    pod = POD["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True and str(pod["runAsUser"]) == image_user
    container = CONTAINER["securityContext"]
    assert container["allowPrivilegeEscalation"] is False and container["capabilities"]["drop"] == ["ALL"]
    if container.get("readOnlyRootFilesystem"):  # then /tmp must be a volume of its own
        assert "emptyDir" in volume("tmp") and mount_path("tmp")[0] == "/tmp"


def test_autoscaler_budget_and_service_select_the_deployment() -> None:
    labels = POD["metadata"]["labels"]
    assert matches(DEPLOYMENT["spec"]["selector"]["matchLabels"], labels)
    assert matches(resource("Service", "mailrec")["spec"]["selector"], labels)
    assert matches(resource("PodDisruptionBudget", "mailrec")["spec"]["selector"]["matchLabels"], labels)
    hpa = resource("HorizontalPodAutoscaler", "mailrec")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mailrec"}
    assert 2 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu" and "cpu" in CONTAINER["resources"]["requests"]
    assert "replicas" not in DEPLOYMENT["spec"]  # the autoscaler owns the count


def test_training_job_writes_new_bundles_into_the_volume_the_replicas_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = resource("Job", "mailrec-train")
    pod = job["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    (image,) = TRAIN_KUSTOMIZATION["images"]
    assert image["name"] == container["image"] == SERVICES["train"]["image"]
    path, instructions = built("train")
    assert path == DOCKER / "Dockerfile.train"
    assert (
        str(pod["spec"]["securityContext"]["runAsUser"])
        == [i.args for i in instructions if i.name == "USER"][-1]
    )
    job_env = {e["name"]: e["value"] for e in container["env"]}
    assert job_env["MAILREC_RETRAIN"] == "1"  # docker/train.sh keeps existing bundles otherwise
    assert "MAILREC_RETRAIN" in (DOCKER / "train.sh").read_text()
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "bundles"]
    assert not mount.get("readOnly") and mount["mountPath"] == job_env["MAILREC_BUNDLE_DIR"]
    # the same claim the Deployment mounts, at the path its MAILREC_BUNDLE_DIR names
    (claim,) = [v["persistentVolumeClaim"] for v in pod["spec"]["volumes"] if v["name"] == "bundles"]
    assert claim["claimName"] == volume("bundles")["persistentVolumeClaim"]["claimName"]
    assert Path(mount["mountPath"]) == settings(monkeypatch).bundle_dir
    assert pod["spec"]["restartPolicy"] == "Never"


def test_replicas_poll_rollouts_and_name_themselves_by_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings(monkeypatch).rollout_poll_s > 0
    assert env()["MAILREC_REPLICA_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
