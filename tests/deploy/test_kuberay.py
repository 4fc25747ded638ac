"""`dspy-serve kuberay`: a RayService manifest, checked statically (no Kubernetes runs here).

Its Serve config is validated with Ray Serve's own schema, and its arguments are built with the
same builder a cluster imports, so a typo in either fails here rather than on the cluster.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from dspy_serve.deploy.docker import image_ray_version
from tests.support.files import write_files

pytest.importorskip("ray.serve")

from ray.serve.schema import ServeDeploySchema

from dspy_serve.deploy.ray_serve import app_builder

IMAGE = "registry.example.com/qa:1"


def kuberay(tmp_path: Path, *args: str) -> dict[str, Any]:
    write_files("kuberay", tmp_path, *args, "--image", IMAGE)
    text = (tmp_path / "rayservice.yaml").read_text()
    assert "must-not-appear" not in text
    return dict(yaml.safe_load(text))


def test_the_serve_config_is_valid_and_builds_the_same_deployment(tmp_path: Path) -> None:
    manifest = kuberay(
        tmp_path,
        "qa=examples/qa.py:program",
        "--artifact",
        "examples/qa.json",
        "--model",
        "openai/gpt-4o-mini",
        "--replicas",
        "2",
        "--max-replicas",
        "4",
        "--timeout",
        "30",
    )
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayService")
    config = ServeDeploySchema.model_validate(yaml.safe_load(manifest["spec"]["serveConfigV2"]))
    (application,) = config.applications
    assert application.import_path == "dspy_serve.ray_serve:app_builder"
    assert application.args == {
        "programs": ["qa=/app/examples/qa.py:program"],  # where `dspy-serve docker` copies them
        "artifacts": ["/app/examples/qa.json"],
        "model": "openai/gpt-4o-mini",
        "timeout": 30.0,
        "replicas": 2,
        "max_replicas": 4,
    }
    built = app_builder(application.args)._bound_deployment
    autoscaling = built._deployment_config.autoscaling_config
    assert (autoscaling.min_replicas, autoscaling.max_replicas) == (2, 4)


def test_pods_match_the_image_scale_with_replicas_and_read_secrets_from_a_secret(tmp_path: Path) -> None:
    manifest = kuberay(tmp_path, "examples/qa.py:program", "--replicas", "2", "--max-replicas", "3")
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == image_ray_version(), "the Ray `dspy-serve docker --engine ray` pins"
    assert cluster["enableInTreeAutoscaling"] is True
    (workers,) = cluster["workerGroupSpecs"]
    assert (workers["replicas"], workers["minReplicas"], workers["maxReplicas"]) == (2, 2, 3)
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    worker = workers["template"]["spec"]["containers"][0]
    for container in (head, worker):
        assert container["image"] == IMAGE
        assert container["envFrom"] == [{"secretRef": {"name": "dspy-serve-secrets", "optional": True}}]
        assert {"name": "PROMETHEUS_MULTIPROC_DIR", "value": "/tmp/dspy-serve-metrics"} in container["env"]
    assert {port["containerPort"] for port in head["ports"]} >= {6379, 8265, 8000}


def test_fixed_replicas_need_no_autoscaler(tmp_path: Path) -> None:
    manifest = kuberay(tmp_path, "examples/qa.py:program", "--replicas", "3")
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is False
    assert json.dumps(cluster["workerGroupSpecs"][0]["maxReplicas"]) == "3"
