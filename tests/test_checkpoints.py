"""Run checkpoints: atomic saves, damaged folders named and skipped, restore without a target."""
from __future__ import annotations

import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.api import MultitaskModel
from bert_jax.checkpoints import CheckpointError, RunCheckpoints
from bert_jax.errors import ConfigError


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


def tree_snapshot(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns if p.is_file() else 0)
                  for p in folder.rglob("*"))


def test_readers_never_write_and_leave_in_flight_saves_alone(tmp_path):
    ckpts = RunCheckpoints(tmp_path)
    ckpts.save(5, state(5), {"step": 5})
    ckpts.close()
    # A training saving step 6 right now: orbax's temporary folder, still being written.
    in_flight = tmp_path / "last" / "6.orbax-checkpoint-tmp-1234"
    (in_flight / "state").mkdir(parents=True)
    (in_flight / "state" / "half_written").write_bytes(b"\x01" * 10)
    before = tree_snapshot(tmp_path)
    reader = RunCheckpoints(tmp_path, read_only=True)
    restored, _, step = reader.restore(None)
    assert step == 5 and reader.latest_step("best") is None
    reader.close()
    assert tree_snapshot(tmp_path) == before  # nothing deleted, created or touched
    with pytest.raises(CheckpointError, match="read-only"):
        reader.save(7, state(7), {})


def test_a_save_replaces_a_damaged_checkpoint_at_the_same_step(tmp_path):
    ckpts = RunCheckpoints(tmp_path, keep_last=3)
    for step in (1, 2):
        ckpts.save(step, state(step), {"step": step})
    corrupt(tmp_path / "last" / "2")
    again = RunCheckpoints(tmp_path, keep_last=3)
    _, _, step = again.restore(state(0))
    assert step == 1  # fell back past the damaged one
    again.save(2, state(22), {"step": 2})  # a resumed run reaches step 2 again
    restored, meta, step = RunCheckpoints(tmp_path, keep_last=3).restore(state(0))
    assert step == 2 and float(restored["params"]["w"][0, 0]) == 22.0


def test_a_failed_write_is_one_clear_error(tmp_path, monkeypatch):
    import errno
    ckpts = RunCheckpoints(tmp_path)
    ckpts.save(1, state(1), {"step": 1})

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(ckpts.last, "save", disk_full)
    with pytest.raises(CheckpointError, match=r"last: could not write the checkpoint of step 2 "
                                              r"\(No space left on device\)"):
        ckpts.save(2, state(2), {"step": 2})
    monkeypatch.undo()
    assert RunCheckpoints(tmp_path).restore(state(0))[2] == 1  # the previous one is intact


def test_one_training_per_run_folder(tmp_path):
    import subprocess
    import sys
    from bert_jax.checkpoints import run_lock
    with run_lock(tmp_path):
        with pytest.raises(CheckpointError, match="another training is writing this run folder"):
            with run_lock(tmp_path):
                pass
        # another process is refused too
        code = ("import sys; from bert_jax.checkpoints import run_lock, CheckpointError\n"
                "try:\n    run_lock(sys.argv[1]).__enter__()\nexcept CheckpointError:\n"
                "    sys.exit(7)\n")
        assert subprocess.run([sys.executable, "-c", code, str(tmp_path)],
                              timeout=120).returncode == 7
    with run_lock(tmp_path):  # released on exit
        pass


def test_load_run_names_what_is_damaged(tiny_run, tmp_path):
    import shutil
    from bert_jax.checkpoints import load_run
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    corrupt(run / "best")
    with pytest.raises(CheckpointError, match=r"(?s)no intact checkpoint in .*best.*"
                                              r"last/ checkpoint \(step \d+\) may be intact"):
        load_run(run, "best")
    assert load_run(run, "last").meta["step"] > 0
    (run / "train_config.json").write_text('{"pooling": "mean", ')  # cut short
    with pytest.raises(CheckpointError, match=r"train_config.json: not valid JSON"):
        load_run(run, "last")


def test_save_best_keeps_only_the_parameters(tmp_path):
    full = {**state(3), "opt_state": {"mu": jnp.ones((3, 2)), "nu": jnp.ones((3, 2))}}
    ckpts = RunCheckpoints(tmp_path)
    ckpts.save(3, full, {"step": 3})
    ckpts.save_best(3, full["params"], {"step": 3, "overall": 0.5})
    restored, meta, step = ckpts.restore(None, "best")
    assert step == 3 and meta == {"step": 3, "overall": 0.5}
    assert set(restored) == {"params"}  # no optimizer moments, no step counter
    np.testing.assert_array_equal(restored["params"]["w"], np.full((3, 2), 3.0))
    ckpts.save_best(5, state(5)["params"], {"step": 5})  # replaces the previous best
    assert ckpts.best.all_steps() == [5]
    with pytest.raises(CheckpointError, match="read-only"):
        RunCheckpoints(tmp_path, read_only=True).save_best(6, state(6)["params"], {})


def test_load_run_reads_old_and_new_best_checkpoints(tiny_run, tmp_path):
    """Older runs saved a whole training state into best/; new ones only the parameters
    (`save_best`). load_run, and so MultitaskModel.load and the export, read both alike."""
    import shutil
    from bert_jax.checkpoints import load_run
    # An old run: best/ holding a whole training state (the last one, written as before)
    whole, meta, step = RunCheckpoints(tiny_run, read_only=True).restore(None, "last")
    assert "opt_state" in whole
    old_run = tmp_path / "old"
    shutil.copytree(tiny_run, old_run)
    shutil.rmtree(old_run / "best")
    ckpts = RunCheckpoints(old_run)
    ckpts._write(ckpts.best, step, whole, meta)
    ckpts.close()
    old = load_run(old_run, "best")

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    shutil.rmtree(run / "best")
    ckpts = RunCheckpoints(run)
    ckpts.save_best(old.meta["step"], old.params, old.meta)
    ckpts.close()
    restored, _, _ = RunCheckpoints(run, read_only=True).restore(None, "best")
    assert set(restored) == {"params"}
    new = load_run(run, "best")
    assert new.meta == old.meta
    flat_old = jax.tree_util.tree_leaves_with_path(old.params)
    flat_new = dict(jax.tree_util.tree_leaves_with_path(new.params))
    assert len(flat_old) == len(flat_new)
    for path, leaf in flat_old:
        np.testing.assert_array_equal(flat_new[path], leaf)
    # every array saved is a parameter (a whole AdamW state holds three per parameter)
    assert len(jax.tree.leaves(restored)) == len(flat_old) < len(jax.tree.leaves(whole)) / 2


@pytest.mark.slow
def test_a_checkpoint_saved_on_more_devices_loads_on_one(tmp_path):
    """A run trained on 2 devices (or processes) is read by a 1-device reader (predict,
    evaluate, export): arrays land on the reader's device instead of a topology mismatch."""
    import os
    import subprocess
    import sys
    script = (
        "import sys, jax, jax.numpy as jnp\n"
        "from jax.sharding import Mesh, NamedSharding, PartitionSpec as P\n"
        "from bert_jax.checkpoints import RunCheckpoints\n"
        "assert jax.device_count() == 2\n"
        "mesh = Mesh(jax.devices(), ('data',))\n"
        "w = jax.device_put(jnp.arange(6.0).reshape(3, 2), NamedSharding(mesh, P()))\n"
        "RunCheckpoints(sys.argv[1]).save(4, {'params': {'w': w}}, {'step': 4})\n")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    restored, meta, step = RunCheckpoints(tmp_path, read_only=True).restore(None)
    assert step == 4 and meta == {"step": 4}
    np.testing.assert_array_equal(np.asarray(restored["params"]["w"]),
                                  np.arange(6.0).reshape(3, 2))


def test_load_refuses_an_unknown_which(tiny_run):
    """which="lats" is refused naming the valid values, never read as "best"."""
    with pytest.raises(ConfigError, match="which='lats'.*'best'.*'last'"):
        MultitaskModel.load(tiny_run, which="lats")


def test_a_full_disk_during_a_save_is_one_error_naming_the_folder_and_step(tmp_path, monkeypatch,
                                                                          caplog):
    """Orbax writes arrays through tensorstore, which reports a full disk as a ValueError
    "RESOURCE_EXHAUSTED: ... No space left on device" (the text below is what a save into a full
    2 MB tmpfs gave): one CheckpointError naming the folder and the step, not the device's
    memory; no half-written folder left; the previous checkpoint intact."""
    from orbax.checkpoint._src.serialization import type_handlers
    ckpts = RunCheckpoints(tmp_path)
    ckpts.save(1, {"w": np.full((3, 2), 1.0, np.float32)}, {"step": 1})
    written = tmp_path / "last" / "2.orbax-checkpoint-tmp" / "state.orbax-checkpoint-tmp"

    async def disk_full(self, value, tspec, ts_context):
        assert written.is_dir()  # orbax has begun the step's temporary folder
        raise ValueError(
            f'RESOURCE_EXHAUSTED: Error writing "w/0" in OCDBT database at local file "{written}/'
            f'ocdbt.process_0/": Failed writing: "{written}/ocdbt.process_0/d/1a9b": Failed to '
            "write 1543339 bytes to file 14: No space left on device [os_error_code='28']")
    monkeypatch.setattr(type_handlers.NumpyHandler, "_open_and_write", disk_full)
    reported = []  # what Python reports as unraisable (tensorstore's late callbacks)
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    with pytest.raises(CheckpointError) as err:
        ckpts.save(2, {"w": np.full((3, 2), 2.0, np.float32)}, {"step": 2})
    # writes still in flight when one failed wake orbax's closed event loop: not reported
    sys.unraisablehook(types.SimpleNamespace(exc_value=RuntimeError("Event loop is closed")))
    sys.unraisablehook(other := types.SimpleNamespace(exc_value=RuntimeError("other")))
    assert reported == [other]
    message = str(err.value)
    assert message.startswith(f"{(tmp_path / 'last').resolve()}: could not write the checkpoint "
                              "of step 2 (No space left on device)")
    assert "memory" not in message and "RESOURCE_EXHAUSTED" not in message
    assert "\n" not in message and "--resume" in message
    assert not any("raised an exception" in r.getMessage() for r in caplog.records)
    assert [p.name for p in (tmp_path / "last").iterdir()] == ["1"]
    monkeypatch.undo()
    restored, meta, step = RunCheckpoints(tmp_path, read_only=True).restore(None)
    assert step == 1 and meta == {"step": 1} and float(restored["w"][0, 0]) == 1.0


def test_a_full_disk_while_converting_is_one_error_and_leaves_nothing(tmp_path, monkeypatch,
                                                                      caplog):
    """save_converted (orbax's StandardCheckpointer, through tensorstore) on a full disk: one
    OutputWriteError naming OUT, no orbax thread tracebacks in the log, no temporary folder."""
    from orbax.checkpoint._src.serialization import type_handlers

    from bert_jax.config import PRESETS
    from bert_jax.converted import save_converted
    from bert_jax.embedded import embedded_model_dir
    from bert_jax.errors import OutputWriteError
    from bert_jax.model import init_params

    async def disk_full(self, value, tspec, ts_context):
        raise ValueError(f'RESOURCE_EXHAUSTED: Error writing "embeddings/0.0" in OCDBT database '
                         f'at local file "{tmp_path}/": Failed to write 1543339 bytes to file '
                         "14: No space left on device [os_error_code='28']")
    monkeypatch.setattr(type_handlers.NumpyHandler, "_open_and_write", disk_full)
    with pytest.raises(OutputWriteError, match=r"out: cannot write it \(No space left on device\)"):
        save_converted(tmp_path / "out", init_params(PRESETS["tiny"], jax.random.PRNGKey(0)),
                       PRESETS["tiny"], embedded_model_dir() / "vocab.txt")
    assert list(tmp_path.iterdir()) == []
    assert not [r for r in caplog.records if r.levelno >= 40], caplog.text
