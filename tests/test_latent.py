"""Latent diffusion (refdiff.latent.LatentDiffusion) and the autoencoder's training runs.

The truth each test holds the code to is independent of the code under test: the inner
GaussianDiffusion called by hand on latents encoded by hand, a closed form for the latents' std
of a linear encoder, the decoder called by hand, the uninterrupted run (for resume), and the
files of a checkpoint edited on purpose (for the refusals). Tiny networks keep each test under
a few seconds on one CPU core.
"""
import json
import os

import numpy as np
import pytest

import refdiff as rd
from refdiff import cli
from refdiff.backend import get_backend
from refdiff.io import checkpoint as ckpt
from refdiff.latent import LatentDiffusion, latent_scaling_factor, measure_scaling_factor
from refdiff.nn.autograd import Tensor
from refdiff.training.autoencoder import AutoencoderTraining
from refdiff.training.data import Dataset, load_dataset
from refdiff.training.trainer import Trainer, load_autoencoder, load_diffusion

HERE = os.path.dirname(os.path.abspath(__file__))


def tiny_vae(in_channels=3, seed=0):
    # 2 levels: 16x16 images -> 8x8 latents with 4 channels
    return rd.AutoencoderKL(in_channels=in_channels, block_out_channels=(8, 8), latent_channels=4, norm_num_groups=4,
                            sample_size=16, seed=seed)


def tiny_unet(channels=4, size=8, seed=0):
    unet = rd.UNet(in_channels=channels, base_channels=8, channel_mults=(1,), attention_resolutions=(), sample_size=size,
                   norm_groups=4, seed=seed)
    # the U-Net starts with zero output convolutions (its output is 0 whatever the input, and so the
    # loss would not see the latents): random weights there make every test below input-sensitive
    rng = np.random.default_rng(seed + 100)
    for p in unet.parameters():
        if not np.any(p.data):
            p.data[...] = 0.1 * rng.standard_normal(p.data.shape)
    return unet


@pytest.fixture(scope="module")
def shapes():
    return load_dataset("shapes", n=32, seed=0)


def latent_model(scaling_factor=0.7, T=50, **options):
    return LatentDiffusion(tiny_unet(), rd.NoiseSchedule.linear(T=T), tiny_vae(), scaling_factor, **options)


# ---- the loss ------------------------------------------------------------------------------------


def test_latent_loss_equals_the_inner_diffusion_loss_on_the_scaled_encoded_latents(shapes):
    """ld.loss(x) is GaussianDiffusion.loss(scaling_factor * z) with z ~ q(z | x) drawn first from the
    same rng. Catches: encoding without the scaling factor (or dividing by it), training on the mean
    when LDM's sampled latent is asked for, drawing the latent after t and eps (another rng order),
    and a loss on the pixels."""
    ld = latent_model(scaling_factor=0.7)
    x = shapes.x[:4]
    got = float(ld.loss(x, rng=np.random.default_rng(3)).item())

    rng = np.random.default_rng(3)
    mean, logvar = ld.autoencoder.encode(x)
    z = rd.AutoencoderKL.sample_latent(mean, logvar, rng).data  # drawn first, as LDM's posterior.sample()
    inner = rd.GaussianDiffusion(ld.model, ld.schedule, clip_sample=False)
    expected = float(inner.loss(0.7 * z, rng=rng).item())
    # the same float32 operations in the same order: equal to the last bit
    assert got == expected
    # and the mean instead of a draw is another loss (the test can tell them apart)
    rng = np.random.default_rng(3)
    assert float(inner.loss(0.7 * mean.data, rng=rng).item()) != got


def test_sample_posterior_false_trains_on_the_posterior_mean(shapes):
    """sample_posterior=False: the loss is the inner loss on scaling_factor * mean, and rng draws
    nothing for the latent. Catches a draw made anyway (the inner t and eps would shift)."""
    ld = latent_model(scaling_factor=0.5, sample_posterior=False)
    x = shapes.x[:4]
    got = float(ld.loss(x, rng=np.random.default_rng(1)).item())
    mean, _ = ld.autoencoder.encode(x)
    inner = rd.GaussianDiffusion(ld.model, ld.schedule, clip_sample=False)
    assert got == float(inner.loss(0.5 * mean.data, rng=np.random.default_rng(1)).item())


# ---- the scaling factor ---------------------------------------------------------------------------


class LinearEncoder:
    """A stand-in autoencoder whose posterior is known in closed form: q(z | x) = N(a x, v I)."""

    def __init__(self, a, v):
        self.a, self.v, self.backend = a, v, get_backend("numpy")

    def encode(self, x):
        return Tensor(self.a * x), Tensor(np.full(x.shape, np.log(self.v), x.dtype))

    sample_latent = staticmethod(rd.AutoencoderKL.sample_latent)


def test_measured_scaling_factor_matches_the_closed_form_of_a_linear_encoder():
    """x ~ N(0, s_x^2) iid, z = a x + sqrt(v) noise: std(z) = sqrt(a^2 s_x^2 + v) exactly, so the factor
    must be 1 / that, up to the sampling error of a std over N = 16384 iid values: relative
    standard error 1 / sqrt(2 (N - 1)) = 0.0055; 5 of them: 0.028. Catches the std of the means
    (without the posterior noise: 1/sqrt(a^2 s_x^2) = 0.333, 11% off), the variance instead of
    the std (1 / 9.25 vs 1 / 3.04), and the std itself instead of its inverse."""
    a, v, s_x = 1.5, 4.0, 2.0
    x = (s_x * np.random.default_rng(0).standard_normal((64, 4, 8, 8))).astype(np.float32)
    got = measure_scaling_factor(LinearEncoder(a, v), x, np.random.default_rng(1), batch_size=16)
    exact = 1.0 / np.sqrt(a**2 * s_x**2 + v)
    assert abs(got / exact - 1) < 5 / np.sqrt(2 * (x.size - 1))


def test_the_measured_factor_scales_the_latents_it_was_measured_on_to_unit_std(shapes):
    """On a real (tiny) AutoencoderKL: the factor is 1 / std (ddof 1) of the latents drawn with the
    same rng, computed here by hand (float64 sums of float32 latents: rel 1e-6), and ld.encode with
    that rng gives latents of std 1 (float32 rounding of a 4096-element std: 1e-5). Catches ddof = 0
    (1/(2N) = 1.2e-4 off, above rel 1e-6), the means without the posterior noise, any other scale and
    a factor left out of encode."""
    vae = tiny_vae()
    x = shapes.x[:16]
    s = measure_scaling_factor(vae, x, np.random.default_rng(2))
    mean, logvar = vae.encode(x)
    z = rd.AutoencoderKL.sample_latent(mean, logvar, np.random.default_rng(2)).data
    assert s == pytest.approx(1.0 / np.std(z.astype(np.float64), ddof=1), rel=1e-6)
    ld = LatentDiffusion(tiny_unet(), rd.NoiseSchedule.linear(T=10), vae, s)
    z_s = ld.encode(x, np.random.default_rng(2))
    assert np.std(z_s.astype(np.float64), ddof=1) == pytest.approx(1.0, abs=1e-5)


def test_latent_scaling_factor_refuses_constant_latents():
    with pytest.raises(ValueError, match="std"):
        latent_scaling_factor(np.zeros((2, 4, 2, 2)))


# ---- sampling -------------------------------------------------------------------------------------


def test_sampling_decodes_the_latents_divided_by_the_scaling_factor():
    """ld.sample(n) = D(z_s / scaling_factor) with z_s the inner diffusion's sample of the same seed.
    Catches a decoder fed the scaled latents (D(z_s), checked below to differ by far more than
    the tolerance), a multiplication instead of a division, and sampling in pixel space.
    Tolerance: the same float32 operations in both paths, exact up to 1e-6."""
    ld = latent_model(scaling_factor=0.25, T=20)
    x = ld.sample(3, sampler="ddim", steps=4, seed=5, progress=False)
    inner = rd.GaussianDiffusion(ld.model, ld.schedule, clip_sample=False)
    z_s = inner.sample(3, sampler="ddim", steps=4, seed=5, progress=False)
    with rd.no_grad():
        expected = ld.autoencoder.decode(z_s / 0.25).data
        forgot_to_unscale = ld.autoencoder.decode(z_s).data
    assert x.shape == (3, 3, 16, 16)
    np.testing.assert_allclose(x, expected, rtol=0, atol=1e-6)
    assert np.abs(x - forgot_to_unscale).max() > 1e-3


# ---- the frozen autoencoder -------------------------------------------------------------------------


def test_training_leaves_the_autoencoder_untouched_and_out_of_the_optimizer(shapes):
    """Two Trainer steps change the U-Net but not one bit of the autoencoder, whose parameters the
    optimizer does not hold and which get no gradient. Catches an encoder run with gradients
    (weight decay or a gradient would move it) and an optimizer built over both networks."""
    ld = latent_model()
    before = {k: np.array(v) for k, v in ld.autoencoder.state_dict().items()}
    unet_before = {k: np.array(v) for k, v in ld.model.state_dict().items()}
    trainer = Trainer(ld, shapes, batch_size=4, weight_decay=0.1, progress=False, parallel=None)
    trainer.train(2)
    ae_ids = {id(p) for p in ld.autoencoder.parameters()}
    assert not ae_ids & {id(p) for p in trainer.optimizer.params}
    assert all(p.grad is None and not p.requires_grad for p in ld.autoencoder.parameters())
    for k, v in ld.autoencoder.state_dict().items():
        assert np.array_equal(v, before[k]), k
    assert any(not np.array_equal(v, unet_before[k]) for k, v in ld.model.state_dict().items())


# ---- checkpoints and resume ------------------------------------------------------------------------


def _weights(model):
    return {k: np.array(v) for k, v in model.state_dict().items()}


def _run_and_resume(objective_factory, data, tmp_path, steps=4):
    whole = Trainer(objective_factory(), data, out_dir=str(tmp_path / "whole"), batch_size=4, progress=False,
                    parallel=None)
    whole.train(steps)
    half = Trainer(objective_factory(), data, out_dir=str(tmp_path / "half"), batch_size=4, progress=False,
                   parallel=None)
    half.train(steps // 2)
    resumed = Trainer.resume(str(tmp_path / "half"), dataset=data, progress=False, parallel=None)
    resumed.train(steps - steps // 2)
    return whole, resumed


def test_a_latent_run_resumes_bit_for_bit(shapes, tmp_path):
    """Four steps at once and two + two after a resume give the same losses and U-Net weights, to
    the bit (NumPy). Catches a resumed run whose autoencoder or scaling factor is rebuilt
    differently (another latent, another loss) and a latent draw not tied to the step's rng."""
    whole, resumed = _run_and_resume(latent_model, shapes, tmp_path)
    assert type(resumed.diffusion) is LatentDiffusion
    assert resumed.losses == whole.losses
    for k, v in _weights(whole.model).items():
        assert np.array_equal(v, _weights(resumed.model)[k]), k


def test_an_autoencoder_run_resumes_bit_for_bit_and_rebuilds_AutoencoderKL_by_name(shapes, tmp_path):
    """The AutoencoderTraining objective through the Trainer: exact resume, and the checkpoint names
    the model class AutoencoderKL, rebuilt with the same weights by load_diffusion. Catches a
    class missing from the checkpoint's known models and a KL draw not tied to the step's rng."""
    def objective():
        return AutoencoderTraining(tiny_vae(), kl_weight=1e-3, reconstruction="l2")

    whole, resumed = _run_and_resume(objective, shapes, tmp_path)
    assert resumed.losses == whole.losses
    training, meta = load_diffusion(str(tmp_path / "half"), ema=False)
    assert meta["model"]["class"] == "AutoencoderKL" and meta["diffusion"]["objective"] == "autoencoder"
    assert type(training.model) is rd.AutoencoderKL
    for k, v in _weights(whole.model).items():
        assert np.array_equal(v, _weights(training.model)[k]), k


@pytest.fixture(scope="module")
def latent_checkpoint(shapes, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ldm") / "run")
    Trainer(latent_model(), shapes, out_dir=out, batch_size=4, progress=False, parallel=None).train(1)
    return os.path.join(out, "checkpoints")


def _rewrite(checkpoint_dir, tmp_path, edit_arrays=None, edit_meta=None):
    """A copy of the checkpoint with its arrays / JSON edited and a valid manifest (a deliberate edit)."""
    arrays, meta = ckpt.load_checkpoint(checkpoint_dir)
    arrays = dict(arrays)
    if edit_arrays:
        edit_arrays(arrays)
    if edit_meta:
        edit_meta(meta)
    for key in ckpt.MANIFEST_KEYS:
        meta.pop(key, None)
    out = str(tmp_path / "edited")
    ckpt.save_checkpoint(out, meta["step"], arrays, meta)
    return out


def test_a_latent_run_without_its_autoencoder_is_refused_naming_it(latent_checkpoint, tmp_path):
    """Catches a run that would load with the autoencoder's arrays gone (a fresh random decoder)."""
    def drop(arrays):
        for k in [k for k in arrays if k.startswith("autoencoder/")]:
            del arrays[k]

    edited = _rewrite(latent_checkpoint, tmp_path, edit_arrays=drop)
    with pytest.raises(ckpt.CheckpointError, match="without its autoencoder"):
        load_diffusion(edited)


def test_a_latent_run_whose_autoencoder_changed_is_refused(latent_checkpoint, tmp_path):
    """One autoencoder weight changed (and the manifest rewritten, so the file is "valid"): the
    recorded SHA-256 of the autoencoder refuses it. Catches a run decoding with another autoencoder
    than the one its denoiser was trained on."""
    def nudge(arrays):
        key = sorted(k for k in arrays if k.startswith("autoencoder/"))[0]
        arrays[key] = arrays[key] + np.float32(1e-3)

    edited = _rewrite(latent_checkpoint, tmp_path, edit_arrays=nudge)
    with pytest.raises(ckpt.CheckpointError, match="autoencoder changed"):
        load_diffusion(edited)


def test_an_autoencoder_config_larger_than_its_weights_is_refused(latent_checkpoint, tmp_path):
    """The size check of the embedded AutoencoderKL config, as for the U-Net's: a corrupt channel
    count cannot allocate more than the file holds."""
    def grow(meta):
        meta["diffusion"]["autoencoder"]["config"]["block_out_channels"] = [8, 10**9]

    edited = _rewrite(latent_checkpoint, tmp_path, edit_meta=grow)
    with pytest.raises(ckpt.CheckpointError, match="exceeds"):
        load_diffusion(edited)


def test_an_autoencoder_run_whose_config_is_larger_than_its_weights_is_refused(cli_runs, tmp_path):
    """AutoencoderKL as a checkpoint's model class gets the U-Net's size check: a corrupt channel
    count in its config is refused before anything is allocated."""
    def grow(meta):
        meta["model"]["config"]["block_out_channels"] = [8, 10**9]

    edited = _rewrite(os.path.join(cli_runs[0], "checkpoints"), tmp_path, edit_meta=grow)
    with pytest.raises(ckpt.CheckpointError, match="exceeds"):
        load_diffusion(edited)


def test_channel_counts_that_do_not_match_are_refused():
    """A U-Net of 3 input channels over an autoencoder of 4 latent channels: ValueError naming both."""
    with pytest.raises(ValueError, match="channel counts do not match.*in_channels=3.*latent_channels=4"):
        LatentDiffusion(tiny_unet(channels=3), rd.NoiseSchedule.linear(T=10), tiny_vae(), 1.0)


def test_images_that_encode_to_another_latent_size_are_refused(shapes):
    """A U-Net sampling 4x4 latents cannot be trained on 16x16 images (8x8 latents)."""
    ld = LatentDiffusion(tiny_unet(size=4), rd.NoiseSchedule.linear(T=10), tiny_vae(), 1.0)
    with pytest.raises(ValueError, match="encode to latents of shape"):
        ld.loss(shapes.x[:2], rng=0)


def test_a_diffusers_autoencoder_brings_its_own_scaling_factor():
    """load_autoencoder on a diffusers folder takes scaling_factor from its config.json (SD's
    0.18215 here); a refdiff run has none until measured (None)."""
    vae, record = load_autoencoder(os.path.join(HERE, "data", "tiny_vae"))
    assert record["kind"] == "diffusers" and record["scaling_factor"] == 0.18215
    assert vae.config["latent_channels"] == 3


# ---- the command line --------------------------------------------------------------------------------

TINY_AE = ["--data", "shapes", "--n", "32", "--block-channels", "8,8", "--norm-groups", "4", "--batch-size", "4",
           "--no-progress"]
TINY_LDM = ["--data", "shapes", "--n", "32", "--base-channels", "8", "--channel-mults", "1", "--batch-size", "4",
            "--T", "20", "--sample-n", "4", "--sample-steps", "2", "--no-progress"]


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-latent")
    ae, ldm = str(root / "ae"), str(root / "ldm")
    assert cli.main(["train-autoencoder", "--steps", "2", "--out", ae, *TINY_AE]) == 0
    assert cli.main(["train", "--latent", ae, "--steps", "2", "--out", ldm, *TINY_LDM]) == 0
    return ae, ldm


def test_cli_trains_an_autoencoder_then_a_latent_model_and_samples_decoded_images(cli_runs, tmp_path, capsys):
    """End to end on a tiny config: the AE run writes its reconstructions, the latent run holds the
    AE run's EMA weights (same SHA-256), and `refdiff sample` writes decoded 3x16x16 images."""
    ae, ldm = cli_runs
    assert os.path.isfile(os.path.join(ae, "reconstructions.png"))
    vae, _ = load_autoencoder(ae)
    diffusion, meta = load_diffusion(ldm)
    assert isinstance(diffusion, LatentDiffusion)
    assert meta["diffusion"]["autoencoder"]["sha256"] == ckpt.arrays_digest(
        ckpt.flatten_state(vae.state_dict(), "autoencoder")[1])
    assert meta["diffusion"]["autoencoder"]["source"]["path"] == os.path.abspath(ae)
    npz = str(tmp_path / "s.npz")
    assert cli.main(["sample", ldm, "--n", "3", "--sampler", "ddim", "--steps", "2", "--out", npz, "--no-progress"]) == 0
    x = np.load(npz)["samples"]
    assert x.shape == (3, 3, 16, 16) and np.all(np.isfinite(x))


def test_cli_trains_on_a_diffusers_autoencoder_with_its_own_scaling_factor(tmp_path):
    """--latent on a diffusers AutoencoderKL folder: no measurement, the config's 0.18215 goes into
    the run; the U-Net is built for its 3 latent channels. Catches a factor measured anyway."""
    run = str(tmp_path / "ldm")
    assert cli.main(["train", "--latent", os.path.join(HERE, "data", "tiny_vae"), "--steps", "1", "--out", run,
                     *TINY_LDM]) == 0
    diffusion, meta = load_diffusion(run)
    assert diffusion.scaling_factor == 0.18215 and meta["diffusion"]["autoencoder"]["source"]["kind"] == "diffusers"
    assert meta["model"]["config"]["in_channels"] == 3


def test_cli_resumes_a_latent_run(cli_runs, tmp_path):
    import shutil

    run = str(tmp_path / "ldm")
    shutil.copytree(cli_runs[1], run)
    assert cli.main(["train", "--resume", "--steps", "3", "--out", run, "--no-progress"]) == 0
    assert len(json.load(open(os.path.join(run, "losses.json")))) == 3


def test_train_autoencoder_help_names_its_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train-autoencoder", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert all(o in out for o in ("--latent-channels", "--block-channels", "--kl-weight", "--reconstruction"))


def _exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err


def test_cli_refuses_a_missing_autoencoder_in_one_line_naming_it(tmp_path, capsys):
    missing = str(tmp_path / "no-such-ae")
    err = _exit_2(["train", "--latent", missing, "--steps", "1", "--out", str(tmp_path / "x"), *TINY_LDM], capsys)
    assert missing in err and "no autoencoder" in err


def test_cli_refuses_images_whose_channels_do_not_match_the_autoencoder(tmp_path, capsys):
    """A 1-channel autoencoder run and 3-channel shapes: one line naming both channel counts."""
    gray = Dataset(load_dataset("shapes", n=8, seed=0).x[:, :1], None, None, "images", "gray")
    ae = str(tmp_path / "ae1")
    Trainer(AutoencoderTraining(tiny_vae(in_channels=1)), gray, out_dir=ae, batch_size=4, progress=False,
            parallel=None).train(1)
    err = _exit_2(["train", "--latent", ae, "--steps", "1", "--out", str(tmp_path / "x"), *TINY_LDM], capsys)
    assert "channel counts do not match" in err and "in_channels=1" in err and "3 channels" in err


def test_cli_refuses_a_run_of_another_kind_as_the_autoencoder(cli_runs, tmp_path, capsys):
    err = _exit_2(["train", "--latent", cli_runs[1], "--steps", "1", "--out", str(tmp_path / "x"), *TINY_LDM], capsys)
    assert "not an autoencoder run" in err


def test_cli_refuses_to_sample_an_autoencoder_run(cli_runs, tmp_path, capsys):
    err = _exit_2(["sample", cli_runs[0], "--out", str(tmp_path / "x.png")], capsys)
    assert "autoencoder run" in err


def test_bench_latent_quick_prints_both_tables(capsys):
    """benchmarks/bench_latent_cpu.py --quick (a few seconds) runs every stage and prints the rows
    RESULTS.md records: the autoencoder's PSNR beside the pooling baseline, pixel and latent models.
    The full run (RESULTS.md's figures, ~20 CPU minutes) is not part of the suite."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "benchmarks"))
    import bench_latent_cpu

    bench_latent_cpu.main(["--quick"])
    out = capsys.readouterr().out
    for row in ("| AutoencoderKL (16, 32)", "| 2x2 average pool", "| pixel |", "| latent |", "autoencoder ceiling"):
        assert row in out, row
