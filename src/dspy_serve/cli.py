"""``dspy-serve``: the command line, generated from the settings.

Each option of ``dspy-serve run`` is made from a field of :class:`ServeSettings` (its flag,
help text and environment variable), so a setting is declared once. Values given on the
command line are handed to the settings as overrides; pydantic validates everything, so a
bad value gets the same message whether it came from a flag, the environment or a file.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path
from typing import Any

import click

from dspy_serve._version import VERSION
from dspy_serve.commands.options import (
    GroupedCommand,
    command_settings,
    config_option,
    or_exit_3,
    settings_params,
)
from dspy_serve.settings import ServeSettings

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(version=VERSION, prog_name="dspy-serve")
def main() -> None:
    """Serve DSPy programs as typed, async HTTP APIs.

    \b
    dspy-serve run examples/qa.py:program
    dspy-serve run qa=examples/qa.py:program --model openai/gpt-4o-mini --artifact qa.json

    Every option of `run` can also be set as an environment variable (DSPY_SERVE_<NAME>),
    in a .env file, or in a TOML file given with --config (keys are the option names with
    underscores). Provider credentials come only from the provider's own variables
    (OPENAI_API_KEY, ...).
    """


def _run(config: Path | None, **values: Any) -> None:
    serve(command_settings(config, values))


def serve(settings: ServeSettings) -> None:
    """Run a server until interrupted: load the programs, check the LMs, bind the port, then serve.

    Everything that can be wrong with the command is found here, in this process, before any
    worker starts: a mistake is one line and exit 3, never a worker crashing in a loop.
    """
    from dspy_serve.app import create_app
    from dspy_serve.deploy.uvicorn_server import ServeServer, bind_socket, socket_url, uvicorn_config
    from dspy_serve.lm.checks import check_lms
    from dspy_serve.logs import configure_logging
    from dspy_serve.redaction import remember_secrets
    from dspy_serve.serving.keys import KeyRing
    from dspy_serve.serving.secrets import secrets_of
    from dspy_serve.serving.service import Service

    configure_logging(settings.log_level, settings.log_format)
    remember_secrets(secrets_of(settings))  # this process logs before any app is built
    with or_exit_3():  # before any worker or replica starts: a key source without keys fails open
        KeyRing.from_settings(settings)
    if settings.engine == "ray":
        _serve_on_ray(settings)
        return
    if settings.reload and settings.workers > 1:
        raise click.UsageError("--reload runs one server process: drop --workers")
    with or_exit_3():
        if settings.workers > 1 or settings.reload:
            service = Service(settings)  # each worker loads its own; this one proves they will load
        else:
            app = create_app(settings)
            service = app.state.service
        # The served settings: with no --model, a program's file may configure the LM.
        check_lms(service.settings, probe=settings.check_lm)
        sock = bind_socket(settings.host, settings.port)
    _log_artifacts(service)
    url = socket_url(sock)
    pages = f"playground: {url}/, docs: {url}/docs" if settings.playground else f"docs: {url}/docs"
    if settings.workers > 1 or settings.reload:
        from dspy_serve.deploy.workers import run_workers

        what = "serving with --reload" if settings.reload else f"starting {settings.workers} workers"
        click.echo(f"dspy-serve: {what} on {url}  ({pages})", err=True)
        with contextlib.suppress(KeyboardInterrupt):
            run_workers(settings, sock)
        return

    def announce() -> None:
        click.echo(f"dspy-serve: serving on {url}  ({pages})", err=True)

    # SIGHUP reloads the configured versions once the app has started (app.py); until then it
    # must not kill the process, as it would by default.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    server = ServeServer(uvicorn_config(app, settings), app.state.service, on_started=announce)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the Ctrl-C it captured, after shutdown
        server.run(sockets=[sock])
    if not server.started:
        sys.exit(3)


def _log_artifacts(service: Any) -> None:
    """Name the state each program serves: its artifact and sha256, or none (unoptimized)."""
    import logging

    for name, program in service.programs.items():
        artifact = program.loaded.artifact
        if artifact is not None:
            logging.getLogger("dspy_serve").info(
                "program %s: artifact %s (sha256 %s)", name, artifact.path, artifact.sha256
            )
        else:
            logging.getLogger("dspy_serve").info("program %s: no artifact (not optimized)", name)


def _serve_on_ray(settings: ServeSettings) -> None:
    try:
        from dspy_serve.deploy.ray_serve import run_on_ray
    except ImportError:
        raise click.UsageError("--engine ray needs Ray Serve: pip install 'dspy-serve[ray]'") from None
    if settings.workers > 1:
        raise click.UsageError("--workers is for --engine uvicorn; on Ray, use --replicas")
    with or_exit_3():  # it loads the programs and checks the LM's credentials before Ray starts
        run_on_ray(settings)


run_command = GroupedCommand(
    "run",
    callback=_run,
    params=[
        config_option(),
        *settings_params(),
    ],
    help="Serve one or more programs. TARGET is path/file.py:NAME or package.module:NAME, "
    "optionally alias=TARGET.",
    context_settings={"max_content_width": 110},
)
main.add_command(run_command)


def _mcp(config: Path | None, **values: Any) -> None:
    settings = command_settings(config, values)
    try:
        from dspy_serve.interop.mcp import run_stdio
    except ImportError:
        raise click.UsageError("MCP needs the optional SDK: pip install 'dspy-serve[mcp]'") from None
    from dspy_serve.logs import configure_logging
    from dspy_serve.redaction import remember_secrets
    from dspy_serve.serving.secrets import secrets_of
    from dspy_serve.serving.service import Service

    configure_logging(settings.log_level, settings.log_format)  # to stderr: stdout is the protocol
    remember_secrets(secrets_of(settings))
    # Importing a program may print: stdout is the protocol.
    from dspy_serve.lm.checks import check_lms

    with or_exit_3(), contextlib.redirect_stdout(sys.stderr):
        service = Service(settings)
        check_lms(service.settings, probe=settings.check_lm)
    with contextlib.suppress(KeyboardInterrupt):
        run_stdio(service)


mcp_command = GroupedCommand(
    "mcp",
    callback=_mcp,
    params=run_command.params,
    help="Serve programs as MCP tools over stdin/stdout, for desktop agents. Same TARGETs and "
    "options as `run`; host, port and HTTP options are unused.",
    context_settings={"max_content_width": 110},
)
main.add_command(mcp_command)


def _out_option(help_text: str) -> click.Option:
    return click.Option(
        ["--out", "out"],
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("."),
        show_default=True,
        help=help_text,
    )


def _deployable(config: Path | None, values: dict[str, Any]) -> ServeSettings:
    """The settings of `docker` and `kuberay`, checked as `run` checks them, before any file is written."""
    from dspy_serve.deploy.container import check_programs, container_settings

    settings = command_settings(config, values)
    try:
        container_settings(settings)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    with or_exit_3():
        return check_programs(settings)


def _from_environment_note(settings: ServeSettings) -> None:
    from dspy_serve.deploy.container import container_settings

    for variable in container_settings(settings).from_environment:
        click.echo(f"{variable} holds a credential: it is not written; set it in the environment", err=True)


def _docker(config: Path | None, out: Path, **values: Any) -> None:
    from dspy_serve.deploy.container import container_settings
    from dspy_serve.deploy.docker import USER_ID, write_deployment
    from dspy_serve.lm.checks import credential_variables

    settings = _deployable(config, values)
    leave_out = (
        [config] if config is not None and config.resolve().is_relative_to(Path.cwd().resolve()) else []
    )
    try:
        written = write_deployment(
            settings, out, leave_out=leave_out, provider_variables=credential_variables(settings)
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    for path in written:
        click.echo(f"wrote {path}")
    _from_environment_note(settings)
    if leave_out:
        credential = " (it holds a credential)" if container_settings(settings).from_environment else ""
        click.echo(
            f"{config} is left out of the image{credential}: its settings are the Dockerfile's ENV lines",
            err=True,
        )
    keys = settings.api_keys_file
    if keys is not None and not _readable_by(keys, USER_ID):
        click.echo(
            f"{keys} is not readable by uid {USER_ID}, which the container runs as: "
            f"chmod o+r {keys} (or chown {USER_ID} {keys}), or the server cannot read its keys",
            err=True,
        )
    if not any((Path.cwd() / name).is_file() for name in ("requirements.txt", "pyproject.toml")):
        click.echo(
            f"no requirements.txt or pyproject.toml in {Path.cwd()}: the image installs dspy-serve only; "
            "add one if your programs import other packages",
            err=True,
        )
    env = out / ".env"
    click.echo(
        f"Next: cp {out / '.env.example'} {env} (add credentials), then "
        f"docker compose -f {out / 'compose.yaml'} up --build",
        err=True,
    )


def _readable_by(path: Path, uid: int) -> bool:
    """Whether a file mounted with its mode and owner (a compose secret) is readable by ``uid``."""
    import stat

    mode = path.stat()
    return bool(mode.st_mode & stat.S_IROTH) or (mode.st_uid == uid and bool(mode.st_mode & stat.S_IRUSR))


def _image_params(leave_out: set[str]) -> list[click.Parameter]:
    """`run`'s options for a command that writes an image's files: those that make no sense in an
    image (``--reload``, ``--host``, which a container refuses anyway) still parse, for the one-line
    reason, but are left out of ``--help``."""
    import copy

    params = []
    for param in run_command.params:
        if param.name in leave_out and isinstance(param, click.Option):
            param = copy.copy(param)
            param.hidden = True
        params.append(param)
    return params


docker_command = GroupedCommand(
    "docker",
    callback=_docker,
    params=[
        *_image_params({"reload", "host"}),
        _out_option(
            "Directory inside the project to write the Dockerfile, its .dockerignore, "
            "compose.yaml, .env.example and the dspy-serve wheel to."
        ),
    ],
    help="Write a production Dockerfile, compose.yaml and .env.example that run these programs with "
    "these options. Run it from the project directory (the build context); paths must be relative to it.",
    context_settings={"max_content_width": 110},
)
main.add_command(docker_command)


def _kuberay(config: Path | None, image: str, name: str | None, out: Path, **values: Any) -> None:
    from dspy_serve.deploy.docker import image_ray_version
    from dspy_serve.deploy.kuberay import service_name, write_rayservice

    settings = _deployable(config, values)
    try:
        name = service_name(settings, name)
        path = write_rayservice(settings, image, image_ray_version(), out, name)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"wrote {path}")
    _from_environment_note(settings)
    keys = (
        f", kubectl create secret generic {name}-api-keys --from-file=api_keys={settings.api_keys_file}"
        if settings.api_keys_file
        else ""
    )
    click.echo(
        f"Next: build {image} with `dspy-serve docker --engine ray` (same TARGETs), push it, "
        f"kubectl create secret generic {name}-secrets --from-env-file=.env{keys}, kubectl apply -f {path}",
        err=True,
    )


kuberay_command = GroupedCommand(
    "kuberay",
    callback=_kuberay,
    params=[
        *_image_params({"reload", "host", "workers", "engine", "ray_address"}),
        click.Option(
            ["--image", "image"],
            required=True,
            help="The image the pods run: built from `dspy-serve docker --engine ray`, in your registry.",
        ),
        click.Option(
            ["--name", "name"],
            default=None,
            help="The RayService's name (and its Secrets' prefix), unique in the namespace. "
            "Default: dspy-serve-PROGRAMS.",
        ),
        _out_option("Directory to write rayservice.yaml to."),
    ],
    help="Write a KubeRay RayService manifest that runs these programs with these options on Kubernetes, "
    "as replicas of a Ray Serve deployment. Paths must be relative to the project directory.",
    context_settings={"max_content_width": 110},
)
main.add_command(kuberay_command)


def _add_data_loop_commands() -> None:
    """`call`, `batch` (#28), `store`, `data` and `optimize` (#26), `admin` and `compare` (#27)
    live in dspy_serve.commands."""
    from dspy_serve.commands.admin import admin_group
    from dspy_serve.commands.batch import batch_command
    from dspy_serve.commands.call import call_command
    from dspy_serve.commands.compare import compare_command
    from dspy_serve.commands.data import data_group
    from dspy_serve.commands.optimize import optimize_command
    from dspy_serve.commands.store import store_group

    commands = (
        call_command,
        batch_command,
        store_group,
        data_group,
        optimize_command,
        admin_group,
        compare_command,
    )
    for command in commands:
        main.add_command(command)


_add_data_loop_commands()
