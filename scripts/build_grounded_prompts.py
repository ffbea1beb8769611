"""Builds the `grounded` category of the embedded prompt suite: prompts whose continuation repeats the prompt.

Real use repeats the input: an edited file, a table continued, an answer quoting a document. The four other
categories are cut from running text, where what repeats is what the model loops on; here the repetition is
grounded in the prompt. Each prompt is a held-out generated document followed by the start of a copy of it:

- `ini`: a config file, then a backup config with the same sections, cut after the first key;
- `json`: a list of records, then the same list again, cut inside the first name;
- `csv`: a table of people, then the same table again, cut after the first id.

The formats are the structured ones the pair was trained on (`scripts/build_demo_pair.py`): the embedded target copies
code and prose given in its prompt too poorly to ground anything (tried: a function or a block of code, a docstring,
repeated after the original; none of its greedy 4-grams came from the prompt). Documents come from the recipe's
generators with the held-out seed, so no prompt was trained on. Run it with:

    python scripts/build_grounded_prompts.py src/speckv_hf/demo/prompts.json

It replaces the `grounded` prompts of the file and keeps every other prompt as it is.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_demo_pair as recipe

CATEGORY = "grounded"
PER_CATEGORY = 24
SOURCE = f"generated:{CATEGORY}:{recipe.HELDOUT_SEED}"


def ini_prompt(rng: random.Random) -> str:
    """A config, then a backup config of the same service that starts with the same first section and key."""
    doc = recipe._ini_doc(rng)
    lines = doc.split("\n")
    copy_head = lines[0].replace("; config for", "; backup config for", 1)
    return f"{doc}\n{copy_head}\n{lines[1]}\n{lines[2].split(' = ')[0]}"


def json_prompt(rng: random.Random) -> str:
    """Two records (the copy stays within the 256 tokens the pair was trained on), then the same list again, cut
    three characters into the first name."""
    records = [recipe._person(rng, rng.randint(1, 900)) for _ in range(2)]
    text = json.dumps(records, indent=2)
    cut = text.index('"name": "') + len('"name": "') + 3
    return f"{text}\n{text[:cut]}"


def csv_prompt(rng: random.Random) -> str:
    """A table of four to six people, then its header again and the first id."""
    lines = ["id,name,email,age,city,active"]
    for index in range(rng.randint(4, 6)):
        p = recipe._person(rng, index + 1)
        lines.append(f"{p['id']},{p['name']},{p['email']},{p['age']},{p['city']},{str(p['active']).lower()}")
    return "\n".join(lines) + f"\n\n{lines[0]}\n1,"


KINDS = (ini_prompt, json_prompt, csv_prompt)


def grounded_prompts(per_category: int = PER_CATEGORY) -> list[dict[str, str]]:
    """The category's prompts, rotating through the kinds, deterministic.

    Args:
        per_category: prompts to build (as many as every other category has).

    Returns:
        `{"id", "category", "source", "text"}` per prompt, ids `grounded-000` on.
    """
    rng = random.Random(f"prompts-{CATEGORY}-{recipe.HELDOUT_SEED}")
    return [
        {"id": f"{CATEGORY}-{index:03d}", "category": CATEGORY, "source": SOURCE, "text": KINDS[index % 3](rng)}
        for index in range(per_category)
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompts", type=Path, help="the suite to update (src/speckv_hf/demo/prompts.json)")
    args = parser.parse_args(argv)
    suite = json.loads(args.prompts.read_text(encoding="utf-8"))
    kept = [p for p in suite["prompts"] if p["category"] != CATEGORY]
    suite["prompts"] = kept + grounded_prompts()
    args.prompts.write_text(json.dumps(suite, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
