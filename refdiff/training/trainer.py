"""Trainer: the training loop of a GaussianDiffusion, with checkpoints that resume exactly.

    for step = 0, 1, ...:                             (DDPM Algorithm 1)
        x0, y = batch(step)                           shuffled each epoch
        lr = warmup_lr(step, lr, warmup_steps)        linear warmup
        loss = diffusion.loss(x0, y, cond_drop_prob)  random t and noise
        loss.backward(); clip_grad_norm; AdamW step   (Loshchilov & Hutter 2019)
        ema.step(params)                              weights for sampling (DDPM sec. 4)
        diffusion.after_optimizer_step(params)        if the objective has one (a consistency model's
                                                      target network theta-, Song et al. 2023 Algorithm 2)

Randomness: every random draw of step s comes from generators derived from (seed, s) with
numpy's SeedSequence: the batch order of epoch e from default_rng([seed, e])
(refdiff.training.data.batch_indices), t / noise / label dropout of step s from
SeedSequence([seed, 2, s]). So the whole random state of a run is
(seed, step): a run resumed from a checkpoint of step s draws exactly what the uninterrupted run
drew, and on the NumPy backend reproduces its losses bit for bit. (On a GPU backend, t, the noise
and the label dropout come from the diffusion's one device generator, seeded at its first loss:
a resumed cuda run draws differently from the uninterrupted one. See GaussianDiffusion.loss.)

A checkpoint (refdiff.io.checkpoint) holds the model weights, the EMA weights, the optimizer state
and the schedule's betas (GaussianDiffusion; a FlowMatching run's path is all config) in a safetensors file, and the configs (model, diffusion, training,
data), the step and the loss history in a JSON file. load_diffusion() rebuilds a model for
sampling from one; Trainer.resume() continues a run. Both read it through read_checkpoint(),
which checks the files' integrity and then the structure of what they hold (check_run_meta)
before anything is built from it.

Losing little to a crash: checkpoints are written every checkpoint_every steps and at least
every checkpoint_minutes minutes (both on by default), and at the end of train(). Before the
first step, train() removes what a killed save left in the checkpoint directory and checks that
the directory is writable and has room for a checkpoint. A save that fails raises
CheckpointWriteError naming the path and the checkpoint that was kept; the run resumes from it.

Several processes (refdiff.training.distributed): with parallel= a DataParallel (by default
whenever mpiexec started more than one process), each rank trains on its shard of the global
batch (batch_size) with draws from SeedSequence([seed, 2, s, rank]), the gradients and the loss
are averaged over the ranks after backward, rank 0 alone writes checkpoints and pictures, and
sampling is split across the ranks.
"""
import contextlib
import dataclasses
import importlib
import math
import os
import time
import warnings
from functools import partial

import numpy as np

from ..backend import array_module, to_numpy
from ..checks import (check_bool, check_nonnegative_real, check_positive_int, check_positive_real,
                      check_probability, check_seed, value_checks_on)
from ..io import checkpoint as ckpt
from ..io.checkpoint import CheckpointError
from .data import batch_indices
from .distributed import data_parallel
from ..diffusion import GaussianDiffusion, model_num_classes
from ..flow_matching import FlowMatching
from ..distillation import ProgressiveDistillation
from .classifier import NoisyClassification
from ..consistency import ConsistencyDistillation, ConsistencyTraining
from .optim import EMA, AdamW, clip_grad_norm, warmup_lr

# classes a checkpoint may name: a checkpoint never makes us import arbitrary code
MODEL_CLASSES = {"UNet": "refdiff.models.unet", "MLPDenoiser": "refdiff.models.mlp",
                 "NoiseClassifier": "refdiff.models.classifier"}
# a checkpoint's diffusion config names its objective ("objective"; absent: "diffusion")
DIFFUSION_CLASSES = {"diffusion": GaussianDiffusion, "flow_matching": FlowMatching,
                     "progressive_distillation": ProgressiveDistillation, "classifier": NoisyClassification,
                     "consistency_distillation": ConsistencyDistillation,
                     "consistency_training": ConsistencyTraining}


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
    checkpoint_every: int = 1000  # steps between checkpoints (0: no step-count trigger)
    checkpoint_minutes: float = 10.0  # also checkpoint when this much time passed since the last one (0: off)
    keep_checkpoints: int = 2

    def __post_init__(self):
        self.batch_size = check_positive_int(self.batch_size, "batch_size")
        self.lr = check_positive_real(self.lr, "lr")
        self.weight_decay = check_nonnegative_real(self.weight_decay, "weight_decay")
        if isinstance(self.adam_betas, (str, bytes)) or not hasattr(self.adam_betas, "__len__") or len(self.adam_betas) != 2:
            raise ValueError(f"adam_betas must be a pair (beta1, beta2), got {self.adam_betas!r}")
        self.adam_betas = tuple(check_probability(b, f"adam_betas[{i}]", open_high=True)
                                for i, b in enumerate(self.adam_betas))
        self.grad_clip = check_nonnegative_real(self.grad_clip, "grad_clip")
        self.ema_decay = check_probability(self.ema_decay, "ema_decay", open_high=True)
        self.ema_warmup = check_bool(self.ema_warmup, "ema_warmup")
        self.seed = check_seed(self.seed)
        self.cond_drop_prob = check_probability(self.cond_drop_prob, "cond_drop_prob")
        for name in ("warmup_steps", "sample_every", "checkpoint_every", "keep_checkpoints"):
            setattr(self, name, check_positive_int(getattr(self, name), name, minimum=0))
        self.sample_n = check_positive_int(self.sample_n, "sample_n")
        self.sample_steps = check_positive_int(self.sample_steps, "sample_steps")
        self.checkpoint_minutes = check_nonnegative_real(self.checkpoint_minutes, "checkpoint_minutes")


# How far data may stray past the range the sampler clips x0 to (the noise of the built-in 2-D
# toys reaches a few percent past [-1, 1]; data at 1.1 or beyond is on another scale).
DATA_RANGE_SLACK = 1.1


def check_data_range(x, diffusion):
    """Refuse float training data the sampler could not reproduce: with clip_sample (the default)
    samples are clipped to [-clip_sample_range, clip_sample_range], so data far outside that range
    (beyond DATA_RANGE_SLACK times it) would come back clipped without a word."""
    if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
        raise TypeError(f"dataset.x must be a float array, got dtype {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise ValueError("dataset.x contains NaN or inf")
    if not getattr(diffusion, "clip_sample", False):
        return
    limit = float(diffusion.clip_sample_range)
    lo, hi = float(x.min()), float(x.max())
    if max(-lo, hi) > DATA_RANGE_SLACK * limit:
        raise ValueError(
            f"the data lie in [{lo:.4g}, {hi:.4g}] but samples are clipped to [-{limit:g}, {limit:g}] "
            f"(clip_sample): rescale the data into [-{limit:g}, {limit:g}] (e.g. divide by {max(-lo, hi):.4g}), "
            f"or use GaussianDiffusion(..., clip_sample=False)")


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
    parallel: "auto" (data-parallel over MPI when mpiexec started several processes), "none" or
    None (one process), "mpi", or a refdiff.training.distributed.DataParallel; batch_size is then
    the global batch, divided evenly among the processes. On GPUs create
    DataParallel(backend="cuda") before the model, so that each process builds it on its own GPU.
    Other keyword arguments are TrainConfig fields.
    """

    def __init__(self, diffusion, dataset, out_dir=None, config=None, data_info=None, progress=True,
                 parallel="auto", **options):
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
        self.parallel = data_parallel(parallel)  # GPUs: pass DataParallel(backend="cuda"), made before the model
        if self.parallel is not None:
            self.parallel.check_batch_size(config.batch_size)
        self.progress = progress and (self.parallel is None or self.parallel.is_main)  # rank 0 prints
        self._agreed = False
        self.x = np.asarray(dataset.x)
        if self.x.ndim < 2 or len(self.x) == 0:
            raise ValueError(f"dataset.x must be a non-empty batch of samples, got shape {self.x.shape}")
        check_data_range(self.x, diffusion)
        self.num_classes = model_num_classes(self.model)
        # a coupling (Liu et al. 2022 sec. 2.2, reflow): dataset.noise[i] is the eps paired with dataset.x[i]
        self.noise = getattr(dataset, "noise", None)
        if self.noise is not None:
            self.noise = np.asarray(self.noise)
            if self.noise.shape != self.x.shape:
                raise ValueError(f"dataset.noise must have dataset.x's shape {self.x.shape}, got {self.noise.shape}")
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
        """Indices of the batch of `step`: shuffled epochs cut in batches (refdiff.training.data.batch_indices);
        with several processes, this rank's shard of it."""
        idx = batch_indices(len(self.x), self.config.batch_size, step, seed=self.config.seed)
        return idx if self.parallel is None else self.parallel.shard(idx)

    def loss_rng(self, step):
        """The generator of the draws of `step` (t, noise, label dropout): SeedSequence([seed, 2, step]),
        with several processes SeedSequence([seed, 2, step, rank])."""
        if self.parallel is None:
            return step_rng(self.config.seed, 2, step)
        return self.parallel.step_rng(self.config.seed, step)

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
        coupled = {} if self.noise is None else {"noise": self.noise[idx]}  # reflow's (sample, noise) pairs
        self.optimizer.lr = warmup_lr(self.step, cfg.lr, cfg.warmup_steps)
        self.optimizer.zero_grad()
        loss = self.diffusion.loss(x0, y, cond_drop_prob=cfg.cond_drop_prob if y is not None else 0.0, rng=self.loss_rng(self.step),
                                   **coupled)
        loss.backward()
        if self.parallel is not None:  # gradients and loss: their mean over the ranks, the same on every rank
            loss = self.parallel.average(self.params, loss)
        if value_checks_on(loss.data):  # free to read: NumPy (before the update: the weights stay as they were)
            _check_loss(float(loss.item()), self.step, update_made=False)
        if cfg.grad_clip:
            clip_grad_norm(self.params, cfg.grad_clip, sync=False)  # the norm is not read: no host sync
        self.optimizer.step()
        self.ema.step(self.params)
        after = getattr(self.diffusion, "after_optimizer_step", None)
        if after is not None:  # an objective's own state that follows the weights (consistency models' theta-)
            after(self.params)
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
        """Run `steps` more optimisation steps; returns their losses.

        With out_dir: first prepare_output() (clean up after a killed save, check that checkpoints
        can be written); then checkpoint every checkpoint_every steps, at least every
        checkpoint_minutes minutes, and at the end.
        """
        steps = check_positive_int(steps, "steps", minimum=0)
        cfg = self.config
        if self.parallel is not None and not self._agreed:  # once: every rank runs the same run
            from .distributed import run_record

            self.parallel.check_same(run_record(self))
            self._agreed = True
        if self.out_dir and steps:
            self._on_main(self.prepare_output)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, desc="training", unit="step", dynamic_ncols=True)
        start = len(self.losses)
        t0 = time.perf_counter()
        last_save = time.monotonic()
        saved_step = None
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
            due_by_steps = cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0
            due_by_time = cfg.checkpoint_minutes and time.monotonic() - last_save >= 60.0 * cfg.checkpoint_minutes
            if self.out_dir and cfg.checkpoint_minutes and self.parallel is not None:
                due_by_time = self.parallel.main_flag(due_by_time)  # rank 0's clock decides for all
            if self.out_dir and (due_by_steps or due_by_time):
                self.save_checkpoint()
                last_save, saved_step = time.monotonic(), self.step
        if bar is not None:
            bar.close()
        self.seconds = time.perf_counter() - t0
        if self.out_dir and steps and saved_step != self.step:
            self.save_checkpoint()
        return self.losses[start:]

    def checkpoint_dir(self):
        """Where this run's checkpoints go: out_dir/checkpoints."""
        return os.path.join(self.out_dir, "checkpoints")

    def checkpoint_bytes(self):
        """About the size of one checkpoint: model, EMA and two optimizer moments, plus 1 MiB of JSON."""
        weights = sum(int(p.data.nbytes) for p in self.params)
        return 4 * weights + 2**20

    def _on_main(self, fn, *args):
        """fn(*args) here, or with several processes on rank 0 alone, its failure raised on every rank."""
        if self.parallel is None:
            return fn(*args)
        return self.parallel.main_only(fn, *args)

    def prepare_output(self):
        """Before training: remove what a killed save left in the checkpoint directory (temporary
        files, arrays without their JSON) and check that it is writable with room for a checkpoint
        (CheckpointWriteError otherwise)."""
        directory = self.checkpoint_dir()
        ckpt.remove_incomplete(directory)
        ckpt.check_writable(directory, self.checkpoint_bytes())

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

        The diffusion's preview sampler (diffusion.preview_sampling: DDIM with sample_steps steps and
        use_clipped_model_output for GaussianDiffusion, flow_euler for FlowMatching).
        With several processes the samples are split across the ranks and rank 0 writes.
        """
        cfg = self.config
        n = n or cfg.sample_n
        path = path or os.path.join(self.out_dir, "samples", f"step_{self.step:08d}.png")
        y = None if self.num_classes is None else np.arange(n) % self.num_classes
        sample = self.diffusion.sample if self.parallel is None else partial(self.parallel.sample, self.diffusion)
        with self.ema_weights():
            x = sample(n, y=y, seed=seed, progress=False, **self.diffusion.preview_sampling(cfg.sample_steps))
        return self._on_main(self._write_samples, x, path)

    def _write_samples(self, x, path):
        from ..io.images import save_image_grid, save_scatter

        if x.ndim == 2 and x.shape[1] == 2:
            save_scatter(x, path, reference=self.x[:2000], title=f"step {self.step}")
        elif x.ndim == 4:
            save_image_grid(x, path, nrow=self.num_classes or None)
        else:
            path = path.replace(".png", ".npy")
            np.save(path, x)
        return path

    # ----------------------------------------------------------------------------------------
    # checkpoints

    def state(self):
        """(arrays, meta) of the run: everything a checkpoint holds."""
        self._read_losses()  # the loss history is complete (and checked) before it is saved
        model_skel, model_arrays = ckpt.flatten_state(self.model.state_dict(), "model")
        ema_skel, ema_arrays = ckpt.flatten_state(self.ema.state_dict(), "ema")
        opt_skel, opt_arrays = ckpt.flatten_state(self.optimizer.state_dict(), "optimizer")
        arrays = {**model_arrays, **ema_arrays, **opt_arrays, **self.diffusion.schedule_arrays()}
        meta = {
            "model": {"class": type(self.model).__name__, "config": _jsonable(self.model.config)},
            "diffusion": self.diffusion.config(),
            "train": _jsonable(dataclasses.asdict(self.config)),
            "data": _jsonable(self.data_info),
            "rng": self.rng_record(),
            "losses": self.losses,
            "states": {"model": model_skel, "ema": ema_skel, "optimizer": opt_skel},
        }
        return arrays, meta

    def rng_record(self):
        """How the run draws (stored in checkpoints): the seed, the generators, the number of processes."""
        n = 1 if self.parallel is None else self.parallel.world_size
        if n == 1:
            return {"seed": self.config.seed, "world_size": 1,
                    "generators": "batches: default_rng([seed, epoch]); step s: SeedSequence([seed, 2, s])"}
        return {"seed": self.config.seed, "world_size": n,
                "generators": f"batches: default_rng([seed, epoch]), each cut in {n} shards; "
                              "step s on rank r: SeedSequence([seed, 2, s, r])"}

    def save_checkpoint(self, directory=None):
        """Write the checkpoint of the current step (atomically); returns the JSON path.

        With several processes: the weights are first checked to be bit-identical on every rank,
        then rank 0 writes; a failure raises on every rank."""
        directory = directory or self.checkpoint_dir()
        if self.parallel is not None:
            self.parallel.check_identical([p.data for p in self.params], f"the model weights at step {self.step}")
        return self._on_main(self._write_checkpoint, directory)

    def _write_checkpoint(self, directory):
        arrays, meta = self.state()
        return ckpt.save_checkpoint(directory, self.step, arrays, meta, keep=self.config.keep_checkpoints)

    def load_checkpoint(self, path):
        """Load a checkpoint of a run with the same model config into this trainer (to continue it)."""
        arrays, meta, where = read_checkpoint(path)
        _check_same(where, "model class", meta.get("model", {}).get("class"), type(self.model).__name__)
        _check_same(where, "model config", _comparable(meta["model"].get("config")), _comparable(self.model.config))
        _check_same(where, "diffusion config", meta.get("diffusion"), self.diffusion.config())
        for key, expected in self.diffusion.schedule_arrays().items():
            saved = arrays.get(key)
            if saved is None or saved.shape != expected.shape or not np.array_equal(saved, expected):
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
    def resume(cls, path, dataset=None, backend=None, out_dir=None, progress=True, parallel="auto", **overrides):
        """A Trainer continuing the run whose (latest) checkpoint is at `path` (a run's out_dir works).

        The model, diffusion, training and data configs come from the checkpoint; the dataset is
        reloaded from its data spec unless given. overrides: TrainConfig fields that may change
        without changing the run's randomness (sample_every, checkpoint_every, keep_checkpoints, ...).
        parallel: as for Trainer(); with several processes every rank reads the checkpoint.
        """
        run_dir = path
        if checkpoint_location(path) != path:
            path = checkpoint_location(path)
        else:
            run_dir = os.path.dirname(os.path.dirname(os.path.abspath(ckpt.resolve_checkpoint(path))))
        ckpt.remove_incomplete(os.path.dirname(os.path.abspath(ckpt.resolve_checkpoint(path))))
        arrays, meta, where = read_checkpoint(path)
        diffusion = diffusion_from_checkpoint(arrays, meta, where, backend=backend, ema=False)
        data_info = meta.get("data") or {}
        if dataset is None:
            if not isinstance(data_info.get("spec"), str):
                raise CheckpointError(f"{where}: the checkpoint names no data spec; pass dataset=")
            from .data import load_dataset

            dataset = load_dataset(data_info["spec"], **{k: data_info[k] for k in ("n", "seed", "image_size") if data_info.get(k) is not None})
        train_cfg = dict(meta.get("train") or {})
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        try:
            config = TrainConfig(**{k: v for k, v in train_cfg.items() if k in fields})
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{where}: bad training config in the checkpoint: {e}") from None
        config = dataclasses.replace(config, **overrides)
        trainer = cls(diffusion, dataset, out_dir=out_dir or run_dir, config=config, data_info=data_info, progress=progress,
                      parallel=parallel)
        trainer.load_checkpoint(where)
        saved_n = (meta.get("rng") or {}).get("world_size", 1)
        n = 1 if trainer.parallel is None else trainer.parallel.world_size
        if saved_n != n and (trainer.parallel is None or trainer.parallel.is_main):
            warnings.warn(f"{where}: the run was trained by {saved_n} process(es) and continues on {n}: "
                          "same data order, other random draws (exact resume needs the same number)", stacklevel=2)
        return trainer


# ---------------------------------------------------------------------------------------------
# reading a run's checkpoint: integrity (refdiff.io.checkpoint), then structure


def read_checkpoint(path):
    """(arrays, meta, json_path) of a run's checkpoint, its files verified (ckpt.load_checkpoint)
    and its content checked (check_run_meta); CheckpointError naming the file otherwise."""
    arrays, meta = ckpt.load_checkpoint(path)
    where = ckpt.resolve_checkpoint(path)
    check_run_meta(meta, arrays, where)
    return arrays, meta, where


def check_run_meta(meta, arrays, where):
    """The structure of a trainer checkpoint, checked before anything is built from it.

    Required records and their types (model class and config, diffusion and training configs,
    the model / EMA / optimizer states); the loss history (real numbers, at most one per step);
    a known objective, and for a GaussianDiffusion the schedule's betas (a 1-D float array with T entries); every float array finite (model,
    EMA and optimizer alike); every size in the model config bounded by the number of model
    weights in the arrays file (so a corrupt size cannot allocate more than the file holds).
    """
    def bad(what):
        return CheckpointError(f"{where}: corrupt checkpoint: {what}")

    info = meta.get("model")
    if not isinstance(info, dict) or info.get("class") not in MODEL_CLASSES or not isinstance(info.get("config"), dict):
        raise CheckpointError(f"{where}: checkpoint names no known model (expected one of {sorted(MODEL_CLASSES)})")
    for key in ("diffusion", "train", "states"):
        if not isinstance(meta.get(key), dict):
            raise bad(f"the {key!r} record must be a JSON object, got {type(meta.get(key)).__name__}")
    if meta.get("data") is not None and not isinstance(meta["data"], dict):
        raise bad(f"the 'data' record must be a JSON object, got {type(meta['data']).__name__}")
    for key in ("model", "ema", "optimizer"):
        if not isinstance(meta["states"].get(key), dict):
            raise bad(f"states.{key} must be a JSON object")
    losses = meta.get("losses", [])
    if not isinstance(losses, list) or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in losses):
        raise bad("losses must be a list of numbers")
    if len(losses) > meta["step"]:
        raise bad(f"{len(losses)} losses recorded for {meta['step']} steps")

    objective = meta["diffusion"].get("objective", "diffusion")
    if objective not in DIFFUSION_CLASSES:
        raise bad(f"unknown objective {objective!r} (expected one of {sorted(DIFFUSION_CLASSES)})")
    if objective != "flow_matching":  # a NoiseSchedule, stored as its betas; the flow path is all config
        betas = arrays.get("schedule/betas")
        if betas is None:
            raise CheckpointError(f"{where}: the arrays file has no schedule/betas")
        if betas.ndim != 1 or len(betas) < 1 or not np.issubdtype(betas.dtype, np.floating):
            raise bad(f"schedule/betas must be a 1-D float array, got {betas.dtype} {betas.shape}")
        T = meta["diffusion"].get("T", len(betas))
        if T != len(betas):
            raise bad(f"the diffusion config says T={T!r}, the arrays file holds {len(betas)} betas")

    for key, a in arrays.items():
        if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
            raise bad(f"array {key!r} contains NaN or inf")

    n_weights = sum(int(a.size) for k, a in arrays.items() if k.startswith("model/"))
    for key, value in info["config"].items():
        values = value if isinstance(value, list) else [value]
        for v in values:
            if key != "seed" and isinstance(v, int) and not isinstance(v, bool) and v > n_weights:
                raise bad(f"model config {key}={value!r} exceeds the {n_weights} model weights the arrays file holds")


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
    """A GaussianDiffusion (or FlowMatching, by the config's "objective") with the model of a
    checkpoint (EMA weights if ema and present)."""
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
    d = dict(meta.get("diffusion") or {})
    objective = d.pop("objective", "diffusion")
    if objective == "flow_matching":
        try:
            return FlowMatching(model, **d)
        except Exception as e:
            raise CheckpointError(f"{where}: bad flow-matching config in the checkpoint: {e}") from None
    if "schedule/betas" not in arrays:
        raise CheckpointError(f"{where}: the arrays file has no schedule/betas")
    d.pop("T", None)
    if objective == "progressive_distillation":
        return _distillation_from_checkpoint(model, arrays, meta, where, d, backend)
    if objective == "classifier":  # a noise-conditional classifier (refdiff.training.classifier)
        return NoisyClassification(model, NoiseSchedule(np.asarray(arrays["schedule/betas"], dtype=np.float64)))
    if objective in ("consistency_distillation", "consistency_training"):
        return _consistency_from_checkpoint(model, arrays, meta, where, d, backend, objective)
    try:
        return GaussianDiffusion(model, NoiseSchedule(np.asarray(arrays["schedule/betas"], dtype=np.float64)), **d)
    except Exception as e:
        raise CheckpointError(f"{where}: bad diffusion config in the checkpoint: {e}") from None


def _distillation_from_checkpoint(model, arrays, meta, where, d, backend):
    """A ProgressiveDistillation stage: the student `model`, its teacher rebuilt from the checkpoint's
    "teacher/..." arrays (a network of the student's class and config)."""
    from ..gaussian.schedule import NoiseSchedule

    teacher_model = _stored_network(arrays, meta, where, backend, "teacher")
    try:
        student_steps = d.pop("student_steps")
        d.pop("prediction_type", None)
        teacher = GaussianDiffusion(teacher_model, NoiseSchedule(np.asarray(arrays["schedule/betas"], dtype=np.float64)),
                                    prediction_type=d.pop("teacher_prediction_type"), **d)
        return ProgressiveDistillation(model, teacher, student_steps)
    except Exception as e:
        raise CheckpointError(f"{where}: bad progressive-distillation config in the checkpoint: {e}") from None


def _stored_network(arrays, meta, where, backend, prefix):
    """A network of the checkpoint's model class and config holding the arrays "prefix/..." (a teacher, a target)."""
    network = build_model(meta, where, backend=backend)
    skeleton, _ = ckpt.flatten_state(network.state_dict(), prefix)
    load_model_state(network, arrays, {"states": {prefix: skeleton}}, where, prefix=prefix)
    return network


def _consistency_from_checkpoint(model, arrays, meta, where, d, backend, objective):
    """A ConsistencyDistillation run (the student `model`, its teacher "teacher/...") or a ConsistencyTraining
    one (at the checkpoint's step k), with the target network theta- ("target/..."); the networks are of
    the student's class and config."""
    from ..gaussian.schedule import NoiseSchedule

    schedule = NoiseSchedule(np.asarray(arrays["schedule/betas"], dtype=np.float64))
    teacher_model = _stored_network(arrays, meta, where, backend, "teacher") if objective == "consistency_distillation" else None
    target = _stored_network(arrays, meta, where, backend, "target")
    try:
        if teacher_model is None:
            cm = ConsistencyTraining(model, schedule, **d)
            cm.set_step(meta["step"])
        else:
            teacher = GaussianDiffusion(teacher_model, schedule, prediction_type=d.pop("teacher_prediction_type"),
                                        clip_sample=False)
            cm = ConsistencyDistillation(model, teacher, **d)
    except Exception as e:
        raise CheckpointError(f"{where}: bad consistency-model config in the checkpoint: {e}") from None
    cm.target = target
    return cm


def checkpoint_location(path):
    """A run directory's checkpoints folder (path/checkpoints) if it has one, else path itself."""
    inner = os.path.join(path, "checkpoints")
    return inner if os.path.isdir(inner) else path


def load_diffusion(path, backend=None, ema=True):
    """(diffusion, meta) from a run directory, checkpoint directory or checkpoint file, ready to
    sample (with the EMA weights by default; ema=False: the training weights)."""
    arrays, meta, where = read_checkpoint(checkpoint_location(path))
    return diffusion_from_checkpoint(arrays, meta, where, backend=backend, ema=ema), meta


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
