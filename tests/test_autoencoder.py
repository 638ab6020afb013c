"""refdiff.AutoencoderKL: parity with diffusers' AutoencoderKL, the diagonal Gaussian latent, the
loss's gradients against finite differences, a few training steps, and the loader's rules.

The golden files in tests/data were written by diffusers 0.42.1 / torch 2.13.0 CPU
(tests/data/make_tiny_vae.py): two tiny AutoencoderKL folders with random weights, diffusers'
encoder mean and log-variance for a fixed image and its decoder output for a fixed latent.
No PyTorch is needed here.
"""
import json
import os

import numpy as np
import pytest

import refdiff as rd
from refdiff.models.autoencoder import AutoencoderKL
from refdiff.models.diffusers_io import (autoencoder_kwargs_from_diffusers_config,
                                         diffusers_config_from_autoencoder_kwargs)
from refdiff.nn.testing import check_gradients
from refdiff.training.optim import Adam

DATA = os.path.join(os.path.dirname(__file__), "data")
GOLDEN = np.load(os.path.join(DATA, "tiny_vae_io.npz"))
FOLDERS = ["tiny_vae", "tiny_vae_plain"]


def run(vae, name, dtype):
    with rd.no_grad():
        mean, logvar = vae.encode(GOLDEN[f"{name}/x"].astype(dtype))
        decoded = vae.decode(GOLDEN[f"{name}/z"].astype(dtype))
    return {"mean": mean.numpy(), "logvar": logvar.numpy(), "decoded": decoded.numpy()}


@pytest.mark.parametrize("name", FOLDERS)
def test_float32_encode_and_decode_match_diffusers(name):
    out = run(AutoencoderKL.from_diffusers(os.path.join(DATA, name)), name, np.float32)
    # Measured max |diff| (diffusers 0.42.1, this machine): mean 6.0e-7 / 7.2e-7, logvar 4.8e-7 /
    # 6.8e-7 (values up to 0.9), decoded 2.3e-6 / 2.0e-6 (values up to 2.5). Both sides are
    # float32 (unit roundoff u = 6e-8) through ~20 layers whose sums (3x3 convolutions over 16
    # channels: 144 terms; attention over 64 positions) run in different orders: a few tens of
    # u times the magnitude, ~1e-6 to 1e-5. atol 2e-5 leaves about 10x headroom.
    for key, value in out.items():
        expected = GOLDEN[f"{name}/{key}_float32"]
        assert value.dtype == np.float32 and value.shape == expected.shape
        np.testing.assert_allclose(value, expected, rtol=0, atol=2e-5, err_msg=key)


@pytest.mark.parametrize("name", FOLDERS)
def test_float64_encode_and_decode_match_diffusers_float64(name):
    out = run(AutoencoderKL.from_diffusers(os.path.join(DATA, name)).to(dtype=np.float64), name, np.float64)
    # Measured max |diff|: 1.2e-15 (mean, logvar), 5.1e-15 (decoded): everything is float64 on
    # both sides (no float32 step as the U-Net's timestep embedding has), u = 1.1e-16; 1e-12.
    for key, value in out.items():
        assert value.dtype == np.float64
        np.testing.assert_allclose(value, GOLDEN[f"{name}/{key}_float64"], rtol=0, atol=1e-12, err_msg=key)


def test_config_translates_and_scaling_factor_is_kept():
    vae = AutoencoderKL.from_diffusers(os.path.join(DATA, "tiny_vae_plain"))
    assert vae.scaling_factor == 0.5 and vae.quant_conv is None and vae.post_quant_conv is None
    assert vae.config["block_out_channels"] == [8, 8, 16] and vae.config["out_channels"] == 2
    assert AutoencoderKL.from_diffusers(os.path.join(DATA, "tiny_vae")).scaling_factor == 0.18215


def test_a_saved_pipeline_folder_loads_from_its_vae_subfolder(tmp_path):
    AutoencoderKL.from_diffusers(os.path.join(DATA, "tiny_vae")).save_diffusers(tmp_path / "vae")
    assert AutoencoderKL.from_diffusers(tmp_path).config["latent_channels"] == 3


def test_save_then_load_round_trips_config_and_weights(tmp_path):
    vae = AutoencoderKL(in_channels=2, block_out_channels=(4, 8), layers_per_block=1, latent_channels=2,
                        norm_num_groups=2, scaling_factor=0.3, use_quant_conv=False, seed=5)
    vae.save_diffusers(tmp_path)
    loaded = AutoencoderKL.from_diffusers(tmp_path)
    assert {k: v for k, v in loaded.config.items() if k != "seed"} == {
        k: v for k, v in vae.config.items() if k != "seed"}
    for key, value in vae.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key], value)


def test_config_translation_is_invertible():
    with open(os.path.join(DATA, "tiny_vae", "config.json")) as f:
        kwargs = autoencoder_kwargs_from_diffusers_config(json.load(f))
    again = autoencoder_kwargs_from_diffusers_config(
        diffusers_config_from_autoencoder_kwargs(AutoencoderKL(**kwargs).config))
    assert again == kwargs


with open(os.path.join(DATA, "tiny_vae", "config.json")) as _f:
    TINY_CONFIG = json.load(_f)


@pytest.mark.parametrize("option, value, named", [
    ("act_fn", "gelu", "act_fn='gelu'"),
    ("down_block_types", ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
     "down_block_types ['AttnDownEncoderBlock2D']"),
    ("up_block_types", ["UpDecoderBlock2D", "AttnUpDecoderBlock2D"], "up_block_types ['AttnUpDecoderBlock2D']"),
    ("shift_factor", 0.1159, "shift_factor=0.1159"),
    ("latents_mean", [0.0, 0.0, 0.0], "latents_mean=[0.0, 0.0, 0.0]"),
    ("block_out_channels", [8, 16, 32], "2 down_block_types and 2 up_block_types for 3 block_out_channels"),
    ("norm_type", "spatial", "unknown options ['norm_type']"),
    ("_class_name", "VQModel", "_class_name='VQModel'"),
    ("layers_per_block", 0, "layers_per_block must be >= 1"),
])
def test_unsupported_options_are_refused_by_name(option, value, named):
    with pytest.raises(ValueError) as err:
        autoencoder_kwargs_from_diffusers_config({**TINY_CONFIG, option: value})
    assert named in str(err.value)


def test_every_unsupported_option_is_named_at_once(tmp_path):
    with open(tmp_path / "config.json", "w") as f:
        json.dump({**TINY_CONFIG, "act_fn": "mish", "shift_factor": 0.1}, f)
    with pytest.raises(ValueError, match=r"config.json: .*act_fn='mish'.*shift_factor=0.1"):
        AutoencoderKL.from_diffusers(tmp_path)


def test_weights_of_another_architecture_are_refused_naming_the_keys(tmp_path):
    AutoencoderKL.from_diffusers(os.path.join(DATA, "tiny_vae")).save_diffusers(tmp_path)
    with open(tmp_path / "config.json", "w") as f:
        json.dump({**TINY_CONFIG, "layers_per_block": 1}, f)
    with pytest.raises(ValueError, match=r"unexpected keys .*encoder\.down_blocks\.0\.resnets\.1\.conv1\.weight"):
        AutoencoderKL.from_diffusers(tmp_path)


# ---- the diagonal Gaussian latent ---------------------------------------------------------------


def tiny(dtype=np.float32, **overrides):
    kwargs = dict(in_channels=1, block_out_channels=(2, 4), layers_per_block=1, latent_channels=1,
                  norm_num_groups=2, seed=0)
    return AutoencoderKL(**{**kwargs, **overrides}).to(dtype=dtype)


def test_logvar_is_clamped_to_diffusers_range_with_no_gradient_outside():
    vae = tiny(np.float64)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 1, 4, 4))
    for bias, bound in ((1e3, 20.0), (-1e3, -30.0)):
        vae.quant_conv.bias.data[1] = bias  # the logvar channel (latent_channels = 1)
        mean, logvar = vae.encode(x)
        assert np.all(logvar.numpy() == bound)
        vae.zero_grad()
        logvar.sum().backward()
        assert not np.any(vae.quant_conv.bias.grad[1])


def test_sample_latent_is_mean_plus_std_times_the_generators_noise():
    vae = tiny()
    x = np.random.default_rng(0).uniform(-1, 1, (3, 1, 8, 8)).astype(np.float32)
    with rd.no_grad():
        mean, logvar = vae.encode(x)
        z = vae.sample_latent(mean, logvar, np.random.default_rng(7)).numpy()
        again = vae.sample_latent(mean, logvar, np.random.default_rng(7)).numpy()
    noise = np.random.default_rng(7).standard_normal(mean.shape, dtype=np.float32)
    expected = mean.numpy() + np.exp(0.5 * logvar.numpy()) * noise
    np.testing.assert_allclose(z, expected, rtol=1e-6, atol=1e-7)  # float32: exp and fma rounding
    np.testing.assert_array_equal(z, again)
    with pytest.raises(TypeError, match="rng must be a random generator"):
        vae.sample_latent(mean, logvar, 7)


def test_kl_is_the_closed_form_and_zero_for_the_prior():
    rng = np.random.default_rng(0)
    mean, logvar = rng.standard_normal((2, 3, 4, 4)), rng.standard_normal((2, 3, 4, 4))
    kl = AutoencoderKL.kl(rd.Tensor(mean), rd.Tensor(logvar)).numpy()
    expected = 0.5 * (mean**2 + np.exp(logvar) - 1 - logvar).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(kl, expected, rtol=1e-14)
    zero = np.zeros((1, 2, 2, 2))
    assert AutoencoderKL.kl(rd.Tensor(zero), rd.Tensor(zero)).numpy()[0] == 0.0


# ---- gradients and training ---------------------------------------------------------------------


def test_loss_gradients_match_finite_differences():
    """Reconstruction (L2) + KL through encoder, sampling, decoder: the autograd gradient of the
    input and of one parameter in each part (float64, central differences, tolerance as in
    refdiff.nn.testing: ~1e-10 error for O(1) values, checked at 1e-6)."""
    vae = tiny(np.float64)
    x = np.random.default_rng(1).uniform(-1, 1, (2, 1, 4, 4))
    names = ["encoder.conv_in.weight", "encoder.mid_block.attentions.0.to_q.weight", "quant_conv.weight",
             "decoder.up_blocks.0.upsamplers.0.conv.bias", "decoder.conv_out.weight"]
    owners = [(dict(vae.named_modules())[n.rsplit(".", 1)[0]], n.rsplit(".", 1)[1]) for n in names]
    params = [getattr(m, attr).data for m, attr in owners]

    def loss(x, *weights):
        for (module, attr), w in zip(owners, weights):
            setattr(module, attr, w)
        return vae.loss(x, np.random.default_rng(0), kl_weight=0.5, reconstruction="l2")

    check_gradients(loss, [x, *params])


def test_l1_loss_is_the_mean_absolute_error():
    vae = tiny(np.float64)
    x = np.random.default_rng(2).uniform(-1, 1, (2, 1, 4, 4))
    with rd.no_grad():
        got = vae.loss(x, np.random.default_rng(0), kl_weight=0.0).item()
        mean, logvar = vae.encode(x)
        x_hat = vae.decode(vae.sample_latent(mean, logvar, np.random.default_rng(0))).numpy()
    assert got == pytest.approx(np.abs(x_hat - x).mean(), rel=1e-14)


def test_a_few_adam_steps_reduce_the_reconstruction_loss():
    rng = np.random.default_rng(0)
    # a fixed batch of 8x8 images: random squares on a dark background, in [-1, 1]
    x = -np.ones((8, 1, 8, 8), dtype=np.float32)
    for image in x:
        r, c, s = rng.integers(0, 4), rng.integers(0, 4), rng.integers(2, 5)
        image[0, r:r + s, c:c + s] = 1.0
    vae = tiny(block_out_channels=(8, 8), norm_num_groups=4, latent_channels=2, seed=1)
    optimizer = Adam(vae.parameters(), lr=3e-3)

    def reconstruction():
        with rd.no_grad():
            return float(np.abs(vae(x).numpy() - x).mean())  # decode(mean): no sampling noise

    before = reconstruction()
    for step in range(30):
        optimizer.zero_grad()
        vae.loss(x, np.random.default_rng(step), kl_weight=1e-6).backward()
        optimizer.step()
    after = reconstruction()
    # measured: 0.88 -> 0.28 (mean |x_hat - x| of the mean latent) in 30 steps
    assert after < 0.6 * before, (before, after)


# ---- bad input ----------------------------------------------------------------------------------


def test_bad_inputs_are_refused_with_their_names():
    vae = tiny()
    with pytest.raises(ValueError, match=r"x of shape \(B, in_channels=1, H, W\)"):
        vae.encode(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="divisible by 2"):
        vae.encode(np.zeros((1, 1, 7, 8), np.float32))
    with pytest.raises(ValueError, match=r"z of shape \(B, latent_channels=1, H, W\)"):
        vae.decode(np.zeros((1, 4, 2, 2), np.float32))
    with pytest.raises(TypeError, match="x must have dtype float32 or float64"):
        vae.encode(np.zeros((1, 1, 8, 8), np.int64))
    with pytest.raises(TypeError, match="x must be a float32 or float64 array"):
        vae.encode([[[[0.0]]]])
    with pytest.raises(ValueError, match="reconstruction must be one of"):
        vae.loss(np.zeros((1, 1, 8, 8), np.float32), np.random.default_rng(0), reconstruction="l3")
    with pytest.raises(ValueError, match="norm_num_groups=3"):
        AutoencoderKL(block_out_channels=(4, 8), norm_num_groups=3)
