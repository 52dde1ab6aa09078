"""`ember generate` and `ember chat` on the default model, driven through `main`."""

import io
import json
from pathlib import Path

import pytest

from server.__main__ import main

pytestmark = pytest.mark.model

GOLDEN = json.loads((Path(__file__).parent / "golden" / "smollm2.json").read_text(encoding="utf-8"))


@pytest.fixture
def home(default_model_path, monkeypatch):
    monkeypatch.setenv("EMBER_HOME", str(default_model_path.parent.parent))


def test_generate_streams_the_greedy_answer(home, smol, capsys):
    _, _, tok = smol
    chat = GOLDEN["chats"][0]
    greedy = chat["greedy"]
    expected = tok.decode(greedy[:greedy.index(2)] if 2 in greedy else greedy)
    assert main(["generate", chat["messages"][0]["content"], "--chat", "--temperature", "0"]) == 0
    out, err = capsys.readouterr()
    assert out == expected
    assert "generated at" in err and "tok/s" in err


def test_generate_on_the_f32_reference_path_gives_the_same_greedy_answer(home, smol, capsys):
    """`--weights f32` expands the Q4_1 blocks (the reference path, 4 bytes per weight): a
    greedy answer must not change with the weights' format in memory."""
    chat = GOLDEN["chats"][0]
    assert main(["generate", chat["messages"][0]["content"], "--chat", "--temperature", "0",
                 "--max-tokens", "16", "--weights", "f32"]) == 0
    reference = capsys.readouterr().out
    assert main(["generate", chat["messages"][0]["content"], "--chat", "--temperature", "0",
                 "--max-tokens", "16"]) == 0
    assert capsys.readouterr().out == reference and reference
    with pytest.raises(SystemExit):
        main(["generate", "hi", "--weights", "q3"])
    assert "invalid choice" in capsys.readouterr().err


def test_generate_is_reproducible_with_a_seed(home, capsys):
    args = ["generate", "Once upon a time", "--max-tokens", "12", "--seed", "7", "--top-p", "0.9"]
    main(args)
    first = capsys.readouterr().out
    main(args)
    assert capsys.readouterr().out == first and first


def test_chat_keeps_history_and_exits(home, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("My name is Ada.\nWhat is my name?\n/exit\n"))
    assert main(["chat", "--temperature", "0", "--max-tokens", "24"]) == 0
    out, err = capsys.readouterr()
    assert err.count("generated at") == 2
    assert "Ada" in out


def test_bad_model_path_is_a_clean_error(tmp_path, capsys):
    assert main(["generate", "hi", "--model", str(tmp_path / "nope.gguf")]) == 1
    assert "ember: error: model path" in capsys.readouterr().err
