"""The forward process q(x_t | x_0) on digits: how each schedule destroys an image across t.

    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,  eps ~ N(0, I)          (DDPM eq. 4)

One row per (schedule, digit), one column per timestep t (integers 0..T-1, index t is the
paper's step t+1), the same noise eps in every row, so the rows differ only by abar_t. The
cosine schedule (Nichol & Dhariwal 2021) keeps the digit visible for longer than the linear
one (Ho et al. 2020).

    python examples/forward_process.py [--out DIR]

Writes OUT/forward_process.png.
"""
import os

import numpy as np

from common import parser, run

import refdiff as rd
from refdiff.training.data import load_dataset
from refdiff.io.images import image_grid


def main(argv=None):
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    T = 1000
    ts = [0, 50, 100, 200, 300, 400, 500, 600, 800, 999]
    schedules = {"linear": rd.NoiseSchedule.linear(T), "cosine": rd.NoiseSchedule.cosine(T)}
    data = load_dataset("digits", image_size=16)
    x0 = data.x[[int(np.flatnonzero(data.y == d)[0]) for d in (3, 7)]]  # a 3 and a 7: (2, 1, 16, 16)
    noise = np.random.default_rng(args.seed).standard_normal(x0.shape, dtype=np.float32)[:1]  # same noise in every row

    rows = []
    for name, schedule in schedules.items():
        for x in x0:
            batch = np.repeat(x[None], len(ts), axis=0)  # (len(ts), 1, 16, 16)
            noise_batch = np.repeat(noise, len(ts), axis=0)  # (len(ts), 1, 16, 16)
            rows.append(rd.q_sample(batch, np.array(ts), noise_batch, schedule))
        abar_t = schedule.alphas_cumprod[ts]
        print(f"{name:7s} abar_t at t = {ts}: " + " ".join(f"{a:.3f}" for a in abar_t))
    grid = image_grid(np.concatenate(rows), nrow=len(ts), scale=4)
    path = _with_labels(grid, list(schedules), ts, os.path.join(args.out, "forward_process.png"))
    print(f"wrote {path}")
    return path


def _with_labels(grid, schedule_names, ts, path):
    """The grid with the timesteps above the columns and the schedule left of each pair of rows."""
    from PIL import Image, ImageDraw

    h, w, _ = grid.shape
    left, top = 60, 18
    canvas = Image.new("RGB", (w + left, h + top), "white")
    canvas.paste(Image.fromarray(grid), (left, top))
    draw = ImageDraw.Draw(canvas)
    col = w / len(ts)
    for i, t in enumerate(ts):
        draw.text((left + i * col + 4, 3), f"t={t}", fill=(0, 0, 0))
    for j, name in enumerate(schedule_names):
        draw.text((4, top + (2 * j + 1) * h / (2 * len(schedule_names)) - 6), name, fill=(0, 0, 0))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.save(path)
    return path


if __name__ == "__main__":
    run(main)
