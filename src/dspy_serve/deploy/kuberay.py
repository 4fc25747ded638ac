"""Write a KubeRay ``RayService`` manifest: the same programs and settings on a Kubernetes cluster.

KubeRay runs the Ray cluster (a head pod, worker pods it scales) and deploys the Serve config
in ``serveConfigV2``, which imports :func:`dspy_serve.ray_serve.app_builder`: the very builder
``dspy-serve run --engine ray`` uses. The image is the one ``dspy-serve docker --engine ray``
writes (it carries the programs, the artifacts and ``dspy-serve[ray]``); the settings are the
ones that image carries (:func:`~dspy_serve.deploy.container.container_settings`). Secrets never
enter the manifest: every pod reads them from the ``NAME-secrets`` Secret, as environment
variables, and an API-key file from the ``NAME-api-keys`` Secret, mounted read-only.
"""

from __future__ import annotations

import math
import re
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from dspy_serve.deploy.container import KEYS_FILE, ContainerSettings, container_settings
from dspy_serve.serving.loader import parse_target
from dspy_serve.settings import ServeSettings

__all__ = ["rayservice", "service_name", "write_rayservice"]

METRICS_DIR = "/tmp/dspy-serve-metrics"
# Ray settings that are the cluster's business, not the replicas'.
_CLUSTER_ONLY = {"engine", "ray_address", "host", "port", "workers"}
# KubeRay appends "-head-svc", "-serve-svc" and pod suffixes to the name; Services allow 63.
_MAX_NAME = 40
_DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def service_name(settings: ServeSettings, given: str | None) -> str:
    """The RayService's name: the one given, else ``dspy-serve-`` and the programs' names."""
    if given is not None:
        if len(given) > _MAX_NAME or not _DNS_LABEL.fullmatch(given):
            raise ValueError(
                f"--name {given!r}: lower-case letters, digits and '-', starting with a letter, "
                f"at most {_MAX_NAME} characters"
            )
        return given
    programs = "-".join(parse_target(spec)[0] for spec in settings.programs)
    name = re.sub(r"[^a-z0-9]+", "-", f"dspy-serve-{programs}".lower())[:_MAX_NAME]
    return name.strip("-")


def _check_cluster_settings(settings: ServeSettings) -> None:
    if settings.workers > 1:
        raise ValueError("--workers is for --engine uvicorn; on Ray, use --replicas")
    if settings.ray_address is not None:
        raise ValueError("--ray-address: on KubeRay the cluster is the RayService's own; leave it out")


def serve_config(located: ContainerSettings) -> dict[str, Any]:
    """Ray Serve's config (``serve deploy`` takes it as is): one application, our builder."""
    data = {"programs": located.programs, **located.data}
    args = {name: value for name, value in data.items() if name not in _CLUSTER_ONLY}
    return {
        "http_options": {"host": "0.0.0.0", "port": located.port},
        "applications": [
            {
                "name": "dspy-serve",
                "route_prefix": "/",
                "import_path": "dspy_serve.ray_serve:app_builder",
                "args": args,
            }
        ],
    }


def _container(
    name: str, image: str, ports: dict[str, int], cpus: float, service: str, keys: bool
) -> dict[str, Any]:
    mounts: list[dict[str, Any]] = [{"name": "metrics", "mountPath": METRICS_DIR}]
    if keys:
        mounts += [{"name": "api-keys", "mountPath": str(PurePosixPath(KEYS_FILE).parent), "readOnly": True}]
    return {
        "name": name,
        "image": image,
        # API keys (DSPY_SERVE_API_KEYS) and provider credentials (OPENAI_API_KEY, ...).
        "envFrom": [{"secretRef": {"name": f"{service}-secrets", "optional": True}}],
        "env": [{"name": "PROMETHEUS_MULTIPROC_DIR", "value": METRICS_DIR}],
        "ports": [{"name": port_name, "containerPort": port} for port_name, port in ports.items()],
        "resources": {
            "requests": {"cpu": str(cpus), "memory": "2Gi"},
            "limits": {"cpu": str(cpus), "memory": "4Gi"},
        },
        "volumeMounts": mounts,
    }


def _pod(container: dict[str, Any], service: str, keys: bool) -> dict[str, Any]:
    volumes: list[dict[str, Any]] = [{"name": "metrics", "emptyDir": {}}]
    if keys:
        secret = {"secretName": f"{service}-api-keys", "items": [{"key": "api_keys", "path": "api_keys"}]}
        volumes += [{"name": "api-keys", "secret": secret}]
    return {"spec": {"containers": [container], "volumes": volumes}}


def rayservice(settings: ServeSettings, image: str, ray_version: str, name: str) -> dict[str, Any]:
    """One replica per worker pod by default: pods scale with replicas."""
    _check_cluster_settings(settings)
    located = container_settings(settings)
    keys = located.keys_file is not None
    most = settings.max_replicas or settings.replicas
    worker_cpus = max(math.ceil(settings.replica_cpus), 1)
    port = located.port
    head_ports = {"gcs": 6379, "dashboard": 8265, "client": 10001, "serve": port}
    head = _container("ray-head", image, head_ports, 1, name, keys)
    worker = _container("ray-worker", image, {"serve": port}, worker_cpus, name, keys)
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": name},
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve_config(located), sort_keys=False),
            "rayClusterConfig": {
                "rayVersion": ray_version,
                "enableInTreeAutoscaling": settings.max_replicas is not None,
                "headGroupSpec": {
                    # The head runs Ray's control plane and the proxy; replicas go to workers.
                    "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
                    "template": _pod(head, name, keys),
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "replicas",
                        "replicas": settings.replicas,
                        "minReplicas": settings.replicas,
                        "maxReplicas": most,
                        "rayStartParams": {},
                        "template": _pod(worker, name, keys),
                    }
                ],
            },
        },
    }


class _Literal(str):
    """A string written as a YAML block (``|``), as people write serveConfigV2 by hand."""


def _literal(dumper: yaml.SafeDumper, value: _Literal) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Literal, _literal)


def write_rayservice(settings: ServeSettings, image: str, ray_version: str, out: Path, name: str) -> Path:
    manifest = rayservice(settings, image, ray_version, name)
    manifest["spec"]["serveConfigV2"] = _Literal(manifest["spec"]["serveConfigV2"])
    header = (
        "# Written by `dspy-serve kuberay`. Needs the KubeRay operator. Create the Secrets, then\n"
        "# kubectl apply -f rayservice.yaml\n"
        f"# Secrets: kubectl create secret generic {name}-secrets --from-env-file=.env\n"
    )
    if settings.api_keys_file is not None:
        # Required: without it the pods wait for their volume and never start.
        header += (
            f"# REQUIRED: kubectl create secret generic {name}-api-keys "
            f"--from-file=api_keys={settings.api_keys_file}\n"
        )
    header += f"# Serve's HTTP port is {settings.port} (the '{name}-serve-svc' Service KubeRay creates).\n"
    out.mkdir(parents=True, exist_ok=True)
    path = out / "rayservice.yaml"
    path.write_text(header + yaml.dump(manifest, Dumper=_Dumper, sort_keys=False))
    return path
