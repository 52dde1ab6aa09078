"""Structured output: JSON schemas and tool-call grammars, compiled by llguidance into the
engine's `Grammar` (a token bitmask each step).

Owns: `GrammarCompiler`, `LLGrammar`, `json_grammar`, `lark_json`, `check_schema`, `ANY_JSON_OBJECT`.
Imports: llguidance, jsonschema, numpy, server.protocol (errors), engine (the Grammar
interface), tokenizer. Used by: server.mapping, server.tools, server.app.

A schema goes through three steps. `check_schema` validates it against the JSON Schema
meta-schema (a mistake answers 422 with its JSON path). `json_grammar` narrows it so that a small
model cannot run away inside valid JSON: numbers get at most 15 integer digits and 6 decimals
(no exponent), an object that lists its `properties` takes no others unless it says so, and
JSON is written compactly with `", "` and `": "` between items (the spacing of Python's
`json.dumps` and of the chat templates' `tojson`), so whitespace is not the model's to choose.
What the model writes still validates against the schema as given. Then `GrammarCompiler`
compiles the grammar for the deployment's tokenizer, in a worker thread, and keeps the last
compiled grammars by their text: a request gets a copy of a ready matcher.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from typing import Any

import llguidance
import numpy as np
from jsonschema.exceptions import SchemaError
from jsonschema.validators import Draft202012Validator, validator_for

from engine.grammar import mask_words
from server.protocol import ApiError, field_error
from tokenizer import Tokenizer

# JSON as the grammar writes it (see the module docstring).
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_ANY = "#/$defs/EmberAnyJson"
_NUMBER = {"minimum": -1e15, "maximum": 1e15}
_DECIMALS = 1e-6
_ANY_VALUE = {"anyOf": [{"type": "null"}, {"type": "boolean"}, {"type": "string"},
                        {"type": "number", **_NUMBER, "multipleOf": _DECIMALS},
                        {"type": "array", "items": {"$ref": _ANY}},
                        {"type": "object", "additionalProperties": {"$ref": _ANY}}]}
ANY_JSON_OBJECT: dict[str, Any] = {"type": "object"}  # response_format json_object
_ANNOTATIONS = {"title", "description", "default", "examples", "$comment", "deprecated",
                "readOnly", "writeOnly", "$schema", "$id"}
_SUBSCHEMA = {"items", "additionalProperties", "not", "contains", "propertyNames", "if", "then",
              "else", "additionalItems", "unevaluatedProperties", "unevaluatedItems"}
_SUBSCHEMA_MAPS = {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
_SUBSCHEMA_LISTS = {"anyOf", "oneOf", "allOf", "prefixItems"}


class LLGrammar:
    """The engine's `Grammar` over an llguidance matcher (one sequence's parser state)."""

    __slots__ = ("_matcher",)

    def __init__(self, matcher: llguidance.LLMatcher):
        self._matcher = matcher

    def fill_mask(self, mask: np.ndarray) -> None:
        assert mask.dtype == np.int32 and mask.flags.c_contiguous
        self._matcher.unsafe_compute_mask_ptr(mask.ctypes.data, mask.nbytes)

    def consume(self, token_ids: list[int]) -> bool:
        return self._matcher.consume_tokens(token_ids)

    def forced(self) -> list[int]:
        return self._matcher.compute_ff_tokens()

    def is_done(self) -> bool:
        return self._matcher.is_stopped()

    def rollback(self, n_tokens: int) -> None:
        self._matcher.rollback(n_tokens)

    def fork(self) -> LLGrammar:
        return LLGrammar(self._matcher.deep_copy())

    @property
    def error(self) -> str:
        return self._matcher.get_error()


class CompileError(ValueError):
    """llguidance refused a grammar; the message is llguidance's."""


class GrammarCompiler:
    """Compiles grammars for one deployment's tokenizer, keeping the last `capacity` of them.
    Thread-safe: requests compile in worker threads, never on the event loop or the engine
    thread."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, capacity: int = 64):
        self._tokenizer, self._vocab_size, self._capacity = tokenizer, vocab_size, capacity
        self._lock = threading.Lock()
        self._ll: llguidance.LLTokenizer | None = None
        self._ready: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()

    def warm(self) -> None:
        """Build llguidance's view of the vocabulary: a quarter of a second and 47 MB for 49k
        tokens, so it is built by the first request that needs a grammar, not at load."""
        with self._lock:
            if self._ll is None:
                self._ll = llguidance.LLTokenizer(self._tokenizer.hf.to_str(), n_vocab=self._vocab_size,
                                                  eos_token=sorted(self._tokenizer.eos_ids))

    def compile(self, grammar: str) -> LLGrammar:
        """A fresh matcher for an llguidance grammar (from `json_grammar` or a Lark text)."""
        self.warm()
        with self._lock:  # the kept matchers are only ever copied, one thread at a time
            ready = self._ready.get(grammar)
            if ready is not None:
                self._ready.move_to_end(grammar)
                return LLGrammar(ready.deep_copy())
        ready = llguidance.LLMatcher(self._ll, grammar, log_level=0)
        if ready.is_error():
            raise CompileError(ready.get_error())
        # The first mask builds the lexer states that later copies share.
        LLGrammar(ready).fill_mask(np.zeros(mask_words(self._vocab_size), np.int32))
        with self._lock:
            self._ready[grammar] = ready
            while len(self._ready) > self._capacity:
                self._ready.popitem(last=False)
            return LLGrammar(ready.deep_copy())

    def special_token(self, text: str) -> int | None:
        """The id of a special token spelled `text`, for grammars that must emit it as one."""
        tid = self._tokenizer.hf.token_to_id(text)
        return tid if tid is not None and tid in self._tokenizer.special_ids else None


# ---------------------------------------------------------------- JSON schemas


def check_schema(schema: Any, target: str) -> None:
    """422 InvalidParameter naming the JSON path when schema is not a valid JSON Schema."""
    if not isinstance(schema, dict):
        raise field_error("InvalidParameter", "InvalidValue", target, "a JSON schema must be an object")
    try:
        validator_for(schema, default=Draft202012Validator).check_schema(schema)
    except SchemaError as e:
        path = target + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.path)
        raise field_error("InvalidParameter", "InvalidSchema", path,
                     f"not a valid JSON schema: {e.message}") from None


def narrow(schema: Any) -> Any:
    """The schema as the grammar enforces it (module docstring): bounded numbers, no unlisted
    properties, any-JSON values where the schema allows anything."""
    if schema is True or (isinstance(schema, dict) and not set(schema) - _ANNOTATIONS):
        return {**(schema if isinstance(schema, dict) else {}), "$ref": _ANY}
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in _SUBSCHEMA:
            out[key] = narrow(value)
        elif key in _SUBSCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: narrow(sub) for name, sub in value.items()}
        elif key in _SUBSCHEMA_LISTS and isinstance(value, list):
            out[key] = [narrow(sub) for sub in value]
        else:
            out[key] = value
    types = out.get("type", [])
    types = {types} if isinstance(types, str) else set(types)
    if types & {"number", "integer"}:
        if not {"minimum", "exclusiveMinimum"} & set(out):
            out["minimum"] = _NUMBER["minimum"]
        if not {"maximum", "exclusiveMaximum"} & set(out):
            out["maximum"] = _NUMBER["maximum"]
        if "number" in types and "multipleOf" not in out:
            out["multipleOf"] = _DECIMALS
    if "object" in types and not {"additionalProperties", "patternProperties"} & set(out):
        out["additionalProperties"] = False if "properties" in out else {"$ref": _ANY}
    if "array" in types and not {"items", "prefixItems"} & set(out):
        out["items"] = {"$ref": _ANY}
    return out


def lark_json(schema: dict[str, Any], strict: bool) -> str:
    """The schema narrowed and styled, as the JSON text of Lark's `%json { ... }` or of a
    top-level llguidance JSON grammar."""
    narrowed = narrow(schema)
    defs = {**narrowed.get("$defs", {}), _ANY.rsplit("/", 1)[1]: _ANY_VALUE}
    options = {**JSON_STYLE, "lenient": not strict}
    return json.dumps({**narrowed, "$defs": defs, "x-guidance": options})


def json_grammar(schema: dict[str, Any], strict: bool) -> str:
    """The llguidance grammar of one JSON schema (already checked with `check_schema`)."""
    return llguidance.LLMatcher.grammar_from_json_schema(lark_json(schema, strict))


def compile_schema(compiler: GrammarCompiler, schema: dict[str, Any], strict: bool,
                   target: str) -> LLGrammar:
    """Check, narrow and compile a JSON schema; errors are 422s naming the path."""
    check_schema(schema, target)
    try:
        return compiler.compile(json_grammar(schema, strict))
    except CompileError as e:
        raise schema_error(str(e), schema, target, strict) from None


_UNIMPLEMENTED = re.compile(r'Unimplemented keys: \[(?P<keys>[^\]]*)\]')


def schema_error(message: str, schema: Any, target: str, strict: bool) -> ApiError:
    """An llguidance error on a schema as a 422: ParameterNotSupported naming the keyword it
    cannot enforce (under strict), else InvalidParameter (unsatisfiable, a bad $ref or pattern)."""
    keyword = None
    if m := _UNIMPLEMENTED.search(message):
        keyword = json.loads(f"[{m['keys']}]")[0]
    elif "oneOf" in message:
        keyword = "oneOf"
    elif "format" in message.lower():
        keyword = "format"
    elif "look-around" in message or "not supported" in message:
        keyword = "pattern"
    lines = message.strip().splitlines() or [message]
    first_line = next((x for x in lines if x.startswith("error:")), lines[0]).removeprefix("error: ")
    if keyword is None:
        return field_error("InvalidParameter", "InvalidSchema", target,
                           f"the schema cannot be served: {first_line}")
    hint = "; send strict: false to have it ignored" if strict and keyword != "pattern" else ""
    return field_error("ParameterNotSupported", "ParameterNotSupported",
                       target + _path_of(schema, keyword),
                       f"the JSON schema keyword {keyword!r} cannot be enforced ({first_line}){hint}")


def _path_of(schema: Any, keyword: str) -> str:
    """JSON path (relative) of the first place keyword appears in schema, "" if nowhere."""
    if isinstance(schema, dict):
        if keyword in schema:
            return f".{keyword}"
        items = schema.items()
    elif isinstance(schema, list):
        items = enumerate(schema)
    else:
        return ""
    for key, value in items:
        found = _path_of(value, keyword)
        if found:
            return (f"[{key}]" if isinstance(key, int) else f".{key}") + found
    return ""

