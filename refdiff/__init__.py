"""refdiff: denoising diffusion as a readable NumPy reference and a CUDA backend behind one API.

    import refdiff as rd
    s = rd.NoiseSchedule.linear(T=1000)
    x_t = rd.q_sample(x0, t, noise, s)

Every public name below lives in the module that defines it; this file only re-exports them,
importing each module the first time one of its names is used, so `import refdiff` needs
NumPy alone and stays fast. The map is the table of contents of the library.
"""
import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # noise schedules (DDPM sec. 2, improved DDPM sec. 3.2, Lin et al. 2023)
    "NoiseSchedule": "refdiff.gaussian.schedule",
    # forward process q(x_t | x_0), q(x_t | x_{t-1}) and the training target
    "q_sample": "refdiff.gaussian.forward",
    "q_step": "refdiff.gaussian.forward",
    "q_sample_with_target": "refdiff.gaussian.forward",
    # posterior q(x_{t-1} | x_t, x_0)
    "q_posterior": "refdiff.gaussian.posterior",
    # conversions between the eps, x0, v and score parameterizations
    "x0_from_eps": "refdiff.gaussian.parameterization",
    "eps_from_x0": "refdiff.gaussian.parameterization",
    "v_from_x0_eps": "refdiff.gaussian.parameterization",
    "x0_from_v": "refdiff.gaussian.parameterization",
    "eps_from_v": "refdiff.gaussian.parameterization",
    "score_from_eps": "refdiff.gaussian.parameterization",
    "eps_from_score": "refdiff.gaussian.parameterization",
    "training_target": "refdiff.gaussian.parameterization",
    "x0_eps_from_model_output": "refdiff.gaussian.parameterization",
    # the exact analytic denoiser of a Gaussian mixture (PRML sec. 2.3; EDM appendix B.3)
    "GaussianMixture": "refdiff.gaussian.mixture",
    # the variational bound and bits per dimension (DDPM eq. 5; improved DDPM sec. 2-3)
    "normal_kl": "refdiff.gaussian.likelihood",
    "discretized_gaussian_log_likelihood": "refdiff.gaussian.likelihood",
    "prior_kl": "refdiff.gaussian.likelihood",
    "vlb_terms": "refdiff.gaussian.likelihood",
    "vlb": "refdiff.gaussian.likelihood",
    "bits_per_dim": "refdiff.gaussian.likelihood",
    # learned variance (improved DDPM sec. 3.1, eq. 15)
    "learned_range_log_variance": "refdiff.gaussian.learned_variance",
    "split_model_output": "refdiff.gaussian.learned_variance",
    # the exact likelihood through the probability-flow ODE (Song et al. 2021 app. D)
    "ode_log_likelihood": "refdiff.gaussian.ode_likelihood",
    "ode_bits_per_dim": "refdiff.gaussian.ode_likelihood",
    # loss weighting (min-SNR-gamma)
    "loss_weight": "refdiff.gaussian.losses",
    # reverse updates
    "ddpm_step": "refdiff.samplers.ddpm",
    "ddim_step": "refdiff.samplers.ddim",
    "classifier_free_guidance": "refdiff.gaussian.guidance",
    "inference_timesteps": "refdiff.samplers.timesteps",
    "previous_timestep": "refdiff.samplers.timesteps",
    # processes q(x_t | x_0) = N(signal_scale x_0, noise_std^2 I) and the one sampler entry point
    "DiscreteProcess": "refdiff.gaussian.process",
    "VPLinearProcess": "refdiff.gaussian.process",
    "VPCosineProcess": "refdiff.gaussian.process",
    "VEProcess": "refdiff.gaussian.process",
    "EDMProcess": "refdiff.gaussian.process",
    "FlowProcess": "refdiff.gaussian.process",
    "as_process": "refdiff.gaussian.process",
    "sample_loop": "refdiff.samplers.loop",
    # image editing on a plain model(x, t): img2img, inpainting, super-resolution
    "sdedit": "refdiff.samplers.editing",
    "inpaint_replace": "refdiff.samplers.editing",
    "repaint": "refdiff.samplers.editing",
    "superres": "refdiff.samplers.editing",
    "timestep_embedding": "refdiff.gaussian.embedding",
    # autograd, layers, networks, optimizers
    "Tensor": "refdiff.nn.autograd",
    "no_grad": "refdiff.nn.autograd",
    "UNet": "refdiff.models.unet",
    "MLPDenoiser": "refdiff.models.mlp",
    "AutoencoderKL": "refdiff.models.autoencoder",
    # diffusers pipeline folders (model_index.json, unet/, scheduler/, vae/), sampled by refdiff
    "load_pipeline": "refdiff.pipeline",
    # classifier guidance (Dhariwal & Nichol 2021): the noise-conditional classifier, its objective, the math
    "NoiseClassifier": "refdiff.models.classifier",
    "NoisyClassification": "refdiff.training.classifier",
    "classifier_guided_eps": "refdiff.gaussian.guidance",
    "classifier_guided_mean": "refdiff.gaussian.guidance",
    # training and sampling
    "GaussianDiffusion": "refdiff.diffusion",
    "CapturedSampler": "refdiff.capture",  # GaussianDiffusion.capture_sampler: a step replayed from a CUDA graph
    "FlowMatching": "refdiff.flow_matching",
    "ConsistencyDistillation": "refdiff.consistency",
    "ConsistencyTraining": "refdiff.consistency",
    # latent diffusion (Rombach et al. 2022): diffusion over a frozen autoencoder's scaled latents
    "LatentDiffusion": "refdiff.latent",
    "measure_scaling_factor": "refdiff.latent",
    "AutoencoderTraining": "refdiff.training.autoencoder",
    "Trainer": "refdiff.training.trainer",
    # backends
    "get_backend": "refdiff.backend",
    "BackendUnavailable": "refdiff.backend",
}

# modules reachable as attributes: rd.nn, rd.optim, rd.kernels, ... (attribute -> module)
_SUBMODULES = {
    "gaussian": "refdiff.gaussian",
    "samplers": "refdiff.samplers",
    "nn": "refdiff.nn",
    "models": "refdiff.models",
    "training": "refdiff.training",
    "io": "refdiff.io",
    "checks": "refdiff.checks",
    "backend": "refdiff.backend",
    "kernels": "refdiff.kernels",
    # short names kept from the flat layout
    "functional": "refdiff.nn.functional",
    "optim": "refdiff.training.optim",
    "data": "refdiff.training.data",
    "metrics": "refdiff.training.metrics",
}

__all__ = sorted(_EXPORTS) + sorted(_SUBMODULES)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(_SUBMODULES[name])
    else:
        raise AttributeError(f"module 'refdiff' has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return __all__
