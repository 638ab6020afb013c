"""The refdiff command line, run in-process: each command writes its files; bad arguments exit 2."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from refdiff import cli



TINY_MLP = ["--T", "50", "--hidden", "16", "--num-blocks", "1", "--batch-size", "32", "--n", "256", "--sample-n", "50",
            "--sample-steps", "5", "--no-progress"]


@pytest.fixture(scope="module")
def moons_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cli") / "moons")
    assert cli.main(["train", "--data", "moons", "--steps", "12", "--out", out, *TINY_MLP]) == 0
    return out


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cli") / "digits")
    args = ["train", "--data", "digits", "--classes", "--steps", "2", "--out", out, "--T", "20", "--n", "64",
            "--base-channels", "8", "--batch-size", "8", "--sample-n", "10", "--sample-steps", "2", "--no-progress"]
    assert cli.main(args) == 0
    return out


@pytest.mark.parametrize("command", [[], ["train"], ["sample"], ["demo"]])
def test_help_exits_zero_and_describes_the_command(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([*command, "--help"])
    assert exit_.value.code == 0
    assert "usage: refdiff" in capsys.readouterr().out


def test_train_writes_a_checkpoint_a_picture_and_the_losses(moons_run):
    assert sorted(os.listdir(os.path.join(moons_run, "checkpoints"))) == ["step_00000012.json", "step_00000012.safetensors"]
    assert os.listdir(os.path.join(moons_run, "samples")) == ["step_00000012.png"]
    assert len(json.load(open(os.path.join(moons_run, "losses.json")))) == 12


def test_sample_writes_a_scatter_png_and_an_npz_of_points(moons_run, tmp_path):
    png, npz = str(tmp_path / "s.png"), str(tmp_path / "s.npz")
    assert cli.main(["sample", moons_run, "--n", "30", "--out", png, "--no-progress"]) == 0
    assert cli.main(["sample", moons_run, "--n", "30", "--sampler", "ddim", "--steps", "5", "--out", npz, "--no-progress"]) == 0
    assert Image.open(png).size == (512, 512)
    samples = np.load(npz)["samples"]
    assert samples.shape == (30, 2) and np.all(np.isfinite(samples))


def test_resume_continues_to_the_requested_total_steps(moons_run, tmp_path, capsys):
    import shutil

    run = str(tmp_path / "run")
    shutil.copytree(moons_run, run)
    assert cli.main(["train", "--resume", "--steps", "15", "--out", run, "--no-progress"]) == 0
    assert "resuming" in capsys.readouterr().out
    assert len(json.load(open(os.path.join(run, "losses.json")))) == 15
    assert "step_00000015.json" in os.listdir(os.path.join(run, "checkpoints"))


def test_class_conditional_images_sample_a_grid_with_guidance(digits_run, tmp_path):
    out = str(tmp_path / "grid.png")
    args = ["sample", digits_run, "--n", "10", "--sampler", "ddim", "--steps", "3", "--guidance-scale", "2",
            "--out", out, "--no-progress"]
    assert cli.main(args) == 0
    width, height = Image.open(out).size
    assert width > height  # one row of 10 classes
    out3 = str(tmp_path / "three.npz")
    assert cli.main(["sample", digits_run, "--n", "4", "--class", "3", "--steps", "2", "--out", out3, "--no-progress"]) == 0
    np.testing.assert_array_equal(np.load(out3)["labels"], [3, 3, 3, 3])
    assert np.load(out3)["samples"].shape == (4, 1, 16, 16)


def test_demo_quick_writes_its_picture_and_prints_the_metric(tmp_path, capsys):
    out = str(tmp_path / "demo")
    assert cli.main(["demo", "--quick", "--out", out, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert os.path.exists(os.path.join(out, "samples.png"))
    assert f"wrote {os.path.join(out, 'samples.png')}" in printed and "baseline" in printed


def _exit_code_and_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    return exit_.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--data", "moons", "--steps", "0", "--out", "x"], "--steps: expected a positive integer, got 0"),
        (["train", "--data", "moons", "--steps", "ten", "--out", "x"], "expected a positive integer, got 'ten'"),
        (["train", "--data", "moons", "--steps", "5"], "the following arguments are required: --out"),
        (["train", "--data", "moons", "--steps", "5", "--out", "x", "--model", "gpt"], "invalid choice: 'gpt'"),
        (["train", "--data", "moons", "--steps", "5", "--out", "x", "--lr", "-1"], "expected a positive finite number, got -1"),
        (["train", "--data", "nonsense", "--steps", "5", "--out", "{tmp}/x"], "unknown dataset 'nonsense'"),
        (["train", "--data", "npz:{tmp}/missing.npz", "--steps", "5", "--out", "{tmp}/x"], "missing.npz"),
        (["train", "--data", "swissroll", "--classes", "--steps", "5", "--out", "{tmp}/x"], "has no class labels"),
        (["train", "--data", "moons", "--model", "unet", "--steps", "5", "--out", "{tmp}/x"], "needs images"),
        (["train", "--data", "shapes", "--n", "8", "--base-channels", "12", "--steps", "5", "--out", "{tmp}/x"],
         "bad U-Net options: every level's channels [12, 24] must be divisible by norm_groups=8"),
        (["train", "--resume", "--steps", "5", "--out", "{tmp}/nothing"], "no checkpoint"),
        # an option of the other objective is refused, not ignored
        (["train", "--data", "moons", "--objective", "flow_matching", "--T", "50", "--steps", "5", "--out", "{tmp}/x"],
         "--T: an option of --objective diffusion, not of --objective flow_matching"),
        (["train", "--data", "moons", "--shift", "3", "--steps", "5", "--out", "{tmp}/x"],
         "--shift: an option of --objective flow_matching, not of --objective diffusion"),
        (["sample", "{tmp}/nothing", "--out", "{tmp}/a.png"], "nothing: no such checkpoint directory or file"),
        (["sample", "{tmp}/nothing", "--out", "{tmp}/a.jpg"], "must end in .png or .npz"),
        (["sample", "{tmp}/nothing", "--out", "a.png", "--eta", "2"], "probability in [0, 1]"),
        (["demo", "--steps", "-3"], "expected a positive integer"),
        ([], "the following arguments are required"),
        (["fly"], "invalid choice: 'fly'"),
    ],
)
def test_bad_arguments_exit_2_with_a_message_naming_the_problem(argv, message, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, err = _exit_code_and_error(argv, capsys)
    assert code == 2
    assert message in err


def test_sample_options_that_do_not_fit_the_run_exit_2(moons_run, digits_run, tmp_path, capsys):
    png = str(tmp_path / "a.png")
    cases = [
        (["sample", moons_run, "--guidance-scale", "3", "--out", png], "need a class-conditional run"),
        (["sample", moons_run, "--class", "1", "--out", png], "need a class-conditional run"),
        (["sample", digits_run, "--class", "10", "--out", png], "the model has classes 0..9"),
        (["sample", moons_run, "--steps", "51", "--out", png], "exceeds the T=50 steps"),
        (["sample", moons_run, "--sampler", "no_such_sampler", "--out", png], "--sampler 'no_such_sampler'"),
        (["sample", moons_run, "--cuda-graph", "--out", png], "--cuda-graph needs the cuda backend"),
    ]
    for argv, message in cases:
        code, err = _exit_code_and_error(argv, capsys)
        assert code == 2 and message in err, (argv, err)


def test_training_into_an_existing_run_without_resume_is_refused(moons_run, capsys):
    code, err = _exit_code_and_error(["train", "--data", "moons", "--steps", "5", "--out", moons_run], capsys)
    assert code == 2 and "pass --resume" in err


def test_sample_draws_a_run_on_flattened_images_as_an_image_grid(tmp_path):
    import refdiff as rd
    from refdiff.training.data import Dataset
    from refdiff.training.trainer import Trainer

    x = np.random.default_rng(0).uniform(-1, 1, (32, 64)).astype(np.float32)  # 8x8 "images" as vectors
    model = rd.MLPDenoiser(dim=64, hidden=8, num_blocks=1)
    trainer = Trainer(rd.GaussianDiffusion(model, rd.NoiseSchedule.linear(T=10)), Dataset(x), out_dir=str(tmp_path),
                      data_info={"spec": "npz:none", "shape": [1, 8, 8]}, batch_size=8, progress=False)
    trainer.train(1)
    out = str(tmp_path / "grid.png")
    assert cli.main(["sample", str(tmp_path), "--n", "4", "--out", out, "--no-progress"]) == 0
    width, height = Image.open(out).size
    assert width == height > 48  # a 2x2 grid of upscaled 8x8 tiles, not a scatter plot (512x512)
    assert width != 512


def test_eval_prints_bits_per_dim_of_the_bound_and_the_ode(tmp_path, capsys):
    """One line per metric; the ODE run on a T=50 toy with loose tolerances (a few seconds)."""
    out = str(tmp_path / "g8")
    assert cli.main(["train", "--data", "gaussians8", "--steps", "5", "--out", out, *TINY_MLP]) == 0
    capsys.readouterr()
    assert cli.main(["eval", out, "--data", "gaussians8", "--n", "16", "--rtol", "1e-3", "--atol", "1e-3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["bpd", "ode-bpd"]
    values = [float(line.split()[1]) for line in lines]
    assert all(np.isfinite(v) and v > 0 for v in values)
    assert "exact divergence" in lines[1]


def test_eval_refuses_data_outside_minus_one_one(moons_run, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["eval", moons_run, "--data", "moons", "--n", "500", "--metric", "bpd"])
    assert exit_.value.code == 2
    assert "[-1, 1]" in capsys.readouterr().err
