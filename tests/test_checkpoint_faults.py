"""Checkpoints that are verifiable and survive crashes: one property per test, each naming the
mistake or the fault it catches. The fault tests are cheap enough for CI (a few seconds)."""
import json
import os
import signal
import time

import numpy as np
import pytest

import refdiff as rd
from refdiff.io import checkpoint as ckpt
from refdiff.io.checkpoint import CheckpointError, CheckpointWriteError
from refdiff.training.data import load_dataset
from refdiff.training.trainer import TrainConfig, Trainer, load_diffusion


def _trainer(out_dir=None, **kw):
    data = load_dataset("gaussians8", n=256, seed=0)
    model = rd.MLPDenoiser(dim=2, hidden=16, num_blocks=1, seed=0)
    diffusion = rd.GaussianDiffusion(model, rd.NoiseSchedule.linear(T=50))
    options = dict(batch_size=32, lr=1e-3, warmup_steps=2, ema_decay=0.9, seed=0, progress=False)
    options.update(kw)
    return Trainer(diffusion, data, out_dir=out_dir, data_info={"spec": "gaussians8", "n": 256, "seed": 0}, **options)


@pytest.fixture
def run(tmp_path):
    """A run directory with one checkpoint of step 2; returns (run_dir, json_path)."""
    _trainer(str(tmp_path)).train(2)
    return str(tmp_path), str(tmp_path / "checkpoints" / "step_00000002.json")


def _edit(json_path, change, reseal=True):
    meta = json.loads(open(json_path).read())
    change(meta)
    if reseal:
        ckpt.rewrite_meta(json_path, meta)
    else:
        with open(json_path, "w") as f:
            json.dump(meta, f)


# ---- the JSON is integrity-checked like the arrays ------------------------------------------


def test_a_checkpoint_whose_json_was_edited_is_refused(run):
    """Mistake caught: a hand edit (or a bit flip) in the JSON, e.g. a learning rate, taken silently."""
    run_dir, path = run
    _edit(path, lambda m: m["train"].update(lr=0.5), reseal=False)
    with pytest.raises(CheckpointError, match=r"step_00000002\.json: corrupt or edited checkpoint JSON"):
        load_diffusion(run_dir)


def test_a_bit_flip_in_the_json_is_refused(run):
    """Fault caught: one changed digit in a stored number (a disk or copy error)."""
    run_dir, path = run
    text = open(path).read()
    i = text.index('"seed": 0')
    open(path, "w").write(text[:i] + '"seed": 1' + text[i + len('"seed": 0'):])
    with pytest.raises(CheckpointError, match="corrupt or edited checkpoint JSON"):
        load_diffusion(run_dir)


def test_reformatting_the_json_keeps_the_checkpoint_loadable(run):
    """Mistake caught: a hash over the file's bytes would refuse a harmless re-indent."""
    run_dir, path = run
    meta = json.loads(open(path).read())
    open(path, "w").write(json.dumps(meta, indent=4, sort_keys=True))
    load_diffusion(run_dir)


def test_a_json_without_its_hash_is_refused(run):
    """Mistake caught: deleting the manifest's json_sha256 to get an edit accepted."""
    run_dir, path = run
    _edit(path, lambda m: m.pop("json_sha256"), reseal=False)
    with pytest.raises(CheckpointError, match="no valid \"json_sha256\" record"):
        load_diffusion(run_dir)


def test_a_version_1_checkpoint_without_a_json_hash_still_loads(run):
    """Mistake caught: checkpoints written before the JSON hash existed becoming unreadable."""
    run_dir, path = run
    meta = json.loads(open(path).read())
    meta.pop("json_sha256")
    meta["version"] = 1
    open(path, "w").write(json.dumps(meta))
    load_diffusion(run_dir)


# ---- the structure is validated before use -------------------------------------------------


def test_a_step_that_disagrees_with_the_file_name_is_refused(run):
    """Mistake caught: a JSON copied to another step's name resuming at the wrong step."""
    run_dir, path = run
    _edit(path, lambda m: m.update(step=7))
    with pytest.raises(CheckpointError, match=r"step 7 in a file named for step 2"):
        load_diffusion(run_dir)


def test_an_arrays_record_pointing_outside_the_directory_is_refused(run):
    """Mistake caught: a JSON that names ../other.safetensors reading a file of another run."""
    run_dir, path = run
    _edit(path, lambda m: m["arrays"].update(file="../step_00000002.safetensors"))
    with pytest.raises(CheckpointError, match=r"the \"arrays\" record: file must be a step_\*\.safetensors name"):
        load_diffusion(run_dir)


def test_a_tensor_reference_missing_from_the_arrays_file_is_refused(run):
    """Mistake caught: a KeyError deep inside loading instead of the file and the missing name."""
    run_dir, path = run
    _edit(path, lambda m: m["states"]["ema"].update({"shadow.0": {"__tensor__": "ema/nothing"}}))
    with pytest.raises(CheckpointError, match=r"step_00000002\.json: array 'ema/nothing' named in the JSON"):
        load_diffusion(run_dir)


def test_a_missing_record_is_refused_with_its_name(run):
    """Mistake caught: 'NoneType is not subscriptable' when a required record is gone."""
    run_dir, path = run
    _edit(path, lambda m: m.pop("states"))
    with pytest.raises(CheckpointError, match=r"corrupt checkpoint: the 'states' record must be a JSON object"):
        load_diffusion(run_dir)


def test_a_model_size_beyond_the_arrays_file_is_refused_before_building(run):
    """Mistake caught: a corrupt size (hidden=10**9) allocating gigabytes before any check."""
    run_dir, path = run
    _edit(path, lambda m: m["model"]["config"].update(hidden=10**9))
    with pytest.raises(CheckpointError, match=r"model config hidden=1000000000 exceeds the \d+ model weights"):
        load_diffusion(run_dir)


def test_a_model_size_of_the_wrong_type_is_refused(run):
    """Mistake caught: hidden=16.0 or true in the JSON silently truncated or taken as 1."""
    run_dir, path = run
    _edit(path, lambda m: m["model"]["config"].update(hidden=True))
    with pytest.raises(CheckpointError, match=r"cannot build MLPDenoiser .*hidden must be an integer, got bool"):
        load_diffusion(run_dir)


def test_a_diffusion_T_that_disagrees_with_the_betas_is_refused(run):
    """Mistake caught: sampling with a T that the stored schedule does not have."""
    run_dir, path = run
    _edit(path, lambda m: m["diffusion"].update(T=10))
    with pytest.raises(CheckpointError, match=r"T=10, the arrays file holds 50 betas"):
        load_diffusion(run_dir)


def test_more_losses_than_steps_are_refused(run):
    """Mistake caught: a loss history that cannot belong to this step."""
    run_dir, path = run
    _edit(path, lambda m: m.update(losses=[0.5] * 5))
    with pytest.raises(CheckpointError, match="5 losses recorded for 2 steps"):
        load_diffusion(run_dir)


def test_a_bad_training_config_is_refused_on_resume(run):
    """Mistake caught: ema_decay=1.0 in the JSON resuming a run whose EMA never moves."""
    run_dir, path = run
    _edit(path, lambda m: m["train"].update(ema_decay=1.0))
    with pytest.raises(CheckpointError, match=r"bad training config in the checkpoint: ema_decay must lie in \[0, 1\)"):
        Trainer.resume(run_dir, progress=False)


def test_nan_in_the_ema_weights_is_refused(tmp_path):
    """Mistake caught: EMA weights not checked like the model weights (NaN samples, exit 0)."""
    trainer = _trainer(str(tmp_path))
    trainer.train(1)
    trainer.ema.shadow_params[0][...] = np.nan
    trainer.save_checkpoint()
    with pytest.raises(CheckpointError, match=r"array 'ema/shadow\.0' contains NaN or inf"):
        load_diffusion(str(tmp_path))


# ---- pruning, temporary files ----------------------------------------------------------------


def test_pruning_removes_a_checkpoints_json_before_its_arrays(tmp_path, monkeypatch):
    """Fault caught: a kill between the two removals leaving a listed checkpoint without arrays."""
    for step in (1, 2):
        ckpt.save_checkpoint(str(tmp_path), step, {"w": np.ones(3)}, {}, keep=2)
    removed = []
    real_remove = os.remove
    monkeypatch.setattr(ckpt.os, "remove", lambda p: (removed.append(os.path.basename(p)), real_remove(p)))
    ckpt.save_checkpoint(str(tmp_path), 3, {"w": np.ones(3)}, {}, keep=2)
    assert removed == ["step_00000001.json", "step_00000001.safetensors"]


def test_leftovers_of_a_killed_save_are_removed_when_training_starts(tmp_path):
    """Fault caught: temporary files and orphan arrays piling up after crashes."""
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    (directory / ".tmp-abc.part").write_bytes(b"half a checkpoint")
    (directory / "step_00000009.safetensors").write_bytes(b"arrays whose JSON never landed")
    _trainer(str(tmp_path)).train(1)
    assert sorted(os.listdir(directory)) == ["step_00000001.json", "step_00000001.safetensors"]


def test_leftovers_of_a_killed_save_are_removed_on_resume(run):
    """Fault caught: a resumed run leaving the dead run's temporary files behind."""
    run_dir, _ = run
    directory = os.path.join(run_dir, "checkpoints")
    open(os.path.join(directory, ".tmp-xyz.part"), "wb").close()
    Trainer.resume(run_dir, progress=False)
    assert not [f for f in os.listdir(directory) if f.startswith(".tmp-")]


def _save_forever(directory):
    """The child's work: save checkpoints of 1 MiB in a loop (keep=2: each save also prunes)."""
    try:
        step = max([s for s, _ in ckpt.list_checkpoints(directory)], default=0)
        w = np.arange(1 << 17, dtype=np.float64)
        while True:
            step += 1
            ckpt.save_checkpoint(directory, step, {"w": w + step}, {"note": "x" * 1000}, keep=2)
    finally:
        os._exit(0)  # never return into pytest in the child


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")
def test_a_save_killed_at_random_points_leaves_every_listed_checkpoint_loadable(tmp_path):
    """Fault caught: SIGKILL mid-save (or mid-prune) leaving a listed checkpoint that does not load,
    or temporary files that survive the next start. 30 kills at random moments of a forked saver."""
    directory = str(tmp_path / "checkpoints")
    os.makedirs(directory)
    # The kill window spans a few saves on this machine as it is now (40 ms when idle; a loaded
    # machine saves, fsyncs included, several times slower), so some saves complete and others die.
    start = time.perf_counter()
    ckpt.save_checkpoint(str(tmp_path / "timing"), 1, {"w": np.arange(1 << 17, dtype=np.float64)}, {}, keep=1)
    window = max(0.04, 4 * (time.perf_counter() - start))
    rng = np.random.default_rng(0)
    for trial in range(30):
        pid = os.fork()
        if pid == 0:
            _save_forever(directory)
        time.sleep(rng.uniform(0.0, window))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        ckpt.remove_incomplete(directory)  # what the next start does
        listed = ckpt.list_checkpoints(directory)
        for step, path in listed:
            arrays, meta = ckpt.load_checkpoint(path)
            np.testing.assert_array_equal(arrays["w"] - step, np.arange(1 << 17, dtype=np.float64))
        names = os.listdir(directory)
        assert not [n for n in names if n.startswith(".tmp-")], f"trial {trial}: temporary file left"
        assert len(names) == 2 * len(listed), f"trial {trial}: {sorted(names)}"
    assert ckpt.list_checkpoints(directory), "no save ever completed: the kills came too early to test much"


# ---- periodic checkpoints, the output directory, failed saves --------------------------------


def test_periodic_checkpoints_are_on_by_default():
    """Mistake caught: a crash after hours losing the whole run because only the end was saved."""
    config = TrainConfig()
    assert config.checkpoint_every >= 1 and config.checkpoint_minutes > 0


def test_a_checkpoint_is_written_when_the_time_interval_passes(tmp_path):
    """Mistake caught: slow steps (a big model) going a long time without a checkpoint."""
    trainer = _trainer(str(tmp_path), checkpoint_every=0, checkpoint_minutes=1e-9, keep_checkpoints=0)
    trainer.train(3)
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path / "checkpoints"))] == [1, 2, 3]


def test_an_output_directory_below_a_regular_file_is_refused_before_training(tmp_path):
    """Mistake caught: training for an hour, then failing at the first save."""
    (tmp_path / "file").write_text("not a directory")
    trainer = _trainer(str(tmp_path / "file" / "run"))
    with pytest.raises(CheckpointWriteError, match="cannot write checkpoints there"):
        trainer.train(2)
    assert trainer.step == 0


def test_too_little_free_space_is_refused_before_training(tmp_path, monkeypatch):
    """Mistake caught: a disk that cannot hold one checkpoint found only when saving."""
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda path: type("U", (), {"free": 1000})())
    trainer = _trainer(str(tmp_path))
    with pytest.raises(CheckpointWriteError, match=r"MiB free, a checkpoint of this run needs about"):
        trainer.train(2)
    assert trainer.step == 0


def test_a_full_disk_loses_at_most_one_interval_and_the_run_resumes_bit_identically(tmp_path, monkeypatch):
    """Fault caught: a full disk mid-run losing the run, leaving partial files, or a resumed run
    that differs from an uninterrupted one. The disk "fills" after step 5 (every fsync fails)."""
    uninterrupted = _trainer()
    uninterrupted.train(10)

    trainer = _trainer(str(tmp_path), checkpoint_every=2)
    real_fsync = os.fsync

    def fsync(fd):
        if trainer.step >= 5:
            raise OSError(28, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(CheckpointWriteError, match=r"step_00000006\.safetensors: cannot write the checkpoint of step 6 "
                                                   r"\(No space left on device\); kept: the checkpoint of step 4"):
        trainer.train(10)
    monkeypatch.setattr(os, "fsync", real_fsync)

    directory = str(tmp_path / "checkpoints")
    assert [s for s, _ in ckpt.list_checkpoints(directory)] == [2, 4]  # lost: steps 5-6, one interval
    assert sorted(os.listdir(directory)) == [f"step_0000000{s}.{e}" for s in (2, 4) for e in ("json", "safetensors")]
    resumed = Trainer.resume(str(tmp_path), progress=False)
    assert resumed.step == 4
    resumed.train(6)
    assert resumed.losses == uninterrupted.losses
    for a, b in zip(resumed.model.parameters(), uninterrupted.model.parameters()):
        np.testing.assert_array_equal(a.data, b.data)
