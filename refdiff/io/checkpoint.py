"""Checkpoints: a safetensors file of arrays plus a JSON file of everything else, written atomically.

A checkpoint of step N in a directory is two files:

    step_00000N.safetensors   every array (model weights, EMA weights, optimizer moments, ...)
    step_00000N.json          the rest (configs, step, seed, scalars of the optimizer and EMA
                              states, the loss history) and the manifest
The manifest is two records of the JSON file that make the whole checkpoint verifiable:
"arrays" (the arrays file's name, size and SHA-256) and "json_sha256" (the SHA-256 of the JSON
file's own content: every other key, serialised canonically, see json_digest). A bit flip or an
edit anywhere in either file is refused with CheckpointError. To change a checkpoint's JSON on
purpose (say, a data path after moving the data), use rewrite_meta(), which records the new hash.

Writing is atomic: each file is written to a temporary file in the same directory, flushed and
fsync'ed, then renamed over its final name with os.replace (atomic on POSIX and Windows). The
arrays file goes first and the JSON file last: the JSON file is the commit mark, so a save that
is interrupted anywhere leaves either no new JSON file (the previous checkpoint stays the
latest) or a complete checkpoint. Older checkpoints are removed only after a save succeeded,
each JSON file before its arrays file, so that a listed checkpoint (one with a JSON file) always
has its arrays. What a killed save or prune can leave behind (temporary files, an arrays file
without its JSON) is removed by remove_incomplete(), which the trainer calls when a run starts or
resumes. A save that fails (a full disk, a directory that became read-only) raises
CheckpointWriteError naming the path and the checkpoint that was kept.

Reading never unpickles (safetensors holds raw arrays, JSON holds plain data), so loading a file
never runs code. A truncated, corrupt or mismatched file raises CheckpointError naming the file
and the problem.

Nested states (an optimizer's state_dict, say) are stored as a JSON skeleton in which every array
is replaced by {"__tensor__": key}, and the arrays under those keys in the safetensors file:
see flatten_state / unflatten_state.

This module is plumbing: it knows nothing of models or diffusion.
"""
import hashlib
import json
import os
import re
import shutil
import tempfile

import numpy as np

from ..backend import to_numpy

FORMAT = "refdiff-checkpoint"
VERSION = 2  # 2: the JSON's own hash in the manifest ("json_sha256"); version 1 files are still read
READABLE_VERSIONS = (1, 2)
MANIFEST_KEYS = ("arrays", "json_sha256")
_NAME = re.compile(r"^step_(\d+)\.json$")
_ARRAYS_NAME = re.compile(r"^step_(\d+)\.safetensors$")
_TEMP_PREFIX, _TEMP_SUFFIX = ".tmp-", ".part"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt, or does not match what is loaded into."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (directory not writable, disk full); the message names the
    path and says which checkpoint was kept."""


# ---------------------------------------------------------------------------------------------
# nested states <-> (JSON skeleton, flat dict of arrays)


def _is_array(x):
    return hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, (np.generic,))


def _to_host(a):
    """A contiguous NumPy array from a NumPy or CuPy array."""
    return np.ascontiguousarray(to_numpy(a))


def flatten_state(state, prefix):
    """Split a nested state into a JSON-able skeleton and a flat {key: numpy array} dict.

    Dicts (string keys), lists and tuples are walked; arrays become {"__tensor__": key} with
    key = prefix + "/" + path; NumPy scalars become Python numbers; None, bool, int, float and
    str stay. Anything else is an error (it could not be loaded without unpickling).
    """
    arrays = {}

    def walk(x, path):
        if _is_array(x):
            arrays[path] = _to_host(x)
            return {"__tensor__": path}
        if isinstance(x, dict):
            out = {}
            for k, v in x.items():
                if not isinstance(k, str):
                    raise TypeError(f"state key {k!r} at {path!r} is not a string")
                out[k] = walk(v, f"{path}/{k}")
            return out
        if isinstance(x, (list, tuple)):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(x)]
        if isinstance(x, np.generic):
            return x.item()
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise TypeError(f"cannot store a {type(x).__name__} at {path!r} in a checkpoint")

    return walk(state, prefix), arrays


def unflatten_state(skeleton, arrays, where="checkpoint"):
    """Inverse of flatten_state: put the arrays back into the skeleton."""

    def walk(x):
        if isinstance(x, dict):
            if set(x) == {"__tensor__"}:
                key = x["__tensor__"]
                if key not in arrays:
                    raise CheckpointError(f"{where}: array {key!r} named in the JSON file is missing")
                return arrays[key]
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x

    return walk(skeleton)


# ---------------------------------------------------------------------------------------------
# atomic writes


def _fsync_dir(directory):
    """Make a rename in `directory` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path, data):
    """Write `data` to `path` so that `path` holds either its old content or all of `data`.

    Temp file in the same directory (same file system, so the rename is atomic), write, flush,
    fsync, os.replace, fsync the directory. On any error the temp file is removed.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(directory)


# ---------------------------------------------------------------------------------------------
# save / find / load


def checkpoint_paths(directory, step):
    """(arrays_path, json_path) of the checkpoint of `step` in `directory`."""
    stem = os.path.join(directory, f"step_{int(step):08d}")
    return stem + ".safetensors", stem + ".json"


def list_checkpoints(directory):
    """[(step, json_path)] of the committed checkpoints in `directory`, oldest first."""
    if not os.path.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        m = _NAME.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(directory, name)))
    return sorted(found)


def latest_checkpoint(directory):
    """The JSON path of the newest committed checkpoint in `directory`, or None."""
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def json_digest(record):
    """SHA-256 (hex) of a checkpoint JSON record without its manifest keys, serialised canonically
    (sorted keys, no spaces, ASCII): the same for any formatting of the same content.

    The manifest records are left out because each is checked against what it describes: the
    arrays record against the arrays file, json_sha256 against this digest.
    """
    body = {k: v for k, v in record.items() if k not in MANIFEST_KEYS}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True, ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def arrays_digest(arrays):
    """SHA-256 (hex) of a flat {name: array} dict: every name, dtype, shape and the bytes, in name order.
    The same for the same arrays wherever they are held (NumPy or CuPy, any memory layout)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = _to_host(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode("ascii"))
        h.update(a.tobytes())
    return h.hexdigest()


def _describe_kept(directory, step):
    """Which checkpoint a failed save of `step` leaves as the latest, in words."""
    kept = [(s, p) for s, p in list_checkpoints(directory) if s != step]
    if not kept:
        return "no earlier checkpoint exists in this directory"
    s, p = kept[-1]
    return f"kept: the checkpoint of step {s} ({p}), which a resumed run continues from"


def save_checkpoint(directory, step, arrays, meta, keep=2):
    """Write the checkpoint of `step`: `arrays` ({key: array}) and `meta` (JSON-able dict).

    Returns the JSON path. Keeps the newest `keep` checkpoints (None or 0: keep all), removing each
    older checkpoint's JSON file before its arrays file. A failed write raises CheckpointWriteError
    naming the path and the checkpoint that was kept; the partial files are removed.
    """
    from safetensors.numpy import save

    arrays_path, json_path = checkpoint_paths(directory, step)
    json_existed = os.path.exists(json_path)
    host = {k: _to_host(v) for k, v in arrays.items()}
    blob = save(host)
    record = {
        "format": FORMAT,
        "version": VERSION,
        "step": int(step),
        **meta,
    }
    record["arrays"] = {"file": os.path.basename(arrays_path), "bytes": len(blob),
                        "sha256": hashlib.sha256(blob).hexdigest()}
    record["json_sha256"] = json_digest(record)
    text = json.dumps(record, indent=1, allow_nan=True)
    target = arrays_path
    try:
        os.makedirs(directory, exist_ok=True)
        atomic_write_bytes(arrays_path, blob)  # 1. the arrays
        target = json_path
        atomic_write_bytes(json_path, text.encode("utf-8"))  # 2. the commit mark
    except OSError as e:
        if target == json_path and not json_existed:  # the arrays landed, their JSON did not
            _remove_quietly(arrays_path)
        raise CheckpointWriteError(
            f"{target}: cannot write the checkpoint of step {int(step)} ({e.strerror or e}); "
            f"{_describe_kept(directory, int(step))}") from e
    if keep:
        for old_step, old_json in list_checkpoints(directory)[:-keep]:
            old_arrays, _ = checkpoint_paths(directory, old_step)
            _remove_quietly(old_json)  # first the commit mark: the checkpoint is no longer listed
            _remove_quietly(old_arrays)
    return json_path


def rewrite_meta(json_path, meta):
    """Replace the JSON file of a checkpoint with `meta` (a dict read from it and edited on
    purpose), recording its new hash; the arrays record must be left as it was."""
    record = dict(meta)
    record["json_sha256"] = json_digest(record)
    atomic_write_bytes(json_path, json.dumps(record, indent=1, allow_nan=True).encode("utf-8"))
    return json_path


def _remove_quietly(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def remove_incomplete(directory):
    """Remove what an interrupted save or prune leaves in a checkpoint directory: temporary files
    (.tmp-*.part) and arrays files whose JSON file is missing. Returns the removed paths."""
    if not os.path.isdir(directory):
        return []
    names = set(os.listdir(directory))
    removed = []
    for name in sorted(names):
        m = _ARRAYS_NAME.match(name)
        orphan = m is not None and f"step_{m.group(1)}.json" not in names
        if orphan or (name.startswith(_TEMP_PREFIX) and name.endswith(_TEMP_SUFFIX)):
            path = os.path.join(directory, name)
            _remove_quietly(path)
            removed.append(path)
    if removed:
        _fsync_dir(directory)
    return removed


def check_writable(directory, need_bytes):
    """Raise CheckpointWriteError unless checkpoints can be written to `directory`: it can be
    created, a file can be written in it, and at least `need_bytes` are free on its disk."""
    try:
        os.makedirs(directory, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise CheckpointWriteError(
            f"{directory}: cannot write checkpoints there ({e.strerror or e}); choose another "
            f"output directory") from None
    free = shutil.disk_usage(directory).free
    if free < need_bytes:
        raise CheckpointWriteError(
            f"{directory}: {free / 2**20:.1f} MiB free, a checkpoint of this run needs about "
            f"{need_bytes / 2**20:.1f} MiB: free some space or choose another output directory")
    return directory


def resolve_checkpoint(path):
    """A checkpoint's JSON path from a directory (its latest checkpoint) or a .json/.safetensors path."""
    if os.path.isdir(path):
        latest = latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"{path}: no checkpoint (step_*.json) in this directory")
        return latest
    if path.endswith(".safetensors"):
        path = path[: -len(".safetensors")] + ".json"
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint directory or file")
    return path


def load_checkpoint(path):
    """Read a checkpoint: returns (arrays, meta) with arrays a {key: numpy array} dict.

    `path` is a checkpoint directory (the latest one is read), or a step_*.json or step_*.safetensors
    file. Checks the JSON (parses, format, version, its own hash, the structure of the manifest and
    the step), the arrays file (exists, size, SHA-256), parses the arrays with safetensors, and
    checks that every array the JSON names is there. Any failure raises CheckpointError naming the
    file and the problem. What the content means (configs, states) is checked by the reader of the
    content (refdiff.training.trainer).
    """
    from safetensors.numpy import load

    json_path = resolve_checkpoint(path)
    try:
        with open(json_path, "rb") as f:
            raw = f.read()
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{json_path}: corrupt checkpoint JSON ({e})") from None
    except OSError as e:
        raise CheckpointError(f"{json_path}: cannot read the checkpoint JSON ({e.strerror or e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{json_path}: not a refdiff checkpoint (no \"format\": \"{FORMAT}\")")
    version = meta.get("version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{json_path}: checkpoint version {version!r}, this refdiff reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    _check_json_hash(meta, json_path, version)
    info = _check_arrays_record(meta.get("arrays"), json_path)
    _check_step(meta.get("step"), json_path)
    arrays_path = os.path.join(os.path.dirname(json_path), info["file"])
    if not os.path.exists(arrays_path):
        raise CheckpointError(f"{arrays_path}: arrays file of checkpoint {json_path} not found")
    with open(arrays_path, "rb") as f:
        blob = f.read()
    if len(blob) != info["bytes"]:
        raise CheckpointError(
            f"{arrays_path}: truncated or overwritten: {len(blob)} bytes, the checkpoint JSON records {info['bytes']}"
        )
    if hashlib.sha256(blob).hexdigest() != info["sha256"]:
        raise CheckpointError(f"{arrays_path}: corrupt: SHA-256 differs from the one recorded in {json_path}")
    try:
        arrays = load(blob)
    except Exception as e:  # safetensors raises its own SafetensorError
        raise CheckpointError(f"{arrays_path}: not a valid safetensors file ({e})") from None
    _check_tensor_references(meta, arrays, json_path)
    return arrays, meta


def _check_json_hash(meta, json_path, version):
    """The JSON content against the manifest's json_sha256 (version 2; version 1 has none)."""
    recorded = meta.get("json_sha256")
    if version == 1:
        if recorded is not None:  # a version-2 file whose version was changed
            raise CheckpointError(f"{json_path}: corrupt checkpoint JSON (version 1 with a json_sha256 record)")
        return
    if not isinstance(recorded, str) or not _SHA256.match(recorded):
        raise CheckpointError(f"{json_path}: corrupt checkpoint JSON (no valid \"json_sha256\" record)")
    if json_digest(meta) != recorded:
        raise CheckpointError(
            f"{json_path}: corrupt or edited checkpoint JSON: its content differs from the SHA-256 recorded "
            f"in its manifest (to edit a checkpoint on purpose, use refdiff.io.checkpoint.rewrite_meta)")


def _check_arrays_record(info, json_path):
    """The manifest's arrays record: {"file": the step's .safetensors name, "bytes": int >= 0,
    "sha256": 64 hex digits}."""
    def bad(what):
        return CheckpointError(f"{json_path}: corrupt checkpoint JSON (the \"arrays\" record: {what})")

    if not isinstance(info, dict) or not {"file", "bytes", "sha256"} <= set(info):
        raise CheckpointError(f"{json_path}: corrupt checkpoint JSON (no valid \"arrays\" record)")
    name = info["file"]
    if not isinstance(name, str) or os.path.basename(name) != name or not _ARRAYS_NAME.match(name):
        raise bad(f"file must be a step_*.safetensors name in the same directory, got {name!r}")
    size = info["bytes"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise bad(f"bytes must be an integer >= 0, got {size!r}")
    if not isinstance(info["sha256"], str) or not _SHA256.match(info["sha256"]):
        raise bad(f"sha256 must be 64 hex digits, got {info['sha256']!r}")
    return info


def _check_step(step, json_path):
    """The step is an integer >= 0, the one in the file name (step_<step>.json)."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{json_path}: corrupt checkpoint JSON (step must be an integer >= 0, got {step!r})")
    m = _NAME.match(os.path.basename(json_path))
    if m and int(m.group(1)) != step:
        raise CheckpointError(f"{json_path}: corrupt checkpoint JSON (step {step} in a file named for step {int(m.group(1))})")


def _check_tensor_references(meta, arrays, json_path):
    """Every {"__tensor__": key} of the JSON names a string key of an array of the arrays file."""
    stack = [meta]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            if "__tensor__" in x:
                key = x["__tensor__"]
                if set(x) != {"__tensor__"} or not isinstance(key, str):
                    raise CheckpointError(f"{json_path}: corrupt checkpoint JSON (a malformed tensor reference {x!r})")
                if key not in arrays:
                    raise CheckpointError(f"{json_path}: array {key!r} named in the JSON file is missing from the arrays file")
                continue
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)


def load_matching(target, source, where):
    """Check that `source` ({name: array}) has exactly the names and shapes of `target` ({name: array}).

    Raises CheckpointError listing missing names, unexpected names and shape mismatches.
    """
    missing = sorted(set(target) - set(source))
    unexpected = sorted(set(source) - set(target))
    shapes = [
        f"{k}: checkpoint {tuple(source[k].shape)} vs model {tuple(target[k].shape)}"
        for k in sorted(set(target) & set(source))
        if tuple(source[k].shape) != tuple(target[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    if shapes:
        problems.append("shape mismatch " + "; ".join(shapes[:5]))
    if problems:
        raise CheckpointError(f"{where}: checkpoint does not match the model: " + ", ".join(problems))
