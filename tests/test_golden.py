"""The default model against independent implementations (golden data in tests/golden/, made by
tests/golden/make_golden.py): tokenization against llama.cpp, the chat template against
transformers' rendering, last-position logits and 32-token greedy continuations against
transformers in float32."""

import json
from pathlib import Path

import numpy as np
import pytest

from engine import Engine, EngineConfig, SamplingParams
from engine.model import Transformer, forward
from tests.conftest import SlotCache
from tokenizer import ChatTemplate

GOLDEN = Path(__file__).parent / "golden"
DATA = json.loads((GOLDEN / "smollm2.json").read_text(encoding="utf-8"))
LOGITS = np.load(GOLDEN / "smollm2_logits.npz")

pytestmark = pytest.mark.model


def test_golden_file_is_for_the_default_model(default_model_path):
    assert DATA["model_file"] == default_model_path.name
    assert len(DATA["tokenizer"]) >= 50 and len(DATA["chats"]) >= 5


@pytest.mark.parametrize("case", DATA["tokenizer"], ids=lambda c: repr(c["text"])[:30])
def test_tokenization_matches_llama_cpp(smol, case):
    _, _, tok = smol
    assert tok.encode(case["text"]) == case["ids"]


@pytest.mark.parametrize("i", range(len(DATA["chats"])))
def test_chat_template_and_prompt_ids_match(smol, i):
    _, _, tok = smol
    chat = DATA["chats"][i]
    text = ChatTemplate(tok.chat_template, tok.bos_token, tok.eos_token).render(chat["messages"])
    assert text == chat["text"]
    assert tok.encode(text) == chat["ids"]


@pytest.mark.parametrize("i", range(len(DATA["chats"])))
def test_last_position_logits_match_transformers(smol, i):
    cfg, weights, _ = smol
    ids = DATA["chats"][i]["ids"]
    model = Transformer(cfg, weights, 256)
    logits = forward(model, *_slot(cfg, 256, ids))[0]
    ref = LOGITS[f"chat{i}"]
    err = np.abs(logits - ref).max()
    assert err <= 1e-3 * np.abs(ref).max(), f"max |delta| {err} vs max |logit| {np.abs(ref).max()}"
    assert logits.argmax() == ref.argmax()


def test_greedy_continuations_match_transformers(smol):
    cfg, weights, _ = smol
    engine = Engine(cfg, weights, EngineConfig(max_seqs=1, max_seq_len=256))
    for i, chat in enumerate(DATA["chats"]):
        got = list(engine.generate(chat["ids"], SamplingParams(temperature=0, max_tokens=32), f"c{i}"))
        assert got == chat["greedy"], f"chat {i}"


def _slot(cfg, max_len, ids):
    slots = SlotCache(cfg, 1, max_len)
    return slots.cache, slots.batch([(ids, 0, 0)])
