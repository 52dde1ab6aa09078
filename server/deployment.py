"""One served model and what the handlers need to know of it.

Owns: `Deployment`. Imports: server.{engine_client,grammar,tools}, tokenizer.
Used by: server.{app,mapping,routes}, tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from server.engine_client import EngineClient
from server.grammar import GrammarCompiler
from server.tools import ToolSyntax, detect_syntax
from tokenizer import ChatTemplate, Tokenizer


@dataclass
class Deployment:
    """A model's engine thread, tokenizer, chat template and identity; its grammar compiler
    and how its template writes tool calls are derived from them."""

    name: str
    client: EngineClient
    tokenizer: Tokenizer
    template: ChatTemplate
    fingerprint: str  # "fp_" + digest of weights, weight format and engine version
    context: int
    provider: str = "ember"
    grammars: GrammarCompiler = field(init=False)
    tool_syntax: ToolSyntax = field(init=False)
    tools_native: bool = field(init=False)  # the template renders tools in its family's syntax

    def __post_init__(self) -> None:
        self.grammars = GrammarCompiler(self.tokenizer, self.client.engine.model_config.vocab_size)
        self.tool_syntax, self.tools_native = detect_syntax(self.template)
