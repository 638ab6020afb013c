"""What the 2-process tests run under mpiexec (tests/test_distributed.py); not a test itself.

    python tests/mpi_driver.py train OUT.npz [--engine mpi|nccl|fake-nccl] [--steps K] [--classes] [--backend cuda]
        a tiny MLP trained K steps data-parallel; after every step the weights, EMA and optimizer
        state are checked bit-identical across the ranks; rank 0 writes the losses, the weights,
        the Allreduce calls per step, the bucket sizes and split samples to OUT.npz
    python tests/mpi_driver.py cli [--kill-before-step S | --fault KIND] -- REFDIFF ARGS...
        `refdiff train ...` (refdiff.cli.main); with --kill-before-step rank 0 SIGKILLs itself
        just before step S, as a crash would; --fault: "save" (rank 0's checkpoint writes fail),
        "nan" (rank 1's loss becomes NaN at step 2), "bug" (rank 1 raises RuntimeError at step 2)

"fake-nccl" runs the NCCL engine (refdiff.training.distributed.NCCLEngine, its start-up and its
allReduce calls) with a stand-in for cupy.cuda.nccl that sums the buffer behind the pointer it is
given with MPI, so that the NCCL code path is exercised on a CPU.
"""
import ctypes
import os
import signal
import sys

import numpy as np


def tiny_trainer(parallel, classes=False, batch_size=32, out_dir=None, backend="numpy", **options):
    """The run the tests compare: gaussians8 (512 points), MLP hidden 32 with 2 blocks, T=100."""
    import refdiff as rd
    from refdiff.training.data import load_dataset
    from refdiff.training.trainer import Trainer

    data = load_dataset("gaussians8", n=512, seed=0)
    model = rd.MLPDenoiser(dim=2, hidden=32, num_blocks=2, num_classes=8 if classes else None, seed=0,
                           backend=backend)
    diffusion = rd.GaussianDiffusion(model, rd.NoiseSchedule.linear(T=100))
    config = dict(batch_size=batch_size, lr=1e-2, warmup_steps=2, ema_decay=0.9, seed=0)
    config.update(options)
    return Trainer(diffusion, data, out_dir=out_dir, data_info={"spec": "gaussians8", "n": 512, "seed": 0},
                   progress=False, parallel=parallel, **config)


class FakeNccl:
    """A stand-in for cupy.cuda.nccl: the same names, allReduce summing host memory with MPI."""

    NCCL_FLOAT16, NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM = 6, 7, 8, 0
    available = True

    @staticmethod
    def get_unique_id():
        return tuple(int(v) for v in np.random.default_rng().integers(-128, 128, 128))  # NCCL: 128 chars

    class NcclCommunicator:
        def __init__(self, ndev, unique_id, rank):
            from mpi4py import MPI

            ids = MPI.COMM_WORLD.allgather(tuple(unique_id))
            assert all(i == ids[0] for i in ids), "ranks got different NCCL unique ids"
            assert len(unique_id) == 128 and ndev == MPI.COMM_WORLD.Get_size() and rank == MPI.COMM_WORLD.Get_rank()
            self.calls = 0

        def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
            from mpi4py import MPI

            assert sendbuf == recvbuf and op == FakeNccl.NCCL_SUM and stream == 0
            ctype = {FakeNccl.NCCL_FLOAT32: ctypes.c_float, FakeNccl.NCCL_FLOAT64: ctypes.c_double}[datatype]
            view = np.ctypeslib.as_array((ctype * count).from_address(recvbuf))
            MPI.COMM_WORLD.Allreduce(MPI.IN_PLACE, view, op=MPI.SUM)
            self.calls += 1


class CountingEngine:
    """An engine that counts the Allreduce calls of the one it wraps."""

    def __init__(self, inner):
        self.inner, self.name, self.calls = inner, inner.name, 0

    def allreduce(self, buf):
        self.calls += 1
        self.inner.allreduce(buf)


def train(out, engine="mpi", steps=4, classes=False, backend="numpy"):
    from mpi4py import MPI

    from refdiff.training.distributed import DataParallel, MPIEngine, NCCLEngine

    comm = MPI.COMM_WORLD
    parallel = DataParallel(backend=backend)  # picks this rank's GPU for "cuda"
    engines = {"mpi": lambda: MPIEngine(comm), "fake-nccl": lambda: NCCLEngine(comm, nccl=FakeNccl),
               "nccl": lambda: NCCLEngine(comm)}
    counting = parallel.engine = CountingEngine(engines[engine]())
    trainer = tiny_trainer(parallel, classes=classes, backend=backend, batch_size=64)  # global batch
    calls = []
    for _ in range(steps):
        before = counting.calls
        trainer.train(1)
        calls.append(counting.calls - before)
        parallel.check_identical([p.data for p in trainer.params], f"the weights after step {trainer.step}")
        parallel.check_identical(trainer.ema.shadow_params, f"the EMA after step {trainer.step}")
        opt = trainer.optimizer.state_dict()
        parallel.check_identical([opt[k] for k in sorted(opt) if k != "step"], f"the optimizer after step {trainer.step}")
    y = np.arange(7) % 8 if classes else None
    samples = parallel.sample(trainer.diffusion, 7, y=y, seed=5, sampler="ddim", steps=5, progress=False)
    parallel.check_identical([samples], "the gathered samples")
    if parallel.is_main:
        np.savez(out, losses=np.array(trainer.losses), calls=np.array(calls), world_size=parallel.world_size,
                 bucket_bytes=np.array(parallel.buckets.sizes_bytes()), samples=samples,
                 rank_seeds=np.array([parallel.rank_seed(5)]), counts=np.array(parallel.counts(7)),
                 **{f"param{i}": p.data for i, p in enumerate(trainer.params)},
                 **{f"ema{i}": s for i, s in enumerate(trainer.ema.shadow_params)})


def cli(argv, kill_before_step=None, fault=None):
    from refdiff import cli as refdiff_cli
    from refdiff.diffusion import GaussianDiffusion
    from refdiff.io import checkpoint
    from refdiff.io.checkpoint import CheckpointWriteError
    from refdiff.training.trainer import Trainer

    rank = int(os.environ.get("PMI_RANK", "0"))
    if fault == "save" and rank == 0:
        def save_checkpoint(directory, step, *args, **kwargs):
            raise CheckpointWriteError(f"cannot write {directory}: no space left on device (injected)")

        checkpoint.save_checkpoint = save_checkpoint
    if fault in ("nan", "bug") and rank == 1:
        loss = GaussianDiffusion.loss
        step = Trainer._step

        def nan_loss(self, *args, **kwargs):
            out = loss(self, *args, **kwargs)
            return out * float("nan")

        def train_step(self):
            if self.step == 2:
                if fault == "bug":
                    raise RuntimeError("a bug on rank 1 alone (injected)")
                self.diffusion.loss = nan_loss.__get__(self.diffusion)
            return step(self)

        Trainer._step = train_step

    if kill_before_step is not None:
        step = Trainer._step

        def train_step(self):
            if self.step == kill_before_step and (self.parallel is None or self.parallel.is_main):
                os.kill(os.getpid(), signal.SIGKILL)
            return step(self)

        Trainer._step = train_step
    return refdiff_cli.main(argv)


if __name__ == "__main__":
    mode, rest = sys.argv[1], sys.argv[2:]
    if mode == "train":
        import argparse

        p = argparse.ArgumentParser()
        p.add_argument("out")
        p.add_argument("--engine", default="mpi")
        p.add_argument("--steps", type=int, default=4)
        p.add_argument("--classes", action="store_true")
        p.add_argument("--backend", default="numpy")
        a = p.parse_args(rest)
        train(a.out, a.engine, a.steps, a.classes, a.backend)
    elif mode == "cli":
        kill = fault = None
        if rest[0] == "--kill-before-step":
            kill, rest = int(rest[1]), rest[2:]
        if rest[0] == "--fault":
            fault, rest = rest[1], rest[2:]
        assert rest[0] == "--"
        sys.exit(cli(rest[1:], kill, fault))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
