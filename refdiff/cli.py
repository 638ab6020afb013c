"""The `refdiff` command line: train, sample, demo.

    refdiff train --data moons --steps 3000 --out runs/moons
    refdiff train --data digits --classes --steps 4000 --out runs/digits
    refdiff train --resume --steps 6000 --out runs/digits          # continue a run
    refdiff sample runs/digits --n 64 --sampler ddim --steps 50 --guidance-scale 3 --out digits.png
    refdiff sample runs/digits --sampler dpmpp_2m --sigmas karras --steps 20 --out digits.png
    refdiff sample runs/moons --sampler euler --steps 20 --option s_churn=0.5 --out moons.png
    refdiff train --data moons --objective flow_matching --steps 3000 --out runs/moons-fm
    refdiff sample runs/moons-fm --sampler flow_euler --steps 8 --out moons-fm.png
    refdiff train --data digits --superres 2 --steps 2000 --out runs/digits-sr      # super-resolution x2 (SR3)
    refdiff edit runs/digits --mode inpaint --input digit.png --mask mask.png --method repaint --out filled.png
    refdiff edit runs/digits --mode img2img --input digit.png --strength 0.6 --sampler ddim --steps 50 --out edited.png
    refdiff edit runs/digits-sr --mode superres --input small.npz --sampler ddim --steps 50 --out large.png
    refdiff sample path/to/google-ddpm-cifar10-32 --n 16 --out cifar.png   # a diffusers pipeline folder
    refdiff distill runs/moons --method progressive --from-steps 64 --to-steps 1 --steps-per-stage 500 --out runs/pd
    refdiff distill runs/moons --method consistency --steps 2000 --out runs/cd   # --resume continues either
    refdiff sample runs/cd --steps 1 --out cd.png                              # one consistency step
    refdiff train-autoencoder --data shapes --steps 2000 --out runs/ae      # the KL autoencoder of latent diffusion
    refdiff train --latent runs/ae --data shapes --steps 3000 --out runs/ldm  # diffusion on its scaled latents
    refdiff sample runs/ldm --sampler ddim --steps 50 --out ldm.png          # latents sampled, then decoded
    refdiff demo                                                    # ~1-2 minutes on a laptop CPU
    mpiexec -n 2 refdiff train --data digits --steps 4000 --out runs/digits   # data-parallel, 2 processes

Every user error (a bad option, an unreadable or empty data file, a corrupt checkpoint, an
output path that cannot be written) ends with one line that says what to fix, and exit status 2;
never a traceback. Errors in refdiff itself still show their traceback.

Plumbing: argument parsing and printing; the work is done by refdiff.training.trainer, refdiff.diffusion
and refdiff.io.images.
"""
import os

# Small matrix products (the MLP, the tiny U-Nets of the demo) run fastest on one BLAS thread,
# and several BLAS threads on a busy 2-core machine can be 100x slower. This only takes effect
# when numpy has not been imported yet (the console script); set the variables to override.
if "numpy" not in __import__("sys").modules:
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

SCHEDULES = ("linear", "scaled_linear", "quadratic", "cosine", "sigmoid")


class CLIError(Exception):
    """A problem with the command's arguments or inputs, reported as an argparse error (exit 2)."""


# ---------------------------------------------------------------------------------------------
# argument parsing


def _number(convert, accept, expected):
    """An argparse type: `convert` the text, then require `accept(value)`; errors say `expected`."""

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    return parse


_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_nonnegative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _number(float, lambda v: 0 < v < math.inf, "a positive finite number")
_nonnegative_float = _number(float, lambda v: 0 <= v < math.inf, "a finite number >= 0")
_probability = _number(float, lambda v: 0 <= v <= 1, "a probability in [0, 1]")
_decay = _number(float, lambda v: 0 <= v < 1, "a decay in [0, 1) (1 would never update the EMA weights)")


def _int_tuple(text):
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def _sigma_grid(text):
    """--sigmas: a named grid, or comma-separated numbers (an explicit descending grid)."""
    if text in ("default", "karras", "exponential"):
        return text
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected default, karras, exponential or comma-separated numbers, "
                                         f"got {text!r}") from None
    if len(values) < 2:
        raise argparse.ArgumentTypeError(f"an explicit grid needs at least 2 sigmas, got {text!r}")
    return values


def _sampler_option(text):
    """--option NAME=VALUE: VALUE read as an int, a float, true/false, none, or else as text."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
        return name.strip(), lowered == "true"
    if lowered == "none":
        return name.strip(), None
    for convert in (int, float):
        try:
            return name.strip(), convert(value)
        except ValueError:
            pass
    return name.strip(), value


def build_parser():
    parser = argparse.ArgumentParser(
        prog="refdiff",
        description="Train denoising diffusion models and draw samples (NumPy reference, optional CUDA backend).",
    )
    sub = parser.add_subparsers(dest="command", metavar="{train,train-autoencoder,sample,edit,eval,distill,demo}")
    sub.required = True

    # ---- train ----
    p = sub.add_parser(
        "train",
        help="train a diffusion model on a dataset",
        description="Train a diffusion model; checkpoints go to OUT/checkpoints, sample pictures to OUT/samples.",
    )
    p.add_argument("--data", help="built-in dataset (moons, swissroll, gaussians8, checkerboard, shapes, digits) "
                   "or KIND:PATH (idx:, npz:, folder:); required unless --resume")
    p.add_argument("--steps", type=_positive_int, required=True, help="train until this many optimizer steps in total")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT from its latest checkpoint "
                   "(model, data and optimizer options come from the checkpoint)")
    p.add_argument("--model", choices=("auto", "mlp", "unet"), default="auto", help="network (auto: mlp for points, unet for images)")
    p.add_argument("--backend", choices=("numpy", "cuda"), default="numpy")
    p.add_argument("--classes", action="store_true", help="class-conditional (uses the dataset's labels; enables guidance)")
    p.add_argument("--batch-size", type=_positive_int, default=None, help="default 256 for points, 64 for images")
    p.add_argument("--lr", type=_positive_float, default=None, help="AdamW learning rate (default 2e-3 mlp, 1e-3 unet)")
    p.add_argument("--weight-decay", type=_nonnegative_float, default=0.0)
    p.add_argument("--warmup-steps", type=_nonnegative_int, default=100)
    p.add_argument("--grad-clip", type=_nonnegative_float, default=1.0, help="max gradient norm (0: off)")
    p.add_argument("--ema-decay", type=_decay, default=0.999, help="EMA decay in [0, 1)")
    p.add_argument("--cond-drop-prob", type=_probability, default=0.1, help="label dropout for classifier-free guidance")
    p.add_argument("--seed", type=_nonnegative_int, default=0)
    p.add_argument("--n", type=_positive_int, default=None, help="number of data points to generate/load")
    p.add_argument("--image-size", type=_positive_int, default=None, help="resize images to this size")
    p.add_argument("--objective", choices=("diffusion", "flow_matching", "classifier"), default="diffusion",
                   help="diffusion: DDPM's noise regression on --schedule (GaussianDiffusion); flow_matching: the "
                   "velocity of the straight path x_t = (1 - t) x0 + t eps (FlowMatching; sample with flow_euler/flow_heun); "
                   "classifier: a noise-conditional classifier p(y | x_t) on labelled images (NoiseClassifier, the "
                   "U-Net's encoder half; cross-entropy at uniform t on --schedule) for `refdiff sample --guidance classifier`")
    # each objective's own options: default None here, so that one given to the other objective
    # is refused instead of ignored (OBJECTIVE_OPTIONS below holds their defaults)
    p.add_argument("--time-sampling", choices=("uniform", "logit_normal"), default=None,
                   help="flow_matching: how training draws t (logit_normal: SD3's, Esser et al. 2024 eq. 19); default uniform")
    p.add_argument("--shift", type=_positive_float, default=None,
                   help="flow_matching: the sampling grid's shift (SD3 eq. 23); default 1")
    p.add_argument("--T", type=_positive_int, default=None, help="diffusion, classifier: steps of the schedule; default 1000")
    p.add_argument("--latent", default=None, metavar="AE_RUN",
                   help="latent diffusion (LDM): diffuse the scaled latents of this autoencoder (a refdiff "
                   "train-autoencoder run, or a diffusers AutoencoderKL folder); the U-Net is built for the latents "
                   "and the autoencoder's weights are copied into the run; samples are decoded")
    p.add_argument("--superres", type=_positive_int, default=None, metavar="FACTOR",
                   help="diffusion on images: train a super-resolution model (SR3): the U-Net also sees the image "
                   "area-averaged FACTOR x smaller and upsampled back (nearest), on extra input channels")
    p.add_argument("--schedule", choices=SCHEDULES, default=None, help="diffusion, classifier: default linear")
    p.add_argument("--prediction-type", choices=("epsilon", "sample", "v_prediction"), default=None,
                   help="diffusion: default epsilon")
    p.add_argument("--loss-weighting", choices=("none", "min_snr"), default=None, help="diffusion: default none")
    p.add_argument("--variance-type", choices=("fixed_small", "fixed_large", "learned", "learned_range"), default=None,
                   help="diffusion: the reverse step's variance; learned_range / learned: the model outputs 2C channels "
                        "and trains with the hybrid loss L_simple + lambda L_vlb (improved DDPM sec. 3.1); "
                        "sampling and bits/dim read it from the checkpoint. Default fixed_small")
    p.add_argument("--vlb-weight", type=_positive_float, default=None,
                   help="diffusion with a learned variance: lambda of the hybrid loss (improved DDPM eq. 16); default 0.001")
    p.add_argument("--hidden", type=_positive_int, default=128, help="mlp: hidden width")
    p.add_argument("--num-blocks", type=_positive_int, default=3, help="mlp: residual blocks")
    p.add_argument("--base-channels", type=_positive_int, default=32, help="unet: channels at the first level")
    p.add_argument("--channel-mults", type=_int_tuple, default=(1, 2), help="unet: e.g. 1,2,2")
    p.add_argument("--num-res-blocks", type=_positive_int, default=1, help="unet: resnet blocks per level")
    p.add_argument("--sample-every", type=_nonnegative_int, default=0, help="write a sample picture every N steps (0: at the end only)")
    p.add_argument("--sample-n", type=_positive_int, default=64, help="samples in each picture")
    p.add_argument("--sample-steps", type=_positive_int, default=50, help="DDIM steps for the pictures")
    p.add_argument("--checkpoint-every", type=_nonnegative_int, default=1000,
                   help="checkpoint every N steps (0: no step trigger); always at the end")
    p.add_argument("--checkpoint-minutes", type=_nonnegative_float, default=10.0,
                   help="also checkpoint when this many minutes passed since the last one (0: off)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--parallel", choices=("auto", "none", "mpi"), default="auto",
                   help="data-parallel training over MPI processes (auto: when started by mpiexec with N > 1 "
                   "processes; --batch-size is then the global batch, split evenly); needs refdiff[mpi]")

    # ---- train-autoencoder ----
    p = sub.add_parser(
        "train-autoencoder",
        help="train the KL autoencoder of latent diffusion on images",
        description="Train an AutoencoderKL (reconstruction + kl_weight * KL; LDM's first stage) with the Trainer; "
        "checkpoints go to OUT/checkpoints, a picture of images and their reconstructions to OUT/reconstructions.png. "
        "Then: refdiff train --latent OUT ...",
    )
    p.add_argument("--data", help="image dataset (shapes, digits, or KIND:PATH); required unless --resume")
    p.add_argument("--steps", type=_positive_int, required=True, help="train until this many optimizer steps in total")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT from its latest checkpoint")
    p.add_argument("--latent-channels", type=_positive_int, default=4, help="channels of the latent z (default 4)")
    p.add_argument("--block-channels", type=_int_tuple, default=(32, 64),
                   help="channels of each level (diffusers' block_out_channels); L levels shrink each side "
                   "2^(L-1) times (default 32,64: 2x)")
    p.add_argument("--layers-per-block", type=_positive_int, default=1, help="resnet blocks per encoder level")
    p.add_argument("--norm-groups", type=_positive_int, default=8, help="GroupNorm groups (divides every level's channels)")
    p.add_argument("--kl-weight", type=_nonnegative_float, default=1e-6, help="weight of the KL term (LDM's KL-reg: 1e-6)")
    p.add_argument("--reconstruction", choices=("l1", "l2"), default="l1", help="reconstruction loss (default l1)")
    p.add_argument("--backend", choices=("numpy", "cuda"), default="numpy")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--lr", type=_positive_float, default=1e-3, help="AdamW learning rate")
    p.add_argument("--warmup-steps", type=_nonnegative_int, default=100)
    p.add_argument("--grad-clip", type=_nonnegative_float, default=1.0, help="max gradient norm (0: off)")
    p.add_argument("--ema-decay", type=_decay, default=0.999, help="EMA decay in [0, 1)")
    p.add_argument("--seed", type=_nonnegative_int, default=0)
    p.add_argument("--n", type=_positive_int, default=None, help="number of images to generate/load")
    p.add_argument("--image-size", type=_positive_int, default=None, help="resize images to this size")
    p.add_argument("--checkpoint-every", type=_nonnegative_int, default=1000,
                   help="checkpoint every N steps (0: no step trigger); always at the end")
    p.add_argument("--checkpoint-minutes", type=_nonnegative_float, default=10.0,
                   help="also checkpoint when this many minutes passed since the last one (0: off)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    # ---- sample ----
    p = sub.add_parser(
        "sample",
        help="draw samples from a trained run",
        description="Draw samples from the latest checkpoint of a run (EMA weights) and write a picture or arrays.",
    )
    p.add_argument("run", help="run directory (or a checkpoint step_*.json file), or a diffusers pipeline folder "
                   "(model_index.json, unet/, scheduler/, vae/: sampled with its own scheduler unless --sampler)")
    p.add_argument("--n", type=_positive_int, default=64, help="number of samples")
    p.add_argument("--out", required=True, help="output: .png (image grid or 2-D scatter) or .npz (samples, labels)")
    p.add_argument("--sampler", default=None, help="a registered sampler: ddpm, ddim, euler, euler_ancestral, heun, "
                   "lms, dpmpp_2m, flow_euler, flow_heun, ... (the README's table; default ddpm, flow_euler for a "
                   "flow-matching run)")
    p.add_argument("--steps", type=_positive_int, default=None, help="sampling steps (default: all T for ddpm/ddim)")
    p.add_argument("--sigmas", type=_sigma_grid, default=None,
                   help="noise levels: default, karras, exponential, or comma-separated descending sigmas")
    p.add_argument("--eta", type=_probability, default=None, help="DDIM (or euler_ancestral) eta (DDIM default 0: deterministic)")
    p.add_argument("--spacing", choices=("leading", "trailing", "linspace"), default=None,
                   help="timestep spacing (default: the sampler's, leading for ddpm/ddim, linspace for the Euler family)")
    p.add_argument("--option", dest="options", action="append", type=_sampler_option, default=[], metavar="NAME=VALUE",
                   help="a sampler option, e.g. --option s_churn=0.5 (repeatable; numbers, true/false or text)")
    p.add_argument("--clipped-eps", action="store_true",
                   help="DDIM: use the eps of the clipped x0 prediction (diffusers' use_clipped_model_output); "
                   "steadier with an imperfect model")
    p.add_argument("--guidance-scale", type=float, default=1.0,
                   help="guidance scale s: classifier-free (class-conditional runs; 1: off) or classifier guidance's")
    p.add_argument("--guidance", choices=("classifier_free", "classifier"), default=None,
                   help="classifier: classifier guidance (Dhariwal & Nichol 2021) with the run at --classifier; "
                   "default: classifier-free when --guidance-scale != 1")
    p.add_argument("--classifier", default=None,
                   help="run directory of a classifier (refdiff train --objective classifier) for --guidance classifier")
    p.add_argument("--class", dest="label", type=_nonnegative_int, default=None,
                   help="class label for all samples (class-conditional runs; default: cycle through the classes)")
    p.add_argument("--seed", type=_nonnegative_int, default=0)
    p.add_argument("--backend", choices=("numpy", "cuda"), default=None, help="default: the run's backend")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--cuda-graph", action="store_true",
                   help="ddpm/ddim on the cuda backend: capture one step (network + fused update) into a CUDA graph "
                   "and replay it per step (diffusion.capture_sampler; needs cuTENSOR)")

    # ---- edit ----
    p = sub.add_parser(
        "edit",
        help="edit images with a trained run: img2img (SDEdit), inpainting (replace, RePaint), super-resolution",
        description="Edit images with the latest checkpoint of a run (EMA weights). img2img: noise --input to "
        "--strength and denoise (SDEdit); inpaint: keep --input where --mask is 1 (white) and fill in where it is 0 "
        "(black), by --method replace or repaint (RePaint's resampling); superres: upscale --input with a run "
        "trained with --superres. Inputs: .png (values 0..255 -> [-1, 1]) or .npz (its first array, (C, H, W) or "
        "(B, C, H, W) in [-1, 1]).",
    )
    p.add_argument("run", help="run directory (or a checkpoint step_*.json file)")
    p.add_argument("--mode", required=True, choices=("img2img", "inpaint", "superres"))
    p.add_argument("--input", required=True, help="image(s): .png or .npz")
    p.add_argument("--mask", default=None, help="inpaint: .png or .npz of 0 (fill in) and 1 (keep), the input's size")
    p.add_argument("--method", choices=("replace", "repaint"), default="repaint", help="inpaint method")
    p.add_argument("--jump-length", type=_positive_int, default=10, help="repaint: jump length j")
    p.add_argument("--jump-n-sample", type=_positive_int, default=10, help="repaint: resamplings r per jump point")
    p.add_argument("--strength", type=float, default=0.6, help="img2img: in [0, 1] (0: the input, 1: a fresh sample)")
    p.add_argument("--sampler", default="ddim", help="img2img and superres: a registered sampler (default ddim)")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="sampling steps (default 50; inpaint: all T)")
    p.add_argument("--eta", type=_probability, default=None, help="inpaint: the steps' eta (default 1: DDPM steps)")
    p.add_argument("--seed", type=_nonnegative_int, default=0)
    p.add_argument("--out", required=True, help="output: .png (input | mask | result) or .npz (result)")
    p.add_argument("--backend", choices=("numpy", "cuda"), default=None, help="default: the run's backend")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")

    # ---- eval ----
    p = sub.add_parser(
        "eval",
        help="bits/dim of a trained run on data: the variational bound and the probability-flow ODE",
        description="Bits per dimension of a trained diffusion run (EMA weights) on data in [-1, 1], rounded to the "
        "8-bit grid k / 127.5 - 1: bpd the variational bound with all T steps (rd.bits_per_dim, DDPM eq. 5); ode-bpd "
        "the probability-flow ODE likelihood with uniform dequantization in the same bins (rd.ode_bits_per_dim, "
        "Song et al. 2021 app. D). One line per metric.",
    )
    p.add_argument("run", help="run directory (or a checkpoint step_*.json file)")
    p.add_argument("--data", required=True, help="dataset, as for train (values must lie in [-1, 1])")
    p.add_argument("--metric", action="append", choices=("bpd", "ode-bpd"), default=None,
                   help="repeatable; default both")
    p.add_argument("--n", type=_positive_int, default=256, help="number of data points")
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--divergence", choices=("exact", "hutchinson"), default=None,
                   help="ode-bpd: the drift's divergence, exact (autograd, d backward passes) or Hutchinson's "
                   "estimate (one Rademacher probe); default exact up to 64 dimensions")
    p.add_argument("--rtol", type=_positive_float, default=1e-5, help="ode-bpd: the solver's relative tolerance")
    p.add_argument("--atol", type=_positive_float, default=1e-5, help="ode-bpd: the solver's absolute tolerance")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="data, x_t draws, dequantization and probes")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")

    # ---- demo ----
    p = sub.add_parser(
        "demo",
        help="train a small model on built-in data and write a picture (1-2 minutes on a CPU)",
        description="Train a small MLP diffusion model on the 2-D 'moons' data, sample it, write a picture "
        "and print the energy distance of the samples to held-out data beside the baselines.",
    )
    p.add_argument("--out", default="refdiff-demo", help="output directory (default: ./refdiff-demo)")
    p.add_argument("--data", default="moons", choices=("moons", "swissroll", "gaussians8", "checkerboard"))
    p.add_argument("--steps", type=_positive_int, default=3000, help="training steps")
    p.add_argument("--seed", type=_nonnegative_int, default=0)
    p.add_argument("--backend", choices=("numpy", "cuda"), default="numpy")
    p.add_argument("--quick", action="store_true", help="a few seconds: tiny run, for smoke tests")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    # ---- distill ----
    p = sub.add_parser(
        "distill",
        help="distill a trained diffusion run into a few-step sampler (progressive or consistency)",
        description="Distill the diffusion model of RUN (its EMA weights) on RUN's data. progressive (Salimans & Ho "
                    "2022): stages OUT/steps_N halve the DDIM steps from --from-steps to --to-steps; sample "
                    "OUT/steps_N. consistency (Song et al. 2023): one run in OUT; sample it with --steps 1 (or more).",
    )
    p.add_argument("run", help="the teacher: a run directory of `refdiff train` (objective diffusion, unconditional)")
    p.add_argument("--method", choices=("progressive", "consistency"), required=True)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--resume", action="store_true", help="continue what OUT holds (finished stages are kept)")
    p.add_argument("--from-steps", type=_positive_int, default=None, help="progressive: the teacher's DDIM steps (e.g. 64)")
    p.add_argument("--to-steps", type=_positive_int, default=None, help="progressive: the last student's steps (e.g. 1)")
    p.add_argument("--steps-per-stage", type=_positive_int, default=None, help="progressive: training steps per stage")
    p.add_argument("--steps", type=_positive_int, default=None, help="consistency: training steps in all")
    p.add_argument("--num-boundaries", type=_positive_int, default=18, help="consistency: N, the discretization (>= 2)")
    p.add_argument("--solver", choices=("heun", "euler"), default="heun", help="consistency: the teacher's ODE step")
    p.add_argument("--mu", type=_decay, default=0.95, help="consistency: the target network's EMA rate in [0, 1)")
    p.add_argument("--batch-size", type=_positive_int, default=None, help="default 256 for points, 64 for images")
    p.add_argument("--lr", type=_positive_float, default=None, help="AdamW learning rate (default 5e-4)")
    p.add_argument("--ema-decay", type=_decay, default=0.99, help="the sampling EMA's decay in [0, 1)")
    p.add_argument("--seed", type=_nonnegative_int, default=0)
    p.add_argument("--checkpoint-every", type=_nonnegative_int, default=1000, help="steps between checkpoints")
    p.add_argument("--backend", choices=("numpy", "cuda"), default=None, help="default: the teacher run's backend")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


# ---------------------------------------------------------------------------------------------
# commands


def _load_data(spec, n=None, seed=0, image_size=None):
    from .training.data import load_dataset

    try:
        return load_dataset(spec, n=n, seed=seed, image_size=image_size)
    except (ValueError, FileNotFoundError, OSError, KeyError, ImportError) as e:
        raise CLIError(f"--data {spec}: {_one_line(e)}") from None


def _make_model(args, dataset, shape=None):
    """The network for `dataset` from the command's options; shape: (C, H, W) of what it denoises
    when that is not the data's (the latents of latent diffusion). A learned variance (--variance-type
    learned, learned_range) gets 2C output channels."""
    learned_variance = (getattr(args, "variance_type", None) or "").startswith("learned")
    kind = getattr(dataset, "kind", "points")
    model = args.model
    if args.objective == "classifier":
        return _make_classifier(args, dataset)
    if model == "auto":
        model = "unet" if kind == "images" else "mlp"
    x = np.asarray(dataset.x)
    if shape is not None:
        x = np.empty((1, *shape), np.float32)
    num_classes = None
    if args.classes:
        if getattr(dataset, "y", None) is None or not getattr(dataset, "num_classes", 0):
            raise CLIError(f"--classes: dataset {args.data!r} has no class labels")
        num_classes = int(dataset.num_classes)
    if model == "mlp":
        if x.ndim != 2:
            raise CLIError(f"--model mlp needs points (N, D); dataset {args.data!r} has shape {x.shape}")
        from .models.mlp import MLPDenoiser

        try:
            return MLPDenoiser(dim=int(x.shape[1]), hidden=args.hidden, num_blocks=args.num_blocks,
                               num_classes=num_classes, backend=args.backend, seed=args.seed,
                               out_dim=2 * int(x.shape[1]) if learned_variance else None)
        except (ValueError, TypeError) as e:
            raise CLIError(f"bad MLP options: {e}") from None
    if x.ndim != 4:
        raise CLIError(f"--model unet needs images (N, C, H, W); dataset {args.data!r} has shape {x.shape}")
    from .models.unet import UNet

    C, H, W = x.shape[1:]
    if H != W:
        raise CLIError(f"--model unet needs square images, got {H}x{W}")
    levels = len(args.channel_mults)
    if H % (2 ** (levels - 1)):
        raise CLIError(f"image size {H} is not divisible by 2^{levels - 1} (--channel-mults {args.channel_mults})")
    factor = getattr(args, "superres", None)
    if factor is not None and (H % factor or factor < 2):
        raise CLIError(f"--superres {factor}: must be >= 2 and divide the image size {H}")
    try:
        return UNet(
            in_channels=int(C) * (2 if factor else 1),  # super-resolution: [x_t, up(x_low)]
            out_channels=int(C) * (2 if learned_variance else 1),  # a learned variance: [output, v]
            base_channels=args.base_channels,
            channel_mults=args.channel_mults,
            num_res_blocks=args.num_res_blocks,
            attention_resolutions=(),
            sample_size=int(H),
            num_classes=num_classes,
            norm_groups=min(8, args.base_channels),
            backend=args.backend,
            seed=args.seed,
        )
    except (ValueError, TypeError) as e:
        raise CLIError(f"bad U-Net options: {e}") from None


def _make_classifier(args, dataset):
    """The NoiseClassifier of `refdiff train --objective classifier` (the U-Net options size its encoder)."""
    x = np.asarray(dataset.x)
    if args.model == "mlp" or x.ndim != 4:
        raise CLIError(f"--objective classifier trains a U-Net encoder on images (N, C, H, W); dataset {args.data!r} "
                       f"has shape {x.shape}" + (" (--model mlp is not a classifier)" if args.model == "mlp" else ""))
    if getattr(dataset, "y", None) is None or not getattr(dataset, "num_classes", 0):
        raise CLIError(f"--objective classifier: dataset {args.data!r} has no class labels")
    if args.sample_every:
        raise CLIError("--sample-every: a classifier run draws no samples")
    C, H, W = x.shape[1:]
    if H != W or H % (2 ** (len(args.channel_mults) - 1)):
        raise CLIError(f"--objective classifier needs square images divisible by 2^{len(args.channel_mults) - 1}, got {H}x{W}")
    from .models.classifier import NoiseClassifier

    try:
        return NoiseClassifier(int(dataset.num_classes), in_channels=int(C), base_channels=args.base_channels,
                               channel_mults=args.channel_mults, num_res_blocks=args.num_res_blocks,
                               attention_resolutions=(), sample_size=int(H), norm_groups=min(8, args.base_channels),
                               backend=args.backend, seed=args.seed)
    except (ValueError, TypeError) as e:
        raise CLIError(f"bad classifier options: {e}") from None


def _make_schedule(name, T):
    from .gaussian.schedule import NoiseSchedule

    return getattr(NoiseSchedule, name)(T=T)


# each training objective's own options and their defaults
OBJECTIVE_OPTIONS = {
    "diffusion": {"T": 1000, "schedule": "linear", "prediction_type": "epsilon", "loss_weighting": "none",
                  "variance_type": "fixed_small", "vlb_weight": 0.001},
    "flow_matching": {"time_sampling": "uniform", "shift": 1.0},
    "classifier": {"T": 1000, "schedule": "linear"},
}


def _objective_options(args):
    """The options of args.objective with their defaults filled in; an option of the other
    objective given on the command line is an error (it would be ignored)."""
    own = OBJECTIVE_OPTIONS[args.objective]
    for objective, options in OBJECTIVE_OPTIONS.items():
        given = [name for name in options if getattr(args, name) is not None and name not in own]
        if objective != args.objective and given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise CLIError(f"{flags}: an option of --objective {objective}, not of --objective {args.objective}")
    return {name: default if getattr(args, name) is None else getattr(args, name)
            for name, default in OBJECTIVE_OPTIONS[args.objective].items()}

def cmd_train(args):
    """Train on one process, or data-parallel on N (mpiexec -n N refdiff train ...).

    With N processes the start-up (option checks, data, model, resume) runs on every rank and any
    rank's failure ends every rank with the same one-line message (DataParallel.agree); so do
    checkpoint and divergence errors during training. Anything else that one rank alone raises
    calls MPI_Abort, so that the other ranks do not wait forever.
    """
    from .training.distributed import data_parallel

    try:
        parallel = data_parallel(args.parallel, backend=args.backend)
    except (ImportError, ValueError) as e:
        raise CLIError(f"--parallel {args.parallel}: {_one_line(e)}") from None
    if parallel is None:
        return _train(args, None)
    from .io.checkpoint import CheckpointError, CheckpointWriteError
    from .training.distributed import DistributedError

    try:
        return _train(args, parallel)
    except (CLIError, CheckpointError, CheckpointWriteError, DistributedError):
        raise  # raised on every rank alike: each exits with the one line
    except BaseException:
        import traceback

        # one write, then a moment for mpiexec to forward it before the abort kills the processes
        sys.stderr.write(f"{traceback.format_exc()}refdiff train: rank {parallel.rank} failed alone: "
                         f"aborting all {parallel.world_size} processes\n")
        sys.stderr.flush()
        time.sleep(0.5)
        parallel.comm.Abort(1)


def _new_run_dataset(args, ckpt_dir):
    """The --data of a new run (CLIError when it is missing or --out already holds a run)."""
    from .io.checkpoint import latest_checkpoint

    if args.data is None:
        raise CLIError("--data is required (unless --resume)")
    if latest_checkpoint(ckpt_dir) is not None:
        raise CLIError(f"--out {args.out} already holds a run: pass --resume to continue it or choose another --out")
    return _load_data(args.data, n=args.n, seed=args.seed, image_size=args.image_size)


def _start_training(args, parallel):
    """The Trainer of `refdiff train`: a new run or a resumed one (CLIError for user errors)."""
    from .io.checkpoint import latest_checkpoint
    from .diffusion import GaussianDiffusion
    from .training.trainer import Trainer

    _check_out(args)
    _check_backend(args.backend)
    ckpt_dir = os.path.join(args.out, "checkpoints")
    if args.resume:
        if latest_checkpoint(ckpt_dir) is None:
            raise CLIError(f"--resume: no checkpoint in {ckpt_dir}")
        if args.latent is not None:
            raise CLIError("--latent: a resumed run takes its autoencoder from its own checkpoint; leave --latent out")
        try:
            trainer = Trainer.resume(args.out, backend=args.backend, progress=not args.no_progress, parallel=parallel,
                                     sample_every=args.sample_every, checkpoint_every=args.checkpoint_every,
                                     checkpoint_minutes=args.checkpoint_minutes,
                                     sample_n=args.sample_n, sample_steps=args.sample_steps)
        except (ValueError, OSError, KeyError, ImportError) as e:  # CheckpointError is a ValueError
            raise CLIError(f"--resume {args.out}: {_one_line(e)}") from None
        if trainer.diffusion.objective == "autoencoder":
            raise CLIError(f"--resume {args.out}: an autoencoder run: continue it with refdiff train-autoencoder --resume")
    else:
        dataset = _new_run_dataset(args, ckpt_dir)
        if args.superres is not None and (args.objective != "diffusion" or np.asarray(dataset.x).ndim != 4
                                          or args.model == "mlp" or args.classes or args.latent is not None):
            raise CLIError("--superres needs --objective diffusion on images with the U-Net, without --classes "
                           "or --latent")
        is_images = np.asarray(dataset.x).ndim == 4
        options = _objective_options(args)
        if args.latent is not None:
            diffusion = _latent_diffusion(args, dataset, options,
                                          say=print if parallel is None or parallel.is_main else lambda *a: None)
        elif args.objective == "flow_matching":
            model = _make_model(args, dataset)
            from .flow_matching import FlowMatching

            diffusion = FlowMatching(model, time_sampling=options["time_sampling"], shift=options["shift"])
        elif args.objective == "classifier":
            model = _make_model(args, dataset)
            from .training.classifier import NoisyClassification

            diffusion = NoisyClassification(model, _make_schedule(options["schedule"], options["T"]))
        else:
            model = _make_model(args, dataset)
            diffusion = GaussianDiffusion(model, _make_schedule(options["schedule"], options["T"]),
                                          prediction_type=options["prediction_type"],
                                          loss_weighting=options["loss_weighting"], superres_factor=args.superres,
                                          variance_type=options["variance_type"], vlb_weight=options["vlb_weight"])
        data_info = {"spec": args.data, "n": args.n, "seed": args.seed, "image_size": args.image_size,
                     "kind": getattr(dataset, "kind", None), "num_classes": getattr(dataset, "num_classes", None)}
        try:
            trainer = Trainer(
                diffusion,
                dataset,
                out_dir=args.out,
                data_info=data_info,
                progress=not args.no_progress,
                parallel=parallel,
                batch_size=args.batch_size or (64 if is_images else 256),
                lr=args.lr or (1e-3 if is_images else 2e-3),
                weight_decay=args.weight_decay,
                warmup_steps=args.warmup_steps,
                grad_clip=args.grad_clip,
                ema_decay=args.ema_decay,
                seed=args.seed,
                cond_drop_prob=0.0 if args.objective == "classifier" else args.cond_drop_prob,
                sample_every=args.sample_every,
                sample_n=args.sample_n,
                sample_steps=args.sample_steps,
                checkpoint_every=args.checkpoint_every,
                checkpoint_minutes=args.checkpoint_minutes,
            )
        except (ValueError, TypeError) as e:
            raise CLIError(_one_line(e)) from None
    return trainer


def _latent_diffusion(args, dataset, options, say=print):
    """The LatentDiffusion of `refdiff train --latent AE_RUN`: the autoencoder (a refdiff run or a
    diffusers folder), a U-Net for its latents, and the scaling factor (the diffusers config's, or
    1 / std of the latents of the first SCALE_SAMPLES training images, LDM sec. 4.3.2)."""
    from .io.checkpoint import CheckpointError
    from .latent import SCALE_SAMPLES, LatentDiffusion, measure_scaling_factor
    from .training.trainer import load_autoencoder

    if args.objective != "diffusion":
        raise CLIError(f"--latent: latent diffusion trains --objective diffusion, not {args.objective}")
    if args.model == "mlp":
        raise CLIError("--latent: the latents are images: use --model unet (or auto)")
    try:
        vae, record = load_autoencoder(args.latent, backend=args.backend)
    except (FileNotFoundError, CheckpointError) as e:
        raise CLIError(f"--latent {args.latent}: {_one_line(e)}") from None
    except (ValueError, OSError) as e:  # a diffusers folder refdiff cannot read
        raise CLIError(f"--latent {args.latent}: {_one_line(e)}") from None
    x = np.asarray(dataset.x)
    c = vae.config
    if x.ndim != 4:
        raise CLIError(f"--latent: the autoencoder needs images (N, C, H, W); dataset {args.data!r} has shape {x.shape}")
    if x.shape[1] != c["in_channels"]:
        raise CLIError(f"--latent {args.latent}: channel counts do not match: the autoencoder takes "
                       f"in_channels={c['in_channels']}, the --data images have {x.shape[1]} channels")
    f = 2 ** (len(c["block_out_channels"]) - 1)
    if x.shape[2] % f or x.shape[3] % f:
        raise CLIError(f"--latent {args.latent}: the autoencoder shrinks each side {f}x; the images are "
                       f"{x.shape[2]}x{x.shape[3]}")
    model = _make_model(args, dataset, shape=(c["latent_channels"], x.shape[2] // f, x.shape[3] // f))
    scaling_factor = record.pop("scaling_factor")
    if scaling_factor is None:  # a refdiff autoencoder: LDM's 1 / std of the latents of the first batch
        try:
            scaling_factor = measure_scaling_factor(vae, x[:SCALE_SAMPLES], np.random.default_rng(args.seed))
        except ValueError as e:
            raise CLIError(f"--latent {args.latent}: {_one_line(e)}") from None
        record["scaling_factor_measured_on"] = int(min(len(x), SCALE_SAMPLES))
    say(f"latent diffusion: latents {c['latent_channels']}x{x.shape[2] // f}x{x.shape[3] // f} of {args.latent} "
          f"({record['kind']}), scaling factor {scaling_factor:.5g}"
          + (f" (1 / std of the latents of {record['scaling_factor_measured_on']} images)"
             if "scaling_factor_measured_on" in record else " (from its config)"))
    try:
        return LatentDiffusion(model, _make_schedule(options["schedule"], options["T"]), vae, scaling_factor,
                               prediction_type=options["prediction_type"], loss_weighting=options["loss_weighting"],
                               variance_type=options["variance_type"], vlb_weight=options["vlb_weight"], source=record)
    except ValueError as e:
        raise CLIError(f"--latent {args.latent}: {_one_line(e)}") from None


def cmd_train_autoencoder(args):
    """Train an AutoencoderKL with the Trainer (AutoencoderTraining); write reconstructions and their PSNR."""
    from .io.checkpoint import latest_checkpoint
    from .io.images import save_image_grid
    from .models.autoencoder import AutoencoderKL
    from .training.autoencoder import AutoencoderTraining
    from .training.metrics import psnr
    from .training.trainer import Trainer

    ckpt_dir = os.path.join(args.out, "checkpoints")
    if args.resume:
        if latest_checkpoint(ckpt_dir) is None:
            raise CLIError(f"--resume: no checkpoint in {ckpt_dir}")
        try:
            trainer = Trainer.resume(args.out, backend=args.backend, progress=not args.no_progress, parallel=None,
                                     checkpoint_every=args.checkpoint_every, checkpoint_minutes=args.checkpoint_minutes)
        except (ValueError, OSError, KeyError, ImportError) as e:  # CheckpointError is a ValueError
            raise CLIError(f"--resume {args.out}: {_one_line(e)}") from None
        if trainer.diffusion.objective != "autoencoder":
            raise CLIError(f"--resume {args.out}: a {trainer.diffusion.objective} run, not an autoencoder run")
        print(f"resuming {args.out} at step {trainer.step}")
    else:
        dataset = _new_run_dataset(args, ckpt_dir)
        x = np.asarray(dataset.x)
        if x.ndim != 4:
            raise CLIError(f"--data {args.data}: the autoencoder needs images (N, C, H, W), got shape {x.shape}")
        f = 2 ** (len(args.block_channels) - 1)
        if x.shape[2] % f or x.shape[3] % f:
            raise CLIError(f"--block-channels {','.join(map(str, args.block_channels))}: {len(args.block_channels)} "
                           f"levels shrink each side {f}x; the images are {x.shape[2]}x{x.shape[3]}")
        try:
            vae = AutoencoderKL(in_channels=int(x.shape[1]), block_out_channels=args.block_channels,
                                layers_per_block=args.layers_per_block, latent_channels=args.latent_channels,
                                norm_num_groups=args.norm_groups, sample_size=int(x.shape[2]), backend=args.backend,
                                seed=args.seed)
            trainer = Trainer(AutoencoderTraining(vae, kl_weight=args.kl_weight, reconstruction=args.reconstruction),
                              dataset, out_dir=args.out, progress=not args.no_progress, parallel=None,
                              data_info={"spec": args.data, "n": args.n, "seed": args.seed, "image_size": args.image_size,
                                         "kind": "images", "shape": list(x.shape[1:])},
                              batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
                              grad_clip=args.grad_clip, ema_decay=args.ema_decay, seed=args.seed,
                              checkpoint_every=args.checkpoint_every, checkpoint_minutes=args.checkpoint_minutes)
        except (ValueError, TypeError) as e:
            raise CLIError(_one_line(e)) from None
    trained = _train_to_steps(trainer, args, ckpt_dir)
    if trained is None:
        return 0
    remaining, losses, seconds = trained
    x = trainer.x[:32]
    with trainer.ema_weights():
        x_hat = trainer.diffusion.reconstruct(x)
    picture = save_image_grid(np.concatenate([x, x_hat]), os.path.join(args.out, "reconstructions.png"), nrow=8)
    with open(os.path.join(args.out, "losses.json"), "w") as f:
        json.dump(trainer.losses, f)
    print(f"trained {remaining} steps in {seconds:.1f} s ({remaining / seconds:.1f} steps/s), "
          f"final loss (mean of last 100) {np.mean(losses[-100:]):.4f}")
    print(f"reconstruction PSNR (EMA weights, the first {len(x)} training images): {np.mean(psnr(x, x_hat)):.2f} dB")
    print(f"checkpoint: {latest_checkpoint(ckpt_dir)}")
    print(f"images (top) and reconstructions (bottom): {picture}")
    print(f"next: refdiff train --latent {args.out} --data {(trainer.data_info or {}).get('spec')} --steps N --out RUN")
    return 0


def _train_to_steps(trainer, args, ckpt_dir, say=print):
    """Train up to step --steps: (steps trained, their losses, seconds), or None when the run is there."""
    remaining = args.steps - trainer.step
    if remaining <= 0:
        say(f"{args.out} is already at step {trainer.step} >= --steps {args.steps}: nothing to do")
        return None
    t0 = time.perf_counter()
    try:
        losses = trainer.train(remaining)
    except FloatingPointError as e:  # diverged (on every rank at once): the last checkpoint is kept
        raise CLIError(f"{e}; the latest checkpoint in {ckpt_dir} is kept (try a lower --lr)") from None
    return remaining, losses, time.perf_counter() - t0


def _train(args, parallel):
    from .io.checkpoint import latest_checkpoint

    if parallel is None:
        trainer = _start_training(args, None)
    else:  # every rank starts; a failure on any rank ends all of them with its message
        trainer = parallel.agree(_start_training, args, parallel, extra_classes=(CLIError,))
    main = parallel is None or parallel.is_main
    say = print if main else (lambda *a, **k: None)  # rank 0 alone prints
    ckpt_dir = os.path.join(args.out, "checkpoints")
    if args.resume:
        say(f"resuming {args.out} at step {trainer.step}")
    if parallel is not None:
        say(f"data-parallel: {parallel.world_size} processes, {trainer.config.batch_size // parallel.world_size} "
            f"samples each of the global batch {trainer.config.batch_size}")
    trained = _train_to_steps(trainer, args, ckpt_dir, say)
    if trained is None:
        return 0
    remaining, losses, seconds = trained
    picture = None if trainer.diffusion.objective == "classifier" else trainer.save_samples()
    if main:
        with open(os.path.join(args.out, "losses.json"), "w") as f:
            json.dump(trainer.losses, f)
    say(f"trained {remaining} steps in {seconds:.1f} s ({remaining / seconds:.1f} steps/s), "
        f"final loss (mean of last 100) {np.mean(losses[-100:]):.4f}")
    say(f"checkpoint: {latest_checkpoint(ckpt_dir)}")
    if picture is not None:
        say(f"samples:    {picture}")
    return 0


def cmd_sample(args):
    from .backend import BackendUnavailable
    from .io.checkpoint import CheckpointError
    from .io.images import save_image_grid, save_scatter
    from .training.trainer import load_diffusion

    ext = os.path.splitext(args.out)[1].lower()
    if ext not in (".png", ".npz"):
        raise CLIError(f"--out {args.out}: the file name must end in .png or .npz")
    from .pipeline import is_pipeline_folder

    if is_pipeline_folder(args.run):
        return cmd_sample_pipeline(args, ext)
    try:
        diffusion, meta = load_diffusion(args.run, backend=args.backend, ema=not args.no_ema)
    except CheckpointError as e:
        raise CLIError(str(e)) from None
    if diffusion.objective == "classifier":
        raise CLIError(f"{args.run} is a classifier run: sample a diffusion run, with --guidance classifier "
                       f"--classifier {args.run}")
    if diffusion.objective == "autoencoder":
        raise CLIError(f"{args.run} is an autoencoder run: it draws no samples; train a latent diffusion model on it "
                       f"(refdiff train --latent {args.run} ...)")
    classifier = _load_classifier(args, diffusion)
    num_classes = diffusion.num_classes if classifier is None else classifier.num_classes
    y = None
    if num_classes is not None:
        if args.label is not None:
            if args.label >= num_classes:
                owner = "model" if classifier is None else "classifier"
                raise CLIError(f"--class {args.label}: the {owner} has classes 0..{num_classes - 1}")
            y = np.full(args.n, args.label, dtype=np.int64)
        else:
            y = np.arange(args.n, dtype=np.int64) % num_classes
    elif args.label is not None or args.guidance_scale != 1.0:
        raise CLIError("--class and --guidance-scale need a class-conditional run (train with --classes) "
                       "or --guidance classifier")
    if args.steps is not None and args.steps > diffusion.T:
        raise CLIError(f"--steps {args.steps} exceeds the T={diffusion.T} steps of the model")
    from .samplers import SAMPLERS

    if args.sampler is None:  # each objective's own sampler
        args.sampler = DEFAULT_SAMPLERS.get(diffusion.objective, "ddpm")
    if args.sampler not in SAMPLERS:
        raise CLIError(f"--sampler {args.sampler!r}: choose from {sorted(SAMPLERS)}")
    options = dict(args.options)
    if args.eta is not None:
        options["eta"] = args.eta
    if args.clipped_eps:
        options["use_clipped_model_output"] = True
    steps = args.steps
    if steps is None and diffusion.objective == "consistency_distillation" and not isinstance(args.sigmas, list):
        steps = 1  # a consistency model's one step (Algorithm 1)
    if diffusion.objective == "progressive_distillation" and args.sampler == "ddim":
        steps = steps or diffusion.student_steps  # the student's own grid, as trained
        args.spacing = args.spacing or "trailing"
    if steps is None and args.sampler not in ("ddpm", "ddim") and not isinstance(args.sigmas, list):
        raise CLIError(f"--sampler {args.sampler} needs --steps (or an explicit --sigmas grid)")
    if args.cuda_graph:
        _check_cuda_graph(args, diffusion, options)
    t0 = time.perf_counter()
    try:
        if args.cuda_graph:
            captured = diffusion.capture_sampler(args.n, sampler=args.sampler, steps=steps, eta=options.get("eta", 0.0),
                                                 y=y, spacing=args.spacing or "leading")
            x = captured.sample(seed=args.seed)
        else:
            x = diffusion.sample(args.n, sampler=args.sampler, steps=steps, y=y, guidance=args.guidance,
                                 classifier=classifier, guidance_scale=args.guidance_scale, seed=args.seed,
                                 spacing=args.spacing, sigmas=args.sigmas, progress=not args.no_progress, **options)
    except (ValueError, TypeError, BackendUnavailable) as e:  # a bad option or grid, no cuTENSOR: one line, exit 2
        raise CLIError(str(e).splitlines()[0]) from None
    seconds = time.perf_counter() - t0
    shape = (meta.get("data") or {}).get("shape")  # images flattened for an MLP: draw them as images
    if x.ndim == 2 and shape and len(shape) == 3 and int(np.prod(shape)) == x.shape[1]:
        x = x.reshape((len(x), *shape))
    if ext == ".npz":
        parent = os.path.dirname(os.path.abspath(args.out))
        os.makedirs(parent, exist_ok=True)
        np.savez(args.out, samples=x, **({} if y is None else {"labels": y}))
    elif x.ndim == 4:
        save_image_grid(x, args.out, nrow=num_classes if (y is not None and args.label is None) else None)
    elif x.ndim == 2 and x.shape[1] == 2:
        save_scatter(x, args.out)
    else:
        raise CLIError(f"samples of shape {x.shape[1:]} cannot be drawn as a .png: use --out FILE.npz")
    n_steps = steps or (len(args.sigmas) - 1 if isinstance(args.sigmas, list) else diffusion.T)
    print(f"{args.n} samples ({args.sampler}, {n_steps} steps) in {seconds:.1f} s -> {args.out}")
    return 0


def _read_images(path, what):
    """Images from a .png (grey or RGB, 0..255 -> [-1, 1]) or a .npz (its first array): (B, C, H, W) float32."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".png", ".npz"):
        raise CLIError(f"{what} {path}: the file name must end in .png or .npz")
    if not os.path.isfile(path):
        raise CLIError(f"{what} {path}: no such file")
    try:
        if ext == ".png":
            from PIL import Image

            with Image.open(path) as im:
                a = np.asarray(im.convert("L") if im.mode in ("L", "1", "P", "LA") else im.convert("RGB"))
            a = a.astype(np.float32) / 127.5 - 1
            a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        else:
            with np.load(path) as f:
                if not f.files:
                    raise CLIError(f"{what} {path}: the .npz holds no array")
                a = np.asarray(f[f.files[0]], dtype=np.float32)
    except (OSError, ValueError) as e:
        raise CLIError(f"{what} {path}: cannot read it: {_one_line(e)}") from None
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4:
        raise CLIError(f"{what} {path}: expected (C, H, W) or (B, C, H, W) images, got shape {a.shape}")
    return a


def cmd_edit(args):
    """img2img, inpainting or super-resolution with a trained run; writes input | (mask) | result."""
    from .io.checkpoint import CheckpointError
    from .io.images import save_image_grid
    from .samplers import SAMPLERS
    from .training.trainer import load_diffusion

    ext = os.path.splitext(args.out)[1].lower()
    if ext not in (".png", ".npz"):
        raise CLIError(f"--out {args.out}: the file name must end in .png or .npz")
    if args.sampler not in SAMPLERS:
        raise CLIError(f"--sampler {args.sampler!r}: choose from {sorted(SAMPLERS)}")
    if not 0.0 <= args.strength <= 1.0:
        raise CLIError(f"--strength {args.strength}: must be in [0, 1]")
    if (args.mask is not None) != (args.mode == "inpaint"):
        raise CLIError("--mask is needed with --mode inpaint, and only there")
    x = _read_images(args.input, "--input")
    try:
        diffusion, _ = load_diffusion(args.run, backend=args.backend, ema=not args.no_ema)
    except CheckpointError as e:
        raise CLIError(str(e)) from None
    if diffusion.objective != "diffusion":
        raise CLIError(f"refdiff edit needs a diffusion run; {args.run} is a {diffusion.objective} run")
    config = getattr(diffusion.model, "config", None) or {}
    if "in_channels" not in config:
        raise CLIError(f"refdiff edit needs an image (U-Net) run; {args.run} is not one")
    factor = diffusion.superres_factor
    if (args.mode == "superres") != (factor is not None):
        raise CLIError(f"--mode {args.mode}: " + ("the run is not a super-resolution run (train with --superres)"
                                                  if factor is None else "a super-resolution run only does --mode superres"))
    C_out = config.get("out_channels") or config["in_channels"]
    size = config.get("sample_size")
    if x.shape[1] != C_out:
        raise CLIError(f"--input {args.input}: {x.shape[1]} channels, the model's images have {C_out}")
    want = size // factor if factor and size else size
    if want and x.shape[2:] != (want, want):
        raise CLIError(f"--input {args.input}: {x.shape[2]}x{x.shape[3]} images, the model takes {want}x{want}")
    if args.steps is not None and args.steps > diffusion.T:
        raise CLIError(f"--steps {args.steps} exceeds the T={diffusion.T} steps of the model")
    t0 = time.perf_counter()
    panels, mask = [x if factor is None else np.repeat(np.repeat(x, factor, 2), factor, 3)], None
    try:
        if args.mode == "img2img":
            out = diffusion.img2img(x, args.strength, sampler=args.sampler, steps=args.steps or 50, seed=args.seed)
        elif args.mode == "superres":
            out = diffusion.superres(x, sampler=args.sampler, steps=args.steps or 50, seed=args.seed)
        else:
            mask = _read_images(args.mask, "--mask")
            if args.mask.lower().endswith(".png"):
                mask = (mask + 1) / 2  # the picture's white (255 -> 1) and black (0 -> 0); grey is refused
            from .checks import check_inpaint_mask

            mask = check_inpaint_mask(mask[0] if len(mask) == 1 else mask, x).astype(np.float32)
            out = diffusion.inpaint(x, mask, method=args.method, steps=args.steps, jump_length=args.jump_length,
                                    jump_n_sample=args.jump_n_sample, eta=1.0 if args.eta is None else args.eta,
                                    seed=args.seed)
            panels.append(np.broadcast_to(mask * 2 - 1, x.shape))
    except (ValueError, TypeError) as e:
        raise CLIError(f"--mode {args.mode}: {_one_line(e)}") from None
    seconds = time.perf_counter() - t0
    if ext == ".npz":
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        np.savez(args.out, edited=out, **({} if mask is None else {"mask": mask}))
    else:
        panels.append(out)
        save_image_grid(np.concatenate(panels), args.out, nrow=len(x))
    print(f"{args.mode}: {len(x)} image(s) in {seconds:.1f} s -> {args.out}")
    return 0


def _check_cuda_graph(args, diffusion, options):
    """--cuda-graph: what diffusion.capture_sampler can capture, or one line and exit 2."""
    if getattr(diffusion.backend, "name", "numpy") != "cuda":
        raise CLIError("--cuda-graph needs the cuda backend (--backend cuda): CUDA graphs are captured on a GPU")
    if not hasattr(diffusion, "capture_sampler") or args.sampler not in ("ddpm", "ddim"):
        raise CLIError(f"--cuda-graph captures the ddpm and ddim samplers of a diffusion run, not {args.sampler!r}")
    extra = sorted(set(options) - {"eta"})
    if extra or args.guidance_scale != 1.0 or args.guidance is not None or args.sigmas is not None:
        raise CLIError("--cuda-graph takes --steps, --eta, --spacing, --class and --seed only "
                       "(not --guidance, --guidance-scale, --sigmas, --clipped-eps or --option)")


def cmd_sample_pipeline(args, ext):
    """refdiff sample on a diffusers pipeline folder (refdiff.pipeline): its own scheduler unless --sampler."""
    from .io.images import save_image_grid
    from .pipeline import load_pipeline
    from .samplers import SAMPLERS

    given = (("--class", args.label is not None), ("--guidance-scale", args.guidance_scale != 1.0),
             ("--no-ema", args.no_ema))
    refused = [flag for flag, is_given in given if is_given]
    if refused:
        raise CLIError(f"{', '.join(refused)}: not for a diffusers pipeline folder (unconditional, one set of weights)")
    if args.sampler is not None and args.sampler not in SAMPLERS:
        raise CLIError(f"--sampler {args.sampler!r}: choose from {sorted(SAMPLERS)}")
    try:
        pipe = load_pipeline(args.run, backend=args.backend or "numpy")
    except (OSError, ValueError, TypeError) as e:  # a missing file, a part or key refdiff cannot run
        raise CLIError(str(e)) from None
    options = dict(args.options)
    for name, value in (("eta", args.eta), ("spacing", args.spacing), ("sigmas", args.sigmas)):
        if value is not None:
            options[name] = value
    if args.clipped_eps:
        options["use_clipped_model_output"] = True
    sampler = args.sampler or pipe.sampler
    if args.steps is not None and args.steps > pipe.scheduler.schedule.T:
        raise CLIError(f"--steps {args.steps} exceeds the T={pipe.scheduler.schedule.T} steps of the scheduler")
    t0 = time.perf_counter()
    try:
        x = pipe(args.n, steps=args.steps, seed=args.seed, sampler=sampler, **options)
    except (ValueError, TypeError, FloatingPointError) as e:  # a bad option or grid: one line, exit 2
        raise CLIError(str(e).splitlines()[0]) from None
    seconds = time.perf_counter() - t0
    if ext == ".npz":
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        np.savez(args.out, samples=x)
    else:
        save_image_grid(x, args.out)
    steps = args.steps or pipe.steps_for(sampler) or pipe.scheduler.schedule.T
    print(f"{args.n} samples ({pipe.class_name}, {sampler}, {steps} steps) in {seconds:.1f} s -> {args.out}")
    return 0


def _load_classifier(args, diffusion):
    """The NoiseClassifier of --classifier for --guidance classifier (None without it); CLIError when one
    is given without the other, when the run is not a classifier, or trained on another schedule."""
    from .io.checkpoint import CheckpointError
    from .training.trainer import load_diffusion

    if args.guidance != "classifier":
        if args.classifier is not None:
            raise CLIError("--classifier is only read with --guidance classifier")
        return None
    if args.classifier is None:
        raise CLIError("--guidance classifier needs --classifier RUN (refdiff train --objective classifier)")
    try:
        objective, _ = load_diffusion(args.classifier, backend=args.backend, ema=not args.no_ema)
    except (CheckpointError, OSError) as e:
        raise CLIError(f"--classifier {args.classifier}: {_one_line(e)}") from None
    if objective.objective != "classifier":
        raise CLIError(f"--classifier {args.classifier}: not a classifier run (its objective is {objective.objective!r})")
    betas = getattr(getattr(diffusion, "schedule", None), "betas", None)
    if betas is None or not np.array_equal(np.asarray(objective.schedule.betas), np.asarray(betas)):
        raise CLIError(f"--classifier {args.classifier}: trained on another noise schedule than {args.run}")
    return objective.model


DEFAULT_SAMPLERS = {"flow_matching": "flow_euler", "progressive_distillation": "ddim",
                    "consistency_distillation": "consistency"}


def cmd_distill(args):
    """Progressive or consistency distillation of a trained run (refdiff.training.distill)."""
    from .io.checkpoint import CheckpointError
    from .training import distill
    from .training.trainer import load_diffusion

    _check_backend(args.backend)
    if args.method == "progressive":
        missing = [f for f in ("from_steps", "to_steps", "steps_per_stage") if getattr(args, f) is None]
        wrong = [f for f in ("steps",) if getattr(args, f) is not None]
    else:
        missing = [f for f in ("steps",) if getattr(args, f) is None]
        wrong = [f for f in ("from_steps", "to_steps", "steps_per_stage") if getattr(args, f) is not None]
    if missing:
        raise CLIError(f"--method {args.method} needs {', '.join('--' + f.replace('_', '-') for f in missing)}")
    if wrong:
        raise CLIError(f"{', '.join('--' + f.replace('_', '-') for f in wrong)}: not an option of --method {args.method}")
    try:
        teacher, meta = load_diffusion(args.run, backend=args.backend)
    except CheckpointError as e:
        raise CLIError(str(e)) from None
    if teacher.objective != "diffusion":
        raise CLIError(f"{args.run}: the teacher must be a diffusion run (objective diffusion), not {teacher.objective}")
    data_info = dict(meta.get("data") or {})
    if not isinstance(data_info.get("spec"), str):
        raise CLIError(f"{args.run}: the run names no data spec to distill on")
    dataset = _load_data(data_info["spec"], n=data_info.get("n"), seed=data_info.get("seed") or 0,
                         image_size=data_info.get("image_size"))
    is_images = np.asarray(dataset.x).ndim == 4
    options = dict(batch_size=args.batch_size or (64 if is_images else 256), lr=args.lr or 5e-4,
                   ema_decay=args.ema_decay, seed=args.seed, checkpoint_every=args.checkpoint_every,
                   data_info=data_info)
    run_dir = args.out if args.method == "consistency" else None
    if not args.resume and _holds_run(args.out):
        raise CLIError(f"--out {args.out} already holds a distillation: pass --resume to continue it or choose another --out")
    t0 = time.perf_counter()
    try:
        if args.method == "progressive":
            if args.to_steps >= args.from_steps or args.from_steps % args.to_steps:
                raise CLIError(f"--from-steps {args.from_steps} must be --to-steps {args.to_steps} times a power of 2")
            ratio = args.from_steps // args.to_steps
            if ratio & (ratio - 1):
                raise CLIError(f"--from-steps {args.from_steps} must be --to-steps {args.to_steps} times a power of 2")
            if args.from_steps > teacher.T:
                raise CLIError(f"--from-steps {args.from_steps} exceeds the T={teacher.T} steps of the teacher")
            students = distill.progressive_distillation(teacher, dataset, args.from_steps, args.to_steps,
                                                        args.steps_per_stage, out_dir=args.out,
                                                        progress=not args.no_progress, resume=args.resume, **options)
            run_dir = os.path.join(args.out, f"steps_{students[-1].student_steps}")
        else:
            distill.consistency_distillation(teacher, dataset, args.steps, out_dir=args.out,
                                             progress=not args.no_progress, resume=args.resume,
                                             num_boundaries=args.num_boundaries, solver=args.solver, mu=args.mu,
                                             **options)
    except FloatingPointError as e:
        raise CLIError(f"{e}; the latest checkpoint in {args.out} is kept (try a lower --lr)") from None
    except (ValueError, TypeError) as e:  # a bad option the library refused (CheckpointError included)
        raise CLIError(_one_line(e)) from None
    print(f"distilled ({args.method}) in {time.perf_counter() - t0:.1f} s -> {run_dir}")
    print(f"sample it: refdiff sample {run_dir} --out samples.png")
    return 0


def _holds_run(out):
    """Whether OUT holds a run (OUT/checkpoints) or progressive stages (OUT/steps_N/checkpoints)."""
    from .io.checkpoint import latest_checkpoint

    if not os.path.isdir(out):
        return False
    dirs = [out] + [os.path.join(out, d) for d in os.listdir(out) if d.startswith("steps_")]
    return any(latest_checkpoint(os.path.join(d, "checkpoints")) is not None for d in dirs)


def cmd_eval(args):
    """Bits/dim of a run on data: the bound and/or the probability-flow ODE, one line each."""
    from .gaussian.likelihood import bits_per_dim
    from .gaussian.ode_likelihood import ode_bits_per_dim
    from .io.checkpoint import CheckpointError
    from .training.trainer import load_diffusion

    try:
        diffusion, meta = load_diffusion(args.run, backend="numpy", ema=not args.no_ema)
    except CheckpointError as e:
        raise CLIError(str(e)) from None
    if diffusion.objective != "diffusion":
        raise CLIError(f"refdiff eval needs a diffusion run; {args.run} is a {diffusion.objective} run")
    x = np.asarray(_load_data(args.data, n=args.n, seed=args.seed).x, dtype=np.float64)
    x = np.round((x + 1) * 127.5) / 127.5 - 1  # the 8-bit grid both metrics count in
    if float(x.min()) < -1 or float(x.max()) > 1:
        raise CLIError(f"--data {args.data}: values in [{x.min():.3g}, {x.max():.3g}]; both metrics need data in [-1, 1]")
    shape = (meta.get("data") or {}).get("shape")
    if x.ndim == 4 and shape and len(shape) == 1:  # images trained flattened (an MLP)
        x = x.reshape(len(x), -1)
    if hasattr(diffusion.model, "eval"):
        diffusion.model.eval()
    d = int(np.prod(x.shape[1:]))
    divergence = args.divergence or ("exact" if d <= 64 else "hutchinson")
    for metric in args.metric or ["bpd", "ode-bpd"]:
        t0 = time.perf_counter()
        rng = np.random.default_rng(args.seed)
        try:
            if metric == "bpd":
                value = bits_per_dim(diffusion.model_function(), x, diffusion.schedule, batch_size=args.batch_size,
                                     rng=rng, prediction_type=diffusion.prediction_type,
                                     variance_type=diffusion.variance_type)
                how = f"variational bound, {diffusion.T} steps"
            else:
                value = ode_bits_per_dim(diffusion.model_function(variance=False), x, diffusion.schedule, batch_size=args.batch_size,
                                         rng=rng, prediction_type=diffusion.prediction_type, divergence=divergence,
                                         model_trace=diffusion.model_trace, rtol=args.rtol, atol=args.atol)
                how = f"probability-flow ODE, {divergence} divergence, rtol={args.rtol:g} atol={args.atol:g}"
        except ValueError as e:
            raise CLIError(_one_line(e)) from None
        seconds = time.perf_counter() - t0
        print(f"{metric}: {value:.4f} bits/dim ({value * d * math.log(2):.3f} nats per sample; {how}; "
              f"{len(x)} points, {seconds:.1f} s)")
    return 0


def cmd_demo(args):
    """Train the MLP on a 2-D toy, sample, draw, and compare the energy distance with baselines."""
    from .training.data import load_dataset
    from .diffusion import GaussianDiffusion
    from .io.images import save_scatter
    from .training.metrics import energy_distance
    from .models.mlp import MLPDenoiser
    from .gaussian.schedule import NoiseSchedule
    from .training.trainer import Trainer

    steps = 100 if args.quick else args.steps
    n_eval = 200 if args.quick else 2000
    t_start = time.perf_counter()
    train = load_dataset(args.data, n=2000 if args.quick else 10000, seed=args.seed)
    held_out = load_dataset(args.data, n=n_eval, seed=args.seed + 1).x
    reference = load_dataset(args.data, n=n_eval, seed=args.seed + 2).x
    model = MLPDenoiser(dim=2, hidden=128, num_blocks=3, backend=args.backend, seed=args.seed)
    diffusion = GaussianDiffusion(model, NoiseSchedule.linear(T=DEMO_T))
    # the quick run samples with 20 DDIM steps; the real one with all DDPM steps
    sampling = dict(sampler="ddim", steps=20) if args.quick else dict(sampler="ddpm")
    # the untrained network outputs eps = 0: a cheap 20-step DDIM run shows what that gives
    untrained = diffusion.sample(n_eval, sampler="ddim", steps=20, seed=args.seed + 3, progress=False)
    trainer = Trainer(diffusion, train, out_dir=args.out, data_info={"spec": args.data, "n": len(train.x), "seed": args.seed},
                      progress=not args.no_progress, batch_size=256, lr=2e-3, warmup_steps=100,
                      ema_decay=0.995, seed=args.seed)
    print(f"refdiff demo: training a {DEMO_T}-step diffusion model (MLP) on {args.data!r} for {steps} steps")
    trainer.train(steps)
    with trainer.ema_weights():
        samples = diffusion.sample(n_eval, seed=args.seed + 4, progress=not args.no_progress, **sampling)
    picture = save_scatter(samples, os.path.join(args.out, "samples.png"), reference=train.x[:3000],
                           title=f"refdiff demo: {args.data}, {steps} steps (grey: data, red: samples)")
    d_model = energy_distance(samples, held_out)
    d_base = energy_distance(reference, held_out)
    d_untrained = energy_distance(untrained, held_out)
    seconds = time.perf_counter() - t_start
    print(f"wrote {picture}")
    print(f"energy distance to held-out data (lower is better, {n_eval} points each):")
    print(f"  samples of the trained model    {d_model:.4f}")
    print(f"  fresh data (baseline)           {d_base:.4f}")
    print(f"  samples of the untrained model  {d_untrained:.4f}")
    print(f"  trained / baseline = {d_model / max(d_base, 1e-12):.2f}x   ({seconds:.0f} s in all)")
    print(f"more samples from this model: refdiff sample {args.out} --n 2000 --out samples.png")
    return 0


DEMO_T = 1000


COMMANDS = {"train": cmd_train, "train-autoencoder": cmd_train_autoencoder, "sample": cmd_sample, "edit": cmd_edit,
            "eval": cmd_eval, "distill": cmd_distill, "demo": cmd_demo}


def _check_backend(name):
    if name in (None, "numpy"):
        return
    from .backend import get_backend

    try:
        get_backend(name)
    except Exception as e:  # no CuPy, no GPU, or the backend is not built here
        raise CLIError(f"--backend {name} is not available here: {e}") from None


def _one_line(error):
    """An exception's message on one line (KeyError's repr quotes removed)."""
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(str(text).split())


def _check_out(args):
    """--out must be creatable: no part of its path may be a regular file, and for train and demo
    (a directory) --out itself must not be one."""
    out = getattr(args, "out", None)
    if not out:
        return
    path = os.path.abspath(out)
    is_dir_option = args.command in ("train", "train-autoencoder", "demo", "distill")
    if is_dir_option and os.path.exists(path) and not os.path.isdir(path):
        raise CLIError(f"--out {out}: is a file, not a directory: choose a directory")
    if not is_dir_option and os.path.isdir(path):
        raise CLIError(f"--out {out}: is a directory: give a file name ending in .png or .npz")
    parent = os.path.dirname(path)
    while parent and not os.path.exists(parent):
        parent, child = os.path.dirname(parent), parent
        if parent == child:
            break
    if parent and os.path.exists(parent) and not os.path.isdir(parent):
        raise CLIError(f"--out {out}: {parent} is a file, so nothing can be created below it")


def main(argv=None):
    """Entry point of the `refdiff` console script; returns the exit status.

    User errors (CLIError, and the library's checkpoint errors, which name the file and the
    problem) exit with status 2 and one line on stderr.
    """
    from .io.checkpoint import CheckpointError, CheckpointWriteError
    from .training.distributed import DistributedError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command != "train":  # train checks these in its start-up, on every rank at once
            _check_out(args)
            _check_backend(getattr(args, "backend", None))
        return COMMANDS[args.command](args)
    except (CLIError, CheckpointError, CheckpointWriteError, DistributedError) as e:
        parser.exit(2, f"refdiff {args.command}: error: {_one_line(e)}\n")


if __name__ == "__main__":
    sys.exit(main())
