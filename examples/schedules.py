"""Noise schedules side by side: abar_t and the signal-to-noise ratio SNR(t) = abar_t / (1 - abar_t).

Linear (Ho et al. 2020), scaled linear (Stable Diffusion), quadratic, cosine (Nichol & Dhariwal
2021), sigmoid (Jabri et al. 2022), and the linear schedule rescaled to zero terminal SNR (Lin et
al. 2023, whose last step is pure noise: abar_{T-1} = 0, SNR = 0). T = 1000.

    python examples/schedules.py [--out DIR]         (needs matplotlib: pip install refdiff[examples])

Writes OUT/schedules.png (abar_t and log10 SNR(t)) and prints each schedule's end points.
"""
import os

import numpy as np

from common import parser, plt, run

import refdiff as rd


def main(argv=None):
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    T = 1000
    S = rd.NoiseSchedule
    schedules = {
        "linear": S.linear(T),
        "scaled_linear": S.scaled_linear(T),
        "quadratic": S.quadratic(T),
        "cosine": S.cosine(T),
        "sigmoid": S.sigmoid(T),
        "linear, zero terminal SNR": S.linear(T).rescale_zero_terminal_snr(),
    }
    pyplot = plt()
    fig, (ax_abar, ax_snr) = pyplot.subplots(1, 2, figsize=(11, 4.2))
    t = np.arange(T)
    for name, s in schedules.items():
        ax_abar.plot(t, s.alphas_cumprod, label=name)
        with np.errstate(divide="ignore"):
            ax_snr.plot(t, np.log10(s.snr), label=name)
        print(f"{name:26s} abar_0 = {s.alphas_cumprod[0]:.5f}  abar_T-1 = {s.alphas_cumprod[-1]:.2e}  "
              f"SNR_T-1 = {s.snr[-1]:.2e}")
    ax_abar.set(xlabel="timestep t", ylabel="abar_t (alphas_cumprod)", title="signal kept: abar_t")
    ax_snr.set(xlabel="timestep t", ylabel="log10 SNR(t)", title="SNR(t) = abar_t / (1 - abar_t)")
    ax_abar.legend(fontsize=8)
    for ax in (ax_abar, ax_snr):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "schedules.png")
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    run(main)
