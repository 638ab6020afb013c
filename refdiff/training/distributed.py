"""Data parallelism: N processes train one model, each on its shard of every global batch.

    mpiexec -n N refdiff train ...                  the command line (N detected from mpiexec)
    mpiexec -n N python train.py                    a script whose Trainer gets parallel="auto" (the default)

One step on rank r of N, global batch B = config.batch_size, shard b = B / N:

    idx  = batch_indices(step)[r b : (r+1) b]       the one-process run's global batch, cut in N
    loss = diffusion.loss(x0[idx], y[idx], rng)     rng = SeedSequence([seed, 2, step, r])
    loss.backward()
    g    <- (g_0 + ... + g_{N-1}) / N               Allreduce (sum) over flat buckets, then / N
    loss <- (loss_0 + ... + loss_{N-1}) / N         in the same call as "which parameters got a gradient"
    clip, AdamW, EMA                                as one process does, on identical inputs

Every shard holds b samples, so the mean of the N shard means is the mean over the global batch:
the averaged gradient is the one-process gradient of batch B, up to the order of float32 sums.
Clipping, the optimizer and the EMA then run on identical inputs on every rank, so weights, EMA
and optimizer state stay bit-identical (an MPI or NCCL sum gives every rank the same bits).

Randomness: the data order is the one-process order (batch_indices of the global batch); the
draws of step s on rank r (t, noise, label dropout) come from SeedSequence([seed, 2, s, r]), or
SeedSequence([seed, 2, s]) when N = 1 (the one-process run, bit for bit). A run is reproducible
and resumable bit for bit for a given N; resumed with another N it keeps the data order but
draws other noise.

Start-up and failures (never a hang, the same message on every rank):
  - agree(fn): every rank runs fn; if any raised, every rank raises the same error (same class
    where refdiff knows it, message prefixed with the failing rank). The command line runs its
    whole start-up (data, model, resume) through it.
  - check_same(record): once at the start of training every rank's configuration (model,
    diffusion, training options, data fingerprint, step, weights digest, output directory,
    refdiff version) is compared with rank 0's; the first difference is named.
  - main_only(fn): rank 0 alone writes (checkpoints, pictures, the writability check); its outcome
    is broadcast, so a failed save raises on every rank. Before each checkpoint the weights
    digest is compared across ranks (check_identical).
  - batch_size not divisible by N: a ValueError raised identically on every rank.
  - The loss read after the Allreduce is the same number on every rank, so a NaN stops every
    rank at the same step. An error that only one rank raises mid-run (a bug, out of memory)
    cannot be agreed on; the command line then calls MPI_Abort, and scripts should run under
    `python -m mpi4py script.py`, which does the same.

Engines (where the sum runs):
  - "mpi": mpi4py Allreduce on host buffers; on the CUDA backend each bucket is staged through
    the host (works with any MPI, CUDA-aware or not).
  - "nccl": NCCL allReduce on device buffers (CuPy's cupy.cuda.nccl), the NCCL unique id sent
    from rank 0 over MPI; each process uses GPU (local rank mod GPU count): create the
    DataParallel(backend="cuda") before building the model so that it lands on that GPU.
  - "auto": nccl for gradients on the GPU, mpi otherwise.

Messages between ranks are JSON (encoded bytes over MPI), never pickles. Needs mpi4py and an MPI
library: pip install "refdiff[mpi]" (mpi4py + the MPICH wheel).
"""
import builtins
import hashlib
import json
import os

import numpy as np

from ..backend import array_module, to_numpy
from ..checks import check_choice, check_global_batch, check_positive_real

# environment variables by which MPI launchers announce the number of processes
# (MPICH/Hydra, Intel MPI and Slurm's PMI: PMI_SIZE; Open MPI: OMPI_COMM_WORLD_SIZE; MVAPICH2)
LAUNCHER_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
PARALLEL_CHOICES = ("auto", "none", "mpi")
ENGINES = ("auto", "mpi", "nccl")
BUCKET_MB = 25.0  # PyTorch DDP's default bucket size
MPI_MISSING = ("data-parallel training needs mpi4py and an MPI library: pip install \"refdiff[mpi]\" "
               "(mpi4py and the MPICH wheel), then run it with mpiexec -n N")


class DistributedError(RuntimeError):
    """The ranks disagree (configuration, weights), or another rank failed: raised on every rank
    with the same message."""


def launched_world_size(environ=None):
    """The number of processes an MPI launcher started (0 when none announces itself)."""
    environ = os.environ if environ is None else environ
    for name in LAUNCHER_SIZE_VARIABLES:
        value = environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def import_mpi():
    """mpi4py's MPI module (initialises MPI); ImportError saying what to install otherwise."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(f"{MPI_MISSING} ({e})") from None
    return MPI


def data_parallel(parallel, backend=None):
    """What Trainer(parallel=...) means: None (one process) or a DataParallel.

    parallel: None or "none" (one process), "auto" (MPI when an MPI launcher started more than one
    process, see LAUNCHER_SIZE_VARIABLES), "mpi" (MPI_COMM_WORLD, even with one process), or a
    DataParallel (passed through). backend: the model's backend, for the GPU choice of "cuda".
    """
    if parallel is None or isinstance(parallel, DataParallel):
        return parallel
    check_choice(parallel, PARALLEL_CHOICES, "parallel (or None, or a DataParallel)")
    if parallel == "none" or (parallel == "auto" and launched_world_size() <= 1):
        return None
    return DataParallel(backend=backend)


# ---------------------------------------------------------------------------------------------
# messages between ranks: JSON, not pickle


def allgather_json(comm, record):
    """Every rank's JSON-able `record`, as a list indexed by rank (two MPI calls)."""
    data = np.frombuffer(json.dumps(record, sort_keys=True).encode(), dtype=np.uint8)
    sizes = np.zeros(comm.Get_size(), dtype=np.int64)
    comm.Allgather(np.array([data.size], dtype=np.int64), sizes)
    out = np.empty(int(sizes.sum()), dtype=np.uint8)
    comm.Allgatherv(data, [out, (sizes, np.concatenate([[0], np.cumsum(sizes)[:-1]]))])
    ends = np.cumsum(sizes)
    return [json.loads(out[end - n:end].tobytes().decode()) for n, end in zip(sizes, ends)]


def bcast_json(comm, record, root=0):
    """Rank `root`'s JSON-able `record` on every rank (two MPI calls)."""
    data = np.frombuffer(json.dumps(record).encode(), dtype=np.uint8) if comm.Get_rank() == root else None
    size = np.array([0 if data is None else data.size], dtype=np.int64)
    comm.Bcast(size, root=root)
    buf = data.copy() if data is not None else np.empty(int(size[0]), dtype=np.uint8)
    comm.Bcast(buf, root=root)
    return json.loads(buf.tobytes().decode())


def _error_classes():
    """Exception classes an agreed error keeps (others become DistributedError)."""
    from ..io.checkpoint import CheckpointError, CheckpointWriteError

    known = {c.__name__: c for c in (CheckpointError, CheckpointWriteError, DistributedError)}
    for name in ("ValueError", "TypeError", "KeyError", "OSError", "FileNotFoundError", "PermissionError",
                 "ImportError", "ModuleNotFoundError", "FloatingPointError", "RuntimeError", "MemoryError"):
        known[name] = getattr(builtins, name)
    return known


def _one_line(error):
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(str(text).split())


def _raise_agreed(outcomes, extra_classes=()):
    """Raise the first failure of [(class name, message) or None per rank] on this rank."""
    failed = [(r, o) for r, o in enumerate(outcomes) if o is not None]
    if not failed:
        return
    name, message = failed[0][1]
    if len(outcomes) > 1 and not (len(failed) == len(outcomes) and all(o == failed[0][1] for _, o in failed)):
        others = [r for r, _ in failed[1:]]
        message = f"rank {failed[0][0]} of {len(outcomes)}: {message}" + (f" (ranks {others} failed too)" if others else "")
    classes = {**_error_classes(), **{c.__name__: c for c in extra_classes}}
    raise classes.get(name, DistributedError)(message)


# ---------------------------------------------------------------------------------------------
# flat buckets of gradients


class GradientBuckets:
    """The parameters' gradients laid out in a few flat buffers (at most bucket_bytes each, one
    dtype per bucket, parameters in order), plus a float64 buffer of scalars:
    [loss, 1 per parameter that has a gradient]. Buffers live where the gradients live (xp)."""

    def __init__(self, params, xp, bucket_bytes):
        self.shapes = [tuple(p.data.shape) for p in params]
        self.buckets = []  # (flat buffer, [(param index, offset, size)])
        slots, dtype, used = [], None, 0
        for i, p in enumerate(params):
            n, d = int(p.data.size), np.dtype(p.data.dtype)
            if slots and (d != dtype or used + n * d.itemsize > bucket_bytes):
                self.buckets.append((xp.empty(used // dtype.itemsize, dtype=dtype), slots))
                slots, used = [], 0
            slots.append((i, used // d.itemsize, n))
            dtype, used = d, used + n * d.itemsize
        self.buckets.append((xp.empty(used // dtype.itemsize, dtype=dtype), slots))
        self.scalars = xp.zeros(1 + len(params), dtype=np.float64)

    def sizes_bytes(self):
        """The bytes of each Allreduce of a step: the buckets, then the scalars."""
        return [int(b.nbytes) for b, _ in self.buckets] + [int(self.scalars.nbytes)]


# ---------------------------------------------------------------------------------------------
# engines: where the sum runs


class MPIEngine:
    """Sum in place with mpi4py's Allreduce on host memory (CuPy buffers staged through the host)."""

    name = "mpi"

    def __init__(self, comm):
        self.comm = comm
        self.MPI = import_mpi()

    def allreduce(self, buf):
        if array_module(buf) is np:
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
            return
        host = to_numpy(buf)  # device -> host (waits for the GPU)
        self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
        buf.set(host)


class NCCLEngine:
    """Sum in place with NCCL's allReduce on device buffers, on the current CuPy stream.

    Start-up: rank 0 draws the NCCL unique id, MPI broadcasts it, every rank joins the NCCL
    communicator (cupy.cuda.nccl.NcclCommunicator(N, id, rank)). nccl: the module to use (CuPy's
    cupy.cuda.nccl by default; tests pass a stand-in).
    """

    name = "nccl"

    def __init__(self, comm, nccl=None):
        if nccl is None:
            try:
                from cupy.cuda import nccl
            except ImportError as e:
                raise ImportError(f"engine 'nccl' needs CuPy built with NCCL (pip install \"refdiff[cuda]\"): {e}") from None
            if not getattr(nccl, "available", True):
                raise ImportError("engine 'nccl': CuPy finds no NCCL library (pip install nvidia-nccl-cu12 or -cu13)")
        self.nccl = nccl
        unique_id = list(nccl.get_unique_id()) if comm.Get_rank() == 0 else None
        unique_id = tuple(bcast_json(comm, unique_id))
        self.comm = nccl.NcclCommunicator(comm.Get_size(), unique_id, comm.Get_rank())
        self.dtypes = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64,
                       np.dtype(np.float16): nccl.NCCL_FLOAT16}

    def allreduce(self, buf):
        dtype = np.dtype(buf.dtype)
        if dtype not in self.dtypes:
            raise TypeError(f"engine 'nccl' sums float16/32/64 buffers, got {dtype}")
        if array_module(buf) is np:  # a host buffer: only the CPU tests' stand-in accepts it
            pointer, stream = buf.ctypes.data, 0
        else:
            import cupy

            pointer, stream = buf.data.ptr, cupy.cuda.get_current_stream().ptr
        self.comm.allReduce(pointer, pointer, buf.size, self.dtypes[dtype], self.nccl.NCCL_SUM, stream)


def select_device(comm):
    """Make GPU (local rank mod GPU count) CuPy's current device; returns its index.

    The local rank is the rank among the processes of this machine (MPI_COMM_TYPE_SHARED)."""
    import cupy

    MPI = import_mpi()
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        index = local.Get_rank() % cupy.cuda.runtime.getDeviceCount()
    finally:
        local.Free()
    cupy.cuda.Device(index).use()
    return index


# ---------------------------------------------------------------------------------------------
# the ranks


class DataParallel:
    """N processes (an MPI communicator), one model replica each: shards, draws, sums, agreement.

    comm: an mpi4py communicator (default MPI.COMM_WORLD). engine: "auto", "mpi" or "nccl" (see
    the module docstring), or an object with .allreduce(buf) and .name. backend: "cuda" picks
    this process's GPU now (select_device), before the model is built. bucket_mb: the size of
    one Allreduce bucket in MiB.
    """

    def __init__(self, comm=None, engine="auto", backend=None, bucket_mb=BUCKET_MB):
        MPI = import_mpi()
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.world_size = self.comm.Get_size()
        if isinstance(engine, str):
            check_choice(engine, ENGINES, "engine")
        bucket_mb = check_positive_real(bucket_mb, "bucket_mb")
        self.engine_choice = engine
        self.engine = None if isinstance(engine, str) else engine
        self.bucket_bytes = int(bucket_mb * 2**20)
        self.buckets = None
        self.device = select_device(self.comm) if backend == "cuda" else None

    @property
    def is_main(self):
        """True on rank 0: the rank that writes files and prints."""
        return self.rank == 0

    def __repr__(self):
        engine = self.engine.name if self.engine is not None else self.engine_choice
        return f"DataParallel(rank {self.rank} of {self.world_size}, engine {engine})"

    # ---- data and draws -----------------------------------------------------------------------

    def check_batch_size(self, batch_size):
        """Raise ValueError (the same on every rank) unless the global batch divides by N."""
        return check_global_batch(batch_size, self.world_size)

    def shard(self, indices):
        """This rank's part of a global batch of indices: indices[r b : (r+1) b], b = len / N."""
        b = len(indices) // self.world_size
        return indices[self.rank * b:(self.rank + 1) * b]

    def step_rng(self, seed, step):
        """The generator of this rank's draws at `step`: SeedSequence([seed, 2, step, rank]);
        SeedSequence([seed, 2, step]) with one process (the one-process trainer's stream)."""
        entropy = [int(seed), 2, int(step)] + ([int(self.rank)] if self.world_size > 1 else [])
        return np.random.default_rng(np.random.SeedSequence(entropy))

    def rank_seed(self, seed):
        """The sampling seed of this rank: `seed` with one process, else one drawn from
        SeedSequence([seed, 3, rank]) (stream 3: sampling shards)."""
        if seed is None or self.world_size == 1:
            return seed
        return int(np.random.SeedSequence([int(seed), 3, int(self.rank)]).generate_state(1, np.uint64)[0] >> 1)

    # ---- the gradients ------------------------------------------------------------------------

    def _engine(self, xp):
        if self.engine is None:
            choice = self.engine_choice
            if choice == "auto":
                choice = "mpi" if xp is np else "nccl"
            self.engine = MPIEngine(self.comm) if choice == "mpi" else NCCLEngine(self.comm)
        return self.engine

    def average(self, params, loss):
        """After loss.backward() on every rank: replace every gradient by its mean over the ranks
        and return `loss` holding the mean loss (a handful of Allreduce calls: one per bucket,
        one for the scalars). A parameter that got a gradient on some ranks only counts zeros from
        the others; one that got it on no rank keeps grad None on NumPy, while on the GPU (where
        reading the flags would wait for the device) it gets a zero gradient. refdiff's models
        give every parameter a gradient at every step, so the two agree there."""
        params = list(params)
        xp = array_module(params[0].data)
        if self.buckets is None:
            self.buckets = GradientBuckets(params, xp, self.bucket_bytes)
        engine = self._engine(xp)
        buckets = self.buckets
        for buf, slots in buckets.buckets:
            for i, offset, n in slots:
                g = params[i].grad
                if g is None:
                    buf[offset:offset + n] = 0
                else:
                    buf[offset:offset + n] = g.reshape(-1)
            engine.allreduce(buf)
        scalars = buckets.scalars
        scalars[0] = loss.data.reshape(()) if hasattr(loss.data, "reshape") else loss.data
        has_grad = np.array([p.grad is not None for p in params], dtype=np.float64)
        scalars[1:] = has_grad if xp is np else xp.asarray(has_grad)
        engine.allreduce(scalars)
        counts = to_numpy(scalars[1:]) if xp is np else None  # read on the host: NumPy only
        N = self.world_size
        for buf, slots in buckets.buckets:
            buf /= N  # a sum of N shard gradients -> their mean (exact for N a power of 2)
            for i, offset, n in slots:
                if counts is not None and counts[i] == 0:
                    params[i].grad = None
                else:
                    params[i].grad = buf[offset:offset + n].reshape(buckets.shapes[i])
        loss.data = xp.asarray(scalars[0] / N, dtype=loss.data.dtype)
        return loss

    # ---- agreement ----------------------------------------------------------------------------

    def agree(self, fn, *args, extra_classes=(), **kwargs):
        """Run fn(*args, **kwargs) on every rank; if any rank raised, raise on every rank the first
        failure (its class where known, else DistributedError; message prefixed with the rank unless
        every rank failed alike). Returns fn's result."""
        result, outcome = None, None
        try:
            result = fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - every failure is shared, then raised
            outcome = [type(e).__name__, _one_line(e)]
        _raise_agreed(allgather_json(self.comm, outcome), extra_classes)
        return result

    def main_only(self, fn, *args, **kwargs):
        """Run fn on rank 0 only and broadcast its outcome: a failure raises on every rank (same
        class where known, same message); otherwise every rank returns rank 0's (JSON-able) result."""
        record = None
        if self.is_main:
            try:
                record = {"result": fn(*args, **kwargs)}
            except Exception as e:  # noqa: BLE001
                record = {"error": [type(e).__name__, _one_line(e)]}
        record = bcast_json(self.comm, record)
        if "error" in record:
            _raise_agreed([record["error"]])
        return record["result"]

    def main_flag(self, flag):
        """Rank 0's boolean, on every rank (a decision made by rank 0's clock, say): one Bcast."""
        buf = np.array([bool(flag)], dtype=np.uint8)
        self.comm.Bcast(buf, root=0)
        return bool(buf[0])

    def check_same(self, record, what="the configuration"):
        """Compare every rank's JSON-able `record` with rank 0's; DistributedError on every rank
        naming the first key that differs and the ranks, e.g. "train.lr: 0.001 on rank 0, 0.002 on rank 1"."""
        records = allgather_json(self.comm, record)
        flat = [_flatten(r) for r in records]
        problems = []
        for r in range(1, len(flat)):
            for key in sorted(set(flat[0]) | set(flat[r])):
                a, b = flat[0].get(key, "<missing>"), flat[r].get(key, "<missing>")
                if a != b:
                    problems.append(f"{key}: {_short(a)} on rank 0, {_short(b)} on rank {r}")
                    break
        if problems:
            raise DistributedError(f"the {len(records)} processes disagree on {what} (checked at the start): "
                                   + "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more ranks" if len(problems) > 3 else ""))

    def check_identical(self, arrays, what="the model weights"):
        """DistributedError on every rank unless the arrays are bit-identical on every rank
        (compares SHA-256 digests)."""
        self.check_same({"digest": digest(arrays)}, what)

    # ---- sampling -----------------------------------------------------------------------------

    def counts(self, n):
        """How many of n samples each rank draws: n // N, plus one for the first n % N ranks."""
        return [n // self.world_size + (r < n % self.world_size) for r in range(self.world_size)]

    def sample(self, diffusion, n, y=None, seed=0, **options):
        """n samples drawn by the N ranks together and gathered on every rank, in rank order.

        Rank r draws counts(n)[r] samples (its part of the labels y) with diffusion.sample and seed
        rank_seed(seed); with one process this is diffusion.sample(n, y=y, seed=seed, **options).
        """
        counts = self.counts(n)
        start = sum(counts[:self.rank])
        mine = counts[self.rank]
        shape = None
        if mine:
            part_y = None if y is None else np.asarray(y)[start:start + mine]
            x = np.ascontiguousarray(diffusion.sample(mine, y=part_y, seed=self.rank_seed(seed), **options))
            shape, dtype = x.shape[1:], x.dtype
        info = allgather_json(self.comm, None if shape is None else [list(shape), str(dtype)])
        shape, dtype = tuple(info[0][0]), np.dtype(info[0][1])  # rank 0 always draws (n >= 1)
        if not mine:
            x = np.empty((0, *shape), dtype=dtype)
        per = int(np.prod(shape))
        out = np.empty((n, *shape), dtype=dtype)
        sizes = np.array(counts, dtype=np.int64) * per
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self.comm.Allgatherv(x.reshape(-1), [out.reshape(-1), (sizes, offsets)])
        return out


def digest(arrays):
    """SHA-256 of a sequence of arrays (shapes, dtypes and bytes), as hex."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(to_numpy(a))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def run_record(trainer):
    """What every rank of a run must agree on at the start (DataParallel.check_same): the configs,
    the data's fingerprint, the step, digests of the weights, EMA and optimizer state, where
    checkpoints go and the refdiff version."""
    from importlib.metadata import PackageNotFoundError, version

    from .trainer import _comparable, _jsonable
    import dataclasses

    try:
        refdiff_version = version("refdiff")
    except PackageNotFoundError:
        refdiff_version = "unknown"
    arrays_of = lambda sd: [v for _, v in sorted(sd.items()) if hasattr(v, "shape")]  # noqa: E731
    y = trainer.y if trainer.y is not None else np.zeros(0)
    return {
        "refdiff version": refdiff_version,
        "model": {"class": type(trainer.model).__name__, "config": _comparable(trainer.model.config)},
        "diffusion": trainer.diffusion.config(),
        "backend": getattr(trainer.diffusion.backend, "name", "numpy"),
        "train": _jsonable(dataclasses.asdict(trainer.config)),
        "data": {"info": _jsonable(trainer.data_info), "sha256": digest([trainer.x, y])},
        "step": trainer.step,
        "losses sha256": hashlib.sha256(json.dumps(trainer.losses).encode()).hexdigest(),
        "weights sha256": digest([p.data for p in trainer.params]),
        "ema sha256": digest(arrays_of(trainer.ema.state_dict())),
        "optimizer sha256": digest(arrays_of(trainer.optimizer.state_dict())),
        "out_dir": None if trainer.out_dir is None else os.path.abspath(str(trainer.out_dir)),
    }


def _flatten(record, prefix=""):
    """{"a.b": value} from nested dicts (lists kept whole)."""
    if not isinstance(record, dict):
        return {prefix or "value": record}
    out = {}
    for k, v in record.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(_flatten(v, key) if isinstance(v, dict) else {key: v})
    return out


def _short(value, limit=80):
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
