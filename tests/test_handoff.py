"""What a generator's finished calls hand to the next ones: warm state per key, the plain-decoding verdict, context
memories per target."""

from __future__ import annotations

import gc

from speckv_hf.core.cost import CostModel, CostSettings
from speckv_hf.decoding.handoff import Handoff
from speckv_hf.policies.base import FixedPolicy


class _Verdict(FixedPolicy):
    """A policy whose verdict on speculation is set by the test."""

    pays: bool | None = None

    def speculation_pays(self) -> bool | None:
        return self.pays


def test_a_call_starts_from_copies_of_the_last_call_on_its_key_only():
    handoff = Handoff()
    template = FixedPolicy(num_tokens=3)
    cost, policy = handoff.start((1, 2, 1), template, CostSettings(), warm_start=True)
    assert handoff.warm is None and policy is not template and policy.num_tokens == 3  # a copy, never the template
    cost.observe_verify(2, 0.01)
    handoff.keep((1, 2, 1), cost, policy)
    settings = CostSettings(cost_ratio=0.25)
    warm_cost, warm_policy = handoff.start((1, 2, 1), template, settings, warm_start=True)
    assert warm_cost is not cost and warm_cost.num_verify_samples == cost.num_verify_samples == 1
    assert warm_policy is not policy and warm_cost.settings == settings  # the user's current settings win
    other_cost, _ = handoff.start((1, 2, 4), template, settings, warm_start=True)  # another batch size: fresh
    assert other_cost.num_verify_samples == 0
    cold_cost, _ = handoff.start((1, 2, 1), template, settings, warm_start=False)
    assert cold_cost.num_verify_samples == 0
    handoff.reset()
    assert handoff.warm is None


def test_plain_decoding_follows_the_policys_verdict_and_probes_every_nth_call():
    handoff = Handoff()
    key = (1, 2, 1)
    handoff.keep(key, CostModel(), _Verdict(num_tokens=1))  # no verdict yet: speculation is presumed to pay
    assert not handoff.plain_call(key, probe_every=3)
    verdict = _Verdict(num_tokens=1)
    verdict.pays = False
    handoff.keep(key, CostModel(), verdict)
    assert [handoff.plain_call(key, probe_every=3) for _ in range(6)] == [True, True, False, True, True, False]
    assert not handoff.plain_call((9, 9, 1), probe_every=3)  # another pair learned nothing


def test_one_memory_per_target_kept_no_longer_than_the_target():
    class Target:
        pass

    handoff = Handoff()
    first, second = Target(), Target()
    assert handoff.memory_for(first, 0) is None and handoff.memory_of(first) is None
    memory = handoff.memory_for(first, 64)
    assert handoff.memory_for(first, 64) is memory and handoff.memory_of(first) is memory
    assert handoff.memory_for(second, 64) is not memory
    handoff.remember(memory, [[5, 6, 7, 8]])
    assert len(memory) > 0
    del first, memory
    gc.collect()
    assert len(handoff._memories) == 1  # the dropped target's memory went with it
    handoff.clear_memories()
    assert handoff.memory_of(second) is None
