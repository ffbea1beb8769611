"""What speckv-hf needs from the installed transformers, checked in one place.

When a transformers release changes what its assisted loop reads on a candidate generator, these tests fail with
the version and the missing names, instead of every `loop="transformers"` test failing with an AttributeError.
"""

from __future__ import annotations

import pytest
import transformers
from packaging.version import Version

from speckv_hf.decoding import _transformers
from speckv_hf.decoding.assisted import AssistedCall


def test_assisted_call_meets_the_installed_assisted_loop_contract():
    missing = _transformers.missing_from_contract(AssistedCall)
    assert not missing, (
        f"transformers {transformers.__version__}'s GenerationMixin._assisted_decoding reads "
        f"candidate_generator.{', candidate_generator.'.join(missing)}, which "
        "speckv_hf.decoding.assisted.AssistedCall lacks: add them "
        "(and note the version in speckv_hf.decoding._transformers)."
    )


def test_the_contract_is_read_from_transformers_source():
    contract = _transformers.assisted_contract()
    # Every supported release drives a candidate generator through these two.
    assert {"get_candidates", "update_candidate_strategy"} <= contract
    if Version(transformers.__version__) >= Version("5.25"):
        assert "num_drafting_tokens" in contract


def test_a_class_missing_a_method_is_reported():
    class Bare:
        pass

    missing = _transformers.missing_from_contract(Bare)
    assert "get_candidates" in missing
    assert "update_candidate_strategy" in missing
    assert not set(missing) & _transformers.OPTIONAL_CONTRACT


def test_installed_version_is_in_the_supported_range():
    version = _transformers.check_transformers_version()
    assert _transformers.MIN_TRANSFORMERS <= Version(version.base_version) < _transformers.MAX_TRANSFORMERS


@pytest.mark.parametrize("version", ["4.56.2", "6.0.0"])
def test_versions_outside_the_range_are_refused_naming_the_range(version):
    with pytest.raises(ImportError, match=r"transformers >=4\.57\.0,<6\.0\.0, found"):
        _transformers.check_transformers_version(version)


def test_pyproject_declares_the_same_range():
    import pathlib
    import re

    pyproject = (pathlib.Path(__file__).parents[1] / "pyproject.toml").read_text()
    requirement = re.search(r'"(transformers\s*[<>=~!][^"]*)"', pyproject).group(1)
    assert f">={_transformers.MIN_TRANSFORMERS.major}.{_transformers.MIN_TRANSFORMERS.minor}" in requirement
    assert f"<{_transformers.MAX_TRANSFORMERS.major}" in requirement
