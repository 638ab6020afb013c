"""Classifier guidance vs classifier-free guidance on the 8x8 digits: accuracy and Frechet distance.

Two ways to steer a diffusion model towards a class y, side by side at the same guidance scales s:

- classifier-free (Ho & Salimans 2022, eq. 6): a class-conditional denoiser trained with label
  dropout 0.1; eps = eps_uncond + s (eps_cond - eps_uncond).
- classifier guidance (Dhariwal & Nichol 2021, eq. 14): an unconditional denoiser of the same size
  plus a noise-conditional classifier p_phi(y | x_t, t) (rd.NoiseClassifier: the U-Net's encoder
  half and a pooled linear head, trained by cross-entropy on x_t at uniform t);
  eps_hat = eps - sqrt(1 - abar_t) s grad_x log p_phi(y | x_t).

Both denoisers are MLPDenoisers on the digits flattened to 64 numbers (a U-Net is too slow to
train on a shared CPU); the classifier sees the same numbers as 1x8x8 images. A separate judge
trained on clean digits (refdiff.training.metrics.train_classifier, as examples/guidance_digits.py)
measures how many samples show the requested digit, and the Frechet distance on its features
measures realism against held-out real digits.

    python examples/classifier_guidance_digits.py              # ~15-25 min on a shared 2-core CPU
    python examples/classifier_guidance_digits.py --quick      # seconds: a smoke test

Writes OUT/cg_vs_cfg.png (rows: classifier-free, classifier guidance; one 10x10 grid of digits
0..9 per scale), OUT/cg_vs_cfg_curves.png (accuracy and Frechet distance against s) and
OUT/cg_vs_cfg.json, and prints the table recorded in benchmarks/RESULTS.md.
"""
import os
import time

import numpy as np

from common import digits, flat, parser, plt, run, save_json, train

import refdiff as rd
from refdiff.io.images import image_grid
from refdiff.training.metrics import image_metrics, train_classifier


def main(argv=None):
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3000, help="training steps of each denoiser")
    p.add_argument("--clf-steps", type=int, default=1500, help="training steps of the noise-conditional classifier")
    p.add_argument("--clf-channels", type=int, default=16, help="classifier: base channels of the encoder")
    p.add_argument("--hidden", type=int, default=256, help="denoisers: MLP width")
    p.add_argument("--blocks", type=int, default=3, help="denoisers: residual blocks")
    p.add_argument("--per-class", type=int, default=30, help="samples per digit, method and scale")
    p.add_argument("--scales", default="0,1,2,4,8")
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--sample-steps", type=int, default=50)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.clf_steps, args.per_class, args.sample_steps, args.hidden, args.blocks = 30, 10, 2, 5, 32, 1
    scales = [float(s) for s in args.scales.split(",")]
    os.makedirs(args.out, exist_ok=True)
    t_start = time.perf_counter()

    images = digits(image_size=8)  # (1797, 1, 8, 8) in [-1, 1], labels 0..9
    data = flat(images)  # (1797, 64)
    schedule = rd.NoiseSchedule.linear(T=1000)
    options = dict(batch_size=128, lr=1e-3, warmup_steps=min(200, args.steps // 5), ema_decay=0.999, seed=args.seed,
                   progress=not args.quick)

    def denoiser(num_classes):
        return rd.MLPDenoiser(dim=64, hidden=args.hidden, num_blocks=args.blocks, num_classes=num_classes,
                              backend=args.backend, seed=args.seed)

    cfg = train(rd.GaussianDiffusion(denoiser(10), schedule), data, args.steps, cond_drop_prob=0.1, **options)
    print(f"classifier-free denoiser (label dropout 0.1): {args.steps} steps in {cfg.seconds:.0f} s, "
          f"loss {np.mean(cfg.losses[-100:]):.4f}")
    uncond = train(rd.GaussianDiffusion(denoiser(None), schedule), data, args.steps, **options)
    # (the Trainer gives an unconditional model no labels)
    print(f"unconditional denoiser: {args.steps} steps in {uncond.seconds:.0f} s, loss {np.mean(uncond.losses[-100:]):.4f}")
    noise_classifier = rd.NoiseClassifier(10, in_channels=1, base_channels=args.clf_channels, channel_mults=(1, 2),
                                          num_res_blocks=1, attention_resolutions=(), sample_size=8, norm_groups=8,
                                          backend=args.backend, seed=args.seed)
    clf = train(rd.NoisyClassification(noise_classifier, schedule), images, args.clf_steps, cond_drop_prob=0.0,
                **{**options, "batch_size": 64, "lr": 2e-3})
    print(f"noise-conditional classifier: {args.clf_steps} steps in {clf.seconds:.0f} s, "
          f"cross-entropy on x_t {np.mean(clf.losses[-100:]):.3f} (log 10 = {np.log(10):.3f})")

    judge = train_classifier(images, steps=60 if args.quick else 400, seed=args.seed)
    print(f"judge: {judge.heldout_accuracy:.1%} held-out accuracy on real digits")
    labels = np.repeat(np.arange(10), args.per_class)  # (10 * per_class,)
    sample_options = dict(sampler=args.sampler, steps=args.sample_steps, seed=args.seed + 1, progress=not args.quick,
                          use_clipped_model_output=True)  # DDIM with the eps of the clipped x0, for both methods
    results, grids = {"classifier_free": [], "classifier": []}, {"classifier_free": [], "classifier": []}
    with cfg.ema_weights(), uncond.ema_weights(), clf.ema_weights():
        clf.model.eval()
        for s in scales:
            for method, diffusion, extra in (
                    ("classifier_free", cfg.diffusion, {}),
                    ("classifier", uncond.diffusion, {"guidance": "classifier", "classifier": noise_classifier})):
                t0 = time.perf_counter()
                x = diffusion.sample(len(labels), y=labels, guidance_scale=s, **extra, **sample_options)
                x = x.reshape(len(labels), 1, 8, 8)
                m = image_metrics(judge, x, labels, seed=args.seed)
                m.update(guidance_scale=s, seconds=time.perf_counter() - t0)
                results[method].append(m)
                shown = x.reshape(10, args.per_class, 1, 8, 8)[:, :10].reshape(-1, 1, 8, 8)
                grids[method].append(image_grid(shown, nrow=min(10, args.per_class), scale=3))
    baseline = results["classifier"][0]["frechet_distance_baseline"]
    print(f"\n{len(labels)} samples per method and scale ({args.sampler}, {args.sample_steps} steps); "
          f"Frechet distance of {len(labels)} real digits: {baseline:.2f}")
    print("| s | CFG accuracy | CFG Frechet | CG accuracy | CG Frechet | CG seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for a, b in zip(results["classifier_free"], results["classifier"]):
        print(f"| {a['guidance_scale']:g} | {a['accuracy']:.1%} | {a['frechet_distance']:.2f} | "
              f"{b['accuracy']:.1%} | {b['frechet_distance']:.2f} | {b['seconds']:.0f} |")
    _picture(grids, scales, os.path.join(args.out, "cg_vs_cfg.png"))
    _curves(results, baseline, os.path.join(args.out, "cg_vs_cfg_curves.png"))
    save_json(os.path.join(args.out, "cg_vs_cfg.json"), {
        "steps": args.steps, "clf_steps": args.clf_steps, "sampler": args.sampler, "sample_steps": args.sample_steps,
        "per_class": args.per_class, "judge_heldout_accuracy": judge.heldout_accuracy, "results": results,
        "seconds": {"cfg_train": cfg.seconds, "uncond_train": uncond.seconds, "classifier_train": clf.seconds,
                    "total": time.perf_counter() - t_start}})
    print(f"total {time.perf_counter() - t_start:.0f} s; wrote {os.path.join(args.out, 'cg_vs_cfg.png')}")
    return results


def _picture(grids, scales, path):
    from PIL import Image, ImageDraw

    names = {"classifier_free": "classifier-free", "classifier": "classifier guidance"}
    h, w, gap, top, left = grids["classifier"][0].shape[0], grids["classifier"][0].shape[1], 10, 20, 130
    canvas = Image.new("RGB", (left + len(scales) * (w + gap), top + 2 * (h + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, s in enumerate(scales):
        draw.text((left + j * (w + gap), 4), f"s = {s:g}", fill=(0, 0, 0))
    for i, method in enumerate(("classifier_free", "classifier")):
        draw.text((4, top + i * (h + gap) + h // 2), names[method], fill=(0, 0, 0))
        for j, g in enumerate(grids[method]):
            canvas.paste(Image.fromarray(g), (left + j * (w + gap), top + i * (h + gap)))
    canvas.save(path)


def _curves(results, baseline, path):
    pyplot = plt()
    fig, (ax1, ax2) = pyplot.subplots(1, 2, figsize=(9, 3.5))
    for method, label in (("classifier_free", "classifier-free"), ("classifier", "classifier guidance")):
        s = [m["guidance_scale"] for m in results[method]]
        ax1.plot(s, [100 * m["accuracy"] for m in results[method]], "o-", label=label)
        ax2.plot(s, [m["frechet_distance"] for m in results[method]], "o-", label=label)
    ax2.axhline(baseline, color="gray", ls="--", label="real digits")
    ax1.set(xlabel="guidance scale s", ylabel="judged as the requested digit (%)")
    ax2.set(xlabel="guidance scale s", ylabel="Frechet distance (judge features)")
    ax1.legend(), ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot.close(fig)


if __name__ == "__main__":
    run(main)
