"""deploy/: the Helm chart linted and rendered by Helm itself and checked against the Kubernetes schemas, the
gateway's generated Envoy config accepted by Envoy, the Dockerfiles through hadolint, the alert rules and the
dashboard parsed as PromQL, and every metric they name found among the real prometheus_client definitions."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import promql_parser
import pytest
import yaml
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from candela_runtime.config import env_name
from candela_runtime.failover import parse_members
from candela_stack.binaries import envoy_binary
from candela_stack.envoy_config.command import validate as envoy_validate
from candela_stack.envoy_config.command import write as write_envoy_config
from candela_stack.envoy_config.deployed import UPSTREAM_ENV, DeployedGateway
from candela_stack.helm import helm_binary
from candela_stack.stack import SERVICE_MODULES, Component, Stack, StackConfig

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "candela"
EVERY_OPTION = CHART / "ci" / "every-option-values.yaml"
"""A values file turning on (or to their other branch) every optional part of the chart."""
RULES = DEPLOY / "prometheus" / "candela-rules.yml"
SCRAPE = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "candela-dashboard.json"
DASHBOARD_SCHEMA = DEPLOY / "grafana" / "dashboard.schema.json"
DOCKERFILES = DEPLOY / "docker"

KUBERNETES_VERSIONS = ("1.27.0", "1.37.0")
"""The oldest Kubernetes the chart supports (gRPC probes are GA from 1.27) and the newest with schemas here."""

HELM_VERSION = "v4.1.4"
"""The Helm in the npm package package.json pins (what deploy/README.md says was run)."""

CONFIGS = {
    "auth": ("candela_auth.config", "AuthConfig"),
    "prompts": ("candela_prompts.config", "PromptsConfig"),
    "query": ("candela_query.config", "QueryConfig"),
    "ingest": ("candela_ingest.config", "IngestConfig"),
    "writer": ("candela_ingest.config", "WriterConfig"),
    "proxy": ("candela_proxy.config", "ProxyConfig"),
}
"""Each workload of the chart and the config class its process loads."""

COMPONENTS = {
    "auth": Component.AUTH,
    "prompts": Component.PROMPTS,
    "query": Component.QUERY,
    "ingest": Component.INGEST,
    "writer": Component.WRITER,
    "proxy": Component.PROXY,
}

METRIC_MODULES = (
    "candela_runtime.metrics",
    "candela_proxy.metrics",
    "candela_ingest.metrics",
    "candela_ingest.stalls",
    "candela_ingest.writer.metrics",
)
"""Where Candela defines its Prometheus metrics."""

TARGET_LABELS = frozenset({"job", "namespace", "pod", "release", "instance"})
"""Labels Prometheus attaches to every series (deploy/prometheus/prometheus.yml)."""

SECRET_NAMES = re.compile(r"TOKEN|PASSWORD|SECRET|ACCESS_KEY|DSN|REDIS_URL")


# --- the chart ---------------------------------------------------------------------------------------


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    """Runs Helm with its config, cache and data in a scratch directory and no cluster to reach."""
    with tempfile.TemporaryDirectory(prefix="candela-helm-") as home:
        env = {
            **os.environ,
            "HELM_CONFIG_HOME": f"{home}/config",
            "HELM_CACHE_HOME": f"{home}/cache",
            "HELM_DATA_HOME": f"{home}/data",
            "KUBECONFIG": f"{home}/no-cluster",
        }
        return subprocess.run(
            [str(helm_binary()), *args], capture_output=True, text=True, timeout=60, check=False, env=env
        )


def render(
    *value_files: Path, release: str = "candela", kube_version: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`helm template`: every manifest an install would apply, hooks included."""
    argv = ["template", release, str(CHART), "--namespace", "candela"]
    for path in value_files:
        argv += ["--values", str(path)]
    if kube_version is not None:
        argv += ["--kube-version", kube_version]
    return helm(*argv)


@cache
def manifests(*value_files: Path, kube_version: str | None = None) -> tuple[dict[str, Any], ...]:
    done = render(*value_files, kube_version=kube_version)
    assert done.returncode == 0, done.stdout + done.stderr
    return tuple(document for document in yaml.safe_load_all(done.stdout) if document)


def workload(name: str, docs: tuple[dict[str, Any], ...] | None = None) -> dict[str, Any]:
    (found,) = [
        doc
        for doc in (docs or manifests())
        if doc["kind"] in ("Deployment", "StatefulSet", "Job") and doc["metadata"]["name"] == f"candela-{name}"
    ]
    return found


def container(name: str, docs: tuple[dict[str, Any], ...] | None = None) -> dict[str, Any]:
    (only,) = workload(name, docs)["spec"]["template"]["spec"]["containers"]
    return dict(only)


def env_of(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in spec["env"]}


def test_the_chart_is_checked_with_the_pinned_helm() -> None:
    done = helm("version", "--short")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(HELM_VERSION + "+"), done.stdout


@pytest.mark.parametrize("value_files", [(), (EVERY_OPTION,)], ids=["defaults", "every-option"])
def test_helm_lint_strict_finds_nothing(value_files: tuple[Path, ...]) -> None:
    argv = ["lint", "--strict", str(CHART)]
    for path in value_files:
        argv += ["--values", str(path)]
    done = helm(*argv)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout
    assert "[WARNING]" not in done.stdout, done.stdout
    assert "[ERROR]" not in done.stdout, done.stdout


def test_helm_lint_strict_fails_a_chart_helm_would_refuse(tmp_path: Path) -> None:
    """The lint is a real check: a values file of the wrong shape, and a template Helm cannot parse, fail it."""
    values = tmp_path / "values.yaml"
    values.write_text("writer: {replicas: '7'}\n")
    done = helm("lint", "--strict", str(CHART), "--values", str(values))
    assert done.returncode != 0
    assert "/writer/replicas" in done.stdout + done.stderr
    broken = tmp_path / "candela"
    (broken / "templates").mkdir(parents=True)
    for path in [CHART / "Chart.yaml", CHART / "values.yaml", CHART / "values.schema.json"]:
        (broken / path.name).write_text(path.read_text())
    for path in (CHART / "templates").iterdir():
        (broken / "templates" / path.name).write_text(path.read_text())
    writer = broken / "templates" / "writer.yaml"
    writer.write_text(writer.read_text().replace("{{ .Values.writer.replicas }}", "{{ .Values.writer.replicas }"))
    done = helm("lint", "--strict", str(broken))
    assert done.returncode != 0
    assert "writer.yaml" in done.stdout + done.stderr


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("value_files", [(), (EVERY_OPTION,)], ids=["defaults", "every-option"])
def test_the_chart_renders_to_manifests_valid_for_kubernetes(value_files: tuple[Path, ...], version: str) -> None:
    """`helm template --kube-version` for each supported Kubernetes, every manifest strictly valid for it."""
    docs = manifests(*value_files, kube_version=version)
    kinds = sorted((doc["kind"], doc["metadata"]["name"]) for doc in docs)
    assert ("StatefulSet", "candela-proxy") in kinds
    assert ("Job", "candela-migrate") in kinds
    assert {name for kind, name in kinds if kind == "Deployment"} == {
        f"candela-{name}" for name in ("auth", "prompts", "query", "ingest", "writer", "gateway")
    }
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_chart_refuses_a_kubernetes_without_grpc_probes() -> None:
    done = render(kube_version="1.26.0")
    assert done.returncode != 0
    assert "kubeVersion" in done.stderr


def test_every_option_values_turn_on_what_they_name() -> None:
    """ci/every-option-values.yaml reaches the manifests: each optional part is rendered, not just accepted."""
    docs = manifests(EVERY_OPTION)
    for name in CONFIGS:
        env = env_of(container(name, docs))
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "http://otel-collector.observability.svc:4317", name
        assert env["CANDELA_LOG_LEVEL"]["value"] == "DEBUG", name
    for name in ("query", "writer", "migrate"):
        assert env_of(container(name, docs))["CANDELA_CLICKHOUSE_CLUSTER"]["value"] == "candela", name
    for name in ("auth", "prompts", "query", "ingest", "writer", "gateway"):
        assert env_of(container(name, docs))[f"CANDELA_EXTRA_{name.upper()}"]["value"] == "1", name
    proxy = env_of(container("proxy", docs))
    assert proxy["CANDELA_PROXY_WORKERS"]["value"] == "2"
    assert proxy["CANDELA_SPOOL_MAX_BYTES"]["value"] == "17179869184"
    assert proxy["CANDELA_VLLM_BASE_URL"]["value"] == "http://vllm.models.svc:8000/v1"
    assert proxy["CANDELA_EXTRA_FROM_CONFIGMAP"]["valueFrom"] == {
        "configMapKeyRef": {"name": "proxy-extra", "key": "value"}
    }
    (claim,) = workload("proxy", docs)["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert not [doc for doc in docs if doc["kind"] == "HorizontalPodAutoscaler"]
    assert {name: workload(name, docs)["spec"]["replicas"] for name in ("proxy", "ingest", "writer")} == {
        "proxy": 4,
        "ingest": 3,
        "writer": 12,
    }
    (gateway_service,) = [
        doc for doc in docs if doc["kind"] == "Service" and doc["metadata"]["name"] == "candela-gateway"
    ]
    assert gateway_service["spec"]["type"] == "ClusterIP"
    assert workload("migrate", docs)["spec"]["backoffLimit"] == 0


def test_the_schemas_catch_a_broken_manifest() -> None:
    broken = json.loads(json.dumps(workload("auth")))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcc"] = {"port": 50051}
    with pytest.raises(kubernetes_validate.ValidationError, match="grpcc"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ("clickhouse: null", "clickhouse"),
        ("clickhouse: {host: null}", "host"),
        ("kafka: {bootstrap: ''}", "/kafka/bootstrap"),
        ("proxy: {spool: {maxBytes: 4294967296}}", "/proxy/spool/maxBytes"),
        ("wrtier: {replicas: 7}", "wrtier"),
    ],
)
def test_a_missing_or_malformed_value_fails_the_render_instead_of_rendering_blank(
    values: str, named: str, tmp_path: Path
) -> None:
    """Helm renders a missing value as nothing; values.schema.json makes Helm refuse it instead."""
    path = tmp_path / "values.yaml"
    path.write_text(values + "\n")
    done = render(path)
    assert done.returncode != 0, done.stdout
    assert named in done.stderr


def value_paths(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for key, value in tree.items():
        yield (*prefix, key)
        if isinstance(value, dict):
            yield from value_paths(value, (*prefix, key))


def described(schema: dict[str, Any], path: tuple[str, ...]) -> bool:
    """Whether values.schema.json says what `path` holds (an object without properties holds anything)."""
    node = schema
    for key in path:
        while "$ref" in node:
            node = schema["definitions"][node["$ref"].removeprefix("#/definitions/")]
        if key in node.get("properties", {}):
            node = node["properties"][key]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return node.get("type") == "object" and "properties" not in node
    return "type" in node or "$ref" in node


def test_every_value_the_templates_read_has_a_default_and_a_schema() -> None:
    """A template reading a value values.yaml lacks renders it blank (Helm does not fail): none does."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.validate(defaults, schema)
    read = {
        tuple(match.split("."))
        for path in (CHART / "templates").iterdir()
        for match in re.findall(r"\.Values\.([A-Za-z0-9_.]+[A-Za-z0-9_])", path.read_text())
    }
    assert len(read) > 40, "the templates read values some other way: update this pattern"
    known = set(value_paths(defaults))
    assert read - known == set(), "read by a template, missing from values.yaml"
    assert [path for path in sorted(known) if not described(schema, path)] == [], "not in values.schema.json"
    in_schema = {key for key in schema["properties"] if key != "global"}
    assert in_schema == set(defaults), "the schema's sections are values.yaml's"


def test_values_files_override_and_the_release_name_prefixes_everything(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text("writer: {replicas: 7}\nkafka: {bootstrap: 'broker-0:9092,broker-1:9092'}\n")
    done = render(values, release="prod")
    assert done.returncode == 0, done.stderr
    docs = tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)
    (writer,) = [doc for doc in docs if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "prod-writer"]
    assert writer["spec"]["replicas"] == 7
    assert env_of(writer["spec"]["template"]["spec"]["containers"][0])["CANDELA_KAFKA_BOOTSTRAP"]["value"] == (
        "broker-0:9092,broker-1:9092"
    )
    assert writer["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "1"
    assert all(doc["metadata"]["name"].startswith("prod-") for doc in docs)


def test_autoscalers_and_disruption_budgets_point_at_rendered_workloads(tmp_path: Path) -> None:
    docs = manifests()
    workloads = {(doc["kind"], doc["metadata"]["name"]) for doc in docs if doc["kind"] in ("Deployment", "StatefulSet")}
    scaled = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "HorizontalPodAutoscaler"}
    assert set(scaled) == {"candela-proxy", "candela-ingest"}
    for name, autoscaler in scaled.items():
        target = autoscaler["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) in workloads
        assert "replicas" not in workload(name.removeprefix("candela-"))["spec"], "a fixed count fights the HPA"
    budgets = [doc for doc in docs if doc["kind"] == "PodDisruptionBudget"]
    selected = {tuple(sorted(doc["spec"]["selector"]["matchLabels"].items())) for doc in budgets}
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            assert tuple(sorted(doc["spec"]["selector"]["matchLabels"].items())) in selected, doc["metadata"]["name"]
    values = tmp_path / "values.yaml"
    values.write_text("proxy: {autoscaling: {enabled: false}, replicas: 4}\n")
    fixed = tuple(doc for doc in yaml.safe_load_all(render(values).stdout) if doc)
    assert workload("proxy", fixed)["spec"]["replicas"] == 4
    assert "candela-proxy" not in {doc["metadata"]["name"] for doc in fixed if doc["kind"] == "HorizontalPodAutoscaler"}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_each_service_is_started_as_make_run_starts_it_with_every_variable_its_config_requires(name: str) -> None:
    module, class_name = CONFIGS[name]
    config_class = getattr(importlib.import_module(module), class_name)
    required = {
        env_name(field.name)
        for field in dataclasses.fields(config_class)
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
    }
    spec = container(name)
    assert spec["command"] == ["python", "-m", SERVICE_MODULES[COMPONENTS[name]]]
    assert required <= set(env_of(spec)), f"{name} would refuse to start without {required - set(env_of(spec))}"
    host = "CANDELA_HTTP_HOST" if name == "proxy" else "CANDELA_GRPC_HOST"
    assert env_of(spec)[host]["value"] == "0.0.0.0", "bound to loopback, no probe or client could reach it"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_each_service_is_told_everything_make_run_tells_it(name: str, tmp_path: Path) -> None:
    stack = Stack(StackConfig.for_tests(tmp_path))
    told = {
        variable
        for variable in stack.service_env(COMPONENTS[name])
        if variable.startswith("CANDELA_") and variable not in os.environ
    }
    assert told - set(env_of(container(name))) == set()


def test_the_chart_sends_each_provider_where_the_proxy_would_by_itself() -> None:
    """The chart's provider URLs are the proxy's own defaults: installing it changes no upstream."""
    from candela_proxy.config import ProxyConfig

    defaults = {
        env_name(field.name): field.default
        for field in dataclasses.fields(ProxyConfig)
        if field.name.endswith("_base_url")
    }
    told = {name: entry["value"] for name, entry in env_of(container("proxy")).items() if name.endswith("_BASE_URL")}
    assert told == defaults


def test_credentials_are_only_ever_secret_references(tmp_path: Path) -> None:
    docs = manifests()
    assert not [doc for doc in docs if doc["kind"] in ("Secret", "ConfigMap")]
    referenced: set[str] = set()
    for doc in docs:
        pod = doc["spec"].get("template", {}).get("spec", {})
        for spec in pod.get("containers", []):
            for name, entry in env_of(spec).items():
                if SECRET_NAMES.search(name):
                    assert "value" not in entry, f"{doc['metadata']['name']}: {name} inline"
                    referenced.add(entry["valueFrom"]["secretKeyRef"]["name"])
    assert referenced == {
        "candela-service-token",
        "candela-postgres",
        "candela-clickhouse",
        "candela-s3",
        "candela-redis",
    }
    values = tmp_path / "values.yaml"
    values.write_text("postgres: {existingSecret: prod-pg, dsnKey: uri}\n")
    done = render(values)
    docs = tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)
    assert env_of(container("auth", docs))["CANDELA_POSTGRES_DSN"]["valueFrom"] == {
        "secretKeyRef": {"name": "prod-pg", "key": "uri"}
    }


def test_every_clickhouse_client_is_given_every_member_of_a_cluster(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(
        "clickhouse: {host: ch-s1r1.data.svc, cluster: candela,"
        " altHosts: [ch-s1r2.data.svc, 'ch-s2r1.data.svc:9440', ch-s2r2.data.svc], memberRetrySeconds: 12.5}\n"
    )
    done = render(values)
    assert done.returncode == 0, done.stdout + done.stderr
    docs = tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)
    for name in ("query", "writer", "migrate"):
        env = env_of(container(name, docs))
        host, port = env["CANDELA_CLICKHOUSE_HOST"]["value"], int(env["CANDELA_CLICKHOUSE_PORT"]["value"])
        members = parse_members(host, port, env["CANDELA_CLICKHOUSE_ALT_HOSTS"]["value"])
        assert members == (
            ("ch-s1r1.data.svc", 9000),
            ("ch-s1r2.data.svc", 9000),
            ("ch-s2r1.data.svc", 9440),
            ("ch-s2r2.data.svc", 9000),
        ), name
    for name in ("query", "writer"):  # how soon they try a member again, and go back to a preferred one
        assert env_of(container(name, docs))["CANDELA_CLICKHOUSE_MEMBER_RETRY_S"]["value"] == "12.5", name
        assert env_of(container(name))["CANDELA_CLICKHOUSE_MEMBER_RETRY_S"]["value"] == "30", name
    # One server by default: no other member.
    assert env_of(container("query"))["CANDELA_CLICKHOUSE_ALT_HOSTS"]["value"] == ""


def test_probes_ask_each_service_its_own_health_endpoint() -> None:
    for name in ("auth", "prompts", "query", "ingest", "writer"):
        spec = container(name)
        port = int(env_of(spec)["CANDELA_GRPC_PORT"]["value"])
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert spec[probe]["grpc"] == {"port": port}, f"{name} {probe}: grpc.health.v1 on the served port"
        metrics = int(env_of(spec)["CANDELA_METRICS_PORT"]["value"])
        annotations = workload(name)["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(metrics)
    proxy = container("proxy")
    http = next(port for port in proxy["ports"] if port["name"] == "http")
    assert http["containerPort"] == int(env_of(proxy)["CANDELA_HTTP_PORT"]["value"])
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert proxy[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    gateway = container("gateway")
    admin = next(port for port in gateway["ports"] if port["name"] == "admin")
    assert admin["containerPort"] == int(env_of(gateway)["CANDELA_ENVOY_ADMIN_PORT"]["value"])
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "admin"}


def test_migrations_run_before_install_and_upgrade_with_the_migrate_command() -> None:
    job = workload("migrate")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    spec = container("migrate")
    assert spec["command"] == ["candela-migrate"]
    assert {"CANDELA_POSTGRES_DSN", "CANDELA_CLICKHOUSE_HOST", "CANDELA_CLICKHOUSE_PASSWORD"} <= set(env_of(spec))


def test_the_gateway_config_generated_from_the_charts_environment_is_accepted_by_envoy(tmp_path: Path) -> None:
    environment = {name: entry["value"] for name, entry in env_of(container("gateway")).items()}
    gateway = DeployedGateway.from_environment(environment)
    services = {doc["metadata"]["name"]: doc for doc in manifests() if doc["kind"] == "Service"}
    for cluster, variable in UPSTREAM_ENV.items():
        host, port = gateway.upstreams[cluster]
        service = services[host]
        assert service["spec"]["clusterIP"] == "None", f"{host}: Envoy must see every pod, not one virtual IP"
        assert port in [entry["port"] for entry in service["spec"]["ports"]], variable
    config = gateway.config(tmp_path)
    clusters = {cluster["name"]: cluster for cluster in config["static_resources"]["clusters"]}
    assert set(clusters) == set(UPSTREAM_ENV)
    assert all(cluster["type"] == "STRICT_DNS" and cluster["health_checks"] for cluster in clusters.values())
    envoy_validate(envoy_binary(), write_envoy_config(config, tmp_path / "envoy.yaml"))


# --- the Dockerfiles ---------------------------------------------------------------------------------


def dockerfiles() -> list[Path]:
    return sorted(DOCKERFILES.glob("*.Dockerfile"))


def test_there_is_a_dockerfile_per_workload_and_hadolint_finds_nothing() -> None:
    assert [path.name.split(".")[0] for path in dockerfiles()] == sorted([*CONFIGS, "gateway"])
    hadolint = Path(sys.executable).with_name("hadolint")
    done = subprocess.run(
        [str(hadolint), "--config", str(DOCKERFILES / ".hadolint.yaml"), "--failure-threshold", "style"]
        + [str(path) for path in dockerfiles()],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("path", dockerfiles(), ids=lambda path: path.name)
def test_each_image_is_multi_stage_non_root_health_checked_and_runs_what_the_chart_runs(path: Path) -> None:
    lines = [line.strip() for line in path.read_text().splitlines()]
    assert sum(line.startswith("FROM ") for line in lines) >= 2
    final_stage = lines[max(index for index, line in enumerate(lines) if line.startswith("FROM ")) :]
    users = [line.split()[1] for line in final_stage if line.startswith("USER ")]
    assert users, "the final stage must drop root"
    assert users[-1].split(":")[0] not in ("0", "root")
    assert any(line.startswith("HEALTHCHECK") for line in final_stage)
    uv_version = re.search(r"^UV_VERSION=(\S+)$", (ROOT / "scripts" / "install.sh").read_text(), re.MULTILINE)
    assert uv_version is not None
    assert f"uv=={uv_version.group(1)}" in path.read_text(), "the images build with the uv the repository pins"
    # uv reads the whole workspace (members' sources name it): every member must be in the build context.
    members = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["uv"]["workspace"]["members"]
    copied = {line.split()[1] for line in lines if line.startswith("COPY ") and "--from" not in line}
    assert {"pyproject.toml", *(member.split("/")[0] for member in members)} <= copied
    # The image's command is the last CMD (the HEALTHCHECK's own CMD comes before it).
    cmd = json.loads([line for line in final_stage if line.startswith("CMD ")][-1].removeprefix("CMD "))
    name = path.name.split(".")[0]
    assert cmd == container(name)["command"]


# --- metrics: rules, dashboard, scrape config ----------------------------------------------------------


@cache
def exposed_metrics() -> dict[str, frozenset[str]]:
    """Every series name Candela exposes -> its label names, from the prometheus_client objects."""
    exposed: dict[str, frozenset[str]] = {}
    for module_name in METRIC_MODULES:
        for value in vars(importlib.import_module(module_name)).values():
            if not isinstance(value, MetricWrapperBase):
                continue
            labels = frozenset(value._labelnames)
            name = value._name
            if isinstance(value, Counter):
                exposed[f"{name}_total"] = labels
            elif isinstance(value, Gauge):
                exposed[name] = labels
            elif isinstance(value, Histogram):
                for suffix in ("_bucket", "_sum", "_count"):
                    exposed[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    assert len(exposed) > 40, "the metric modules moved: update METRIC_MODULES"
    return exposed


def selectors(expression: str) -> Iterator[tuple[str, set[str]]]:
    """(metric name, label names used) of every selector in a PromQL expression (parsed: a syntax error raises)."""
    found: list[tuple[str, set[str]]] = []
    grouping: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            found.append((node.name or "", {matcher.name for matcher in node.matchers.matchers}))
        if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            grouping.update(node.modifier.labels)
        return True

    promql_parser.walk(promql_parser.parse(expression), visit, None)
    for name, labels in found:
        yield name, labels | grouping


def assert_real_metrics(expression: str, where: str) -> set[str]:
    names: set[str] = set()
    for name, _ in selectors(expression):
        if name == "up":
            continue
        assert name in exposed_metrics(), f"{where}: {name} is not a metric Candela exposes"
        names.add(name)
    known = TARGET_LABELS.union(*(exposed_metrics()[name] for name in names)) if names else TARGET_LABELS
    for _, labels in selectors(expression):
        assert labels <= known, f"{where}: no such label {labels - known}"
    return names


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_alert_rules_parse_and_name_only_real_metrics_and_labels() -> None:
    named: set[str] = set()
    for rule in rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
        if "for" in rule:
            promql_parser.parse_duration(rule["for"])
        named |= assert_real_metrics(rule["expr"], rule["alert"])
    for must in (
        "candela_writer_commit_lag_seconds",  # consumer lag
        "candela_writer_dead_letters_total",  # DLQ
        "candela_proxy_spool_bytes",  # spool bytes
        "candela_proxy_logs_dropped_total",  # drops
        "candela_proxy_requests_total",  # error rates
        "candela_grpc_server_handled_total",
    ):
        assert must in named


def test_the_metric_checks_catch_a_misspelt_metric_a_wrong_label_and_bad_syntax() -> None:
    with pytest.raises(AssertionError, match="not a metric"):
        assert_real_metrics("rate(candela_proxy_logs_droped_total[5m])", "typo")
    with pytest.raises(AssertionError, match="no such label"):
        assert_real_metrics('sum by (cause) (rate(candela_proxy_logs_dropped_total{reasons="x"}[5m]))', "label")
    with pytest.raises(ValueError, match="function"):
        assert_real_metrics("histogram_quantil(0.9, candela_proxy_overhead_seconds_bucket)", "syntax")


def test_the_dashboard_matches_its_schema_and_charts_only_real_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    jsonschema.validate(dashboard, json.loads(DASHBOARD_SCHEMA.read_text()))
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24, panel["title"]
        area = {(position["x"] + dx, position["y"] + dy) for dx in range(position["w"]) for dy in range(position["h"])}
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        for target in panel.get("targets", []):
            expression = target["expr"].replace("$__rate_interval", "5m").replace("$namespace", ".*")
            assert_real_metrics(expression, panel["title"])
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_the_scrape_config_keeps_the_pods_the_chart_annotates() -> None:
    scrape = yaml.safe_load(SCRAPE.read_text())
    assert scrape["rule_files"] == [RULES.name]
    (job,) = scrape["scrape_configs"]
    keep = next(step for step in job["relabel_configs"] if step.get("action") == "keep")
    for name in ("auth", "prompts", "query", "ingest", "writer", "gateway"):
        metadata = workload(name)["spec"]["template"]["metadata"]
        values = ";".join(
            [metadata["labels"]["app.kubernetes.io/name"], metadata["annotations"]["prometheus.io/scrape"]]
        )
        assert re.fullmatch(keep["regex"], values), name
    ports = {
        int(workload(name)["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"]) for name in CONFIGS
    }
    served = {port["containerPort"] for name in CONFIGS for port in container(name)["ports"]}
    assert ports <= served, "every scraped port is one a container serves"
