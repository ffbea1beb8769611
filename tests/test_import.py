"""`import speckv_hf` and `speckv --version` stay cheap; every public name still loads, and the hook with them."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import speckv_hf

SRC = Path(speckv_hf.__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "pyarrow", "matplotlib", "sklearn", "speckv_hf.training.train")


def run_python(*args: str) -> subprocess.CompletedProcess:
    """A fresh interpreter on this checkout's sources (whatever an editable install points at)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=120, check=False)


def test_import_is_lazy_and_the_generation_api_installs_the_hook():
    script = f"""
import json, sys
import speckv_hf
loaded = [name for name in {HEAVY!r} if name in sys.modules]
from speckv_hf.decoding.hook import is_installed
before = is_installed()
from speckv_hf import SpecKVGenerator
print(json.dumps({{"loaded": loaded, "before": before, "after": is_installed()}}))
"""
    result = run_python("-c", script)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report == {"loaded": [], "before": False, "after": True}


@pytest.mark.parametrize("option", ["--version", "--help"])
def test_cli_version_and_help_do_not_import_torch(option):
    result = run_python("-X", "importtime", "-m", "speckv_hf", option)
    assert result.returncode == 0, result.stderr
    # -X importtime writes one "import time: self | cumulative | name" line per module imported.
    imported = {
        line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time")
    }
    assert "typer" in imported  # the lines were read
    assert not imported & {"torch", "transformers", "numpy", "speckv_hf.decoding.generator"}
    if option == "--version":
        assert result.stdout.strip() == f"speckv-hf {speckv_hf.__version__}"


def test_every_public_name_loads_from_the_module_the_type_checkers_see():
    tree = ast.parse(Path(speckv_hf.__file__).read_text())
    checking = next(
        node for node in tree.body if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
    )
    declared = {alias.name: node.module for node in checking.body for alias in node.names}
    assert declared == speckv_hf._SUBMODULE_OF
    assert set(speckv_hf.__all__) == {*declared, "__version__"}
    for name in speckv_hf.__all__:
        value = getattr(speckv_hf, name)
        if name != "__version__":
            assert getattr(sys.modules[f"speckv_hf.{declared[name]}"], name) is value
    assert set(speckv_hf.__all__) <= set(dir(speckv_hf))


def test_submodules_load_on_access_and_unknown_names_fail():
    assert speckv_hf.decoding.hook.is_installed is speckv_hf.is_installed
    with pytest.raises(AttributeError, match=re.escape("module 'speckv_hf' has no attribute 'nope'")):
        speckv_hf.nope  # noqa: B018 - the access is the test
    with pytest.raises(AttributeError):
        speckv_hf.__nope__  # noqa: B018 - dunder names are never imported as submodules
