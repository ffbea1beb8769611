"""Context candidates from earlier calls: the bounded memory, and a generator that keeps one."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from speckv_hf import SpecKVGenerator
from speckv_hf.core.context_memory import ContextMemory
from speckv_hf.core.context_source import ContextSource
from speckv_hf.policies.base import FixedPolicy

from .conftest import AlwaysContext, prompt

sequences = st.lists(st.lists(st.integers(0, 3), min_size=0, max_size=12), min_size=1, max_size=6)


@settings(max_examples=200, deadline=None)
@given(
    added=sequences,
    max_tokens=st.integers(1, 30),
    tail=st.lists(st.integers(0, 3), min_size=0, max_size=6),
    want=st.integers(1, 6),
    longer_than=st.integers(0, 3),
)
def test_lookup_copies_a_kept_sequence_and_never_spans_two(added, max_tokens, tail, want, longer_than):
    memory = ContextMemory(max_tokens)
    for sequence in added:
        memory.add([sequence])
    # What is kept: each sequence's last `max_tokens` tokens; past `max_tokens`, the oldest go until three quarters
    # of it (or the newest sequence alone) are left.
    kept: list[list[int]] = []
    for sequence in (s[-max_tokens:] for s in added if s):
        kept.append(sequence)
        if sum(map(len, kept)) > max_tokens:
            while sum(map(len, kept)) > max(max_tokens * 3 // 4, len(sequence)):
                kept.pop(0)
    total = sum(map(len, kept))
    assert (len(memory), memory.sequences) == (total, len(kept))
    found = memory.lookup(tail, want, longer_than=longer_than)
    # Brute force over the kept sequences, each followed by a separator: the longest tail with an earlier
    # occurrence that a token follows, its most recent one, the continuation up to the separator.
    flat = [t for s in kept for t in (*s, -1)]
    expected = None
    for n in range(min(4, len(tail)), max(2, longer_than + 1) - 1, -1):
        ends = [i for i in range(n, len(flat)) if flat[i - n : i] == tail[len(tail) - n :] and flat[i] != -1]
        if ends:
            continuation = flat[ends[-1] : ends[-1] + want]
            continuation = continuation[: continuation.index(-1)] if -1 in continuation else continuation
            expected = (tuple(continuation), n) if continuation else None
            break
    assert (None if found is None else (found.tokens, found.match_length)) == expected


def test_memory_drops_the_oldest_and_clears():
    memory = ContextMemory(10)
    memory.add([[1, 2, 3, 4], [5, 6, 7]])
    assert memory.lookup([1, 2], 5).tokens == (3, 4)  # stops at its sequence's end
    assert memory.lookup([6, 7], 5) is None  # a sequence's end continues nowhere
    memory.add([[8, 9, 10, 11]])  # 11 tokens: the oldest go, down to 7 (three quarters of 10)
    assert (len(memory), memory.sequences) == (7, 2)
    assert memory.lookup([1, 2], 5) is None and memory.lookup([8, 9], 2).tokens == (10, 11)
    memory.add([list(range(20, 40))])  # longer than the memory: its end is kept
    assert (len(memory), memory.lookup([30, 31], 3).tokens) == (10, (32, 33, 34))
    # An n-gram whose latest occurrence ends a sequence still proposes its earlier one.
    memory = ContextMemory(100)
    memory.add([[1, 2, 3, 9, 8], [5, 1, 2, 3]])
    found = memory.lookup([1, 2, 3], 3)
    assert (found.tokens, found.match_length, found.occurrences) == ((9, 8), 3, 1)
    memory.clear()
    assert (len(memory), memory.lookup([30, 31], 3)) == (0, None)
    with pytest.raises(ValueError, match="positive integer"):
        ContextMemory(0)


def test_a_source_proposes_from_memory_only_where_it_matches_longer():
    memory = ContextMemory(100)
    memory.add([[7, 1, 2, 3, 9, 9]])
    source = ContextSource([1, 2, 3, 5, 6, 1, 2, 3], memory=memory)
    own = source.propose(4)
    assert (own.tokens, own.match_length) == ((5, 6, 1, 2), 3)  # its own text matches "1 2 3" too: it wins ties
    source = ContextSource([4, 2, 3, 5, 6, 7, 1, 2, 3], memory=memory)
    earlier = source.propose(4)
    assert (earlier.tokens, earlier.match_length) == ((9, 9), 4)  # "7 1 2 3" matched only in memory
    assert earlier.distance == len(source) + 3  # to the memory's end, its separator included
    assert ContextSource([8, 5], memory=memory).propose(3).tokens == ()


def test_generator_remembers_earlier_calls_and_stays_lossless(llama_pairs):
    target, draft = llama_pairs["llama-noisy"]
    ids = prompt(12, seed=3)
    with torch.no_grad():
        reference = target.generate(ids, max_new_tokens=32, do_sample=False)
    # Runs taken whatever the timings say: the test must not depend on the machine.
    remembering = SpecKVGenerator(AlwaysContext(FixedPolicy(2), take=16), context_memory=1000, warm_start=False)
    forgetful = SpecKVGenerator(AlwaysContext(FixedPolicy(2), take=16), warm_start=False)
    taken = {}
    for name, generator in (("remembering", remembering), ("forgetful", forgetful)):
        for _ in range(2):
            with torch.no_grad():
                out = target.generate(
                    ids, assistant_model=draft, candidate_generator=generator, max_new_tokens=32, do_sample=False
                )
            assert torch.equal(out, reference)
        stats = generator.last_stats
        taken[name] = (stats.target_forwards, stats.context_accepted)
    assert len(remembering.context_memory_of(target)) == 2 * reference.shape[1]  # both calls' prompts and outputs
    # The second call's prompt matches the first call's sequence: its output is proposed from there, and accepted.
    assert taken["remembering"][0] < taken["forgetful"][0] / 2, taken
    assert taken["remembering"][1] > taken["forgetful"][1], taken
    remembering.clear_context_memory()
    assert remembering.context_memory_of(target) is None


def test_context_memory_needs_a_context_policy():
    with pytest.raises(ValueError, match="context_memory"):
        SpecKVGenerator("adaptive", context_memory=100)
    with pytest.raises(ValueError, match="integer >= 0"):
        SpecKVGenerator("context+adaptive", context_memory=-1)
    assert SpecKVGenerator("adaptive").context_memory == 0


def test_each_target_has_its_own_memory(llama_pairs):
    """Token ids mean nothing across tokenizers: a call on a smaller vocabulary never gets the other target's ids."""
    from transformers import LlamaForCausalLM

    from .conftest import llama_config, noisy_copy

    big, big_draft = llama_pairs["llama-noisy"]
    torch.manual_seed(0)
    small = LlamaForCausalLM(llama_config(vocab=40)).eval()
    small_draft = noisy_copy(small, 0.02)
    generator = SpecKVGenerator("context+fixed:2", context_memory=1000, plain_fallback=False)
    with torch.no_grad():
        big_ids = torch.tensor([[3, 9, 4, 7, 90, 91, 92, 93, 94, 95, 90, 91, 92, 93]])
        big.generate(big_ids, assistant_model=big_draft, candidate_generator=generator, max_new_tokens=8)
        small_ids = torch.tensor([[5, 6, 3, 9, 4, 7]])  # its tail matches the big call's prompt
        expected = small.generate(small_ids, max_new_tokens=8, do_sample=False)
        out = small.generate(small_ids, assistant_model=small_draft, candidate_generator=generator, max_new_tokens=8)
    assert torch.equal(out, expected)
    assert len(generator.context_memory_of(big)) == big_ids.shape[1] + 8
    assert len(generator.context_memory_of(small)) == small_ids.shape[1] + 8
