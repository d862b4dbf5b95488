"""The Kubernetes manifest (deploy/rayservice.yaml) and the Serve config for `serve deploy`
(deploy/serve-config.yaml) validate without kubectl or a cluster.

* The manifest's documents parse into pydantic models of the KubeRay and Kubernetes fields
  they use, with unknown fields refused (a misspelt field is silently dropped by a lenient
  API server or operator, so a typo must fail here).
* Both Serve configs pass Ray's own ``ServeDeploySchema`` and name no field Ray does not know
  (the schema itself ignores unknown keys), they are the same config, their deployments are
  the ones the real app builds, and Serve's own override step accepts them for that app.
* The ConfigMap's TOML loads through :meth:`bms.settings.Settings.load`, and the shards it
  configures ask for the resource the twin workers advertise.
* Security as ``tests/unit/test_cluster_security.py`` checks the cluster launcher files:
  token authentication on, the dashboard not exposed, credentials from Secrets only.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from ray.serve._private.application_state import override_deployment_info
from ray.serve._private.build_app import build_app as build_serve_app
from ray.serve._private.config import ReplicaConfig
from ray.serve._private.deployment_info import DeploymentInfo
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import (
    DeploymentSchema,
    HTTPOptionsSchema,
    RayActorOptionsSchema,
    ServeApplicationSchema,
    ServeDeploySchema,
)

from bms.serve_app import ServeAppArgs
from bms.services import ServiceUrls
from bms.settings import Settings
from bms.system import initial_shards, twin_runtime_spec
from contracts.redaction import redact_text
from models.predictors import PREDICTORS
from runtime.app import AppArgs, build_app
from runtime.ingress import serve_controller_env
from runtime.names import SERVE_APP_NAME
from runtime.twins import shard_options

ROOT = Path(__file__).resolve().parents[2]
RAYSERVICE = ROOT / "deploy" / "rayservice.yaml"
SERVE_CONFIG = ROOT / "deploy" / "serve-config.yaml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
SHARD_RESOURCE = "bms_twin_shard"
SECRET_NAME = "bms-secrets"
#: The variables that carry hosts and credentials (``Settings.load``), and whether a pod
#: starts without them (an external broker may take no login).
SECRET_ENV = {
    "BMS_POSTGRES_URL": False,
    "BMS_REDIS_URL": False,
    "BMS_MQTT_URL": False,
    "BMS_MQTT_USERNAME": True,
    "BMS_MQTT_PASSWORD": True,
}
#: Names that would hold a secret if given a literal value.
_SECRET_NAME = re.compile(r"(?i)(url|password|passwd|token|secret|key|username|credential)")


# --- Models of the fields the manifest uses (KubeRay ray.io/v1, Kubernetes core/v1) ---------

_K8S = ConfigDict(extra="forbid", frozen=True)
DnsLabel = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)]
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
AbsPath = Annotated[str, StringConstraints(pattern=r"^/")]
# A Kubernetes quantity: "4", "500m", "16Gi" (or a bare integer).
Quantity = int | Annotated[str, StringConstraints(pattern=r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")]


class ObjectMeta(BaseModel):
    model_config = _K8S
    name: DnsLabel
    namespace: DnsLabel | None = None
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}


class SecretKeySelector(BaseModel):
    model_config = _K8S
    name: DnsLabel
    key: Annotated[str, StringConstraints(pattern=r"^[-._a-zA-Z0-9]+$")]
    optional: bool | None = None


class EnvVarSource(BaseModel):
    model_config = _K8S
    secretKeyRef: SecretKeySelector


class EnvVar(BaseModel):
    model_config = _K8S
    name: EnvName
    value: str | None = None
    valueFrom: EnvVarSource | None = None

    @model_validator(mode="after")
    def _one_source(self) -> EnvVar:
        if (self.value is None) == (self.valueFrom is None):
            raise ValueError(f"Expected one of value or valueFrom for {self.name}")
        return self


class ResourceRequirements(BaseModel):
    model_config = _K8S
    requests: dict[str, Quantity] = {}
    limits: dict[str, Quantity] = {}


class ContainerPort(BaseModel):
    model_config = _K8S
    name: Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=15)]
    containerPort: int = Field(ge=1, le=65535)
    protocol: Literal["TCP", "UDP", "SCTP"] | None = None


class ExecAction(BaseModel):
    model_config = _K8S
    command: list[str] = Field(min_length=1)


class LifecycleHandler(BaseModel):
    model_config = _K8S
    exec: ExecAction


class Lifecycle(BaseModel):
    model_config = _K8S
    preStop: LifecycleHandler | None = None


class VolumeMount(BaseModel):
    model_config = _K8S
    name: DnsLabel
    mountPath: AbsPath
    readOnly: bool | None = None


class Container(BaseModel):
    model_config = _K8S
    name: DnsLabel
    image: str = Field(min_length=1)
    env: list[EnvVar] = []
    resources: ResourceRequirements
    ports: list[ContainerPort] = []
    volumeMounts: list[VolumeMount] = []
    lifecycle: Lifecycle | None = None


class ConfigMapVolumeSource(BaseModel):
    model_config = _K8S
    name: DnsLabel


class PersistentVolumeClaimVolumeSource(BaseModel):
    model_config = _K8S
    claimName: DnsLabel
    readOnly: bool | None = None


class Volume(BaseModel):
    model_config = _K8S
    name: DnsLabel
    configMap: ConfigMapVolumeSource | None = None
    persistentVolumeClaim: PersistentVolumeClaimVolumeSource | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Volume:
        if (self.configMap is None) == (self.persistentVolumeClaim is None):
            raise ValueError(f"Expected one volume source for {self.name}")
        return self


class PodSecurityContext(BaseModel):
    model_config = _K8S
    fsGroup: int | None = None


class PodSpec(BaseModel):
    model_config = _K8S
    containers: list[Container] = Field(min_length=1)
    volumes: list[Volume] = []
    securityContext: PodSecurityContext | None = None

    @model_validator(mode="after")
    def _mounts_name_volumes(self) -> PodSpec:
        volumes = {v.name for v in self.volumes}
        for c in self.containers:
            missing = {m.name for m in c.volumeMounts} - volumes
            if missing:
                raise ValueError(f"Container {c.name} mounts volumes the pod lacks: {sorted(missing)}")
        return self


class PodTemplateSpec(BaseModel):
    model_config = _K8S
    spec: PodSpec


class HeadGroupSpec(BaseModel):
    model_config = _K8S
    rayStartParams: dict[str, str] = {}  # KubeRay takes strings only
    template: PodTemplateSpec
    serviceType: Literal["ClusterIP", "NodePort", "LoadBalancer"] | None = None
    enableIngress: bool | None = None


class WorkerGroupSpec(BaseModel):
    model_config = _K8S
    groupName: DnsLabel
    replicas: int = Field(ge=0)
    minReplicas: int = Field(ge=0)
    maxReplicas: int = Field(ge=0)
    rayStartParams: dict[str, str] = {}
    template: PodTemplateSpec

    @model_validator(mode="after")
    def _bounds(self) -> WorkerGroupSpec:
        if not self.minReplicas <= self.replicas <= self.maxReplicas:
            raise ValueError(f"Expected minReplicas <= replicas <= maxReplicas in {self.groupName}")
        return self


class AutoscalerOptions(BaseModel):
    model_config = _K8S
    upscalingMode: Literal["Default", "Aggressive", "Conservative"] | None = None
    idleTimeoutSeconds: int | None = Field(None, ge=0)


class AuthOptions(BaseModel):
    model_config = _K8S
    mode: Literal["disabled", "token"]


class RayClusterSpec(BaseModel):
    model_config = _K8S
    rayVersion: Annotated[str, StringConstraints(pattern=r"^\d+\.\d+\.\d+$")]
    authOptions: AuthOptions | None = None
    enableInTreeAutoscaling: bool | None = None
    autoscalerOptions: AutoscalerOptions | None = None
    headGroupSpec: HeadGroupSpec
    workerGroupSpecs: list[WorkerGroupSpec] = Field(min_length=1)


class RayServiceUpgradeStrategy(BaseModel):
    model_config = _K8S
    type: Literal["NewCluster", "NewClusterWithIncrementalUpgrade", "None"]


class RayServiceSpec(BaseModel):
    model_config = _K8S
    upgradeStrategy: RayServiceUpgradeStrategy | None = None
    serveConfigV2: str = Field(min_length=1)  # a YAML document in a string
    rayClusterConfig: RayClusterSpec


class RayService(BaseModel):
    model_config = _K8S
    apiVersion: Literal["ray.io/v1"]
    kind: Literal["RayService"]
    metadata: ObjectMeta
    spec: RayServiceSpec


class ConfigMap(BaseModel):
    model_config = _K8S
    apiVersion: Literal["v1"]
    kind: Literal["ConfigMap"]
    metadata: ObjectMeta
    data: dict[str, str]


class StorageRequests(BaseModel):
    model_config = _K8S
    requests: dict[Literal["storage"], Quantity]


class PersistentVolumeClaimSpec(BaseModel):
    model_config = _K8S
    accessModes: list[Literal["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]] = Field(min_length=1)
    resources: StorageRequests
    storageClassName: str | None = None


class PersistentVolumeClaim(BaseModel):
    model_config = _K8S
    apiVersion: Literal["v1"]
    kind: Literal["PersistentVolumeClaim"]
    metadata: ObjectMeta
    spec: PersistentVolumeClaimSpec


_KINDS: dict[str, type[BaseModel]] = {
    "RayService": RayService,
    "ConfigMap": ConfigMap,
    "PersistentVolumeClaim": PersistentVolumeClaim,
}


# --- Loading --------------------------------------------------------------------------------


def _documents() -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(RAYSERVICE.read_text()) if d is not None]
    assert all(isinstance(d, dict) for d in docs)
    return docs


def _parsed() -> dict[str, Any]:
    """Each document through its model, by kind (one of each)."""
    out: dict[str, Any] = {}
    for doc in _documents():
        kind = doc.get("kind")
        assert kind in _KINDS, f"a {kind} document: no model covers it, so nothing here checks it"
        assert kind not in out, f"two {kind} documents"
        out[kind] = _KINDS[kind].model_validate(doc)
    return out


def _rayservice() -> RayService:
    service = _parsed()["RayService"]
    assert isinstance(service, RayService)
    return service


def _serve_configs() -> dict[str, dict[str, Any]]:
    file_config = yaml.safe_load(SERVE_CONFIG.read_text())
    v2 = yaml.safe_load(_rayservice().spec.serveConfigV2)
    return {"serve-config.yaml": file_config, "serveConfigV2": v2}


def _app(config: dict[str, Any]) -> dict[str, Any]:
    (app,) = config["applications"]
    assert isinstance(app, dict)
    return app


def _containers(service: RayService) -> list[Container]:
    cluster = service.spec.rayClusterConfig
    pods = [cluster.headGroupSpec.template.spec] + [g.template.spec for g in cluster.workerGroupSpecs]
    return [c for pod in pods for c in pod.containers]


def _twin_workers(service: RayService) -> WorkerGroupSpec:
    (group,) = [g for g in service.spec.rayClusterConfig.workerGroupSpecs if g.groupName == "twin-workers"]
    return group


def _advertised(params: dict[str, str]) -> dict[str, float]:
    """Custom resources a group offers, as Ray gets them: KubeRay passes ``resources`` to
    ``ray start --resources=`` through a shell, so the string is shell-quoted JSON."""
    if "resources" not in params:
        return {}
    (arg,) = shlex.split("--resources=" + params["resources"])
    parsed = json.loads(arg.removeprefix("--resources="))
    assert isinstance(parsed, dict)
    return parsed


_UNITS = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def _quantity(q: int | str) -> float:
    """A Kubernetes quantity as a number (CPUs, bytes)."""
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q))
    assert m, q
    return float(m.group(1)) * _UNITS.get(m.group(2), 1.0)


# --- The manifest's documents ---------------------------------------------------------------


def test_every_document_validates_against_its_model() -> None:
    """The file holds the config, the artifacts' volume and the RayService, each of which
    parses with unknown fields refused; the models themselves refuse a misspelt field."""
    assert set(_parsed()) == set(_KINDS)
    doc = next(d for d in _documents() if d["kind"] == "RayService")
    broken = copy.deepcopy(doc)
    broken["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 8  # typo
    with pytest.raises(ValueError, match="maxReplica"):
        RayService.model_validate(broken)
    broken = copy.deepcopy(doc)
    broken["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # not a string
    with pytest.raises(ValueError, match="num-cpus"):
        RayService.model_validate(broken)


def test_twin_workers_advertise_shard_slots_and_the_head_none() -> None:
    """The twin workers offer 4 bms_twin_shard slots each (as cluster.yaml's twin_worker), in
    the shell-quoted JSON KubeRay wants; the head offers none and no CPU to Ray's scheduler,
    and the group autoscales with at least two workers."""
    service = _rayservice()
    cluster = service.spec.rayClusterConfig
    workers = _twin_workers(service)
    aws = yaml.safe_load((ROOT / "cluster.yaml").read_text())["available_node_types"]["twin_worker"]
    assert _advertised(workers.rayStartParams) == {SHARD_RESOURCE: aws["resources"][SHARD_RESOURCE]} == {SHARD_RESOURCE: 4}
    head = cluster.headGroupSpec.rayStartParams
    assert SHARD_RESOURCE not in _advertised(head)
    assert head["num-cpus"] == "0"
    assert cluster.enableInTreeAutoscaling is True
    assert 2 <= workers.minReplicas <= workers.replicas <= workers.maxReplicas
    # A bare JSON string (no shell quoting) is what KubeRay's format guards against.
    with pytest.raises(ValueError):
        _advertised({"resources": '{"bms_twin_shard": 4}'})


def test_rayservice_does_not_run_two_clusters_at_once() -> None:
    """No blue/green cluster upgrade: a second cluster would run a second set of twin shards
    on the same checkpoints and share the vehicles' subscription with the first."""
    strategy = _rayservice().spec.upgradeStrategy
    assert strategy is not None and strategy.type == "None"


def test_config_map_loads_through_the_settings_loader(tmp_path: Path) -> None:
    """The ConfigMap's bms.toml is valid for bms.settings (unknown keys are errors there),
    joins the cluster, makes every shard take one slot of the resource the twin workers
    offer, keeps model artifacts on the volume every Ray pod mounts, and serves on the port
    of serveConfigV2; the shards started up front fit the smallest cluster's slots (else the
    app waits for the autoscaler before it serves); the app's config path is the file the
    ConfigMap mounts."""
    parsed = _parsed()
    config_map = parsed["ConfigMap"]
    service = _rayservice()
    path = tmp_path / "bms.toml"
    path.write_text(config_map.data["bms.toml"])
    settings = Settings.load(path, env={})
    assert settings.twins.shard_resource == SHARD_RESOURCE
    assert settings.ray.address == "auto"
    urls = ServiceUrls("postgresql://127.0.0.1/x", "redis://127.0.0.1:6379/0", "mqtt://127.0.0.1:1883")
    options = shard_options(0, twin_runtime_spec(settings, urls))
    workers = _twin_workers(service)
    assert set(options["resources"]) <= set(_advertised(workers.rayStartParams))
    assert initial_shards(settings) <= workers.minReplicas * _advertised(workers.rayStartParams)[SHARD_RESOURCE]
    v2 = yaml.safe_load(service.spec.serveConfigV2)
    assert settings.serve.http_port == v2["http_options"]["port"]
    for c in _containers(service):
        mounts = {m.mountPath: m.name for m in c.volumeMounts}
        assert mounts.get(str(settings.artifacts_dir())) == "bms-models", c.name
        assert mounts.get(str(Path(_app(v2)["args"]["config"]).parent)) == "bms-config", c.name
    volumes = {v.name: v for v in service.spec.rayClusterConfig.headGroupSpec.template.spec.volumes}
    assert volumes["bms-config"].configMap is not None
    assert volumes["bms-config"].configMap.name == config_map.metadata.name
    assert Path(_app(v2)["args"]["config"]).name in config_map.data
    claim = volumes["bms-models"].persistentVolumeClaim
    assert claim is not None and claim.claimName == parsed["PersistentVolumeClaim"].metadata.name
    # Pods on different nodes read what the model job wrote on another.
    assert "ReadWriteMany" in parsed["PersistentVolumeClaim"].spec.accessModes


def test_the_image_is_the_manifests_ray_and_holds_every_package() -> None:
    """deploy/Dockerfile builds on the Ray of `rayVersion` and copies every package the
    project installs (a package left out would fail at import on the cluster, not here)."""
    text = DOCKERFILE.read_text()
    (base,) = re.findall(r"(?m)^FROM\s+(\S+)", text)
    assert base.startswith(f"rayproject/ray:{_rayservice().spec.rayClusterConfig.rayVersion}-")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.split(".")[0] for p in pyproject["tool"]["setuptools"]["packages"]}
    copied = set(re.findall(r"(?m)^COPY\s+(?:--\S+\s+)*(\w+)\s+\1/$", text))
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"


def test_pods_serve_through_direct_ingress_as_bms_run_does() -> None:
    """Every Ray container carries the Serve controller environment `bms run` starts Serve
    with (runtime.ingress.serve_controller_env), less the HAProxy ports it picks to let two
    systems share a machine (a pod is one node: Ray's own ports do)."""
    wanted = {k: v for k, v in serve_controller_env().items() if not k.endswith("_PORT")}
    if not wanted:
        pytest.skip("no HAProxy binary here: serve_controller_env() falls back to Serve's proxy")
    for c in _containers(_rayservice()):
        env = {e.name: e.value for e in c.env if e.name.startswith("RAY_SERVE_")}
        assert env == wanted, c.name


# --- The Serve configs ----------------------------------------------------------------------


def _unknown_keys(config: dict[str, Any]) -> list[str]:
    """Keys Ray's Serve schemas do not define (``ServeDeploySchema`` ignores them silently,
    so a misspelt ``target_ongoing_request`` would deploy with Serve's default)."""
    found: list[str] = []

    def check(where: str, mapping: Any, fields: Any) -> None:
        if isinstance(mapping, dict):
            found.extend(f"{where}.{k}" for k in mapping if k not in fields)

    check("", config, ServeDeploySchema.model_fields)
    check("http_options", config.get("http_options"), HTTPOptionsSchema.model_fields)
    for app in config.get("applications", []):
        check(f"app {app.get('name')}", app, ServeApplicationSchema.model_fields)
        for d in app.get("deployments", []):
            where = f"deployment {d.get('name')}"
            check(where, d, DeploymentSchema.model_fields)
            check(f"{where}.ray_actor_options", d.get("ray_actor_options"), RayActorOptionsSchema.model_fields)
            check(f"{where}.autoscaling_config", d.get("autoscaling_config"), AutoscalingConfig.model_fields)
    return found


@pytest.mark.parametrize("source", ["serve-config.yaml", "serveConfigV2"])
def test_serve_config_passes_rays_schema(source: str) -> None:
    """Ray's ServeDeploySchema accepts the config, every key is one Ray defines, each
    autoscaling config and actor options validate, and the one application is the system's
    (`bms`, at /, built by bms.serve_app:build from the mounted config)."""
    config = _serve_configs()[source]
    schema = ServeDeploySchema.model_validate(config)
    assert _unknown_keys(config) == []
    (app,) = schema.applications
    assert (app.name, app.route_prefix, app.import_path) == (SERVE_APP_NAME, "/", "bms.serve_app:build")
    assert app.args == {"config": "/etc/bms/bms.toml"}
    ServeAppArgs.model_validate(app.args)  # what bms.serve_app:build accepts
    for d in _app(config)["deployments"]:
        AutoscalingConfig(**d["autoscaling_config"])
        RayActorOptionsSchema.model_validate(d["ray_actor_options"])
    misspelt = copy.deepcopy(config)
    _app(misspelt)["deployments"][0]["autoscaling_config"]["target_ongoing_request"] = 2
    ServeDeploySchema.model_validate(misspelt)  # Ray lets it through ...
    assert _unknown_keys(misspelt) != []  # ... this check does not


def test_serve_config_v2_is_the_serve_config_file() -> None:
    """One application, two copies (KubeRay wants it inline): they must not drift apart."""
    configs = _serve_configs()
    assert configs["serveConfigV2"] == configs["serve-config.yaml"]


def _real_app() -> Any:
    """The Serve app the system deploys, built with every model family, without Ray."""
    args = AppArgs(models=list(PREDICTORS), artifacts_root="/tmp/x", postgres_url="postgresql://x", redis_url="redis://x")
    return build_serve_app(build_app(args), name=SERVE_APP_NAME)


def test_deployments_are_the_ones_the_app_builds() -> None:
    """Each config names every deployment of the real app once and nothing else (Serve
    refuses a config naming a deployment the app lacks; one left out runs on the code's
    defaults, unscaled)."""
    built = _real_app()
    names = sorted(d.name for d in built.deployments)
    assert "ApiIngress" in names and len(names) == 1 + len(PREDICTORS)
    for config in _serve_configs().values():
        listed = [d["name"] for d in _app(config)["deployments"]]
        assert sorted(listed) == names


def test_serve_accepts_the_overrides_for_the_real_app() -> None:
    """Serve's own override step (what the controller does with a deployed config) applied
    to the real app: autoscaling replaces the code's replica count, the bounds and target
    are the file's, the replicas reserve the file's CPU and memory, and the code's
    max_ongoing_requests leaves room above the autoscaling target (else Serve never scales)."""
    built = _real_app()

    def info(d: Any) -> DeploymentInfo:
        rc = d._replica_config  # the serialized parts only: the live handles would start Ray
        bare = ReplicaConfig(
            rc.deployment_def_name, rc.serialized_deployment_def, rc.serialized_init_args,
            rc.serialized_init_kwargs, dict(rc.ray_actor_options), max_replicas_per_node=rc.max_replicas_per_node,
        )  # fmt: skip
        return DeploymentInfo(
            deployment_config=d._deployment_config, replica_config=bare, start_time_ms=0,
            deployer_job_id="unit-test", version="v", ingress=d.name == built.ingress_deployment_name,
        )  # fmt: skip

    config = _serve_configs()["serve-config.yaml"]
    app_schema = ServeDeploySchema.model_validate(config).applications[0]
    out = override_deployment_info({d.name: info(d) for d in built.deployments}, app_schema)
    for d in _app(config)["deployments"]:
        deployed = out[d["name"]]
        scaling = deployed.deployment_config.autoscaling_config
        assert deployed.deployment_config.num_replicas is None, d["name"]
        assert scaling is not None
        assert (scaling.min_replicas, scaling.max_replicas) == (
            d["autoscaling_config"]["min_replicas"], d["autoscaling_config"]["max_replicas"],
        )  # fmt: skip
        assert scaling.target_ongoing_requests == d["autoscaling_config"]["target_ongoing_requests"]
        assert deployed.deployment_config.max_ongoing_requests > scaling.get_target_ongoing_requests(), d["name"]
        assert deployed.replica_config.resource_dict["CPU"] == d["ray_actor_options"]["num_cpus"]


def test_every_deployment_autoscales_within_bounds() -> None:
    """Each deployment autoscales (`num_replicas: auto`) between bounds with min <= max;
    no model scales to zero (the scoring tick calls each model every 10 s and replicas poll
    the registry), and the API keeps two replicas so a lost node leaves it up."""
    for d in _app(_serve_configs()["serve-config.yaml"])["deployments"]:
        scaling = d["autoscaling_config"]
        assert d["num_replicas"] == "auto", d["name"]
        assert 1 <= scaling["min_replicas"] <= scaling["max_replicas"], d["name"]
        assert scaling["target_ongoing_requests"] > 0, d["name"]
        if d["name"] == "ApiIngress":
            assert scaling["min_replicas"] >= 2


def test_replicas_fit_a_twin_worker_and_the_smallest_cluster() -> None:
    """Replicas reserve CPUs, so none can run on the head (num-cpus 0): each must fit one twin
    worker, and all minimum replicas together the minimum twin workers, or the app never
    becomes healthy at the cluster's smallest."""
    service = _rayservice()
    workers = _twin_workers(service)
    (container,) = workers.template.spec.containers
    cpus = _quantity(container.resources.limits["cpu"])
    # Ray gives 30 % of a node's memory to the object store by default; replicas reserve
    # from the rest.
    memory = 0.7 * _quantity(container.resources.limits["memory"])
    assert container.resources.requests == container.resources.limits  # Ray sizes itself from the limits
    need_cpus = need_memory = 0.0
    for d in _app(yaml.safe_load(service.spec.serveConfigV2))["deployments"]:
        options = d["ray_actor_options"]
        assert options["num_cpus"] > 0, f"{d['name']} could land on the head"
        assert options["num_cpus"] <= cpus and options.get("memory", 0) <= memory, d["name"]
        need_cpus += options["num_cpus"] * d["autoscaling_config"]["min_replicas"]
        need_memory += options.get("memory", 0) * d["autoscaling_config"]["min_replicas"]
    assert need_cpus <= cpus * workers.minReplicas
    assert need_memory <= memory * workers.minReplicas


# --- Security (docs/security.md, "Ray and servers") -----------------------------------------


def _exposures(docs: list[dict[str, Any]]) -> list[str]:
    """Ways the manifest would expose the Ray head (and so the dashboard, which can submit
    jobs) beyond the cluster network."""
    found: list[str] = []
    for doc in docs:
        kind = doc.get("kind")
        if kind in {"Ingress", "Route", "Gateway", "HTTPRoute"}:
            found.append(f"a {kind}")
        if kind == "Service" and doc.get("spec", {}).get("type") in {"LoadBalancer", "NodePort"}:
            found.append(f"Service {doc['metadata']['name']} of type {doc['spec']['type']}")
        if kind == "RayService":
            head = doc["spec"]["rayClusterConfig"]["headGroupSpec"]
            if head.get("serviceType", "ClusterIP") != "ClusterIP":
                found.append(f"head serviceType {head['serviceType']}")
            if head.get("enableIngress"):
                found.append("head enableIngress")
            if "headService" in head:
                found.append("a headService override")
    return found


def test_token_authentication_is_on() -> None:
    """KubeRay generates the token into a Secret and sets RAY_AUTH_MODE/RAY_AUTH_TOKEN; no
    container sets either itself (a literal token in the file, or a mode other than token)."""
    service = _rayservice()
    auth = service.spec.rayClusterConfig.authOptions
    assert auth is not None and auth.mode == "token"
    for c in _containers(service):
        assert not {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"} & {e.name for e in c.env}, c.name


def test_dashboard_is_not_exposed_outside_the_cluster() -> None:
    """The head's Service stays ClusterIP, with no Ingress, LoadBalancer or NodePort anywhere
    in the file (reach the dashboard with kubectl port-forward); each way out is caught."""
    docs = _documents()
    assert _exposures(docs) == []
    service = next(d for d in docs if d["kind"] == "RayService")
    for change in ({"serviceType": "LoadBalancer"}, {"serviceType": "NodePort"}, {"enableIngress": True}):
        exposed = copy.deepcopy(service)
        exposed["spec"]["rayClusterConfig"]["headGroupSpec"].update(change)
        assert _exposures([exposed]) != [], change
    dashboard = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "dash"},
                 "spec": {"type": "LoadBalancer", "ports": [{"port": 8265}]}}  # fmt: skip
    assert _exposures([*docs, dashboard]) != []


def _secret_findings(container: Container) -> list[str]:
    found: list[str] = []
    env = {e.name: e for e in container.env}
    for name, optional in SECRET_ENV.items():
        e = env.get(name)
        ref = e.valueFrom.secretKeyRef if e is not None and e.valueFrom is not None else None
        if ref is None:
            found.append(f"{name} is not from a secretKeyRef")
        elif (ref.name, ref.key, bool(ref.optional)) != (SECRET_NAME, name, optional):
            found.append(f"{name} from {ref.name}/{ref.key} (optional={ref.optional})")
    for e in container.env:
        if e.value is not None and (_SECRET_NAME.search(e.name) or redact_text(e.value) != e.value):
            found.append(f"{e.name} has a literal value")
    return found


def test_hosts_and_credentials_come_from_the_secret_only() -> None:
    """Every Ray container (the builder and the actors it starts run on any of them) takes
    the BMS_* URLs and the broker login from the Secret bms-secrets, under the variables'
    own names (`kubectl create secret generic --from-env-file`), the login optional; no
    variable that could hold a secret has a literal value."""
    service = _rayservice()
    for c in _containers(service):
        assert _secret_findings(c) == [], c.name
    leaky = _containers(service)[0].model_copy(
        update={"env": [EnvVar(name="BMS_POSTGRES_URL", value="postgresql://bms:hunter2@db/bms")]}
    )
    assert _secret_findings(leaky) != []


def test_serve_runtime_env_holds_no_secret() -> None:
    """runtime_env is stored in the cluster and shown on the dashboard: the BMS_* variables
    come from the nodes' environment, never from the Serve config."""
    for source, config in _serve_configs().items():
        env_vars = _app(config).get("runtime_env", {}).get("env_vars", {})
        assert not set(env_vars) & set(SECRET_ENV), source
        assert all(redact_text(str(v)) == str(v) for v in env_vars.values()), source


@pytest.mark.parametrize("path", [RAYSERVICE, SERVE_CONFIG, DOCKERFILE], ids=lambda p: p.name)
def test_no_secret_in_the_deploy_files(path: Path) -> None:
    """As tests/unit/test_cluster_security.py for the launcher files: no URL with a
    password, no password=, no long literal after token/password/secret."""
    text = path.read_text()
    assert redact_text(text) == text, f"a URL with a password or a password= is in {path.name}"
    assert not re.search(r"(?i)(token|password|secret)\s*[:=]\s*['\"]?[A-Za-z0-9+/_-]{16,}", text)
