"""Trainer: the training loop of a GaussianDiffusion, with checkpoints that resume exactly.

    for step = 0, 1, ...:                             (DDPM Algorithm 1)
        x0, y = batch(step)                           shuffled each epoch
        lr = warmup_lr(step, lr, warmup_steps)        linear warmup
        loss = diffusion.loss(x0, y, cond_drop_prob)  random t and noise
        loss.backward(); clip_grad_norm; AdamW step   (Loshchilov & Hutter 2019)
        ema.step(params)                              weights for sampling (DDPM sec. 4)

Randomness: every random draw of step s comes from generators derived from (seed, s) with
numpy's SeedSequence: the batch order of epoch e from default_rng([seed, e])
(refdiff.training.data.batch_indices), t / noise / label dropout of step s from
SeedSequence([seed, 2, s]). So the whole random state of a run is
(seed, step): a run resumed from a checkpoint of step s draws exactly what the uninterrupted run
drew, and on the NumPy backend reproduces its losses bit for bit. (On a GPU backend, t, the noise
and the label dropout come from the diffusion's one device generator, seeded at its first loss:
a resumed cuda run draws differently from the uninterrupted one. See GaussianDiffusion.loss.)

A checkpoint (refdiff.io.checkpoint) holds the model weights, the EMA weights, the optimizer state
and the schedule's betas in a safetensors file, and the configs (model, diffusion, training,
data), the step and the loss history in a JSON file. load_diffusion() rebuilds a model for
sampling from one; Trainer.resume() continues a run.
"""
import contextlib
import dataclasses
import importlib
import math
import os
import time

import numpy as np

from ..backend import array_module, to_numpy
from ..checks import value_checks_on
from ..io import checkpoint as ckpt
from ..io.checkpoint import CheckpointError
from .data import batch_indices
from ..diffusion import GaussianDiffusion, model_num_classes
from .optim import EMA, AdamW, clip_grad_norm, warmup_lr

# classes a checkpoint may name: a checkpoint never makes us import arbitrary code
MODEL_CLASSES = {"UNet": "refdiff.models.unet", "MLPDenoiser": "refdiff.models.mlp"}


@dataclasses.dataclass
class TrainConfig:
    """Options of a training run (all JSON-able: stored in every checkpoint)."""

    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    adam_betas: tuple = (0.9, 0.999)
    warmup_steps: int = 0
    grad_clip: float = 1.0  # max global grad norm; 0 = no clipping
    ema_decay: float = 0.999
    ema_warmup: bool = True  # diffusers' use_ema_warmup: decay grows with the step
    seed: int = 0
    cond_drop_prob: float = 0.1  # label dropout for classifier-free guidance (class-conditional models)
    sample_every: int = 0  # write a sample picture every this many steps (0: never)
    sample_n: int = 64
    sample_steps: int = 50  # DDIM steps for the periodic pictures
    checkpoint_every: int = 0  # 0: only at the end of train()
    keep_checkpoints: int = 2

    def __post_init__(self):
        self.adam_betas = tuple(self.adam_betas)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.cond_drop_prob <= 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1], got {self.cond_drop_prob}")
        for name in ("warmup_steps", "sample_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


def _check_loss(value, step, update_made):
    """Raise FloatingPointError if the loss of `step` is NaN or infinite."""
    if not math.isfinite(value):
        after = (" (read on the device after the step: its update was made, and nothing has been saved since)"
                 if update_made else " (before the update: the weights stay as they were)")
        raise FloatingPointError(f"loss became {value} at step {step}{after}; learning rate too high? data not in [-1, 1]?")


def step_rng(seed, stream, index):
    """The numpy Generator of random stream `stream` at `index`: SeedSequence([seed, stream, index])."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(stream), int(index)]))


class Trainer:
    """Train `diffusion` on `dataset` (refdiff.training.data.Dataset: .x (N, ...) in [-1, 1], .y labels or None).

    out_dir: where checkpoints (out_dir/checkpoints) and sample pictures (out_dir/samples) go;
    None: nowhere. data_info: JSON-able description of the data (e.g. {"spec": "moons", "n": ...})
    stored in checkpoints so that resume() can reload it. progress: tqdm bar with loss and steps/s.
    Other keyword arguments are TrainConfig fields.
    """

    def __init__(self, diffusion, dataset, out_dir=None, config=None, data_info=None, progress=True, **options):
        if config is None:
            config = TrainConfig(**options)
        elif options:
            config = dataclasses.replace(config, **options)
        self.config = config
        self.diffusion = diffusion
        self.model = diffusion.model
        self.dataset = dataset
        self.out_dir = out_dir
        self.data_info = dict(data_info or {})
        self.progress = progress
        self.x = np.asarray(dataset.x)
        if self.x.ndim < 2 or len(self.x) == 0:
            raise ValueError(f"dataset.x must be a non-empty batch of samples, got shape {self.x.shape}")
        self.num_classes = model_num_classes(self.model)
        self.y = None
        if self.num_classes is not None:
            if getattr(dataset, "y", None) is None:
                raise ValueError("the model is class-conditional (num_classes set) but the dataset has no labels")
            self.y = np.asarray(dataset.y, dtype=np.int64)
        self.params = list(self.model.parameters())
        self.optimizer = AdamW(
            self.params, lr=config.lr, betas=config.adam_betas, weight_decay=config.weight_decay
        )
        self.ema = EMA(self.params, decay=config.ema_decay, use_ema_warmup=config.ema_warmup)
        self.step = 0
        self.losses = []
        self._unread = []  # (step, loss array) of steps whose loss is not read yet (see LOSS_READ_EVERY)

    # ----------------------------------------------------------------------------------------
    # the loop

    def batch_indices(self, step):
        """Indices of the batch of `step`: shuffled epochs cut in batches (refdiff.training.data.batch_indices)."""
        return batch_indices(len(self.x), self.config.batch_size, step, seed=self.config.seed)

    # On a GPU the loss of a step is not read at that step (a read waits for the GPU: one host
    # sync per step); train() reads the losses of LOSS_READ_EVERY steps at once, as one copy.
    LOSS_READ_EVERY = 50

    def train_step(self):
        """One optimisation step; returns the loss (float: on a GPU, reading it waits for the step)."""
        self._step()
        self._read_losses()
        return self.losses[-1]

    def _step(self):
        """One optimisation step. A host loss is checked at once (before the update: the weights
        stay as they were); a device loss is kept on the device until _read_losses."""
        cfg = self.config
        idx = self.batch_indices(self.step)
        x0 = self.x[idx]
        y = None if self.y is None else self.y[idx]
        self.optimizer.lr = warmup_lr(self.step, cfg.lr, cfg.warmup_steps)
        self.optimizer.zero_grad()
        loss = self.diffusion.loss(x0, y, cond_drop_prob=cfg.cond_drop_prob if y is not None else 0.0, rng=step_rng(cfg.seed, 2, self.step))
        if value_checks_on(loss.data):  # free to read: NumPy
            _check_loss(float(loss.item()), self.step, update_made=False)
        loss.backward()
        if cfg.grad_clip:
            clip_grad_norm(self.params, cfg.grad_clip, sync=False)  # the norm is not read: no host sync
        self.optimizer.step()
        self.ema.step(self.params)
        self._unread.append((self.step, loss.data))
        self.step += 1

    def _read_losses(self):
        """Append the losses not read yet to self.losses: one device-to-host copy for all of them.
        Raises FloatingPointError naming the first step whose loss is NaN or infinite."""
        if not self._unread:
            return
        steps, values = zip(*self._unread)
        self._unread = []
        xp = array_module(values[0])
        values = to_numpy(xp.stack([xp.reshape(v, ()) for v in values]))  # (steps,) float
        for step, value in zip(steps, values.tolist()):
            _check_loss(value, step, update_made=True)
            self.losses.append(value)

    def train(self, steps):
        """Run `steps` more optimisation steps; returns their losses. Checkpoints at the end if out_dir."""
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        cfg = self.config
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, desc="training", unit="step", dynamic_ncols=True)
        start = len(self.losses)
        t0 = time.perf_counter()
        for i in range(steps):
            self._step()
            saving = self.out_dir and ((cfg.sample_every and self.step % cfg.sample_every == 0)
                                       or (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0))
            if saving or self.step % self.LOSS_READ_EVERY == 0 or i == steps - 1:
                self._read_losses()  # before anything is saved: no NaN weights are written
                if bar is not None:
                    bar.set_postfix(loss=f"{np.mean(self.losses[-50:]):.4f}", step=self.step, refresh=False)
            if bar is not None:
                bar.update(1)
            if self.out_dir and cfg.sample_every and self.step % cfg.sample_every == 0:
                self.save_samples()
            if self.out_dir and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save_checkpoint()
        if bar is not None:
            bar.close()
        self.seconds = time.perf_counter() - t0
        if self.out_dir and steps and not (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0):
            self.save_checkpoint()
        return self.losses[start:]

    # ----------------------------------------------------------------------------------------
    # EMA weights and pictures

    @contextlib.contextmanager
    def ema_weights(self):
        """Inside the block the model holds the EMA weights; the training weights come back after."""
        self.ema.store(self.params)
        self.ema.copy_to(self.params)
        try:
            yield self.model
        finally:
            self.ema.restore(self.params)

    def save_samples(self, path=None, n=None, seed=0):
        """Sample with the EMA weights and write a picture; returns its path.

        DDIM with sample_steps steps and use_clipped_model_output (steady early in training).
        """
        from ..io.images import save_image_grid, save_scatter

        cfg = self.config
        n = n or cfg.sample_n
        path = path or os.path.join(self.out_dir, "samples", f"step_{self.step:08d}.png")
        y = None if self.num_classes is None else np.arange(n) % self.num_classes
        with self.ema_weights():
            steps = min(cfg.sample_steps, self.diffusion.T)
            x = self.diffusion.sample(n, sampler="ddim", steps=steps, y=y, seed=seed, progress=False,
                                      use_clipped_model_output=True)
        if x.ndim == 2 and x.shape[1] == 2:
            save_scatter(x, path, reference=self.x[:2000], title=f"step {self.step}")
        elif x.ndim == 4:
            save_image_grid(x, path, nrow=self.num_classes or None)
        else:
            np.save(path.replace(".png", ".npy"), x)
        return path

    # ----------------------------------------------------------------------------------------
    # checkpoints

    def state(self):
        """(arrays, meta) of the run: everything a checkpoint holds."""
        self._read_losses()  # the loss history is complete (and checked) before it is saved
        model_skel, model_arrays = ckpt.flatten_state(self.model.state_dict(), "model")
        ema_skel, ema_arrays = ckpt.flatten_state(self.ema.state_dict(), "ema")
        opt_skel, opt_arrays = ckpt.flatten_state(self.optimizer.state_dict(), "optimizer")
        arrays = {**model_arrays, **ema_arrays, **opt_arrays, "schedule/betas": np.asarray(self.diffusion.schedule.betas)}
        meta = {
            "model": {"class": type(self.model).__name__, "config": _jsonable(self.model.config)},
            "diffusion": self.diffusion.config(),
            "train": _jsonable(dataclasses.asdict(self.config)),
            "data": _jsonable(self.data_info),
            "rng": {"seed": self.config.seed, "generators": "batches: default_rng([seed, epoch]); step s: SeedSequence([seed, 2, s])"},
            "losses": self.losses,
            "states": {"model": model_skel, "ema": ema_skel, "optimizer": opt_skel},
        }
        return arrays, meta

    def save_checkpoint(self, directory=None):
        """Write the checkpoint of the current step (atomically); returns the JSON path."""
        directory = directory or os.path.join(self.out_dir, "checkpoints")
        arrays, meta = self.state()
        return ckpt.save_checkpoint(directory, self.step, arrays, meta, keep=self.config.keep_checkpoints)

    def load_checkpoint(self, path):
        """Load a checkpoint of a run with the same model config into this trainer (to continue it)."""
        arrays, meta = ckpt.load_checkpoint(path)
        where = ckpt.resolve_checkpoint(path)
        _check_same(where, "model class", meta.get("model", {}).get("class"), type(self.model).__name__)
        _check_same(where, "model config", _comparable(meta["model"].get("config")), _comparable(self.model.config))
        _check_same(where, "diffusion config", meta.get("diffusion"), self.diffusion.config())
        betas = arrays.get("schedule/betas")
        if betas is None or betas.shape != np.shape(self.diffusion.schedule.betas) or not np.array_equal(betas, self.diffusion.schedule.betas):
            raise CheckpointError(f"{where}: checkpoint does not match: its noise schedule differs")
        load_model_state(self.model, arrays, meta, where)
        try:
            self.optimizer.load_state_dict(ckpt.unflatten_state(meta["states"]["optimizer"], arrays, where))
            self.ema.load_state_dict(ckpt.unflatten_state(meta["states"]["ema"], arrays, where))
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"{where}: optimizer or EMA state does not match: {e}") from None
        self.step = int(meta["step"])
        self.losses = [float(v) for v in meta.get("losses", [])][: self.step]
        return meta

    @classmethod
    def resume(cls, path, dataset=None, backend=None, out_dir=None, progress=True, **overrides):
        """A Trainer continuing the run whose (latest) checkpoint is at `path` (a run's out_dir works).

        The model, diffusion, training and data configs come from the checkpoint; the dataset is
        reloaded from its data spec unless given. overrides: TrainConfig fields that may change
        without changing the run's randomness (sample_every, checkpoint_every, keep_checkpoints, ...).
        """
        run_dir = path
        if checkpoint_location(path) != path:
            path = checkpoint_location(path)
        else:
            run_dir = os.path.dirname(os.path.dirname(os.path.abspath(ckpt.resolve_checkpoint(path))))
        arrays, meta = ckpt.load_checkpoint(path)
        where = ckpt.resolve_checkpoint(path)
        diffusion = diffusion_from_checkpoint(arrays, meta, where, backend=backend, ema=False)
        data_info = meta.get("data") or {}
        if dataset is None:
            if "spec" not in data_info:
                raise CheckpointError(f"{where}: the checkpoint names no data spec; pass dataset=")
            from .data import load_dataset

            dataset = load_dataset(data_info["spec"], **{k: data_info[k] for k in ("n", "seed", "image_size") if data_info.get(k) is not None})
        train_cfg = dict(meta.get("train") or {})
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        config = TrainConfig(**{k: v for k, v in train_cfg.items() if k in fields})
        config = dataclasses.replace(config, **overrides)
        trainer = cls(diffusion, dataset, out_dir=out_dir or run_dir, config=config, data_info=data_info, progress=progress)
        trainer.load_checkpoint(where)
        return trainer


# ---------------------------------------------------------------------------------------------
# rebuilding models from checkpoints


def build_model(meta, where, backend=None):
    """A fresh model of the class and config a checkpoint's JSON names (only refdiff's own classes)."""
    info = meta.get("model")
    if not isinstance(info, dict) or info.get("class") not in MODEL_CLASSES or not isinstance(info.get("config"), dict):
        raise CheckpointError(f"{where}: checkpoint names no known model (expected one of {sorted(MODEL_CLASSES)})")
    cls = getattr(importlib.import_module(MODEL_CLASSES[info["class"]]), info["class"])
    config = dict(info["config"])
    for k, v in config.items():
        if isinstance(v, list):
            config[k] = tuple(v)
    if backend is not None:
        config["backend"] = backend
    try:
        return cls(**config)
    except Exception as e:
        raise CheckpointError(f"{where}: cannot build {info['class']} from the checkpoint's config: {e}") from None


def load_model_state(model, arrays, meta, where, prefix="model"):
    """Load the model weights of a checkpoint into `model`, checking names and shapes first."""
    state = ckpt.unflatten_state(meta["states"][prefix], arrays, where)
    ckpt.load_matching(model.state_dict(), state, where)
    try:
        model.load_state_dict(state, strict=True)
    except Exception as e:
        raise CheckpointError(f"{where}: cannot load the model weights: {e}") from None


def diffusion_from_checkpoint(arrays, meta, where, backend=None, ema=True):
    """A GaussianDiffusion with the model of a checkpoint (EMA weights if ema and present)."""
    from ..gaussian.schedule import NoiseSchedule

    model = build_model(meta, where, backend=backend)
    load_model_state(model, arrays, meta, where)
    if ema and "ema" in meta.get("states", {}):
        params = list(model.parameters())
        shadow = EMA(params)
        try:
            shadow.load_state_dict(ckpt.unflatten_state(meta["states"]["ema"], arrays, where))
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"{where}: EMA state does not match the model: {e}") from None
        shadow.copy_to(params)
    if "schedule/betas" not in arrays:
        raise CheckpointError(f"{where}: the arrays file has no schedule/betas")
    d = dict(meta.get("diffusion") or {})
    d.pop("T", None)
    try:
        return GaussianDiffusion(model, NoiseSchedule(np.asarray(arrays["schedule/betas"], dtype=np.float64)), **d)
    except Exception as e:
        raise CheckpointError(f"{where}: bad diffusion config in the checkpoint: {e}") from None


def checkpoint_location(path):
    """A run directory's checkpoints folder (path/checkpoints) if it has one, else path itself."""
    inner = os.path.join(path, "checkpoints")
    return inner if os.path.isdir(inner) else path


def load_diffusion(path, backend=None, ema=True):
    """(diffusion, meta) from a run directory, checkpoint directory or checkpoint file, ready to
    sample (with the EMA weights by default; ema=False: the training weights)."""
    path = checkpoint_location(path)
    arrays, meta = ckpt.load_checkpoint(path)
    return diffusion_from_checkpoint(arrays, meta, ckpt.resolve_checkpoint(path), backend=backend, ema=ema), meta


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return str(x)


def _comparable(config):
    """A config with tuples as lists and the backend left out (a run may move between backends)."""
    c = _jsonable(dict(config or {}))
    c.pop("backend", None)
    return c


def _check_same(where, what, saved, current):
    if saved != current:
        raise CheckpointError(f"{where}: checkpoint does not match: {what} {saved!r} in the file, {current!r} here")
