"""The suite's own promise: a missing reference or data folder fails the run, naming what to
install or where to put the data (BERT_JAX_ALLOW_SKIP=1 turns that into skips)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
PROBE = '''
from conftest import require

def test_needs_data(data_dir):
    assert data_dir.is_dir()

def test_needs_a_reference():
    require("no_such_reference_module_xyz")
'''


@pytest.mark.slow
@pytest.mark.parametrize("allow_skip", [False, True])
def test_missing_data_and_references_fail_unless_skips_are_allowed(tmp_path, allow_skip):
    repo = tmp_path / "repo"  # no ./data, and no ../shared/data beside it
    (repo / "tests").mkdir(parents=True)
    shutil.copy(TESTS / "conftest.py", repo / "tests" / "conftest.py")
    (repo / "tests" / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k not in ("BERT_JAX_DATA",
                                                            "BERT_JAX_ALLOW_SKIP")}
    if allow_skip:
        env["BERT_JAX_ALLOW_SKIP"] = "1"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-rs", "tests"], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=300)
    out = done.stdout + done.stderr
    if allow_skip:
        assert done.returncode == 0 and "2 skipped" in out, out
    else:
        assert done.returncode == 1 and "1 failed, 1 error" in out, out
        assert "no CS224N data: put the files in ./data" in out
        assert "no_such_reference_module_xyz is not installed" in out and "make install-dev" in out
