"""Progressive distillation, stage by stage (Salimans & Ho 2022 Algorithm 2): 2N teacher steps -> N student steps.

    teacher = a trained GaussianDiffusion (v-prediction: the student starts from its weights)
    for N = start / 2, start / 4, ..., final:
        student = ProgressiveDistillation(copy of teacher's network, teacher, N)   (refdiff.distillation)
        train it `steps` steps with the Trainer; its EMA weights become its weights
        teacher = student

Each stage is one Trainer run (out_dir/steps_N when out_dir is given): it checkpoints as any run, and
its checkpoint holds the teacher's weights, so Trainer.resume(out_dir/steps_N, dataset=data)
continues it bit for bit (NumPy).
"""
import os

from ..distillation import ProgressiveDistillation
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
                             progress=False, **train_options):
    """Halve the sampling steps from start_steps (the first teacher's) down to final_steps, one
    distill_stage per halving. Returns the list of students [N = start/2, ..., final]."""
    students = []
    n = start_steps // 2
    while n >= final_steps:
        stage_dir = None if out_dir is None else os.path.join(out_dir, f"steps_{n}")
        teacher, _ = distill_stage(teacher, n, dataset, steps_per_stage, out_dir=stage_dir, progress=progress,
                                   **train_options)
        students.append(teacher)
        n //= 2
    return students
