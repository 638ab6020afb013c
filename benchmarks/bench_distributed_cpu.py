"""Data-parallel training on the CPU: throughput of N processes, the share of a step spent in the
gradient Allreduce, and a projection of the Allreduce cost of the CIFAR-10 U-Net on a cluster.

    mpiexec -n 1 python benchmarks/bench_distributed_cpu.py --steps 8     # one process (through DataParallel)
    mpiexec -n 2 python benchmarks/bench_distributed_cpu.py --steps 8     # two: each the same per-process batch
    python benchmarks/bench_distributed_cpu.py --project                  # the projection only (no MPI)

Measured (under mpiexec): a small U-Net (base_channels 32, channel_mults (1, 2), one res block,
no attention, 16x16x3 images), a per-process batch of 8 (the global batch grows with N: weak
scaling), one BLAS thread per process; a step = loss + backward + Allreduce + clip + AdamW + EMA.
Reported: images per second (global batch x steps / wall time, median of the steps after one
warm-up), the time inside the Allreduce calls (their own wall time, which includes waiting for
the slower rank), and a timed Allreduce of one 25 MiB bucket between the processes.

Projected (ring Allreduce, the algorithm NCCL and large-message MPI use): each of N ranks sends
and receives 2 (N-1)/N of the bytes, in 2 (N-1) latency-bound rounds per call:
    t(bucket) = 2 (N-1)/N * bytes / bandwidth + 2 (N-1) * latency
summed over the buckets of the DDPM CIFAR-10 U-Net (35.7M float32 parameters, 143 MB), cut at
25 MiB by refdiff.training.distributed.GradientBuckets, plus the scalars call.
"""
import argparse
import os
import statistics
import time

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

CIFAR10 = dict(in_channels=3, base_channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2,
               attention_resolutions=(16,), sample_size=32)
# (name, bandwidth in GB/s per direction per rank, latency in s) -- stated, not measured here
INTERCONNECTS = [
    ("25 GbE (TCP)", 2.5, 30e-6),
    ("100 Gb/s InfiniBand EDR", 11.0, 3e-6),
    ("200 Gb/s InfiniBand HDR", 22.0, 3e-6),
    ("NVLink 4 in one 8-GPU H100 node (NCCL bus bandwidth)", 350.0, 10e-6),
]
MAX_N = {"NVLink 4 in one 8-GPU H100 node (NCCL bus bandwidth)": 8}


class TimedEngine:
    """Wraps an engine and adds up the wall time of its Allreduce calls."""

    def __init__(self, inner):
        self.inner, self.name, self.seconds, self.calls = inner, inner.name, 0.0, 0

    def allreduce(self, buf):
        t0 = time.perf_counter()
        self.inner.allreduce(buf)
        self.seconds += time.perf_counter() - t0
        self.calls += 1


def measure(steps, per_rank_batch):
    from mpi4py import MPI

    import refdiff as rd
    from refdiff.training.data import Dataset
    from refdiff.training.distributed import DataParallel, MPIEngine
    from refdiff.training.trainer import Trainer

    comm = MPI.COMM_WORLD
    parallel = DataParallel()
    engine = parallel.engine = TimedEngine(MPIEngine(comm))
    x = np.random.default_rng(0).uniform(-1, 1, (256, 3, 16, 16)).astype(np.float32)
    model = rd.UNet(in_channels=3, base_channels=32, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(),
                    sample_size=16, norm_groups=8, seed=0)
    diffusion = rd.GaussianDiffusion(model, rd.NoiseSchedule.linear(T=1000))
    N = parallel.world_size
    trainer = Trainer(diffusion, Dataset(x, kind="images"), progress=False, parallel=parallel,
                      batch_size=per_rank_batch * N, checkpoint_minutes=0)
    trainer.train(1)  # warm-up (and the start-up agreement)
    step_s, comm_s = [], []
    for _ in range(steps):
        comm.Barrier()
        before = engine.seconds
        t0 = time.perf_counter()
        trainer.train_step()
        step_s.append(time.perf_counter() - t0)
        comm_s.append(engine.seconds - before)
    # one 25 MiB bucket, timed alone
    buf = np.ones(25 * 2**20 // 4, dtype=np.float32)
    times = []
    for _ in range(5):
        comm.Barrier()
        t0 = time.perf_counter()
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        times.append(time.perf_counter() - t0)
    steps_all = comm.gather(step_s, root=0)
    comm_all = comm.gather(comm_s, root=0)
    if parallel.is_main:
        n_params = sum(int(p.data.size) for p in trainer.params)
        step = statistics.median(max(s) for s in zip(*steps_all))  # a step ends when the slowest rank's does
        comm_med = statistics.median(statistics.median(c) for c in comm_all)
        print(f"{N} process(es), U-Net {n_params:,} parameters, per-process batch {per_rank_batch}, "
              f"global batch {per_rank_batch * N}, {steps} timed steps")
        print(f"  step (median, slowest rank): {step * 1e3:.0f} ms  ->  {per_rank_batch * N / step:.1f} images/s")
        print(f"  inside Allreduce per step (median over ranks): {comm_med * 1e3:.2f} ms = {100 * comm_med / step:.1f}% "
              f"of the step, {engine.calls // (steps + 1)} calls per step, buckets {parallel.buckets.sizes_bytes()} bytes")
        t = statistics.median(times)
        if N > 1:
            algbw = buf.nbytes / t / 1e9
            print(f"  Allreduce of one 25 MiB bucket: {t * 1e3:.1f} ms (algorithm bandwidth {algbw:.2f} GB/s, "
                  f"bus bandwidth {algbw * 2 * (N - 1) / N:.2f} GB/s)")
            moved = sum(parallel.buckets.sizes_bytes()) / (buf.nbytes / t)
            print(f"  of the time inside Allreduce, moving the step's bytes at that bandwidth takes {moved * 1e3:.2f} ms "
                  f"({100 * moved / step:.1f}% of the step); the rest is waiting for the slower rank")


def project():
    import refdiff as rd
    from refdiff.training.distributed import BUCKET_MB, GradientBuckets

    model = rd.UNet(**CIFAR10)
    params = list(model.parameters())
    buckets = GradientBuckets(params, np, int(BUCKET_MB * 2**20))
    sizes = buckets.sizes_bytes()
    total = sum(sizes)
    print(f"CIFAR-10 U-Net: {sum(p.data.size for p in params):,} parameters in {len(params)} arrays, "
          f"{total / 1e6:.1f} MB per step in {len(sizes)} Allreduce calls "
          f"(buckets of {', '.join(f'{s / 2**20:.1f}' for s in sizes[:-1])} MiB, and {sizes[-1]} B of scalars)")
    print("| interconnect (stated bandwidth, latency) | N = 2 | N = 8 | N = 64 |")
    print("| --- | --- | --- | --- |")
    for name, gbps, latency in INTERCONNECTS:
        row = []
        for N in (2, 8, 64):
            if N > MAX_N.get(name, N):
                row.append("n/a")
                continue
            t = sum(2 * (N - 1) / N * s / (gbps * 1e9) + 2 * (N - 1) * latency for s in sizes)
            row.append(f"{t * 1e3:.1f} ms")
        print(f"| {name} ({gbps:g} GB/s, {latency * 1e6:g} us) | " + " | ".join(row) + " |")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=8, help="per-process batch")
    p.add_argument("--project", action="store_true", help="print the projection only (no MPI needed)")
    a = p.parse_args()
    if a.project:
        project()
    else:
        measure(a.steps, a.batch)
