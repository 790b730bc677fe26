"""k8s/: every manifest is a valid KubeRay object, checked against our JSON Schemas for the ray.io/v1
CRDs (k8s/schemas/, written from KubeRay's Go types) whose pod templates and metadata are Kubernetes'
own strict schemas (from the kubernetes-validate package); the RayService serves serve/config.yaml;
the GPU worker groups hold the Serve deployments; image, Ray version and Dockerfile agree with the
project's pins. No cluster and no Docker needed."""

import copy
import functools
import importlib.metadata
import json
import re
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import ray
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
SCHEMAS = K8S / "schemas"
MANIFESTS = sorted(K8S.glob("*.yaml"))
SERVE_CONFIG = REPO / "serve" / "config.yaml"
SCHEMA_FILES = {"RayCluster": "raycluster.schema.json", "RayService": "rayservice.schema.json",
                "RayJob": "rayjob.schema.json"}  # fmt: skip
# Kubernetes' strict schemas (no unknown fields) for the API version kubernetes-validate is pinned to.
K8S_VERSION = importlib.metadata.version("kubernetes-validate")
K8S_DEFINITIONS = (Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
                   / f"v{K8S_VERSION}-local-strict" / "_definitions.json")  # fmt: skip
# The one value a cluster needs differently from serve/config.yaml (k8s/rayservice.yaml's header).
CLUSTER_OVERRIDES = {("http_options", "host"): "0.0.0.0"}
GPU = "nvidia.com/gpu"


# --- loading and validating -------------------------------------------------------------------------


def load_schema(path: Path) -> dict:
    return json.loads(path.read_text())


@functools.cache
def registry() -> Registry:
    """Our schemas and Kubernetes' definitions, each under its $id; nothing is fetched."""
    resources = [Resource.from_contents(load_schema(p)) for p in [K8S_DEFINITIONS, *sorted(SCHEMAS.glob("*.json"))]]
    return Registry().with_resources((resource.id(), resource) for resource in resources)


@functools.cache
def validator(kind: str) -> Draft202012Validator:
    return Draft202012Validator(load_schema(SCHEMAS / SCHEMA_FILES[kind]), registry=registry())


def manifest_errors(doc: dict, source: str) -> list[str]:
    """Every schema violation in one manifest document, as '<source>: <kind> at <JSON path>: <message>'."""
    kind = doc.get("kind") if isinstance(doc, dict) else None
    if kind not in SCHEMA_FILES:
        return [f"{source}: kind {kind!r} has no schema; expected one of {sorted(SCHEMA_FILES)}"]
    errors = sorted(validator(kind).iter_errors(doc), key=lambda e: e.json_path)
    return [f"{source}: {kind} at {e.json_path}: {e.message[:300]}" for e in errors]


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifest(name: str) -> dict:
    (doc,) = documents(K8S / name)
    return doc


def cluster_spec(doc: dict) -> dict:
    spec = doc["spec"]
    return {"RayCluster": lambda: spec, "RayService": lambda: spec["rayClusterConfig"],
            "RayJob": lambda: spec["rayClusterSpec"]}[doc["kind"]]()  # fmt: skip


def pod_templates(doc: dict) -> list[dict]:
    """Every pod template in a KubeRay object: head, worker groups, RayJob submitter."""
    cluster = cluster_spec(doc)
    templates = [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster.get("workerGroupSpecs", []))]
    if "submitterPodTemplate" in doc["spec"]:
        templates.append(doc["spec"]["submitterPodTemplate"])
    return templates


def containers(template: dict) -> list[dict]:
    return template["spec"]["containers"] + template["spec"].get("initContainers", [])


def gpus(group: dict, where: str = "limits") -> float:
    """GPUs one pod of a head or worker group asks Kubernetes for."""
    return sum(float(c.get("resources", {}).get(where, {}).get(GPU, 0)) for c in containers(group["template"]))


def cpus(group: dict) -> float:
    """CPUs Ray counts on one pod of a group: KubeRay reads the CPU limit, else the request."""
    resources = [c.get("resources", {}) for c in containers(group["template"])]
    quantities = [str(r.get("limits", {}).get("cpu", r.get("requests", {}).get("cpu", 0))) for r in resources]
    return sum(float(q[:-1]) / 1000 if q.endswith("m") else float(q) for q in quantities)


# --- schema validation ------------------------------------------------------------------------------


def test_schemas_are_valid_and_every_ref_resolves():
    def refs(node):
        if isinstance(node, dict):
            yield from ([node["$ref"]] if "$ref" in node else [])
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    assert sorted(p.name for p in SCHEMAS.glob("*.json")) == sorted(SCHEMA_FILES.values())
    for name in SCHEMA_FILES.values():
        schema = load_schema(SCHEMAS / name)
        Draft202012Validator.check_schema(schema)
        resolver = registry().resolver(base_uri=schema["$id"])
        for ref in refs(schema):
            resolver.lookup(ref)  # raises Unresolvable for a typo'd definition name


def test_every_kuberay_kind_has_a_manifest():
    kinds = sorted(doc["kind"] for path in MANIFESTS for doc in documents(path))
    assert set(kinds) == set(SCHEMA_FILES), kinds


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_against_kuberay_and_kubernetes_schemas(path):
    docs = documents(path)
    assert docs, f"{path} has no YAML documents"
    source = path.relative_to(REPO)
    errors = [error for i, doc in enumerate(docs) for error in manifest_errors(doc, f"{source}[{i}]")]
    assert not errors, "\n".join(errors)


def at(doc: dict, dotted: str) -> tuple[dict | list, str | int]:
    """The container and key that `dotted` ('spec.workerGroupSpecs.0.replicas') names inside `doc`."""
    *parents, last = [int(k) if k.isdigit() else k for k in dotted.split(".")]
    node = functools.reduce(lambda n, k: n[k], parents, doc)
    return node, last


def rename(dotted: str, new: str):
    def edit(doc):
        node, key = at(doc, dotted)
        node[new] = node.pop(key)

    return edit


def put(dotted: str, value):
    def edit(doc):
        node, key = at(doc, dotted)
        node[key] = value

    return edit


def drop(dotted: str):
    def edit(doc):
        node, key = at(doc, dotted)
        del node[key]

    return edit


HEAD_POD = "spec.rayClusterConfig.headGroupSpec.template.spec"


@pytest.mark.parametrize(
    ("name", "edit", "path", "message"),
    [
        pytest.param("raycluster.yaml", rename("spec.workerGroupSpecs", "workerGroupSpec"),
                     "$.spec", "'workerGroupSpec' was unexpected", id="typo-in-a-kuberay-field"),
        pytest.param("rayservice.yaml", rename(f"{HEAD_POD}.containers", "contaners"),
                     f"$.{HEAD_POD}", "'contaners' was unexpected",
                     id="typo-inside-a-pod-template"),
        pytest.param("raycluster.yaml", put("spec.workerGroupSpecs.0.replicas", "two"),
                     "$.spec.workerGroupSpecs[0].replicas", "'two' is not of type 'integer'", id="wrong-type"),
        pytest.param("raycluster.yaml", drop("spec.workerGroupSpecs.0.template.spec.containers.0.name"),
                     "$.spec.workerGroupSpecs[0].template.spec.containers[0]", "'name' is a required property",
                     id="container-without-name"),
        pytest.param("rayjob-slue-eval.yaml", put("spec.submissionMode", "K8sJob"),
                     "$.spec.submissionMode", "'K8sJob' is not one of", id="bad-submission-mode"),
        pytest.param("rayjob-slue-eval.yaml", put("spec.submitterPodTemplate", {"spec": {"containers": [{}]}}),
                     "$.spec.submitterPodTemplate.spec.containers[0]", "'name' is a required property",
                     id="submitter-template-is-a-pod-template"),
        pytest.param("rayservice.yaml", put("spec.rayClusterConfig.workerGroupSpecs.0.rayStartParams", {"num-gpus": 1}),
                     "$.spec.rayClusterConfig.workerGroupSpecs[0].rayStartParams['num-gpus']",
                     "1 is not of type 'string'", id="ray-start-params-are-strings"),
        pytest.param("rayservice.yaml", drop("spec.rayClusterConfig"),
                     "$.spec", "'rayClusterConfig' is a required property", id="missing-required-field"),
    ],
)  # fmt: skip
def test_validation_catches(name, edit, path, message):
    doc = copy.deepcopy(manifest(name))
    edit(doc)
    errors = manifest_errors(doc, f"k8s/{name}")
    prefix = f"k8s/{name}: {doc['kind']} at {path}: "
    assert any(e.startswith(prefix) and message in e for e in errors), "\n".join(errors) or "no errors"


# --- what the manifests run --------------------------------------------------------------------------


def test_rayservice_serves_serve_config_with_only_the_documented_override():
    text = (K8S / "rayservice.yaml").read_text()
    header = text.split("\napiVersion:")[0]
    assert "http_options.host: 0.0.0.0" in header  # the override is documented where it is made
    expected = yaml.safe_load(SERVE_CONFIG.read_text())
    for keys, value in CLUSTER_OVERRIDES.items():
        node, key = at(expected, ".".join(keys))
        assert node[key] != value, f"serve/config.yaml already has {'.'.join(keys)}: {value}; drop the override"
        node[key] = value
    embedded = yaml.safe_load(manifest("rayservice.yaml")["spec"]["serveConfigV2"])
    assert embedded == expected


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayservice.yaml"])
def test_cpu_head_and_gpu_workers(name):
    cluster = cluster_spec(manifest(name))
    head = cluster["headGroupSpec"]
    assert gpus(head, "requests") == gpus(head, "limits") == 0
    assert head["rayStartParams"].get("num-gpus", "0") == "0"
    (group,) = [g for g in cluster["workerGroupSpecs"] if gpus(g) > 0]
    for c in containers(group["template"]):  # Kubernetes wants extended resources' requests == limits
        resources = c.get("resources", {})
        assert resources.get("requests", {}).get(GPU) == resources.get("limits", {}).get(GPU), c["name"]
    assert gpus(group, "requests") >= 1
    assert any(t.get("key") == GPU and t.get("effect", "NoSchedule") == "NoSchedule"
               for t in group["template"]["spec"].get("tolerations", [])), "GPU nodes are usually tainted"  # fmt: skip
    assert cluster["enableInTreeAutoscaling"] is True  # Serve autoscaling needs pods added for new replicas
    assert 1 <= group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]


def test_rayservice_runs_serve_in_the_mode_spokenlm_serve_uses():
    import sys

    sys.path.insert(0, str(REPO))  # serve/ is not an installed package
    from serve.app import SERVE_THROUGHPUT_ENV

    cluster = cluster_spec(manifest("rayservice.yaml"))
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for c in (c for g in groups for c in containers(g["template"])):
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        assert {k: env.get(k) for k in SERVE_THROUGHPUT_ENV} == SERVE_THROUGHPUT_ENV, c["name"]


@pytest.mark.parametrize("name", ["rayservice.yaml", "raycluster.yaml"])
def test_every_serve_proxy_gets_json_errors_and_the_apps_upload_limit(name):
    """Ray's HTTP proxies take serve/edge.py's middlewares and body limit from their node's environment,
    never from the serve config: every head and worker container sets both, the limit equal to the
    app's max_upload_mb (else the proxy refuses at another size than the ingress)."""
    from serve.edge import CALLBACK, MAX_UPLOAD_ENV

    (app,) = yaml.safe_load(SERVE_CONFIG.read_text())["applications"]
    cluster = cluster_spec(manifest(name))
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for c in (c for g in groups for c in containers(g["template"])):
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        assert env.get("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH") == CALLBACK, c["name"]
        assert float(env.get(MAX_UPLOAD_ENV, "nan")) == app["args"]["max_upload_mb"], c["name"]


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayservice.yaml"])
def test_gpu_workers_hold_the_serve_deployments(name):
    """Head num-cpus 0: every replica lands on the GPU workers, the minimum replicas on minReplicas
    pods, the maximum on maxReplicas pods (summed per resource; no replica needs more than a pod)."""
    cluster = cluster_spec(manifest(name))
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (group,) = [g for g in cluster["workerGroupSpecs"] if gpus(g) > 0]
    (app,) = yaml.safe_load(SERVE_CONFIG.read_text())["applications"]
    need = {"min": {"GPU": 0.0, "CPU": 0.0}, "max": {"GPU": 0.0, "CPU": 0.0}}
    for d in app["deployments"]:
        options = d.get("ray_actor_options", {})
        per_replica = {"GPU": options.get("num_gpus", 0), "CPU": options.get("num_cpus", 1)}
        assert per_replica["GPU"] <= gpus(group) and per_replica["CPU"] <= cpus(group), d["name"]
        scaling = d.get("autoscaling_config", {})
        for bound in ("min", "max"):
            replicas = scaling.get(f"{bound}_replicas", d.get("num_replicas", 1))
            for resource, amount in per_replica.items():
                need[bound][resource] += replicas * amount
    assert need["min"]["GPU"] > 0, "serve/config.yaml reserves no GPU"
    for bound in ("min", "max"):
        pods = group[f"{bound}Replicas"]
        assert need[bound]["GPU"] <= pods * gpus(group), (bound, need[bound], pods)
        assert need[bound]["CPU"] <= pods * cpus(group), (bound, need[bound], pods)


def test_one_image_whose_tag_matches_the_project_and_ray():
    docs = [doc for path in MANIFESTS for doc in documents(path)]
    images = {c["image"] for doc in docs for t in pod_templates(doc) for c in containers(t)}
    assert len(images) == 1, images
    (image,) = images
    tag = re.fullmatch(r"ghcr\.io/spokenlm/spokenlm:(?P<version>\d+\.\d+\.\d+)-ray(?P<ray>\d+\.\d+\.\d+)", image)
    assert tag, image
    assert tag["ray"] == ray.__version__
    assert {cluster_spec(doc)["rayVersion"] for doc in docs} == {tag["ray"]}
    assert tag["version"] == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    requirements = (REPO / "requirements.txt").read_text()
    assert re.search(rf"^ray\[[a-z,]+\]=={re.escape(tag['ray'])}$", requirements, re.MULTILINE)
    assert f"-t {image} ." in (K8S / "Dockerfile").read_text()  # the documented build command


def dockerfile_instructions() -> list[tuple[str, str]]:
    lines = [ln for ln in (K8S / "Dockerfile").read_text().splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in joined.splitlines() if ln.strip()]


def test_dockerfile_installs_ffmpeg_apertium_and_everything_in_one_pip_command():
    instructions = dockerfile_instructions()
    (base,) = [args for op, args in instructions if op == "FROM"]
    assert base == "python:3.11-slim"  # pyproject: requires-python >=3.11,<3.12
    runs = [args for op, args in instructions if op == "RUN"]
    (apt,) = [r for r in runs if "apt-get install" in r]
    assert {"ffmpeg", "wget"} <= set(apt.split())  # torchcodec's decoder; KubeRay's probes
    assert {"apertium", "apertium-eng-spa"} <= set(apt.split())  # the default bundle's translator
    pips = [r for r in runs if re.search(r"\bpip3? install\b", r)]
    assert len(pips) == 1 and len(re.findall(r"\bpip3? install\b", pips[0])) == 1, pips
    assert re.search(r"\bpip install -r requirements\.txt (-e )?\.$", pips[0]), pips[0]
    copied = " ".join(args for op, args in instructions[: instructions.index(("RUN", pips[0]))] if op == "COPY")
    for needed in ("requirements.txt", "pyproject.toml", "README.md", "spokenlm/", "serve/", "pipelines/"):
        assert needed in copied, f"{needed} is not in the image before pip install"
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "runs"} <= set(ignored)
