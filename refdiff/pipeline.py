"""Diffusers pipeline folders: read one, sample it with refdiff's samplers. Plumbing, no math.

    pipe = rd.load_pipeline("path/to/google-ddpm-cifar10-32")   # nothing is downloaded
    x = pipe(16, seed=0)                      # (16, 3, 32, 32) in [-1, 1], the folder's own scheduler
    x = pipe(16, sampler="dpmpp_2m", steps=20, seed=0)   # any registered sampler on the same schedule

A diffusers pipeline folder (what `DiffusionPipeline.save_pretrained` writes) holds model_index.json,
naming the pipeline class and each part's class ("unet": ["diffusers", "UNet2DModel"]), and one
sub-folder per part. refdiff runs the unconditional image pipelines:

    DDPMPipeline, DDIMPipeline   unet/ (UNet2DModel) + scheduler/
    LDMPipeline                  the same + an AutoencoderKL under vae/ (or vqvae/, LDMPipeline's name
                                 for it); the VQModel of CompVis/ldm-celebahq-256 is refused

Any other pipeline class or part (text_encoder, tokenizer, VQModel, ...) is refused with an error
naming every part refdiff cannot run.

The scheduler: scheduler/scheduler_config.json names a diffusers scheduler class and its constructor
arguments. `scheduler_from_config` maps them to refdiff's three pieces:
  1. the schedule: beta_schedule (linear, scaled_linear, squaredcos_cap_v2, sigmoid) or trained_betas,
     num_train_timesteps, beta_start, beta_end, rescale_betas_zero_snr -> a NoiseSchedule;
  2. the prediction type (epsilon, sample, v_prediction);
  3. the sampler and its options in refdiff's names (SCHEDULERS below: DDPMScheduler -> "ddpm",
     DPMSolverMultistepScheduler with algorithm_type="sde-dpmsolver++", solver_order=3 -> "dpmpp_3m_sde",
     timestep_spacing -> spacing, use_karras_sigmas -> sigmas="karras", ...).
Every key of the config is either mapped, checked to hold a value refdiff computes anyway (e.g.
set_alpha_to_one=True, thresholding=False; the keys that only matter when such a feature is on are
then inert), or refused by name. A key the class does not take is refused too.

How refdiff samples a folder. The start x_T ~ N(0, I) is drawn in the model's scale (what diffusers'
scale_model_input hands the UNet; refdiff.samplers.loop), and the folder's scheduler runs through
rd.sample_loop's contract. For DDPM and DDIM (init_noise_sigma = 1) this is exactly what the three
diffusers pipelines compute. Two diffusers quirks are kept:
  - DDIMPipeline turns any scheduler into a DDIMScheduler (DDIMScheduler.from_config): refdiff's
    default sampler for it is "ddim", with the config keys DDIMScheduler takes (the others are
    dropped, as diffusers drops them), and eta = 0 (DDIMPipeline's default);
  - LDMPipeline decodes vae.decode(latents / scaling_factor) (LDM, Rombach et al. 2022, sec. 4.3.2
    and app. D.1; the scaling factor of the autoencoder's config).
One difference stays: diffusers' DDIMScheduler steps from t to t - T // steps, refdiff's ddim to the next
timestep of the grid (refdiff.samplers.timesteps.timestep_pairs); the two agree for "leading" spacing and
for "trailing" when steps divides T, and differ for "linspace" (refdiff's is the DDIM sub-sequence).
DDPMPipeline and DDIMPipeline skip scale_model_input and init_noise_sigma, so with a sigma-grid
scheduler (Euler, DPM-Solver, ...) in such a folder diffusers itself samples at the wrong scale;
refdiff samples correctly there (as LDMPipeline's loop does) and does not copy that.

`sampler=` a name other than the folder's carries over every option of the folder's config that
the new sampler also takes (as diffusers' OtherScheduler.from_config(config) would).

Latent pipelines are a refdiff.latent.LatentDiffusion: latents sampled by the unet, then images =
vae.decode(latents / scaling_factor) (LatentDiffusion.decode).
"""
import json
import os

import numpy as np

from .checks import LEARNED_VARIANCE_TYPES, VARIANCE_TYPES, check_float_array

MODEL_INDEX = "model_index.json"
SCHEDULER_CONFIG = "scheduler_config.json"

# pipeline class -> (its parts, the default number of steps of its __call__ (None: all T))
PIPELINES = {
    "DDPMPipeline": (("unet", "scheduler"), None),
    "DDIMPipeline": (("unet", "scheduler"), 50),
    "LDMPipeline": (("unet", "scheduler", "vae"), 50),
}
# part name in model_index.json -> the diffusers classes refdiff loads for it
PART_CLASSES = {"unet": ("UNet2DModel",), "vae": ("AutoencoderKL",), "vqvae": ("AutoencoderKL",)}

# ---- schedulers: config key -> how refdiff honours it --------------------------------------------
#
# Each scheduler class lists its constructor's keys (diffusers 0.42.1, with their defaults) as
#   ("schedule", default)          read by schedule_from_config
#   ("prediction", default)        the prediction type
#   ("option", default, name)      a sampler or grid option of refdiff (name: refdiff's name)
#   ("fixed", default, allowed)    refdiff computes this value only: anything else is refused
#   ("inert", default, key)        no effect unless `key` (a "fixed" key) holds another value
#   ("sigmas", default)            use_karras_sigmas / use_exponential_sigmas -> sigmas=
#   ("sampler", default)           chooses among the sampler names (algorithm_type, solver_order)

_SCHEDULE_KEYS = {
    "num_train_timesteps": ("schedule", 1000), "beta_start": ("schedule", 0.0001), "beta_end": ("schedule", 0.02),
    "beta_schedule": ("schedule", "linear"), "trained_betas": ("schedule", None),
    "prediction_type": ("prediction", "epsilon"),
}
_ZERO_SNR = {"rescale_betas_zero_snr": ("schedule", False)}
_SPACING = {"timestep_spacing": ("option", "leading", "spacing"), "steps_offset": ("option", 0, "steps_offset")}
_THRESHOLDING = {"thresholding": ("fixed", False, (False,)),
                 "dynamic_thresholding_ratio": ("inert", 0.995, "thresholding"),
                 "sample_max_value": ("inert", 1.0, "thresholding")}
_SIGMAS = {"use_karras_sigmas": ("sigmas", False), "use_exponential_sigmas": ("sigmas", False),
           "use_beta_sigmas": ("fixed", False, (False,))}
_NO_FLOW = {"use_flow_sigmas": ("fixed", False, (False,)), "flow_shift": ("inert", 1.0, "use_flow_sigmas"),
            "use_dynamic_shifting": ("fixed", False, (False,)),
            "time_shift_type": ("inert", "exponential", "use_dynamic_shifting")}
_DPM = {**_SCHEDULE_KEYS, **_THRESHOLDING, **_SIGMAS, **_NO_FLOW,
        "solver_order": ("sampler", 2), "algorithm_type": ("sampler", "dpmsolver++"),
        "solver_type": ("option", "midpoint", "solver_type"),
        "final_sigmas_type": ("option", "zero", "final_sigmas_type"),
        "lambda_min_clipped": ("fixed", float("-inf"), (float("-inf"),)),
        "variance_type": ("fixed", None, (None,))}

SCHEDULERS = {
    "DDPMScheduler": ("ddpm", {
        **_SCHEDULE_KEYS, **_ZERO_SNR, **_SPACING, **_THRESHOLDING,
        "variance_type": ("option", "fixed_small", "variance_type"),
        "clip_sample": ("option", True, "clip_sample"), "clip_sample_range": ("option", 1.0, "clip_sample_range")}),
    "DDIMScheduler": ("ddim", {
        **_SCHEDULE_KEYS, **_ZERO_SNR, **_SPACING, **_THRESHOLDING,
        "clip_sample": ("option", True, "clip_sample"), "clip_sample_range": ("option", 1.0, "clip_sample_range"),
        "set_alpha_to_one": ("fixed", True, (True,))}),
    "EulerDiscreteScheduler": ("euler", {
        **_SCHEDULE_KEYS, **_ZERO_SNR, **_SIGMAS, "timestep_spacing": ("option", "linspace", "spacing"),
        "steps_offset": ("option", 0, "steps_offset"),
        "interpolation_type": ("fixed", "linear", ("linear",)), "sigma_min": ("fixed", None, (None,)),
        "sigma_max": ("fixed", None, (None,)), "timestep_type": ("fixed", "discrete", ("discrete",)),
        "final_sigmas_type": ("fixed", "zero", ("zero",))}),
    "EulerAncestralDiscreteScheduler": ("euler_ancestral", {
        **_SCHEDULE_KEYS, **_ZERO_SNR, "timestep_spacing": ("option", "linspace", "spacing"),
        "steps_offset": ("option", 0, "steps_offset")}),
    "HeunDiscreteScheduler": ("heun", {
        **_SCHEDULE_KEYS, **_SIGMAS, "beta_start": ("schedule", 0.00085), "beta_end": ("schedule", 0.012),
        "timestep_spacing": ("option", "linspace", "spacing"), "steps_offset": ("option", 0, "steps_offset"),
        "clip_sample": ("fixed", False, (False,)), "clip_sample_range": ("inert", 1.0, "clip_sample")}),
    "LMSDiscreteScheduler": ("lms", {
        **_SCHEDULE_KEYS, **_SIGMAS, "timestep_spacing": ("option", "linspace", "spacing"),
        "steps_offset": ("option", 0, "steps_offset")}),
    "DPMSolverMultistepScheduler": ("dpmpp_2m", {
        **_DPM, **_ZERO_SNR, "timestep_spacing": ("option", "linspace", "spacing"),
        "steps_offset": ("option", 0, "steps_offset"), "lower_order_final": ("option", True, "lower_order_final"),
        "euler_at_final": ("option", False, "euler_at_final"), "use_lu_lambdas": ("fixed", False, (False,))}),
    "DPMSolverSinglestepScheduler": ("dpmpp_2s", {
        **_DPM, "lower_order_final": ("option", False, "lower_order_final")}),
    "UniPCMultistepScheduler": ("unipc", {
        **_SCHEDULE_KEYS, **_ZERO_SNR, **_THRESHOLDING, **_SIGMAS, **_NO_FLOW,
        "timestep_spacing": ("option", "linspace", "spacing"), "steps_offset": ("option", 0, "steps_offset"),
        "solver_order": ("option", 2, "solver_order"), "lower_order_final": ("option", True, "lower_order_final"),
        "final_sigmas_type": ("option", "zero", "final_sigmas_type"),
        "predict_x0": ("fixed", True, (True,)), "solver_type": ("fixed", "bh2", ("bh2",)),
        "disable_corrector": ("fixed", [], ([],)), "solver_p": ("fixed", None, (None,)),
        "sigma_min": ("fixed", None, (None,)), "sigma_max": ("fixed", None, (None,)),
        "shift_terminal": ("fixed", None, (None,))}),
}
# the sampler of each (algorithm_type, solver_order) of diffusers' DPM-Solver schedulers
DPM_SAMPLERS = {
    "DPMSolverMultistepScheduler": {("dpmsolver++", 2): "dpmpp_2m", ("dpmsolver++", 3): "dpmpp_3m",
                                    ("sde-dpmsolver++", 2): "dpmpp_2m_sde", ("sde-dpmsolver++", 3): "dpmpp_3m_sde"},
    "DPMSolverSinglestepScheduler": {("dpmsolver++", 2): "dpmpp_2s", ("dpmsolver++", 3): "dpmpp_3s"},
}
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
# keys every diffusers config may carry that say nothing about sampling
_META_KEYS = ("_class_name", "_diffusers_version")
# keys of configs written by early diffusers (0.1-0.3, e.g. google/ddpm-*) that 0.42 ignores:
# tensor_format (the array library, "pt" or "np") means nothing to sampling; timestep_values must be
# null; predict_epsilon=True is prediction_type="epsilon" (False, an x_0 model, is refused: say
# prediction_type="sample" instead, as diffusers 0.42 would silently read it as epsilon)
LEGACY_KEYS = ("tensor_format", "timestep_values", "predict_epsilon")


class SchedulerConfig:
    """What a diffusers scheduler config means in refdiff: `schedule` (a NoiseSchedule),
    `prediction_type`, `sampler` (a registered name) and `options` (refdiff's sampler and grid options)."""

    def __init__(self, class_name, schedule, prediction_type, sampler, options):
        self.class_name, self.schedule, self.prediction_type = class_name, schedule, prediction_type
        self.sampler, self.options = sampler, options

    def __repr__(self):
        return (f"SchedulerConfig({self.class_name}: sampler={self.sampler!r}, prediction_type="
                f"{self.prediction_type!r}, options={self.options}, T={self.schedule.T})")


def scheduler_from_config(config, class_name=None):
    """The SchedulerConfig of a diffusers scheduler config dict (scheduler_config.json's content).

    class_name overrides config["_class_name"] (DDIMPipeline reads any scheduler's config as a
    DDIMScheduler's: then the keys DDIMScheduler does not take are dropped, as diffusers' from_config
    drops them). ValueError naming every key refdiff cannot honour, or the unknown class.
    """
    if not isinstance(config, dict):
        raise ValueError(f"a scheduler config must be a JSON object, got {type(config).__name__}")
    converted = class_name is not None
    class_name = class_name or config.get("_class_name")
    if class_name not in SCHEDULERS:
        raise ValueError(f"scheduler class {class_name!r} is not supported "
                         f"(supported: {', '.join(sorted(SCHEDULERS))})")
    default_sampler, keys = SCHEDULERS[class_name]
    given = {k: v for k, v in config.items() if k not in _META_KEYS and (not converted or k in keys)}
    problems = _legacy_problems(config)
    unknown = sorted(k for k in given if k not in keys and k not in LEGACY_KEYS)
    c = {k: spec[1] for k, spec in keys.items()}
    c.update({k: v for k, v in given.items() if k in keys})
    if unknown:
        problems.append(f"unknown keys {unknown} (not arguments of diffusers' {class_name})")
    for key, spec in keys.items():
        if spec[0] == "fixed" and c[key] not in spec[2]:  # ("inert" keys: their switch is a "fixed" key)
            problems.append(_refusal(key, c[key], class_name, spec[2]))
    if class_name != "DDPMScheduler" and c.get("variance_type") in LEARNED_VARIANCE_TYPES:
        problems = [p for p in problems if not p.startswith("variance_type")]
        problems.append(f"variance_type={c['variance_type']!r} (a learned variance: read by refdiff's ddpm sampler, "
                        f"a DDPMScheduler folder; not by {class_name})")
    elif class_name == "DDPMScheduler" and c["variance_type"] == "learned":
        problems.append("variance_type='learned' (diffusers' DDPMScheduler reads that output as the variance, "
                        "refdiff as its log, improved DDPM's reading: the samples would differ; learned_range agrees)")
    elif class_name == "DDPMScheduler" and c["variance_type"] not in VARIANCE_TYPES:
        problems.append(_refusal("variance_type", c["variance_type"], class_name, VARIANCE_TYPES))
    if c["prediction_type"] not in ("epsilon", "sample", "v_prediction"):
        problems.append(_refusal("prediction_type", c["prediction_type"], class_name,
                                 ("epsilon", "sample", "v_prediction")))
    sampler = default_sampler
    if class_name in DPM_SAMPLERS:
        pair = (c["algorithm_type"], c["solver_order"])
        if pair not in DPM_SAMPLERS[class_name]:
            problems.append(f"algorithm_type={pair[0]!r} with solver_order={pair[1]!r} (supported: "
                            + ", ".join(f"{a!r} with {o}" for a, o in DPM_SAMPLERS[class_name]) + ")")
        sampler = DPM_SAMPLERS[class_name].get(pair, default_sampler)
    if c.get("use_karras_sigmas") and c.get("use_exponential_sigmas"):
        problems.append("use_karras_sigmas and use_exponential_sigmas are both True (choose one)")
    try:
        schedule = schedule_from_config(c)
    except (TypeError, ValueError) as e:
        problems.append(str(e))
    if problems:
        raise ValueError(f"diffusers {class_name} config: " + "; ".join(problems))
    options = {}
    for key, spec in keys.items():
        if spec[0] == "option":
            options[spec[2]] = c[key]
    if c.get("use_karras_sigmas"):
        options["sigmas"] = "karras"
    elif c.get("use_exponential_sigmas"):
        options["sigmas"] = "exponential"
    return SchedulerConfig(class_name, schedule, c["prediction_type"], sampler, options)


def _legacy_problems(config):
    """The refusals among an early diffusers config's LEGACY_KEYS."""
    problems = []
    if config.get("timestep_values") is not None:
        problems.append("timestep_values (custom timesteps of early diffusers; refdiff supports null only)")
    if config.get("predict_epsilon", True) is not True:
        problems.append(f"predict_epsilon={config['predict_epsilon']!r} (write prediction_type=\"sample\" for an x_0 "
                        f"model: diffusers 0.42 ignores predict_epsilon)")
    elif "predict_epsilon" in config and config.get("prediction_type", "epsilon") != "epsilon":
        problems.append(f"predict_epsilon=True contradicts prediction_type={config['prediction_type']!r}")
    return problems


def _refusal(key, value, class_name, allowed):
    return f"{key}={value!r} (refdiff's {SCHEDULERS[class_name][0]} supports {', '.join(map(repr, allowed))} only)"


def schedule_from_config(c):
    """The NoiseSchedule of a scheduler config dict with every key present (diffusers' betas:
    linear, scaled_linear, squaredcos_cap_v2 = the cosine schedule with s = 0.008 and max_beta = 0.999,
    sigmoid, or trained_betas), rescaled to zero terminal SNR if rescale_betas_zero_snr."""
    from .checks import check_bool, check_positive_int, check_real
    from .gaussian.schedule import NoiseSchedule

    T = check_positive_int(c["num_train_timesteps"], "num_train_timesteps")
    if c["trained_betas"] is not None:
        betas = np.asarray(c["trained_betas"], dtype=np.float64)
        if betas.shape != (T,):
            raise ValueError(f"trained_betas holds {betas.size} values for num_train_timesteps={T}")
        schedule = NoiseSchedule(betas)
    else:
        name = c["beta_schedule"]
        if name not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule={name!r} (supported: {', '.join(map(repr, BETA_SCHEDULES))})")
        if name == "squaredcos_cap_v2":
            schedule = NoiseSchedule.cosine(T)
        else:
            start, end = check_real(c["beta_start"], "beta_start"), check_real(c["beta_end"], "beta_end")
            make = {"linear": NoiseSchedule.linear, "scaled_linear": NoiseSchedule.scaled_linear,
                    "sigmoid": NoiseSchedule.sigmoid}[name]
            schedule = make(T, start, end)
    if check_bool(c.get("rescale_betas_zero_snr", False), "rescale_betas_zero_snr"):
        schedule = schedule.rescale_zero_terminal_snr()
    return schedule


# ---- the folder ------------------------------------------------------------------------------------


def read_json(path):
    """The JSON object in `path`; FileNotFoundError or ValueError naming the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"missing {path}")
    try:
        with open(path) as f:
            value = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value


def is_pipeline_folder(path):
    """True if `path` is a folder holding a model_index.json (a diffusers pipeline)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, MODEL_INDEX))


def pipeline_parts(model_index, path=MODEL_INDEX):
    """(pipeline class, {part: diffusers class}) of a model_index.json dict; ValueError naming the
    pipeline class or every part refdiff cannot run."""
    class_name = model_index.get("_class_name")
    parts = {k: v for k, v in model_index.items() if not k.startswith("_")}
    classes = {}
    for name, value in parts.items():
        if value is None or value == [None, None]:
            continue  # an optional part left empty
        if not (isinstance(value, list) and len(value) == 2):
            raise ValueError(f"{path}: part {name!r} must be [library, class], got {value!r}")
        classes[name] = value[1]
    bad = [f"{name} ({cls})" for name, cls in classes.items()
           if name not in PART_CLASSES | {"scheduler": ()} or (name in PART_CLASSES and cls not in PART_CLASSES[name])]
    problems = []
    if class_name not in PIPELINES:
        problems.append(f"pipeline class {class_name!r} (supported: {', '.join(PIPELINES)})")
    if bad:
        problems.append("parts refdiff cannot run: " + ", ".join(bad))
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    vae_parts = [p for p in ("vae", "vqvae") if p in classes]
    needed = ["unet", "scheduler"]
    if class_name == "LDMPipeline" and not vae_parts:
        needed.append("vae (an AutoencoderKL)")
    missing = [p for p in needed if p.split()[0] not in classes]
    if missing:
        raise ValueError(f"{path}: {class_name} without {', '.join(missing)}")
    if len(vae_parts) > 1:
        raise ValueError(f"{path}: both vae and vqvae parts: which one decodes?")
    if vae_parts and class_name != "LDMPipeline":
        raise ValueError(f"{path}: {class_name} has no autoencoder part, got {vae_parts[0]}")
    return class_name, classes


def load_pipeline(path, backend="numpy"):
    """A Pipeline for the diffusers pipeline folder at `path` (model_index.json, unet/, scheduler/,
    vae/ for a latent pipeline). Nothing is downloaded: a missing file raises FileNotFoundError
    naming it; parts, classes and config keys refdiff cannot run raise ValueError naming them."""
    from .models.diffusers_io import load_autoencoder_kl, load_unet2d

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path!r} is not a folder (expected a diffusers pipeline folder)")
    index_file = os.path.join(path, MODEL_INDEX)
    class_name, parts = pipeline_parts(read_json(index_file), index_file)
    scheduler_file = os.path.join(path, "scheduler", SCHEDULER_CONFIG)
    config = read_json(scheduler_file)
    try:
        scheduler = scheduler_from_config(config, "DDIMScheduler" if class_name == "DDIMPipeline" else None)
    except ValueError as e:
        raise ValueError(f"{scheduler_file}: {e}") from None
    for part in ["unet"] + [p for p in ("vae", "vqvae") if p in parts]:
        if not os.path.isfile(os.path.join(path, part, "config.json")):
            raise FileNotFoundError(f"missing {os.path.join(path, part, 'config.json')}")
    unet = load_unet2d(os.path.join(path, "unet"), backend=backend)
    vae_part = next((p for p in ("vae", "vqvae") if p in parts), None)
    vae = None if vae_part is None else load_autoencoder_kl(os.path.join(path, vae_part), backend=backend)
    return Pipeline(unet, scheduler, vae=vae, class_name=class_name, default_steps=PIPELINES[class_name][1],
                    path=path)


class Pipeline:
    """A diffusers pipeline folder in refdiff: the unet, the scheduler's schedule, prediction type,
    sampler and options, and an AutoencoderKL for a latent pipeline. See the module docstring."""

    def __init__(self, unet, scheduler, vae=None, class_name="DDPMPipeline", default_steps=None, path=None):
        from .diffusion import GaussianDiffusion
        from .latent import LatentDiffusion

        self.unet, self.scheduler, self.vae = unet, scheduler, vae
        self.class_name, self.default_steps, self.path = class_name, default_steps, path
        # clip_sample and variance_type reach the samplers through their options, not the diffusion's defaults
        if vae is not None and vae.config["latent_channels"] != unet.config["in_channels"]:
            raise ValueError(f"the vae's latent_channels={vae.config['latent_channels']} differ from the unet's "
                             f"in_channels={unet.config['in_channels']}")
        common = dict(prediction_type=scheduler.prediction_type, clip_sample=False,
                      variance_type=scheduler.options.get("variance_type", "fixed_small"))
        self.diffusion = (GaussianDiffusion(unet, scheduler.schedule, **common) if vae is None else
                          LatentDiffusion(unet, scheduler.schedule, vae, vae.config["scaling_factor"], **common))

    @property
    def sampler(self):
        """The folder's own sampler (a registered name)."""
        return self.scheduler.sampler

    def sampler_options(self, sampler=None, **options):
        """The options a call with `sampler` gets: the folder config's that `sampler` takes, then `options`."""
        from .samplers.registry import valid_options

        sampler = sampler or self.sampler
        valid = valid_options(sampler)
        merged = {k: v for k, v in self.scheduler.options.items() if k in valid}
        merged.update(options)
        return merged

    def steps_for(self, sampler=None):
        """The default number of steps: the pipeline's (DDPMPipeline: None, all T, for ddpm and ddim), 50
        for the samplers on sigmas, which need a number."""
        sampler = sampler or self.sampler
        if self.default_steps is None and sampler not in ("ddpm", "ddim"):
            return 50
        return self.default_steps

    def __call__(self, n, steps=None, seed=None, sampler=None, x_T=None, rng=None, **options):
        """n samples (n, C, H, W) in the data's scale ([-1, 1] for images); latent pipelines decoded.

        steps: None = the pipeline's default (DDPMPipeline: all T; DDIMPipeline, LDMPipeline: 50).
        sampler: None = the folder's scheduler; any registered name runs on the same schedule.
        x_T: the start (n, *latent or image shape) in the model's scale (default: N(0, I) from the
        seed); rng: the generator of the step noise (default: numpy's default_rng(seed)); options:
        sampler options over the folder's.
        """
        from .diffusion import model_sample_shape
        from .nn.autograd import no_grad
        from .samplers.loop import run_sampler
        from .samplers.registry import sampler_spec

        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        sampler = sampler or self.sampler
        steps = self.steps_for(sampler) if steps is None else steps
        rng = np.random.default_rng(seed) if rng is None else rng
        shape = (int(n), *model_sample_shape(self.unet))
        if x_T is None:
            x_T = rng.standard_normal(shape, dtype=np.float32)  # x_T ~ N(0, I) in the model's scale
        elif check_float_array(x_T, "x_T").shape != shape:
            raise ValueError(f"x_T must have shape {shape}, got {x_T.shape}")
        backend = self.diffusion.backend
        self.unet.eval()
        with no_grad():
            # the unet at (x, t), unconditional; a learned variance's channels for ddpm/ddim only (as diffusers)
            keep = {}
            if self.diffusion.learns_variance:
                keep["keep_variance"] = sampler_spec(sampler).works_on == "timesteps"
            model_pair = self.diffusion._model_pair(int(n), None, 1.0, **keep)
            x, _ = run_sampler(model_pair, backend.asarray(x_T), self.scheduler.schedule, sampler, steps, rng,
                               self.scheduler.prediction_type, backend=backend,
                               **self.sampler_options(sampler, **options))
            if self.vae is not None:
                x = self.diffusion.decode(x)  # vae.decode(latents / scaling_factor)
        x = backend.to_numpy(x)
        if not np.all(np.isfinite(x)):
            raise FloatingPointError(f"sampling {self.path or 'the pipeline'} with {sampler} gave NaN or inf")
        return x

    def __repr__(self):
        vae = "" if self.vae is None else ", vae"
        return f"Pipeline({self.class_name}{vae}: {self.scheduler!r})"


def diffusers_images(x):
    """What diffusers' image pipelines return for samples x (n, C, H, W) in [-1, 1]: clip(x / 2 + 0.5,
    0, 1) as (n, H, W, C) float32 (output_type="np")."""
    return np.clip(np.asarray(x, dtype=np.float32) / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)
