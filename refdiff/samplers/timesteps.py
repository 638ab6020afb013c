"""Which timesteps a sampler visits when it takes fewer steps than the training schedule.

With T training steps and num_steps sampling steps (DDIM sec. 4.2, "sub-sequence tau"), the
three spacings of diffusers' DDIMScheduler.set_timesteps (Lin et al. 2023, Table 2):

    "leading":   t_i = i * (T // num_steps) + steps_offset,        i = num_steps-1 .. 0
    "trailing":  t_i = round(T - i * T / num_steps) - 1,           i = 0 .. num_steps-1
    "linspace":  t_i = round(linspace(0, T - 1, num_steps))_i,      descending

e.g. T = 1000, 10 steps: leading 900, 800, .., 0; trailing 999, 899, .., 99; linspace 999, 888, .., 0.
Timesteps are integers 0..T-1 (index t = the paper's step t+1).
"""
import numpy as np

from ..checks import check_choice, check_integer_timesteps, check_num_steps, check_positive_int

SPACINGS = ("leading", "trailing", "linspace")


def inference_timesteps(num_steps, T, spacing="leading", steps_offset=0):
    """The descending int64 timesteps (num_steps,) of a sampler, as diffusers' set_timesteps.

    num_steps: 1..T; T: the training schedule's length; spacing: "leading", "trailing" or
    "linspace"; steps_offset: added to every "leading" timestep (Stable Diffusion uses 1).
    As diffusers, steps_offset is ignored by "trailing" and "linspace" (their ends are already
    fixed at T - 1). Raises if num_steps > T or a timestep would fall outside 0..T-1.
    """
    num_steps = check_num_steps(num_steps, check_positive_int(T, "T"))
    steps_offset = check_positive_int(steps_offset, "steps_offset", minimum=0)
    check_choice(spacing, SPACINGS, "spacing")

    if spacing == "leading":
        step_ratio = T // num_steps
        timesteps = np.arange(num_steps, dtype=np.int64)[::-1] * step_ratio + steps_offset
    elif spacing == "trailing":
        step_ratio = T / num_steps
        # [:num_steps]: the float arange can yield one extra value ~0 (e.g. T=1000, 61 steps)
        timesteps = np.round(np.arange(T, 0, -step_ratio)[:num_steps]).astype(np.int64) - 1
    else:  # "linspace"
        timesteps = np.linspace(0, T - 1, num_steps).round()[::-1].astype(np.int64)

    if timesteps.shape != (num_steps,) or timesteps.min() < 0 or timesteps.max() > T - 1:
        raise ValueError(
            f"spacing={spacing!r} with num_steps={num_steps}, T={T}, steps_offset={steps_offset} gives "
            f"timesteps outside 0..{T - 1}: {timesteps[:3]}..{timesteps[-3:]}"
        )
    if (np.diff(timesteps) >= 0).any():
        raise ValueError(f"spacing={spacing!r} with num_steps={num_steps}, T={T} repeats a timestep")
    return np.ascontiguousarray(timesteps)


def previous_timestep(t, num_steps, T):
    """t - T // num_steps: the timestep a DDIM/DDPM step from t lands on (diffusers' convention).

    A result < 0 means "before the first step" (abar_prev = 1 in reverse.ddim_step). For
    "leading" spacing this is the next entry of inference_timesteps; for the other spacings
    diffusers' DDIMScheduler uses it all the same. t: int or int array; returns the same kind.
    """
    num_steps = check_num_steps(num_steps, check_positive_int(T, "T"))
    check_integer_timesteps(t)
    if hasattr(t, "dtype"):
        return t - T // num_steps
    return int(t) - T // num_steps


def timestep_pairs(steps, T, spacing="leading", steps_offset=0):
    """[(t, t_prev)] for sampling in `steps` steps out of T: t descending, t_prev the next t (-1 last).

    The sub-sequence tau of DDIM sec. 4.2, chosen by inference_timesteps (steps=None: all T).
    t_prev is the next timestep of the sequence, which equals diffusers' previous_timestep
    (t - T // steps) for the "leading" and "trailing" spacings and is the right one for
    "linspace" too.
    """
    steps = T if steps is None else check_num_steps(steps, T, "steps")
    ts = [int(t) for t in inference_timesteps(steps, T, spacing=spacing, steps_offset=steps_offset)]
    return list(zip(ts, ts[1:] + [-1]))
