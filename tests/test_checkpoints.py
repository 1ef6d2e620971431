"""Run checkpoints: atomic saves, damaged folders named and skipped, restore without a target."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.checkpoints import CheckpointError, RunCheckpoints


def state(value: float):
    return {"params": {"w": jnp.full((3, 2), value)}, "step": jnp.asarray(int(value), jnp.int32)}


def corrupt(folder):
    for path in folder.rglob("*"):
        if path.is_file():
            path.write_bytes(b"\x00garbage")


def test_restore_newest_and_fall_back_past_damaged_ones(tmp_path, caplog):
    ckpts = RunCheckpoints(tmp_path, keep_last=3)
    for step in (1, 2, 3):
        ckpts.save(step, state(step), {"step": step})
    restored, meta, step = ckpts.restore(state(0))
    assert step == 3 and meta == {"step": 3}
    np.testing.assert_array_equal(restored["params"]["w"], np.full((3, 2), 3.0))

    corrupt(tmp_path / "last" / "3")
    restored, meta, step = RunCheckpoints(tmp_path, keep_last=3).restore(state(0))
    assert step == 2 and float(restored["params"]["w"][0, 0]) == 2.0
    assert "last/3" in caplog.text  # the damaged folder is named

    corrupt(tmp_path / "last" / "2")
    corrupt(tmp_path / "last" / "1")
    with pytest.raises(CheckpointError) as err:
        RunCheckpoints(tmp_path, keep_last=3).restore(state(0))
    for step in (1, 2, 3):
        assert f"last/{step}" in str(err.value)


def test_a_save_interrupted_midway_leaves_the_previous_checkpoint(tmp_path):
    ckpts = RunCheckpoints(tmp_path)
    ckpts.save(5, state(5), {"step": 5})
    # What a kill during the next save leaves: orbax's temporary folder, never renamed.
    partial = tmp_path / "last" / "6.orbax-checkpoint-tmp-1234"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "half_written").write_bytes(b"\x01" * 10)
    again = RunCheckpoints(tmp_path)
    assert again.latest_step() == 5
    restored, _, step = again.restore(state(0))
    assert step == 5 and float(restored["params"]["w"][0, 0]) == 5.0


def test_restore_without_target_and_best_manager(tmp_path):
    ckpts = RunCheckpoints(tmp_path)
    ckpts.save(1, state(1), {"overall": 0.5}, best=True)
    ckpts.save(2, state(2), {"overall": 0.4})
    restored, meta, step = ckpts.restore(None, "best")
    assert step == 1 and meta == {"overall": 0.5}
    assert jax.tree.structure(restored) == jax.tree.structure(jax.device_get(state(1)))
    with pytest.raises(CheckpointError, match="no checkpoint there"):
        RunCheckpoints(tmp_path / "empty").restore(None)
