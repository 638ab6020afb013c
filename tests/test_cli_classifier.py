"""`refdiff train --objective classifier` and `refdiff sample --guidance classifier`, run in-process.

Tiny runs (T = 20, 64 digits, 8 channels): what is checked is the plumbing (checkpoints, resume,
the classifier reaching the sampler, one-line errors with exit status 2), not quality.
"""
import json
import os

import numpy as np
import pytest

from refdiff import cli
from refdiff.training.trainer import load_diffusion

TINY = ["--data", "digits", "--image-size", "8", "--T", "20", "--n", "64", "--base-channels", "8", "--batch-size", "8", "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cg")
    clf, dm, other = str(root / "clf"), str(root / "dm"), str(root / "other")
    assert cli.main(["train", "--objective", "classifier", "--steps", "3", "--out", clf, *TINY]) == 0
    assert cli.main(["train", "--steps", "2", "--out", dm, "--sample-n", "4", "--sample-steps", "2", *TINY]) == 0
    other_T = [a if a != "20" else "30" for a in TINY]
    assert cli.main(["train", "--objective", "classifier", "--steps", "1", "--out", other, *other_T]) == 0
    return clf, dm, other


def test_classifier_run_is_a_checkpointed_noise_classifier_without_pictures(runs):
    """The run holds a NoiseClassifier with the data's 10 classes and the schedule it was trained on.
    Catches: a classifier checkpoint that cannot be rebuilt, a sample picture attempted (a classifier
    cannot sample), the schedule not stored (guidance would pair it with any diffusion run)."""
    clf, _, _ = runs
    objective, meta = load_diffusion(clf)
    assert objective.objective == "classifier" and type(objective.model).__name__ == "NoiseClassifier"
    assert objective.model.num_classes == 10 and objective.T == 20
    assert not os.path.exists(os.path.join(clf, "samples"))
    assert len(json.load(open(os.path.join(clf, "losses.json")))) == 3


def test_classifier_run_resumes_to_the_requested_total(runs, tmp_path):
    """Catches: --resume of a classifier run rebuilt as a diffusion objective, or restarting at 0."""
    import shutil

    clf, _, _ = runs
    run = str(tmp_path / "clf")
    shutil.copytree(clf, run)
    assert cli.main(["train", "--objective", "classifier", "--resume", "--steps", "5", "--out", run, "--no-progress"]) == 0
    assert len(json.load(open(os.path.join(run, "losses.json")))) == 5


@pytest.mark.parametrize("sampler", [["--sampler", "ddpm"], ["--sampler", "ddim", "--steps", "4"]])
def test_sample_with_classifier_guidance_writes_finite_labelled_samples(runs, tmp_path, sampler):
    """Catches: the classifier not reaching the sampler (an error on the unconditional run's labels),
    the --class label not stored with the samples."""
    clf, dm, _ = runs
    out = str(tmp_path / "s.npz")
    assert cli.main(["sample", dm, "--n", "4", "--out", out, "--guidance", "classifier", "--classifier", clf,
                     "--guidance-scale", "3", "--class", "7", "--no-progress", *sampler]) == 0
    data = np.load(out)
    assert data["samples"].shape == (4, 1, 8, 8) and np.all(np.isfinite(data["samples"]))
    assert list(data["labels"]) == [7, 7, 7, 7]


@pytest.mark.parametrize("extra, message", [
    (["--guidance", "classifier"], "needs --classifier"),
    (["--classifier", "CLF"], "only read with --guidance classifier"),
    (["--guidance", "classifier", "--classifier", "DM"], "not a classifier run"),
    (["--guidance", "classifier", "--classifier", "OTHER"], "another noise schedule"),
    (["--guidance", "classifier", "--classifier", "CLF", "--class", "10"], "the classifier has classes 0..9"),
])
def test_bad_classifier_guidance_requests_exit_2_with_one_line(runs, tmp_path, capsys, extra, message):
    """Catches: guidance silently off, a diffusion run taken as a classifier, a classifier of another
    schedule (its t would mean other noise levels), labels outside the classifier's classes."""
    clf, dm, other = runs
    extra = [{"CLF": clf, "DM": dm, "OTHER": other}.get(a, a) for a in extra]
    with pytest.raises(SystemExit) as exit_:
        cli.main(["sample", dm, "--n", "2", "--out", str(tmp_path / "s.png"), "--no-progress", *extra])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_classifier_objective_refuses_points_and_picture_options(tmp_path, capsys):
    """A classifier is an image encoder and draws no samples: points data and --sample-every are
    refused with one line. Catches: a crash deep in the U-Net, a picture attempted mid-run."""
    for extra in (["--data", "moons"], ["--data", "digits", "--sample-every", "2"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(["train", "--objective", "classifier", "--steps", "1", "--out", str(tmp_path / "r"), "--n", "64",
                      "--no-progress", *extra])
        assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "images" in err and "draws no samples" in err
