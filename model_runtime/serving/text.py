"""Token ids -> text, one token at a time, with stop strings.

Decoding token by token breaks multi-byte characters and tokenizers that merge spaces, so each step decodes
a short window of recent ids and keeps only text that is final (vLLM's incremental detokenization). Stop
strings may span several tokens: the text is searched as it grows, cut before the first stop string, and
while streaming the last ``len(longest stop) - 1`` characters are held back until they cannot start one.
"""

from __future__ import annotations

from tokenizers import Tokenizer

_PROMPT_CONTEXT = 5  # prompt tokens kept as decoding context (leading spaces depend on them)


class TextAssembler:
    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int], stop: list[str]) -> None:
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids[-_PROMPT_CONTEXT:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.stop = [s for s in stop if s]
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.text = ""
        self.emitted = 0

    def append(self, token_id: int) -> bool:
        """Add one generated token; returns True when the text now contains a stop string (and was cut)."""
        self.ids.append(token_id)
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix_offset:self.read_offset], skip_special_tokens=True)
        after = decode(self.ids[self.prefix_offset:], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return False  # an incomplete character: wait for the next token
        search_from = max(0, len(self.text) - self.hold)
        self.text += after[len(before):]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        hits = [pos for pos in (self.text.find(s, search_from) for s in self.stop) if pos >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            return True
        return False

    def flush(self) -> None:
        """At the end: keep a trailing incomplete character as the replacement character, as a full decode would."""
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix_offset:self.read_offset], skip_special_tokens=True)
        after = decode(self.ids[self.prefix_offset:], skip_special_tokens=True)
        if len(after) > len(before):
            self.text += after[len(before):]
            self.prefix_offset = self.read_offset = len(self.ids)

    def take(self, final: bool) -> str:
        """Text not yet handed out; unless final, minus a tail that could still grow into a stop string."""
        end = len(self.text) if final or not self.stop else max(self.emitted, len(self.text) - self.hold)
        delta = self.text[self.emitted:end]
        self.emitted = end
        return delta
