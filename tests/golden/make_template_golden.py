"""Make the chat-template golden data: transformers' own `apply_chat_template` on real templates.

Not part of the test suite and never imported by it: the tests read only the file this writes.
Each template in tests/data/templates/ (copied unchanged from llama.cpp, see the README there) is
rendered by transformers on a set of conversations (a system prompt and several turns, with and
without the generation prompt, without the system message, tools with calls and results, and the
template's own switches such as `enable_thinking` or `tools_in_user_message`). A rendering that
raises is recorded as the exception's type and message. The tokenizer of each family is built
locally (there is no model hub here): a tiny word-level `tokenizers.Tokenizer` holding the
family's real special-token strings, wrapped in `PreTrainedTokenizerFast` with the real
bos/eos/unk/pad strings of its tokenizer_config.json and the template as `chat_template`.

The clock: templates that read today's date get it fixed. Llama 3.x cases pass
`date_string="26 Jul 2024"`; besides, `datetime` in transformers.utils.chat_template_utils (which
its `strftime_now` global calls) is replaced while rendering by one whose `now()` is
FROZEN_NOW, 2024-07-26 12:00:00, so Mistral-Small-3.2 (`strftime_now("%Y-%m-%d")`, no switch)
and the Llama 3.2 case without `date_string` render the same on any day. A test must freeze
Ember's `strftime_now` the same way (the file records `frozen_now`).

Run it in a throw-away virtual environment (no torch needed, no network but the package index):

    python3 -m venv /tmp/tplref && /tmp/tplref/bin/pip install transformers jinja2
    /tmp/tplref/bin/python tests/golden/make_template_golden.py

Writes tests/golden/templates.json: versions, per family the special-token strings used and the
token(s) that end an assistant turn, and per case the template file name, messages, tools (or
null), kwargs, add_generation_prompt and transformers' text (or `error`: {type, message}).
"""

import copy
import json
import sys
from datetime import datetime
from pathlib import Path

import jinja2
import tokenizers
import transformers
import transformers.utils.chat_template_utils as ctu
from tokenizers import AddedToken, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

HERE = Path(__file__).parent
TEMPLATES = HERE.parent / "data" / "templates"
OUT = HERE / "templates.json"

FROZEN_NOW = datetime(2024, 7, 26, 12, 0, 0)
DATE_STRING = "26 Jul 2024"

# name -> the family's tokenizer_config.json special tokens (None: absent, so transformers does not
# pass it to the template at all), what ends an assistant turn as the template writes it, and
# what the template supports.
FAMILIES = {
    "Qwen-Qwen2.5-7B-Instruct": {
        "family": "Qwen2.5",
        "special": {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        "end_of_turn": ["<|im_end|>"],
        "tools": True,
        "parallel_calls": True,
    },
    "Qwen-Qwen3-0.6B": {
        "family": "Qwen3",
        "special": {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        "end_of_turn": ["<|im_end|>"],
        "tools": True,
        "parallel_calls": True,
    },
    "meta-llama-Llama-3.1-8B-Instruct": {
        "family": "Llama 3.1",
        "special": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
        # <|eom_id|> ends a tool-call turn only in ipython mode (when `builtin_tools` is given).
        "end_of_turn": ["<|eot_id|>", "<|eom_id|>"],
        "tools": True,
        "parallel_calls": False,
    },
    "meta-llama-Llama-3.2-3B-Instruct": {
        "family": "Llama 3.2",
        "special": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
        "end_of_turn": ["<|eot_id|>"],
        "tools": True,
        "parallel_calls": False,
    },
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": {
        "family": "Hermes 3 (Llama 3.1 fine-tune, ChatML)",
        "special": {
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|im_end|>",
            "pad_token": "<|end_of_text|>",
        },
        "end_of_turn": ["<|im_end|>"],
        "tools": True,
        "parallel_calls": True,
    },
    "mistralai-Mistral-Nemo-Instruct-2407": {
        "family": "Mistral Nemo",
        "special": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
        "end_of_turn": ["</s>"],
        "tools": True,
        "parallel_calls": True,
    },
    "Mistral-Small-3.2-24B-Instruct-2506": {
        "family": "Mistral Small 3.2",
        "special": {
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": "<pad>",
        },
        "end_of_turn": ["</s>"],
        "tools": True,
        "parallel_calls": True,
    },
    "microsoft-Phi-3.5-mini-instruct": {
        "family": "Phi-3.5-mini",
        "special": {
            "bos_token": "<s>",
            "eos_token": "<|endoftext|>",
            "unk_token": "<unk>",
            "pad_token": "<|endoftext|>",
        },
        # <|end|> ends each turn; the eos <|endoftext|> ends the text without a generation prompt.
        "end_of_turn": ["<|end|>"],
        "tools": False,
        "parallel_calls": False,
    },
    "google-gemma-2-2b-it": {
        "family": "Gemma 2",
        "special": {
            "bos_token": "<bos>",
            "eos_token": "<eos>",
            "unk_token": "<unk>",
            "pad_token": "<pad>",
        },
        "end_of_turn": ["<end_of_turn>"],
        "tools": False,
        "parallel_calls": False,
    },
    "HuggingFaceTB-SmolLM3-3B": {
        "family": "SmolLM3",
        "special": {
            "bos_token": None,
            "eos_token": "<|im_end|>",
            "pad_token": "<|finetune_right_pad_id|>",
        },
        # This (Unsloth-edited) template lists no tools; it renders tool results as user turns.
        "end_of_turn": ["<|im_end|>"],
        "tools": False,
        "parallel_calls": False,
    },
}

# Extra special tokens each family's vocabulary has (only so the tiny tokenizer knows them).
MARKERS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|python_tag|>",
    "[INST]",
    "[/INST]",
    "[TOOL_CALLS]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
    "[CALL_ID]",
    "[ARGS]",
    "[TOOL_CONTENT]",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
]

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "the city's name"},
                "unit": {
                    "type": "string",
                    "enum": ["celsius", "fahrenheit"],
                    "description": "temperature unit",
                },
            },
            "required": ["city"],
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search_docs",
        "description": "Search the documentation for a query",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string", "description": "what to look for"},
                "limit": {"type": "integer", "description": "at most this many hits"},
            },
            "required": ["query"],
        },
    },
}
TOOLS = [WEATHER, SEARCH]

# Arguments as objects (as vLLM passes them); non-ASCII text and HTML-special characters on purpose.
CALL_1 = {
    "id": "abcDEF123",
    "type": "function",
    "function": {"name": "get_weather", "arguments": {"city": "Zürich", "unit": "celsius"}},
}
CALL_2 = {
    "id": "xyz789QRS",
    "type": "function",
    "function": {"name": "search_docs", "arguments": {"query": "a < b && c > 'd'", "limit": 3}},
}
RESULT_1 = {
    "role": "tool",
    "tool_call_id": "abcDEF123",
    "content": '{"temperature": 22, "sky": "sunny"}',
}
RESULT_2 = {"role": "tool", "tool_call_id": "xyz789QRS", "content": "No results."}

SYSTEM = {"role": "system", "content": "You are a concise assistant. Answer in one sentence."}
CHAT = [
    {"role": "user", "content": "Hello! Who are you?"},
    {"role": "assistant", "content": "I am a helpful assistant."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "2 + 2 is 4."},
    {"role": "user", "content": "Thanks, and what is the capital of France?"},
]


def calls_message(calls, content=""):
    return {"role": "assistant", "content": content, "tool_calls": calls}


def cases_for(name: str, info: dict) -> list[dict]:
    llama = name.startswith("meta-llama-")
    base = {"date_string": DATE_STRING} if llama else {}
    out = [
        ("chat", [SYSTEM] + CHAT, None, base, True),
        ("chat_no_generation_prompt", [SYSTEM] + CHAT, None, base, False),
        ("chat_without_system", CHAT, None, base, True),
        ("chat_without_system_no_generation_prompt", CHAT, None, base, False),
        ("single_user", [{"role": "user", "content": "Hi"}], None, base, True),
    ]
    if name == "meta-llama-Llama-3.2-3B-Instruct":  # today's date from strftime_now (frozen)
        out.append(("chat_date_from_clock", [SYSTEM] + CHAT, None, {}, True))
    if name == "Qwen-Qwen3-0.6B":
        out.append(
            ("chat_enable_thinking_false", [SYSTEM] + CHAT, None, {"enable_thinking": False}, True)
        )
        reasoning = [
            SYSTEM,
            CHAT[0],
            {
                **CHAT[1],
                "content": "<think>\nThe user greets me.\n</think>\n\nI am a helpful assistant.",
            },
            CHAT[2],
        ]
        out.append(("chat_think_in_history", reasoning, None, {}, True))
        # reasoning of the turn in progress (after the last user query) is rendered; transformers
        # also copies a message's `reasoning` (or `thinking`) into `reasoning_content` first
        first = {"role": "user", "content": "What's the weather in Zürich?"}
        for key in ("reasoning_content", "reasoning"):
            thought = {
                "role": "assistant",
                "content": "",
                key: "I should call get_weather.",
                "tool_calls": [CALL_1],
            }
            out.append((f"tools_{key}_field", [first, thought, RESULT_1], TOOLS, {}, True))
    if name == "HuggingFaceTB-SmolLM3-3B":
        out.append(
            ("chat_enable_thinking_false", [SYSTEM] + CHAT, None, {"enable_thinking": False}, True)
        )
        out.append(
            (
                "chat_system_no_think",
                [{"role": "system", "content": "Be brief. /no_think"}] + CHAT,
                None,
                {},
                True,
            )
        )
    if info["tools"] or name == "HuggingFaceTB-SmolLM3-3B":
        first = {"role": "user", "content": "What's the weather in Zürich?"}
        answer = {"role": "assistant", "content": "It is 22 °C and sunny in Zürich."}
        final = {"role": "user", "content": "Thanks. Anything in the docs about comparisons?"}
        call = calls_message([CALL_1])
        out += [
            # user, assistant with a call, its result, a final user turn (Mistral's templates reject
            # two user turns in a row, so they raise here).
            ("tools", [first, call, RESULT_1, final], TOOLS, base, True),
            # the same with the assistant's answer to the result before the final user turn
            ("tools_answered", [SYSTEM, first, call, RESULT_1, answer, final], TOOLS, base, True),
            (
                "tools_answered_no_generation_prompt",
                [SYSTEM, first, call, RESULT_1, answer, final],
                TOOLS,
                base,
                False,
            ),
            # the model must now answer the tool result
            ("tools_pending_result", [first, call, RESULT_1], TOOLS, base, True),
            # OpenAI clients send content null beside tool_calls: transformers drops keys whose
            # value is None
            (
                "tools_null_content",
                [SYSTEM, first, calls_message([CALL_1], None), RESULT_1, answer, final],
                TOOLS,
                base,
                True,
            ),
            # tools listed but none called yet
            ("tools_first_turn", [SYSTEM, first], TOOLS, base, True),
        ]
        if info["parallel_calls"]:
            out.append(
                (
                    "tools_parallel_calls",
                    [first, calls_message([CALL_1, CALL_2]), RESULT_1, RESULT_2, answer, final],
                    TOOLS,
                    base,
                    True,
                )
            )
        if llama:
            out.append(
                (
                    "tools_in_system_message",
                    [SYSTEM, first, call, RESULT_1, answer, final],
                    TOOLS,
                    {**base, "tools_in_user_message": False},
                    True,
                )
            )
            out.append(
                (
                    "tools_two_calls_rejected",
                    [first, calls_message([CALL_1, CALL_2]), RESULT_1, RESULT_2, answer, final],
                    TOOLS,
                    base,
                    True,
                )
            )
    return [
        {"name": n, "messages": m, "tools": t, "kwargs": k, "add_generation_prompt": g}
        for n, m, t, k, g in out
    ]


def tiny_tokenizer(special: dict) -> tokenizers.Tokenizer:
    tokens = sorted({v for v in special.values() if v} | set(MARKERS))
    vocab = {t: i for i, t in enumerate(tokens)}
    vocab["[UNK_WORD]"] = len(vocab)
    tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK_WORD]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens])
    return tok


class _FrozenDatetime(datetime):
    @classmethod
    def now(cls, tz=None):
        return FROZEN_NOW


def render(tok, case):
    try:
        text = tok.apply_chat_template(
            copy.deepcopy(case["messages"]),
            tools=copy.deepcopy(case["tools"]),
            add_generation_prompt=case["add_generation_prompt"],
            tokenize=False,
            **case["kwargs"],
        )
        return {"text": text}
    except Exception as e:  # noqa: BLE001 - the template's own failure is the golden result
        return {
            "error": {"type": f"{type(e).__module__}.{type(e).__qualname__}", "message": str(e)}
        }


def check_end_of_turn(name: str, case: dict, text: str, end_of_turn: list[str]) -> None:
    """Each assistant reply in the text is followed by one of the family's end-of-turn tokens."""
    for m in case["messages"]:
        if m["role"] == "assistant" and m.get("content"):
            at = text.index(m["content"].strip()) + len(m["content"].strip())
            assert any(text.startswith(t, at) for t in end_of_turn), (
                name,
                case["name"],
                text[at : at + 20],
            )


def main() -> None:
    ctu.datetime = (
        _FrozenDatetime  # transformers' strftime_now calls this module's `datetime.now()`
    )
    families, cases = {}, []
    for name, info in FAMILIES.items():
        file = f"{name}.jinja"
        source = (TEMPLATES / file).read_text(encoding="utf-8")
        special = {k: v for k, v in info["special"].items() if v is not None}
        tok = PreTrainedTokenizerFast(
            tokenizer_object=tiny_tokenizer(special), chat_template=source, **special
        )
        families[name] = {
            "family": info["family"],
            "template": file,
            # null: the tokenizer has none, so the template gets no such variable
            "special_tokens": info["special"],
            # what transformers passes the template besides the kwargs
            "template_variables": tok.special_tokens_map,
            "end_of_turn": info["end_of_turn"],
            "supports_tools": info["tools"],
            "parallel_tool_calls": info["parallel_calls"],
        }
        for case in cases_for(name, info):
            result = render(tok, case)
            if (
                case["name"]
                in ("chat_no_generation_prompt", "chat_without_system_no_generation_prompt")
                and "text" in result
            ):
                check_end_of_turn(name, case, result["text"], info["end_of_turn"])
            cases.append({"id": f"{name}/{case['name']}", "template": file, **case, **result})
            shown = (
                "error: " + result["error"]["message"]
                if "error" in result
                else f"{len(result['text'])} chars"
            )
            print(f"{name}/{case['name']}: {shown}", file=sys.stderr)
    golden = {
        "generated_by": "tests/golden/make_template_golden.py",
        "versions": {
            "transformers": transformers.__version__,
            "jinja2": jinja2.__version__,
            "tokenizers": tokenizers.__version__,
            "python": sys.version.split()[0],
        },
        "frozen_now": FROZEN_NOW.isoformat(),
        "note": (
            "Rendered by transformers' apply_chat_template(messages, tools=tools, "
            "add_generation_prompt=..., tokenize=False, **kwargs) with the family's special tokens "
            "as template variables; strftime_now formats frozen_now; keys whose value is null in a "
            "message are dropped by transformers before rendering."
        ),
        "families": families,
        "cases": cases,
    }
    OUT.write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({len(cases)} cases)", file=sys.stderr)


if __name__ == "__main__":
    main()
