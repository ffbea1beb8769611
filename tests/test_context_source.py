"""Context candidates: the source's proposals, the policy that prices them, and speculative sampling of a
deterministic proposal."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from speckv_hf.core.context_source import ContextProposal, ContextSource
from speckv_hf.core.cost import CostModel
from speckv_hf.core.signals import TokenSignals
from speckv_hf.decoding.verification import accept_sampled
from speckv_hf.policies.base import DraftState, FixedPolicy, PolicyContext, StepOutcome
from speckv_hf.policies.context import ContextAcceptance, ContextPolicy
from speckv_hf.policies.marginal import AdaptivePolicy
from speckv_hf.policies.registry import get_policy


def _earlier_occurrences(seq: list[int], n: int) -> list[int]:
    """Start indices of the continuation of every earlier occurrence of the last `n` tokens."""
    tail = seq[len(seq) - n :]
    return [i + n for i in range(len(seq) - n) if seq[i : i + n] == tail]


@settings(max_examples=200, deadline=None)
@given(
    seq=st.lists(st.integers(0, 4), min_size=0, max_size=40),
    max_ngram=st.integers(1, 5),
    max_tokens=st.integers(0, 8),
)
def test_proposal_is_the_continuation_of_the_longest_most_recent_match(seq, max_ngram, max_tokens):
    source = ContextSource(seq, max_ngram=max_ngram)
    proposal = source.propose(max_tokens)
    longest = max(
        (n for n in range(1, min(max_ngram, len(seq)) + 1) if _earlier_occurrences(seq, n)),
        default=0,
    )
    if max_tokens == 0 or longest == 0:
        assert proposal.tokens == () and proposal.match_length == 0
        return
    starts = _earlier_occurrences(seq, longest)
    assert proposal.match_length == longest
    assert proposal.occurrences == len(starts)
    followers = [seq[start] for start in starts]
    streak = len(followers) - next(
        (i + 1 for i in range(len(followers) - 1, -1, -1) if followers[i] != followers[-1]), 0
    )
    assert proposal.agreeing == streak
    assert proposal.tokens == tuple(seq[starts[-1] : starts[-1] + max_tokens])
    assert proposal.distance == len(seq) - starts[-1]
    assert 1 <= len(proposal) <= max_tokens


@settings(max_examples=200, deadline=None)
@given(
    seq=st.lists(st.integers(0, 4), max_size=40),
    after=st.lists(st.integers(0, 4), max_size=6),
    max_ngram=st.integers(1, 5),
    max_tokens=st.integers(1, 8),
)
def test_proposal_after_candidates_continues_their_tail_from_the_sequence(seq, after, max_ngram, max_tokens):
    """With a step's candidates after the sequence, the tail matched is the candidates' (and the sequence's before
    them), and the continuation comes from the most recent earlier occurrence in the sequence itself."""
    proposal = ContextSource(seq, max_ngram=max_ngram).propose(max_tokens, after)
    whole = seq + after

    def starts(n: int) -> list[int]:
        tail = whole[len(whole) - n :]
        return [i + n for i in range(len(seq) - n) if seq[i : i + n] == tail]

    longest = max((n for n in range(1, min(max_ngram, len(whole)) + 1) if starts(n)), default=0)
    if longest == 0:
        assert proposal.tokens == () and proposal.match_length == 0
        return
    start = starts(longest)[-1]
    assert proposal.match_length == longest
    assert proposal.tokens == tuple(seq[start : start + max_tokens])
    assert proposal.distance == len(whole) - start


@settings(max_examples=50, deadline=None)
@given(seq=st.lists(st.integers(0, 6), max_size=30), cut=st.integers(0, 30))
def test_extending_in_pieces_equals_building_at_once(seq, cut):
    pieces = ContextSource(seq[:cut])
    pieces.extend(seq[cut:])
    whole = ContextSource(seq)
    assert pieces.tokens == whole.tokens == seq
    assert pieces.propose(5) == whole.propose(5)


def test_ngram_bounds_are_checked():
    with pytest.raises(ValueError, match="min_ngram"):
        ContextSource(min_ngram=0)
    with pytest.raises(ValueError, match="max_ngram"):
        ContextSource(max_ngram=2, min_ngram=3)


def test_acceptance_learns_per_effective_match_length():
    acceptance = ContextAcceptance()
    before = acceptance.probability(4, 0)
    for _ in range(40):
        acceptance.update(match_length=4, taken=3, num_accepted=0)  # the first token rejected, the rest not judged
    assert acceptance.probability(4, 0) < before / 3
    assert acceptance.probability(5, 0) == acceptance.probability(4, 1)  # one bucket: 4 + 1 matched tokens

    fresh = ContextAcceptance()
    assert acceptance.rate(0, 5, 0) == fresh.rate(0, 5, 0)  # never judged: the bucket keeps its prior
    assert acceptance.rate(1, 4, 0) == fresh.rate(1, 4, 0)  # nor the same length after another history
    assert acceptance.probability(5, 0) < fresh.probability(5, 0)  # but the recent misses lower every estimate
    for _ in range(10):
        acceptance.update(match_length=6, taken=2, num_accepted=2)  # a passage that repeats: back up quickly
    assert acceptance.probability(5, 0) > fresh.probability(5, 0)


def _bound(policy, *, verify=(0.010, 0.0001), draft=0.003, steps=40):
    cost = CostModel()
    for k in (0, 4, 8):
        cost.observe_verify(k, verify[0] + verify[1] * k)
    cost.observe_first_draft(draft)
    cost.observe_draft(draft)
    for _ in range(steps):
        cost.observe_step(2.0, 0.02)
    policy.bind(PolicyContext(cost=cost, compression=None))
    return policy


def _state(max_tokens=16):
    return DraftState(step=5, tokens=[], max_tokens=max_tokens, throughput=100.0, sequence_length=20)


def test_context_policy_takes_a_confident_run_and_prices_the_drafts_after_it():
    policy = _bound(ContextPolicy(FixedPolicy(2)))
    proposal = ContextProposal(tokens=(1, 2, 3, 4, 5), match_length=4, occurrences=2, agreeing=2, distance=9)
    plan = policy.plan_context(proposal, _state())
    assert plan.count == 5  # verification slots are cheap: a run this likely is worth all of them
    assert 0 < plan.acceptance < policy.acceptance.probability(4, 0)
    assert policy.plan_context(proposal, _state(max_tokens=3)).count == 3  # the step's cap
    # After many rejections at this match length the run is not worth its slots any more.
    for _ in range(200):
        policy.observe(StepOutcome(step=1, tokens=[], num_accepted=0, context_tokens=3, context=proposal))
    assert policy.plan_context(proposal, _state()).count == 0


def test_a_weak_run_is_skipped_for_a_draft_that_is_usually_right():
    policy = _bound(ContextPolicy(AdaptivePolicy()))
    token = TokenSignals(confidence=0.9, max_prob=0.9, entropy=0.3, margin=0.8, position=0)
    for _ in range(50):  # steps without context whose first drafted token was accepted
        policy.observe(StepOutcome(step=1, tokens=[token, token], num_accepted=2))
    weak = ContextProposal(tokens=(7, 8), match_length=1, occurrences=1, agreeing=1, distance=3)
    assert policy.plan_context(weak, _state()).count == 0
    alone = _bound(ContextPolicy(None))
    assert alone.plan_context(weak, _state()).count >= 1  # without a draft, a cheap weak run still pays
    # "context+adaptive" called without a draft model prices its runs as the context alone does.
    no_draft = ContextPolicy(AdaptivePolicy())
    cost = _bound(ContextPolicy(None)).context.cost
    no_draft.bind(PolicyContext(cost=cost, compression=None, has_draft=False))
    assert no_draft.plan_context(weak, _state()) == alone.plan_context(weak, _state())


def test_context_tokens_nobody_kept_do_not_look_like_a_draft_with_another_tokenizer():
    import warnings

    from speckv_hf import SpecKVGenerator
    from speckv_hf.core.stats import GenerationStats

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SpecKVGenerator("context")._warn_if_nothing_accepted(GenerationStats(drafted_tokens=100, context_tokens=100))
    with pytest.warns(UserWarning, match="another tokenizer"):
        SpecKVGenerator("context+adaptive")._warn_if_nothing_accepted(
            GenerationStats(drafted_tokens=140, context_tokens=100, accepted_tokens=3, context_accepted=3)
        )


def test_draft_policy_sees_only_its_own_tokens_once_the_run_was_accepted():
    seen = []

    class Spy(FixedPolicy):
        def observe(self, outcome):
            seen.append((len(outcome.tokens), outcome.num_accepted))

    policy = ContextPolicy(Spy(2))
    drafted = [object(), object()]
    proposal = ContextProposal(tokens=(1, 2, 3), match_length=2, occurrences=1, agreeing=1, distance=5)
    policy.observe(StepOutcome(step=1, tokens=drafted, num_accepted=4, context_tokens=3, context=proposal))
    policy.observe(StepOutcome(step=2, tokens=drafted, num_accepted=1, context_tokens=3, context=proposal))
    assert seen == [(2, 1)]  # after a rejected context token the drafted tokens were never judged: not observed


def test_a_proposal_no_run_was_taken_of_is_judged_by_what_the_target_emitted():
    """A declined run costs no step to keep its estimate current: the tokens the target emitted instead say which of
    its tokens it would have kept, as far as the step's tokens reach."""
    proposal = ContextProposal(tokens=(1, 2, 3, 4), match_length=3, occurrences=1, agreeing=1, distance=5)
    m, h = 3, 0  # its match length, and its history (one occurrence)

    def judged(emitted, *, plan_first=True, context_tokens=0, bind_between=False):
        policy = _bound(ContextPolicy(AdaptivePolicy()))
        calls = []
        policy.acceptance.update = lambda match_length, taken, num_accepted, history=0: calls.append(
            (match_length, taken, num_accepted, history)
        )
        if plan_first:
            policy.plan_context(proposal, _state())
        if bind_between:  # a new call: the last call's proposal is no step of it
            policy.bind(policy.context)
        context = proposal if context_tokens else None
        policy.observe(StepOutcome(1, [], 0, context_tokens=context_tokens, context=context, emitted=emitted))
        return calls

    assert judged((1, 2, 9)) == [(m, 3, 2, h)]  # kept 1 and 2, not 3; 4 never judged
    assert judged((7,)) == [(m, 1, 0, h)]  # the first token was not the target's
    assert judged((1, 2, 3, 4, 5, 6)) == [(m, 4, 4, h)]  # the whole proposal, and no further
    assert judged((1, 2)) == [(m, 2, 2, h)]  # past the step's tokens nothing is judged
    assert judged((1, 2, 9), plan_first=False) == []  # nothing was proposed this step
    assert judged((1, 2, 9), bind_between=True) == []
    assert judged(()) == []  # a loop that passes no tokens teaches nothing
    assert judged((1, 2, 9), context_tokens=2) == [(m, 2, 0, h)]  # a taken run is judged by verification only


def test_a_proposal_is_judged_once_and_a_declined_run_is_never_taken():
    """A proposal teaches the estimate once, at the step it was made in; and since declined runs are judged without
    being taken, a run that drafting beats is declined every time, not taken every so often to be judged."""
    policy = _bound(ContextPolicy(AdaptivePolicy()))
    token = TokenSignals(confidence=0.9, max_prob=0.9, entropy=0.3, margin=0.8, position=0)
    for _ in range(50):  # steps without context whose first drafted token was accepted
        policy.observe(StepOutcome(step=1, tokens=[token, token], num_accepted=2))
    weak = ContextProposal(tokens=(7, 8), match_length=1, occurrences=1, agreeing=1, distance=3)
    calls = []
    policy.acceptance.update = lambda *args: calls.append(args)
    plans = []
    for _ in range(16):
        plans.append(policy.plan_context(weak, _state()).count)
        policy.observe(StepOutcome(step=2, tokens=[token], num_accepted=1, emitted=(5, 6)))
        policy.observe(StepOutcome(step=3, tokens=[token], num_accepted=1, emitted=(7, 8)))  # no proposal made
    assert plans == [0] * 16
    assert calls == [(1, 2, 0, 0)] * 16  # each proposal judged once, against its own step's tokens


@pytest.mark.parametrize(
    ("spec", "name", "inner"),
    [
        ("context", "context", None),
        ("context+fixed:3", "context+fixed", FixedPolicy),
        ("context+adaptive", "context+adaptive", AdaptivePolicy),
    ],
)
def test_context_specs(spec, name, inner):
    policy = get_policy(spec, max_context_tokens=5)
    assert isinstance(policy, ContextPolicy) and policy.max_context_tokens == 5
    assert policy.config()["name"] == name
    assert policy.uses_draft == (inner is not None)
    assert inner is None or isinstance(policy.draft_policy, inner)


@pytest.mark.parametrize("spec", ["context+", "context+context", "context+nope"])
def test_bad_context_specs_name_the_fix(spec):
    with pytest.raises(ValueError, match="context"):
        get_policy(spec)


def test_deterministic_proposal_keeps_the_target_distribution():
    """A context candidate is a one-hot proposal: accepted with probability p(x), and on rejection the token comes
    from p without x, renormalised. The first emitted token is then distributed as p, at every row."""
    torch.manual_seed(0)
    rows, vocab = 40_000, 6
    p = torch.tensor([0.05, 0.4, 0.1, 0.25, 0.15, 0.05], dtype=torch.float64)
    logits = p.float().log().expand(rows, 2, vocab).clone()
    proposed = torch.full((rows, 1), 3)
    one_hot = torch.zeros(rows, 1, vocab).scatter_(-1, proposed[..., None], 1.0)
    num_accepted, next_token = accept_sampled(logits, proposed, torch.ones(rows, 1, dtype=torch.bool), one_hot)
    first = torch.where(num_accepted > 0, proposed[:, 0], next_token)
    counts = torch.bincount(first, minlength=vocab).double()
    assert chisquare(counts.numpy(), (p / p.sum() * counts.sum()).numpy()).pvalue > 1e-3
    assert abs(num_accepted.float().mean().item() - 0.25) < 0.01  # accepted with probability p(x)
    # Power check: resampling from p itself after a rejection (not p without x) over-represents token 3.
    wrong = (1 - p[3]) * p
    wrong[3] += p[3]
    assert chisquare(counts.numpy(), (wrong / wrong.sum() * counts.sum()).numpy()).pvalue < 1e-6


def test_guesses_stop_where_the_draft_seldom_confirms_them():
    """Guesses are fed while the draft confirms first guesses often enough; below `guess_floor`, on every
    `explore_every`-th forward only; never more than `max_guesses` or the step's room."""
    policy = ContextPolicy(draft_policy=FixedPolicy(3), max_guesses=4, explore_every=4)
    proposal = ContextProposal(tokens=(5, 6, 7, 8, 9, 10), match_length=1, occurrences=1, agreeing=1, distance=6)
    assert policy.plan_guesses(proposal, limit=8) == 4
    assert policy.plan_guesses(proposal, limit=2) == 2
    for _ in range(100):
        policy.observe_guesses(False)
    fed = [policy.plan_guesses(proposal, limit=8) for _ in range(8)]
    assert fed == [0, 0, 0, 4, 0, 0, 0, 4]
    for _ in range(100):
        policy.observe_guesses(True)
    assert policy.plan_guesses(proposal, limit=8) == 4
    assert ContextPolicy(draft_policy=FixedPolicy(3), max_guesses=0).plan_guesses(proposal, limit=8) == 0
    with pytest.raises(ValueError, match="guess_floor"):
        ContextPolicy(draft_policy=FixedPolicy(3), guess_floor=1.5)
