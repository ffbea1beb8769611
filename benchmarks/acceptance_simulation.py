"""What predicts acceptance, and what a stop rule built on it would gain: an offline, noise-free simulation.

For prompts of the embedded suite (indices 3-11 of each category: the ones `speckv profile` uses, never the
benchmarks' held-out 0-2), the target's greedy continuation is computed, and the draft and target are run
teacher-forced along it. That gives, at every position, the draft's signals, whether the draft's greedy token is
the target's (so the run the target would accept from there), the target's own confidence, and what the context
predicts (`speckv_hf.core.ngram.NgramIndex`, the two features `ngram_found` / `ngram_agrees`).

A logistic model of conditional acceptance (a token is accepted given the tokens before it in its draft were) is
fit on prompts 6-11 per feature set and scored on prompts 3-5 (AUC); `--scored held-out` scores on the benchmarks'
prompts 0-2 instead, which neither the logistic models nor the shipped predictor (profiled on 3-11) saw. Then every
stop rule is simulated greedily on the scored prompts with a linear step cost, `step_ms + token_ms * γ`: each
constant γ, the marginal-value rule with each model's probabilities (draft one more while `P(all accepted) * q /
token_ms` beats the long-run tokens/ms), and the hindsight oracle. "stale" decides on token `j` from the signals of
token `j - 1` (on the first from the first-token acceptance rate), as the live loop must (it decides before
drafting); "own" drafts token `j`, then decides on its own signals, and pays the draft forward (`--draft-ms`) of
the token it drops.

    python benchmarks/acceptance_simulation.py [--new-tokens 128] [--step-ms 11.6 --token-ms 1.36]
    python benchmarks/acceptance_simulation.py --scored held-out --new-tokens 64 --step-ms 7.73 --token-ms 1.78 \
        --draft-ms 1.4   # the bench's prompts and lengths, fp32 costs in our own loop on 2026-12-02

The default costs are the embedded fp32 pair's in our loop (`speckv bench`: a step with γ drafted tokens took
about 11.6 + 1.36 γ ms). `--verify-ms` replaces the line with a measured verification profile
(`benchmarks/verify_cost_shape.py` prints one), `--compression` is what the replayed policies are told of the
target, `--predictor` replays `speckv` with another trained predictor, and the policy `speckv-plan` (simulator-only)
plans a few tokens ahead over the exact step cost. Prints AUCs and simulated tokens/s, each over the best constant,
and the replayed policies' shares of γ.

    python benchmarks/acceptance_simulation.py --scored held-out --new-tokens 64 --step-ms 25 --token-ms 2.2 \
        --draft-ms 1.5 --first-ms 2.1 --compression int8 --policies speckv,speckv-plan \
        --verify-ms 0:16.7,1:24.2,2:23.8,3:25.3,4:26.3,5:26.7,6:27.5,7:29.4,8:29.4   # INT8, measured 2026-12-02
"""

from __future__ import annotations

import argparse
import functools
import math

import numpy as np
import torch

from speckv_hf.core.ngram import NgramIndex
from speckv_hf.demo import load_pair, load_prompts

MAX_GAMMA = 12
GAMMA_BINS = (("0", 0, 0), ("1", 1, 1), ("2", 2, 2), ("3-4", 3, 4), ("5-8", 5, 8), ("9+", 9, 10**6))
FEATURE_SETS = {
    "draft": ("logit_conf", "margin", "entropy", "position"),
    "draft+target": ("logit_conf", "margin", "entropy", "position", "target_logit_conf", "target_entropy"),
    "draft+ngram": ("logit_conf", "margin", "entropy", "position", "ngram_found", "ngram_agrees"),
}


@torch.no_grad()
def positions(new_tokens: int, first: int = 3) -> list[dict[str, np.ndarray]]:
    """Teacher-forced per-position signals along the target's greedy output, one dict per prompt (the suite's
    prompts `first`-11 of each category)."""
    target, draft, tokenizer = load_pair()
    out = []
    for category in ("code", "prose", "math", "structured"):
        for index, prompt in enumerate(load_prompts(category)[first:12], start=first):
            ids = tokenizer(prompt.text, return_tensors="pt").input_ids
            full = target.generate(ids, max_new_tokens=new_tokens, do_sample=False)
            continuation = full[0, ids.shape[1] :]
            start = ids.shape[1] - 1
            draft_probs = torch.softmax(draft(full[:, :-1]).logits[0, start:].float(), -1)
            target_probs = torch.softmax(target(full[:, :-1]).logits[0, start:].float(), -1)
            top2 = draft_probs.topk(2, -1).values
            proposal = draft_probs.argmax(-1)
            index_ = NgramIndex(ids[0].tolist())
            found, agrees = [], []
            for j, token in enumerate(continuation.tolist()):
                prediction = index_.lookup(*index_.tail)
                found.append(prediction is not None)
                agrees.append(prediction is not None and prediction == int(proposal[j]))
                index_.extend([token])
            out.append(
                {
                    "index": index,
                    "agree": (proposal == continuation).numpy(),
                    "conf": top2[:, 0].numpy(),
                    "margin": (top2[:, 0] - top2[:, 1]).numpy(),
                    "entropy": -(draft_probs * draft_probs.clamp_min(1e-12).log()).sum(-1).numpy(),
                    "target_conf": target_probs.max(-1).values.numpy(),
                    "target_entropy": -(target_probs * target_probs.clamp_min(1e-12).log()).sum(-1).numpy(),
                    "ngram_found": np.array(found, dtype=float),
                    "ngram_agrees": np.array(agrees, dtype=float),
                }
            )
    for prompt in out:
        runs, following = np.zeros(len(prompt["agree"]), dtype=int), 0
        for j in range(len(runs) - 1, -1, -1):
            following = following + 1 if prompt["agree"][j] else 0
            runs[j] = following
        prompt["run"] = runs
    return out


def cached_positions(new_tokens: int, cache: str | None, first: int = 3) -> list[dict[str, np.ndarray]]:
    """`positions`, kept in a JSON file between runs when `cache` names one (the models' forwards take minutes)."""
    import json
    from pathlib import Path

    if cache and Path(cache).is_file():
        stored = json.loads(Path(cache).read_text())
        if stored["new_tokens"] == new_tokens and stored.get("first", 3) == first:
            return [{k: (v if k == "index" else np.array(v)) for k, v in p.items()} for p in stored["prompts"]]
    prompts = positions(new_tokens, first)
    if cache:
        lists = [{k: (v if k == "index" else v.tolist()) for k, v in p.items()} for p in prompts]
        Path(cache).write_text(json.dumps({"new_tokens": new_tokens, "first": first, "prompts": lists}))
    return prompts


def features(prompt: dict[str, np.ndarray], start: int, j: int, names: tuple[str, ...]) -> list[float]:
    """The features of the token at `j` in a step that started at `start` (target signals: the step's start)."""
    logit = lambda p: math.log(min(max(p, 1e-4), 1 - 1e-4) / (1 - min(max(p, 1e-4), 1 - 1e-4)))  # noqa: E731
    t = max(start - 1, 0)
    values = {
        "logit_conf": logit(float(prompt["conf"][j])),
        "margin": float(prompt["margin"][j]),
        "entropy": float(prompt["entropy"][j]),
        "position": float(j - start),
        "target_logit_conf": logit(float(prompt["target_conf"][t])),
        "target_entropy": float(prompt["target_entropy"][t]),
        "ngram_found": float(prompt["ngram_found"][j]),
        "ngram_agrees": float(prompt["ngram_agrees"][j]),
    }
    return [values[name] for name in names]


def rows(prompts: list[dict[str, np.ndarray]], names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Conditional-acceptance rows: every step start, every draft position reached."""
    x, y = [], []
    for prompt in prompts:
        n = len(prompt["agree"])
        for start in range(n):
            for j in range(start, min(start + MAX_GAMMA, n)):
                x.append(features(prompt, start, j, names))
                y.append(float(prompt["agree"][j]))
                if not prompt["agree"][j]:
                    break
    return np.array(x), np.array(y)


def fit_logistic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    mean, std = x.mean(0), x.std(0) + 1e-6
    xs = torch.tensor((x - mean) / std)
    ys = torch.tensor(y)
    weight = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=200)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xs @ weight + bias, ys)
        loss = loss + 1e-4 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    scaled = weight.detach().numpy() / std
    return scaled, float(bias.detach()) - float(scaled @ mean), mean, std


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    positives = labels.sum()
    pairs = positives * (len(labels) - positives)
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / pairs)


def simulate(prompts, decide, step_ms: float, token_ms: float, draft_ms: float = 0.0, step_cost=None) -> float:
    """Tokens per second of a stop rule: `decide(prompt, start, n, rate)` returns γ, or `(γ, dropped)` where
    `dropped` tokens were drafted (`draft_ms` each) and not sent; rate = long-run tokens/ms. `step_cost(γ)` (ms),
    when given, replaces the linear `step_ms + token_ms * γ`."""
    step_cost = step_cost or (lambda gamma: step_ms + token_ms * gamma)
    tokens, cost, recent_tokens, recent_ms = 0, 0.0, 0.0, 0.0
    for prompt in prompts:
        n, start = len(prompt["agree"]), 0
        while start < n:
            rate = recent_tokens / recent_ms if recent_ms else 1.0 / step_cost(1)
            decision = decide(prompt, start, n, rate)
            gamma, dropped = decision if isinstance(decision, tuple) else (decision, 0)
            gamma = min(gamma, n - start - 1)
            accepted = min(gamma, int(prompt["run"][start]))
            step = step_cost(gamma) + draft_ms * dropped
            tokens, cost = tokens + accepted + 1, cost + step
            recent_tokens, recent_ms = 0.995 * recent_tokens + accepted + 1, 0.995 * recent_ms + step
            start += accepted + 1
    return 1000.0 * tokens / cost


class ProfileCost:
    """A step's cost from a measured verification profile: `verify(γ) + first_ms + (γ - 1) * draft_ms` ms (γ >= 1)
    or `verify(0)` (a plain decoding step), `verify` interpolated linearly between the measured candidate counts
    and extrapolated from the last two.

    Args:
        profile: `"K:MS,K:MS,..."`, verification ms by drafted-token count, each with whatever per-step overhead
            should count (`benchmarks/verify_cost_shape.py` prints bare forwards in this form).
        first_ms: the step's first drafted token (the draft's catch-up forward included).
        draft_ms: each further drafted token.
    """

    def __init__(self, profile: str, first_ms: float, draft_ms: float) -> None:
        try:
            points = sorted((int(k), float(ms)) for k, ms in (item.split(":") for item in profile.split(",")))
        except ValueError:
            raise SystemExit(f"--verify-ms takes K:MS,K:MS,... (e.g. 0:19.5,1:25.3,4:26.3), got {profile!r}") from None
        counts = [k for k, _ in points]
        if len(points) < 2 or counts[0] != 0 or len(set(counts)) < len(counts):
            raise SystemExit("--verify-ms needs two or more distinct counts, the first of them 0 (a plain step)")
        self.points, self.first_ms, self.draft_ms = points, first_ms, draft_ms

    def verify(self, gamma: int) -> float:
        (k0, v0), (k1, v1) = next(
            ((a, b) for a, b in zip(self.points, self.points[1:], strict=False) if gamma <= b[0]), self.points[-2:]
        )
        return v0 + (v1 - v0) * (gamma - k0) / (k1 - k0)

    def __call__(self, gamma: int) -> float:
        drafting = self.first_ms + (gamma - 1) * self.draft_ms if gamma else 0.0
        return self.verify(gamma) + drafting


def compression_info(name: str):
    """The `CompressionInfo` the live loop would detect on the embedded target with this compression."""
    from speckv_hf.compression.detection import CompressionInfo, compression_from_config
    from speckv_hf.compression.names import quantization_config

    return (
        CompressionInfo("none", "fp32", 32) if name == "fp32" else compression_from_config(quantization_config(name))
    )


def planning_policy(step_cost, **settings):
    """`speckv-plan`: the `speckv` policy drafting one more token while some draft length ahead (up to 8 more
    tokens, later ones assumed as likely as the next) adds expected tokens faster than the long-run rate, priced
    with the simulator's exact step cost: the most a policy that knew the verification profile could gain over the
    fitted line, simulator-only."""
    from speckv_hf.policies.speckv import SpeckvPolicy

    class PlanningSpeckv(SpeckvPolicy):
        def should_draft(self, state) -> bool:
            drafted = len(state.tokens)
            if drafted == 0:
                self._step_probs.clear()
                self._step_product = 1.0
                self._step_raw.clear()
            if drafted >= self.max_tokens:
                return False
            if self._steps_seen < self.warmup_steps or not state.throughput:
                return drafted < 4 and (drafted == 0 or state.tokens[-1].confidence >= 0.4)
            if drafted == 0:
                q = self._first_token.mean
            else:
                while len(self._step_probs) < drafted:
                    probability = self._token_acceptance(state.tokens[len(self._step_probs)], len(self._step_probs))
                    self._step_probs.append(probability)
                    self._step_product *= probability
                q = self._token_acceptance(state.tokens[-1], drafted)
            rate, base, gain, chance = state.throughput / 1000.0, step_cost(drafted), 0.0, self._step_product
            worth_it = False
            for more in range(drafted + 1, min(drafted + 8, self.max_tokens) + 1):
                chance *= q
                gain += chance
                if gain / (step_cost(more) - base) > rate:
                    worth_it = True
                    break
            return self._judge_first(worth_it) if drafted == 0 else worth_it

    return PlanningSpeckv(**settings)


def policy_decider(policy, step_ms: float, token_ms: float, draft_ms: float, step_cost=None, compression="fp32"):
    """A `decide` that asks a real `DraftPolicy` (bound to a cost model fed with the simulated costs), token by
    token, and lets it observe each step's outcome: the library's policy logic without the live loop's timing.
    With a `ProfileCost`, the cost model is fed its verification times for 1-8 drafted tokens (a speculating policy
    rarely verifies none) and its draft times. `decide.gammas` counts the γ it chose."""
    from collections import Counter

    from speckv_hf.core.cost import CostModel
    from speckv_hf.core.signals import TokenSignals
    from speckv_hf.policies.base import DraftState, PolicyContext, StepOutcome

    cost = CostModel()
    slope = token_ms - draft_ms
    for _ in range(8):
        if step_cost is None:
            for k in range(9):
                cost.observe_verify(k, (step_ms + slope * k) / 1000)
            cost.observe_draft(draft_ms / 1000)
            cost.observe_first_draft(draft_ms / 1000)
        else:
            for k in range(1, 9):
                cost.observe_verify(k, step_cost.verify(k) / 1000)
            cost.observe_draft(step_cost.draft_ms / 1000)
            cost.observe_first_draft(step_cost.first_ms / 1000)
    policy.bind(PolicyContext(cost=cost, compression=compression_info(compression)))
    step = [0]
    gammas: Counter[int] = Counter()

    def signals(prompt, j: int, position: int) -> TokenSignals:
        conf = float(prompt["conf"][j])
        return TokenSignals(
            conf,
            conf,
            float(prompt["entropy"][j]),
            float(prompt["margin"][j]),
            position,
            bool(prompt["ngram_found"][j]),
            bool(prompt["ngram_agrees"][j]),
        )

    def decide(prompt, start, n, rate):
        drafted: list[TokenSignals] = []
        while start + len(drafted) < n - 1:
            state = DraftState(step=step[0], tokens=drafted, max_tokens=n - start - 1, throughput=rate * 1000)
            if not policy.should_draft(state):
                break
            drafted.append(signals(prompt, start + len(drafted), len(drafted)))
        accepted = min(len(drafted), int(prompt["run"][start]))
        policy.observe(StepOutcome(step=step[0], tokens=drafted, num_accepted=accepted))
        step[0] += 1
        gammas[len(drafted)] += 1
        return len(drafted)

    decide.gammas = gammas
    return decide


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--step-ms", type=float, default=11.6)
    parser.add_argument("--token-ms", type=float, default=1.36)
    parser.add_argument("--cache", help="a JSON file to keep the teacher-forced positions in between runs")
    parser.add_argument(
        "--scored",
        choices=("profiled", "held-out"),
        default="profiled",
        help="score on prompts 3-5 (profiled by `speckv profile`, so the shipped predictor saw them) or on the "
        "benchmarks' held-out prompts 0-2, which no predictor saw",
    )
    parser.add_argument("--policies", default="adaptive,speckv", help="library policies to replay, comma-separated")
    parser.add_argument(
        "--draft-ms", type=float, default=0.69, help="the draft forward's part of --token-ms (lost on a dropped token)"
    )
    parser.add_argument(
        "--verify-ms",
        help="a measured verification profile, K:MS,K:MS,... by drafted-token count (benchmarks/verify_cost_shape.py)"
        ": steps then cost verify(γ) + --first-ms + (γ - 1) * --draft-ms instead of --step-ms + --token-ms * γ",
    )
    parser.add_argument(
        "--first-ms", type=float, help="with --verify-ms: the first drafted token (default --draft-ms)"
    )
    parser.add_argument("--compression", default="fp32", help="the target compression the replayed policies are told")
    parser.add_argument("--predictor", help="a predictor folder for speckv and speckv-plan (default: the shipped one)")
    args = parser.parse_args()
    held_out = args.scored == "held-out"
    prompts = cached_positions(args.new_tokens, args.cache, first=0 if held_out else 3)
    train = [p for p in prompts if p["index"] >= 6]
    test = [p for p in prompts if p["index"] < (3 if held_out else 6)]
    step_ms, token_ms = args.step_ms, args.token_ms
    profile = None
    if args.verify_ms:
        profile = ProfileCost(args.verify_ms, args.draft_ms if args.first_ms is None else args.first_ms, args.draft_ms)
    run = functools.partial(simulate, step_cost=profile)
    constants = {k: run(test, lambda p, s, n, r, k=k: k, step_ms, token_ms) for k in range(1, 11)}
    best = max(constants, key=constants.__getitem__)
    print(f"{len(train)} training prompts, {len(test)} scored, {args.new_tokens} tokens each")
    print("constant γ: " + "  ".join(f"{k}: {v:.1f}" for k, v in constants.items()) + f"  (best {best})")
    oracle = run(test, lambda p, s, n, r: int(p["run"][s]), step_ms, token_ms)
    print(f"oracle: {oracle:.1f} tok/s, {oracle / constants[best]:.3f}x the best constant")
    print(f"{'features':14s} {'AUC':>6s} {'stale':>7s} {'own':>7s}  (simulated tokens/s over the best constant)")
    first_rate = float(np.mean([p["agree"][j] for p in train for j in range(len(p["agree"]))]))
    for name, names in FEATURE_SETS.items():
        weight, bias, _, _ = fit_logistic(*rows(train, names))
        x, y = rows(test, names)
        area = auc(x @ weight + bias, y)
        results = []
        for stale in (True, False):

            def decide(prompt, start, n, rate, stale=stale, names=names, weight=weight, bias=bias):
                cumulative, gamma = 1.0, 0
                for j in range(start, min(start + MAX_GAMMA, n)):
                    if stale and j == start:
                        q = first_rate  # nothing drafted yet: the first-token acceptance rate
                    else:
                        row = features(prompt, start, j - 1 if stale else j, names)
                        row[names.index("position")] = float(j - start)
                        q = 1.0 / (1.0 + math.exp(-(np.dot(row, weight) + bias)))
                    if cumulative * q / token_ms <= rate:
                        return gamma, 0 if stale else 1  # deciding on its own signals: it was drafted, then dropped
                    cumulative, gamma = cumulative * q, gamma + 1
                return gamma, 0

            results.append(run(test, decide, step_ms, token_ms, args.draft_ms) / constants[best])
        print(f"{name:14s} {area:6.3f} {results[0]:6.3f}x {results[1]:6.3f}x")
    from speckv_hf.policies.registry import get_policy

    for spec in args.policies.split(","):
        settings = {"predictor": args.predictor} if args.predictor and spec in ("speckv", "speckv-plan") else {}
        if spec == "speckv-plan":
            policy = planning_policy(profile or (lambda gamma: step_ms + token_ms * gamma), **settings)
        else:
            policy = get_policy(spec, **settings)
        decide = policy_decider(policy, step_ms, token_ms, args.draft_ms, profile, args.compression)
        ratio = run(test, decide, step_ms, token_ms) / constants[best]
        print(f"policy {spec:14s}        {ratio:6.3f}x  (the library's policy, its decisions replayed)")
        steps = sum(decide.gammas.values())
        shares = {
            label: sum(v for g, v in decide.gammas.items() if lo <= g <= hi) / steps for label, lo, hi in GAMMA_BINS
        }
        print("    γ: " + ", ".join(f"{label} {share:.0%}" for label, share in shares.items()))


if __name__ == "__main__":
    main()
