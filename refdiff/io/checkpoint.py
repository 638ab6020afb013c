"""Checkpoints: a safetensors file of arrays plus a JSON file of everything else, written atomically.

A checkpoint of step N in a directory is two files:

    step_00000N.safetensors   every array (model weights, EMA weights, optimizer moments, ...)
    step_00000N.json          the rest (configs, step, seed, scalars of the optimizer and EMA
                              states, the loss history) and the size and SHA-256 of the arrays file

Writing is atomic: each file is written to a temporary file in the same directory, flushed and
fsync'ed, then renamed over its final name with os.replace (atomic on POSIX and Windows). The
arrays file goes first and the JSON file last: the JSON file is the commit mark, so a save that
is interrupted anywhere leaves either no new JSON file (the previous checkpoint stays the
latest) or a complete checkpoint. Older checkpoints are removed only after a save succeeded.

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
import tempfile

import numpy as np

from ..backend import to_numpy

FORMAT = "refdiff-checkpoint"
VERSION = 1
_NAME = re.compile(r"^step_(\d+)\.json$")


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt, or does not match what is loaded into."""


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
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".part")
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


def save_checkpoint(directory, step, arrays, meta, keep=2):
    """Write the checkpoint of `step`: `arrays` ({key: array}) and `meta` (JSON-able dict).

    Returns the JSON path. Keeps the newest `keep` checkpoints (None or 0: keep all).
    """
    from safetensors.numpy import save

    os.makedirs(directory, exist_ok=True)
    arrays_path, json_path = checkpoint_paths(directory, step)
    host = {k: _to_host(v) for k, v in arrays.items()}
    blob = save(host)
    atomic_write_bytes(arrays_path, blob)  # 1. the arrays
    record = {
        "format": FORMAT,
        "version": VERSION,
        "step": int(step),
        "arrays": {
            "file": os.path.basename(arrays_path),
            "bytes": len(blob),
            "sha256": hashlib.sha256(blob).hexdigest(),
        },
        **meta,
    }
    text = json.dumps(record, indent=1, allow_nan=True)
    atomic_write_bytes(json_path, text.encode("utf-8"))  # 2. the commit mark
    if keep:
        for old_step, old_json in list_checkpoints(directory)[:-keep]:
            for p in checkpoint_paths(directory, old_step):
                if os.path.exists(p):
                    os.remove(p)
    return json_path


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
    file. Checks the JSON (parses, format, version), the arrays file (exists, size, SHA-256), then
    parses the arrays with safetensors. Any failure raises CheckpointError naming the file.
    """
    from safetensors.numpy import load

    json_path = resolve_checkpoint(path)
    try:
        with open(json_path, "rb") as f:
            raw = f.read()
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{json_path}: corrupt checkpoint JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{json_path}: not a refdiff checkpoint (no \"format\": \"{FORMAT}\")")
    if meta.get("version") != VERSION:
        raise CheckpointError(
            f"{json_path}: checkpoint version {meta.get('version')!r}, this refdiff reads version {VERSION}"
        )
    info = meta.get("arrays")
    if not isinstance(info, dict) or not {"file", "bytes", "sha256"} <= set(info):
        raise CheckpointError(f"{json_path}: corrupt checkpoint JSON (no valid \"arrays\" record)")
    arrays_path = os.path.join(os.path.dirname(json_path), os.path.basename(str(info["file"])))
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
    return arrays, meta


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
