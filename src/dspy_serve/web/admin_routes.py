"""The admin API (#27): versions and rollouts at run time, for operators, never for callers.

On only when admin keys are configured (``DSPY_SERVE_ADMIN_KEYS``, ``--admin-keys-file``),
separate from callers' keys: a caller's key opens nothing here, an admin key opens nothing
else. Never in the callers' OpenAPI document. Every change goes through the service's
:class:`~dspy_serve.serving.version_control.VersionControl`.
"""

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from dspy_serve.errors import ProgramNotFound, ServiceUnavailable, Unauthorized
from dspy_serve.serving.keys import KeyRing
from dspy_serve.serving.programs import Program
from dspy_serve.serving.service import Service
from dspy_serve.web.auth import presented_key

__all__ = ["ADMIN_PREFIX", "add_admin"]

ADMIN_PREFIX = "/admin/"


class LoadVersion(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=100, description="The version's name, e.g. 'v2'.")
    artifact: str = Field(max_length=4096, description="The artifact's path, under --artifact-dir.")


class Promote(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(max_length=100)


class SplitBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    candidate: str = Field(max_length=100)
    weight: float = Field(ge=0, le=100, description="Percent of callers sent to the candidate.")
    sticky: str = Field(default="key", max_length=200, description="key, header:NAME or input:FIELD")


class ShadowBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    candidate: str = Field(max_length=100)
    rate: float = Field(ge=0, le=1, description="Share of calls the candidate also runs, unseen.")


def add_admin(app: FastAPI, service: Service, keys: KeyRing) -> None:
    """Mount ``/admin/...`` on ``app``, open to ``keys`` only."""

    async def admin_only(request: Request) -> None:
        presented = presented_key(request.scope)
        if presented is None or keys.match(presented) is None:
            raise Unauthorized("Send an admin key as 'Authorization: Bearer KEY'.")

    def program_named(name: str) -> Program:
        program = service.programs.get(name)
        if program is None:
            raise ProgramNotFound.named(name, list(service.programs))
        return program

    router = APIRouter(prefix="/admin", dependencies=[Depends(admin_only)], include_in_schema=False)
    ProgramArg = Annotated[Program, Depends(program_named)]
    control = service.versions

    @router.get("/programs/{name}")
    async def show(program: ProgramArg) -> dict[str, Any]:
        return program.describe()

    @router.post("/programs/{name}/versions", status_code=201)
    async def load(program: ProgramArg, body: LoadVersion, response: Response) -> dict[str, Any]:
        version, new = await control.load(program, body.name, body.artifact)
        if not new:
            response.status_code = 200  # the same content under the same name: nothing changed
        return version.describe(program.state_of(version.name))

    @router.post("/programs/{name}/promote")
    async def promote(program: ProgramArg, body: Promote) -> dict[str, Any]:
        await control.promote(program, body.version)
        return program.describe()

    @router.post("/programs/{name}/rollback")
    async def rollback(program: ProgramArg) -> dict[str, Any]:
        await control.rollback(program)
        return program.describe()

    @router.put("/programs/{name}/split")
    async def split(program: ProgramArg, body: SplitBody) -> dict[str, Any]:
        await control.split(program, body.candidate, body.weight, body.sticky)
        return program.describe()

    @router.put("/programs/{name}/shadow")
    async def shadow(program: ProgramArg, body: ShadowBody) -> dict[str, Any]:
        await control.shadow(program, body.candidate, body.rate)
        return program.describe()

    @router.get("/programs/{name}/compare")
    async def compare(
        program: ProgramArg,
        since: Annotated[float | None, Query(gt=0, description="Seconds back from now.")] = None,
        min_sample: Annotated[int | None, Query(ge=1)] = None,
        stable: Annotated[str | None, Query(max_length=100)] = None,
        candidate: Annotated[str | None, Query(max_length=100)] = None,
    ) -> dict[str, Any]:
        """Per version over the window (default: since the rollout last changed), with a verdict
        (docs/compare.md). Reads the captured calls: a program that is not captured has none."""
        from dspy_serve.compare.report import compare_report

        store = control.store
        if store is None:
            raise ServiceUnavailable("The store is not open yet.", retry_after=1)
        rollout = program.rollout
        report = await compare_report(
            store,
            program.name,
            since=time.time() - since if since is not None else rollout.changed_at,
            stable=stable or (rollout.stable if candidate is None or candidate != rollout.stable else None),
            candidate=candidate or rollout.candidate,
            min_sample=min_sample or service.settings.compare_min_sample,
        )
        capture = service.settings.capture
        report["captured"] = "*" in capture or program.name in capture
        if not report["captured"]:
            report["reason"] = (
                f"{program.name} is not captured: start the server with --capture {program.name}"
            )
        return report

    @router.post("/reload")
    async def reload() -> dict[str, Any]:
        """What SIGHUP does: the configured versions' files loaded again, the configured rollouts."""
        return {"reloaded": await control.reload()}

    app.include_router(router)
