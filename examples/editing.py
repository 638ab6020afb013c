"""Image editing with small trained models: inpainting (replace vs RePaint), img2img, super-resolution.

1. The exact model of a 2-D Gaussian mixture (no training): x known, y filled in; the fraction of
   points whose y lands in the mode that x rules out, and the spread of y inside the right mode,
   for replace and RePaint against the exact conditional (wrong mode ~0, std 0.3).
2. 8x8 digits (refdiff's built-in digits at image_size 8), a small U-Net trained here (or loaded from
   --runs): held-out digits with the bottom half masked, filled in by replace and by RePaint;
   PSNR of the filled half against the ground truth, the judge classifier's accuracy on the true
   label (is the filled half consistent with the kept top half?), and the Frechet distance on the
   judge's features (refdiff.training.metrics) against held-out real digits.
3. Super-resolution x2 (4x4 -> 8x8; SR3) with a U-Net trained on [x_t, up(down(x0))]: PSNR and the
   Frechet distance of its outputs against the ground truth, beside the nearest-neighbour upsampling.
4. img2img at strengths 0.3 / 0.6 / 0.9 (a picture; distance to the input printed).

    python examples/editing.py                      # ~15-30 min on a shared 2-core CPU (two trainings)
    python examples/editing.py --runs runs/editing  # keep the trained runs; a second call reuses them
    python examples/editing.py --quick              # seconds: a smoke test

Writes OUT/editing_inpaint.png (rows: input with the hole grey, replace, RePaint, truth),
OUT/editing_superres.png (low-res upsampled nearest, SR, truth), OUT/editing_img2img.png and
OUT/editing.json with every figure printed.
"""
import os
import time

import numpy as np

from common import digits, parser, run, save_json

import refdiff as rd
from refdiff.io.checkpoint import latest_checkpoint
from refdiff.io.images import save_image_grid
from refdiff.samplers import editing
from refdiff.training.metrics import class_accuracy, frechet_distance, train_classifier
from refdiff.training.trainer import Trainer, load_diffusion


def psnr(a, b, where=None):
    """10 log10(peak^2 / MSE) for data in [-1, 1] (peak-to-peak 2), over `where` (a bool mask) or all."""
    d = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2
    mse = d[np.broadcast_to(where, d.shape)].mean() if where is not None else d.mean()
    return float(10 * np.log10(4.0 / mse))


def mixture_figures(n, steps, seed):
    """Replace vs RePaint on the exact model of two anti-correlated modes (tests/test_editing.py's)."""
    cov = [[0.09, 0.0], [0.0, 0.09]]
    mixture = rd.GaussianMixture(weights=[0.5, 0.5], means=[[-1.5, 1.5], [1.5, -1.5]], covariances=[cov, cov])
    s = rd.NoiseSchedule.linear(T=1000)
    x = mixture.sample(n, np.random.default_rng(seed))
    mask = np.array([1, 0])
    out = {}
    for name, kw in (("replace", dict(jump_length=1, jump_n_sample=1)),
                     ("repaint", dict(jump_length=10, jump_n_sample=10))):
        t0 = time.perf_counter()
        y = editing.repaint(mixture.model(s), x, mask, s, steps=steps, rng=np.random.default_rng(seed + 1),
                            clip_sample=False, **kw)[:, 1]
        right = np.sign(y) != np.sign(x[:, 0])
        out[name] = {"wrong_mode": float(1 - right.mean()), "std_in_mode": float(np.std(y[right] + 1.5 * np.sign(x[right, 0]))),
                     "seconds": time.perf_counter() - t0}
    plain = rd.sample_loop(mixture.model(s), np.random.default_rng(seed + 2).standard_normal((n, 2)), s, sampler="ddpm",
                           steps=steps, rng=np.random.default_rng(seed + 3), clip_sample=False)
    out["unconditional_ddpm_std"] = float(np.std(np.abs(plain) - 1.5))
    return out


def trained(runs, name, data, steps, batch_size, seed, superres=None, progress=True):
    """A small U-Net diffusion model on 8x8 digits, trained for `steps` (or loaded from runs/name)."""
    out_dir = os.path.join(runs, name) if runs else None
    if out_dir and latest_checkpoint(os.path.join(out_dir, "checkpoints")):
        diffusion, meta = load_diffusion(out_dir)
        if meta["step"] >= steps:
            return diffusion, None
        trainer = Trainer.resume(out_dir, dataset=data, progress=progress)  # continues exactly (same draws)
    else:
        C = data.x.shape[1]
        model = rd.UNet(in_channels=C * (2 if superres else 1), out_channels=C, base_channels=32, channel_mults=(1, 2),
                        num_res_blocks=1, attention_resolutions=(), sample_size=8, norm_groups=8, seed=seed)
        diffusion = rd.GaussianDiffusion(model, rd.NoiseSchedule.linear(T=1000), superres_factor=superres)
        trainer = Trainer(diffusion, data, out_dir=out_dir, progress=progress, batch_size=batch_size, lr=2e-3,
                          warmup_steps=100, ema_decay=0.995, seed=seed, sample_n=16, sample_steps=20,
                          checkpoint_every=0, checkpoint_minutes=5)
    diffusion, model = trainer.diffusion, trainer.model
    t0 = time.perf_counter()
    trainer.train(steps - trainer.step)
    seconds = time.perf_counter() - t0
    if out_dir:
        trainer.save_checkpoint()
    trainer.ema.copy_to(list(model.parameters()))  # sample with the EMA weights
    return diffusion, seconds


def main(argv=None):
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--runs", default=None, help="keep/reuse the trained runs here")
    p.add_argument("--train-steps", type=int, default=2000)
    p.add_argument("--superres-steps", type=int, default=None, help="training steps of the SR model (default --train-steps)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n-eval", type=int, default=200, help="held-out digits edited")
    p.add_argument("--steps", type=int, default=50, help="sampling steps")
    p.add_argument("--jump-length", type=int, default=10)
    p.add_argument("--jump-n-sample", type=int, default=5)
    args = p.parse_args(argv)
    if args.quick:
        args.train_steps, args.n_eval, args.steps, args.jump_length, args.jump_n_sample = 5, 20, 5, 2, 2
        args.superres_steps = 5
    os.makedirs(args.out, exist_ok=True)
    record = {"args": vars(args)}
    t_all = time.perf_counter()

    record["mixture"] = mixture_figures(200 if args.quick else 1000, args.steps, args.seed)
    m = record["mixture"]
    print(f"mixture (exact model, x known, y filled in, {args.steps} DDPM steps of T = 1000):")
    for name in ("replace", "repaint"):
        print(f"  {name:8s} wrong mode {100 * m[name]['wrong_mode']:.1f}%  std of y in the right mode "
              f"{m[name]['std_in_mode']:.3f}   (exact: 0.0%, 0.300; unconditional ddpm {m['unconditional_ddpm_std']:.3f})")

    data = digits(image_size=8)
    train_set, held_out = data.split(args.n_eval, seed=args.seed)
    judge = train_classifier(train_set, steps=30 if args.quick else 400, seed=args.seed)
    reference = judge.features(judge.heldout.x)
    print(f"judge: {100 * judge.heldout_accuracy:.1f}% held-out accuracy")
    x_true = held_out.x.astype(np.float32)  # (n, 1, 8, 8), never trained on

    def fd(images):
        return frechet_distance(judge.features(images), reference)

    record["frechet_real_baseline"] = fd(x_true)

    # ---- inpainting: keep the top half, fill in the bottom half
    diffusion, seconds = trained(args.runs, "pixel", train_set, args.train_steps, args.batch_size, args.seed,
                                 progress=not args.quick)
    record["pixel_train_seconds"] = seconds
    mask = np.ones((1, 8, 8), np.float32)
    mask[:, 4:, :] = 0
    hole = ~mask.astype(bool)
    rows = [np.where(mask.astype(bool), x_true, 0.0)]
    for method in ("replace", "repaint"):
        t0 = time.perf_counter()
        filled = diffusion.inpaint(x_true, mask, method=method, steps=args.steps, jump_length=args.jump_length,
                                   jump_n_sample=args.jump_n_sample, seed=args.seed)
        record[f"inpaint_{method}"] = {"psnr_hole": psnr(filled, x_true, hole), "frechet": fd(filled),
                                       "label_accuracy": class_accuracy(judge, filled, held_out.y),
                                       "seconds": time.perf_counter() - t0}
        rows.append(filled)
    rows.append(x_true)
    mean_fill = np.where(mask.astype(bool), x_true, train_set.x.mean(axis=0))  # baseline: the training mean
    record["inpaint_mean_fill"] = {"psnr_hole": psnr(mean_fill, x_true, hole), "frechet": fd(mean_fill),
                                   "label_accuracy": class_accuracy(judge, mean_fill, held_out.y)}
    record["real_label_accuracy"] = class_accuracy(judge, x_true, held_out.y)
    save_image_grid(np.concatenate([r[:16] for r in rows]), os.path.join(args.out, "editing_inpaint.png"), nrow=16)

    # ---- img2img at three strengths
    pictures = [x_true[:16]]
    for strength in (0.3, 0.6, 0.9):
        edited = diffusion.img2img(x_true[:16], strength, sampler="ddim", steps=args.steps, seed=args.seed)
        record[f"img2img_{strength}_psnr_to_input"] = psnr(edited, x_true[:16])
        pictures.append(edited)
    save_image_grid(np.concatenate(pictures), os.path.join(args.out, "editing_img2img.png"), nrow=16)

    # ---- super-resolution x2: 4x4 -> 8x8
    sr_steps = args.superres_steps or args.train_steps
    sr, seconds = trained(args.runs, "superres", train_set, sr_steps, args.batch_size, args.seed, superres=2,
                          progress=not args.quick)
    record["superres_train_seconds"] = seconds
    x_low = editing.downsample_area(x_true, 2)
    t0 = time.perf_counter()
    upscaled = sr.superres(x_low, sampler="ddim", steps=args.steps, seed=args.seed)
    nearest = editing.upsample_nearest(x_low, 2)
    record["superres"] = {"psnr": psnr(upscaled, x_true), "frechet": fd(upscaled),
                          "seconds": time.perf_counter() - t0}
    record["superres_nearest"] = {"psnr": psnr(nearest, x_true), "frechet": fd(nearest)}
    save_image_grid(np.concatenate([nearest[:16], upscaled[:16], x_true[:16]]),
                    os.path.join(args.out, "editing_superres.png"), nrow=16)

    r = record
    print(f"8x8 digits, {args.n_eval} held-out images; U-Nets (base 32, mults 1,2) trained {args.train_steps} steps "
          f"(super-resolution: {args.superres_steps or args.train_steps}), "
          f"batch {args.batch_size}; sampling {args.steps} steps; RePaint j={args.jump_length} r={args.jump_n_sample}")
    print(f"  Frechet distance of the real held-out digits themselves: {r['frechet_real_baseline']:.2f}; "
          f"judge's accuracy on them {100 * r['real_label_accuracy']:.1f}%")
    print("  inpainting (bottom half): PSNR of the hole | label accuracy | Frechet distance")
    for name in ("inpaint_mean_fill", "inpaint_replace", "inpaint_repaint"):
        v = r[name]
        print(f"    {name[8:]:10s} {v['psnr_hole']:6.2f} dB | {100 * v['label_accuracy']:5.1f}% | {v['frechet']:.2f}")
    print("  super-resolution x2 (4x4 -> 8x8): PSNR | Frechet distance")
    for name in ("superres_nearest", "superres"):
        print(f"    {name:17s} {r[name]['psnr']:6.2f} dB | {r[name]['frechet']:.2f}")
    print("  img2img PSNR to the input: " + ", ".join(f"strength {s}: {r[f'img2img_{s}_psnr_to_input']:.2f} dB"
                                                    for s in (0.3, 0.6, 0.9)))
    print(f"  training: pixel {r['pixel_train_seconds'] or 0:.0f} s, superres {r['superres_train_seconds'] or 0:.0f} s; "
          f"all {time.perf_counter() - t_all:.0f} s")
    print(f"wrote {args.out}/editing_inpaint.png, editing_img2img.png, editing_superres.png, "
          f"{save_json(os.path.join(args.out, 'editing.json'), record)}")
    return record


if __name__ == "__main__":
    run(main)
