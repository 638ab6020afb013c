"""Class-conditional digits with classifier-free guidance at several guidance scales.

Trains a class-conditional denoiser on scikit-learn's 8x8 digits with label dropout (the null
label is used 10% of the time, Ho & Salimans 2022), then samples every class at guidance scales
s = 0 (unconditional), 1 (conditional), 2, 3, 5: eps = eps_uncond + s (eps_cond - eps_uncond).
A small classifier (refdiff.training.metrics, trained with refdiff's autograd) judges whether each
sample shows its requested digit; the Frechet distance on its features measures realism.

    python examples/guidance_digits.py                 # MLP on flattened 8x8 digits, ~5-10 min on a CPU
    python examples/guidance_digits.py --model unet    # a small U-Net (much slower on a CPU)
    python examples/guidance_digits.py --quick         # seconds: a smoke test

Writes OUT/guidance_s{scale}.png (rows: digits 0..9), OUT/guidance.png (all scales side by
side) and OUT/guidance.json (accuracy and Frechet distance per scale). With --run DIR the trained
model is kept as a refdiff run (checkpoints) for `refdiff sample` and examples/ddpm_vs_ddim.py;
if DIR already holds a run, it is continued up to --steps (or just sampled when it is there).
"""
import os
import time

import numpy as np

from common import digits, flat, parser, run, save_json, train

import refdiff as rd
from refdiff.io.checkpoint import latest_checkpoint
from refdiff.io.images import image_grid, save_image_grid
from refdiff.training.metrics import image_metrics, train_classifier
from refdiff.training.trainer import Trainer


def main(argv=None):
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--model", choices=("mlp", "unet"), default="mlp")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--hidden", type=int, default=256, help="mlp: width")
    p.add_argument("--blocks", type=int, default=3, help="mlp: residual blocks")
    p.add_argument("--per-class", type=int, default=50, help="samples per class and scale for the metrics")
    p.add_argument("--scales", default="0,1,2,3,5")
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--sample-steps", type=int, default=100)
    p.add_argument("--run", default=None, help="keep the trained model as a refdiff run in this directory")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.per_class, args.sample_steps = 30, 2, 5
    scales = [float(s) for s in args.scales.split(",")]
    os.makedirs(args.out, exist_ok=True)

    images = digits(image_size=8)  # (1797, 1, 8, 8) in [-1, 1], labels 0..9
    if args.model == "mlp":
        data = flat(images)
        model = rd.MLPDenoiser(dim=64, hidden=64 if args.quick else args.hidden, num_blocks=1 if args.quick else args.blocks,
                               num_classes=10, backend=args.backend, seed=args.seed)
    else:
        data = images
        model = rd.UNet(in_channels=1, base_channels=8 if args.quick else 32, channel_mults=(1, 2), num_res_blocks=1,
                        attention_resolutions=(), sample_size=8, num_classes=10, norm_groups=8,
                        backend=args.backend, seed=args.seed)
    if args.run and latest_checkpoint(os.path.join(args.run, "checkpoints")):  # continue (or reuse) that run
        trainer = Trainer.resume(args.run, dataset=data, progress=not args.quick)
        diffusion = trainer.diffusion
        t0 = time.perf_counter()
        trainer.train(max(0, args.steps - trainer.step))
        trainer.seconds = time.perf_counter() - t0
    else:
        diffusion = rd.GaussianDiffusion(model, rd.NoiseSchedule.linear(T=1000))
        trainer = train(diffusion, data, args.steps, out_dir=args.run, batch_size=args.batch_size, lr=1e-3, warmup_steps=200,
                        ema_decay=0.999, cond_drop_prob=0.1, seed=args.seed, progress=not args.quick,
                        data_info={"spec": "digits", "image_size": 8, "flatten": args.model == "mlp",
                                   "shape": [1, 8, 8]})
    print(f"trained {args.steps} steps in {trainer.seconds:.0f} s, last losses {np.mean(trainer.losses[-100:]):.4f}")

    classifier = train_classifier(images, steps=60 if args.quick else 400, seed=args.seed)
    print(f"judge: classifier with {classifier.heldout_accuracy:.1%} held-out accuracy on real digits")
    labels = np.repeat(np.arange(10), args.per_class)  # (10 * per_class,)
    results, grids = [], []
    with trainer.ema_weights():
        for s in scales:
            t0 = time.perf_counter()
            x = diffusion.sample(len(labels), sampler=args.sampler, steps=args.sample_steps, y=labels,
                                 guidance_scale=s, seed=args.seed + 1, progress=not args.quick,
                                 use_clipped_model_output=True)  # DDIM with the eps of the clipped x0
            x = x.reshape(len(labels), 1, 8, 8)
            m = image_metrics(classifier, x, labels, seed=args.seed)
            m.update(guidance_scale=s, seconds=time.perf_counter() - t0)
            results.append(m)
            shown = x.reshape(10, args.per_class, 1, 8, 8)[:, :10].reshape(-1, 1, 8, 8)  # up to 10 per digit
            save_image_grid(shown, os.path.join(args.out, f"guidance_s{s:g}.png"), nrow=min(10, args.per_class))
            grids.append(image_grid(shown, nrow=min(10, args.per_class), scale=4))
            print(f"s = {s:g}: {m['accuracy']:.1%} classified as the requested digit, "
                  f"Frechet distance {m['frechet_distance']:.3f} (real data {m['frechet_distance_baseline']:.3f})")
    _side_by_side(grids, scales, os.path.join(args.out, "guidance.png"))
    save_json(os.path.join(args.out, "guidance.json"), {
        "model": args.model, "steps": args.steps, "sampler": args.sampler, "sample_steps": args.sample_steps,
        "classifier_heldout_accuracy": classifier.heldout_accuracy, "results": results,
        "train_seconds": trainer.seconds})
    print(f"wrote {os.path.join(args.out, 'guidance.png')}")
    return results


def _side_by_side(grids, scales, path):
    from PIL import Image, ImageDraw

    h = max(g.shape[0] for g in grids)
    gap = 12
    canvas = Image.new("RGB", (sum(g.shape[1] for g in grids) + gap * (len(grids) + 1), h + 24), "white")
    draw, x = ImageDraw.Draw(canvas), gap
    for g, s in zip(grids, scales):
        canvas.paste(Image.fromarray(g), (x, 22))
        draw.text((x, 4), f"guidance scale {s:g}" + (" (unconditional)" if s == 0 else ""), fill=(0, 0, 0))
        x += g.shape[1] + gap
    canvas.save(path)


if __name__ == "__main__":
    run(main)
