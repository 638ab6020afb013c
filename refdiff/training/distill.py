"""Progressive distillation, stage by stage (Salimans & Ho 2022 Algorithm 2): 2N teacher steps -> N student steps.

    teacher = a trained GaussianDiffusion (v-prediction: the student starts from its weights)
    for N = start / 2, start / 4, ..., final:
        student = ProgressiveDistillation(copy of teacher's network, teacher, N)   (refdiff.distillation)
        train it `steps` steps with the Trainer; its EMA weights become its weights
        teacher = student

Each stage is one Trainer run (out_dir/steps_N when out_dir is given): it checkpoints as any run, and
its checkpoint holds the teacher's weights, so Trainer.resume(out_dir/steps_N, dataset=data)
continues it bit for bit (NumPy); progressive_distillation(..., resume=True) skips the finished
stages and continues the one that was interrupted.

Consistency distillation (Song et al. 2023 Algorithm 2; refdiff.consistency) is one Trainer run:
consistency_distillation(teacher, data, steps) starts the student from a copy of the teacher's network.
"""
import os

from ..consistency import ConsistencyDistillation
from ..distillation import ProgressiveDistillation
from ..io.checkpoint import latest_checkpoint
from .trainer import Trainer


def copy_network(model):
    """A fresh network of model's class and config with a copy of its weights (Algorithm 2: eta <- theta)."""
    clone = type(model)(**model.config, backend=model.backend.name)
    clone.load_state_dict(model.state_dict())
    return clone


def distill_stage(teacher, student_steps, dataset, steps, out_dir=None, progress=False, **train_options):
    """One stage: a student of `teacher` with student_steps DDIM steps, trained `steps` steps on dataset.
    train_options: TrainConfig fields. Returns (student ProgressiveDistillation with its EMA weights, Trainer)."""
    student = ProgressiveDistillation(copy_network(teacher.model), teacher, student_steps)
    trainer = Trainer(student, dataset, out_dir=out_dir, progress=progress, **train_options)
    trainer.train(steps)
    trainer.ema.copy_to(trainer.params)
    return student, trainer


def progressive_distillation(teacher, dataset, start_steps, final_steps, steps_per_stage, out_dir=None,
                             progress=False, resume=False, **train_options):
    """Halve the sampling steps from start_steps (the first teacher's) down to final_steps, one
    distill_stage per halving. Returns the list of students [N = start/2, ..., final].
    resume: a stage whose directory holds a checkpoint is continued from it (Trainer.resume, its teacher
    read from the checkpoint) up to steps_per_stage, not started again."""
    students = []
    n = start_steps // 2
    while n >= final_steps:
        stage_dir = None if out_dir is None else os.path.join(out_dir, f"steps_{n}")
        if resume and stage_dir is not None and _has_run(stage_dir):
            teacher = _continue(stage_dir, dataset, steps_per_stage, progress).diffusion
        else:
            teacher, _ = distill_stage(teacher, n, dataset, steps_per_stage, out_dir=stage_dir, progress=progress,
                                       **train_options)
        students.append(teacher)
        n //= 2
    return students


def consistency_distillation(teacher, dataset, steps, out_dir=None, progress=False, resume=False, num_boundaries=18,
                             solver="heun", mu=0.95, **train_options):
    """Consistency distillation of `teacher` (Song et al. 2023 Algorithm 2): the student starts as a copy
    of the teacher's network and trains `steps` steps in all. resume: continue the run in out_dir
    (Trainer.resume: teacher, theta- and optimizer from its checkpoint). Returns (ConsistencyDistillation
    with its EMA weights, Trainer)."""
    if resume and out_dir is not None and _has_run(out_dir):
        trainer = _continue(out_dir, dataset, steps, progress)
        return trainer.diffusion, trainer
    cd = ConsistencyDistillation(copy_network(teacher.model), teacher, num_boundaries=num_boundaries, solver=solver, mu=mu)
    trainer = Trainer(cd, dataset, out_dir=out_dir, progress=progress, **train_options)
    trainer.train(steps)
    trainer.ema.copy_to(trainer.params)
    return cd, trainer


def _has_run(directory):
    return latest_checkpoint(os.path.join(directory, "checkpoints")) is not None


def _continue(directory, dataset, total_steps, progress):
    """Trainer.resume(directory) trained up to total_steps, its EMA weights then copied into the model."""
    trainer = Trainer.resume(directory, dataset=dataset, progress=progress)
    if trainer.step < total_steps:
        trainer.train(total_steps - trainer.step)
    trainer.ema.copy_to(trainer.params)
    return trainer
