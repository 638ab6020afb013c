"""`refdiff edit` and `refdiff train --superres`, and the editing API of GaussianDiffusion on a U-Net.

The runs are tiny (2 training steps): these tests check the plumbing (files, shapes, the known region,
the checkpoint record, one-line errors), not picture quality; benchmarks/bench_editing.py measures that.
"""
import numpy as np
import pytest

import refdiff as rd
from refdiff import cli
from refdiff.samplers.editing import downsample_area
from refdiff.training.data import load_dataset
from refdiff.training.trainer import load_diffusion

TINY_UNET = ["--T", "20", "--n", "64", "--base-channels", "8", "--batch-size", "8", "--sample-n", "4",
             "--sample-steps", "2", "--no-progress", "--steps", "2", "--image-size", "8"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("edit")
    pixel, sr = str(root / "px"), str(root / "sr")
    assert cli.main(["train", "--data", "digits", "--out", pixel, *TINY_UNET]) == 0
    assert cli.main(["train", "--data", "digits", "--superres", "2", "--out", sr, *TINY_UNET]) == 0
    x = load_dataset("digits", image_size=8).x[:3].astype(np.float32)  # (3, 1, 8, 8)
    mask = np.ones((1, 8, 8), np.float32)
    mask[:, :, 4:] = 0
    files = {"in": root / "in.npz", "small": root / "small.npz", "mask": root / "mask.npz", "bad": root / "bad.npz",
             "rgb": root / "rgb.npz"}
    np.savez(files["in"], x=x)
    np.savez(files["small"], x=downsample_area(x, 2))
    np.savez(files["mask"], m=mask)
    np.savez(files["bad"], m=mask * 0.5)
    np.savez(files["rgb"], x=np.zeros((1, 3, 8, 8), np.float32))
    return pixel, sr, x, mask, {k: str(v) for k, v in files.items()}, root


def test_edit_help_exits_zero_and_names_the_modes(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["edit", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert all(mode in out for mode in ("img2img", "inpaint", "superres"))


def test_superres_run_records_its_factor_and_a_2c_channel_unet(runs):
    """The checkpoint brings back the factor and the U-Net that reads [x_t, up(x_low)]: 2 channels in, 1 out."""
    _, sr, _, _, _, _ = runs
    diffusion, _ = load_diffusion(sr)
    assert diffusion.superres_factor == 2
    assert diffusion.model.config["in_channels"] == 2 and diffusion.model.config["out_channels"] == 1


def test_edit_inpaint_writes_the_result_with_the_known_region_exact(runs, tmp_path):
    pixel, _, x, mask, files, _ = runs
    out = str(tmp_path / "filled.npz")
    assert cli.main(["edit", pixel, "--mode", "inpaint", "--input", files["in"], "--mask", files["mask"],
                     "--steps", "5", "--jump-length", "2", "--jump-n-sample", "2", "--out", out]) == 0
    edited = np.load(out)["edited"]
    assert edited.shape == x.shape
    np.testing.assert_array_equal(edited[..., :4], x[..., :4])


@pytest.mark.parametrize("mode, extra", [("img2img", ["--strength", "0.5", "--steps", "4"]),
                                         ("inpaint", ["--method", "replace", "--steps", "4"])])
def test_edit_writes_a_picture(runs, tmp_path, mode, extra):
    pixel, _, _, _, files, _ = runs
    out = tmp_path / "edited.png"
    mask = ["--mask", files["mask"]] if mode == "inpaint" else []
    assert cli.main(["edit", pixel, "--mode", mode, "--input", files["in"], *mask, *extra, "--out", str(out)]) == 0
    assert out.stat().st_size > 0


def test_edit_superres_upscales_with_any_sampler(runs, tmp_path):
    _, sr, x, _, files, _ = runs
    out = str(tmp_path / "large.npz")
    assert cli.main(["edit", sr, "--mode", "superres", "--input", files["small"], "--sampler", "euler", "--steps", "3",
                     "--out", out]) == 0
    assert np.load(out)["edited"].shape == x.shape


@pytest.mark.parametrize("case, message", [
    ("bad_mask_values", "mask must hold only 0 (fill in) and 1 (keep)"),
    ("mask_shape", "mask must have the shape"),
    ("strength", "--strength 1.5: must be in [0, 1]"),
    ("channels", "3 channels, the model's images have 1"),
    ("superres_on_pixel_run", "not a super-resolution run"),
    ("superres_size", "8x8 images, the model takes 4x4"),
    ("mask_without_inpaint", "--mask is needed with --mode inpaint, and only there"),
])
def test_edit_bad_input_ends_with_one_line_and_status_2(runs, tmp_path, capsys, case, message):
    """Bad masks, strength outside [0, 1], channel counts or sizes that do not match: exit 2, one line."""
    pixel, sr, _, _, f, _ = runs
    out = str(tmp_path / "x.png")
    argv = {
        "bad_mask_values": [pixel, "--mode", "inpaint", "--input", f["in"], "--mask", f["bad"]],
        "mask_shape": [pixel, "--mode", "inpaint", "--input", f["in"], "--mask", f["small"]],
        "strength": [pixel, "--mode", "img2img", "--input", f["in"], "--strength", "1.5"],
        "channels": [pixel, "--mode", "img2img", "--input", f["rgb"]],
        "superres_on_pixel_run": [pixel, "--mode", "superres", "--input", f["small"]],
        "superres_size": [sr, "--mode", "superres", "--input", f["in"]],
        "mask_without_inpaint": [pixel, "--mode", "img2img", "--input", f["in"], "--mask", f["mask"]],
    }[case]
    with pytest.raises(SystemExit) as exc:
        cli.main(["edit", *argv, "--out", out])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_superres_training_lowers_the_loss_on_digits():
    """A tiny SR U-Net (2 channels in, 1 out) trained 40 AdamW steps on 8x8 digits: the loss on a fixed
    held-out batch with fixed t and noise drops below 0.8 of the untrained one (measured: ~0.4 of it;
    the untrained eps = 0 network has loss ~1). Catches a condition that breaks the gradient path
    or channels concatenated on the wrong axis (the U-Net then refuses the input)."""
    data = load_dataset("digits", image_size=8).x.astype(np.float32)
    train, held_out = data[:256], data[-32:]
    model = rd.UNet(in_channels=2, out_channels=1, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                    attention_resolutions=(), sample_size=8, norm_groups=8, seed=0)
    diffusion = rd.GaussianDiffusion(model, rd.NoiseSchedule.linear(T=100), superres_factor=2)

    def held_out_loss():
        return float(diffusion.loss(held_out, rng=123).item())

    before = held_out_loss()
    optimizer = rd.optim.AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    for step in range(40):
        batch = train[rng.integers(0, len(train), 32)]
        optimizer.zero_grad()
        diffusion.loss(batch, rng=step).backward()
        optimizer.step()
    assert held_out_loss() < 0.8 * before


def test_a_condition_with_the_wrong_channel_count_is_refused():
    model = rd.UNet(in_channels=2, out_channels=1, base_channels=8, channel_mults=(1,), num_res_blocks=1,
                    attention_resolutions=(), sample_size=4, norm_groups=8, seed=0)
    diffusion = rd.GaussianDiffusion(model, rd.NoiseSchedule.linear(T=10))
    with pytest.raises(ValueError, match="x_cond must have 1 channels"):
        diffusion.loss(np.zeros((2, 1, 4, 4), np.float32), x_cond=np.zeros((2, 2, 4, 4), np.float32))
    with pytest.raises(ValueError, match="x_low must have 1 channels"):
        rd.GaussianDiffusion(model, rd.NoiseSchedule.linear(T=10), superres_factor=2).superres(np.zeros((1, 3, 2, 2)))
