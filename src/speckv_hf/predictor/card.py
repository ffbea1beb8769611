"""The model card a `GammaPredictor` writes with `save_pretrained` / `push_to_hub` (a Jinja template and its
values)."""

from __future__ import annotations

from typing import Any

__all__ = ["MODEL_CARD_TEMPLATE", "card_context"]

_CARD_METADATA_KEYS = ("pair", "compressions", "metrics", "command", "repo_id")

# Jinja, rendered by `ModelCard.from_template` with the values of `card_context` and the mixin's URLs.
MODEL_CARD_TEMPLATE = """---
{{ card_data }}
---

# speckv-hf acceptance predictor ({{ kind }})

{% if kind == "paper" -%}
The SpecKV paper's predictor ([arXiv 2605.02888](https://arxiv.org/abs/2605.02888)) as a [speckv-hf]({{ repo_url }})
`GammaPredictor`, converted from its published weights without pickle: from a step's draft entropy (bits) and
confidence, the target's compression and γ, the acceptance rate of a step of γ tokens (a linear output, clipped to
[0, 1] when used). The `speckv-paper` policy drafts the γ maximizing `clip(rate, 0, 1)·γ + 1`, from the previous
step's signals ([docs]({{ docs_url }})); it does not see what drafting costs.
{%- else -%}
A [speckv-hf]({{ repo_url }}) `GammaPredictor`: for each token a draft model proposes, the probability that the
target accepts it, from what is known before verification. speckv-hf uses it to choose how many tokens to draft
in transformers' assisted generation ([docs]({{ docs_url }})).
{%- endif %}

## Usage

```python
from speckv_hf import SpecKVGenerator

{% if kind == "paper" -%}
generator = SpecKVGenerator("speckv-paper", predictor="{{ repo_id }}")
{% else -%}
generator = SpecKVGenerator.from_pretrained("{{ repo_id }}")
{% endif -%}
outputs = target.generate(**inputs, assistant_model=draft, candidate_generator=generator, max_new_tokens=128)
```

## Predictor

- Kind: `{{ kind }}`{% if hidden_state_dim %} (plus the draft's hidden state, width {{ hidden_state_dim }}){% endif %}
- Feature schema version: {{ schema_version }}
- Hidden sizes: {{ hidden_sizes }}
- Features, in input order:
{% for name in features %}  {{ loop.index }}. `{{ name }}`
{% endfor %}
{%- if training %}
## Training
{% for label, value in training %}
- {{ label }}: {{ value }}
{%- endfor %}
{% endif %}
{%- if metrics %}
## Metrics

| Metric | Value |
|---|---|
{% for name, value in metrics.items() %}| {{ name }} | {{ value }} |
{% endfor %}
{%- endif %}
{%- if other_metadata %}
## Other metadata

```json
{{ other_metadata | tojson(indent=2) }}
```
{% endif %}"""


def card_context(config: dict[str, Any]) -> dict[str, Any]:
    """The values `MODEL_CARD_TEMPLATE` renders for a predictor.

    Args:
        config: the predictor's config (`GammaPredictor.config()`, what config.json holds), metadata included.

    Returns:
        The template's values by name.
    """
    metadata = config["metadata"]
    pair, compressions, command = (metadata.get(key) for key in ("pair", "compressions", "command"))
    if isinstance(pair, dict):
        pair = ", ".join(f"{role} `{name}`" for role, name in pair.items())
    if isinstance(compressions, list):
        compressions = ", ".join(f"`{compression}`" for compression in compressions)
    training = [("Pair", pair), ("Compressions", compressions), ("Command", command and f"`{command}`")]
    metrics = metadata.get("metrics")
    return {
        "repo_id": metadata.get("repo_id", "<repo_id>"),
        "kind": config["kind"],
        "schema_version": config["schema_version"],
        "features": list(config["features"]),
        "hidden_sizes": list(config["hidden_sizes"]),
        "hidden_state_dim": config["hidden_state_dim"],
        "training": [(label, value) for label, value in training if value],
        "metrics": metrics if isinstance(metrics, dict) else {},
        "other_metadata": {
            key: value
            for key, value in metadata.items()
            if key not in _CARD_METADATA_KEYS or (key == "metrics" and not isinstance(value, dict))
        },
    }
