"""refdiff.training.data: shapes, dtypes, ranges and labels of every dataset, determinism, the file
loaders against files written here byte by byte, every error path, and the batch stream."""
import gzip
import os
import struct
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdiff.training import data

# --- 2-D toys ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, num_classes", [("moons", 2), ("swissroll", 0), ("gaussians8", 8),
                                               ("checkerboard", 0)])
def test_toy_shape_dtype_range_and_labels(name, num_classes):
    ds = data.load_dataset(name, n=2000, seed=0)
    assert ds.x.shape == (2000, 2) and ds.x.dtype == np.float32 and ds.kind == "points"
    assert ds.num_classes == num_classes
    # "roughly [-1, 1]": the noise of moons (std 0.05/1.6) may step a little outside
    assert np.abs(ds.x).max() < 1.25
    assert np.quantile(np.abs(ds.x), 0.99) <= 1.0
    if num_classes:
        assert ds.y.dtype == np.int64 and set(np.unique(ds.y)) == set(range(num_classes))
    else:
        assert ds.y is None


@pytest.mark.parametrize("name", data.TOYS)
def test_toy_is_deterministic_given_the_seed(name):
    a, b, c = (data.load_dataset(name, n=100, seed=s) for s in (3, 3, 4))
    np.testing.assert_array_equal(a.x, b.x)
    assert not np.array_equal(a.x, c.x)


def test_toy_default_size_is_10000():
    assert len(data.load_dataset("swissroll")) == 10000


def test_checkerboard_points_lie_on_the_dark_squares():
    x = data.load_dataset("checkerboard", n=5000).x.astype(np.float64)
    cell = np.floor((x + 1.0) / 0.5).astype(int)  # 4x4 cells of side 0.5 over [-1, 1]^2
    assert np.all((cell >= 0) & (cell <= 3))
    assert np.all(cell.sum(axis=1) % 2 == 0)


def test_gaussians8_points_sit_near_their_labelled_centre():
    ds = data.load_dataset("gaussians8", n=5000)
    angle = 2 * np.pi * ds.y / 8
    mu = 0.8 * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    # std 0.05 per coordinate: |x - mu| > 0.3 is a 6-sigma event (probability ~ 1e-8 per point)
    assert np.linalg.norm(ds.x - mu, axis=1).max() < 0.3


def test_moons_upper_moon_lies_on_its_circle():
    ds = data.load_dataset("moons", n=3000)
    upper = ds.x[ds.y == 0].astype(np.float64) * 1.6 + np.array([0.5, 0.25])  # undo the scaling
    r = np.linalg.norm(upper, axis=1)
    # radius 1 plus noise of std 0.05 in each coordinate: 6 sigma = 0.3
    assert np.abs(r - 1.0).max() < 0.3 and abs(np.median(r) - 1.0) < 0.01


def test_swissroll_radius_equals_its_angle_over_4_5_pi():
    ds = data.load_dataset("swissroll", n=3000)
    r = np.linalg.norm(ds.x.astype(np.float64), axis=1)
    # s in [1.5 pi, 4.5 pi] so r in [1/3, 1], widened by 6 sigma of the 0.02 noise
    assert r.min() > 1 / 3 - 0.12 and r.max() < 1 + 0.12


# --- shapes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [16, 32])
def test_shapes_shape_dtype_range_and_balanced_labels(size):
    ds = data.load_dataset("shapes", n=100, image_size=size)
    assert ds.x.shape == (100, 3, size, size) and ds.x.dtype == np.float32 and ds.kind == "images"
    assert ds.x.min() >= -1.0 and ds.x.max() <= 1.0
    assert ds.num_classes == len(data.SHAPE_CLASSES) == len(ds.class_names)
    np.testing.assert_array_equal(np.bincount(ds.y), [20] * 5)


def test_shapes_are_deterministic_given_the_seed():
    a, b = data.load_dataset("shapes", n=20, seed=1), data.load_dataset("shapes", n=20, seed=1)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)


def test_shapes_without_antialiasing_have_one_colour_on_black():
    x, _ = data.make_shapes(20, np.random.default_rng(0), 16, antialias=False)
    for img in x:
        pixels = {tuple(p) for p in img.reshape(3, -1).T}
        assert len(pixels) == 2 and (-1.0, -1.0, -1.0) in pixels


def test_shapes_with_antialiasing_have_partial_edge_pixels():
    x, _ = data.make_shapes(20, np.random.default_rng(0), 16, antialias=True)
    for img in x:
        assert len({tuple(p) for p in img.reshape(3, -1).T}) > 2


@pytest.mark.parametrize(
    "cls, inside, outside",
    [("circle", (0.0, 0.95), (0.75, 0.75)), ("square", (0.75, -0.75), (0.0, 0.85)),
     ("triangle", (0.0, 0.0), (0.0, 0.6)), ("cross", (0.0, 0.95), (0.5, 0.5)),
     ("ring", (0.8, 0.0), (0.0, 0.0))],
)
def test_each_shape_class_covers_its_defining_points(cls, inside, outside):
    k = data.SHAPE_CLASSES.index(cls)
    assert data._inside_shape(k, np.array(inside[0]), np.array(inside[1]))
    assert not data._inside_shape(k, np.array(outside[0]), np.array(outside[1]))


def test_shapes_image_size_too_small_raises():
    with pytest.raises(ValueError, match="image_size >= 8"):
        data.load_dataset("shapes", n=5, image_size=4)


# --- digits and resizing -----------------------------------------------------------------------


def test_digits_shape_range_and_labels():
    ds = data.load_dataset("digits")
    assert ds.x.shape == (1797, 1, 16, 16) and ds.x.dtype == np.float32
    assert ds.x.min() == -1.0 and ds.x.max() == 1.0
    assert ds.y.dtype == np.int64 and ds.num_classes == 10
    np.testing.assert_array_equal(np.unique(ds.y), np.arange(10))


def test_digits_are_sklearn_digits_upscaled_bilinearly():
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    ds = data.load_dataset("digits")
    for i in (0, 500, 1796):
        im = Image.fromarray((bunch.images[i] / 16.0).astype(np.float32), mode="F")
        pil = np.asarray(im.resize((16, 16), Image.BILINEAR)) * 2 - 1
        # Pillow accumulates in float32: ~1e-6 relative error on values of order 1
        np.testing.assert_allclose(ds.x[i, 0], pil, atol=1e-5)
        assert ds.y[i] == bunch.target[i]


def test_digits_subset_is_random_but_deterministic():
    a, b = data.load_dataset("digits", n=100, seed=5), data.load_dataset("digits", n=100, seed=5)
    np.testing.assert_array_equal(a.x, b.x)
    assert len(a) == 100 and len(np.unique(a.y)) > 5


def test_digits_without_sklearn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install refdiff\[digits\]"):
        data.load_dataset("digits")


@pytest.mark.parametrize("n_in, n_out", [(8, 16), (7, 3), (28, 16), (5, 5), (3, 10)])
def test_resize_matches_pillow_bilinear(n_in, n_out):
    from PIL import Image

    a = np.random.default_rng(0).uniform(size=(n_in, n_in)).astype(np.float32)
    pil = np.asarray(Image.fromarray(a, mode="F").resize((n_out, n_out), Image.BILINEAR))
    ours = data.resize_images(a[None, None].astype(np.float64), n_out)[0, 0]
    np.testing.assert_allclose(ours, pil, atol=1e-5)  # Pillow works in float32 (see above)


def test_bilinear_weights_rows_sum_to_one_and_same_size_is_identity():
    w = data.bilinear_weights(13, 5)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-15)
    np.testing.assert_array_equal(data.bilinear_weights(6, 6), np.eye(6))


# --- IDX files ---------------------------------------------------------------------------------


def write_idx(path, array, code=0x08, compress=False):
    """IDX bytes written from the format's description: 0, 0, dtype code, ndim, big-endian dims, data."""
    big = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    raw = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += np.asarray(array).astype(big).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


@pytest.fixture
def mnist_like(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5, 9], dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images, compress=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels, compress=True)
    return tmp_path, images, labels


def test_idx_reads_mnist_pair_with_sibling_labels(mnist_like):
    folder, images, labels = mnist_like
    ds = data.load_dataset(f"idx:{folder / 'train-images-idx3-ubyte.gz'}")
    assert ds.x.shape == (6, 1, 28, 28) and ds.x.dtype == np.float32
    np.testing.assert_allclose(ds.x[:, 0], images / 255.0 * 2 - 1, atol=1e-7)  # float32 rounding
    np.testing.assert_array_equal(ds.y, labels)
    assert ds.y.dtype == np.int64 and ds.num_classes == 10


def test_idx_explicit_labels_and_resize(mnist_like, tmp_path):
    folder, images, labels = mnist_like
    write_idx(tmp_path / "imgs.idx", images)
    write_idx(tmp_path / "labs.idx", labels)
    ds = data.load_dataset(f"idx:{tmp_path / 'imgs.idx'},{tmp_path / 'labs.idx'}", image_size=16)
    assert ds.x.shape == (6, 1, 16, 16) and ds.x.min() >= -1 and ds.x.max() <= 1
    np.testing.assert_array_equal(ds.y, labels)


def test_idx_without_labels_is_unlabelled(mnist_like, tmp_path):
    write_idx(tmp_path / "only.idx", mnist_like[1])
    ds = data.load_dataset(f"idx:{tmp_path / 'only.idx'}")
    assert ds.y is None and ds.num_classes == 0


@pytest.mark.parametrize("code", [0x0B, 0x0C, 0x0D, 0x0E])
def test_read_idx_wider_dtypes_round_trip(tmp_path, code):
    a = np.arange(24).reshape(2, 3, 4)
    got = data.read_idx(write_idx(tmp_path / "a.idx", a, code=code))
    np.testing.assert_array_equal(got, a)
    assert got.dtype.isnative


def test_idx_channels_last_colour_images(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, size=(2, 5, 5, 3), dtype=np.uint8)
    ds = data.load_dataset(f"idx:{write_idx(tmp_path / 'c.idx', a)}")
    assert ds.x.shape == (2, 3, 5, 5)
    np.testing.assert_allclose(ds.x, a.transpose(0, 3, 1, 2) / 255.0 * 2 - 1, atol=1e-7)


@pytest.mark.parametrize(
    "content, match",
    [
        (b"\x00", "too short"),
        (b"\x12\x34\x08\x01\x00\x00\x00\x01\x00", "not an IDX file"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "unknown IDX dtype"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x02", "truncated IDX header"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x02\x00\x00\x00\x02\x01\x02\x03", "truncated or corrupt"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", "truncated or corrupt"),  # too long
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (b"\x1f\x8b\x08\x00garbage", "corrupt gzip"),
    ],
    ids=["short", "magic", "dtype", "header", "truncated_data", "extra_data", "zero_dims", "gzip"],
)
def test_read_idx_rejects_malformed_files(tmp_path, content, match):
    path = tmp_path / "bad.idx"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as info:
        data.read_idx(path)
    assert "bad.idx" in str(info.value)  # the error names the file


def test_truncated_gzipped_mnist_file_raises(mnist_like):
    folder = mnist_like[0]
    path = folder / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))  # a download cut short, re-compressed
    with pytest.raises(ValueError, match="truncated or corrupt"):
        data.load_dataset(f"idx:{path}")


def test_idx_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere"):
        data.load_dataset(f"idx:{tmp_path / 'nothere'}")


def test_idx_label_count_mismatch_raises(tmp_path):
    write_idx(tmp_path / "i.idx", np.zeros((4, 3, 3), np.uint8))
    write_idx(tmp_path / "l.idx", np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match=r"expected \(4,\)"):
        data.load_dataset(f"idx:{tmp_path / 'i.idx'},{tmp_path / 'l.idx'}")


def test_idx_one_dimensional_images_raise(tmp_path):
    with pytest.raises(ValueError, match="IDX images must be"):
        data.load_dataset(f"idx:{write_idx(tmp_path / 'v.idx', np.zeros(5, np.uint8))}")


# --- npz files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("x_key, y_key", [("x", "y"), ("images", "labels")])
def test_npz_images_with_labels(tmp_path, x_key, y_key):
    x = np.random.default_rng(0).integers(0, 256, size=(4, 3, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", **{x_key: x, y_key: np.array([0, 2, 1, 2])})
    ds = data.load_dataset(f"npz:{tmp_path / 'd.npz'}")
    np.testing.assert_allclose(ds.x, x / 255.0 * 2 - 1, atol=1e-7)  # float32 rounding
    np.testing.assert_array_equal(ds.y, [0, 2, 1, 2])
    assert ds.num_classes == 3


def test_npz_float_images_channels_last_in_unit_range(tmp_path):
    x = np.random.default_rng(0).uniform(size=(3, 6, 6, 3)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    ds = data.load_dataset(f"npz:{tmp_path / 'd.npz'}", image_size=4)
    assert ds.x.shape == (3, 3, 4, 4) and ds.y is None


def test_npz_signed_float_images_are_kept(tmp_path):
    x = np.random.default_rng(0).uniform(-1, 1, size=(3, 1, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    np.testing.assert_allclose(data.load_dataset(f"npz:{tmp_path / 'd.npz'}").x, x, atol=1e-7)


def test_npz_points(tmp_path):
    x = np.random.default_rng(0).standard_normal((10, 2))
    np.savez(tmp_path / "p.npz", x=x)
    ds = data.load_dataset(f"npz:{tmp_path / 'p.npz'}")
    assert ds.kind == "points" and ds.x.dtype == np.float32
    np.testing.assert_allclose(ds.x, x, rtol=1e-7)  # float32 rounding


@pytest.mark.parametrize(
    "arrays, error, match",
    [
        ({"data": np.zeros((2, 2))}, KeyError, r"expected key 'x' or 'images', found \['data'\]"),
        ({"x": np.zeros((2, 1, 3, 3)), "y": np.zeros((3,), int)}, ValueError, "labels"),
        ({"x": np.zeros((2, 1, 3, 3)), "y": np.zeros((2,))}, ValueError, "integers"),
        ({"x": np.full((2, 1, 3, 3), 2.0)}, ValueError, r"must be in \[0, 1\]"),
        ({"x": np.zeros((2, 5, 3, 4))}, ValueError, "neither points"),
        ({"x": np.array(["a", "b"])}, ValueError, "numeric"),
    ],
    ids=["no_data_key", "label_count", "float_labels", "out_of_range", "bad_shape", "strings"],
)
def test_npz_bad_contents_raise(tmp_path, arrays, error, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(error, match=match):
        data.load_dataset(f"npz:{tmp_path / 'bad.npz'}")


def test_npz_object_array_is_refused_without_unpickling(tmp_path):
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        data.load_dataset(f"npz:{tmp_path / 'obj.npz'}")


def test_npz_not_a_zip_raises(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip file")
    with pytest.raises(ValueError, match="not a readable .npz"):
        data.load_dataset(f"npz:{tmp_path / 'junk.npz'}")


def test_npz_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        data.load_dataset(f"npz:{tmp_path / 'missing.npz'}")


# --- image folders -----------------------------------------------------------------------------


def save_png(path, array, mode=None):
    from PIL import Image

    os.makedirs(path.parent, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def test_folder_with_class_subfolders(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    save_png(tmp_path / "cat" / "a.png", imgs[0])
    save_png(tmp_path / "cat" / "b.png", imgs[1])
    save_png(tmp_path / "dog" / "c.png", imgs[2])
    ds = data.load_dataset(f"folder:{tmp_path}")
    assert ds.x.shape == (3, 3, 8, 8) and ds.class_names == ("cat", "dog")
    np.testing.assert_array_equal(ds.y, [0, 0, 1])
    np.testing.assert_allclose(ds.x, imgs.transpose(0, 3, 1, 2) / 255.0 * 2 - 1, atol=1e-7)


def test_flat_grayscale_folder_is_unlabelled_one_channel_and_resized(tmp_path):
    rng = np.random.default_rng(0)
    save_png(tmp_path / "a.png", rng.integers(0, 256, size=(10, 10), dtype=np.uint8))
    save_png(tmp_path / "b.PNG", rng.integers(0, 256, size=(12, 16), dtype=np.uint8))  # cropped to 12x12
    ds = data.load_dataset(f"folder:{tmp_path}", image_size=8)
    assert ds.x.shape == (2, 1, 8, 8) and ds.y is None and ds.num_classes == 0


def test_folder_reads_jpeg(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((6, 6, 3), 128, np.uint8)).save(tmp_path / "a.jpg", quality=95)
    ds = data.load_dataset(f"folder:{tmp_path}")
    # a flat JPEG stays within a couple of levels of 128: 128/255*2-1 = 0.0039
    np.testing.assert_allclose(ds.x, 128 / 255 * 2 - 1, atol=3 / 255 * 2)


def test_folder_of_different_sizes_without_image_size_raises(tmp_path):
    save_png(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    save_png(tmp_path / "b.png", np.zeros((9, 9), np.uint8))
    with pytest.raises(ValueError, match="pass image_size"):
        data.load_dataset(f"folder:{tmp_path}")


def test_empty_folder_raises(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="no PNG/JPEG images"):
        data.load_dataset(f"folder:{tmp_path}")


def test_missing_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.load_dataset(f"folder:{tmp_path / 'nowhere'}")


def test_corrupt_image_raises_naming_the_file(tmp_path):
    save_png(tmp_path / "good.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match="broken.png"):
        data.load_dataset(f"folder:{tmp_path}")


def test_folder_mixing_top_level_images_and_class_folders_raises(tmp_path):
    save_png(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    save_png(tmp_path / "cls" / "b.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="both at the top level"):
        data.load_dataset(f"folder:{tmp_path}")


# --- load_dataset and Dataset ------------------------------------------------------------------


def test_unknown_dataset_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'.*moons.*digits.*folder:PATH"):
        data.load_dataset("mnist")


def test_spec_without_path_raises():
    with pytest.raises(ValueError, match="no path"):
        data.load_dataset("npz:")


def test_image_size_for_points_raises():
    with pytest.raises(ValueError, match="image_size does not apply"):
        data.load_dataset("moons", image_size=16)


@pytest.mark.parametrize("n", [0, -3, 2.5])
def test_bad_n_raises(n):
    with pytest.raises(ValueError, match="positive integer"):
        data.load_dataset("moons", n=n)


def test_n_larger_than_a_fixed_dataset_raises():
    with pytest.raises(ValueError, match="only 1797"):
        data.load_dataset("digits", n=5000)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"x": np.zeros((3, 2)), "kind": "audio"}, "kind"),
        ({"x": np.zeros((3, 2)), "kind": "images"}, "4 dimensions"),
        ({"x": np.array([[np.nan, 0.0]])}, "NaN"),
        ({"x": np.full((1, 1, 2, 2), 1.5), "kind": "images"}, r"\[-1, 1\]"),
        ({"x": np.zeros((3, 2)), "y": np.array([0, 1])}, "shape"),
        ({"x": np.zeros((2, 2)), "y": np.array([0, 3]), "num_classes": 2}, "out of range"),
        ({"x": np.zeros((2, 2)), "y": np.array([0, -1])}, ">= 0"),
        ({"x": np.zeros((2, 2)), "num_classes": 3}, "without labels"),
    ],
)
def test_dataset_validates_its_arrays(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.Dataset(**kwargs)


def test_split_gives_disjoint_parts_covering_everything():
    ds = data.Dataset(np.arange(20, dtype=np.float32).reshape(10, 2), np.arange(10) % 3)
    a, b = ds.split(4, seed=1)
    assert len(a) == 6 and len(b) == 4
    assert sorted(np.concatenate([a.x[:, 0], b.x[:, 0]])) == sorted(ds.x[:, 0])
    np.testing.assert_array_equal(b.y, (b.x[:, 0] / 2).astype(int) % 3)  # labels follow their items


# --- batches -----------------------------------------------------------------------------------


@given(st.integers(1, 40), st.integers(1, 16), st.integers(0, 2**32 - 1))
def test_each_epoch_visits_every_item_once(n, batch_size, seed):
    steps = 2 * n  # whole epochs: 2 n * B positions = 2 B epochs
    stream = np.concatenate([data.batch_indices(n, batch_size, s, seed=seed) for s in range(steps)])
    for epoch in stream.reshape(-1, n):
        np.testing.assert_array_equal(np.sort(epoch), np.arange(n))


def test_epochs_are_shuffled_differently():
    first, second = data.batch_indices(100, 100, 0), data.batch_indices(100, 100, 1)
    assert not np.array_equal(first, second) and not np.array_equal(first, np.arange(100))


def test_iterate_batches_resumes_exactly_from_start_step():
    ds = data.load_dataset("gaussians8", n=50)
    it = data.iterate_batches(ds, 16, seed=7)
    uninterrupted = [next(it) for _ in range(10)]
    resumed = data.iterate_batches(ds, 16, seed=7, start_step=6)
    for x, y in uninterrupted[6:]:
        rx, ry = next(resumed)
        np.testing.assert_array_equal(rx, x)
        np.testing.assert_array_equal(ry, y)


def test_iterate_batches_shapes_and_unlabelled_y():
    x, y = next(data.iterate_batches(data.load_dataset("swissroll", n=30), 8, seed=0))
    assert x.shape == (8, 2) and x.dtype == np.float32 and y is None


def test_iterate_batches_accepts_a_generator():
    ds = data.load_dataset("moons", n=40)
    a = next(data.iterate_batches(ds, 8, np.random.default_rng(3)))[0]
    b = next(data.iterate_batches(ds, 8, np.random.default_rng(3)))[0]
    np.testing.assert_array_equal(a, b)


def test_batch_indices_rejects_bad_arguments():
    with pytest.raises(ValueError, match="batch_size >= 1"):
        data.batch_indices(10, 0, 0)


def test_dataset_repr_is_short():
    assert repr(data.load_dataset("moons", n=10)) == "Dataset('moons', points (10, 2) float32, 2 classes)"
