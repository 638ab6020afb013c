"""Latent against pixel diffusion on the built-in shapes (CPU), and the autoencoder's reconstruction PSNR.

Data: refdiff's procedural shapes at their native 16x16, 3 channels (load_dataset("shapes"));
training images from seed 0, held-out images from seed 1 (other random shapes: never trained on).

(a) The autoencoder: rd.AutoencoderKL(block_out_channels=(16, 32), latent_channels=4, 8 groups, one
    resnet per level; 2 levels: each side shrinks 2x, so a 3x16x16 image (768 numbers) becomes a
    4x8x8 latent (256)), trained by `AutoencoderTraining` (L1 + 1e-6 KL, LDM's KL-reg) with the
    Trainer (AdamW lr 1e-3, 100 warmup, EMA 0.999). Reconstruction PSNR (EMA weights, z = the
    posterior mean) on the held-out images, next to the PSNR of the same images stored at the
    latent's size the plain way: 2x2 average pooling (3x8x8 = 192 numbers) upsampled back by
    nearest neighbour.
(b) Pixel vs latent diffusion with the same U-Net (base 32 channels, mults 1,2, one resnet per
    level, no attention; `refdiff train`'s defaults), linear schedule T = 1000, eps prediction, the
    same batch, learning rate, warmup, EMA and steps. The latent model is rd.LatentDiffusion over
    the frozen autoencoder of (a), its scaling factor measured (1 / std of the latents of the first
    256 training images, LDM sec. 4.3.2); its training step includes encoding the batch (drawn
    from q(z | x), as LDM trains). Time per training step: the Trainer's wall time / steps. Time per
    sample: DDIM with --sample-steps steps (clipped-eps for the pixel model, whose x0 is clipped to
    [-1, 1]; no clipping for the latents), wall time / n, decoding included for the latent model
    (and given on its own). Quality: the project's judge (refdiff.training.metrics.train_classifier
    on shapes, image_metrics): the Frechet distance on its features to its held-out real shapes,
    the real-data baseline at the same n (what a perfect model gets), and for the latent model the
    autoencoder's own ceiling (reconstructions of n training images).

Sized for a shared 2-core CPU: ~15-25 minutes at the defaults (the machine's load decides).

    python benchmarks/bench_latent_cpu.py              # the RESULTS.md figures
    python benchmarks/bench_latent_cpu.py --quick      # seconds: a smoke test

Prints the tables (Markdown, for benchmarks/RESULTS.md).
"""
import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import refdiff as rd  # noqa: E402
from refdiff.latent import SCALE_SAMPLES, LatentDiffusion, measure_scaling_factor  # noqa: E402
from refdiff.training.autoencoder import AutoencoderTraining  # noqa: E402
from refdiff.training.data import load_dataset  # noqa: E402
from refdiff.training.metrics import image_metrics, psnr, train_classifier  # noqa: E402
from refdiff.training.trainer import Trainer  # noqa: E402


def pool_baseline(x):
    """2x2 average pooling and nearest-neighbour upsampling back: the image kept at 3 x H/2 x W/2 numbers."""
    B, C, H, W = x.shape
    small = x.reshape(B, C, H // 2, 2, W // 2, 2).mean(axis=(3, 5))
    return small.repeat(2, axis=2).repeat(2, axis=3)


def unet(channels, size, seed):
    return rd.UNet(in_channels=channels, base_channels=32, channel_mults=(1, 2), num_res_blocks=1,
                   attention_resolutions=(), sample_size=size, norm_groups=8, seed=seed)


def train(objective, data, args, steps):
    trainer = Trainer(objective, data, out_dir=None, progress=False, parallel=None, batch_size=args.batch_size,
                      lr=1e-3, warmup_steps=min(100, steps), ema_decay=0.999, seed=args.seed)
    trainer.train(steps)
    return trainer


def timed_samples(diffusion, trainer, n, steps, seed, **options):
    with trainer.ema_weights():
        t0 = time.perf_counter()
        x = diffusion.sample(n, sampler="ddim", steps=steps, seed=seed, progress=False, **options)
        return x, time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-heldout", type=int, default=256)
    ap.add_argument("--ae-steps", type=int, default=800)
    ap.add_argument("--steps", type=int, default=600, help="diffusion training steps (each model)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--n-samples", type=int, default=200)
    ap.add_argument("--sample-steps", type=int, default=20)
    ap.add_argument("--judge-steps", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a few seconds: tiny sizes")
    args = ap.parse_args(argv)
    if args.quick:
        args.n_train, args.n_heldout, args.ae_steps, args.steps = 64, 16, 2, 2
        args.batch_size, args.n_samples, args.sample_steps, args.judge_steps = 8, 8, 2, 2
    t_start = time.perf_counter()
    data = load_dataset("shapes", n=args.n_train, seed=args.seed)
    heldout = load_dataset("shapes", n=args.n_heldout, seed=args.seed + 1).x
    C, H, W = data.x.shape[1:]

    # (a) the autoencoder
    vae = rd.AutoencoderKL(in_channels=C, block_out_channels=(16, 32), latent_channels=4, norm_num_groups=8,
                           sample_size=H, seed=args.seed)
    ae_objective = AutoencoderTraining(vae, kl_weight=1e-6, reconstruction="l1")
    ae_trainer = train(ae_objective, data, args, args.ae_steps)
    ae_trainer.ema.copy_to(ae_trainer.params)  # the EMA weights from here on
    recon = ae_objective.reconstruct(heldout)
    p_ae, p_pool = psnr(heldout, recon), psnr(heldout, pool_baseline(heldout))
    print(f"(a) autoencoder: {args.ae_steps} steps, batch {args.batch_size}, {ae_trainer.seconds / args.ae_steps:.3f} s/step,"
          f" {vae.num_parameters()} parameters")
    print("| images (held out, shapes 16x16) | numbers per image | PSNR mean (dB) | PSNR std |")
    print("| --- | --- | --- | --- |")
    print(f"| AutoencoderKL (16, 32), 4 latent channels | {4 * (H // 2) * (W // 2)} | {p_ae.mean():.2f} | {p_ae.std():.2f} |")
    print(f"| 2x2 average pool + nearest upsampling | {C * (H // 2) * (W // 2)} | {p_pool.mean():.2f} | {p_pool.std():.2f} |")

    # (b) pixel vs latent diffusion
    schedule = rd.NoiseSchedule.linear(T=1000)
    scaling_factor = measure_scaling_factor(vae, data.x[:SCALE_SAMPLES], np.random.default_rng(args.seed))
    pixel = rd.GaussianDiffusion(unet(C, H, args.seed), schedule)
    latent = LatentDiffusion(unet(4, H // 2, args.seed), schedule, vae, scaling_factor)
    judge = train_classifier(data, steps=args.judge_steps, seed=args.seed)
    rows = []
    for name, diffusion, options in (("pixel", pixel, {"use_clipped_model_output": True}), ("latent", latent, {})):
        trainer = train(diffusion, data, args, args.steps)
        x, seconds = timed_samples(diffusion, trainer, args.n_samples, args.sample_steps, args.seed + 7, **options)
        m = image_metrics(judge, np.clip(x, -1, 1), seed=args.seed)
        rows.append((name, diffusion.model.num_parameters(), trainer.seconds / args.steps, seconds / args.n_samples, m))
    t0 = time.perf_counter()
    with rd.no_grad():
        z_s = latent.encode(data.x[:args.n_samples])
    decoded = latent.decode(z_s)
    decode_seconds = time.perf_counter() - t0
    ceiling = image_metrics(judge, np.clip(decoded, -1, 1), seed=args.seed)["frechet_distance"]

    print(f"(b) shapes {C}x{H}x{W}, {args.n_train} training images, {args.steps} steps each, batch {args.batch_size}; "
          f"latent 4x{H // 2}x{W // 2}, scaling factor {scaling_factor:.4f}; judge held-out accuracy "
          f"{judge.heldout_accuracy:.3f}; DDIM {args.sample_steps} steps, {args.n_samples} samples")
    print("| model | U-Net parameters | s / training step | s / sample | Frechet distance | real-data baseline |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, n_params, step_s, sample_s, m in rows:
        print(f"| {name} | {n_params} | {step_s:.3f} | {sample_s:.4f} | {m['frechet_distance']:.2f} | "
              f"{m['frechet_distance_baseline']:.2f} |")
    print(f"latent: autoencoder ceiling (encode + decode {args.n_samples} training images) Frechet distance "
          f"{ceiling:.2f}; encode + decode alone {decode_seconds / args.n_samples:.4f} s / image")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except OSError:
        commit = "?"
    print(f"commit {commit}, {platform.processor() or platform.machine()}, "
          f"{time.perf_counter() - t_start:.0f} s in all")


if __name__ == "__main__":
    main()
