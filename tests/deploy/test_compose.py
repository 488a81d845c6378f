"""docker-compose.yml and the Dockerfiles, checked against the repository without Docker.

Docker does not run on the test machines, so this reads the files as data: every Dockerfile,
COPY source and mounted file exists (and .dockerignore lets the COPY sources in), environment
names are the service's settings with valid values, and the ports, names and paths that the
services use to find each other agree.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from fastapi.routing import APIRoute

from service.config import Settings
from service.experiments import load_experiment
from service.routes import router
from tests.deploy.stack import (
    COMPOSE_FILE,
    DOCKER,
    PROMETHEUS_CONFIG,
    REPO,
    SERVICE_JOB,
    load_yaml,
)

COMPOSE: dict[str, Any] = load_yaml(COMPOSE_FILE)
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
SETTINGS_ENV = {f"MAILREC_{name.upper()}" for name in Settings.model_fields}
SERVING = ("service", "service-gpu")
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose's `${VAR:-default}` with nothing set in the environment: the default."""
    return INTERPOLATION.sub(lambda m: m.group(2) or "", value)


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: None if v is None else interpolate(str(v)) for k, v in env.items()}


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool

    @property
    def is_bind(self) -> bool:
        return self.source.startswith((".", "/"))


def mounts(service: dict[str, Any]) -> list[Mount]:
    out = []
    for volume in service.get("volumes", []):
        assert isinstance(volume, str), f"use the short volume syntax: {volume}"
        source, target, *mode = volume.split(":")
        out.append(Mount(source, target, mode == ["ro"]))
    return out


def mount_of(service: dict[str, Any], target: str) -> Mount:
    """The mount that holds the container path `target`."""
    matches = [m for m in mounts(service) if PurePosixPath(target).is_relative_to(m.target)]
    assert matches, f"nothing mounted at {target}"
    return max(matches, key=lambda m: len(m.target))


def host_path(mount: Mount, target: str) -> Path:
    """Where the container path `target` of a bind mount lives in the repository."""
    assert mount.is_bind, f"{mount.source} is a named volume"
    return (REPO / mount.source / PurePosixPath(target).relative_to(mount.target)).resolve()


# --- Dockerfiles -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    name: str
    args: str


def dockerfile(path: Path) -> list[Instruction]:
    """Instructions with continuations joined and comments dropped; FROM's ARGs resolved."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue  # comments, also inside a continuation, are not part of instructions
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    out: list[Instruction] = []
    args: dict[str, str] = {}
    for line in logical:
        name, _, rest = line.partition(" ")
        name = name.upper()
        if name == "ARG" and "=" in rest:
            key, _, default = rest.partition("=")
            args.setdefault(key.strip(), default.strip().strip('"'))
        if name == "FROM":
            rest = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), rest)
        out.append(Instruction(name, " ".join(rest.split())))
    return out


def run_text(instructions: list[Instruction]) -> str:
    return "\n".join(i.args for i in instructions if i.name == "RUN")


def built(name: str) -> tuple[Path, list[Instruction]]:
    build = SERVICES[name]["build"]
    path = REPO / build["context"] / build["dockerfile"]
    return path, dockerfile(path)


def copy_sources(instructions: list[Instruction]) -> list[str]:
    sources = []
    for ins in instructions:
        if ins.name in ("COPY", "ADD"):
            words = shlex.split(ins.args)
            if any(w.startswith("--from") for w in words):
                continue
            sources += [w for w in words if not w.startswith("--")][:-1]
    return sources


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps `path` (relative to the context) out of the build context.

    Docker's rules: patterns in order, the last match wins, `!` re-includes, and a pattern that
    matches a parent folder matches everything under it. Only `*`, `**` and `?` are used here.
    """
    excluded = False
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        assert not set(pattern) & set("[]\\"), f"unsupported .dockerignore pattern {raw!r}"
        regex = re.escape(pattern).replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        parts = PurePosixPath(path).parts
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negate
    return excluded


# --- the tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in SERVICES if "build" in SERVICES[n]])
def test_every_dockerfile_and_copy_source_exists_and_is_in_the_context(name: str) -> None:
    build = SERVICES[name]["build"]
    assert (REPO / build["context"]).resolve() == REPO, "build contexts are the repository root"
    path, instructions = built(name)
    assert path.is_file(), f"{name}: {path} does not exist"
    sources = copy_sources(instructions)
    assert sources, f"{path.name} copies nothing"
    for source in sources:
        assert (REPO / source).exists(), f"{path.name}: COPY {source}: no such file"
        assert not dockerignore_excludes(source), f"{path.name}: COPY {source} is .dockerignored"


def test_dockerignore_keeps_data_and_build_outputs_out() -> None:
    for path in (
        ".git/HEAD",
        ".venv/bin/python",
        "runs/x",
        "bundles/mail/manifest.json",
        "data/u.data",
        "tests/conftest.py",
        "service/__pycache__/main.cpython-311.pyc",
        "docker-compose.yml",
    ):
        assert dockerignore_excludes(path), path
    for path in ("service/main.py", "model_export/cli.py", "pyproject.toml", "docker/train.sh"):
        assert not dockerignore_excludes(path), path


@pytest.mark.parametrize("name", list(SERVICES))
def test_every_mounted_file_exists_and_named_volumes_are_declared(name: str) -> None:
    for mount in mounts(SERVICES[name]):
        if mount.is_bind:
            assert (REPO / mount.source).exists(), f"{name}: {mount.source} does not exist"
        else:
            assert mount.source in COMPOSE["volumes"], f"{name}: volume {mount.source} undeclared"


@pytest.mark.parametrize("name", SERVING)
def test_service_environment_names_are_settings_with_valid_values(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = environment(SERVICES[name])
    _, instructions = built(name)
    for ins in instructions:  # the image's ENV, which compose's environment overrides
        if ins.name == "ENV":
            env = {**dict(w.split("=", 1) for w in shlex.split(ins.args)), **env}
    mailrec = {k: v for k, v in env.items() if k.startswith("MAILREC_")}
    assert set(mailrec) <= SETTINGS_ENV, f"{name}: not settings: {set(mailrec) - SETTINGS_ENV}"
    assert set(env) - set(mailrec) <= {
        "PATH",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONUNBUFFERED",
        "PIP_NO_CACHE_DIR",
        "PIP_DISABLE_PIP_VERSION_CHECK",
        "DEBIAN_FRONTEND",
    }
    for key in list(os.environ):
        if key.startswith("MAILREC_"):
            monkeypatch.delenv(key)
    for key, value in mailrec.items():
        if value is not None:
            monkeypatch.setenv(key, value)
    settings = Settings()  # raises on an invalid value
    assert settings.host == "0.0.0.0" and settings.redis_url == "redis://redis:6379/0"
    assert settings.device == ("cuda" if name == "service-gpu" else "auto")


def test_training_job_environment_is_read_by_its_script() -> None:
    readers = (DOCKER / "train.sh").read_text() + "".join(
        p.read_text() for p in (REPO / "model_export").glob("*.py")
    )
    env = environment(SERVICES["train"])
    for key in env:
        assert key.startswith("MAILREC_") and key in readers, f"train: nothing reads {key}"


def test_scrape_target_is_the_service_name_and_port() -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == SERVICE_JOB]
    (sd,) = job["dns_sd_configs"]
    names_of = {
        name: {name, *(s.get("networks", {}).get("default", {}) or {}).get("aliases", [])}
        for name, s in SERVICES.items()
    }
    for dns_name in sd["names"]:
        answering = [n for n, names in names_of.items() if dns_name in names]
        assert set(answering) == set(SERVING), f"{dns_name} resolves to {answering}"
    for name in SERVING:
        service = SERVICES[name]
        port = int(environment(service)["MAILREC_PORT"] or 0)
        assert port == sd["port"], f"{name} listens on {port}, Prometheus scrapes {sd['port']}"
        assert all(p.split(":")[-1] == str(port) for p in service.get("ports", []))
        _, instructions = built(name)
        assert Instruction("EXPOSE", str(port)) in instructions
    assert job.get("metrics_path", "/metrics") == "/metrics"


def haproxy_sections(path: Path) -> dict[str, list[list[str]]]:
    """haproxy.cfg as {"backend service": [["balance", "roundrobin"], ...], ...}, comments dropped."""
    sections: dict[str, list[list[str]]] = {}
    current: list[list[str]] = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not line[0].isspace():
            current = sections.setdefault(" ".join(line.split()), [])
        else:
            current.append(line.split())
    return sections


def haproxy_config() -> tuple[Path, dict[str, list[list[str]]]]:
    """The load balancer's config file in the repository, and its sections."""
    lb = SERVICES["lb"]
    target = "/usr/local/etc/haproxy/haproxy.cfg"  # where the haproxy image reads it
    mount = mount_of(lb, target)
    assert mount.read_only
    path = host_path(mount, target)
    return path, haproxy_sections(path)


def test_service_scales_behind_the_load_balancer() -> None:
    """`docker compose up --scale service=N`: nothing pins one container, the LB owns the port."""
    service = SERVICES["service"]
    assert "ports" not in service, "a fixed host port stops `--scale service=N` at one replica"
    assert "container_name" not in service
    port = environment(service)["MAILREC_PORT"]
    assert service["expose"] == [port]
    lb = SERVICES["lb"]
    assert lb["image"].startswith("haproxy:") and "service" in lb["depends_on"]
    (published,) = lb["ports"]
    _, sections = haproxy_config()
    (bind,) = [line for line in sections["frontend http"] if line[0] == "bind"]
    assert bind[1] == ":" + published.split(":")[-1]
    assert published.split(":")[0] == "8000"  # README and the compose file's header name :8000


def test_load_balancer_round_robins_over_every_ready_replica() -> None:
    _, sections = haproxy_config()
    backend = {line[0]: line[1:] for line in sections["backend service"]}
    assert backend["balance"] == ["roundrobin"]
    assert backend["option"][:2] == ["httpchk", "GET"]
    health = backend["option"][2]
    assert health == "/readyz" and health in {r.path for r in router.routes if isinstance(r, APIRoute)}
    assert backend["http-check"] == ["expect", "status", "200"]
    template = backend["server-template"]
    host, port = template[2].split(":")
    assert host == "service" and port == environment(SERVICES["service"])["MAILREC_PORT"]
    assert "check" in template and template[template.index("resolvers") + 1] == "docker"
    # Docker's embedded DNS: answers every replica, and new ones as they start
    assert ["nameserver", "dns", "127.0.0.11:53"] in sections["resolvers docker"]


def test_haproxy_accepts_the_load_balancer_config() -> None:
    binary = shutil.which("haproxy")
    assert binary, "haproxy not on PATH: `bash scripts/system-deps.sh haproxy` (make test does)"
    path, _ = haproxy_config()
    checked = subprocess.run([binary, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_prometheus_mounts_its_config_and_rules() -> None:
    prometheus = SERVICES["prometheus"]
    flags = dict(f.split("=", 1) for f in prometheus["command"])
    config_target = flags["--config.file"]
    mount = mount_of(prometheus, config_target)
    assert mount.read_only and host_path(mount, config_target) == PROMETHEUS_CONFIG
    for rule_file in load_yaml(PROMETHEUS_CONFIG)["rule_files"]:
        target = str(PurePosixPath(config_target).parent / rule_file)
        assert host_path(mount_of(prometheus, target), target).is_file(), rule_file
    assert mount_of(prometheus, flags["--storage.tsdb.path"]).source in COMPOSE["volumes"]


def test_grafana_provisioning_paths_and_datasource_url() -> None:
    grafana = SERVICES["grafana"]
    provisioning = mount_of(grafana, "/etc/grafana/provisioning/datasources")
    datasources = host_path(provisioning, "/etc/grafana/provisioning/datasources")
    providers_dir = host_path(provisioning, "/etc/grafana/provisioning/dashboards")
    assert list(datasources.glob("*.yml")) and list(providers_dir.glob("*.yml"))
    for provider_file in providers_dir.glob("*.yml"):
        for provider in load_yaml(provider_file)["providers"]:
            path = provider["options"]["path"]
            assert list(host_path(mount_of(grafana, path), path).glob("*.json")), path
    home = environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] or ""
    assert host_path(mount_of(grafana, home), home).is_file()
    (datasource,) = [d for f in datasources.glob("*.yml") for d in load_yaml(f)["datasources"]]
    match = re.fullmatch(r"http://([\w-]+):(\d+)", datasource["url"])
    assert match and match.group(1) in SERVICES, datasource["url"]
    prometheus = SERVICES[match.group(1)]
    listen = dict(f.split("=", 1) for f in prometheus["command"] if "=" in f)
    assert match.group(2) == listen.get("--web.listen-address", ":9090").rsplit(":", 1)[1]
    assert "grafana" in SERVICES["grafana"]["image"] and "prometheus" in prometheus["image"]


def test_training_runs_once_before_the_service_and_shares_the_bundles() -> None:
    train = SERVICES["train"]
    assert train["restart"] == "no"
    bundle_dir = environment(train)["MAILREC_BUNDLE_DIR"] or ""
    written = mount_of(train, bundle_dir)
    assert not written.is_bind and not written.read_only
    for name in SERVING:
        service = SERVICES[name]
        assert service["depends_on"]["train"]["condition"] == "service_completed_successfully"
        served = environment(service)["MAILREC_BUNDLE_DIR"] or ""
        mount = mount_of(service, served)
        assert mount.source == written.source and mount.read_only


def test_compose_experiment_loads_and_reads_the_training_bundles() -> None:
    service = SERVICES["service"]
    env = environment(service)
    path = env["MAILREC_EXPERIMENTS"] or ""
    experiment = load_experiment(host_path(mount_of(service, path), path))
    # the alert MailCtrBelowControl and the dashboard's lift compare these two variants; the
    # popularity variant is there to be forced by X-Variant (weight 0), ranking by control's counts
    split = {v.name: v.weight for v in experiment.variants if v.weight > 0}
    assert sorted(split) == ["control", "mail"]
    assert {(v.name, v.kind) for v in experiment.variants if v.weight == 0} == {("popular", "popularity")}
    for variant in experiment.variants:
        bundle = PurePosixPath(variant.bundle.as_posix())
        assert bundle.is_relative_to(env["MAILREC_BUNDLE_DIR"] or "/nowhere"), bundle
        # docker/train.sh exports <bundle dir>/<variant>; popularity reads control's counts
        assert bundle.name == (variant.name if variant.kind == "model" else "control")


def test_redis_is_configured_as_a_cache() -> None:
    redis = SERVICES["redis"]
    command = redis["command"]
    options = {command[i]: command[i + 1] for i in range(1, len(command) - 1, 2)}
    assert options["--save"] == "" and options["--appendonly"] == "no"
    assert options["--maxmemory"] and options["--maxmemory-policy"].endswith(("lru", "lfu"))
    assert "redis-cli" in redis["healthcheck"]["test"]
    for name in SERVING:
        assert environment(SERVICES[name])["MAILREC_REDIS_URL"] == "redis://redis:6379/0"


def test_gpu_profile_runs_the_cuda_image_on_a_reserved_gpu() -> None:
    gpu = [n for n, s in SERVICES.items() if "gpu" in s.get("profiles", [])]
    assert gpu == ["service-gpu"]
    service = SERVICES["service-gpu"]
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert environment(service)["MAILREC_DEVICE"] == "cuda"
    for name, other in SERVICES.items():
        if name != "service-gpu":
            assert "deploy" not in other and "profiles" not in other, name


def test_serving_image_is_slim_non_root_torch_free_with_a_readyz_healthcheck() -> None:
    path, instructions = built("service")
    froms = [i.args.split()[0] for i in instructions if i.name == "FROM"]
    assert froms and all(f == "python:3.11-slim" for f in froms)
    users = [i.args for i in instructions if i.name == "USER"]
    assert users and users[-1] not in ("root", "0")
    (health,) = [i.args for i in instructions if i.name == "HEALTHCHECK"]
    assert "mailrec-healthcheck" in health
    assert "/readyz" in (DOCKER / "healthcheck.py").read_text()
    assert "torch" not in run_text(instructions).lower()
    assert "requirements.py --extra cpu" in run_text(instructions)
    assert [i.args for i in instructions if i.name == "CMD"][-1] == '["python", "-m", "service"]'


def test_gpu_image_is_cuda_with_cudnn_and_onnxruntime_gpu_only() -> None:
    path, instructions = built("service-gpu")
    (base,) = [i.args for i in instructions if i.name == "FROM"]
    assert re.fullmatch(r"nvidia/cuda:1[3-9]\.\d+\.\d+-cudnn-runtime-ubuntu\d\d\.\d\d", base), base
    run = run_text(instructions)
    assert (
        '--extra gpu --replace "onnxruntime-gpu=${ORT_GPU}"' in run
        and "onnxruntime-gpu>=1.27" in path.read_text()
    )
    assert "--extra cpu" not in run
    assert "torch" not in run.lower()
    assert [i.args for i in instructions if i.name == "USER"][-1] not in ("root", "0")
    assert any(i.name == "HEALTHCHECK" and "mailrec-healthcheck" in i.args for i in instructions)


def test_training_image_installs_the_makefile_cpu_torch() -> None:
    path, instructions = built("train")
    makefile_torch = re.search(r"^TORCH \?= (\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert makefile_torch is not None
    args = dict(i.args.split("=", 1) for i in instructions if i.name == "ARG" and "=" in i.args)
    assert args["TORCH"] == makefile_torch.group(1)
    assert 'pip install "${TORCH}" --index-url https://download.pytorch.org/whl/cpu' in run_text(instructions)
    assert any(i.name == "CMD" and "mailrec-train" in i.args for i in instructions)


def test_requirements_script_lists_pyproject_serving_dependencies() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]

    def run(*args: str) -> list[str]:
        script = [sys.executable, str(DOCKER / "requirements.py")]
        argv = [*script, "--pyproject", str(REPO / "pyproject.toml"), *args]
        return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.splitlines()

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert run() == pyproject
    assert not any("torch" in r or "onnxruntime" in r for r in pyproject)  # ONNX Runtime: an extra
    assert run("--extra", "cpu") == pyproject + extras["cpu"]
    gpu = run("--extra", "gpu", "--replace", "onnxruntime-gpu=onnxruntime-gpu>=1.27,<2")
    assert gpu == [*pyproject, "onnxruntime-gpu>=1.27,<2"]
    assert not any(re.match(r"onnxruntime(?!-gpu)\b", r) for r in gpu)
    argv = [sys.executable, str(DOCKER / "requirements.py"), "--replace", "nosuchpkg=x"]
    failed = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    assert failed.returncode != 0 and "nosuchpkg" in failed.stderr
    argv = [sys.executable, str(DOCKER / "requirements.py"), "--extra", "nosuchextra"]
    failed = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    assert failed.returncode != 0 and "nosuchextra" in failed.stderr


def test_make_up_and_down_drive_this_compose_file() -> None:
    makefile = (REPO / "Makefile").read_text()
    up = re.search(r"^up:.*\n\t(.+)$", makefile, re.M)
    down = re.search(r"^down:.*\n\t(.+)$", makefile, re.M)
    assert up and "docker compose" in up.group(1) and " up" in up.group(1)
    assert down and "docker compose" in down.group(1) and " down" in down.group(1)
    assert COMPOSE_FILE.name == "docker-compose.yml" and COMPOSE_FILE.parent == REPO


def test_serving_image_dependencies_cover_every_import_of_the_service() -> None:
    """The image installs pyproject's dependencies and its `cpu` extra and copies service/ alone:
    every module the service imports is in the standard library, in service/, or in those."""
    from importlib.metadata import packages_distributions, requires

    from packaging.requirements import Requirement

    def name(requirement: str) -> str:
        return re.sub(r"[-_.]+", "-", Requirement(requirement).name).lower()

    def applies(requirement: str) -> bool:  # on this platform, without extras
        marker = Requirement(requirement).marker
        return marker is None or marker.evaluate({"extra": ""})

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pyproject = project["dependencies"] + project["optional-dependencies"]["cpu"]
    installed: set[str] = set()
    todo = [name(r) for r in pyproject]
    while todo:  # the dependencies and theirs
        dist = todo.pop()
        if dist not in installed:
            installed.add(dist)
            todo += [name(r) for r in requires(dist) or [] if applies(r)]
    modules = set()
    for path in (REPO / "service").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    third_party = modules - set(sys.stdlib_module_names) - {"service", "__future__"}
    distributions = packages_distributions()
    for module in sorted(third_party):
        provided_by = {name(d) for d in distributions.get(module, [])}
        assert provided_by & installed, f"service imports {module}, which the serving image lacks"
