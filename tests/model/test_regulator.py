"""The regulator's equations against independent oracles (numpy moments, scipy's normal pdf)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from jaxcerv.model import regulator

GRID = (5, 7)  # rows, cols: non-square so that h/v mix-ups fail


def _centres(grid):
    rows, cols = grid
    return np.array([(j + 0.5, i + 0.5) for i in range(rows) for j in range(cols)])  # (h, v)


def test_initial_params_is_g0():
    np.testing.assert_allclose(regulator.initial_params(GRID), [3.5, 2.5, 3.5, 0.0, 2.5])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_gaussian_matches_numpy_weighted_moments(seed):
    rng = np.random.default_rng(seed)
    w = rng.uniform(size=(3, *GRID)).astype(np.float32)
    got = np.asarray(regulator.fit_gaussian(w))
    for b in range(3):
        pts = _centres(GRID)
        mean = np.average(pts, axis=0, weights=w[b].ravel())
        cov = np.cov(pts.T, aweights=w[b].ravel(), bias=True)
        np.testing.assert_allclose(got[b, :2], mean, rtol=1e-5)
        np.testing.assert_allclose(got[b, 2:], [cov[0, 0], cov[0, 1], cov[1, 1]], rtol=1e-4)


def test_gaussian_density_matches_scipy():
    params = np.array([[2.2, 3.1, 4.0, 1.2, 2.5], [5.0, 1.0, 1.5, -0.4, 0.8]], np.float32)
    got = np.asarray(regulator.gaussian_density(params, GRID))
    assert got.shape == (2, *GRID)
    for b, p in enumerate(params):
        cov = [[p[2], p[3]], [p[3], p[4]]]
        want = multivariate_normal(mean=p[:2], cov=cov).pdf(_centres(GRID)).reshape(GRID)
        np.testing.assert_allclose(got[b], want, rtol=1e-4, atol=1e-7)


def test_spatial_loss_hand_computed():
    # weights min-max -> [0, 1, 0.5, 0.25]; density min-max -> [1, 0, 0.5, 0.75]
    a = np.array([[0.2, 0.6], [0.4, 0.3]], np.float32)
    s = np.array([[4.0, 0.0], [2.0, 3.0]], np.float32)
    # sum(1 - a_n * s_n) = 4 - (0 + 0 + 0.25 + 0.1875)
    np.testing.assert_allclose(regulator.spatial_loss(a, s), 4 - 0.4375, rtol=1e-6)


def test_spatial_loss_constant_map_is_finite():
    a = np.full((3, 3), 0.5, np.float32)
    s = np.arange(9, dtype=np.float32).reshape(3, 3)
    np.testing.assert_allclose(regulator.spatial_loss(a, s), 9.0)  # normalised weights are all 0


def test_softmax_outside_is_the_softmax_share_outside_and_ignores_the_shared_level():
    rng = np.random.default_rng(3)
    z = rng.normal(0.0, 3.0, size=(2, *GRID)).astype(np.float32)
    s = rng.uniform(size=(2, *GRID)).astype(np.float32)
    k = GRID[0] * GRID[1]
    for b in range(2):
        share = np.exp(z[b] - z[b].max()) / np.exp(z[b] - z[b].max()).sum()
        norm_s = (s[b] - s[b].min()) / (s[b].max() - s[b].min())
        want = k * np.sum(share * (1.0 - norm_s))
        np.testing.assert_allclose(regulator.softmax_outside_loss(z, s)[b], want, rtol=1e-5)
    # The recipe's weights sigmoid(z) sink or saturate with the logits' shared level; this loss
    # does not see it: a shift gives the same value, finite far beyond float32's exp range, and
    # its gradient has no component along the shift (the weight MLP's bias gets none).
    for shift in (-300.0, 40.0, 300.0):
        np.testing.assert_allclose(regulator.softmax_outside_loss(z + shift, s),
                                   regulator.softmax_outside_loss(z, s), rtol=1e-5)
    grad = jax.grad(lambda x: regulator.softmax_outside_loss(x, s).sum())(jnp.asarray(z))
    np.testing.assert_allclose(np.asarray(grad).sum(axis=(1, 2)), 0.0, atol=1e-5)
    assert np.abs(np.asarray(grad)).max() > 1e-2


def test_logit_decay_is_the_sum_of_squared_logits_per_image():
    z = np.random.default_rng(4).normal(0.0, 5.0, size=(3, *GRID)).astype(np.float32)
    np.testing.assert_allclose(regulator.logit_decay_loss(z), (z.astype(np.float64) ** 2).sum(
        axis=(1, 2)), rtol=1e-5)


def test_fit_of_density_recovers_its_parameters():
    # Weighted MLE on a Gaussian's own density recovers it when it lies well inside a big grid.
    grid = (60, 60)
    p = np.array([28.0, 31.0, 20.0, 6.0, 12.0], np.float32)
    fit = np.asarray(regulator.fit_gaussian(regulator.gaussian_density(p, grid)))
    np.testing.assert_allclose(fit, p, atol=0.05)


@pytest.mark.parametrize(
    "params, ok",
    [
        ([3.0, 2.0, 1.0, 0.0, 1.0], True),
        ([7.5, 2.0, 1.0, 0.0, 1.0], False),  # centre right of the grid
        ([3.0, -0.1, 1.0, 0.0, 1.0], False),  # centre above the grid
        ([3.0, 2.0, 1.0, 1.0, 1.0], False),  # singular covariance
        ([3.0, 2.0, -1.0, 0.0, 1.0], False),  # negative variance
        ([np.nan, 2.0, 1.0, 0.0, 1.0], False),
        ([3.0, 2.0, np.inf, 0.0, 1.0], False),
    ],
)
def test_is_valid(params, ok):
    assert bool(regulator.is_valid(np.array(params, np.float32), GRID)) is ok


def test_zero_weights_fit_is_invalid():
    fit = regulator.fit_gaussian(np.zeros(GRID, np.float32))
    assert not bool(regulator.is_valid(fit, GRID))


def _histogram(points: np.ndarray, grid) -> np.ndarray:
    """Counts of (h, v) points per patch (rows = v): the weights a kernel's fit sees."""
    rows, cols = grid
    counts, _, _ = np.histogram2d(points[:, 1], points[:, 0], bins=(rows, cols),
                                  range=((0, rows), (0, cols)))
    return counts.astype(np.float32)


def _moments(points: np.ndarray) -> np.ndarray:
    c = np.cov(points.T)
    return np.array([*points.mean(axis=0), c[0, 0], c[0, 1], c[1, 1]])


# Binning points to patch centres adds 1/12 patch^2 to each variance (Sheppard).
SHEPPARD = np.array([0, 0, 1 / 12, 0, 1 / 12])


@pytest.mark.parametrize("beta", [1.0, 2.0, 4.0])
def test_flat_top_fit_recovers_moments_and_shape_of_sampled_points(beta):
    """Oracle: points drawn by rejection from exp(-0.5 m^beta) (scatter [[60, 15], [15, 40]]),
    binned on a 64x64 grid: the fit returns their numpy mean and covariance and the beta they were
    drawn with."""
    rng = np.random.default_rng(0)
    prec = np.linalg.inv(np.array([[60.0, 15.0], [15.0, 40.0]]))
    box = rng.uniform([1, 1], [63, 63], size=(1_500_000, 2))
    d = box - np.array([31.0, 33.0])
    m = np.einsum("ni,ij,nj->n", d, prec, d)
    points = box[rng.uniform(size=len(m)) < np.exp(-0.5 * m**beta)]
    fit = np.asarray(regulator.fit_flat_top(_histogram(points, (64, 64))))
    np.testing.assert_allclose(fit[:5], _moments(points) + SHEPPARD, atol=0.15)
    np.testing.assert_allclose(fit[5], beta, rtol=0.08)
    assert bool(regulator.kernel_valid(fit, (64, 64), "flat_top"))


def test_flat_top_density_is_a_density_and_the_gaussian_at_beta_1():
    grid = (60, 60)
    for beta in (0.7, 1.0, 3.0):
        p = np.array([29.0, 31.0, 30.0, 5.0, 20.0, beta], np.float32)
        np.testing.assert_allclose(float(regulator.flat_top_density(p, grid).sum()), 1.0,
                                   rtol=2e-3)
    p = np.array([3.2, 2.1, 1.5, 0.3, 0.9, 1.0], np.float32)
    want = multivariate_normal([3.2, 2.1], [[1.5, 0.3], [0.3, 0.9]]).pdf(_centres(GRID))
    np.testing.assert_allclose(np.asarray(regulator.flat_top_density(p, GRID)).ravel(), want,
                               rtol=1e-4)


def test_mixture_fit_recovers_both_components_of_sampled_points():
    """Oracle: 35% / 65% of 200k points from two numpy normals, binned on a 40x40 grid: EM
    recovers the share, the two means and covariances; the moments in front are the points'."""
    rng = np.random.default_rng(1)
    mus = np.array([[12.0, 14.0], [28.0, 25.0]])
    covs = np.array([[[6.0, 1.0], [1.0, 5.0]], [[8.0, -2.0], [-2.0, 4.0]]])
    n1 = 70_000
    points = np.concatenate([rng.multivariate_normal(mus[0], covs[0], n1),
                             rng.multivariate_normal(mus[1], covs[1], 200_000 - n1)])
    fit = np.asarray(regulator.fit_mixture(_histogram(points, (40, 40))))
    np.testing.assert_allclose(fit[:5], _moments(points) + SHEPPARD, atol=0.1)
    comps = sorted([(fit[5], fit[6:11]), (1 - fit[5], fit[11:16])],
                   key=lambda c: c[1][0])
    np.testing.assert_allclose(comps[0][0], 0.35, atol=0.01)
    for (_, got), mu, cov in zip(comps, mus, covs, strict=True):
        want = np.array([*mu, cov[0, 0], cov[0, 1], cov[1, 1]]) + SHEPPARD
        np.testing.assert_allclose(got, want, atol=0.15)
    assert bool(regulator.kernel_valid(fit, (40, 40), "mixture"))


@pytest.mark.parametrize("kernel", regulator.KERNELS)
def test_every_kernels_g0_is_the_papers_g0_density(kernel):
    g0 = regulator.initial_state(GRID, 0.0, kernel)
    assert g0.shape == (regulator.state_size(kernel),)
    np.testing.assert_allclose(regulator.kernel_density(g0, GRID, kernel),
                               regulator.gaussian_density(regulator.initial_params(GRID), GRID),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="regulator.kernel='disc'"):
        regulator.state_size("disc")


def test_gaussian_kl_matches_the_numpy_matrix_formula():
    rng = np.random.default_rng(3)
    for _ in range(5):
        a, b = rng.uniform(0.3, 1.5, (2, 2, 2))
        cp, cq = a @ a.T + 0.1 * np.eye(2), b @ b.T + 0.1 * np.eye(2)
        mp, mq = rng.uniform(1, 4, 2), rng.uniform(1, 4, 2)
        qi = np.linalg.inv(cq)
        want = 0.5 * (np.trace(qi @ cp) + (mq - mp) @ qi @ (mq - mp) - 2
                      + np.log(np.linalg.det(cq) / np.linalg.det(cp)))
        p = np.array([*mp, cp[0, 0], cp[0, 1], cp[1, 1]], np.float32)
        q = np.array([*mq, cq[0, 0], cq[0, 1], cq[1, 1]], np.float32)
        np.testing.assert_allclose(float(regulator.gaussian_kl(p, q)), want, rtol=1e-4)
        assert abs(float(regulator.gaussian_kl(p, p))) < 1e-5


def _run_stop_rule(kls, valid=None, thaw_kl=0.0):
    """One image through a sequence of epochs' KLs -> (counts, writes) per epoch."""
    agree, counts, writes = np.zeros(1, np.int32), [], []
    for t, kl in enumerate(kls):
        ok = np.array([True if valid is None else valid[t]])
        agree, write = regulator.stop_rule(agree, np.array([kl], np.float32), ok, stop_kl=0.01,
                                           stop_epochs=3, thaw_kl=thaw_kl)
        counts.append(int(agree[0]))
        writes.append(bool(write[0]))
    return counts, writes


def test_stop_rule_freezes_after_k_agreeing_fits_and_not_when_fits_move():
    counts, writes = _run_stop_rule([1.0, 0.001, 0.002, 0.001, 0.5, 0.001])
    assert counts == [0, 1, 2, 3, 3, 3]  # frozen after the third agreeing fit
    assert writes == [True, True, True, True, False, False]  # frozen: never written again
    counts, writes = _run_stop_rule([0.001, 0.001, 0.5, 0.001, 0.001, 0.3])
    assert counts == [1, 2, 0, 1, 2, 0] and all(writes)  # a moving fit resets the count
    counts, _ = _run_stop_rule([0.001, 0.001, 0.001], valid=[True, False, True])
    assert counts == [1, 1, 2]  # an invalid fit changes nothing


def test_stop_rule_thaws_a_frozen_image_when_a_fit_moves_past_thaw_kl():
    counts, writes = _run_stop_rule([0.001] * 3 + [0.05, 0.5, 0.001], thaw_kl=0.1)
    assert counts == [1, 2, 3, 3, 0, 1]  # 0.05 < thaw_kl stays frozen; 0.5 thaws it
    assert writes == [True, True, True, False, True, True]


def test_refit_with_the_stopping_criterion_keeps_a_frozen_images_regulator():
    """Fitting the same map again and again: the first fit moves off G0 (KL large), the next
    three agree, then the image is frozen and a different map's fit is no longer written."""
    grid = (6, 6)
    w = np.zeros((1, 6, 6), np.float32)
    w[0, 1:4, 1:3] = 1.0
    regs = jnp.tile(regulator.initial_params(grid), (2, 1))
    agree = jnp.zeros(2, jnp.int32)
    idx, mask = jnp.array([1]), jnp.array([True])
    stop = {"stop_kl": 0.01, "stop_epochs": 3, "thaw_kl": 0.0}
    for _ in range(4):
        regs, _, agree = regulator.refit(regs, idx, w, mask, fit_on="weights", mode="iterative",
                                         agree=agree, stop=stop)
    assert agree.tolist() == [0, 3]
    frozen = np.asarray(regs[1])
    np.testing.assert_allclose(frozen, np.asarray(regulator.fit_gaussian(w[0])), rtol=1e-6)
    moved = np.roll(w, 2, axis=-1)
    regs, valid, agree = regulator.refit(regs, idx, moved, mask, fit_on="weights",
                                         mode="iterative", agree=agree, stop=stop)
    assert bool(valid[0]) and np.array_equal(np.asarray(regs[1]), frozen)
    np.testing.assert_array_equal(regs[0], regulator.initial_params(grid))  # row 0 untouched
