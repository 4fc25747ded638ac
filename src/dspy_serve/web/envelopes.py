"""The HTTP envelope around a program's own inputs and outputs.

A request is ``{"inputs": {...}, "options": {...}}``: the program's fields live alone in
``inputs``, so per-request options can never collide with a field of the same name. An answer
is :func:`response_body`: ``{"call_id", "outputs", "usage", "cost", "model"}`` (and ``trace``
and ``prompts`` when asked for), the same for ``/invoke`` and the stream's ``prediction``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WrapValidator,
    create_model,
)
from pydantic_core import PydanticCustomError
from pydantic_core.core_schema import ValidatorFunctionWrapHandler

from dspy_serve.serving.runner import CallResult
from dspy_serve.serving.schema import ProgramInterface

__all__ = [
    "NOT_BOOL_OR_STR",
    "InvalidItem",
    "LMCall",
    "Problem",
    "StatusEvent",
    "TokenEvent",
    "TokenUsage",
    "TraceStep",
    "envelope_models",
    "options_model",
    "response_body",
    "stream_event_model",
]


class TokenUsage(BaseModel):
    """Tokens one model spent on a request, as the provider reported them."""

    model_config = ConfigDict(extra="allow")

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None


Usage = dict[str, TokenUsage]


class ModelCost(BaseModel):
    usd: float | None = Field(description="Estimated cost in USD; null when the price is unknown.")
    reason: str | None = Field(default=None, description="Why the cost is unknown (or zero).")


class Cost(BaseModel):
    """An estimate from DSPy's bundled model prices, never a bill."""

    total_usd: float | None = Field(description="Null when any model's price is unknown.")
    by_model: dict[str, ModelCost]


class Problem(BaseModel):
    """RFC 9457 problem details, the shape of every error."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=["urn:dspy-serve:error:invalid_input"])
    title: str
    status: int
    detail: str
    code: str = Field(description="Stable machine-readable error code.")
    request_id: str | None = None
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="Per-field problems: loc (path), msg, type."
    )
    retry_after: float | None = None


def _not_bool_or_str(value: Any) -> Any:
    if isinstance(value, (bool, str)):
        raise PydanticCustomError(
            "int_type", "Input should be a valid integer, not a {kind}", {"kind": type(value).__name__}
        )
    return value


# An integer as JSON Schema means it: a number without a fraction (`100` or `100.0`), never `true`
# or `"100"`, which pydantic's lax mode would coerce. Put it after the constraints in `Annotated`,
# so that they stay in the JSON schema: `Annotated[int, Field(gt=0), NOT_BOOL_OR_STR]`.
NOT_BOOL_OR_STR = BeforeValidator(_not_bool_or_str)


class InvalidItem:
    """A batch item that failed validation; kept so the other items still run."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors


def _keep_invalid(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    try:
        return handler(value)
    except ValidationError as exc:
        # loc, msg and type only: an error's ctx can hold the exception a type's own validator
        # raised (dspy.Image's ValueError), which is not JSON and would fail the whole batch.
        return InvalidItem(
            [
                {"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]}
                for err in exc.errors(include_url=False, include_input=False)
            ]
        )


def options_model(max_tokens_limit: int, models: list[str]) -> type[BaseModel]:
    """The options of a call. Each field's example is a value this server accepts, so the docs'
    "Try it out" request works as given (a generated ``"model": "string"`` would be a 403)."""
    return create_model(
        "CallOptions",
        __config__=ConfigDict(extra="forbid"),
        __doc__="Per-request LM options. `model` must be on the server's allow-list.",
        # Strict: `"temperature": false` or `"max_tokens": "100"` is a mistake to report, not to coerce.
        model=(
            str | None,
            Field(
                default=None,
                strict=True,
                description=f"One of the allowed models: {', '.join(models)}.",
                examples=models[:1],
            ),
        ),
        temperature=(float | None, Field(default=None, ge=0, le=2, strict=True, examples=[0.7])),
        max_tokens=(
            Annotated[int, Field(gt=0, le=max_tokens_limit), NOT_BOOL_OR_STR] | None,
            Field(default=None, examples=[min(256, max_tokens_limit)]),
        ),
        trace=(
            bool | None,
            Field(
                default=None,
                strict=True,
                description="Return the call's trace (`trace` in the result); a 403 unless the server "
                "exposes traces (GET /programs: `trace_available`). Not for /batch.",
                examples=[False],
            ),
        ),
        prompts=(
            bool | None,
            Field(
                default=None,
                strict=True,
                description="Return each LM call's messages and raw response (`prompts` in the result, and "
                "in each /batch item); a 403 unless the server exposes prompts to your key (GET /programs: "
                "`prompts_available`).",
                examples=[False],
            ),
        ),
    )


def envelope_models(
    prefix: str,
    interface: ProgramInterface,
    options: type[BaseModel],
    max_batch: int,
) -> dict[str, type[BaseModel]]:
    """Request/response models of one program's invoke and batch operations.

    No examples from the program's demos: they are training data, and the document is public."""
    # Built at runtime from each program's signature: to the type checker these are plain values.
    inputs: Any = interface.inputs
    outputs: Any = interface.outputs
    optional_options: Any = options | None
    invoke_request = create_model(
        f"{prefix}InvokeRequest",
        __config__=ConfigDict(extra="forbid"),
        inputs=(inputs, ...),
        options=(optional_options, None),
    )
    invoke_response = create_model(
        f"{prefix}InvokeResponse",
        __base__=_InvokeResponseBase,
        call_id=(str, _CALL_ID),
        version=(str, _VERSION),
        outputs=(outputs, ...),
        usage=(Usage, Field(description="Tokens spent by this request, per model.")),
        cost=(Cost, Field(description="Estimated cost of this request.")),
        model=(str, Field(description="The LM that served the request.")),
    )
    lenient_item: Any = Annotated[inputs, WrapValidator(_keep_invalid)]
    batch_request = create_model(
        f"{prefix}BatchRequest",
        __config__=ConfigDict(extra="forbid"),
        items=(list[lenient_item], Field(min_length=1, max_length=max_batch)),
        options=(optional_options, None),
    )
    batch_item = create_model(
        f"{prefix}BatchItem",
        __base__=_WithPrompts,
        index=(int, ...),
        call_id=(str, _CALL_ID),
        version=(str, _VERSION),
        outputs=(Optional[outputs], None),  # noqa: UP045 - a runtime type expression
        error=(Problem | None, None),
        usage=(Usage, Field(default_factory=dict)),
        cost=(Cost | None, None),
    )
    batch_response = create_model(
        f"{prefix}BatchResponse",
        items=(list[batch_item], Field(description="One result per input, in input order.")),  # type: ignore[valid-type]
        usage=(Usage, Field(description="Tokens spent by the whole batch, per model.")),
        cost=(Cost, Field(description="Estimated cost of the whole batch.")),
        model=(str, ...),
    )
    return {
        "invoke_request": invoke_request,
        "invoke_response": invoke_response,
        "batch_request": batch_request,
        "batch_response": batch_response,
    }


class TraceStep(BaseModel):
    """One predictor call of a traced run, in the order the program made them."""

    predictor: str | None = Field(description="The predictor's name in the program; null if none fits.")
    inputs: dict[str, Any]
    outputs: dict[str, Any]


class LMCall(BaseModel):
    """One LM call of a run (``options.prompts``): what was sent, and what the LM answered."""

    model: str
    messages: list[dict[str, Any]] = Field(description="The messages sent, as the adapter wrote them.")
    response: list[Any] = Field(
        description="The raw completion(s): text, or an object when one carries tool calls or reasoning."
    )


_CALL_ID = Field(
    description="The server's id for this call (also the `X-Call-Id` header): what feedback names."
)
_VERSION = Field(
    description="The program version that answered (also the `X-Program-Version` header; "
    "`GET /programs/NAME` lists the versions)."
)


def _absent(value: Any) -> bool:
    return value is None


class _WithPrompts(BaseModel):
    """``prompts`` is sent only when the caller asked for it (``options.prompts``).

    Left out by ``exclude_if``, never by a ``model_serializer``: a serializer function makes
    pydantic publish the whole response as an untyped object in the OpenAPI document."""

    prompts: list[LMCall] | None = Field(
        default=None,
        exclude_if=_absent,
        description="Each LM call, in the order answered: only with `options.prompts`.",
    )


class _InvokeResponseBase(_WithPrompts):
    """``trace`` is sent only when the caller asked for it (``options.trace``)."""

    trace: list[TraceStep] | None = Field(
        default=None,
        exclude_if=_absent,
        description="Each predictor that ran, in order: only when `options.trace` was set.",
    )


class TokenEvent(BaseModel):
    """``event: token``: a piece of a ``str`` output field, as the LM produces it."""

    predictor: str = Field(description="The predictor's name in the program (e.g. 'answer', 'predict').")
    field: str = Field(description="The output field this chunk belongs to.")
    chunk: str


class StatusEvent(BaseModel):
    """``event: status``: progress of a multi-step program."""

    message: str


def stream_event_model(prefix: str, invoke_response: type[BaseModel]) -> type[BaseModel]:
    """Documents one SSE event: its name and the JSON in its ``data`` line."""
    data: Any = TokenEvent | StatusEvent | invoke_response | Problem
    event: Any = Literal["token", "status", "prediction", "error"]
    return create_model(
        f"{prefix}StreamEvent",
        __doc__="One Server-Sent Event: `event: <event>` then `data: <JSON>`.",
        event=(event, ...),
        data=(
            data,
            Field(
                description="token: TokenEvent; status: StatusEvent; prediction: as /invoke; error: Problem"
            ),
        ),
    )


def response_body(result: CallResult, call_id: str, version: str) -> dict[str, Any]:
    """The body of /invoke, and of the stream's ``prediction`` event."""
    body: dict[str, Any] = {
        "call_id": call_id,
        "version": version,
        "outputs": result.outputs,
        "usage": result.usage,
        "cost": result.cost,
        "model": result.model,
    }
    if result.trace is not None:  # asked for (options.trace)
        body["trace"] = result.trace
    if result.prompts is not None:  # asked for (options.prompts)
        body["prompts"] = result.prompts
    return body
