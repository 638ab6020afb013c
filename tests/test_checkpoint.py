"""Checkpoints: atomic saves, exact round trips, and a clear error for every kind of bad file."""
import json
import os
import pickle

import numpy as np
import pytest

from refdiff.io import checkpoint as ckpt
from refdiff.io.checkpoint import CheckpointError


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "model/w": rng.standard_normal((3, 4)).astype(np.float32),
        "model/b": rng.standard_normal(4).astype(np.float64),
        "opt/step": np.array(7, dtype=np.int64),
    }


def _save(directory, step, seed=0, **kw):
    return ckpt.save_checkpoint(str(directory), step, _arrays(seed), {"note": f"step {step}"}, **kw)


def test_save_then_load_round_trips_arrays_and_meta_exactly(tmp_path):
    _save(tmp_path, 5)
    arrays, meta = ckpt.load_checkpoint(str(tmp_path))
    expected = _arrays()
    assert set(arrays) == set(expected)
    for k in expected:
        assert arrays[k].dtype == expected[k].dtype
        np.testing.assert_array_equal(arrays[k], expected[k])  # bit-exact: raw bytes on disk
    assert meta["step"] == 5 and meta["note"] == "step 5"


def test_latest_checkpoint_is_the_highest_step(tmp_path):
    for step in (3, 10, 7):
        _save(tmp_path, step, keep=0)
    assert ckpt.latest_checkpoint(str(tmp_path)).endswith("step_00000010.json")
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path))] == [3, 7, 10]


def test_keep_prunes_all_but_the_newest_checkpoints(tmp_path):
    for step in range(1, 6):
        _save(tmp_path, step, keep=2)
    assert sorted(os.listdir(tmp_path)) == [
        "step_00000004.json",
        "step_00000004.safetensors",
        "step_00000005.json",
        "step_00000005.safetensors",
    ]


@pytest.mark.parametrize("failing_call", [1, 2], ids=["kill-during-arrays-file", "kill-during-json-file"])
def test_interrupted_save_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch, failing_call):
    """A save killed after writing its temp file (os.replace never happens) changes nothing visible."""
    _save(tmp_path, 1, seed=1)
    calls = {"n": 0}
    real_replace = os.replace

    def dying_replace(src, dst):
        calls["n"] += 1
        if calls["n"] == failing_call:
            assert os.path.getsize(src) > 0  # the temp file was fully written when the "kill" hits
            raise KeyboardInterrupt("simulated kill mid-save")
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 2, seed=2)
    monkeypatch.setattr(ckpt.os, "replace", real_replace)

    assert ckpt.latest_checkpoint(str(tmp_path)).endswith("step_00000001.json")
    arrays, meta = ckpt.load_checkpoint(str(tmp_path))
    assert meta["step"] == 1
    np.testing.assert_array_equal(arrays["model/w"], _arrays(1)["model/w"])
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]  # no temp file left behind


def test_truncated_arrays_file_is_reported_with_its_name(tmp_path):
    _save(tmp_path, 1)
    path = tmp_path / "step_00000001.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=r"step_00000001\.safetensors: truncated"):
        ckpt.load_checkpoint(str(tmp_path))


def test_flipped_byte_in_arrays_file_is_reported_as_corrupt(tmp_path):
    _save(tmp_path, 1)
    path = tmp_path / "step_00000001.safetensors"
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=r"step_00000001\.safetensors: corrupt: SHA-256"):
        ckpt.load_checkpoint(str(tmp_path))


def test_corrupt_json_is_reported_with_its_name(tmp_path):
    _save(tmp_path, 1)
    path = tmp_path / "step_00000001.json"
    path.write_text(path.read_text()[:40])
    with pytest.raises(CheckpointError, match=r"step_00000001\.json: corrupt checkpoint JSON"):
        ckpt.load_checkpoint(str(tmp_path))


def test_json_of_another_program_is_not_taken_for_a_checkpoint(tmp_path):
    (tmp_path / "step_00000001.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(CheckpointError, match="not a refdiff checkpoint"):
        ckpt.load_checkpoint(str(tmp_path))


def test_missing_arrays_file_is_reported(tmp_path):
    _save(tmp_path, 1)
    os.remove(tmp_path / "step_00000001.safetensors")
    with pytest.raises(CheckpointError, match=r"step_00000001\.safetensors: arrays file .* not found"):
        ckpt.load_checkpoint(str(tmp_path))


def test_directory_without_checkpoint_is_reported(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        ckpt.load_checkpoint(str(tmp_path))
    with pytest.raises(CheckpointError, match="nothing.json: no such checkpoint directory or file"):
        ckpt.load_checkpoint(str(tmp_path / "nothing.json"))


def test_loading_a_pickle_never_runs_it(tmp_path):
    """A pickle dressed up as a checkpoint (with a matching size and hash) is rejected, not executed."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    blob = pickle.dumps(Payload())
    _save(tmp_path, 1)
    (tmp_path / "step_00000001.safetensors").write_bytes(blob)
    meta = json.loads((tmp_path / "step_00000001.json").read_text())
    import hashlib

    meta["arrays"].update(bytes=len(blob), sha256=hashlib.sha256(blob).hexdigest())
    (tmp_path / "step_00000001.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        ckpt.load_checkpoint(str(tmp_path))
    assert not marker.exists()


def test_nested_state_round_trips_through_flatten_and_unflatten():
    state = {"step": 3, "lr": 0.5, "moments": {"m.0": np.ones(2), "v.0": np.zeros((1, 2))}, "list": [np.arange(3), None]}
    skeleton, arrays = ckpt.flatten_state(state, "optimizer")
    json.dumps(skeleton)  # the skeleton is plain JSON
    back = ckpt.unflatten_state(json.loads(json.dumps(skeleton)), arrays)
    assert back["step"] == 3 and back["lr"] == 0.5 and back["list"][1] is None
    np.testing.assert_array_equal(back["moments"]["v.0"], np.zeros((1, 2)))
    np.testing.assert_array_equal(back["list"][0], np.arange(3))


def test_flatten_refuses_objects_that_would_need_pickle():
    with pytest.raises(TypeError, match="cannot store a object"):
        ckpt.flatten_state({"x": object()}, "s")


def test_mismatched_names_and_shapes_are_listed():
    target = {"a": np.zeros(2), "b": np.zeros((2, 2))}
    with pytest.raises(CheckpointError, match=r"missing \['a'\].*unexpected \['c'\].*b: checkpoint \(3, 2\) vs model \(2, 2\)"):
        ckpt.load_matching(target, {"b": np.zeros((3, 2)), "c": np.zeros(1)}, "ck.json")
