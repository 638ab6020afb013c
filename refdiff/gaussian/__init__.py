"""refdiff.gaussian: the Gaussian diffusion process itself, the math every sampler and model uses.

    schedule.py          NoiseSchedule: betas and every derived table (DDPM sec. 2, improved DDPM, Lin et al.)
    process.py           processes q(x_t | x_0) = N(signal_scale x_0, noise_std^2 I): DDPM schedules, VP, VE, EDM, flow
    forward.py           q(x_t | x_0), q(x_t | x_{t-1}) and the training target (DDPM eqs. 2, 4)
    posterior.py         q(x_{t-1} | x_t, x_0): its mean coefficients and variance (DDPM eqs. 6-7)
    parameterization.py  eps, x_0, v and score, and the conversions between them (DDPM eq. 15, Salimans & Ho)
    guidance.py          classifier-free guidance (Ho & Salimans 2022, eq. 6)
    losses.py            loss weights per timestep (L_simple, min-SNR-gamma)
    embedding.py         the sinusoidal timestep embedding (Vaswani et al. sec. 3.5)
    likelihood.py        the variational bound L_vlb and bits/dim: Gaussian KL, discretized decoder, prior (DDPM eq. 5, 13),
                         and their gradients in the model's log-variance
    learned_variance.py  learned variance: the 2C-channel split, learned_range log-variance (improved DDPM eq. 15)
    ode_likelihood.py    log p(x) by the probability-flow ODE and its divergence, Dormand-Prince 5(4),
                         exact or Hutchinson traces; ODE bits/dim (Song et al. 2021 app. D)
    mixture.py           GaussianMixture: exact q(x_t), E[x_0 | x_t], eps, v, score and flow velocity of a mixture (PRML 2.3, EDM app. B.3)
    flow_matching.py     the straight path, its velocity target, uniform / logit-normal times, straightness
                         (Lipman et al. 2023; Liu et al. 2022; Esser et al. 2024 eq. 19)
    distillation.py      progressive distillation: the target x_tilde of two teacher DDIM steps folded into one,
                         its v, the truncated-SNR weight (Salimans & Ho 2022 Algorithm 2, sec. 4)
    consistency.py       consistency models: c_skip / c_out (f(x, sigma_min) = x by construction), the network target of
                         the CD loss, the re-noise of multistep sampling, the target network's EMA, consistency
                         training's N(k), mu(k) (Song et al. 2023 eq. 5, Algorithms 1-3, app. C)

A math folder: it imports NumPy, refdiff.checks and refdiff.backend only, never the networks,
the autograd or the training code (tests/test_layout.py keeps it so). The names follow
docs/NOTATION.md.
"""
