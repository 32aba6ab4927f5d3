"""What a client sends: the request bodies, how they are read and checked, and OpenAI's error shape.

Every error is `{"error": {"message", "type", "param", "code"}}`. A body is refused here (400 or
422), before any work, for whatever would otherwise fail deeper inside the server: JSON nested
more than `MAX_JSON_DEPTH` levels, NaN / Infinity, lone surrogates, seeds beyond 64 bits,
steering values, strengths or thresholds that are not finite or over `MAX_ABS_VALUE`, and
steering that is neither a name nor a steering object.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, Literal, Union

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, PlainValidator, StrictBool, StrictFloat, StrictInt,
                      StrictStr, Tag, ValidationError, field_validator)

MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects in a body (OpenAI's bodies need about six)."""
MAX_NAME_CHARS = 200
MAX_REQUEST_FEATURES = 32
MAX_ABS_VALUE = 1e4
"""Largest feature value, strength, threshold, or value x strength a request may set (larger
ones only produce NaNs)."""
STEERING_SHAPE = ('a registered spec name ("NAME" or "none"), {"spec": NAME, "strength": 0.5}, or '
                  '{"sae": NAME, "features": [{"feature": 12, "op": "clamp", "value": 8}]}')
_HOOK_PATH = re.compile(r"[A-Za-z0-9_.\-]{1,200}")
_SURROGATE = re.compile("[\ud800-\udfff]")


# --- errors ---------------------------------------------------------------------------------

class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str, *, type_: str = "invalid_request_error",
                 param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.type, self.param = status, message, code, type_, param
        self.headers = headers

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.code, type_=self.type, param=self.param,
                              headers=self.headers)


def error_response(status: int, message: str, code: str, *, type_: str = "invalid_request_error",
                   param: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")  # an echoed lone surrogate
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


# --- steering objects -----------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _finite(value: float, what: str) -> float:
    try:
        value = float(value)
    except OverflowError:  # an integer beyond float's range
        value = math.inf
    if not math.isfinite(value) or abs(value) > MAX_ABS_VALUE:
        raise ValueError(f"{what} must be a finite number with |{what}| <= {MAX_ABS_VALUE:g}")
    return value


def _hook(value: Any) -> str | int:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10_000:
        return value
    if isinstance(value, str) and _HOOK_PATH.fullmatch(value):
        return value
    raise ValueError('hook must be a layer index (an integer) or a module path like "model.layers.12"')


Name = Annotated[StrictStr, Field(min_length=1, max_length=MAX_NAME_CHARS)]
Hook = Annotated[Union[str, int], PlainValidator(_hook)]


class FeatureEditIn(_Strict):
    feature: StrictInt = Field(ge=0)
    op: Literal["clamp", "add", "scale", "ablate"] = "clamp"
    value: StrictFloat | StrictInt = 0.0

    @field_validator("value")
    @classmethod
    def _value(cls, v: float) -> float:
        return _finite(v, "value")


class ConditionIn(_Strict):
    """Steer only prompts on which a registered SAE's latent fires (decided per request)."""

    feature: StrictInt = Field(ge=0)
    threshold: StrictFloat | StrictInt
    sae: Name | None = None
    """Registered SAE name; default: the steering object's `sae`."""
    hook: Hook | None = None
    pooling: str = Field("max", pattern=r"^(?:max|mean|last|window[1-9][0-9]{0,3})$")
    """max, mean, last, or windowN (the best mean of N consecutive prompt tokens)."""
    direction: Literal["above", "below"] = "above"

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, v: float) -> float:
        return _finite(v, "threshold")


class SteeringIn(_Strict):
    spec: Name | None = None
    """A registered spec (`refusal-clamp`, `smollm2:refusal-clamp` or `steered`)."""
    strength: StrictFloat | StrictInt = 1.0
    """Multiplies every intervention value of the spec or of the edits given here."""
    sae: Name | None = None
    """A registered SAE name (never a path)."""
    hook: Hook | None = None
    """Layer index or module path; default: the hook the SAE was registered at."""
    features: list[FeatureEditIn] = Field(default_factory=list, max_length=MAX_REQUEST_FEATURES)
    positions: Literal["all", "prompt", "generated"] | None = None
    condition: ConditionIn | None = None

    @field_validator("strength")
    @classmethod
    def _strength(cls, v: float) -> float:
        return _finite(v, "strength")


def _steering_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "steering-name"
    return "steering-object" if isinstance(value, (dict, SteeringIn)) else None


SteeringField = Annotated[
    Union[Annotated[Name, Tag("steering-name")], Annotated[SteeringIn, Tag("steering-object")]],
    Discriminator(_steering_kind, custom_error_type="steering_type", custom_error_message=f"must be {STEERING_SHAPE}")]
"""A name or an object, told apart by the JSON type: an error names the shape that was meant,
not "Input should be a valid string" for every object."""


# --- request bodies -------------------------------------------------------------------------

class _Lenient(BaseModel):
    """OpenAI request objects: fields we do not use are ignored, fields we use are type-checked."""

    model_config = ConfigDict(extra="ignore")


class TextPart(_Lenient):
    type: Literal["text"]
    text: StrictStr


class MessageIn(_Lenient):
    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(_Lenient):
    include_usage: StrictBool = False


class ChatRequest(_Lenient):
    model: Name
    messages: list[MessageIn] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    temperature: StrictFloat | StrictInt | None = Field(None, ge=0, le=2)
    top_p: StrictFloat | StrictInt | None = Field(None, gt=0, le=1)
    n: StrictInt = Field(1, ge=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = Field(None, ge=-2**63, lt=2**63)
    """OpenAI's range: a signed 64-bit integer."""
    steering: SteeringField | None = None
    """saesteer's extension (OpenAI clients: `extra_body={"steering": ...}`)."""
    tools: list[Any] | None = None
    logprobs: StrictBool | None = None


class ProbeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sae: Name
    feature: StrictInt = Field(ge=0)
    hook: Hook | None = None


class CompareRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    messages: list[MessageIn] = Field(min_length=1)
    steered_messages: list[MessageIn] | None = Field(None, min_length=1)
    """The steered side's own history (the page keeps two conversations); default: `messages`."""
    model: Name | None = None
    steering: SteeringField | None = None
    """Default: the deployment spec (`--steer`)."""
    max_tokens: StrictInt | None = Field(None, ge=1)
    temperature: StrictFloat | StrictInt | None = Field(None, ge=0, le=2)
    probe: ProbeIn | None = None
    """The feature whose activation is shown; default: the steering's first SAE feature."""


# --- reading and checking a body ------------------------------------------------------------

def _is_type_tag(part: str) -> bool:
    """A location step that names a union member (`str`, `list[str]`, `SteeringIn`), not a field."""
    return (part in ("str", "int", "float", "bool") or part.startswith(("function-", "json-or-python", "list[",
                                                                        "steering-")) or part[:1].isupper())


def validated(model: type[BaseModel], body: Any) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"] if isinstance(p, int) or not _is_type_tag(p))
        message = f"{loc}: {err['msg']}" if loc else err["msg"]
        if loc.startswith("steering.") and err["type"] != "steering_type":
            message += f" (steering is {STEERING_SHAPE})"
        raise ApiError(422, message, "invalid_value", param=loc or None) from e


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _problem(body: Any) -> str | None:
    """What makes a parsed body unusable, if anything: too deep a nesting, or a lone surrogate."""
    stack = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return "the request body holds a lone UTF-16 surrogate (\\ud800-\\udfff); send valid Unicode"
        elif isinstance(value, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                return f"the request body nests arrays and objects more than {MAX_JSON_DEPTH} levels deep"
            items = [x for kv in value.items() for x in kv] if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items)
    return None


async def read_json(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        raise ApiError(400, "the request body is empty; send a JSON object", "invalid_json")
    try:
        body = json.loads(raw, parse_constant=_no_constants)
    except RecursionError:
        raise ApiError(400, f"the request body nests arrays and objects more than {MAX_JSON_DEPTH} levels deep",
                       "invalid_json") from None
    except UnicodeDecodeError as e:
        raise ApiError(400, f"the request body is not UTF-8 ({e.reason} at byte {e.start})", "invalid_json") from e
    except ValueError as e:  # not JSON, NaN / Infinity, or a number of more than 4,300 digits
        raise ApiError(400, f"the request body is not valid JSON ({str(e).split(';')[0]})", "invalid_json") from e
    problem = _problem(body)
    if problem is not None:
        raise ApiError(400, problem, "invalid_json")
    return body


class BodyLimit:
    """Refuse bodies over `max_bytes` (HTTP 413) by their Content-Length, or while they stream in."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await error_response(413, f"request body over {self.max_bytes} bytes", "request_too_large")(
                scope, receive, send)
            return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise ApiError(413, f"request body over {self.max_bytes} bytes", "request_too_large")
            return message

        await self.app(scope, limited, send)
