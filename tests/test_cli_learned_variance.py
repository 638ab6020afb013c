"""`refdiff train --variance-type learned_range`: the run records it, and sample / eval pick it up."""
import numpy as np
import pytest

import refdiff as rd
from refdiff import cli
from refdiff.training.trainer import load_diffusion

TINY_MLP = ["--T", "50", "--hidden", "16", "--num-blocks", "1", "--batch-size", "32", "--n", "256", "--sample-n", "20",
            "--sample-steps", "5", "--no-progress"]


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cli_lv") / "g8")
    assert cli.main(["train", "--data", "gaussians8", "--steps", "5", "--variance-type", "learned_range",
                     "--vlb-weight", "0.002", "--out", out, *TINY_MLP]) == 0
    return out


def test_the_checkpoint_records_the_variance_type_and_a_2c_output_network(learned_run):
    """The loaded diffusion has variance_type learned_range, lambda as given, and an MLP of twice
    the data's width out. Catches a flag that trains a C-output network or is not saved."""
    diffusion, _ = load_diffusion(learned_run)
    assert diffusion.variance_type == "learned_range" and diffusion.vlb_weight == 0.002
    out = diffusion.model(np.zeros((3, 2), np.float32), np.zeros(3, np.int64))
    assert out.shape == (3, 4)


def test_sample_reads_the_learned_variance_from_the_checkpoint(learned_run, tmp_path, capsys):
    """ddpm (reads v) and ddim (splits it off) both sample the run to (n, 2) points."""
    for sampler in ("ddpm", "ddim"):
        path = str(tmp_path / f"{sampler}.npz")
        assert cli.main(["sample", learned_run, "--n", "7", "--sampler", sampler, "--out", path, "--no-progress"]) == 0
        assert np.load(path)["samples"].shape == (7, 2)


def test_eval_bound_uses_the_learned_variance(learned_run, capsys):
    """`refdiff eval --metric bpd` equals rd.bits_per_dim with variance_type learned_range on the
    run's model and the same draws (exact: the same computation), and differs from the bound with
    v ignored (fixed_small on the eps channels). Catches eval reading the 2C output as eps."""
    capsys.readouterr()
    assert cli.main(["eval", learned_run, "--data", "gaussians8", "--n", "16", "--metric", "bpd", "--seed", "0"]) == 0
    printed = float(capsys.readouterr().out.split()[1])
    diffusion, _ = load_diffusion(learned_run)
    diffusion.model.eval()
    from refdiff.cli import _load_data

    x = np.asarray(_load_data("gaussians8", n=16, seed=0).x, dtype=np.float64)
    x = np.round((x + 1) * 127.5) / 127.5 - 1
    learned = rd.bits_per_dim(diffusion.model_function(), x, diffusion.schedule, rng=np.random.default_rng(0),
                              variance_type="learned_range")
    fixed = rd.bits_per_dim(diffusion.model_function(variance=False), x, diffusion.schedule,
                            rng=np.random.default_rng(0))
    assert printed == pytest.approx(learned, abs=1e-4)  # printed with 4 decimals
    assert abs(learned - fixed) > 1e-3


def test_variance_type_with_flow_matching_exits_2_naming_the_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--data", "moons", "--objective", "flow_matching", "--variance-type", "learned_range",
                  "--steps", "5", "--out", str(tmp_path / "x")])
    assert exit_.value.code == 2
    assert "--variance-type: an option of --objective diffusion" in capsys.readouterr().err
