"""Context candidates from earlier calls: a bounded memory of the prompts and outputs one generator has seen.

Requests repeat each other: a template filled again, a document asked about twice, a tool's output format, the
same code edited over several turns. [`ContextMemory`][] keeps the token sequences of a generator's earlier calls
(each row's prompt and output) up to `max_tokens`, dropping the oldest first, and indexes them as a
[`ContextSource`][speckv_hf.core.context_source.ContextSource] does. A row's context source consults it when the
memory matches a longer tail than the row's own sequence does (SuffixDecoding keeps a suffix tree over earlier
outputs for the same reason).

Sequences are stored one after another with a separator no token equals, so no match spans two of them, and a
continuation stops at its sequence's end. Once the memory is full, adding a call drops the oldest sequences until
three quarters of `max_tokens` are left and rebuilds the index over them, so the rebuild's cost is spread over the
quarter of the memory added before the next one. The generator (`SpecKVGenerator(context_memory=...)`) adds each call's
rows when the call ends, under its lock; calls only read the memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from .context_source import ContextProposal, ContextSource

__all__ = ["ContextMemory"]

_SEPARATOR = -1  # no token id: n-grams spanning two sequences never match a real tail


class ContextMemory:
    """The token sequences of earlier calls, indexed for context candidates.

    Args:
        max_tokens: the most tokens kept (the oldest sequences are dropped first, down to three quarters of it; a
            longer sequence keeps its end).
        max_ngram: the longest tail matched.
        min_ngram: the shortest tail matched (a single token's continuation in a large memory is mostly noise).

    Raises:
        ValueError: for `max_tokens < 1` or bad n-gram bounds.
    """

    def __init__(self, max_tokens: int, *, max_ngram: int = 4, min_ngram: int = 2) -> None:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise ValueError(
                f"max_tokens must be a positive integer (tokens kept), got {max_tokens!r}; to keep no memory, leave "
                "SpecKVGenerator(context_memory=0), its default."
            )
        self.max_tokens = max_tokens
        self._source = ContextSource(max_ngram=max_ngram, min_ngram=min_ngram)
        self._sequences: deque[list[int]] = deque()
        self._kept = 0  # tokens of `_sequences`

    def __len__(self) -> int:
        """Tokens kept."""
        return self._kept

    @property
    def sequences(self) -> int:
        """Sequences kept."""
        return len(self._sequences)

    def add(self, sequences: Sequence[Sequence[int]]) -> None:
        """Keeps these sequences (each a row's prompt and output); beyond `max_tokens`, drops the oldest down to
        three quarters of it.

        Args:
            sequences: token ids, one list per sequence; empty ones are skipped.
        """
        added = [[int(t) for t in s][-self.max_tokens :] for s in sequences if len(s)]
        if not added:
            return
        for sequence in added:
            self._sequences.append(sequence)
            self._kept += len(sequence)
        if self._kept <= self.max_tokens:
            for sequence in added:
                self._append(self._source, sequence)
            return
        # Dropping from the front means rebuilding the index: down to three quarters, so that the next rebuild
        # waits for a quarter of the memory to be added.
        keep = max(self.max_tokens * 3 // 4, len(self._sequences[-1]))
        while self._kept > keep:
            self._kept -= len(self._sequences.popleft())
        self._source = ContextSource(max_ngram=self._source.max_ngram, min_ngram=self._source.min_ngram)
        for sequence in self._sequences:
            self._append(self._source, sequence)

    @staticmethod
    def _append(source: ContextSource, sequence: list[int]) -> None:
        source.extend(sequence)
        source.end_sequence(_SEPARATOR)

    def clear(self) -> None:
        """Forgets every sequence."""
        self._source = ContextSource(max_ngram=self._source.max_ngram, min_ngram=self._source.min_ngram)
        self._sequences.clear()
        self._kept = 0

    def lookup(self, tail: Sequence[int], max_tokens: int, longer_than: int = 0) -> ContextProposal | None:
        """The continuation of the longest earlier occurrence of `tail`'s end in the memory.

        Args:
            tail: the sequence's last tokens (at least `max_ngram` of them when it has that many).
            max_tokens: the most tokens to propose.
            longer_than: match only tails longer than this (what the sequence's own context already matched).

        Returns:
            The proposal (its `distance` counts from the memory's end), or None when no tail longer than
            `longer_than` occurred, or its continuation is empty (the end of a sequence).
        """
        source = self._source
        found = source.find(tail, shortest=longer_than + 1) if max_tokens >= 1 else None
        if found is None:
            return None
        start, n, occurrences, agreeing = found
        # Never empty: no n-gram is indexed as followed by a separator.
        continuation = source.tokens[start : start + max_tokens]
        if _SEPARATOR in continuation:
            continuation = continuation[: continuation.index(_SEPARATOR)]
        return ContextProposal(tuple(continuation), n, occurrences, agreeing, len(source) - start)
