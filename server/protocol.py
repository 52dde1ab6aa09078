"""The wire schema: every request and response body of API.md as msgspec Structs, the error
envelope, request-body decoding with extra-parameters handling, and SSE framing.

Owns: request/response Structs, `ApiError`, `field_error`, `decode_body`, `encode`, `sse`,
`SSE_DONE`.
Imports: msgspec, stdlib. Used by: server.routes, server.app.

Decoding is two passes: the JSON is read as an object to apply the `extra-parameters` policy to
its top-level keys, then converted into the request Struct, which validates types and ranges.
A msgspec validation error becomes a 422 naming the JSON path, the location and the value.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

# ---------------------------------------------------------------- errors


class ErrorDetail(Struct):
    code: str
    message: str
    target: str | None = None


class InnerError(Struct, omit_defaults=True):
    code: str
    loc: list[str | int] | None = None
    value: str | None = None


class ErrorBody(Struct):
    code: str
    message: str
    target: str | None = None
    param: str | None = None
    type: str = "invalid_request_error"
    details: list[ErrorDetail] = []
    innererror: InnerError | None = None


class ErrorResponse(Struct):
    error: ErrorBody


class ApiError(Exception):
    """An answer other than 200, in the API.md envelope."""

    def __init__(self, status: int, code: str, message: str, target: str | None = None,
                 inner: InnerError | None = None, details: list[ErrorDetail] | None = None,
                 headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.target, self.inner, self.details, self.headers = target, inner, details or [], headers

    def body(self) -> ErrorResponse:
        kind = ("invalid_request_error" if self.status < 500 else "server_error")
        return ErrorResponse(ErrorBody(self.code, self.message, self.target, self.target, kind,
                                       self.details, self.inner))


# ---------------------------------------------------------------- chat request

Name64 = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
StopString = Annotated[str, Meta(min_length=1, max_length=256)]
Stop = StopString | Annotated[list[StopString], Meta(max_length=16)]
Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]
Int64 = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]


class TextPart(Struct, tag_field="type", tag="text"):
    text: str


class ImageUrlPart(Struct, tag_field="type", tag="image_url"):
    image_url: dict[str, Any]


class InputAudioPart(Struct, tag_field="type", tag="input_audio"):
    input_audio: dict[str, Any]


class AudioUrlPart(Struct, tag_field="type", tag="audio_url"):
    audio_url: dict[str, Any]


ContentPart = TextPart | ImageUrlPart | InputAudioPart | AudioUrlPart


class FunctionCall(Struct):
    name: str
    arguments: str


class ToolCall(Struct):
    id: str
    function: FunctionCall
    type: Literal["function"] = "function"


class SystemMessage(Struct, tag_field="role", tag="system"):
    content: str | list[TextPart]
    name: str | None = None


class DeveloperMessage(Struct, tag_field="role", tag="developer"):
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(Struct, tag_field="role", tag="user"):
    content: str | list[ContentPart]
    name: str | None = None


class AssistantMessage(Struct, tag_field="role", tag="assistant"):
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = None
    name: str | None = None


class ToolMessage(Struct, tag_field="role", tag="tool"):
    tool_call_id: str
    content: str | list[TextPart] | None = None


Message = SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage


class FunctionDef(Struct):
    name: Name64
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDef(Struct):
    function: FunctionDef
    type: Literal["function"] = "function"


class NamedFunction(Struct):
    name: Name64


class NamedToolChoice(Struct):
    function: NamedFunction
    type: Literal["function"] = "function"


class TextFormat(Struct, tag_field="type", tag="text"):
    pass


class JsonObjectFormat(Struct, tag_field="type", tag="json_object"):
    pass


class JsonSchemaSpec(Struct):
    name: Name64
    schema: dict[str, Any]
    description: str | None = None
    strict: bool | None = None


class JsonSchemaFormat(Struct, tag_field="type", tag="json_schema"):
    json_schema: JsonSchemaSpec


ResponseFormat = TextFormat | JsonObjectFormat | JsonSchemaFormat


class StreamOptions(Struct):
    include_usage: bool = False


class EngineExtras(Struct):
    """The extra parameters of API.md: model-side knobs, taken only under pass-through."""

    top_k: Annotated[int, Meta(ge=0)] | None = None
    min_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    repetition_penalty: Annotated[float, Meta(gt=0.0, le=10.0)] | None = None
    ignore_eos: bool | None = None
    min_tokens: Annotated[int, Meta(ge=0)] | None = None


EXTRA_FIELDS = frozenset(EngineExtras.__struct_fields__)


class ChatRequest(EngineExtras, forbid_unknown_fields=True, kw_only=True):
    messages: Annotated[list[Message], Meta(min_length=1)]
    model: str | None = None
    max_tokens: Annotated[int, Meta(ge=0)] | None = None
    max_completion_tokens: Annotated[int, Meta(ge=0)] | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    stop: Stop | None = None
    seed: Int64 | None = None
    stream: bool | None = None
    response_format: ResponseFormat | None = None
    tools: Annotated[list[ToolDef], Meta(min_length=1)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    user_security_context: dict[str, Any] | None = None
    n: Annotated[int, Meta(ge=1, le=16)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    logit_bias: dict[str, Annotated[float, Meta(ge=-100.0, le=100.0)]] | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None


class CompletionRequest(EngineExtras, forbid_unknown_fields=True):
    prompt: str | list[str | int | list[int]] | None = None
    model: str | None = None
    max_tokens: Annotated[int, Meta(ge=0)] | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    stop: Stop | None = None
    seed: Int64 | None = None
    stream: bool | None = None
    n: Annotated[int, Meta(ge=1, le=16)] | None = None
    best_of: Annotated[int, Meta(ge=1, le=16)] | None = None
    logprobs: Annotated[int, Meta(ge=0, le=5)] | None = None
    echo: bool | None = None
    suffix: str | None = None
    logit_bias: dict[str, Annotated[float, Meta(ge=-100.0, le=100.0)]] | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None


CHAT_API_FIELDS = frozenset(ChatRequest.__struct_fields__) - EXTRA_FIELDS
COMPLETION_API_FIELDS = frozenset(CompletionRequest.__struct_fields__) - EXTRA_FIELDS
EXTRA_POLICIES = ("error", "drop", "pass-through")


# ---------------------------------------------------------------- responses


class PromptTokensDetails(Struct):
    audio_tokens: int = 0
    cached_tokens: int = 0


class Usage(Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = msgspec.field(default_factory=PromptTokensDetails)


class TopLogprob(Struct):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobOut(Struct):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(Struct):
    content: list[TokenLogprobOut] | None


class ChatMessageOut(Struct):
    content: str | None
    role: str = "assistant"
    tool_calls: list[ToolCall] | None = None


class ChatChoice(Struct):
    index: int
    message: ChatMessageOut
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(Struct):
    id: str
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: Usage
    object: str = "chat.completion"


class FunctionDelta(Struct, omit_defaults=True):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(Struct, omit_defaults=True):
    """A streamed piece of a tool call: the first carries id, type and name, later ones
    argument fragments; every one its index and a function object (API.md)."""

    index: int
    function: FunctionDelta
    id: str | None = None
    type: str | None = None


class Delta(Struct, omit_defaults=True):
    role: str | None = None
    content: str | None | UnsetType = UNSET  # null is sent for a reply that is only calls
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(Struct):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(Struct):
    id: str
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChunkChoice]
    object: str = "chat.completion.chunk"
    usage: Usage | None | UnsetType = UNSET


class CompletionLogprobs(Struct):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(Struct):
    index: int
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None = None


class Completion(Struct):
    id: str
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    object: str = "text_completion"
    usage: Usage | None | UnsetType = UNSET


class ModelInfo(Struct):
    model_name: str
    model_provider_name: str
    model_type: str = "chat-completion"


class ModelCard(Struct):
    id: str
    created: int
    owned_by: str = "ember"
    object: str = "model"


class ModelList(Struct):
    data: list[ModelCard]
    object: str = "list"


# ---------------------------------------------------------------- codecs

_encoder = msgspec.json.Encoder()
_json_object = msgspec.json.Decoder(dict[str, Any])
SSE_DONE = b"data: [DONE]\n\n"


def encode(value: Any) -> bytes:
    return _encoder.encode(value)


def sse(event: Any) -> bytes:
    """One Server-Sent Event: exactly `data: <one-line JSON>\\n\\n` (API.md)."""
    return b"data: " + _encoder.encode(event) + b"\n\n"


def decode_body(body: bytes, kind: type[ChatRequest] | type[CompletionRequest], policy: str):
    """Parse and validate a request body under an extra-parameters policy (API.md)."""
    try:
        raw = _json_object.decode(body)
    except msgspec.ValidationError:
        raise ApiError(400, "InvalidJson", "the request body must be a JSON object") from None
    except msgspec.DecodeError as e:
        raise ApiError(400, "InvalidJson", f"the request body is not valid JSON: {e}") from None
    api = CHAT_API_FIELDS if kind is ChatRequest else COMPLETION_API_FIELDS
    extra = sorted(k for k in raw if k in EXTRA_FIELDS)
    unknown = sorted(k for k in raw if k not in api and k not in EXTRA_FIELDS)
    if policy == "error" and (extra or unknown):
        names = extra + unknown
        raise ApiError(400, "ExtraParametersNotAllowed",
                       f"Extra parameters {names} are not allowed when extra-parameters is not set "
                       "or set to be 'error'. Set extra-parameters to 'pass-through' to pass them "
                       "to the model, or to 'drop' to ignore them.", target=names[0],
                       inner=InnerError("ExtraParameterNotAllowed", ["body", names[0]]))
    if policy == "drop":
        raw = {k: v for k, v in raw.items() if k in api}
    elif unknown:  # pass-through: the engine takes the extra parameters, not unknown ones
        raise ApiError(422, "ParameterNotSupported",
                       f"Parameters {unknown} are not supported by this model", target=unknown[0],
                       inner=InnerError("ParameterNotSupported", ["body", unknown[0]]))
    try:
        return msgspec.convert(raw, kind)
    except msgspec.ValidationError as e:
        raise validation_error(str(e), raw) from None


_PATH = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_STEP = re.compile(r"\.(\w+)|\[(\d+)\]")


def validation_error(text: str, raw: dict[str, Any]) -> ApiError:
    """A msgspec validation message as a 422 with target, location and offending value."""
    m = _PATH.match(text)
    msg, path = m["msg"], m["path"] or ""
    loc: list[str | int] = [name if name else int(idx) for name, idx in _STEP.findall(path)]
    missing = re.search(r"missing required field `(\w+)`", msg)
    if missing:
        loc.append(missing[1])
    target = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in loc).lstrip(".")
    value = _lookup(raw, loc)
    code = ("MissingField" if missing else "InvalidType" if ", got `" in msg
            else "ValueOutOfRange" if re.search(r"[<>]=? |length", msg) else "InvalidValue")
    shown = "" if value is None or msg.startswith("Invalid value") else f", got {value}"
    message = f"{target or 'body'}: {msg}{shown}"
    return ApiError(422, "InvalidParameter", message, target=target or None,
                    inner=InnerError(code, ["body", *loc], value),
                    details=[ErrorDetail(code, message, target or None)])


def field_error(code: str, inner: str, path: str, message: str) -> ApiError:
    """A 422 about the field at path (written as a target: a.b[0].c), in the shape of a
    validation error: target, location, one detail."""
    loc: list[str | int] = [int(i) if i else n for n, i in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path)]
    message = f"{path}: {message}"
    return ApiError(422, code, message, path, InnerError(inner, ["body", *loc]),
                    [ErrorDetail(inner, message, path)])


def _lookup(raw: Any, loc: list[str | int]) -> str | None:
    for key in loc:
        try:
            raw = raw[key]
        except (KeyError, IndexError, TypeError):
            return None
    text = _encoder.encode(raw).decode()
    return text if len(text) <= 200 else text[:200] + "..."
