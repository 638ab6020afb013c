"""Per-sample weights of the denoising loss.

    "none":    w_t = 1                                     (DDPM eq. 14, L_simple)
    "min_snr": w_t = min(snr_t, gamma) / snr_t             prediction_type "epsilon"
               w_t = min(snr_t, gamma)                     prediction_type "sample"
               w_t = min(snr_t, gamma) / (snr_t + 1)       prediction_type "v_prediction"

Min-SNR-gamma: Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting
Strategy", arXiv:2303.09556, sec. 3.4 (the weight on the x_0 loss is min(snr, gamma); for an
eps or v target it is divided by snr or snr + 1, the factor between those losses and the x_0
loss), as diffusers' training scripts apply it with compute_snr.
"""
import numpy as np

from ..checks import check_choice, check_positive_real, check_prediction_type, check_timesteps

WEIGHTINGS = ("none", "min_snr")


def min_snr_weight(snr, gamma, prediction_type):
    """min(snr, gamma) divided by the factor of the prediction type (Hang et al. 2023, sec. 3.4).

    At snr = 0 (zero terminal SNR) the "epsilon" weight min(snr, gamma) / snr is taken as its
    limit 1 instead of 0 / 0.
    """
    clipped = np.minimum(snr, gamma)
    if prediction_type == "epsilon":
        return np.divide(clipped, snr, out=np.ones_like(snr), where=snr > 0)
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped  # "sample"


def loss_weight(t, schedule, weighting="none", gamma=5.0, prediction_type="epsilon"):
    """Loss weight per sample, float64 (B,), for timesteps t: int array (B,) in 0..T-1.

    "none" is DDPM's L_simple (eq. 14); "min_snr" is min-SNR-gamma (Hang et al. 2023, sec. 3.4).

    weighting "none" (all ones) or "min_snr" with gamma > 0 (5 in the paper); prediction_type
    "epsilon", "sample" or "v_prediction" (see the module docstring for the formulas).
    """
    check_choice(weighting, WEIGHTINGS, "weighting")
    check_prediction_type(prediction_type)
    t = check_timesteps(t, schedule.T)
    if weighting == "none":
        return np.ones(t.shape, dtype=np.float64)
    return min_snr_weight(schedule.snr[t], check_positive_real(gamma, "gamma"), prediction_type)
