"""Guidance: classifier-free (one network, conditional and unconditional) and classifier guidance.

Classifier-free guidance combines the network's two outputs at sampling:

    guided = uncond + s (cond - uncond)          Ho & Salimans 2022, eq. 6, with s = 1 + w

The paper writes (1 + w) cond - w uncond; diffusers' guidance_scale s = 1 + w, so s = 1 gives
the conditional output and s = 0 the unconditional one. The same combine works on any
prediction type (eps, x_0, v): it is linear.

Classifier guidance adds s times the gradient of a noise-conditional classifier's
log p_phi(y | x_t) to the unconditional model (Dhariwal & Nichol 2021):

    mean_hat = mean + s Sigma_t grad_x log p_phi(y | x_t)           Algorithm 1 (DDPM ancestral step)
    eps_hat  = eps - sqrt(1 - abar_t) s grad_x log p_phi(y | x_t)   eq. 14, Algorithm 2 (DDIM, ODE samplers)

Both are the score of p(x_t) p_phi(y | x_t)^s: eps = -sqrt(1 - abar_t) grad log p(x_t), so eq. 14
adds s grad log p_phi(y | x_t) to the score. At s = 1, with the exact score and the exact class
posterior, it is the score of the class-conditional q(x_t | y) (Bayes' rule). The gradient itself
is the autograd's business (refdiff.models.classifier); these functions take it as an array.

References: Ho, Salimans 2022, Classifier-Free Diffusion Guidance, arXiv:2207.12598.
  Dhariwal, Nichol 2021, Diffusion Models Beat GANs on Image Synthesis, arXiv:2105.05233 (sec. 4,
  Algorithms 1-2, eq. 14).
"""
from ..checks import check_float_array, check_like, check_real


def guided_output(cond, uncond, guidance_scale):
    """uncond + s (cond - uncond)   (Ho & Salimans 2022, eq. 6 with w = s - 1). Inputs trusted."""
    return uncond + guidance_scale * (cond - uncond)


def classifier_free_guidance(model_output_cond, model_output_uncond, guidance_scale):
    """Guided output = uncond + s (cond - uncond)   (Ho & Salimans 2022, eq. 6 with w = s - 1).

    Arrays (B, ...) of the same shape and dtype, no NaN/inf; guidance_scale a finite real
    number. Returns a new array of that dtype.
    """
    cond = check_float_array(model_output_cond, "model_output_cond")
    uncond = check_like(cond, model_output_uncond, "model_output_cond", "model_output_uncond")
    return guided_output(cond, uncond, check_real(guidance_scale, "guidance_scale"))


def classifier_guided_eps(eps, noise_std, grad_log_p, guidance_scale):
    """eps_hat = eps - sqrt(1 - abar_t) s grad_x log p_phi(y | x_t)   (Dhariwal & Nichol 2021, eq. 14).

    noise_std: sqrt(1 - abar_t) (a number, or an array broadcasting against eps); grad_log_p the
    classifier gradient at x_t, eps's shape. Inputs trusted (the sampling layer checks them).
    """
    return eps - noise_std * guidance_scale * grad_log_p


def classifier_guided_mean(mean, variance, grad_log_p, guidance_scale):
    """mean_hat = mean + s Sigma_t grad_x log p_phi(y | x_t)   (Dhariwal & Nichol 2021, Algorithm 1).

    variance: Sigma_t of the reverse step (a number, or an array broadcasting against mean).
    Since x_{t-1} = mean + sqrt(Sigma_t) z, shifting the drawn x_{t-1} by s Sigma_t grad is the same
    as drawing from the shifted mean. Inputs trusted.
    """
    return mean + guidance_scale * variance * grad_log_p
