"""Paged KV-cache blocks: allocation with reference counts, and a prefix cache keyed by content hashes.

A block holds ``block_size`` consecutive tokens of one or more sequences. Once all its tokens are computed
it gets a SHA-256 digest chained over every token before it, so two sequences that share a prefix share its
blocks. A cryptographic hash, not Python's ``hash()``: with a 64-bit non-cryptographic key a client could craft
a prompt whose blocks collide with another request's and read its KV cache (the class of vLLM CVE-2025-25183).
A freed block keeps its hash and content until it is reused (least recently freed first), which is what
lets a later request with the same prefix skip its prefill.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict

from model_runtime.serving.sequence import Sequence


ROOT_KEY = b""  # the parent key of a sequence's first block


def block_key(parent: bytes, tokens: tuple[int, ...]) -> bytes:
    """SHA-256 of the parent block's key and this block's token ids (as int64)."""
    return hashlib.sha256(parent + array("q", tokens).tobytes()).digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.block_hash: list[bytes | None] = [None] * num_blocks
        self.block_tokens: list[tuple[int, ...] | None] = [None] * num_blocks
        self.hash_to_block: dict[bytes, int] = {}
        # Free blocks in eviction order (oldest first); an OrderedDict gives O(1) removal on a cache hit.
        self.free_blocks: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by live sequences (cached-but-free blocks count as free)."""
        return 1.0 - len(self.free_blocks) / self.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)


    def match_prefix(self, seq: Sequence) -> int:
        """Attach cached blocks for the longest cached prefix of a fresh sequence; returns tokens matched.

        The last token is always left to compute, since its logits are needed to sample."""
        assert not seq.block_table and seq.num_computed_tokens == 0
        if not self.enable_prefix_caching:
            return 0
        bs = self.block_size
        prev = ROOT_KEY
        for i in range((seq.num_tokens - 1) // bs):
            tokens = tuple(seq.token_ids[i * bs:(i + 1) * bs])
            key = block_key(prev, tokens)
            block = self.hash_to_block.get(key)
            if block is None or self.block_tokens[block] != tokens:
                break
            if self.ref_counts[block] == 0:
                del self.free_blocks[block]
            self.ref_counts[block] += 1
            seq.block_table.append(block)
            seq.block_hashes.append(key)
            prev = key
        matched = len(seq.block_table) * bs
        seq.num_computed_tokens = seq.num_cached_tokens = matched
        return matched

    def ensure_capacity(self, seq: Sequence, num_tokens: int) -> bool:
        """Give ``seq`` blocks for its first ``num_tokens`` tokens; all or nothing."""
        missing = self.blocks_needed(num_tokens) - len(seq.block_table)
        if missing <= 0:
            return True
        if missing > len(self.free_blocks):
            return False
        for _ in range(missing):
            seq.block_table.append(self._take_free_block())
        return True

    def _take_free_block(self) -> int:
        block, _ = self.free_blocks.popitem(last=False)
        old = self.block_hash[block]
        if old is not None and self.hash_to_block.get(old) == block:
            del self.hash_to_block[old]
        self.block_hash[block] = self.block_tokens[block] = None
        self.ref_counts[block] = 1
        return block

    def commit(self, seq: Sequence) -> None:
        """Register the blocks that the last step filled, so later sequences can share them."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        for i in range(len(seq.block_hashes), seq.num_computed_tokens // bs):
            tokens = tuple(seq.token_ids[i * bs:(i + 1) * bs])
            key = block_key(seq.block_hashes[-1] if seq.block_hashes else ROOT_KEY, tokens)
            block = seq.block_table[i]
            if key not in self.hash_to_block:
                self.hash_to_block[key] = block
                self.block_hash[block], self.block_tokens[block] = key, tokens
            seq.block_hashes.append(key)

    def free(self, seq: Sequence) -> None:
        """Drop the sequence's references; unreferenced blocks become free but stay cached."""
        for block in reversed(seq.block_table):  # tail blocks are the least likely to be shared: evict them first
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                self.free_blocks[block] = None
        seq.block_table = []
        seq.block_hashes = []
        seq.num_computed_tokens = seq.num_cached_tokens = 0
