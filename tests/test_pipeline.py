"""Diffusers pipeline folders (refdiff/pipeline.py): read, mapped, sampled, refused.

The independent truth is diffusers 0.42.1 itself: tests/data/make_tiny_pipelines.py ran diffusers'
DDPMPipeline, DDIMPipeline and LDMPipeline on folders assembled from the committed tiny parts and
recorded the noise they drew and the images they returned (tiny_pipelines_golden.npz), and wrote one
scheduler config per diffusers scheduler class with its set_timesteps(10) and alphas_cumprod
(tiny_pipelines/scheduler_configs.json).
"""
import json
import os
import shutil

import numpy as np
import pytest

import refdiff as rd
from refdiff.cli import main
from refdiff.gaussian.process import as_process
from refdiff.pipeline import diffusers_images, scheduler_from_config
from refdiff.samplers.grids import build_grid, family_options
from refdiff.samplers.registry import sampler_spec
from refdiff.samplers.timesteps import inference_timesteps

from _pipelines import DATA, PIPELINES, assemble

GOLDEN = np.load(os.path.join(DATA, "tiny_pipelines_golden.npz"))
SCHEDULER_RECORDS = json.load(open(os.path.join(PIPELINES, "scheduler_configs.json")))
SCHEDULER_CASES = {k: v for k, v in SCHEDULER_RECORDS.items() if not k.startswith("default/")}
DEFAULT_CONFIGS = {k.split("/")[1]: v["config"] for k, v in SCHEDULER_RECORDS.items() if k.startswith("default/")}


class RecordedNoise:
    """A generator that hands out diffusers' recorded step noise in order (then zeros: refdiff's DDPM
    draws for its last step at t = 0 too, where the noise is not used; diffusers does not draw there)."""

    def __init__(self, draws):
        self.draws, self.used = list(draws), 0

    def standard_normal(self, size, dtype=np.float64):
        if not self.draws:
            return np.zeros(size, dtype=dtype)
        z = self.draws.pop(0)
        assert z.shape == tuple(size), f"recorded noise {z.shape}, refdiff draws {tuple(size)}"
        self.used += 1
        return z.astype(dtype)


# ---- parity with diffusers' pipelines ------------------------------------------------------------

# atol on images in [0, 1] (= x / 2 + 0.5): both sides run the same float32 U-Net (rounding ~1e-6 of
# outputs of order 1 per call, the order the UNet parity tests find) for at most 10 steps; diffusers keeps
# alphas_cumprod in float32 (relative 6e-8 per entry), refdiff in float64. 10 steps x ~1e-6 = 1e-5
# (measured: 2.3e-6 DDPM, 7.7e-7 DDIM, 4.2e-7 LDM). On the Karras grid diffusers also computes the
# sigmas and their times in float32 (relative ~1e-7 of sigma_max ~ 15, about 1e-5 in t per step):
# 1e-4 (measured 1.8e-5), as the sampler parity tests of the Euler family.
PARITY_ATOL = {"ddpm": 1e-5, "ddim": 1e-5, "ldm": 1e-5, "ldm_euler": 1e-4}


@pytest.mark.parametrize("case", sorted(PARITY_ATOL))
def test_a_pipeline_folder_samples_diffusers_images_from_the_same_noise(case, tmp_path):
    """refdiff, started from the noise diffusers' pipeline drew (and fed its step noise), returns
    diffusers' images. Catches: a scheduler key mapped to the wrong option (spacing, clip_sample,
    prediction_type, Karras sigmas), the wrong beta schedule, DDPM's variance or strided steps, the
    latent decode without / scaling_factor, the wrong start scale for a sigma-grid sampler
    (init_noise_sigma)."""
    meta = json.loads(str(GOLDEN[f"{case}/meta"]))
    pipe = rd.load_pipeline(assemble(case, tmp_path / case))
    rng = RecordedNoise(GOLDEN[f"{case}/noise"]) if f"{case}/noise" in GOLDEN else None
    x = pipe(meta["n"], steps=meta["steps"], x_T=GOLDEN[f"{case}/x_T"], rng=rng)
    if rng is not None:
        assert rng.used == len(GOLDEN[f"{case}/noise"]), "refdiff used a different number of step noises"
    np.testing.assert_allclose(diffusers_images(x), GOLDEN[f"{case}/images"], rtol=0, atol=PARITY_ATOL[case])


@pytest.mark.parametrize("case", sorted(PARITY_ATOL))
def test_the_recorded_images_are_mostly_inside_the_clamp(case):
    """diffusers clamps its images to [0, 1]; a clamped pixel agrees with anything beyond it, so the
    parity test above means something only where most pixels are inside. Catches: a regenerated golden
    file whose tiny model saturates."""
    images = GOLDEN[f"{case}/images"]
    assert np.mean((images > 0) & (images < 1)) > 0.6


def test_a_latent_pipeline_decodes_latents_to_the_autoencoders_image_size(tmp_path):
    """LDMPipeline: the unet samples 3 x 8 x 8 latents, the vae decodes 3 x 16 x 16 images. Catches:
    returning the latents, or sampling at the vae's image size."""
    pipe = rd.load_pipeline(assemble("ldm", tmp_path / "ldm"))
    assert pipe(1, steps=2, seed=0).shape == (1, 3, 16, 16)


# ---- scheduler configs -> refdiff ------------------------------------------------------------------

# what each recorded diffusers config must map to (written from diffusers' documentation of each key)
EXPECTED = {
    "ddpm_fixed_large": ("ddpm", dict(spacing="trailing", steps_offset=0, variance_type="fixed_large",
                                      clip_sample=True, clip_sample_range=2.0)),
    "ddim_offset": ("ddim", dict(spacing="leading", steps_offset=1, clip_sample=False, clip_sample_range=1.0)),
    "euler_karras": ("euler", dict(spacing="leading", steps_offset=0, sigmas="karras")),
    "euler_ancestral": ("euler_ancestral", dict(spacing="trailing", steps_offset=0)),
    "heun_exponential": ("heun", dict(spacing="linspace", steps_offset=0, sigmas="exponential")),
    "lms": ("lms", dict(spacing="linspace", steps_offset=0)),
    "dpmpp_2m": ("dpmpp_2m", dict(spacing="linspace", steps_offset=0, solver_type="midpoint", lower_order_final=True,
                                  euler_at_final=False, final_sigmas_type="zero")),
    "dpmpp_3m_sde": ("dpmpp_3m_sde", dict(spacing="linspace", steps_offset=0, solver_type="heun",
                                          lower_order_final=True, euler_at_final=True, final_sigmas_type="sigma_min")),
    "dpmpp_3s": ("dpmpp_3s", dict(solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero")),
    "unipc": ("unipc", dict(spacing="trailing", steps_offset=0, solver_order=3, lower_order_final=False,
                            final_sigmas_type="zero")),
}
EXPECTED_PREDICTION = {"ddim_offset": "v_prediction", "euler_ancestral": "v_prediction"}


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_each_scheduler_config_maps_to_its_sampler_and_options(case):
    """The sampler, its options and the prediction type read from a config diffusers wrote. Catches:
    a key mapped to the wrong option or dropped, diffusers' per-class defaults not applied (the
    singlestep scheduler's lower_order_final is False by default, refdiff's True), algorithm_type /
    solver_order choosing the wrong DPM-Solver sampler."""
    mapped = scheduler_from_config(SCHEDULER_CASES[case]["config"])
    sampler, options = EXPECTED[case]
    assert (mapped.sampler, mapped.options) == (sampler, options)
    assert mapped.prediction_type == EXPECTED_PREDICTION.get(case, "epsilon")


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_the_schedule_read_from_a_config_is_diffusers_alphas_cumprod(case):
    """abar_t of the mapped NoiseSchedule against diffusers' float32 table (at every 50th t and the
    last). rtol 1e-5: float32 cumulative products over <= 1000 factors drift by ~1000 x 6e-8 = 6e-5 at
    worst, ~1e-6 typically (random-walk rounding); atol 1e-7 for the zero-SNR last entry, which diffusers
    sets to 2^-24 = 6e-8 and refdiff to 0. Catches: the wrong beta_schedule (squaredcos_cap_v2 is the
    cosine one), beta_start/beta_end ignored, rescale_betas_zero_snr ignored."""
    record = SCHEDULER_CASES[case]
    schedule = scheduler_from_config(record["config"]).schedule
    abar = schedule.alphas_cumprod[np.array(record["abar_index"])]
    np.testing.assert_allclose(abar, record["alphas_cumprod"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_the_mapped_sampler_calls_the_model_at_diffusers_timesteps(case):
    """The model times of the mapped sampler's grid against diffusers' set_timesteps(10) (Heun's
    repeated entries once). Integer timesteps exactly; the float ones to rtol 1e-4 (+ atol 1e-6 at
    t = 0): diffusers finds t by interpolating log sigma in float32, and one unit of t spans only
    ~1e-3..1e-2 of log sigma, so log sigma's float32 rounding (6e-8 |log sigma|, |log sigma| <= 5)
    becomes a relative error in t of order 1e-5 (measured: up to 4e-5 on the Karras grid). Catches: spacing,
    steps_offset, Karras/exponential sigmas or the DPM-Solver grid read wrongly from the config."""
    record = SCHEDULER_CASES[case]
    mapped = scheduler_from_config(record["config"])
    spec, steps = sampler_spec(mapped.sampler), record["steps"]
    if spec.works_on == "timesteps":
        times = inference_timesteps(steps, mapped.schedule.T, mapped.options["spacing"], mapped.options["steps_offset"])
    else:
        grid_keys = set(spec.grid_options()) | set(family_options(spec.grid))
        grid = build_grid(spec.grid, as_process(mapped.schedule), steps,
                          **{k: v for k, v in mapped.options.items() if k in grid_keys})
        times = grid.times[:steps]
    expected = np.array(record["timesteps"], dtype=np.float64)
    if mapped.sampler == "heun":
        expected = np.concatenate([expected[:1], expected[1::2]])
    if spec.works_on == "timesteps":
        np.testing.assert_array_equal(times, expected)
    else:
        np.testing.assert_allclose(times, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("class_name", sorted(DEFAULT_CONFIGS))
def test_a_config_that_leaves_keys_out_gets_diffusers_defaults(class_name):
    """{"_class_name": X} alone maps like the full config diffusers writes for X() (its constructor's
    defaults). Catches: a default in refdiff.pipeline.SCHEDULERS that is not diffusers' (Heun's
    beta_start, the Euler family's "linspace" spacing, the singlestep lower_order_final=False)."""
    partial = scheduler_from_config({"_class_name": class_name})
    full = scheduler_from_config(DEFAULT_CONFIGS[class_name])
    assert (partial.sampler, partial.options, partial.prediction_type) == (full.sampler, full.options,
                                                                           full.prediction_type)
    np.testing.assert_array_equal(partial.schedule.betas, full.schedule.betas)


def test_a_ddim_pipeline_samples_any_scheduler_as_ddim(tmp_path):
    """DDIMPipeline runs DDIMScheduler.from_config(its scheduler's config): a DDPMScheduler folder samples
    with ddim, the DDPM-only variance_type dropped as diffusers drops it. Catches: sampling such a
    folder with ddpm, or refusing the key DDIMScheduler never reads."""
    folder = assemble("ddim", tmp_path / "p")
    path = os.path.join(folder, "scheduler", "scheduler_config.json")
    config = json.load(open(path))
    config.update(_class_name="DDPMScheduler", variance_type="fixed_large")
    with open(path, "w") as f:
        json.dump(config, f)
    pipe = rd.load_pipeline(folder)
    assert pipe.sampler == "ddim" and "variance_type" not in pipe.scheduler.options


# ---- refusals --------------------------------------------------------------------------------------

REFUSED_KEYS = [
    ("DDIMScheduler", "set_alpha_to_one", False),
    ("DDPMScheduler", "thresholding", True),
    ("DDPMScheduler", "variance_type", "fixed_small_log"),
    ("DDPMScheduler", "beta_schedule", "laplace"),
    ("EulerDiscreteScheduler", "interpolation_type", "log_linear"),
    ("EulerDiscreteScheduler", "use_beta_sigmas", True),
    ("HeunDiscreteScheduler", "clip_sample", True),
    ("DPMSolverMultistepScheduler", "algorithm_type", "dpmsolver"),
    ("DPMSolverMultistepScheduler", "use_lu_lambdas", True),
    ("UniPCMultistepScheduler", "solver_type", "bh1"),
    ("LMSDiscreteScheduler", "not_a_diffusers_key", 1),
]


@pytest.mark.parametrize("class_name, key, value", REFUSED_KEYS)
def test_a_config_key_refdiff_cannot_honour_is_refused_by_name(class_name, key, value):
    """A value refdiff does not compute (or a key the class does not take) raises ValueError naming
    the key, never ignored. Catches: a key silently dropped, a message that does not say which key."""
    with pytest.raises(ValueError, match=key):
        scheduler_from_config({"_class_name": class_name, key: value})


@pytest.mark.parametrize("class_name, variance_type", [("DPMSolverMultistepScheduler", "learned_range"),
                                                        ("DDPMScheduler", "learned")])
def test_a_learned_variance_refdiff_would_read_otherwise_is_refused_by_name(class_name, variance_type):
    """A learned variance is read by refdiff's ddpm sampler as improved DDPM reads it; DPM-Solver's
    learned_range, and "learned" (diffusers reads it as the variance, refdiff as its log), would give
    other samples than diffusers: refused, naming the value. Catches: a folder sampled silently wrong."""
    with pytest.raises(ValueError, match=variance_type):
        scheduler_from_config({"_class_name": class_name, "variance_type": variance_type})


@pytest.mark.parametrize("case", [0, 1])
def test_a_learned_range_ddpm_folder_samples_as_diffusers(case, tmp_path):
    """A DDPMPipeline folder of the tiny learned-variance UNet2DModel (2C outputs) with
    DDPMScheduler(variance_type="learned_range") reproduces diffusers' loop recorded on the same noise
    by tests/data/make_learned_variance_golden.py (all 20 steps of T = 20; 10 strided steps of 1000).
    Tolerance 5e-4, derived in tests/test_learned_variance_diffusers.py. Catches: the variance
    channels dropped (a fixed variance misses by > 100x the tolerance) or fed to the mean."""
    golden = np.load(os.path.join(DATA, "learned_variance_golden.npz"))
    meta = json.loads(str(golden[f"case/{case}/meta"]))
    folder = tmp_path / "lv"
    shutil.copytree(os.path.join(DATA, "tiny_lv_unet"), folder / "unet")
    os.makedirs(folder / "scheduler")
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "DDPMScheduler", "num_train_timesteps": meta["T"], "beta_schedule": "linear",
        "beta_start": 1e-4, "beta_end": 0.02, "clip_sample": True, "variance_type": "learned_range"}))
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDPMScheduler"]}))
    pipe = rd.load_pipeline(folder)
    noise = RecordedNoise(golden[f"case/{case}/noise"].astype(np.float32))
    x = pipe(2, steps=meta["steps"], x_T=golden[f"case/{case}/x_T"], rng=noise)
    np.testing.assert_allclose(x, golden[f"case/{case}/out"], rtol=0, atol=5e-4)
    # a sampler on sigmas reads the first C channels only (as diffusers' other schedulers split them off)
    assert pipe(2, steps=4, seed=0, sampler="euler").shape == (2, 2, 8, 8)


def test_an_early_diffusers_config_maps_like_todays():
    """google/ddpm-*'s scheduler configs were written by diffusers 0.1-0.3, with keys 0.42 ignores
    (tensor_format, timestep_values null, predict_epsilon true): they map as without them, and
    predict_epsilon=False (an x_0 model diffusers 0.42 would misread) is refused by name. Catches:
    refusing the README's own example folder, or sampling an x_0 model as an eps model."""
    old = dict(DEFAULT_CONFIGS["DDPMScheduler"], tensor_format="pt", timestep_values=None, predict_epsilon=True)
    mapped, today = scheduler_from_config(old), scheduler_from_config(DEFAULT_CONFIGS["DDPMScheduler"])
    assert (mapped.sampler, mapped.options, mapped.prediction_type) == (today.sampler, today.options, "epsilon")
    with pytest.raises(ValueError, match="predict_epsilon"):
        scheduler_from_config(dict(old, predict_epsilon=False))


def test_an_unknown_scheduler_class_is_refused_naming_it():
    """PNDM (and any class refdiff does not map) raises naming the class and the supported ones."""
    with pytest.raises(ValueError, match="PNDMScheduler.*DDPMScheduler"):
        scheduler_from_config({"_class_name": "PNDMScheduler"})


def _edit_index(folder, **parts):
    path = os.path.join(folder, "model_index.json")
    index = json.load(open(path))
    index.update(parts)
    with open(path, "w") as f:
        json.dump(index, f)


def test_parts_refdiff_cannot_run_are_each_named(tmp_path):
    """A folder with a text encoder, a tokenizer and a VQModel autoencoder (ldm-celebahq-256's) names
    all three in one error. Catches: stopping at the first, or loading the rest without them."""
    folder = assemble("ddpm", tmp_path / "p")
    _edit_index(folder, text_encoder=["transformers", "CLIPTextModel"], tokenizer=["transformers", "CLIPTokenizer"],
                vqvae=["diffusers", "VQModel"])
    with pytest.raises(ValueError) as error:
        rd.load_pipeline(folder)
    for name in ("text_encoder (CLIPTextModel)", "tokenizer (CLIPTokenizer)", "vqvae (VQModel)"):
        assert name in str(error.value)


def test_an_unknown_pipeline_class_is_refused_naming_it(tmp_path):
    """StableDiffusionPipeline is not one refdiff runs: the error names it and the supported classes."""
    folder = assemble("ddpm", tmp_path / "p")
    _edit_index(folder, _class_name="StableDiffusionPipeline")
    with pytest.raises(ValueError, match="StableDiffusionPipeline.*DDPMPipeline"):
        rd.load_pipeline(folder)


@pytest.mark.parametrize("missing", ["scheduler/scheduler_config.json", "unet/config.json", "vae/config.json"])
def test_a_missing_file_is_named(missing, tmp_path):
    """Nothing is downloaded: a folder without a part's file raises FileNotFoundError naming the file."""
    folder = assemble("ldm", tmp_path / "p")
    os.remove(os.path.join(folder, missing))
    with pytest.raises(FileNotFoundError, match=missing):
        rd.load_pipeline(folder)


def test_another_sampler_keeps_the_folder_options_it_takes(tmp_path):
    """sampler="ddim" on a DDPM folder takes its clip_sample, spacing and variance_type (DDIM reads
    variance_type only to split a learned variance's channels off, as diffusers' pipelines do before
    DDIMScheduler.step). Catches: an option of the folder's sampler handed to one that refuses it
    (TypeError), or the folder's clipping lost."""
    pipe = rd.load_pipeline(assemble("ddpm", tmp_path / "p"))
    assert pipe.sampler_options("ddim") == dict(spacing="leading", steps_offset=0, variance_type="fixed_small",
                                                clip_sample=True, clip_sample_range=1.0)
    assert pipe(1, steps=2, seed=0, sampler="ddim").shape == (1, 3, 16, 16)


# ---- command line ----------------------------------------------------------------------------------


def test_cli_samples_a_pipeline_folder_end_to_end(tmp_path, capsys):
    """`refdiff sample FOLDER --n 2 --out x.png` (the folder's DDIM scheduler, its 50 default steps, the
    vae decoding) writes a 2-image PNG grid. Catches: the CLI treating the folder as a training run."""
    from PIL import Image

    folder = assemble("ldm", tmp_path / "ldm")
    out = tmp_path / "x.png"
    assert main(["sample", str(folder), "--n", "2", "--out", str(out), "--no-progress"]) == 0
    assert "LDMPipeline, ddim, 50 steps" in capsys.readouterr().out
    width, height = Image.open(out).size
    assert height >= 16 and width >= 2 * 16


def test_cli_a_bad_pipeline_folder_ends_with_one_line_and_exit_2(tmp_path, capsys):
    """A folder with a part refdiff cannot run: exit status 2, one line naming the part, no traceback."""
    folder = assemble("ddpm", tmp_path / "p")
    _edit_index(folder, text_encoder=["transformers", "CLIPTextModel"])
    with pytest.raises(SystemExit) as exit_:
        main(["sample", str(folder), "--n", "2", "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert len(err.strip().splitlines()) == 1 and "text_encoder" in err and "Traceback" not in err
