"""Write a KubeRay ``RayService`` manifest: the same programs and settings on a Kubernetes cluster.

KubeRay runs the Ray cluster (a head pod, worker pods it scales) and deploys the Serve config
in ``serveConfigV2``, which imports :func:`dspy_serve.ray_serve.app_builder`: the very builder
``dspy-serve run --engine ray`` uses. The image is the one ``dspy-serve docker --engine ray``
writes (it carries the programs, the artifacts and ``dspy-serve[ray]``). Secrets never enter
the manifest: every pod reads them from a Kubernetes Secret, as environment variables.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from dspy_serve.deploy.docker import PORT, in_image
from dspy_serve.serving.loader import relocate_files
from dspy_serve.settings import ServeSettings

__all__ = ["rayservice", "write_rayservice"]

SECRET_NAME = "dspy-serve-secrets"
METRICS_DIR = "/tmp/dspy-serve-metrics"
# Ray settings that are the cluster's business, not the replicas'.
_CLUSTER_ONLY = {"engine", "ray_address", "host", "port", "workers"}


def serve_config(settings: ServeSettings) -> dict[str, Any]:
    """Ray Serve's config (``serve deploy`` takes it as is): one application, our builder."""
    data = relocate_files(settings, in_image).to_data(secrets=False)
    args = {name: value for name, value in data.items() if name not in _CLUSTER_ONLY}
    return {
        "http_options": {"host": "0.0.0.0", "port": PORT},
        "applications": [
            {
                "name": "dspy-serve",
                "route_prefix": "/",
                "import_path": "dspy_serve.ray_serve:app_builder",
                "args": args,
            }
        ],
    }


def _container(name: str, image: str, ports: dict[str, int], cpus: float) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        # API keys (DSPY_SERVE_API_KEYS) and provider credentials (OPENAI_API_KEY, ...).
        "envFrom": [{"secretRef": {"name": SECRET_NAME, "optional": True}}],
        "env": [{"name": "PROMETHEUS_MULTIPROC_DIR", "value": METRICS_DIR}],
        "ports": [{"name": port_name, "containerPort": port} for port_name, port in ports.items()],
        "resources": {
            "requests": {"cpu": str(cpus), "memory": "2Gi"},
            "limits": {"cpu": str(cpus), "memory": "4Gi"},
        },
        "volumeMounts": [{"name": "metrics", "mountPath": METRICS_DIR}],
    }


def _pod(container: dict[str, Any]) -> dict[str, Any]:
    return {"spec": {"containers": [container], "volumes": [{"name": "metrics", "emptyDir": {}}]}}


def rayservice(settings: ServeSettings, image: str, ray_version: str) -> dict[str, Any]:
    """One replica per worker pod by default: pods scale with replicas."""
    most = settings.max_replicas or settings.replicas
    worker_cpus = max(math.ceil(settings.replica_cpus), 1)
    head = _container("ray-head", image, {"gcs": 6379, "dashboard": 8265, "client": 10001, "serve": PORT}, 1)
    worker = _container("ray-worker", image, {"serve": PORT}, worker_cpus)
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "dspy-serve"},
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve_config(settings), sort_keys=False),
            "rayClusterConfig": {
                "rayVersion": ray_version,
                "enableInTreeAutoscaling": settings.max_replicas is not None,
                "headGroupSpec": {
                    # The head runs Ray's control plane and the proxy; replicas go to workers.
                    "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
                    "template": _pod(head),
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "replicas",
                        "replicas": settings.replicas,
                        "minReplicas": settings.replicas,
                        "maxReplicas": most,
                        "rayStartParams": {},
                        "template": _pod(worker),
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


def write_rayservice(settings: ServeSettings, image: str, ray_version: str, out: Path) -> Path:
    manifest = rayservice(settings, image, ray_version)
    manifest["spec"]["serveConfigV2"] = _Literal(manifest["spec"]["serveConfigV2"])
    header = (
        "# Written by `dspy-serve kuberay`. Needs the KubeRay operator.\n"
        "# kubectl apply -f rayservice.yaml\n"
        f"# Secrets: kubectl create secret generic {SECRET_NAME} --from-env-file=.env\n"
        f"# Serve's HTTP port is {PORT} (the '<name>-serve-svc' Service KubeRay creates).\n"
    )
    out.mkdir(parents=True, exist_ok=True)
    path = out / "rayservice.yaml"
    path.write_text(header + yaml.dump(manifest, Dumper=_Dumper, sort_keys=False))
    return path
