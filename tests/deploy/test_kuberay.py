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
from tests.support.files import ROOT, deploy_command, write_files

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
        assert container["envFrom"] == [
            {"secretRef": {"name": "dspy-serve-program-secrets", "optional": True}}
        ]
        assert {"name": "PROMETHEUS_MULTIPROC_DIR", "value": "/tmp/dspy-serve-metrics"} in container["env"]
    assert {port["containerPort"] for port in head["ports"]} >= {6379, 8265, 8000}


def test_fixed_replicas_need_no_autoscaler(tmp_path: Path) -> None:
    manifest = kuberay(tmp_path, "examples/qa.py:program", "--replicas", "3")
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is False
    assert json.dumps(cluster["workerGroupSpecs"][0]["maxReplicas"]) == "3"


def test_the_name_is_derived_from_the_programs_or_given_so_two_services_do_not_collide(
    tmp_path: Path,
) -> None:
    derived = kuberay(tmp_path / "a", "qa=examples/qa.py:program", "rag=examples/rag.py:program")
    assert derived["metadata"]["name"] == "dspy-serve-qa-rag"
    given = kuberay(tmp_path / "b", "qa=examples/qa.py:program", "--name", "support-bot")
    assert given["metadata"]["name"] == "support-bot"
    head = given["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["envFrom"] == [{"secretRef": {"name": "support-bot-secrets", "optional": True}}]
    result = deploy_command("kuberay", ROOT, "examples/qa.py:program", "--image", IMAGE, "--name", "Bad_Name")
    assert result.returncode == 2 and "--name 'Bad_Name'" in result.stderr


def test_an_api_key_file_is_mounted_from_a_secret_never_written(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("ops:key-in-a-file-must-not-appear\n")
    manifest = kuberay(tmp_path, "qa=examples/qa.py:program", "--api-keys-file", str(keys), "--name", "qa")
    args = yaml.safe_load(manifest["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert args["api_keys_file"] == "/run/secrets/api_keys"
    cluster = manifest["spec"]["rayClusterConfig"]
    for group in (cluster["headGroupSpec"], cluster["workerGroupSpecs"][0]):
        pod = group["template"]["spec"]
        assert {
            "name": "api-keys",
            "secret": {"secretName": "qa-api-keys", "items": [{"key": "api_keys", "path": "api_keys"}]},
        } in pod["volumes"]
        mount = {"name": "api-keys", "mountPath": "/run/secrets", "readOnly": True}
        assert mount in pod["containers"][0]["volumeMounts"]
    assert "key-in-a-file-must-not-appear" not in (tmp_path / "rayservice.yaml").read_text()


def test_targets_are_checked_before_the_manifest_is_written(tmp_path: Path) -> None:
    result = deploy_command(
        "kuberay", ROOT, "examples/qa.py:nothing", "--image", IMAGE, "--out", str(tmp_path / "k8s")
    )
    assert result.returncode == 3 and result.stderr.startswith("dspy-serve: cannot start:")
    assert "has no 'nothing'" in result.stderr and not (tmp_path / "k8s").exists()
    result = deploy_command(
        "kuberay", ROOT, "examples/qa.py:program", "--workers", "2", "--image", IMAGE, "--out", str(tmp_path)
    )
    assert result.returncode == 2 and "on Ray, use --replicas" in result.stderr


def test_the_manifest_header_names_every_secret_the_pods_need(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("ops:a-key\n")
    kuberay(tmp_path, "qa=examples/qa.py:program", "--api-keys-file", str(keys), "--name", "qa")
    header = [
        line for line in (tmp_path / "rayservice.yaml").read_text().splitlines() if line.startswith("#")
    ]
    assert "# Secrets: kubectl create secret generic qa-secrets --from-env-file=.env" in header
    assert f"# REQUIRED: kubectl create secret generic qa-api-keys --from-file=api_keys={keys}" in header
