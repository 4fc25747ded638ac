"""The image `dspy-serve docker` writes, built and run by a real engine (podman), slow tier.

No registry is reachable here, so the base image is made locally: a minimal Debian root file
system (debootstrap, from Debian's package mirror) with python3 and its venv module, imported
into podman and passed as ``--build-arg BASE=``. It trusts the CAs this machine trusts, so pip
in the build reaches PyPI as pip here does. The container runs on the host's network, so it
reaches the fake LM on loopback. Needs Debian's podman, runc and debootstrap packages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.cli import free_port
from tests.support.fake_lm import FakeLM
from tests.support.files import make_project, write_files

pytestmark = [pytest.mark.container, pytest.mark.timeout(1500)]

BASE_IMAGE = "localhost/dspy-serve-test-base:bookworm"
# crun cannot run under this machine's hybrid cgroups; limits above the caller's are refused.
ENGINE_OPTIONS = ["--runtime", "runc", "--ulimit", "nofile=16384:16384", "--ulimit", "nproc=4096:4096"]


def podman(*args: str, timeout: float = 900, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


@pytest.fixture(scope="module")
def base_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    missing = [tool for tool in ("podman", "runc", "debootstrap") if shutil.which(tool) is None]
    if missing:
        message = f"needs Debian's {', '.join(missing)} (apt-get install -y podman runc debootstrap)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    if podman("image", "exists", BASE_IMAGE).returncode == 0:
        return BASE_IMAGE
    rootfs = tmp_path_factory.mktemp("base") / "rootfs"
    subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            "--include=python3,python3-venv,ca-certificates",
            "bookworm",
            rootfs,
        ],
        check=True,
        capture_output=True,
        timeout=900,
    )
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", rootfs / "etc/ssl/certs/ca-certificates.crt")
    archive = rootfs.parent / "rootfs.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(rootfs, arcname=".")
    imported = podman("import", str(archive), BASE_IMAGE)
    assert imported.returncode == 0, imported.stderr
    shutil.rmtree(rootfs.parent, ignore_errors=True)
    return BASE_IMAGE


@pytest.fixture
def image(base_image: str, tmp_path: Path) -> Iterator[str]:
    """A project of one's own (a program importing a sibling module and a dependency of its
    requirements.txt, an artifact, a key file), its files written to deploy/, built."""
    project = make_project(tmp_path / "project")
    (project / "app").mkdir()
    (project / "app" / "words.py").write_text('PREFIX = "Answer briefly."\n')
    (project / "app" / "brief.py").write_text(
        "import dspy\nimport iniconfig  # from requirements.txt\n\nfrom words import PREFIX\n\n"
        "program = dspy.Predict(dspy.Signature('question -> answer', PREFIX))\n"
    )
    (project / "requirements.txt").write_text("iniconfig\n")
    (project / "keys.txt").write_text("ops:key-in-a-file programs=qa\n")
    (project / ".env").write_text("OPENAI_API_KEY=sk-dotenv-never-in-the-image\n")
    write_files(
        "docker",
        project / "deploy",
        "qa=examples/qa.py:program",
        "brief=app/brief.py:program",
        "--artifact=qa=examples/qa.json",
        "--model=openai/fake-model",
        "--api-keys-file=keys.txt",
        "--timeout=20",
        project=project,
    )
    tag = f"localhost/dspy-serve-test:{tmp_path.name.lower()[-40:]}"
    started = time.monotonic()
    built = podman(
        "build",
        *ENGINE_OPTIONS,
        "--network=host",
        f"--build-arg=BASE={base_image}",
        "-f=deploy/Dockerfile",
        "--ignorefile=deploy/Dockerfile.dockerignore",
        f"-t={tag}",
        ".",
        timeout=1200,
        cwd=project,
    )
    print(f"image built in {time.monotonic() - started:.0f} s")
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    yield tag
    podman("rmi", "-f", tag)


def wait_ready(url: str, seconds: float) -> httpx.Response | None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/health/ready", timeout=2)
            if response.status_code == 200:
                return response
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    return None


def test_the_generated_image_builds_and_serves(image: str, fake_lm: FakeLM, tmp_path: Path) -> None:
    port = free_port()
    name = f"dspy-serve-test-{port}"
    keys = tmp_path / "project" / "keys.txt"
    keys.chmod(0o644)  # readable by the image's uid 10001, as compose.yaml says
    process = subprocess.Popen(
        [
            *["podman", "run", "--rm", f"--name={name}", *ENGINE_OPTIONS, "--network=host", "--read-only"],
            *["--tmpfs=/tmp", f"-v={keys}:/run/secrets/api_keys:ro", "-e=OPENAI_API_KEY=sk-fake"],
            *[f"-e=DSPY_SERVE_API_BASE={fake_lm.base_url}", f"-e=DSPY_SERVE_PORT={port}", image],
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        ready = wait_ready(url, 120)
        if ready is None:
            podman("stop", "-t", "5", name, timeout=60)
            pytest.fail("never ready; the container said:\n" + process.communicate(timeout=60)[0][-4000:])
        assert ready.json() == {"status": "ready"}, "an anonymous caller learns ready, nothing more"
        headers = {"Authorization": "Bearer key-in-a-file"}
        known = httpx.get(f"{url}/health/ready", headers=headers, timeout=5).json()
        assert known["programs"]["qa"]["optimized"] is True
        assert httpx.post(f"{url}/qa/invoke", json={"inputs": {"question": "?"}}).status_code == 401
        answer = httpx.post(f"{url}/qa/invoke", json={"inputs": {"question": "Capital?"}}, headers=headers)
        assert answer.status_code == 200 and answer.json()["outputs"] == {"answer": "fake answer"}
        assert (
            httpx.post(f"{url}/brief/invoke", json={"inputs": {"question": "?"}}, headers=headers).status_code
            == 404  # outside the key's programs: as if it did not exist
        )
        mcp = httpx.post(
            f"{url}/mcp",
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "t", "version": "1"},
                },
            },
            headers={**headers, "Accept": "application/json, text/event-stream"},
        )
        assert mcp.status_code == 200 and '"tools"' in mcp.text, "the mcp extra is installed"
        inside = podman("exec", name, "sh", "-c", "id -u; command -v gcc cc cmake; ls -a /app; env")
        lines = inside.stdout.splitlines()
        assert lines[0] == "10001"
        assert not any(line.endswith(("/gcc", "/cc", "/cmake")) for line in lines), "no compilers"
        assert "app" in lines and ".env" not in lines and "keys.txt" not in lines
        assert "DSPY_SERVE_TIMEOUT=20.0" in lines
    finally:
        podman("stop", "-t", "10", name, timeout=60)
        log = process.communicate(timeout=60)[0]
    assert "Application shutdown complete" in log
    assert "sk-dotenv-never-in-the-image" not in log
