"""Datasets: 2-D toys, procedurally drawn shapes, scikit-learn's digits, and loaders for user files.

Nothing is ever downloaded. Every dataset comes back as a `Dataset` of float32 data and int64
labels:

    points  x: (N, 2) float32, roughly in [-1, 1]            moons swissroll gaussians8 checkerboard
    images  x: (N, C, H, W) float32 in [-1, 1]               shapes digits idx:PATH npz:PATH folder:PATH
    labels  y: (N,) int64 in 0 .. num_classes-1, or None

    ds = load_dataset("moons", n=10000, seed=0)
    ds = load_dataset("digits")                      # (1797, 1, 16, 16), labels 0..9
    ds = load_dataset("idx:data/train-images-idx3-ubyte.gz", image_size=16)
    for x, y in iterate_batches(ds, batch_size=64, seed=0): ...

Pixel intensities are mapped from [0, 1] to [-1, 1] by x -> 2x - 1 (DDPM sec. 3.3). Images are
resized with a bilinear (triangle) filter at half-pixel centres, widened when shrinking: the same
weights as Pillow's Image.BILINEAR (see `resize_images`).

File formats
    idx:IMAGES[,LABELS]  MNIST-format IDX files (gzip allowed). Images (N, H, W) or (N, H, W, C).
                         Without LABELS, the MNIST sibling "...labels-idx1-ubyte[.gz]" of an
                         "...images-idx3-ubyte[.gz]" file is used when it exists.
    npz:PATH             NumPy .npz with the data under "x" or "images" and optional labels under
                         "y" or "labels". (N, D) arrays are point clouds (kept as they are);
                         (N, H, W), (N, C, H, W) or (N, H, W, C) arrays (C in 1, 3) are images.
    folder:PATH          PNG/JPEG files (needs Pillow: pip install refdiff[train]). Images directly
                         in PATH: no labels; images in subfolders: one class per subfolder, in
                         sorted name order. Centre-cropped to a square and resized to image_size.
    Integer image data are taken as 0..255; float data in [0, 1] as intensities; float data
    with negative values must already lie in [-1, 1] and are kept. Bool, complex, string and
    object arrays are refused. A file that holds no samples (N = 0, or an axis of size 0) is
    refused. Points are kept as they are; the Trainer refuses points beyond the range the
    sampler clips x0 to ([-1, 1] by default; see Trainer), so rescale them into [-1, 1] first.
"""
import gzip
import os
from dataclasses import dataclass, field

import numpy as np

TOYS = ("moons", "swissroll", "gaussians8", "checkerboard")
IMAGE_SETS = ("shapes", "digits")
FILE_KINDS = ("idx", "npz", "folder")
SHAPE_CLASSES = ("circle", "square", "triangle", "cross", "ring")
DEFAULT_N = {"moons": 10000, "swissroll": 10000, "gaussians8": 10000, "checkerboard": 10000, "shapes": 6000}


@dataclass
class Dataset:
    """Data x (float32) with optional labels y (int64), the number of classes, kind and name.

    kind "points": x is (N, D); kind "images": x is (N, C, H, W) with values in [-1, 1].
    num_classes is 0 for unlabelled data; when labels are given with num_classes 0 it becomes
    max(y) + 1. class_names (optional) names each class.
    """

    x: np.ndarray
    y: np.ndarray = None
    num_classes: int = 0
    kind: str = "points"
    name: str = ""
    class_names: tuple = field(default=())

    def __post_init__(self):
        kind = np.asarray(self.x).dtype
        if not (np.issubdtype(kind, np.floating) or np.issubdtype(kind, np.integer)) or kind == np.bool_:
            raise TypeError(f"dataset {self.name!r}: x must be a real (float or integer) array, got dtype {kind}")
        self.x = np.ascontiguousarray(self.x, dtype=np.float32)
        if self.kind not in ("points", "images"):
            raise ValueError(f"kind must be 'points' or 'images', got {self.kind!r}")
        want_ndim = 2 if self.kind == "points" else 4
        if self.x.ndim != want_ndim:
            raise ValueError(f"{self.kind} data must have {want_ndim} dimensions, got shape {self.x.shape}")
        if not np.all(np.isfinite(self.x)):
            raise ValueError(f"dataset {self.name!r} contains NaN or inf")
        if self.kind == "images" and self.x.size and (self.x.min() < -1 or self.x.max() > 1):
            raise ValueError(f"image data must lie in [-1, 1], got [{self.x.min()}, {self.x.max()}]")
        if self.y is not None:
            y = np.asarray(self.y)
            if y.dtype == np.bool_ or not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
                raise TypeError(f"dataset {self.name!r}: labels must be integers, got dtype {y.dtype}")
            if y.shape != (len(self.x),):
                raise ValueError(f"labels must have shape ({len(self.x)},), got {y.shape}")
            if y.size and not np.issubdtype(y.dtype, np.integer):
                if not np.all(y == np.round(y)):
                    raise ValueError("labels must be integers")
            self.y = y.astype(np.int64)
            if self.y.size and self.y.min() < 0:
                raise ValueError(f"labels must be >= 0, got {self.y.min()}")
            top = int(self.y.max()) + 1 if self.y.size else 0
            if self.num_classes == 0:
                self.num_classes = top
            elif top > self.num_classes:
                raise ValueError(f"label {top - 1} out of range for num_classes={self.num_classes}")
        elif self.num_classes:
            raise ValueError("num_classes given without labels")
        self.class_names = tuple(self.class_names)

    def __len__(self):
        return len(self.x)

    def __repr__(self):
        labels = f", {self.num_classes} classes" if self.y is not None else ""
        return f"Dataset({self.name!r}, {self.kind} {self.x.shape} {self.x.dtype}{labels})"

    @property
    def shape(self):
        """Shape of one item: (D,) for points, (C, H, W) for images."""
        return self.x.shape[1:]

    def subset(self, indices, name=None):
        """The items at `indices` (an int array) as a new Dataset."""
        indices = np.asarray(indices, dtype=np.int64)
        return Dataset(self.x[indices], None if self.y is None else self.y[indices], self.num_classes,
                       self.kind, self.name if name is None else name, self.class_names)

    def split(self, n_second, seed=0):
        """Two disjoint random parts: (first, second) with len(second) == n_second."""
        if not 0 < n_second < len(self):
            raise ValueError(f"cannot split {len(self)} items into two parts with {n_second} in the second")
        perm = np.random.default_rng(seed).permutation(len(self))
        return self.subset(np.sort(perm[n_second:])), self.subset(np.sort(perm[:n_second]))


# ----------------------------------------------------------------------------------------------
# 2-D toy distributions (each returns points (N, 2) in roughly [-1, 1] and labels or None)


def make_moons(n, rng, noise=0.05):
    """Two interleaving half circles (as sklearn.datasets.make_moons), labels 0/1 for the moon.

    upper: (cos s, sin s), lower: (1 - cos s, 1/2 - sin s), s ~ U[0, pi], plus N(0, noise^2),
    then centred and scaled by 1/1.6 so that x lies in [-0.94, 0.94] and y in [-0.47, 0.47].
    """
    y = rng.integers(0, 2, size=n)
    s = rng.uniform(0.0, np.pi, size=n)
    upper = np.stack([np.cos(s), np.sin(s)], axis=1)
    lower = np.stack([1.0 - np.cos(s), 0.5 - np.sin(s)], axis=1)
    x = np.where(y[:, None] == 0, upper, lower) + noise * rng.standard_normal((n, 2))
    x = (x - np.array([0.5, 0.25])) / 1.6
    return x, y


def make_swissroll(n, rng, noise=0.02):
    """A 2-D swiss roll: r(s) = s (cos s, sin s) / (4.5 pi), s = 1.5 pi (1 + 2u), u ~ U[0, 1].

    The spiral ends at radius 1; noise N(0, noise^2) is added to each coordinate. No labels.
    """
    s = 1.5 * np.pi * (1.0 + 2.0 * rng.uniform(size=n))
    x = np.stack([s * np.cos(s), s * np.sin(s)], axis=1) / (4.5 * np.pi)
    return x + noise * rng.standard_normal((n, 2)), None


def make_gaussians8(n, rng, radius=0.8, std=0.05):
    """A mixture of 8 equal Gaussians N(mu_k, std^2 I), mu_k = radius (cos 2pi k/8, sin 2pi k/8).

    Labels are the component k = 0..7.
    """
    k = rng.integers(0, 8, size=n)
    angle = 2.0 * np.pi * k / 8.0
    mu = radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return mu + std * rng.standard_normal((n, 2)), k


def make_checkerboard(n, rng):
    """Uniform on the dark squares of a 4x4 checkerboard over [-1, 1]^2 (cells with i + j even).

    Column i ~ U{0..3}; row j = 2 m + (i mod 2) with m ~ U{0, 1}; the point is uniform in the
    cell [-1 + i/2, -1 + (i+1)/2] x [-1 + j/2, -1 + (j+1)/2]. No labels.
    """
    i = rng.integers(0, 4, size=n)
    j = 2 * rng.integers(0, 2, size=n) + i % 2
    u = rng.uniform(size=(n, 2))
    return np.stack([-1.0 + 0.5 * (i + u[:, 0]), -1.0 + 0.5 * (j + u[:, 1])], axis=1), None


_TOY_MAKERS = {"moons": make_moons, "swissroll": make_swissroll, "gaussians8": make_gaussians8,
               "checkerboard": make_checkerboard}


def load_toy(name, n=None, seed=0):
    """The 2-D toy `name` with n points (default 10000), reproducible from `seed`."""
    n = DEFAULT_N[name] if n is None else _check_n(n)
    x, y = _TOY_MAKERS[name](n, np.random.default_rng(seed))
    num_classes = {"moons": 2, "gaussians8": 8}.get(name, 0)
    return Dataset(x.astype(np.float32), y, num_classes, "points", name)


# ----------------------------------------------------------------------------------------------
# procedurally drawn shapes


def _inside_shape(cls, u, v):
    """True where the point (u, v) (shape coordinates, radius 1) is inside shape class `cls`."""
    name = SHAPE_CLASSES[cls]
    if name == "circle":
        return u * u + v * v <= 1.0
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if name == "triangle":  # equilateral, vertices on the unit circle, pointing up (v grows downwards)
        inside = np.ones(np.broadcast(u, v).shape, dtype=bool)
        for angle in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
            inside &= u * np.cos(angle) + v * np.sin(angle) <= 0.5  # three half-planes
        return inside
    if name == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0))
    if name == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.55**2)
    raise AssertionError(name)


def make_shapes(n, rng, image_size=16, antialias=True):
    """n RGB images (n, 3, S, S) in [-1, 1] of one coloured shape each on black, labels = class.

    Classes SHAPE_CLASSES (circle, square, triangle, cross, ring), balanced. Each shape has a
    random radius in [0.25 S, 0.4 S], a centre that keeps it inside the image, a rotation in
    [-20, 20] degrees and a colour with channels in [0.3, 1]. Antialiasing: the coverage of each
    pixel is the fraction of 4x4 sub-pixel samples inside the shape.
    """
    if image_size < 8:
        raise ValueError(f"shapes need image_size >= 8, got {image_size}")
    labels = rng.permutation(np.arange(n) % len(SHAPE_CLASSES))
    radius = rng.uniform(0.25, 0.4, size=n) * image_size
    centre = rng.uniform(radius[:, None], image_size - radius[:, None], size=(n, 2))
    theta = np.deg2rad(rng.uniform(-20.0, 20.0, size=n))
    colour = rng.uniform(0.3, 1.0, size=(n, 3))

    sub = 4 if antialias else 1
    grid = (np.arange(image_size * sub) + 0.5) / sub  # sub-pixel centres in pixel units
    images = np.empty((n, 3, image_size, image_size), dtype=np.float32)
    for cls in range(len(SHAPE_CLASSES)):
        members = np.flatnonzero(labels == cls)
        for start in range(0, len(members), 256):  # chunks bound the memory of the sub-pixel grids
            b = members[start:start + 256]
            dx = grid[None, None, :] - centre[b, 0, None, None]  # (B, 1, S*sub)
            dy = grid[None, :, None] - centre[b, 1, None, None]  # (B, S*sub, 1)
            c, s = np.cos(theta[b])[:, None, None], np.sin(theta[b])[:, None, None]
            u = (c * dx + s * dy) / radius[b, None, None]  # rotate into the shape's frame
            v = (-s * dx + c * dy) / radius[b, None, None]
            inside = _inside_shape(cls, u, v)  # (B, S*sub, S*sub)
            coverage = inside.reshape(-1, image_size, sub, image_size, sub).mean(axis=(2, 4))  # (B, S, S)
            images[b] = colour[b, :, None, None] * coverage[:, None]
    return images * 2.0 - 1.0, labels


def load_shapes(n=None, seed=0, image_size=None, antialias=True):
    """The shapes dataset: n images (default 6000) of size image_size (default 16)."""
    n = DEFAULT_N["shapes"] if n is None else _check_n(n)
    x, y = make_shapes(n, np.random.default_rng(seed), image_size or 16, antialias)
    return Dataset(x, y, len(SHAPE_CLASSES), "images", "shapes", SHAPE_CLASSES)


# ----------------------------------------------------------------------------------------------
# scikit-learn's digits


def load_digits(n=None, seed=0, image_size=None):
    """The 1797 8x8 handwritten digits shipped with scikit-learn, as (N, 1, S, S), labels 0..9.

    Intensities 0..16 map to [-1, 1]; the 8x8 images are upscaled bilinearly (resize_images) to
    image_size (default 16). n < 1797 takes a random subset chosen by `seed`.
    """
    try:
        from sklearn.datasets import load_digits as sklearn_load_digits
    except ImportError:
        raise ImportError("the digits dataset needs scikit-learn: pip install refdiff[digits]") from None
    bunch = sklearn_load_digits()
    x = bunch.images.astype(np.float64)[:, None] / 16.0  # (1797, 1, 8, 8) in [0, 1]
    size = image_size or 16
    x = resize_images(x, size) if size != 8 else x
    ds = Dataset(np.clip(x * 2.0 - 1.0, -1.0, 1.0), bunch.target, 10, "images", "digits",
                 tuple(str(d) for d in range(10)))
    return _take(ds, n, seed)


# ----------------------------------------------------------------------------------------------
# resizing


def bilinear_weights(n_in, n_out):
    """(n_out, n_in) matrix of the bilinear (triangle) filter with half-pixel centres.

    Output pixel i sits at input coordinate c_i = (i + 1/2) n_in / n_out; input pixel j at j + 1/2.
    w_ij = max(0, 1 - |j + 1/2 - c_i| / a) with a = max(1, n_in / n_out) (the filter widens when
    shrinking, so it averages instead of aliasing), each row normalised to sum 1 (which also
    handles the borders). These are the weights of Pillow's Image.BILINEAR.
    """
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale
    w = np.maximum(0.0, 1.0 - np.abs(np.arange(n_in)[None, :] + 0.5 - centres[:, None]) / support)
    return w / w.sum(axis=1, keepdims=True)


def resize_images(x, size):
    """Resize images (N, C, H, W) to (N, C, size, size): x -> W_h x W_w^T (bilinear_weights)."""
    x = np.asarray(x)
    w_h = bilinear_weights(x.shape[2], size)
    w_w = bilinear_weights(x.shape[3], size)
    out = np.einsum("ih,nchw,jw->ncij", w_h, x.astype(np.float64), w_w, optimize=True)
    return out.astype(x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64)


# ----------------------------------------------------------------------------------------------
# user files: IDX, npz, image folders

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path):
    """Parse an IDX file (the MNIST format; gzip-compressed when it starts with 1f 8b).

    Header: two zero bytes, a dtype code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D
    float32, 0x0E float64), the number of dimensions d, then d big-endian uint32 sizes; then the
    data, big-endian, row-major. Raises ValueError naming the file for a bad magic number, an
    unknown dtype, a truncated header, or a data size that does not match the header.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"IDX file not found: {path}")
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: corrupt gzip data ({e})") from None
    if len(raw) < 4:
        raise ValueError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (magic number starts with {raw[:2].hex()}, expected 0000)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX dtype code 0x{code:02x} (expected one of "
                         + ", ".join(f"0x{c:02x}" for c in _IDX_DTYPES) + ")")
    if ndim == 0:
        raise ValueError(f"{path}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header} for {ndim} dimensions)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: IDX header says dims {dims} of {dtype.name} = {expected} bytes of data, "
                         f"but the file holds {len(raw) - header} (truncated or corrupt)")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _mnist_labels_path(images_path):
    """The MNIST labels file next to an images file ('...-images-idx3-ubyte' -> '...-labels-idx1-ubyte')."""
    folder, base = os.path.split(images_path)
    if "images-idx3" not in base:
        return None
    candidate = os.path.join(folder, base.replace("images-idx3", "labels-idx1"))
    return candidate if os.path.isfile(candidate) else None


def load_idx(images_path, labels_path=None, image_size=None):
    """Images from an IDX file (N, H, W) or (N, H, W, C), labels from an optional 1-D IDX file."""
    images = read_idx(images_path)
    if images.ndim == 3:
        images = images[:, None]  # (N, 1, H, W)
    elif images.ndim == 4 and images.shape[3] in (1, 3):
        images = images.transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    else:
        raise ValueError(f"{images_path}: IDX images must be (N, H, W) or (N, H, W, C) with C in 1, 3; "
                         f"got dims {images.shape}")
    x = _images_to_unit_range(images, images_path)
    labels_path = labels_path or _mnist_labels_path(os.fspath(images_path))
    y = None
    if labels_path is not None:
        y = read_idx(labels_path)
        if y.shape != (len(x),):
            raise ValueError(f"{labels_path}: labels have dims {y.shape}, expected ({len(x)},) to match {images_path}")
    if image_size is not None and image_size != x.shape[2]:
        x = np.clip(resize_images(x, image_size), 0.0, 1.0)  # weights sum to 1 up to rounding
    return Dataset(x * 2.0 - 1.0, y, 0, "images", f"idx:{images_path}")


def load_npz(path, image_size=None):
    """Data from a .npz file: "x" or "images" (required), "y" or "labels" (optional)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"npz file not found: {path}")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as e:  # zipfile.BadZipFile, ValueError, OSError: not a readable npz
        raise ValueError(f"{path}: not a readable .npz file ({e})") from None
    with archive:
        keys = set(archive.files)
        x_key = next((k for k in ("x", "images") if k in keys), None)
        if x_key is None:
            raise KeyError(f"{path}: no data array: expected key 'x' or 'images', found {sorted(keys)}")
        y_key = next((k for k in ("y", "labels") if k in keys), None)
        try:
            x = archive[x_key]
            y = archive[y_key] if y_key else None
        except ValueError as e:  # object arrays would need pickle
            raise ValueError(f"{path}: cannot read arrays without pickle ({e})") from None
    if y is not None and (y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer)):
        raise ValueError(f"{path}: labels {y_key!r} must be integers of shape ({len(x)},), "
                         f"got {y.dtype} {y.shape}")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"{path}: data {x_key!r} must be numeric, got dtype {x.dtype}")
    name = f"npz:{path}"
    if x.ndim == 2:  # (N, D) point cloud
        return Dataset(x.astype(np.float32), y, 0, "points", name)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)  # channels last -> first
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"{path}: data {x_key!r} of shape {x.shape} is neither points (N, D) nor images "
                         "(N, H, W), (N, C, H, W), (N, H, W, C) with C in 1, 3")
    x = _images_to_unit_range(x, path, signed_ok=True)
    if image_size is not None and (x.shape[2], x.shape[3]) != (image_size, image_size):
        x = np.clip(resize_images(x, image_size), 0.0, 1.0)  # weights sum to 1 up to rounding
    return Dataset(x * 2.0 - 1.0, y, 0, "images", name)


_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def load_folder(path, image_size=None):
    """PNG/JPEG images from a folder; subfolders (sorted by name) are classes when present."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise ImportError("loading an image folder needs Pillow: pip install refdiff[train]") from None
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"image folder not found: {path}")

    def images_in(folder):
        return sorted(os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs
                      if f.lower().endswith(_IMAGE_EXTENSIONS))

    subfolders = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    classes = [d for d in subfolders if images_in(os.path.join(path, d))]
    top_level = [os.path.join(path, f) for f in sorted(os.listdir(path)) if f.lower().endswith(_IMAGE_EXTENSIONS)
                 and os.path.isfile(os.path.join(path, f))]
    if classes and top_level:
        raise ValueError(f"{path}: has images both at the top level ({os.path.basename(top_level[0])}, ...) and "
                         f"in class subfolders ({classes[0]}, ...): put every image in a class subfolder or none")
    if classes:
        files = [(f, k) for k, c in enumerate(classes) for f in images_in(os.path.join(path, c))]
    else:
        files = [(f, None) for f in top_level]
    if not files:
        raise ValueError(f"{path}: no PNG/JPEG images found (extensions {', '.join(_IMAGE_EXTENSIONS)})")

    pictures = []
    for f, _ in files:
        try:
            with Image.open(f) as im:
                im.load()
                pictures.append(im.copy())
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise ValueError(f"{f}: not a readable image ({e})") from None
    gray = all(p.mode in ("1", "L", "LA", "I", "I;16", "F") for p in pictures)
    if image_size is None:
        sizes = {p.size for p in pictures}
        if len(sizes) > 1 or next(iter(sizes))[0] != next(iter(sizes))[1]:
            raise ValueError(f"{path}: images have sizes {sorted(sizes)[:4]}: pass image_size to resize them")
        image_size = pictures[0].size[0]
    arrays = []
    for p in pictures:
        a = np.asarray(p.convert("L" if gray else "RGB"), dtype=np.float64) / 255.0
        a = a[:, :, None] if a.ndim == 2 else a  # (H, W, C)
        h, w = a.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        a = a[top:top + side, left:left + side].transpose(2, 0, 1)[None]  # centre crop, (1, C, s, s)
        arrays.append(resize_images(a, image_size) if side != image_size else a)
    x = np.clip(np.concatenate(arrays), 0.0, 1.0)
    y = None if not classes else np.array([k for _, k in files])
    return Dataset(x * 2.0 - 1.0, y, len(classes), "images", f"folder:{path}", tuple(classes))


def _images_to_unit_range(x, path, signed_ok=False):
    """Image data as float64 in [0, 1] (integers: /255; floats in [0,1] kept; in [-1,1] mapped)."""
    if np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise ValueError(f"{path}: integer image data must be in 0..255, got {x.min()}..{x.max()}")
        return x.astype(np.float64) / 255.0
    x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{path}: image data contain NaN or inf")
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 1.0)
    if 0.0 <= lo and hi <= 1.0:
        return x
    if signed_ok and -1.0 <= lo and hi <= 1.0:
        return (x + 1.0) / 2.0
    raise ValueError(f"{path}: float image data must be in [0, 1] (or [-1, 1]), got [{lo}, {hi}]")


# ----------------------------------------------------------------------------------------------
# the entry point and batching


def _check_n(n, name="n"):
    """A count as a python int >= 1; floats (even 2.0), bools and None are refused."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{name} must be a positive integer, got {n!r}")
    return int(n)


def _take(ds, n, seed):
    """A random subset of n items (chosen by seed), or ds itself when n is None."""
    if n is None:
        return ds
    n = _check_n(n)
    if n > len(ds):
        raise ValueError(f"asked for n={n} items but {ds.name} has only {len(ds)}")
    return ds.subset(np.sort(np.random.default_rng(seed).permutation(len(ds))[:n]))


def load_dataset(spec, n=None, seed=0, image_size=None):
    """A Dataset from a name or a KIND:PATH spec.

    spec: "moons" | "swissroll" | "gaussians8" | "checkerboard" (n points, default 10000)
          "shapes" (n images, default 6000, image_size default 16) | "digits" (1797, size 16)
          "idx:IMAGES[,LABELS]" | "npz:PATH" | "folder:PATH" (user files, see the module docstring)
    n: number of items (generated sets: how many to draw; fixed sets: a random subset).
    seed: seeds the generation and the subset. image_size: side of the square images.
    """
    if not isinstance(spec, str):
        raise TypeError(f"dataset spec must be a string, got {type(spec).__name__}")
    kind, sep, path = spec.partition(":")
    if image_size is not None:
        image_size = _check_n(image_size, "image_size")
    if sep and kind in FILE_KINDS:
        if not path:
            raise ValueError(f"dataset spec {spec!r} has no path after '{kind}:'")
        if kind == "idx":
            images_path, _, labels_path = path.partition(",")
            ds = load_idx(images_path, labels_path or None, image_size)
        elif kind == "npz":
            ds = load_npz(path, image_size)
        else:
            ds = load_folder(path, image_size)
        if ds.x.size == 0:
            raise ValueError(f"{path}: holds no samples (data of shape {ds.x.shape})")
        return _take(ds, n, seed)
    if spec in TOYS:
        if image_size is not None:
            raise ValueError(f"{spec} is a 2-D point set: image_size does not apply")
        return load_toy(spec, n, seed)
    if spec == "shapes":
        return load_shapes(n, seed, image_size)
    if spec == "digits":
        return load_digits(n, seed, image_size)
    valid = ", ".join(TOYS + IMAGE_SETS) + ", " + ", ".join(f"{k}:PATH" for k in FILE_KINDS)
    raise ValueError(f"unknown dataset {spec!r}: valid are {valid}")


def batch_indices(num_items, batch_size, step, seed=0):
    """Indices of batch number `step` of a stream of shuffled epochs, computed without iterating.

    The stream concatenates permutations of range(num_items), epoch e shuffled by
    default_rng([seed, e]); batch `step` is positions step*B .. step*B + B - 1 of it. So every
    item appears once per epoch, a batch may straddle two epochs, and a resumed run that starts
    at `step` gets exactly the batches of the uninterrupted one.
    """
    if num_items < 1 or batch_size < 1 or step < 0:
        raise ValueError(f"need num_items >= 1, batch_size >= 1, step >= 0; got {num_items}, {batch_size}, {step}")
    positions = step * batch_size + np.arange(batch_size, dtype=np.int64)
    epochs = positions // num_items
    out = np.empty(batch_size, dtype=np.int64)
    for e in np.unique(epochs):
        perm = np.random.default_rng([int(seed), int(e)]).permutation(num_items)
        m = epochs == e
        out[m] = perm[positions[m] % num_items]
    return out


def iterate_batches(dataset, batch_size, seed=0, start_step=0):
    """Endless (x, y) batches of shuffled epochs (y None for unlabelled data); see batch_indices.

    seed: an int (a numpy Generator is accepted and drawn from once for a seed).
    """
    if isinstance(seed, np.random.Generator):
        seed = int(seed.integers(2**63))
    step = start_step
    while True:
        idx = batch_indices(len(dataset), batch_size, step, seed)
        yield dataset.x[idx], None if dataset.y is None else dataset.y[idx]
        step += 1
