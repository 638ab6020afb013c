"""`refdiff distill`: progressive and consistency distillation of a trained run, resumable, and the
students sample with `refdiff sample`; misuse exits 2 with one line."""
import json
import os

import numpy as np
import pytest

from refdiff import cli

TINY = ["--T", "50", "--hidden", "16", "--num-blocks", "1", "--batch-size", "32", "--n", "256", "--sample-n", "20",
        "--sample-steps", "5", "--no-progress"]
FAST = ["--batch-size", "32", "--no-progress", "--checkpoint-every", "2"]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("distill") / "moons")
    assert cli.main(["train", "--data", "moons", "--steps", "4", "--out", out, "--prediction-type", "v_prediction",
                     *TINY]) == 0
    return out


def _steps_of(run):
    names = sorted(os.listdir(os.path.join(run, "checkpoints")))
    return [int(n[5:13]) for n in names if n.endswith(".json")]


def test_consistency_distillation_runs_resumes_and_samples_in_one_step(teacher_run, tmp_path):
    """A run to 2 steps, --resume to 4 (checkpoints at 2 and 4, the loss history continued), then
    `refdiff sample --steps 1` and `--steps 2`. Catches: --resume starting over, a CD checkpoint
    `refdiff sample` cannot rebuild, the default sampler not the consistency one."""
    out = str(tmp_path / "cd")
    assert cli.main(["distill", teacher_run, "--method", "consistency", "--steps", "2", "--out", out,
                     "--num-boundaries", "6", *FAST]) == 0
    assert cli.main(["distill", teacher_run, "--method", "consistency", "--steps", "4", "--out", out, "--resume",
                     *FAST]) == 0
    assert _steps_of(out) == [2, 4]
    with open(os.path.join(out, "checkpoints", "step_00000004.json")) as f:
        meta = json.load(f)
    assert meta["diffusion"]["objective"] == "consistency_distillation" and len(meta["losses"]) == 4
    for steps in ("1", "2"):
        path = str(tmp_path / f"cd{steps}.npz")
        assert cli.main(["sample", out, "--steps", steps, "--n", "16", "--out", path, "--no-progress"]) == 0
        assert np.load(path)["samples"].shape == (16, 2)


def test_progressive_distillation_writes_a_stage_per_halving_and_resumes(teacher_run, tmp_path):
    """8 -> 4 -> 2 steps: stages steps_4 and steps_2; --resume with more steps per stage continues both
    stages (a finished stage's checkpoint is continued, not redone); the last stage samples by default
    with its 2 DDIM steps. Catches: stages not written where the README says, resume starting over."""
    out = str(tmp_path / "pd")
    args = ["distill", teacher_run, "--method", "progressive", "--from-steps", "8", "--to-steps", "2", "--out", out]
    assert cli.main([*args, "--steps-per-stage", "2", *FAST]) == 0
    assert sorted(os.listdir(out)) == ["steps_2", "steps_4"]
    assert cli.main([*args, "--steps-per-stage", "4", "--resume", *FAST]) == 0
    assert _steps_of(os.path.join(out, "steps_4")) == [2, 4] and _steps_of(os.path.join(out, "steps_2")) == [2, 4]
    path = str(tmp_path / "pd.npz")
    assert cli.main(["sample", os.path.join(out, "steps_2"), "--n", "8", "--out", path, "--no-progress"]) == 0
    assert np.load(path)["samples"].shape == (8, 2)


@pytest.mark.parametrize("argv, message", [
    (["--method", "consistency"], "needs --steps"),
    (["--method", "consistency", "--steps", "2", "--from-steps", "8"], "not an option of --method consistency"),
    (["--method", "progressive", "--steps-per-stage", "2", "--to-steps", "1"], "needs --from-steps"),
    (["--method", "progressive", "--from-steps", "8", "--to-steps", "3", "--steps-per-stage", "2"], "power of 2"),
    (["--method", "progressive", "--from-steps", "64", "--to-steps", "1", "--steps-per-stage", "2"], "exceeds the T=50"),
    (["--method", "consistency", "--steps", "2", "--num-boundaries", "1"], "num_boundaries"),
])
def test_bad_distill_arguments_exit_2_with_one_line(teacher_run, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        cli.main(["distill", teacher_run, "--out", str(tmp_path / "x"), "--no-progress", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_distilling_into_an_existing_distillation_without_resume_is_refused(teacher_run, tmp_path, capsys):
    out = str(tmp_path / "cd")
    assert cli.main(["distill", teacher_run, "--method", "consistency", "--steps", "2", "--out", out, *FAST]) == 0
    with pytest.raises(SystemExit) as e:
        cli.main(["distill", teacher_run, "--method", "consistency", "--steps", "2", "--out", out, *FAST])
    assert e.value.code == 2 and "--resume" in capsys.readouterr().err
