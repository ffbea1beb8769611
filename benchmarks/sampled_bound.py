"""How much a stop rule could gain over the best constant γ with sampling, by what it knows: an offline simulation.

Speculative sampling accepts a drafted token x ~ q with probability r = min(1, p(x) / q(x)). For prompts of the
embedded suite, the target samples its own continuation (`target.generate(ids, do_sample=True, max_new_tokens=64)`,
seeded; transformers' defaults: top-k 50, temperature 1, top-p 1), `--samples` per prompt, and both models run
teacher-forced along it. The same processing (top-k 50, softmax) gives p_n and q_n at every position, hence
a_n = sum_x min(p_n(x), q_n(x)) = E_{x~q_n} r (the acceptance probability before x is drawn) and r for every token of
q_n's support. Stop rules are simulated with a linear step cost `step_ms + token_ms * γ`, acceptance drawn at random
(x ~ q_{n+j}, accepted with probability r), averaged over `--seeds` random seeds (± is the standard error):

  (a) each constant γ = 1..12 (the best is the reference),
  (b) the marginal-value rule (draft one more while P(all so far and this one accepted) / token_ms beats the
      long-run tokens/ms, as in `acceptance_simulation.py`) knowing a_n exactly at every position ahead,
  (c) the same rule knowing the exact r of each drafted token (x and p: a ceiling no draft-side rule can reach),
  (d) the same rule with a logistic regression of r (soft labels, rows weighted by q(x) and by the chance of
      reaching that draft position) on draft-side features of the drafted token: logit q(x), logit max q, entropy,
      top1-top2 margin, position in the draft; fit on prompts 6-11 per category, scored on 3-5 (`--scored held-out`:
      the bench's prompts 0-2). Also its AUC against Bernoulli(r) outcomes (next to a_n's and r's own) and its
      correlation / R² with a_n and r.
  (e) knowing a_n exactly, the γ that maximizes the step's expected tokens minus their cost at the long-run rate
      (a whole-step planner; with a linear cost it decides as (b) does, since the chance that every token up to
      the i-th is accepted only falls as i grows),
  (f) (d) with the context signals added: `ngram_found` and, for each token of q_n's support, `ngram_agrees`
      (as `speckv_hf.core.ngram.NgramIndex` gives them live).

(c), (d) and (f) decide on a token after drafting it; a dropped token costs `--draft-ms` (default 0). The trajectory is
the target's sampled continuation: after a rejection the real algorithm samples from the residual max(0, p - q),
so its trajectory differs from the target's own samples; that difference is ignored. Greedy decoding is the
reference (`acceptance_simulation.positions`: the target's greedy output, acceptance = draft argmax == target
argmax): constants, the hindsight rule (knows each position's 0/1 outcome) and the draft-feature logistic ("own").

Acceptance comes from the fp32 pair; for INT8 / NF4 only the step costs change (the models are not quantized here):

    python benchmarks/sampled_bound.py --cache /tmp/sampled_bound.pkl --step-ms 7.73 --token-ms 1.78   # fp32
    python benchmarks/sampled_bound.py --cache /tmp/sampled_bound.pkl --step-ms 23.86 --token-ms 2.72  # INT8
    python benchmarks/sampled_bound.py --cache /tmp/sampled_bound.pkl --step-ms 10.50 --token-ms 1.94  # NF4

Run from the repository root (it imports `acceptance_simulation` from this folder). Prints simulated tokens/s, each
over the best constant. No wall-clock timing is involved.
"""

from __future__ import annotations

import argparse
import math
import pickle
from pathlib import Path

import numpy as np
import torch
from acceptance_simulation import auc, features, fit_logistic, positions, rows, simulate

from speckv_hf.core.ngram import NgramIndex
from speckv_hf.demo import CATEGORIES, load_pair, load_prompts

MAX_GAMMA = 12
TOP_K = 50
GREEDY_FEATURES = ("logit_conf", "margin", "entropy", "position")
#: Columns of `soft_rows`' features: logit q(x), logit max q, entropy, margin, ngram_found, ngram_agrees, position.
SOFT_FEATURE_SETS = {"draft": (0, 1, 2, 3, 6), "draft+context": (0, 1, 2, 3, 4, 5, 6)}


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def top_k_probs(logits: torch.Tensor) -> torch.Tensor:
    """transformers' `TopKLogitsWarper(50)` then softmax."""
    logits = logits.float()
    kth = logits.topk(TOP_K, -1).values[..., -1:]
    return torch.softmax(logits.masked_fill(logits < kth, -math.inf), -1)


@torch.no_grad()
def sampled_positions(new_tokens: int, first: int, samples: int) -> list[dict]:
    """Per sampled continuation: a_n, the draft's top-50 support q_n(x) with r_n(x), and draft features."""
    target, draft, tokenizer = load_pair()
    out = []
    for c, category in enumerate(CATEGORIES):
        for index, prompt in enumerate(load_prompts(category)[first:12], start=first):
            ids = tokenizer(prompt.text, return_tensors="pt").input_ids
            for sample in range(samples):
                torch.manual_seed(10_000 * c + 100 * index + sample)
                full = target.generate(ids, do_sample=True, max_new_tokens=new_tokens)
                start = ids.shape[1] - 1
                p = top_k_probs(target(full[:, :-1]).logits[0, start:])
                q = top_k_probs(draft(full[:, :-1]).logits[0, start:])
                qv, qi = q.topk(TOP_K, -1)
                r = torch.where(qv > 0, torch.clamp(p.gather(-1, qi) / qv.clamp_min(1e-30), max=1.0), 0.0)
                entropy = -(q * q.clamp_min(1e-12).log()).sum(-1)
                found, agrees = context_signals(ids[0].tolist(), full[0, ids.shape[1] :].tolist(), qi)
                out.append(
                    {
                        "index": index,
                        "a": torch.minimum(p, q).sum(-1).numpy().astype(np.float64),
                        "q": qv.numpy().astype(np.float64),
                        "r": r.numpy().astype(np.float64),
                        "base": np.stack(  # features of each support token, position excluded
                            np.broadcast_arrays(
                                logit(qv.numpy()),
                                logit(qv[:, :1].numpy()),
                                entropy[:, None].numpy(),
                                (qv[:, :1] - qv[:, 1:2]).numpy(),
                                found[:, None],
                                agrees,
                            ),
                            -1,
                        ).astype(np.float64),
                    }
                )
    return out


def context_signals(
    prompt: list[int], continuation: list[int], support: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Per position: whether the context predicts the next token (`NgramIndex`, as the live loop), and for each
    support token whether it is that prediction (the live `ngram_found`, `ngram_agrees`)."""
    index = NgramIndex(prompt)
    found, agrees = np.zeros(len(continuation)), np.zeros(tuple(support.shape))
    for j, token in enumerate(continuation):
        prediction = index.lookup(*index.tail)
        if prediction is not None:
            found[j] = 1.0
            agrees[j] = (support[j] == prediction).numpy()
        index.extend([token])
    return found, agrees


def soft_rows(conts: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows (n, x, position): features, r, weight q(x) * P(reach position), and a_n."""
    xs, ys, ws, as_ = [], [], [], []
    for cont in conts:
        a, length = cont["a"], len(cont["a"])
        cum = np.concatenate([[0.0], np.cumsum(np.log(np.clip(a, 1e-12, 1)))])
        for pos in range(min(MAX_GAMMA, length)):
            m = np.arange(pos, length)
            reach = np.exp(cum[m] - cum[m - pos])
            w = cont["q"][m] * reach[:, None]
            keep = w > 1e-7
            xs.append(np.concatenate([cont["base"][m], np.full((len(m), TOP_K, 1), float(pos))], -1)[keep])
            ys.append(cont["r"][m][keep])
            ws.append(w[keep])
            as_.append(np.broadcast_to(a[m][:, None], w.shape)[keep])
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ws), np.concatenate(as_)


def fit_soft(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, float]:
    """Weighted logistic regression with soft labels (cross-entropy against r)."""
    mean, std = np.average(x, 0, w), np.sqrt(np.average((x - np.average(x, 0, w)) ** 2, 0, w)) + 1e-6
    xs, ys, ws = torch.tensor((x - mean) / std), torch.tensor(y), torch.tensor(w / w.sum())
    weight = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        z = xs @ weight + bias
        loss = (ws * torch.nn.functional.binary_cross_entropy_with_logits(z, ys, reduction="none")).sum()
        loss = loss + 1e-6 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    scaled = weight.detach().numpy() / std
    return scaled, float(bias.detach()) - float(scaled @ mean)


def weighted_auc(scores: np.ndarray, positive: np.ndarray, negative: np.ndarray) -> float:
    """AUC with fractional positive / negative weights per row (ties count half)."""
    _, group = np.unique(scores, return_inverse=True)
    pos, neg = np.bincount(group, positive), np.bincount(group, negative)
    below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
    return float((pos * (below + 0.5 * neg)).sum() / (pos.sum() * neg.sum()))


def simulate_sampled(conts, rule, weight, bias, step_ms, token_ms, draft_ms, seeds) -> np.ndarray:
    """Tokens/s per seed of `rule` (an int: constant γ; "b", "c", "d", "e"), all seeds advanced together."""
    rng = np.random.default_rng(12345)
    tokens, cost, recent_tokens, recent_ms = (np.zeros(seeds) for _ in range(4))
    offsets = np.arange(MAX_GAMMA)
    for cont in conts:
        length = len(cont["a"])
        cdf = np.cumsum(cont["q"], -1)
        cdf /= cdf[:, -1:]
        if rule == "d":
            base = cont["base"] @ weight[:-1] + bias
        start = np.zeros(seeds, dtype=int)
        while (active := np.nonzero(start < length)[0]).size:
            s = start[active]
            ms = recent_ms[active]
            rate = np.where(ms > 0, recent_tokens[active] / np.maximum(ms, 1e-9), 1.0 / (step_ms + token_ms))
            cap = np.minimum(MAX_GAMMA, length - s - 1)
            m = np.minimum(s[:, None] + offsets, length - 1)
            x = np.minimum((cdf[m] < rng.random(m.shape)[..., None]).sum(-1), TOP_K - 1)  # x ~ q_m
            r = cont["r"][m, x]
            accepted = np.cumprod(rng.random(m.shape) < r, 1).sum(1)
            dropped = np.zeros(len(s))
            if isinstance(rule, int):
                gamma = np.minimum(rule, cap)
            elif rule == "e":  # the γ that maximizes the step's expected tokens minus their cost at the current rate
                lead = np.cumprod(cont["a"][m], 1) - rate[:, None] * token_ms
                net = np.concatenate([np.zeros((len(s), 1)), np.cumsum(lead, 1)], 1)
                net[np.arange(MAX_GAMMA + 1)[None, :] > cap[:, None]] = -np.inf
                gamma = net.argmax(1)
            else:
                if rule == "b":
                    value = cont["a"][m]
                elif rule == "c":
                    value = r
                else:
                    value = 1.0 / (1.0 + np.exp(-(base[m, x] + weight[-1] * offsets)))
                lead = np.cumprod(np.cumprod(value, 1) > rate[:, None] * token_ms, 1).sum(1)
                gamma = np.minimum(lead, cap)
                if rule != "b":  # it drafted the token it stopped on
                    dropped = (lead < cap).astype(float)
            accepted = np.minimum(accepted, gamma)
            step = step_ms + token_ms * gamma + draft_ms * dropped
            tokens[active] += accepted + 1
            cost[active] += step
            recent_tokens[active] = 0.995 * recent_tokens[active] + accepted + 1
            recent_ms[active] = 0.995 * recent_ms[active] + step
            start[active] = s + accepted + 1
    return 1000.0 * tokens / cost


def load(args, first: int) -> tuple[list[dict], list[dict]]:
    key = (args.new_tokens, first, args.samples, "context signals")
    if args.cache and Path(args.cache).is_file():
        stored = pickle.loads(Path(args.cache).read_bytes())
        if stored["key"] == key:
            return stored["sampled"], stored["greedy"]
    sampled, greedy = sampled_positions(args.new_tokens, first, args.samples), positions(args.new_tokens, first)
    if args.cache:
        Path(args.cache).write_bytes(pickle.dumps({"key": key, "sampled": sampled, "greedy": greedy}))
    return sampled, greedy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4, help="sampled continuations per prompt")
    parser.add_argument("--seeds", type=int, default=200, help="simulation seeds averaged over")
    parser.add_argument("--step-ms", type=float, default=7.73)
    parser.add_argument("--token-ms", type=float, default=1.78)
    parser.add_argument("--draft-ms", type=float, default=0.0, help="cost of a token drafted, then dropped")
    parser.add_argument("--scored", choices=("profiled", "held-out"), default="profiled")
    parser.add_argument("--cache", help="a pickle file to keep the teacher-forced positions in between runs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (more oversubscribe 2 shared cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    held_out = args.scored == "held-out"
    sampled, greedy = load(args, 0 if held_out else 3)

    def split(items: list[dict]) -> tuple[list[dict], list[dict]]:
        """Training prompts 6-11, scored prompts 3-5 (or the bench's 0-2)."""
        return [p for p in items if p["index"] >= 6], [p for p in items if p["index"] < (3 if held_out else 6)]

    train, test = split(sampled)
    costs = (args.step_ms, args.token_ms, args.draft_ms)
    print(f"costs: {args.step_ms} + {args.token_ms} γ ms per step, dropped draft {args.draft_ms} ms; {args.scored}")

    train_x, train_r, train_w, _ = soft_rows(train)
    x, r, w, a = soft_rows(test)
    logistics = {}  # name -> (weight over every column, zeros where unused; bias)
    for name, columns in SOFT_FEATURE_SETS.items():
        fitted, bias = fit_soft(train_x[:, columns], train_r, train_w)
        weight = np.zeros(x.shape[1])
        weight[list(columns)] = fitted
        logistics[name] = (weight, bias)
    first_pos = x[:, -1] == 0
    scored_a = np.concatenate([c["a"] for c in test])
    print(
        f"\nsampled: {len(train)} training / {len(test)} scored continuations ({args.samples} per prompt), "
        f"{len(scored_a)} scored positions, mean a_n {scored_a.mean():.3f}, {args.seeds} seeds"
    )
    weight, bias = logistics["draft"]
    results = {k: simulate_sampled(test, k, weight, bias, *costs, args.seeds) for k in range(1, MAX_GAMMA + 1)}
    best = max(range(1, MAX_GAMMA + 1), key=lambda k: results[k].mean())
    print("constant γ: " + "  ".join(f"{k}: {results[k].mean():.1f}" for k in range(1, MAX_GAMMA + 1)))
    ref = results[best]
    rules = [
        ("b", "draft", "(b) knows a_n ahead"),
        ("e", "draft", "(e) knows a_n ahead, plans the step"),
        ("c", "draft", "(c) knows r of each drafted token"),
        ("d", "draft", "(d) draft-feature logistic of r"),
        ("d", "draft+context", "(f) draft+context logistic of r"),
    ]
    print(f"{'rule':36s} {'tok/s':>7s}  over the best constant")
    print(f"{f'(a) best constant γ = {best}':36s} {ref.mean():7.1f}  1.000")
    for rule, features_name, label in rules:
        v = simulate_sampled(test, rule, *logistics[features_name], *costs, args.seeds)
        se = math.hypot(v.std() / math.sqrt(len(v)) / v.mean(), ref.std() / math.sqrt(len(ref)) / ref.mean())
        print(f"{label:36s} {v.mean():7.1f}  {v.mean() / ref.mean():.3f} ± {v.mean() / ref.mean() * se:.3f}")
    pos, neg = w * r, w * (1 - r)

    def corr(u: np.ndarray, v: np.ndarray) -> float:
        return float(np.cov(u, v, aweights=w)[0, 1] / np.sqrt(np.cov(u, aweights=w) * np.cov(v, aweights=w)))

    print(
        f"AUC vs Bernoulli(r) outcomes (rows reach-weighted): a_n {weighted_auc(a, pos, neg):.3f}, "
        f"r {weighted_auc(r, pos, neg):.3f}"
    )
    for name, (weight, bias) in logistics.items():
        pred = 1.0 / (1.0 + np.exp(-(x @ weight + bias)))
        r2 = 1 - np.average((a - pred) ** 2, weights=w) / np.average((a - np.average(a, weights=w)) ** 2, weights=w)
        print(
            f"{name} logistic: AUC {weighted_auc(pred, pos, neg):.3f} (first draft position only: "
            f"{weighted_auc(pred[first_pos], pos[first_pos], neg[first_pos]):.3f}); vs a_n: corr "
            f"{corr(pred, a):.3f}, R² {r2:.3f}; vs r: corr {corr(pred, r):.3f}"
        )
    print(f"a_n vs r: corr {corr(a, r):.3f}")

    gtrain, gtest = split(greedy)
    agree = np.concatenate([p["agree"] for p in gtest])
    print(f"\ngreedy: {len(gtrain)} training / {len(gtest)} scored prompts, mean acceptance {agree.mean():.3f}")
    constants = {k: simulate(gtest, lambda p, s, n, r, k=k: k, *costs[:2]) for k in range(1, MAX_GAMMA + 1)}
    gbest = max(constants, key=constants.__getitem__)
    print("constant γ: " + "  ".join(f"{k}: {v:.1f}" for k, v in constants.items()))
    gw, gb, _, _ = fit_logistic(*rows(gtrain, GREEDY_FEATURES))
    gx, gy = rows(gtest, GREEDY_FEATURES)

    def decide(prompt, start, n, rate):
        cumulative, gamma = 1.0, 0
        for j in range(start, min(start + MAX_GAMMA, n)):
            q = 1.0 / (1.0 + math.exp(-(np.dot(features(prompt, start, j, GREEDY_FEATURES), gw) + gb)))
            if cumulative * q / args.token_ms <= rate:
                return gamma, 1
            cumulative, gamma = cumulative * q, gamma + 1
        return gamma, 0

    hindsight = simulate(gtest, lambda p, s, n, r: int(p["run"][s]), *costs[:2])
    logistic = simulate(gtest, decide, *costs)
    print(f"{'rule':36s} {'tok/s':>7s}  over the best constant")
    print(f"{f'best constant γ = {gbest}':36s} {constants[gbest]:7.1f}  1.000")
    print(f"{'hindsight (knows each 0/1 outcome)':36s} {hindsight:7.1f}  {hindsight / constants[gbest]:.3f}")
    print(f"{'draft-feature logistic (own)':36s} {logistic:7.1f}  {logistic / constants[gbest]:.3f}")
    print(f"AUC of the logistic vs the 0/1 outcomes: {auc(gx @ gw + gb, gy):.3f}")


if __name__ == "__main__":
    main()
