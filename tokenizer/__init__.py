"""Text <-> token ids: the model's tokenizer, its chat template, streaming detokenization and
stop strings. Imports nothing of ours outside tokenizer/.
"""

from tokenizer.chat import ChatTemplate, TemplateError
from tokenizer.stream import StopMatcher, TextStream
from tokenizer.tokenizer import Tokenizer, TokenizerError

__all__ = ["ChatTemplate", "StopMatcher", "TemplateError", "TextStream", "Tokenizer", "TokenizerError"]
