"""GammaPredictor: shapes, strict save/load through safetensors, the Hub cache, the card, the feature schema."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from speckv_hf.core.signals import TokenSignals
from speckv_hf.predictor.features import (
    FEATURE_SCHEMA_VERSION,
    PORTABLE_FEATURES,
    RECORDED_FEATURES,
    SIGNAL_FEATURES,
    STEP_FEATURES,
    FeatureSchema,
    PredictorSchemaError,
    feature_matrix,
    signal_features,
    step_features,
    token_features,
)
from speckv_hf.predictor.loading import PredictorLoadError
from speckv_hf.predictor.model import GammaPredictor

COMMIT = "0123456789abcdef0123456789abcdef01234567"
N = len(PORTABLE_FEATURES)
METADATA = {
    "pair": {"draft": "org/draft-68m", "target": "org/target-7b"},
    "compressions": ["fp16", "bnb-int8"],
    "metrics": {"auc": 0.8125, "brier": 0.1375},
    "command": "speckv train records/ --out predictor",
}


def randomized(predictor: GammaPredictor, seed: int = 0) -> GammaPredictor:
    """Gives every weight and the normalisation random values, so a load that did nothing cannot pass."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in predictor.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))  # 0.3: no saturation
    num_features = len(predictor.features)
    predictor.set_normalization(
        torch.randn(num_features, generator=generator), torch.rand(num_features, generator=generator) + 0.5
    )
    return predictor


def inputs(predictor: GammaPredictor, batch: int = 7, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, len(predictor.features), generator=generator)
    hidden = torch.randn(batch, predictor.hidden_state_dim, generator=generator) if predictor.kind == "pair" else None
    return features, hidden


@pytest.fixture
def saved(tmp_path: Path) -> tuple[GammaPredictor, Path]:
    predictor = randomized(GammaPredictor(list(PORTABLE_FEATURES), hidden_sizes=[8, 4], metadata=METADATA))
    path = tmp_path / "predictor"
    predictor.save_pretrained(path, model_card_kwargs={"repo_id": "org/predictor"})
    return predictor, path


@pytest.fixture
def no_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load (pickle) must never be called")

    monkeypatch.setattr(torch, "load", refuse)


def test_forward_and_predict_proba_shapes_and_range() -> None:
    predictor = randomized(GammaPredictor(list(PORTABLE_FEATURES)))
    features, _ = inputs(predictor, batch=5)
    logits = predictor(features)
    probabilities = predictor.predict_proba(features)
    assert logits.shape == probabilities.shape == (5,)
    assert logits.requires_grad and not probabilities.requires_grad
    assert ((probabilities > 0) & (probabilities < 1)).all()
    assert torch.allclose(probabilities, torch.sigmoid(logits.detach()))
    assert predictor(features[:0]).shape == (0,)


@pytest.mark.parametrize(
    ("features", "hidden_states", "message"),
    [
        (torch.zeros(N), None, "features.unsqueeze(0)"),
        (
            torch.zeros(2, 10),
            None,
            f"must have shape (batch, {N}), one column per feature in the order ['confidence',",
        ),
        (torch.zeros(2, N, 1), None, f"got (2, {N}, 1)"),
        (torch.zeros(2, N), torch.zeros(2, 4), "reads no hidden_states"),
    ],
)
def test_forward_shape_errors_are_clear(features, hidden_states, message) -> None:
    predictor = GammaPredictor(list(PORTABLE_FEATURES))
    with pytest.raises(ValueError) as info:
        predictor(features, hidden_states)
    assert message in str(info.value)


def test_pair_requires_and_uses_hidden_states() -> None:
    predictor = randomized(
        GammaPredictor(["confidence", "entropy"], hidden_sizes=[4], kind="pair", hidden_state_dim=3)
    )
    features, hidden = inputs(predictor, batch=2)
    with pytest.raises(ValueError, match=r"'pair': pass hidden_states of shape \(2, 3\)"):
        predictor(features)
    with pytest.raises(ValueError, match=r"hidden_states must have shape \(2, 3\).*got \(2, 4\)"):
        predictor(features, torch.zeros(2, 4))
    assert predictor(features, hidden).shape == (2,)
    assert not torch.equal(predictor(features, hidden), predictor(features, hidden.flip(-1)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"features": []}, "non-empty list of names"),
        ({"features": "confidence"}, "non-empty list of names"),
        ({"features": ["a", "b", "a"]}, "['a'] appear more than once"),
        ({"features": ["a", ""]}, "non-empty strings"),
        ({"features": ["a"], "hidden_sizes": [8, 0]}, "positive integers"),
        ({"features": ["a"], "kind": "oracle"}, "kind must be one of ['portable', 'pair']"),
        ({"features": ["a"], "kind": "pair"}, "pass hidden_state_dim="),
        ({"features": ["a"], "hidden_state_dim": 8}, "use kind='pair'"),
        ({"features": ["a"], "schema_version": FEATURE_SCHEMA_VERSION + 1}, "leave it at its default"),
        ({"features": ["a"], "metadata": {"when": object()}}, "JSON-serializable"),
        ({"features": ["a"], "metadata": {"auc": float("nan")}}, "JSON-serializable"),
    ],
)
def test_constructor_rejects_bad_config(kwargs, message) -> None:
    with pytest.raises(ValueError) as info:
        GammaPredictor(**kwargs)
    assert message in str(info.value)


def test_set_normalization_is_applied_and_checked() -> None:
    predictor = randomized(GammaPredictor(["a", "b"], hidden_sizes=[4]))
    predictor.set_normalization([1.0, 2.0], [2.0, 4.0])
    standardised = predictor(torch.tensor([[3.0, 10.0]]))  # ((3 - 1) / 2, (10 - 2) / 4) = (1, 2)
    predictor.set_normalization([0.0, 0.0], [1.0, 1.0])
    assert torch.equal(predictor(torch.tensor([[1.0, 2.0]])), standardised)
    assert not torch.equal(predictor(torch.tensor([[3.0, 10.0]])), standardised)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        predictor.set_normalization([0.0], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"not for \['b'\]: use 1.0 for constant features"):
        predictor.set_normalization([0.0, 0.0], [1.0, 0.0])


def test_init_is_deterministic_and_leaves_global_random_state() -> None:
    state = torch.get_rng_state()
    first, second = GammaPredictor(["a", "b"]), GammaPredictor(["a", "b"])
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(first.state_dict()[key], value) for key, value in second.state_dict().items())
    other = GammaPredictor(["a", "b"], init_seed=1)
    assert not torch.equal(first.state_dict()["mlp.0.weight"], other.state_dict()["mlp.0.weight"])


def test_round_trip_is_exact_and_writes_safetensors_only(saved, no_pickle) -> None:
    predictor, path = saved
    assert sorted(item.name for item in path.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((path / "config.json").read_text())
    assert config["features"] == list(PORTABLE_FEATURES)
    assert config["hidden_sizes"] == [8, 4]
    assert config["kind"] == "portable"
    assert config["hidden_state_dim"] == 0
    assert config["schema_version"] == FEATURE_SCHEMA_VERSION
    assert config["metadata"] == METADATA

    loaded = GammaPredictor.from_pretrained(path, expected_features=PORTABLE_FEATURES)
    features, _ = inputs(predictor)
    assert torch.equal(loaded(features), predictor(features))
    assert not torch.equal(GammaPredictor(**config)(features), predictor(features))  # the load did load
    assert loaded.schema == predictor.schema == FeatureSchema(FEATURE_SCHEMA_VERSION, PORTABLE_FEATURES)
    assert loaded.metadata == METADATA and not loaded.training


def test_model_card_lists_schema_features_and_metadata(saved) -> None:
    _, path = saved
    text = (path / "README.md").read_text()
    assert f"Feature schema version: {FEATURE_SCHEMA_VERSION}" in text
    assert all(f"`{name}`" in text for name in PORTABLE_FEATURES)
    assert "| auc | 0.8125 |" in text and "| brier | 0.1375 |" in text
    assert "draft `org/draft-68m`, target `org/target-7b`" in text
    assert "`fp16`, `bnb-int8`" in text and "speckv train records/ --out predictor" in text
    assert 'SpecKVGenerator.from_pretrained("org/predictor")' in text
    assert "Hidden sizes: [8, 4]" in text and "Kind: `portable`" in text
    card = ModelCard.load(path / "README.md")
    assert card.data.library_name == "speckv-hf"
    assert {"speckv", "speculative-decoding"} <= set(card.data.tags)


def test_model_card_without_metadata_has_placeholder_and_no_empty_sections(tmp_path: Path) -> None:
    GammaPredictor(["a"], kind="pair", hidden_state_dim=5).save_pretrained(tmp_path)
    text = (tmp_path / "README.md").read_text()
    assert 'SpecKVGenerator.from_pretrained("<repo_id>")' in text
    assert "hidden state, width 5" in text
    assert "## Metrics" not in text and "## Training" not in text


def test_push_to_hub_card_names_the_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    pushed = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kwargs):
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def upload_folder(self, folder_path, **kwargs):
            pushed["card"] = (Path(folder_path) / "README.md").read_text()
            return "commit-url"

    monkeypatch.setattr(huggingface_hub.hub_mixin, "HfApi", FakeApi)
    assert GammaPredictor(["a"]).push_to_hub("org/pushed") == "commit-url"
    assert 'SpecKVGenerator.from_pretrained("org/pushed")' in pushed["card"]


def hub_cache(tmp_path: Path, source: Path, files: tuple[str, ...] = ("config.json", "model.safetensors")) -> Path:
    """Lays out `source`'s files as the Hub cache of `org/predictor` at commit `COMMIT`."""
    repo = tmp_path / "hub" / "models--org--predictor"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for name in (*files, "README.md"):
        shutil.copy(source / name, snapshot / name)
    return tmp_path / "hub"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("revision", [None, COMMIT])
def test_loads_from_offline_hub_cache(saved, tmp_path, offline, no_pickle, revision) -> None:
    predictor, path = saved
    cache_dir = hub_cache(tmp_path, path)
    loaded = GammaPredictor.from_pretrained("org/predictor", cache_dir=cache_dir, revision=revision)
    features, _ = inputs(predictor)
    assert torch.equal(loaded(features), predictor(features))


def test_offline_cache_without_weights_is_a_clear_error(saved, tmp_path, offline) -> None:
    _, path = saved
    cache_dir = hub_cache(tmp_path, path, files=("config.json",))
    with pytest.raises(PredictorLoadError, match="not in the local cache and downloads are off"):
        GammaPredictor.from_pretrained("org/predictor", cache_dir=cache_dir)


def edit_config(path: Path, **changes) -> None:
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def test_other_schema_version_is_refused(saved) -> None:
    _, path = saved
    edit_config(path, schema_version=FEATURE_SCHEMA_VERSION + 1)
    with pytest.raises(PredictorLoadError) as info:
        GammaPredictor.from_pretrained(path)
    message = str(info.value)
    assert f"version {FEATURE_SCHEMA_VERSION + 1}" in message and f"version {FEATURE_SCHEMA_VERSION}:" in message
    assert "retrain" in message and "upgrade speckv-hf" in message


def test_expected_features_mismatch_names_missing_and_extra(tmp_path: Path) -> None:
    features = [name for name in PORTABLE_FEATURES if name != "margin"] + ["draft_temperature"]
    GammaPredictor(features).save_pretrained(tmp_path)
    with pytest.raises(PredictorSchemaError) as info:
        GammaPredictor.from_pretrained(tmp_path, expected_features=PORTABLE_FEATURES)
    message = str(info.value)
    assert "missing features ['margin']" in message and "extra features ['draft_temperature']" in message
    assert GammaPredictor.from_pretrained(tmp_path, expected_features=features).features == tuple(features)


def test_feature_schema_names_every_difference() -> None:
    expected = FeatureSchema(1, ("a", "b"), hidden_state_dim=0)
    expected.check_compatible(FeatureSchema(1, ["a", "b"]))
    with pytest.raises(PredictorSchemaError, match=r"feature order differs: expected \['a', 'b'\]"):
        expected.check_compatible(FeatureSchema(1, ("b", "a")))
    with pytest.raises(PredictorSchemaError) as info:
        expected.check_compatible(FeatureSchema(2, ("a",), hidden_state_dim=16))
    message = str(info.value)
    assert "schema version 1 (expected) vs 2" in message and "missing features ['b']" in message
    assert "hidden-state width 0 (expected) vs 16" in message


def test_wrong_tensor_shape_names_tensor_and_both_shapes(saved) -> None:
    predictor, path = saved
    state = {key: value.clone() for key, value in predictor.state_dict().items()}
    state["mlp.0.weight"] = torch.zeros(5, N)
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(PredictorLoadError, match=rf"mlp.0.weight has shape \(5, {N}\).*expects \(8, {N}\)"):
        GammaPredictor.from_pretrained(path)


def test_missing_and_unexpected_tensors_are_named(saved) -> None:
    predictor, path = saved
    state = {key: value.clone() for key, value in predictor.state_dict().items() if key != "feature_std"}
    state["mlp.9.weight"] = torch.zeros(1)
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(PredictorLoadError) as info:
        GammaPredictor.from_pretrained(path)
    assert "missing tensors ['feature_std']" in str(info.value)
    assert "unexpected tensors ['mlp.9.weight']" in str(info.value)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_safetensors_names_the_file(saved, damage) -> None:
    _, path = saved
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(
        {"truncate": data[: len(data) // 2], "garbage": b"\x80\x04not safetensors", "empty": b""}[damage]
    )
    with pytest.raises(PredictorLoadError, match=re.escape(f"cannot read {weights}") + ".*corrupt or truncated"):
        GammaPredictor.from_pretrained(path)


def test_pickle_only_folder_is_refused(saved, no_pickle) -> None:
    _, path = saved
    (path / "model.safetensors").rename(path / "pytorch_model.bin")
    with pytest.raises(PredictorLoadError, match=r"holds only pytorch_model.bin.*only loads model.safetensors"):
        GammaPredictor.from_pretrained(path)


def test_missing_config_and_lenient_loading_are_refused(saved) -> None:
    _, path = saved
    with pytest.raises(ValueError, match="always loads strictly"):
        GammaPredictor.from_pretrained(path, strict=False)
    (path / "config.json").unlink()
    with pytest.raises(PredictorLoadError, match=r"no config\.json"):
        GammaPredictor.from_pretrained(path)


@pytest.mark.parametrize("source", ["/abs/missing-folder", "./rel/missing", "../rel/missing", "a/b/c", "~/missing"])
def test_missing_local_folder_is_named_before_the_hub(source, tmp_path, monkeypatch) -> None:
    from speckv_hf import SpecKVGenerator

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))

    def no_hub(*args, **kwargs):
        raise AssertionError("a local path must never reach the Hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    monkeypatch.setattr(huggingface_hub.hub_mixin, "hf_hub_download", no_hub)
    for load in (GammaPredictor.from_pretrained, SpecKVGenerator.from_pretrained):
        with pytest.raises(FileNotFoundError, match=rf"no such folder: {re.escape(source)}.*speckv train"):
            load(source)


def test_local_paths_are_folders_with_home_expanded(saved, monkeypatch) -> None:
    predictor, path = saved
    monkeypatch.setenv("HOME", str(path.parent))
    features, _ = inputs(predictor)
    assert torch.equal(GammaPredictor.from_pretrained("~/predictor")(features), predictor(features))
    with pytest.raises(NotADirectoryError, match=r"config\.json is a file, not a folder: pass a predictor folder"):
        GammaPredictor.from_pretrained(path / "config.json")
    monkeypatch.chdir(path.parent)
    with pytest.raises(FileNotFoundError, match=r"no such folder: missing \(resolved to"):
        GammaPredictor.from_pretrained(Path("missing"))  # a Path is never a Hub repo id


@settings(max_examples=15, deadline=None)
@given(
    num_features=st.integers(1, 6),
    hidden_sizes=st.lists(st.integers(1, 6), max_size=3),
    hidden_state_dim=st.integers(0, 4),
    seed=st.integers(0, 2**16),
)
def test_round_trip_reproduces_outputs(num_features, hidden_sizes, hidden_state_dim, seed) -> None:
    kind = "pair" if hidden_state_dim else "portable"
    features = [f"feature_{index}" for index in range(num_features)]
    predictor = GammaPredictor(features, hidden_sizes, kind=kind, hidden_state_dim=hidden_state_dim, init_seed=seed)
    randomized(predictor, seed)
    features_batch, hidden = inputs(predictor, batch=3, seed=seed)
    with tempfile.TemporaryDirectory() as directory:
        predictor.save_pretrained(directory)
        loaded = GammaPredictor.from_pretrained(directory)
    assert loaded.config() == predictor.config()
    assert torch.equal(loaded(features_batch, hidden), predictor(features_batch, hidden))


def test_token_features_follow_the_schema_order():
    row = token_features(0.9, 0.95, 0.3, 0.8, True, False, 2, 0.5, 0.7, True, 4, True, 0.25)
    assert len(row) == len(PORTABLE_FEATURES)
    named = dict(zip(PORTABLE_FEATURES, row, strict=True))
    assert named["confidence"] == 0.9 and named["position"] == 2.0 and named["quantized"] == 1.0
    assert named["ngram_found"] == 1.0 and named["ngram_agrees"] == 0.0 and named["do_sample"] == 1.0
    assert named["log_cost_ratio"] == pytest.approx(-1.3862943611)


def test_the_policy_and_training_entry_points_compute_the_same_row():
    # The speckv policy builds a row from `signal_features` and `step_features`, training from the records' columns
    # with `feature_matrix`: both must give `token_features`' row.
    token = TokenSignals(0.9, 0.95, 0.3, 0.8, 2, True, False)
    step = (0.5, 0.7, True, 4, True, 0.25)
    row = token_features(0.9, 0.95, 0.3, 0.8, True, False, 2, *step)
    assert (*signal_features(token), 2.0, *step_features(*step)) == row
    assert (*SIGNAL_FEATURES, "position", *STEP_FEATURES) == PORTABLE_FEATURES
    named = dict(zip(PORTABLE_FEATURES, row, strict=True))
    matrix = feature_matrix({name: np.array([named[name], np.nan]) for name in RECORDED_FEATURES})
    assert matrix.shape == (2, len(PORTABLE_FEATURES)) and matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix[0], np.array(row, dtype=np.float32))
    assert np.isnan(matrix[1]).all()  # a missing value stays missing, the derived log included
