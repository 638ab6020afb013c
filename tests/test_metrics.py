"""refdiff.training.metrics: point-cloud distances against closed forms and brute force, the Frechet
distance against closed forms, and the autograd-trained classifier on digits."""
import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from refdiff.training import data, metrics

# --- energy distance ---------------------------------------------------------------------------


def energy_distance_brute_force(a, b):
    """sqrt(2 E|X-Y| - E|X-X'| - E|Y-Y'|) with explicit loops over all pairs, float64."""
    def mean_dist(p, q):
        return sum(math.dist(x, y) for x, y in itertools.product(p, q)) / (len(p) * len(q))

    return math.sqrt(2 * mean_dist(a, b) - mean_dist(a, a) - mean_dist(b, b))


def test_energy_distance_matches_brute_force():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((17, 2)), rng.standard_normal((11, 2)) + 0.5
    # two float64 summation orders: ~1e-15 relative
    assert metrics.energy_distance(a, b) == pytest.approx(energy_distance_brute_force(a, b), rel=1e-12)


def test_energy_distance_matches_scipy_in_1d():
    from scipy.stats import energy_distance as scipy_energy_distance

    rng = np.random.default_rng(1)
    u, v = rng.standard_normal(40), rng.uniform(size=25)
    # scipy integrates the CDF difference instead of summing pair distances: ~1e-15 relative
    assert metrics.energy_distance(u, v) == pytest.approx(scipy_energy_distance(u, v), rel=1e-10)


def test_energy_distance_of_two_point_masses_is_sqrt_2d():
    # 2|0 - d| - 0 - 0 = 2d
    assert metrics.energy_distance(np.zeros((1, 2)), np.array([[3.0, 4.0]])) == pytest.approx(math.sqrt(10.0),
                                                                                            rel=1e-15)


def test_energy_distance_is_zero_for_identical_sets():
    a = np.random.default_rng(0).standard_normal((50, 2))
    assert metrics.energy_distance(a, a) == 0.0
    assert metrics.energy_distance(a, a[::-1]) < 1e-7  # sqrt of a rounding-level ~1e-16 remainder


def test_energy_distance_grows_with_a_shift():
    a = np.random.default_rng(0).standard_normal((200, 2))
    values = [metrics.energy_distance(a, a + [s, 0.0]) for s in (0.1, 0.5, 1.0, 2.0)]
    assert 0 < values[0] < values[1] < values[2] < values[3]


def test_energy_distance_accepts_float32_and_is_symmetric():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((30, 2)).astype(np.float32), rng.standard_normal((20, 2)).astype(np.float32)
    assert metrics.energy_distance(a, b) == pytest.approx(metrics.energy_distance(b, a), rel=1e-12)


# --- sliced Wasserstein ------------------------------------------------------------------------


def test_wasserstein_1d_matches_replicated_sorting_for_unequal_sizes():
    # independent truth: repeat every point of u m times and of v n times; both have n*m atoms of
    # equal mass and W_2^2 is the mean squared difference of the sorted values
    rng = np.random.default_rng(0)
    u, v = rng.standard_normal(7), rng.standard_normal(4) * 2
    expected = np.mean((np.sort(np.repeat(u, 4)) - np.sort(np.repeat(v, 7))) ** 2)
    got = metrics.wasserstein_1d(u[None], v[None], p=2)[0]
    assert got == pytest.approx(expected, rel=1e-12)  # float64, different summation order


def test_wasserstein_1d_p1_matches_scipy():
    from scipy.stats import wasserstein_distance

    rng = np.random.default_rng(2)
    u, v = rng.standard_normal(13), rng.uniform(size=9)
    assert metrics.wasserstein_1d(u[None], v[None], p=1)[0] == pytest.approx(wasserstein_distance(u, v), rel=1e-10)


def test_sliced_wasserstein_in_1d_is_the_shift():
    # in 1-D every direction is +-1 and translating by s moves every quantile by s: SW = |s|
    a = np.random.default_rng(0).standard_normal((100, 1))
    assert metrics.sliced_wasserstein(a, a + 0.7, n_projections=4) == pytest.approx(0.7, rel=1e-12)


def test_sliced_wasserstein_of_a_translation_in_2d():
    # W_2 along theta is |<s, theta>|, so SW^2 = mean_k <s, theta_k>^2 -> |s|^2 / 2 for uniform theta.
    # With K = 4096 directions, <s,theta>^2 = |s|^2 cos^2 phi has relative std 1/sqrt(2) around its
    # mean 1/2, so the estimate's relative std is ~0.71/sqrt(4096) = 1.1%: 5% is > 4 sigma
    a = np.random.default_rng(0).standard_normal((300, 2))
    s = np.array([0.6, 0.8])  # |s| = 1
    got = metrics.sliced_wasserstein(a, a + s, n_projections=4096, seed=1)
    assert got == pytest.approx(math.sqrt(0.5), rel=0.05)


def test_sliced_wasserstein_is_zero_for_identical_sets_and_grows_with_shift():
    a = np.random.default_rng(0).standard_normal((100, 2))
    assert metrics.sliced_wasserstein(a, a[::-1]) == 0.0
    values = [metrics.sliced_wasserstein(a, a + s) for s in (0.1, 0.5, 1.0)]
    assert 0 < values[0] < values[1] < values[2]


def test_sliced_wasserstein_is_deterministic_given_the_seed():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((50, 2)), rng.standard_normal((60, 2))
    assert metrics.sliced_wasserstein(a, b, seed=3) == metrics.sliced_wasserstein(a, b, seed=3)


@given(arrays(np.float32, (12, 2), elements=st.floats(-10, 10, width=32, allow_subnormal=False)),
       arrays(np.float32, (9, 2), elements=st.floats(-10, 10, width=32, allow_subnormal=False)))
def test_distances_are_non_negative_and_symmetric(a, b):
    assert metrics.energy_distance(a, b) >= 0
    # symmetric up to float64 rounding of sums of magnitude <= ~30
    assert metrics.energy_distance(a, b) == pytest.approx(metrics.energy_distance(b, a), rel=1e-9, abs=1e-7)
    assert metrics.sliced_wasserstein(a, b) == pytest.approx(metrics.sliced_wasserstein(b, a), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("fn", [metrics.energy_distance, metrics.sliced_wasserstein])
@pytest.mark.parametrize(
    "a, b, match",
    [(np.zeros((3, 2)), np.zeros((3, 3)), "shapes"), (np.zeros((0, 2)), np.zeros((3, 2)), "empty"),
     (np.array([[np.nan, 0.0]]), np.zeros((3, 2)), "NaN")],
)
def test_point_cloud_metrics_reject_bad_input(fn, a, b, match):
    with pytest.raises(ValueError, match=match):
        fn(a, b)


# --- baselines ---------------------------------------------------------------------------------


def test_data_baseline_is_small_and_shifted_samples_are_far():
    ds = data.load_dataset("moons", n=2000, seed=0)
    base = metrics.data_baseline(ds.x, 500, "energy_distance", seed=0)
    shifted = metrics.energy_distance(ds.x[:500] + 0.5, ds.x[500:1000])
    assert 0 < base < shifted / 5


def test_data_baseline_needs_two_disjoint_samples():
    with pytest.raises(ValueError, match="needs 200"):
        metrics.data_baseline(np.zeros((150, 2)), 100)


def test_compare_point_clouds_ratio_near_one_for_fresh_data_and_large_for_noise():
    ds = data.load_dataset("gaussians8", n=1500, seed=0)
    fresh = data.load_dataset("gaussians8", n=500, seed=1).x
    good = metrics.compare_point_clouds(fresh, ds.x, seed=0)
    collapsed = fresh[fresh[:, 0] > 0.7]  # only the mode at (0.8, 0): a mode-collapsed model
    collapsed = np.resize(collapsed, (500, 2))
    # fresh data vs data is the baseline situation itself: the ratio fluctuates around 1
    assert good["energy_distance_ratio"] < 2 and good["sliced_wasserstein_ratio"] < 2
    bad = metrics.compare_point_clouds(collapsed, ds.x, seed=0)
    assert bad["energy_distance_ratio"] > 4 and bad["sliced_wasserstein_ratio"] > 4
    assert set(good) == {f"{m}{s}" for m in ("energy_distance", "sliced_wasserstein") for s in ("", "_baseline", "_ratio")}


# --- Frechet distance --------------------------------------------------------------------------


def test_frechet_distance_1d_closed_form():
    # d^2 = (m1 - m2)^2 + (s1 - s2)^2 for N(m1, s1^2), N(m2, s2^2): (1 - 4)^2 + (2 - 3)^2 = 10
    assert metrics.gaussian_frechet_distance([1.0], [[4.0]], [4.0], [[9.0]]) == pytest.approx(10.0, rel=1e-14)


def test_frechet_distance_diagonal_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    d1, d2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(d1) - np.sqrt(d2)) ** 2)  # 5 + (4 + 1 + 0)
    got = metrics.gaussian_frechet_distance(mu1, np.diag(d1), mu2, np.diag(d2))
    assert expected == 10.0 and got == pytest.approx(expected, rel=1e-13)


def test_frechet_distance_non_commuting_by_hand():
    # sigma1 = I, sigma2 = [[2, 1], [1, 2]] (eigenvalues 3, 1): Tr sqrt(sigma2) = sqrt(3) + 1,
    # d^2 = Tr I + Tr sigma2 - 2 (sqrt(3) + 1) = 2 + 4 - 2 sqrt(3) - 2 = 4 - 2 sqrt(3)
    got = metrics.gaussian_frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.array([[2.0, 1.0], [1.0, 2.0]]))
    assert got == pytest.approx(4 - 2 * math.sqrt(3), rel=1e-12)


def test_frechet_distance_matches_scipy_sqrtm():
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((5, 5)), rng.standard_normal((5, 5))
    s1, s2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * sqrtm(s1 @ s2).real)
    # scipy's Schur-based sqrtm of the non-symmetric product vs our eigh route: ~1e-12 relative
    assert metrics.gaussian_frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_identical_features_is_zero():
    f = np.random.default_rng(0).standard_normal((200, 8))
    # eigenvalues of sigma^2 through two eigendecompositions: rounding ~1e-13 of Tr sigma ~ 8
    assert abs(metrics.frechet_distance(f, f)) < 1e-10


def test_sqrtm_psd_squares_back():
    a = np.random.default_rng(0).standard_normal((6, 6))
    a = a @ a.T
    s = metrics.sqrtm_psd(a)
    np.testing.assert_allclose(s @ s, a, atol=1e-12 * np.abs(a).max() * 6)  # float64, 6-term sums


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="do not match"):
        metrics.gaussian_frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="at least 2"):
        metrics.frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))


# --- cross entropy -----------------------------------------------------------------------------


def test_cross_entropy_value_and_gradient_match_float64_closed_form():
    from refdiff.nn.autograd import Tensor

    rng = np.random.default_rng(0)
    z = rng.standard_normal((5, 4)) * 3
    y = np.array([0, 3, 1, 1, 2])
    logits = Tensor(z.copy(), requires_grad=True)
    loss = metrics.cross_entropy(logits, y)
    loss.backward()
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    assert loss.item() == pytest.approx(-np.mean(np.log(p[np.arange(5), y])), rel=1e-12)  # float64
    # d loss / d z = (softmax(z) - onehot(y)) / B
    np.testing.assert_allclose(logits.grad, (p - np.eye(4)[y]) / 5, atol=1e-14)


# --- the classifier ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_classifier():
    # 100 steps keep the suite fast (~4 s single-threaded); the default 300 reaches ~98%
    return metrics.train_classifier(data.load_dataset("digits"), steps=100, seed=0)


def test_classifier_reaches_high_heldout_accuracy_on_digits(digits_classifier):
    clf = digits_classifier
    assert len(clf.heldout) == 359 and len(clf.train_set) == 1438  # 20% of 1797 held out
    assert clf.heldout_accuracy >= 0.95  # measured 0.972 at 100 steps, seed 0


def test_class_accuracy_drops_for_wrong_labels(digits_classifier):
    clf = digits_classifier
    x, y = clf.heldout.x, clf.heldout.y
    assert metrics.class_accuracy(clf, x, y) == clf.heldout_accuracy
    assert metrics.class_accuracy(clf, x, (y + 1) % 10) < 0.1


def test_image_metrics_separate_real_images_from_noise(digits_classifier):
    clf = digits_classifier
    rng = np.random.default_rng(0)
    real = clf.train_set.subset(rng.permutation(len(clf.train_set))[:300])
    noise = rng.uniform(-1, 1, size=(300, 1, 16, 16)).astype(np.float32)
    good = metrics.image_metrics(clf, real.x, real.y)
    bad = metrics.image_metrics(clf, noise, rng.integers(0, 10, 300))
    assert good["accuracy"] > 0.95 and bad["accuracy"] < 0.5
    assert good["frechet_distance"] < 2 * good["frechet_distance_baseline"]
    assert bad["frechet_distance"] > 10 * good["frechet_distance_baseline"]


def test_classifier_features_have_feature_dim(digits_classifier):
    f = digits_classifier.features(digits_classifier.heldout.x[:7])
    assert f.shape == (7, 64) and f.dtype == np.float64


def test_classifier_training_is_deterministic_given_the_seed():
    ds = data.load_dataset("shapes", n=100, seed=0)
    a = metrics.train_classifier(ds, steps=3, batch_size=8, seed=4)
    b = metrics.train_classifier(ds, steps=3, batch_size=8, seed=4)
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p.data, q.data)


def test_classifier_rejects_images_of_the_wrong_shape(digits_classifier):
    with pytest.raises(ValueError, match=r"\(N, 1, 16, 16\)"):
        digits_classifier.predict(np.zeros((2, 3, 16, 16), np.float32))


def test_train_classifier_rejects_points():
    with pytest.raises(ValueError, match="labelled images"):
        metrics.train_classifier(data.load_dataset("moons", n=100))


def test_classifier_rejects_image_size_not_divisible_by_4():
    with pytest.raises(ValueError, match="divisible by 4"):
        metrics.Classifier(1, 10, 3)


def test_classifier_state_dict_round_trip_gives_the_same_predictions(digits_classifier):
    clf = digits_classifier
    copy = metrics.Classifier(**clf.config)
    copy.load_state_dict(clf.state_dict())
    x = clf.heldout.x[:50]
    np.testing.assert_array_equal(copy.features(x), clf.features(x))  # same weights, same arithmetic


def test_classifier_load_state_dict_rejects_bad_dicts():
    clf = metrics.Classifier(1, 8, 3)
    sd = clf.state_dict()
    sd.pop("fc_bias")
    with pytest.raises(KeyError, match="fc_bias"):
        clf.load_state_dict(sd)
    sd = clf.state_dict()
    sd["out_bias"] = np.zeros(5, np.float32)
    with pytest.raises(ValueError, match="out_bias"):
        clf.load_state_dict(sd)
