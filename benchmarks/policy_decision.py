"""Time one policy decision (`should_draft`) of each cost-aware policy, outside any model.

    python benchmarks/policy_decision.py [--decisions 20000]

Replays steps of 8 drafted tokens (one decision per token plus the first) against a measured-looking cost model,
with `observe` after each step, and prints the median over 5 repeats of the time per decision. A benchmark, not a
test: it prints, it asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from speckv_hf import PORTABLE_FEATURES, AdaptivePolicy, GammaPredictor, SpeckvPolicy
from speckv_hf.compression.detection import CompressionInfo
from speckv_hf.core.cost import CostModel, CostSettings
from speckv_hf.core.signals import TokenSignals
from speckv_hf.policies.base import DraftState, PolicyContext, StepOutcome


def _time_policy(policy, decisions: int) -> float:
    cost = CostModel(CostSettings())
    for k in (0, 2, 4, 8) * 4:
        cost.observe_verify(k, 0.008 + 0.0003 * k)
        cost.observe_draft(0.0009)
    policy.bind(PolicyContext(cost=cost, compression=CompressionInfo("none", "fp32", 32)))
    tokens = [TokenSignals(0.9 - 0.05 * i, 0.92, 0.4, 0.7, i) for i in range(8)]
    for step in range(5):  # past the warm-up
        policy.observe(StepOutcome(step=step, tokens=tokens, num_accepted=5))
    made, step = 0, 5
    start = time.perf_counter()
    while made < decisions:
        drafted: list[TokenSignals] = []
        state = DraftState(step=step, tokens=drafted, max_tokens=8, throughput=1e-9)  # always worth drafting
        for token in tokens:
            policy.should_draft(state)
            drafted.append(token)
        policy.should_draft(state)
        made += len(tokens) + 1
        policy.observe(StepOutcome(step=step, tokens=tokens, num_accepted=5))
        step += 1
    return (time.perf_counter() - start) / made


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decisions", type=int, default=20000)
    args = parser.parse_args(argv)
    predictor = GammaPredictor(list(PORTABLE_FEATURES), hidden_sizes=[32, 32])
    policies = {
        "adaptive": lambda: AdaptivePolicy(warmup_steps=0),
        "speckv (32, 32)": lambda: SpeckvPolicy(predictor=predictor, warmup_steps=0),
    }
    torch.set_num_threads(1)
    for name, make in policies.items():
        times = [_time_policy(make(), args.decisions) for _ in range(5)]
        print(
            f"{name:<18} {statistics.median(times) * 1e6:6.2f} µs per decision (5 repeats: "
            f"{min(times) * 1e6:.2f}-{max(times) * 1e6:.2f}), observe() included"
        )


if __name__ == "__main__":
    main()
