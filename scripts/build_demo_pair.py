"""Training recipe for the embedded demo target/draft pair.

Everything is built offline from text that ships with every CPython install (standard-library source, its
docstrings, and the `pydoc_data.topics` help text) plus generated arithmetic/algebra worksheets and structured
records (JSON, CSV, INI). Run it with:

    python scripts/build_demo_pair.py --out src/speckv_hf/demo/pair

The train/held-out split is deterministic: stdlib files and pydoc topics are held out by a hash of their name
(`is_heldout`), generated documents are held out by using a different seed (`HELDOUT_SEED`). The demo prompt suite
(`prompts.json`) is cut only from held-out material.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import inspect
import itertools
import json
import logging
import math
import random
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CATEGORIES: tuple[str, ...] = ("code", "prose", "math", "structured")
HELDOUT_MODULUS = 16
TRAIN_SEED = 1234
HELDOUT_SEED = 98765
SPECIAL_TOKENS = ("<s>", "</s>", "<pad>")
SKIP_DIRS = frozenset(
    {"test", "tests", "site-packages", "idlelib", "lib2to3", "__pycache__", "turtledemo", "ensurepip", "encodings"}
)
SKIP_DIRS |= {"pydoc_data", "Tools", "tkinter"}
MIX = {"code": 0.35, "prose": 0.25, "math": 0.2, "structured": 0.2}

logger = logging.getLogger("build_demo_pair")


# ----------------------------------------------------------------------------------------------------------------
# Deterministic split
# ----------------------------------------------------------------------------------------------------------------


def is_heldout(source: str) -> bool:
    """Returns whether a source document belongs to the held-out split.

    Args:
        source (`str`):
            Source key such as `"stdlib:json/decoder.py"`, `"topic:assert"` or `"generated:math:98765"`. Generated
            sources are held out exactly when their seed is `HELDOUT_SEED`; other sources by a hash of the key.

    Returns:
        `bool`: `True` for held-out sources (never trained on), `False` for training sources.
    """
    if source.startswith("generated:"):
        return source.rsplit(":", 1)[-1] == str(HELDOUT_SEED)
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return digest[0] % HELDOUT_MODULUS == 0


def stdlib_root() -> Path:
    """Returns the directory of the running interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_sources() -> dict[str, Path]:
    """Lists the stdlib `.py` files used for the corpus, keyed by `"stdlib:<relative path>"`.

    Returns:
        `dict[str, Path]`: Sorted mapping from source key to file path (tests, site-packages and noisy packages
        skipped).
    """
    root = stdlib_root()
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if set(rel.parts[:-1]) & SKIP_DIRS or rel.parts[0].startswith("config-"):
            continue
        found[f"stdlib:{rel.as_posix()}"] = path
    return found


# ----------------------------------------------------------------------------------------------------------------
# Corpus
# ----------------------------------------------------------------------------------------------------------------


def read_source(path: Path) -> str | None:
    """Reads a Python file, returning `None` when it is not clean UTF-8 or is huge."""
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None
    return text if len(text) < 400_000 else None


def extract_docstrings(source: str) -> list[str]:
    """Extracts module, class and function docstrings from Python source with `ast`.

    Args:
        source (`str`): Python source code.

    Returns:
        `list[str]`: Cleaned docstrings of at least 80 characters, in source order.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    docs = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc and len(doc) >= 80:
                docs.append(doc)
    return docs


def pydoc_topics() -> dict[str, str]:
    """Returns the `pydoc_data.topics` help texts keyed by `"topic:<name>"`."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # pragma: no cover - every CPython ships it
        return {}
    return {f"topic:{name}": inspect.cleandoc(text) for name, text in sorted(topics.items())}


def natural_documents(heldout: bool) -> dict[str, list[tuple[str, str]]]:
    """Collects code and prose documents from the standard library for one split.

    Args:
        heldout (`bool`): Whether to collect the held-out split instead of the training split.

    Returns:
        `dict[str, list[tuple[str, str]]]`: For `"code"` and `"prose"`, a list of `(source key, text)` documents.
    """
    docs: dict[str, list[tuple[str, str]]] = {"code": [], "prose": []}
    for key, path in stdlib_sources().items():
        if is_heldout(key) != heldout:
            continue
        text = read_source(path)
        if text is None:
            continue
        docs["code"].append((key, text))
        docs["prose"].extend((key, doc) for doc in extract_docstrings(text))
    for key, text in pydoc_topics().items():
        if is_heldout(key) == heldout:
            docs["prose"].append((key, text))
    return docs


# --- generated math -----------------------------------------------------------------------------------------------


def _arith(rng: random.Random) -> str:
    op = rng.choice("+-*")
    a, b = rng.randint(2, 99), rng.randint(2, 99 if op != "*" else 12)
    result = {"+": a + b, "-": a - b, "*": a * b}[op]
    return f"{a} {op} {b} = {result}"


def _two_step(rng: random.Random) -> str:
    a, b, c = rng.randint(2, 40), rng.randint(2, 40), rng.randint(2, 9)
    if rng.random() < 0.5:
        return f"({a} + {b}) * {c} = {a + b} * {c} = {(a + b) * c}"
    return f"{a} * {c} + {b} = {a * c} + {b} = {a * c + b}"


def _linear(rng: random.Random) -> str:
    var = rng.choice("xyn")
    a, x, b = rng.randint(2, 9), rng.randint(-12, 20), rng.randint(1, 40)
    c = a * x + b
    return "\n".join(
        [
            f"Solve {a}{var} + {b} = {c}.",
            f"{a}{var} + {b} = {c}",
            f"{a}{var} = {c} - {b}",
            f"{a}{var} = {c - b}",
            f"{var} = {c - b} / {a}",
            f"{var} = {x}",
            f"Check: {a} * {x} + {b} = {a * x + b}",
        ]
    )


def _expand(rng: random.Random) -> str:
    a, b, c = rng.randint(2, 9), rng.randint(1, 9), rng.randint(1, 9)
    return "\n".join(
        [
            f"Expand {a}(x + {b}) + {c}x.",
            f"{a}(x + {b}) + {c}x = {a}x + {a * b} + {c}x",
            f"{a}x + {a * b} + {c}x = {a + c}x + {a * b}",
        ]
    )


def _sum_list(rng: random.Random) -> str:
    nums = [rng.randint(1, 50) for _ in range(rng.randint(3, 5))]
    lines, total = [f"Add {', '.join(map(str, nums))}."], nums[0]
    for num in nums[1:]:
        lines.append(f"{total} + {num} = {total + num}")
        total += num
    lines.append(f"Total: {total}")
    return "\n".join(lines)


MATH_PROBLEMS: tuple[Callable[[random.Random], str], ...] = (_arith, _two_step, _linear, _expand, _sum_list)


def math_document(rng: random.Random) -> str:
    """Generates one worksheet of arithmetic and algebra problems with worked steps."""
    lines = [f"# Worksheet {rng.randint(1, 999)}", ""]
    for number in range(1, rng.randint(4, 9)):
        lines.append(f"Problem {number}:")
        lines.append(rng.choice(MATH_PROBLEMS)(rng))
        lines.append("")
    return "\n".join(lines)


# --- generated structured -----------------------------------------------------------------------------------------

FIRST_NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "oscar")
LAST_NAMES = ("smith", "jones", "brown", "taylor", "wilson", "davies", "evans", "thomas", "roberts", "walker")
CITIES = ("London", "Paris", "Berlin", "Madrid", "Rome", "Vienna", "Oslo", "Dublin", "Lisbon", "Prague", "Warsaw")
TAGS = ("admin", "beta", "staff", "guest", "vip", "trial", "internal", "legacy")
PRODUCTS = ("widget", "gadget", "bolt", "nut", "screw", "gear", "spring", "valve", "pump", "cable")
DOMAINS = ("example.com", "example.org", "mail.test")


def _person(rng: random.Random, ident: int) -> dict[str, object]:
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    return {
        "id": ident,
        "name": f"{first.title()} {last.title()}",
        "email": f"{first}.{last}@{rng.choice(DOMAINS)}",
        "age": rng.randint(18, 80),
        "city": rng.choice(CITIES),
        "active": rng.random() < 0.7,
        "score": round(rng.uniform(0, 100), 1),
        "tags": rng.sample(TAGS, rng.randint(0, 3)),
    }


def _json_doc(rng: random.Random) -> str:
    start = rng.randint(1, 900)
    records = [_person(rng, start + i) for i in range(rng.randint(2, 6))]
    if rng.random() < 0.5:
        return json.dumps(records, indent=2)
    return json.dumps({"count": len(records), "page": rng.randint(1, 20), "results": records}, indent=2)


def _csv_doc(rng: random.Random) -> str:
    if rng.random() < 0.5:
        lines = ["id,name,email,age,city,active"]
        for i in range(rng.randint(4, 12)):
            p = _person(rng, i + 1)
            lines.append(f"{p['id']},{p['name']},{p['email']},{p['age']},{p['city']},{str(p['active']).lower()}")
    else:
        lines = ["sku,product,quantity,unit_price,total"]
        for _ in range(rng.randint(4, 12)):
            qty, price = rng.randint(1, 50), round(rng.uniform(0.5, 40), 2)
            sku = f"SKU-{rng.randint(1000, 9999)}"
            lines.append(f"{sku},{rng.choice(PRODUCTS)},{qty},{price:.2f},{qty * price:.2f}")
    return "\n".join(lines)


def _ini_doc(rng: random.Random) -> str:
    host = rng.choice(("localhost", "127.0.0.1", "db.example.com", "cache.internal", "0.0.0.0"))
    sections = {
        "server": {"host": host, "port": rng.choice((80, 443, 8000, 8080, 5000)), "workers": rng.randint(1, 16)},
        "database": {
            "driver": rng.choice(("postgresql", "mysql", "sqlite")),
            "name": f"{rng.choice(PRODUCTS)}_db",
            "user": rng.choice(FIRST_NAMES),
            "pool_size": rng.choice((5, 10, 20)),
        },
        "logging": {"level": rng.choice(("DEBUG", "INFO", "WARNING", "ERROR")), "file": "/var/log/app.log"},
        "cache": {"enabled": rng.choice(("true", "false")), "ttl": rng.choice((60, 300, 3600))},
    }
    names = rng.sample(list(sections), rng.randint(2, 4))
    lines = [f"; config for {rng.choice(PRODUCTS)} service"]
    for name in names:
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {value}" for key, value in sections[name].items())
        lines.append("")
    return "\n".join(lines)


STRUCTURED_DOCS: tuple[Callable[[random.Random], str], ...] = (_json_doc, _csv_doc, _ini_doc)


def structured_document(rng: random.Random) -> str:
    """Generates one JSON, CSV or INI document drawn from a small consistent vocabulary."""
    return rng.choice(STRUCTURED_DOCS)(rng)


def generated_documents(category: str, seed: int, num_chars: int) -> list[tuple[str, str]]:
    """Generates `math` or `structured` documents until about `num_chars` characters.

    Args:
        category (`str`): `"math"` or `"structured"`.
        seed (`int`): Random seed (use `HELDOUT_SEED` for held-out text, `TRAIN_SEED` for training text).
        num_chars (`int`): Approximate total number of characters to generate.

    Returns:
        `list[tuple[str, str]]`: `(source key, text)` documents; the key is `"generated:<category>:<seed>"`.
    """
    make = {"math": math_document, "structured": structured_document}[category]
    rng, docs, total = random.Random(f"{category}-{seed}"), [], 0
    while total < num_chars:
        doc = make(rng)
        docs.append((f"generated:{category}:{seed}", doc))
        total += len(doc)
    return docs


def build_corpus(heldout: bool, generated_chars: int = 3_000_000) -> dict[str, list[tuple[str, str]]]:
    """Builds the documents of every category for one split.

    Args:
        heldout (`bool`): Whether to build the held-out split.
        generated_chars (`int`, *optional*, defaults to 3_000_000): Characters of generated text per category.

    Returns:
        `dict[str, list[tuple[str, str]]]`: Documents per category in `CATEGORIES`.
    """
    docs = natural_documents(heldout)
    seed = HELDOUT_SEED if heldout else TRAIN_SEED
    chars = generated_chars // 10 if heldout else generated_chars
    docs["math"] = generated_documents("math", seed, chars)
    docs["structured"] = generated_documents("structured", seed, chars)
    return {category: docs[category] for category in CATEGORIES}


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------------


def train_tokenizer(corpus: dict[str, list[tuple[str, str]]], vocab_size: int = 4096):
    """Trains a byte-level BPE tokenizer and wraps it as a `PreTrainedTokenizerFast`.

    Args:
        corpus (`dict[str, list[tuple[str, str]]]`): Training documents per category.
        vocab_size (`int`, *optional*, defaults to 4096): Vocabulary size including special tokens.

    Returns:
        `PreTrainedTokenizerFast`: Tokenizer with `<s>`/`</s>`/`<pad>` that prepends `<s>` to every sequence.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    rng = random.Random(TRAIN_SEED)
    texts = [text for category in CATEGORIES for _, text in corpus[category] if rng.random() < 0.5]
    tok.train_from_iterator(texts, trainer=trainer)
    bos = SPECIAL_TOKENS[0]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL_TOKENS[0],
        eos_token=SPECIAL_TOKENS[1],
        pad_token=SPECIAL_TOKENS[2],
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )
    if len(tokenizer) != vocab_size:
        raise RuntimeError(f"tokenizer has {len(tokenizer)} tokens, expected {vocab_size}")
    return tokenizer


def encode_category(tokenizer, docs: list[tuple[str, str]]):
    """Encodes documents into one flat `torch.long` stream, each document followed by `</s>`."""
    import torch

    encoded = tokenizer([text for _, text in docs], add_special_tokens=False)["input_ids"]
    flat: list[int] = []
    for ids in encoded:
        flat.extend(ids)
        flat.append(tokenizer.eos_token_id)
    return torch.tensor(flat, dtype=torch.long)


# ----------------------------------------------------------------------------------------------------------------
# Prompt suite
# ----------------------------------------------------------------------------------------------------------------


def _line_starts(text: str) -> list[int]:
    starts, pos = [], 0
    for line in text.splitlines(keepends=True):
        if line.strip() and not line.lstrip().startswith("#"):
            starts.append(pos)
        pos += len(line)
    return starts


def cut_prompt(tokenizer, text: str, rng: random.Random, min_tokens: int = 24, max_tokens: int = 48) -> str | None:
    """Cuts a prompt from a document: starts at a line start, ends mid-stream after 24-48 tokens.

    Args:
        tokenizer (`PreTrainedTokenizerFast`): The pair's tokenizer.
        text (`str`): Held-out document.
        rng (`random.Random`): Random generator choosing the window.
        min_tokens (`int`, *optional*, defaults to 24): Minimum prompt length in tokens.
        max_tokens (`int`, *optional*, defaults to 48): Maximum prompt length in tokens.

    Returns:
        `str | None`: Prompt text, or `None` when the document is too short.
    """
    starts = _line_starts(text)
    rng.shuffle(starts)
    for start in starts[:10]:
        ids = tokenizer(text[start : start + 2000], add_special_tokens=False)["input_ids"]
        length = rng.randint(min_tokens, max_tokens)
        if len(ids) < length + 16:
            continue
        prompt = tokenizer.decode(ids[:length])
        if prompt.strip() and not prompt.endswith((" ", "\n")) and "\ufffd" not in prompt:
            return prompt
    return None


def _structured_kind(text: str) -> str:
    if text.startswith(("[", "{")):
        return "json"
    return "ini" if text.startswith(";") else "csv"


def _interleave_kinds(docs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Reorders structured documents round-robin over JSON, CSV and INI so every format gets prompts."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for doc in docs:
        groups.setdefault(_structured_kind(doc[1]), []).append(doc)
    return [doc for row in itertools.zip_longest(*groups.values()) for doc in row if doc is not None]


def build_prompts(tokenizer, heldout: dict[str, list[tuple[str, str]]], per_category: int = 24) -> dict:
    """Builds the versioned prompt suite from held-out documents.

    Args:
        tokenizer (`PreTrainedTokenizerFast`): The pair's tokenizer (used to size prompts in tokens).
        heldout (`dict[str, list[tuple[str, str]]]`): Held-out documents per category.
        per_category (`int`, *optional*, defaults to 24): Prompts per category.

    Returns:
        `dict`: `{"version": 1, "prompts": [{"id", "category", "source", "text"}, ...]}`.
    """
    prompts = []
    for category in CATEGORIES:
        rng = random.Random(f"prompts-{category}-{HELDOUT_SEED}")
        min_chars = 300 if category in ("code", "prose") else 150
        docs = [doc for doc in heldout[category] if len(doc[1]) >= min_chars]
        rng.shuffle(docs)
        if category == "structured":
            docs = _interleave_kinds(docs)
        chosen: list[tuple[str, str]] = []
        for source, text in docs:
            if len(chosen) == per_category:
                break
            if category in ("code", "prose") and sum(s == source for s, _ in chosen) >= 2:
                continue
            prompt = cut_prompt(tokenizer, text, rng)
            if prompt is not None and prompt not in {p for _, p in chosen}:
                chosen.append((source, prompt))
        if len(chosen) < per_category:
            raise RuntimeError(f"only {len(chosen)} held-out prompts for {category!r}")
        for index, (source, text) in enumerate(chosen):
            prompts.append({"id": f"{category}-{index:03d}", "category": category, "source": source, "text": text})
    return {"version": 1, "prompts": prompts}


# ----------------------------------------------------------------------------------------------------------------
# Models and training
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ModelShape:
    """Llama shape; every linear input width (hidden, heads * 64, intermediate) is a multiple of 64."""

    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int

    def config(self, tokenizer):
        """Returns the `LlamaConfig` for this shape and tokenizer."""
        from transformers import LlamaConfig

        for width in (self.hidden_size, self.intermediate_size):
            if width % 64:
                raise ValueError(f"widths must be multiples of 64 (bitsandbytes CPU kernels), got {width}")
        return LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.hidden_size // 64,
            num_key_value_heads=self.hidden_size // 64,
            head_dim=64,
            max_position_embeddings=1024,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )


class Batcher:
    """Samples `<s>`-prefixed training windows from per-category token streams with fixed mixing weights."""

    def __init__(self, streams: dict, seq_len: int, bos_id: int, seed: int):
        import torch

        self.streams, self.seq_len, self.bos_id = streams, seq_len, bos_id
        self.generator = torch.Generator().manual_seed(seed)
        self.weights = torch.tensor([MIX[c] for c in CATEGORIES])

    def sample(self, batch_size: int):
        """Returns a `(batch_size, seq_len)` tensor of token ids."""
        import torch

        cats = torch.multinomial(self.weights, batch_size, replacement=True, generator=self.generator)
        rows = []
        for cat in cats.tolist():
            stream = self.streams[CATEGORIES[cat]]
            start = int(torch.randint(0, len(stream) - self.seq_len, (1,), generator=self.generator))
            window = stream[start : start + self.seq_len - 1]
            rows.append(torch.cat([torch.tensor([self.bos_id]), window]))
        return torch.stack(rows)


def eval_batches(streams: dict, seq_len: int, bos_id: int, per_category: int = 8) -> dict:
    """Fixed held-out evaluation windows per category."""
    import torch

    batcher = Batcher(streams, seq_len, bos_id, seed=HELDOUT_SEED)
    out = {}
    for index, category in enumerate(CATEGORIES):
        batcher.weights = torch.nn.functional.one_hot(torch.tensor(index), len(CATEGORIES)).float()
        out[category] = batcher.sample(per_category)
    return out


def heldout_loss(model, batches: dict) -> dict[str, float]:
    """Mean next-token cross-entropy per category on the held-out windows (plus `"all"`)."""
    import torch

    model.eval()
    losses = {}
    with torch.no_grad():
        for category, ids in batches.items():
            losses[category] = float(model(input_ids=ids, labels=ids).loss)
    losses["all"] = sum(losses.values()) / len(losses)
    model.train()
    return losses


def lr_factor(progress: float, warmup: float = 0.03, floor: float = 0.1) -> float:
    """Linear warmup then cosine decay to `floor` as a function of training progress in [0, 1]."""
    if progress < warmup:
        return max(progress / warmup, 0.01)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / (1 - warmup))))
    return floor + (1 - floor) * cosine


def train_loop(
    model,
    batcher: Batcher,
    eval_set: dict,
    args: argparse.Namespace,
    budget_s: float,
    lr: float,
    name: str,
    teacher=None,
) -> dict:
    """Trains `model` (optionally distilling from `teacher`) with AdamW and a cosine schedule.

    Training stops after `args.steps` steps when given, else when `budget_s` seconds have elapsed (the schedule then
    follows elapsed time).

    Args:
        model (`LlamaForCausalLM`): Model to train.
        batcher (`Batcher`): Training batch sampler.
        eval_set (`dict`): Held-out evaluation windows.
        args (`argparse.Namespace`): Parsed CLI arguments.
        budget_s (`float`): Wall-clock budget in seconds.
        lr (`float`): Peak learning rate.
        name (`str`): Name for log lines.
        teacher (`LlamaForCausalLM`, *optional*): Frozen target to distil from.

    Returns:
        `dict`: Training statistics (steps, tokens, seconds, tokens/s, held-out losses).
    """
    import torch
    import torch.nn.functional as F

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
    )
    model.train()
    start, step, tokens, last_eval = time.perf_counter(), 0, 0, time.perf_counter()
    while True:
        elapsed = time.perf_counter() - start
        progress = step / args.steps if args.steps else elapsed / budget_s
        if progress >= 1.0:
            break
        for group in optimizer.param_groups:
            group["lr"] = lr * lr_factor(progress)
        ids = batcher.sample(args.batch_size)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            logits = model(input_ids=ids).logits[:, :-1].float()
        ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1))
        loss = ce
        if teacher is not None:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                t_logits = teacher(input_ids=ids).logits[:, :-1].float()
            kl = F.kl_div(
                F.log_softmax(logits / args.temperature, -1).reshape(-1, logits.size(-1)),
                F.log_softmax(t_logits / args.temperature, -1).reshape(-1, logits.size(-1)),
                log_target=True,
                reduction="batchmean",
            ) * (args.temperature**2)
            loss = args.kd_weight * kl + (1 - args.kd_weight) * ce
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        tokens += ids.numel()
        if step % args.log_every == 0:
            rate = tokens / (time.perf_counter() - start)
            logger.info(
                "%s step %d loss %.3f ce %.3f | %.0f tok/s | %.0fs", name, step, float(loss), float(ce), rate, elapsed
            )
        if time.perf_counter() - last_eval > args.eval_every_s:
            logger.info("%s step %d held-out %s", name, step, _fmt(heldout_loss(model, eval_set)))
            last_eval = time.perf_counter()
    seconds = time.perf_counter() - start
    losses = heldout_loss(model, eval_set)
    logger.info("%s done: %d steps, %d tokens, %.0fs, held-out %s", name, step, tokens, seconds, _fmt(losses))
    model.eval()
    return {
        "steps": step,
        "tokens": tokens,
        "seconds": round(seconds, 1),
        "tokens_per_s": round(tokens / seconds),
        "heldout_loss": {k: round(v, 4) for k, v in losses.items()},
    }


def _fmt(losses: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in losses.items())


def save_model(model, tokenizer, out_dir: Path, save_dtype) -> None:
    """Saves a model (weights cast to `save_dtype`), its tokenizer and a greedy `generation_config.json`."""
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    model.to(save_dtype).save_pretrained(out_dir, safe_serialization=True)
    model.float()
    tokenizer.save_pretrained(out_dir)
    # transformers 5 writes its internal class name; the public alias also loads with transformers 4.x.
    config_file = out_dir / "tokenizer_config.json"
    tokenizer_config = json.loads(config_file.read_text())
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    # Llama takes no token_type_ids; transformers 4.x tokenizers would return them unless told.
    tokenizer_config["model_input_names"] = ["input_ids", "attention_mask"]
    config_file.write_text(json.dumps(tokenizer_config, indent=2) + "\n")


def count_params(model) -> int:
    """Number of unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the recipe's command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (gets target/ and draft/)")
    parser.add_argument("--prompts-out", type=Path, default=None, help="also write the held-out prompt suite here")
    parser.add_argument("--target-minutes", type=float, default=32.0)
    parser.add_argument("--draft-minutes", type=float, default=13.0)
    parser.add_argument("--steps", type=int, default=0, help="fixed step count per model (overrides the budgets)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--target-shape", default="384,6,1024", help="hidden,layers,intermediate")
    parser.add_argument("--draft-shape", default="192,1,512", help="hidden,layers,intermediate")
    parser.add_argument("--target-lr", type=float, default=2e-3)
    parser.add_argument("--draft-lr", type=float, default=3e-3)
    parser.add_argument("--kd-weight", type=float, default=0.8, help="weight of KL-to-target in the draft loss")
    parser.add_argument("--temperature", type=float, default=1.0, help="distillation softening temperature")
    parser.add_argument("--save-dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    parser.add_argument(
        "--no-bf16", dest="bf16", action="store_false", help="train in plain fp32 instead of bf16 autocast"
    )
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--eval-every-s", type=float, default=300.0)
    parser.add_argument(
        "--prompts-only",
        action="store_true",
        help="only rebuild --prompts-out with the tokenizer already saved in --out/target",
    )
    parser.add_argument("--skip-draft", action="store_true", help="only build the tokenizer/prompts and target")
    return parser.parse_args(argv)


def _shape(text: str) -> ModelShape:
    hidden, layers, intermediate = (int(x) for x in text.split(","))
    return ModelShape(hidden, layers, intermediate)


def _write_prompts_only(args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    if args.prompts_out is None:
        raise SystemExit("--prompts-only needs --prompts-out")
    tokenizer = AutoTokenizer.from_pretrained(args.out / "target", local_files_only=True)
    args.prompts_out.write_text(json.dumps(build_prompts(tokenizer, build_corpus(heldout=True)), indent=1) + "\n")
    logger.info("wrote prompt suite to %s", args.prompts_out)


def main(argv: list[str] | None = None) -> None:
    """Runs the whole recipe: corpus, tokenizer, prompts, target, distilled draft."""
    import torch
    from transformers import LlamaForCausalLM

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    if args.prompts_only:
        _write_prompts_only(args)
        return
    train_docs, heldout_docs = build_corpus(heldout=False), build_corpus(heldout=True)
    for category in CATEGORIES:
        logger.info(
            "corpus %s: %d train docs (%.1f MB), %d held-out docs",
            category,
            len(train_docs[category]),
            sum(len(t) for _, t in train_docs[category]) / 1e6,
            len(heldout_docs[category]),
        )
    tokenizer = train_tokenizer(train_docs, args.vocab_size)
    logger.info("tokenizer trained (%d tokens) at %.0fs", len(tokenizer), time.perf_counter() - t0)
    if args.prompts_out is not None:
        args.prompts_out.write_text(json.dumps(build_prompts(tokenizer, heldout_docs), indent=1) + "\n")
        logger.info("wrote prompt suite to %s", args.prompts_out)
    train_streams = {c: encode_category(tokenizer, train_docs[c]) for c in CATEGORIES}
    heldout_streams = {c: encode_category(tokenizer, heldout_docs[c]) for c in CATEGORIES}
    logger.info("train tokens %s at %.0fs", {c: len(s) for c, s in train_streams.items()}, time.perf_counter() - t0)
    eval_set = eval_batches(heldout_streams, args.seq_len, tokenizer.bos_token_id)
    save_dtype = getattr(torch, args.save_dtype)
    report: dict = {"argv": sys.argv[1:], "python": sys.version.split()[0], "torch": torch.__version__}

    target = LlamaForCausalLM(_shape(args.target_shape).config(tokenizer))
    report["target_params"] = count_params(target)
    logger.info("target: %d parameters", report["target_params"])
    batcher = Batcher(train_streams, args.seq_len, tokenizer.bos_token_id, seed=args.seed)
    report["target"] = train_loop(target, batcher, eval_set, args, args.target_minutes * 60, args.target_lr, "target")
    save_model(target, tokenizer, args.out / "target", save_dtype)

    if not args.skip_draft:
        target.requires_grad_(False)
        target.eval()
        torch.manual_seed(args.seed + 1)
        draft = LlamaForCausalLM(_shape(args.draft_shape).config(tokenizer))
        report["draft_params"] = count_params(draft)
        logger.info("draft: %d parameters", report["draft_params"])
        batcher = Batcher(train_streams, args.seq_len, tokenizer.bos_token_id, seed=args.seed + 1)
        report["draft"] = train_loop(
            draft, batcher, eval_set, args, args.draft_minutes * 60, args.draft_lr, "draft", teacher=target
        )
        save_model(draft, tokenizer, args.out / "draft", save_dtype)
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    (args.out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    logger.info("all done in %.0fs: %s", report["wall_s"], json.dumps(report))


if __name__ == "__main__":
    main()
