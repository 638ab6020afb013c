"""Every bad input refused clearly: one property per test, each naming the plausible mistake it
catches. Checkpoint integrity and crash tests are in test_checkpoint_faults.py."""
import json
import os

import numpy as np
import pytest

import refdiff as rd
from refdiff import cli
from refdiff.checks import check_class_labels
from refdiff.models.diffusers_io import unet_kwargs_from_diffusers_config
from refdiff.nn import Conv2d, Embedding, GroupNorm, Linear
from refdiff.training.data import Dataset, load_dataset
from refdiff.training.trainer import TrainConfig, Trainer

TINY_UNET = dict(in_channels=1, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(),
                 sample_size=8, norm_groups=4)
NOT_A_SIZE = [(0, ValueError), (-2, ValueError), (2.5, TypeError), (4.0, TypeError), (None, TypeError),
              (True, TypeError)]


# ---- 2. constructor and config arguments ---------------------------------------------------


@pytest.mark.parametrize("value, error", NOT_A_SIZE, ids=["zero", "negative", "float", "integral-float", "None", "bool"])
@pytest.mark.parametrize("name", ["in_channels", "base_channels", "num_res_blocks", "sample_size", "norm_groups"])
def test_unet_sizes_must_be_positive_ints_named_in_the_error(name, value, error):
    """Mistake caught: UNet(base_channels=32.0) truncated, True taken as 1, 0 dividing by zero."""
    with pytest.raises(error, match=name):
        rd.UNet(**{**TINY_UNET, name: value})


@pytest.mark.parametrize("name", ["time_embedding_dim", "attention_head_dim", "num_classes", "attn_norm_groups"])
def test_unet_optional_sizes_of_zero_are_refused_not_taken_for_the_default(name):
    """Mistake caught: time_embedding_dim=0 silently falling back to 4 * base_channels."""
    with pytest.raises(ValueError, match=f"{name} must be >= 1, got 0"):
        rd.UNet(**{**TINY_UNET, name: 0})


def test_unet_channel_mults_entries_are_checked_by_index():
    """Mistake caught: channel_mults=(1, 2.5) truncated to (1, 2)."""
    with pytest.raises(TypeError, match=r"channel_mults\[1\] must be an integer, got float"):
        rd.UNet(**{**TINY_UNET, "channel_mults": (1, 2.5)})


def test_unet_flags_must_be_bools():
    """Mistake caught: flip_sin_to_cos="false" (a truthy string) silently meaning True."""
    with pytest.raises(TypeError, match="flip_sin_to_cos must be True or False"):
        rd.UNet(**{**TINY_UNET, "flip_sin_to_cos": "false"})


def test_unet_seed_must_be_a_non_negative_int():
    """Mistake caught: seed=1.5 truncated, so two 'different' seeds give the same weights."""
    with pytest.raises(TypeError, match="seed must be an integer"):
        rd.UNet(**{**TINY_UNET, "seed": 1.5})


@pytest.mark.parametrize("name", ["dim", "hidden", "time_dim"])
@pytest.mark.parametrize("value", [2.0, True, None], ids=["float", "bool", "None"])
def test_mlp_sizes_refuse_floats_bools_and_none(name, value):
    """Mistake caught: MLPDenoiser(hidden=True) building a 1-wide network."""
    with pytest.raises(TypeError, match=f"{name} must be an integer"):
        rd.MLPDenoiser(**{name: value})


@pytest.mark.parametrize("make, match", [
    (lambda: Linear(0, 3), "Linear: in_features must be >= 1"),
    (lambda: Linear(3, 2.5), "Linear: out_features must be an integer"),
    (lambda: Conv2d(3, 4, 3, padding=-1), "Conv2d: padding must be >= 0"),
    (lambda: Conv2d(3, 4, None), "Conv2d: kernel_size must be an integer"),
    (lambda: GroupNorm(True, 4), "GroupNorm: num_groups must be an integer, got bool"),
    (lambda: GroupNorm(0, 4), "GroupNorm: num_groups must be >= 1"),
    (lambda: Embedding(None, 3), "Embedding: num_embeddings must be an integer"),
], ids=["linear-zero", "linear-float", "conv-negative-padding", "conv-None", "groupnorm-bool", "groupnorm-zero",
        "embedding-None"])
def test_layer_sizes_are_checked_with_the_layer_and_argument_named(make, match):
    """Mistake caught: a ZeroDivisionError or a numpy shape error from inside a layer's init."""
    with pytest.raises((TypeError, ValueError), match=match):
        make()


DIFFUSERS_CONFIG = {"_class_name": "UNet2DModel", "sample_size": 8, "in_channels": 1, "out_channels": 1,
                    "block_out_channels": [8, 16], "down_block_types": ["DownBlock2D", "DownBlock2D"],
                    "up_block_types": ["UpBlock2D", "UpBlock2D"], "layers_per_block": 1, "norm_num_groups": 4,
                    "attention_head_dim": None}


@pytest.mark.parametrize("key, value, match", [
    ("in_channels", 1.5, "in_channels must be an integer, got float"),
    ("layers_per_block", 0, "layers_per_block must be >= 1"),
    ("block_out_channels", [8, 0], r"block_out_channels\[1\] must be >= 1"),
    ("norm_num_groups", True, "norm_num_groups must be an integer, got bool"),
    ("time_embedding_dim", 0, "time_embedding_dim must be >= 1"),
    ("flip_sin_to_cos", "yes", "flip_sin_to_cos must be True or False"),
    ("dropout", 1.5, r"dropout must lie in \[0, 1\)"),
    ("sample_size", [8, 0], r"sample_size\[1\] must be >= 1"),
], ids=["float-channels", "zero-layers", "zero-channels", "bool-groups", "zero-temb", "string-flag", "dropout",
        "zero-sample-size"])
def test_diffusers_config_values_are_checked_with_their_key(key, value, match):
    """Mistake caught: a hand-written config.json with 1.5 channels or 0 layers crashing deep inside."""
    with pytest.raises(ValueError, match=match):
        unet_kwargs_from_diffusers_config({**DIFFUSERS_CONFIG, key: value})


def test_a_bad_diffusers_config_is_reported_with_its_file(tmp_path):
    """Mistake caught: an error about a config value that does not say which file holds it."""
    (tmp_path / "config.json").write_text(json.dumps({**DIFFUSERS_CONFIG, "in_channels": 0}))
    with pytest.raises(ValueError, match=r"config\.json: unsupported diffusers UNet2DModel config: in_channels must be >= 1"):
        rd.UNet.from_diffusers(str(tmp_path))


@pytest.mark.parametrize("field, value, error, match", [
    ("batch_size", True, TypeError, "batch_size must be an integer, got bool"),
    ("batch_size", 32.0, TypeError, "batch_size must be an integer, got float"),
    ("seed", None, TypeError, "seed must be an integer"),
    ("seed", -1, ValueError, "seed must be >= 0"),
    ("ema_decay", 1.0, ValueError, r"ema_decay must lie in \[0, 1\)"),
    ("lr", float("nan"), ValueError, "lr must be a finite number > 0"),
    ("checkpoint_minutes", -1.0, ValueError, "checkpoint_minutes must be >= 0"),
    ("adam_betas", (0.9,), ValueError, "adam_betas must be a pair"),
], ids=["bool-batch", "float-batch", "None-seed", "negative-seed", "ema-decay-1", "nan-lr", "negative-minutes",
        "one-beta"])
def test_training_options_are_checked_with_their_name(field, value, error, match):
    """Mistake caught: batch_size=True training on batches of one, ema_decay=1.0 freezing the EMA."""
    with pytest.raises(error, match=match):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("options, match", [
    ({"loss_weighting": "min-snr"}, "loss_weighting must be one of 'none', 'min_snr'"),
    ({"min_snr_gamma": float("nan")}, "min_snr_gamma must be a finite number > 0"),
    ({"clip_sample": "yes"}, "clip_sample must be True or False"),
    ({"variance_type": "fixed"}, "variance_type must be one of"),
], ids=["misspelt-weighting", "nan-gamma", "string-clip", "variance"])
def test_gaussian_diffusion_options_are_checked_when_built(options, match):
    """Mistake caught: a misspelt option accepted at construction and failing (or ignored) later."""
    with pytest.raises((TypeError, ValueError), match=match):
        rd.GaussianDiffusion(rd.MLPDenoiser(), rd.NoiseSchedule.linear(T=10), **options)


@pytest.mark.parametrize("kw, match", [({"n": True}, "n must be a positive integer, got True"),
                                       ({"n": 2.0}, "n must be a positive integer, got 2.0"),
                                       ({"image_size": 0}, "image_size must be a positive integer")],
                         ids=["bool-n", "float-n", "zero-image-size"])
def test_dataset_sizes_refuse_bools_floats_and_zero(kw, match):
    """Mistake caught: image_size=0 falling back to the default size, n=True loading one item."""
    with pytest.raises(ValueError, match=match):
        load_dataset("shapes", **kw)


# ---- 3. dtypes --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.complex64, np.int64, np.bool_, object], ids=["complex", "int", "bool", "object"])
def test_float_inputs_refuse_complex_int_bool_and_object_arrays(dtype):
    """Mistake caught: a complex array losing its imaginary part, an int array rounding the math."""
    s = rd.NoiseSchedule.linear(T=10)
    x0 = np.zeros((2, 3)).astype(dtype)
    with pytest.raises(TypeError, match="x0 must have dtype float32 or float64"):
        rd.q_sample(x0, 1, np.zeros((2, 3), np.float32), s)


@pytest.mark.parametrize("dtype", [np.complex64, np.bool_], ids=["complex", "bool"])
def test_dataset_refuses_complex_and_bool_data(dtype):
    """Mistake caught: Dataset(complex data) silently dropping the imaginary part (a ComplexWarning)."""
    with pytest.raises(TypeError, match="x must be a real"):
        Dataset(np.ones((4, 2), dtype=dtype))


def test_dataset_refuses_bool_labels():
    """Mistake caught: a boolean mask passed as labels becoming classes 0 and 1."""
    with pytest.raises(TypeError, match="labels must be integers, got dtype bool"):
        Dataset(np.zeros((3, 2), np.float32), np.array([True, False, True]))


def test_a_bool_class_label_is_refused():
    """Mistake caught: y=True taken as class 1."""
    with pytest.raises(TypeError, match="y must be integer class labels, got a bool"):
        check_class_labels(True, 4, num_classes=3)


def test_uint8_images_in_an_npz_are_scaled_from_0_255(tmp_path):
    """The documented rule for integer images: 0..255 -> [-1, 1]."""
    np.savez(tmp_path / "u8.npz", x=np.array([0, 255], np.uint8).reshape(2, 1, 1, 1).repeat(4, 2).repeat(4, 3))
    x = load_dataset(f"npz:{tmp_path / 'u8.npz'}").x
    assert x.min() == -1.0 and x.max() == 1.0


# ---- 1. NaN and inf ---------------------------------------------------------------------------


def test_q_sample_refuses_nan_noise():
    """Mistake caught: NaN noise (x0 was checked, the noise was not) poisoning a training batch."""
    s = rd.NoiseSchedule.linear(T=10)
    noise = np.zeros((2, 3), np.float32)
    noise[1, 2] = np.nan
    with pytest.raises(ValueError, match="noise contains NaN"):
        rd.q_sample(np.zeros((2, 3), np.float32), 1, noise, s)


@pytest.mark.parametrize("convert", ["x0_from_eps", "eps_from_x0", "v_from_x0_eps", "x0_from_v", "eps_from_v"])
def test_parameterization_conversions_refuse_nan_in_their_second_input(convert):
    """Mistake caught: the eps/x0/v conversions checking nothing, so NaN flows into samples."""
    from refdiff.gaussian import parameterization

    bad = np.zeros((2, 3), np.float32)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="contains NaN"):
        getattr(parameterization, convert)(np.zeros((2, 3), np.float32), bad, 1, rd.NoiseSchedule.linear(T=10))


def test_training_target_refuses_nan_noise():
    """Mistake caught: a NaN regression target, found only as 'loss became nan'."""
    from refdiff.gaussian.parameterization import training_target

    noise = np.full((2, 3), np.inf, np.float32)
    with pytest.raises(ValueError, match="noise contains inf"):
        training_target(np.zeros((2, 3), np.float32), noise, 1, rd.NoiseSchedule.linear(T=10), "v_prediction")


def test_timestep_embedding_refuses_a_nan_frequency_shift():
    """Mistake caught: downscale_freq_shift=nan giving an all-NaN embedding."""
    with pytest.raises(ValueError, match="downscale_freq_shift must be a finite real number"):
        rd.timestep_embedding(np.arange(3), 8, downscale_freq_shift=float("nan"))


def test_training_data_with_nan_is_refused():
    """Mistake caught: a NaN in the data surfacing as 'loss became nan' many steps later."""
    x = np.zeros((8, 2), np.float32)
    x[3, 1] = np.inf
    diffusion = rd.GaussianDiffusion(rd.MLPDenoiser(), rd.NoiseSchedule.linear(T=10))
    with pytest.raises(ValueError, match="contains NaN or inf"):
        Trainer(diffusion, type("D", (), {"x": x, "y": None})(), progress=False)


# ---- 6. data ---------------------------------------------------------------------------------


def test_points_far_outside_the_sampling_range_are_refused(tmp_path):
    """Mistake caught: data around 50 trained on, then sampled clipped to [-1, 1] with exit 0."""
    np.savez(tmp_path / "p.npz", x=np.random.default_rng(0).normal(50, 1, (64, 2)))
    diffusion = rd.GaussianDiffusion(rd.MLPDenoiser(), rd.NoiseSchedule.linear(T=10))
    with pytest.raises(ValueError, match=r"samples are clipped to \[-1, 1\] \(clip_sample\): rescale the data"):
        Trainer(diffusion, load_dataset(f"npz:{tmp_path / 'p.npz'}"), progress=False)


def test_points_outside_the_range_train_when_clipping_is_off(tmp_path):
    """The way out the message names: clip_sample=False keeps data on its own scale."""
    diffusion = rd.GaussianDiffusion(rd.MLPDenoiser(), rd.NoiseSchedule.linear(T=10), clip_sample=False)
    Trainer(diffusion, Dataset(np.full((8, 2), 50.0, np.float32)), progress=False)


@pytest.mark.parametrize("shape", [(0, 2), (0, 1, 8, 8), (5, 0)], ids=["no-points", "no-images", "zero-width"])
def test_an_empty_npz_is_refused(tmp_path, shape):
    """Mistake caught: an empty export failing later with an unrelated shape error."""
    np.savez(tmp_path / "e.npz", x=np.zeros(shape, np.float32))
    with pytest.raises(ValueError, match="holds no samples"):
        load_dataset(f"npz:{tmp_path / 'e.npz'}")


# ---- 7. the command line: one line, exit status 2 --------------------------------------------

TINY = ["--T", "20", "--hidden", "8", "--num-blocks", "1", "--batch-size", "16", "--n", "64", "--sample-n", "8",
        "--sample-steps", "2", "--no-progress"]


def _fails_with_one_line(argv, capsys, match):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and match in lines[0], err
    return lines[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("bad") / "run")
    assert cli.main(["train", "--data", "moons", "--steps", "2", "--out", out, *TINY]) == 0
    return out


def _copy(run, tmp_path):
    import shutil

    dst = str(tmp_path / "run")
    shutil.copytree(run, dst)
    return dst


def test_cli_resume_of_a_corrupt_checkpoint_is_one_line(tiny_run, tmp_path, capsys):
    """Mistake caught: a truncated checkpoint JSON ending a resume with a traceback."""
    run = _copy(tiny_run, tmp_path)
    path = os.path.join(run, "checkpoints", "step_00000002.json")
    open(path, "w").write(open(path).read()[:50])
    _fails_with_one_line(["train", "--resume", "--steps", "4", "--out", run, "--no-progress"], capsys,
                         "corrupt checkpoint JSON")


def test_cli_sample_from_an_edited_checkpoint_is_one_line(tiny_run, tmp_path, capsys):
    """Mistake caught: sampling from a checkpoint whose JSON was changed by hand."""
    run = _copy(tiny_run, tmp_path)
    path = os.path.join(run, "checkpoints", "step_00000002.json")
    meta = json.loads(open(path).read())
    meta["train"]["lr"] = 1.0
    open(path, "w").write(json.dumps(meta))
    _fails_with_one_line(["sample", run, "--n", "4", "--out", str(tmp_path / "s.npz"), "--no-progress"], capsys,
                         "corrupt or edited checkpoint JSON")


def test_cli_ema_decay_of_one_is_refused(capsys, tmp_path):
    """Mistake caught: --ema-decay 1.0 accepted by the parser, then a traceback from the trainer."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--data", "moons", "--steps", "2", "--out", str(tmp_path / "r"), "--ema-decay", "1.0"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert "--ema-decay: expected a decay in [0, 1)" in err.splitlines()[-1]


def test_cli_empty_npz_is_one_line(tmp_path, capsys):
    """Mistake caught: an empty npz crashing the trainer."""
    np.savez(tmp_path / "e.npz", x=np.zeros((0, 2), np.float32))
    _fails_with_one_line(["train", "--data", f"npz:{tmp_path / 'e.npz'}", "--steps", "2", "--out",
                          str(tmp_path / "r"), *TINY], capsys, "holds no samples")


def test_cli_points_out_of_range_are_one_line(tmp_path, capsys):
    """Mistake caught: data around 50 trained and sampled clipped to [-1, 1], exit 0."""
    np.savez(tmp_path / "p.npz", x=np.random.default_rng(0).normal(50, 1, (64, 2)).astype(np.float32))
    _fails_with_one_line(["train", "--data", f"npz:{tmp_path / 'p.npz'}", "--steps", "2", "--out",
                          str(tmp_path / "r"), *TINY], capsys, "rescale the data")


@pytest.mark.parametrize("command", ["train", "sample"])
def test_cli_out_below_a_regular_file_is_one_line(tiny_run, tmp_path, capsys, command):
    """Mistake caught: --out under a file ending in NotADirectoryError's traceback."""
    (tmp_path / "file").write_text("x")
    if command == "train":
        argv = ["train", "--data", "moons", "--steps", "2", "--out", str(tmp_path / "file" / "run"), *TINY]
    else:
        argv = ["sample", tiny_run, "--n", "2", "--out", str(tmp_path / "file" / "s.npz"), "--no-progress"]
    _fails_with_one_line(argv, capsys, "is a file, so nothing can be created below it")


def test_cli_unwritable_checkpoint_directory_is_one_line(tmp_path, capsys, monkeypatch):
    """Mistake caught: a full disk found only at the first save, as a traceback."""
    from refdiff.io import checkpoint as ckpt

    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda path: type("U", (), {"free": 0})())
    _fails_with_one_line(["train", "--data", "moons", "--steps", "2", "--out", str(tmp_path / "r"), *TINY], capsys,
                         "a checkpoint of this run needs about")


# ---- the networks' input x ----------------------------------------------------------------------
# Catches a network that casts an integer, bool or complex array to float without a word (an
# uint8 image would then be read on the 0..255 scale) or computes on NaN input.

def _networks():
    return [(rd.UNet(in_channels=1, base_channels=8, channel_mults=(1,), num_res_blocks=1, attention_resolutions=(),
                     norm_groups=4, sample_size=4), (2, 1, 4, 4)),
            (rd.MLPDenoiser(dim=2, hidden=8, num_blocks=1), (2, 2))]


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.bool_, np.complex64])
def test_the_networks_refuse_non_float_input_naming_x(dtype):
    for model, shape in _networks():
        with pytest.raises(TypeError, match="x must have dtype float32 or float64"):
            model(np.zeros(shape, dtype=dtype), 0)


def test_the_networks_refuse_nan_input_on_the_host():
    for model, shape in _networks():
        with pytest.raises(ValueError, match="x contains NaN"):
            model(np.full(shape, np.nan, dtype=np.float32), 0)
