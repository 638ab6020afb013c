"""Trainer: exact resume, checkpoint contents, mismatch errors, EMA weights, label handling."""
import json
import os

import numpy as np
import pytest

import refdiff as rd
from refdiff.io import checkpoint as ckpt
from refdiff.io.checkpoint import CheckpointError
from refdiff.training.data import Dataset, load_dataset
from refdiff.training.trainer import Trainer, load_diffusion



def _trainer(out_dir=None, num_classes=None, hidden=32, seed=0, **kw):
    data = load_dataset("gaussians8", n=512, seed=0)
    model = rd.MLPDenoiser(dim=2, hidden=hidden, num_blocks=2, num_classes=num_classes, seed=seed)
    diffusion = rd.GaussianDiffusion(model, rd.NoiseSchedule.linear(T=100))
    options = dict(batch_size=64, lr=1e-3, warmup_steps=5, ema_decay=0.9, seed=seed, progress=False)
    options.update(kw)
    return Trainer(diffusion, data, out_dir=out_dir, data_info={"spec": "gaussians8", "n": 512, "seed": 0}, **options)


@pytest.mark.parametrize("num_classes", [None, 8], ids=["unconditional", "class-conditional-with-label-dropout"])
def test_resumed_run_reproduces_the_uninterrupted_losses_exactly(tmp_path, num_classes):
    full = _trainer(num_classes=num_classes)
    losses_full = full.train(24)  # 24 steps of 64 out of 512 points: crosses an epoch boundary

    first = _trainer(tmp_path / "run", num_classes=num_classes)
    first.train(11)
    resumed = Trainer.resume(str(tmp_path / "run"), progress=False)
    assert resumed.step == 11
    resumed.train(13)
    assert resumed.losses == losses_full  # bit-for-bit: same draws, same arithmetic on numpy
    for a, b in zip(resumed.model.parameters(), full.model.parameters()):
        np.testing.assert_array_equal(a.data, b.data)


def test_checkpoint_holds_model_ema_optimizer_and_schedule(tmp_path):
    trainer = _trainer(tmp_path)
    trainer.train(3)
    path = trainer.save_checkpoint()
    meta = json.loads(open(path).read())
    assert meta["step"] == 3 and meta["model"]["class"] == "MLPDenoiser" and len(meta["losses"]) == 3
    from refdiff.io.checkpoint import load_checkpoint

    arrays, _ = load_checkpoint(path)
    prefixes = {k.split("/")[0] for k in arrays}
    assert prefixes == {"model", "ema", "optimizer", "schedule"}
    np.testing.assert_array_equal(arrays["schedule/betas"], trainer.diffusion.schedule.betas)


def test_ema_weights_are_used_inside_the_block_and_training_weights_come_back(tmp_path):
    trainer = _trainer()
    trainer.train(5)
    before = [p.data.copy() for p in trainer.params]
    with trainer.ema_weights():
        inside = [p.data.copy() for p in trainer.params]
    for p, b in zip(trainer.params, before):
        np.testing.assert_array_equal(p.data, b)
    for s, i in zip(trainer.ema.shadow_params, inside):
        np.testing.assert_array_equal(s, i)
    assert any(not np.array_equal(b, i) for b, i in zip(before, inside))


def test_load_diffusion_uses_the_ema_weights_by_default(tmp_path):
    trainer = _trainer(tmp_path)
    trainer.train(5)
    ema_model, _ = load_diffusion(str(tmp_path / "checkpoints"))
    raw_model, _ = load_diffusion(str(tmp_path / "checkpoints"), ema=False)
    for p, s, r in zip(ema_model.model.parameters(), trainer.ema.shadow_params, raw_model.model.parameters()):
        np.testing.assert_array_equal(p.data, s)
    for p, r in zip(trainer.params, raw_model.model.parameters()):
        np.testing.assert_array_equal(p.data, r.data)


def test_loading_into_a_different_model_config_names_the_file_and_the_difference(tmp_path):
    trainer = _trainer(tmp_path)
    trainer.train(2)
    other = _trainer(hidden=16)
    with pytest.raises(CheckpointError, match=r"step_00000002\.json: checkpoint does not match: model config"):
        other.load_checkpoint(str(tmp_path / "checkpoints"))


def test_weights_of_the_wrong_shape_are_reported(tmp_path):
    trainer = _trainer(tmp_path)
    trainer.train(2)
    path = tmp_path / "checkpoints" / "step_00000002.json"
    meta = json.loads(path.read_text())
    meta["model"]["config"]["hidden"] = 16  # the JSON now disagrees with the arrays
    ckpt.rewrite_meta(str(path), meta)  # an edit with its hash recorded: the structure checks must catch it
    with pytest.raises(CheckpointError, match=r"step_00000002\.json: checkpoint does not match the model: shape mismatch"):
        load_diffusion(str(tmp_path / "checkpoints"))


def test_a_checkpoint_may_only_name_refdiff_model_classes(tmp_path):
    trainer = _trainer(tmp_path)
    trainer.train(1)
    path = tmp_path / "checkpoints" / "step_00000001.json"
    meta = json.loads(path.read_text())
    meta["model"]["class"] = "os.system"
    ckpt.rewrite_meta(str(path), meta)  # an edit with its hash recorded: the class check must catch it
    with pytest.raises(CheckpointError, match="names no known model"):
        load_diffusion(str(path))


def test_class_conditional_model_needs_labelled_data():
    model = rd.MLPDenoiser(dim=2, hidden=8, num_blocks=1, num_classes=3)
    diffusion = rd.GaussianDiffusion(model, rd.NoiseSchedule.linear(T=10))
    with pytest.raises(ValueError, match="class-conditional .* has no labels"):
        Trainer(diffusion, Dataset(np.zeros((10, 2), np.float32)), progress=False)


def test_periodic_checkpoints_and_sample_pictures_are_written(tmp_path):
    trainer = _trainer(tmp_path, checkpoint_every=4, sample_every=4, sample_n=16, sample_steps=5, keep_checkpoints=2)
    trainer.train(8)
    assert sorted(os.listdir(tmp_path / "samples")) == ["step_00000004.png", "step_00000008.png"]
    assert sorted(f for f in os.listdir(tmp_path / "checkpoints") if f.endswith(".json")) == [
        "step_00000004.json",
        "step_00000008.json",
    ]


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_diverging_loss_is_reported_before_it_reaches_the_weights():
    trainer = _trainer()
    trainer.diffusion.prediction_type = "sample"  # target x0: the untrained model predicts 0
    trainer.x = np.full_like(trainer.x, 1e30)  # so the squared error 1e60 overflows float32 to inf
    with pytest.raises(FloatingPointError, match="loss became"):
        trainer.train(1)
    assert all(np.all(np.isfinite(p.data)) for p in trainer.params) and trainer.step == 0
