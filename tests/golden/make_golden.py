"""Make the golden data of the default model from independent implementations.

Not part of the test suite and never imported by it: the tests read only the files this writes.
Tokenization comes from llama.cpp (llama-cpp-python, vocab only); chat prompts are rendered by
transformers' own `apply_chat_template` and tokenized by llama.cpp; logits and greedy
continuations come from transformers + PyTorch in float32, loading the same GGUF.

Run it in a throw-away virtual environment (it needs torch, transformers, gguf, llama-cpp-python):

    python -m venv /tmp/ref && /tmp/ref/bin/pip install torch transformers accelerate gguf llama-cpp-python
    /tmp/ref/bin/python tests/golden/make_golden.py ~/.cache/ember/models/SmolLM2-135M-Instruct.Q4_1.gguf

Writes tests/golden/smollm2.json (ids, texts, versions) and tests/golden/smollm2_logits.npz.
"""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent

TOKENIZER_STRINGS = [
    "Hello world", "Hello, world!", "The quick brown fox jumps over the lazy dog.",
    "I'm sure it's fine, they'll see; we've done it and you'd agree.", "ALL CAPS SENTENCE HERE",
    "mixedCase identifiersLikeThis and snake_case_names", "e-mail: someone@example.com",
    "https://example.com/path?query=1&x=y#frag", "a", " ", "  ", "\n", "\n\n\n", "\t\tindented",
    "trailing spaces   ", "   leading spaces", "multiple     inner     spaces",
    "line one\nline two\r\nline three", "0", "7", "42", "1234567890", "3.14159265358979",
    "1,000,000 and 2024-11-23", "version 10.2.33 build 9999", "x = 12 + 345 * 6789",
    "def add(a, b):\n    return a + b\n", "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "import numpy as np\nx = np.zeros((3, 4), dtype=np.float32)",
    "SELECT name, COUNT(*) FROM users WHERE age > 30 GROUP BY name;",
    '{"key": "value", "list": [1, 2, 3], "nested": {"a": null}}', "<div class=\"x\">hi</div>",
    "日本語のテキストです。", "中文分词测试，你好世界！", "한국어 문장입니다", "Привет, мир! Как дела?",
    "Ελληνικά γράμματα", "مرحبا بالعالم", "हिन्दी पाठ", "Café, naïve, résumé, jalapeño, Zürich",
    "ñandú über straße façade", "🙂", "Emoji: 🎉🚀👍🏽 and 👨‍👩‍👧‍👦 family",
    "flags 🇫🇷🇯🇵 and symbols ★☆♥", "math: ∑ ∫ √ ∞ ≠ ≤ ≥ π", "<|im_start|>user\nHi!<|im_end|>\n",
    "<|im_start|>assistant\n", "<|endoftext|>", "text<|im_end|>more text", "<repo_name>ember<file_sep>",
    "Don't split 'quotes' or \"double quotes\"", "!!!???...---", "$100.50 €20 £5 ¥1000",
    "Mr. Smith's 3rd-place finish (2:45.3) was great!", "tab\tseparated\tvalues",
    "ends with newline\n", "WoRdS wItH mIxEd CaSe", "supercalifragilisticexpialidocious",
]

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a concise assistant."},
     {"role": "user", "content": "Give me three tips for writing clean Python code."}],
    [{"role": "user", "content": "Write a haiku about the ocean."}],
    [{"role": "user", "content": "What is 12 times 7?"},
     {"role": "assistant", "content": "12 times 7 is 84."},
     {"role": "user", "content": "And divided by 4?"}],
    [{"role": "user", "content": "Explain in one paragraph what a transformer neural network is."}],
]

N_GREEDY = 32


def main(gguf_path: str) -> None:
    import llama_cpp
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(gguf_path)
    llama = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)

    def lc_tokenize(text: str) -> list[int]:
        return llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    hf_tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                 torch_dtype=torch.float32)
    model.eval()
    prompts, greedy, logits = [], [], {}
    for i, messages in enumerate(CHATS):
        text = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = lc_tokenize(text)
        with torch.no_grad():
            x = torch.tensor([ids])
            logits[f"chat{i}"] = model(x).logits[0, -1].float().numpy()
            out = model.generate(x, do_sample=False, max_new_tokens=N_GREEDY, min_new_tokens=N_GREEDY,
                                 eos_token_id=None, pad_token_id=0)
        prompts.append({"messages": messages, "text": text, "ids": ids})
        greedy.append(out[0, len(ids):].tolist())

    data = {
        "version": 1,
        "model_file": path.name,
        "model_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "made_with": {"llama_cpp_python": llama_cpp.__version__, "torch": torch.__version__,
                      "transformers": transformers.__version__},
        "tokenizer": [{"text": s, "ids": lc_tokenize(s)} for s in TOKENIZER_STRINGS],
        "chats": [dict(p, greedy=g) for p, g in zip(prompts, greedy)],
    }
    (HERE / "smollm2.json").write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    np.savez_compressed(HERE / "smollm2_logits.npz", **logits)
    print(f"wrote {len(TOKENIZER_STRINGS)} tokenizer cases and {len(CHATS)} chats")


if __name__ == "__main__":
    main(sys.argv[1])
