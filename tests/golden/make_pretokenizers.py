"""Write tokenizer/pretokenizers.py: the BPE pre-tokenizers of llama.cpp, read from its source.

llama.cpp names a GGUF's pre-tokenizer in `tokenizer.ggml.pre` and maps each name, in
src/llama-vocab.cpp, to a list of split regexes and a few flags (ignore_merges, add_bos, ...).
This script reads that file (llama-cpp-python's sdist vendors it) and writes the table as Python,
so Ember's tokenizers split text exactly where llama.cpp's do.

    pip download llama-cpp-python==0.3.36 --no-binary :all: --no-deps -d /tmp/lcp
    tar xzf /tmp/lcp/llama_cpp_python-0.3.36.tar.gz -C /tmp/lcp
    python tests/golden/make_pretokenizers.py \
        /tmp/lcp/llama_cpp_python-0.3.36/vendor/llama.cpp/src/llama-vocab.cpp
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[2] / "tokenizer" / "pretokenizers.py"

# Pre-tokenizers llama.cpp runs through hand-written code rather than its regexes, or whose
# regex splits at empty matches; a `tokenizers` Split cannot reproduce them.
CUSTOM = {"KIMI_K2", "AFMOE", "SUPERBPE", "WHITESPACE"}
FLAGS = ("ignore_merges", "add_bos")


def c_string(body: str) -> str:
    escapes = {"\\": "\\", '"': '"', "r": "\r", "n": "\n", "t": "\t", "'": "'"}
    return re.sub(r"\\(.)", lambda m: escapes[m.group(1)], body)


def py_string(s: str) -> str:
    if '"' not in s and not s.endswith("\\") and all(c >= " " for c in s):
        return f'r"{s}"'
    return repr(s)


def regex_table(src: str) -> tuple[dict[str, list[str]], set[str]]:
    start = src.index("struct llm_tokenizer_bpe : llm_tokenizer {")
    body = src[start:src.index("std::vector<std::string> regex_exprs;", start)]
    table, raw_utf8, labels, exprs, done = {}, set(), [], None, []
    for line in (s.strip() for s in body.splitlines()):
        if m := re.match(r"case LLAMA_VOCAB_PRE_TYPE_(\w+):", line):
            labels.append(m.group(1))
        elif line.startswith("default:"):
            labels = ["DEFAULT"]
        elif line.startswith("regex_exprs = {"):
            exprs = []
        elif line.startswith("};") and exprs is not None:
            table.update({t: exprs for t in labels})
            done, exprs = labels, None
        elif line.startswith("byte_encode = false"):
            raw_utf8.update(done)
        elif line.startswith("break;"):
            labels = []
        elif exprs is not None and line.startswith('"'):
            exprs.append(c_string(re.match(r'"((?:[^"\\]|\\.)*)"', line).group(1)))
    return table, raw_utf8


def name_table(src: str) -> dict[str, tuple[str, set[str]]]:
    start = src.index('} else if (tokenizer_pre == "default") {')
    body = src[start:src.index("} else if (type == LLAMA_VOCAB_TYPE_SPM)", start)]
    names = {}
    for block in re.split(r"\}\s*else if \(", body):
        kind = re.search(r"pre_type = LLAMA_VOCAB_PRE_TYPE_(\w+);", block)
        flags = {f for f, v in re.findall(r"\n\s*(\w+) = (true|false);", block)
                 if f in FLAGS and v == "true"}
        for name in re.findall(r'tokenizer_pre == "([^"]+)"', block):
            names[name] = (kind.group(1), flags)
    return names


def main(vocab_cpp: str) -> None:
    src = Path(vocab_cpp).read_text(encoding="utf-8")
    regexes, raw_utf8 = regex_table(src)
    names = {n: v for n, v in name_table(src).items() if v[0] not in CUSTOM}
    used = sorted({kind for kind, _ in names.values()} | {"DEFAULT"})
    out = [
        '"""The BPE pre-tokenizers llama.cpp knows, by the name a GGUF gives in `tokenizer.ggml.pre`.',
        "",
        "Generated from llama.cpp's src/llama-vocab.cpp (vendored by llama-cpp-python 0.3.36) by",
        "tests/golden/make_pretokenizers.py; regenerate rather than edit. Each kind is the list of",
        "regexes llama.cpp splits text with, one after another (a piece is split by every later",
        "regex, matches and the text between them kept); RAW_UTF8 kinds merge UTF-8 text in which",
        "spaces are written U+2581 instead of GPT-2's byte alphabet. Left out, because llama.cpp",
        f"splits them with hand-written code: {', '.join(sorted(CUSTOM))}.",
        '"""',
        "",
        "REGEXES: dict[str, tuple[str, ...]] = {",
    ]
    for kind in used:
        out.append(f'    "{kind}": (')
        out += [f"        {py_string(r)}," for r in regexes[kind]]
        out.append("    ),")
    out += ["}", "", f"RAW_UTF8 = frozenset({{{', '.join(repr(k) for k in sorted(raw_utf8 & set(used)))}}})",
            "", "# name -> (kind, flags); flags: ignore_merges (a word that is a token is that token),",
            "# add_bos (a BOS token starts every prompt unless the GGUF says otherwise).",
            "NAMES: dict[str, tuple[str, frozenset[str]]] = {"]
    for name, (kind, flags) in names.items():
        flag_set = f"frozenset({{{', '.join(repr(f) for f in sorted(flags))}}})" if flags else "frozenset()"
        out.append(f'    "{name}": ("{kind}", {flag_set}),')
    out.append("}")
    OUT.write_text("\n".join(out) + "\n", encoding="utf-8")
    print(f"{OUT}: {len(used)} kinds, {len(names)} names")


if __name__ == "__main__":
    main(sys.argv[1])
