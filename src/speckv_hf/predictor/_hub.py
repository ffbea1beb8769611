"""huggingface_hub's private names the predictor relies on, each behind one small function.

`PyTorchModelHubMixin` keeps the config that `save_pretrained` writes to config.json in `_hub_mixin_config`
(the releases pyproject.toml allows; the suite runs against the installed one).
"""

from __future__ import annotations

from typing import Any

__all__ = ["set_hub_config"]


def set_hub_config(model: Any, config: dict[str, Any]) -> None:
    """Sets what `save_pretrained` writes to a `PyTorchModelHubMixin` model's config.json.

    Args:
        model: the model (a `PyTorchModelHubMixin`).
        config: the config, as JSON-ready values.
    """
    model._hub_mixin_config = config
