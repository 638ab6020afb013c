"""Plumbing shared by the examples: options, data, model choice, a training helper.

Not part of the library: the examples import it as `from common import ...` (they run as
scripts from any directory; this folder is put on sys.path by Python because the script lives here).
"""
import argparse
import json
import os
import time

from refdiff.training.data import Dataset, load_dataset
from refdiff.training.trainer import Trainer


def run(main):
    """Run an example's main() with one BLAS thread: fastest for the small matrix products here,
    and far faster than several threads on a busy machine (REFDIFF_BLAS_THREADS overrides)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return main()
    with threadpool_limits(limits=int(os.environ.get("REFDIFF_BLAS_THREADS", "1"))):
        return main()


def parser(description, out="examples_out"):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", default=out, help=f"output directory (default ./{out})")
    p.add_argument("--quick", action="store_true", help="tiny settings that run in seconds (a smoke test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=("numpy", "cuda"), default="numpy")
    return p


def flat(dataset):
    """Images (N, C, H, W) as points (N, C*H*W) for the MLP denoiser (labels kept)."""
    x = dataset.x.reshape(len(dataset.x), -1)
    return Dataset(x, dataset.y, dataset.num_classes, "points", dataset.name + "-flat", dataset.class_names)


def digits(image_size=8):
    return load_dataset("digits", image_size=image_size)


def train(diffusion, dataset, steps, out_dir=None, progress=True, **options):
    """Train with the Trainer; returns it (the EMA weights are in trainer.ema)."""
    trainer = Trainer(diffusion, dataset, out_dir=out_dir, progress=progress, **options)
    t0 = time.perf_counter()
    trainer.train(steps)
    trainer.seconds = time.perf_counter() - t0
    return trainer


def save_json(path, obj):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
    return path


def plt():
    """matplotlib.pyplot with a non-interactive backend (pip install refdiff[examples])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot
