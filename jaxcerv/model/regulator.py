"""The spatial regulator: a per-image 2-D Gaussian on the patch grid (Eq. 5-6, 8-10, Alg. 1).

Pure jittable functions, no Flax state, so the mathematics can be checked line by line against the
paper. Coordinates are patch units: patch (row i, column j) has centre (h = j + 0.5, v = i + 0.5).
A regulator is the 5-vector ``[mu_h, mu_v, s_hh, s_hv, s_vv]`` (mean and covariance entries).
Every function broadcasts over leading batch axes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln

from jaxcerv.model.tolerances import FLAT_ABS, FLAT_REL

# Alg. 1 variants: "iterative" re-fits every image's regulator (the paper), "fixed" keeps G0 for
# every image, "none" drops the spatial loss (the ablation of Fig. 5c).
MODES = ("iterative", "fixed", "none")
# What each regulator is fitted to: see ``fit_targets``.
FIT_ON = ("weights", "normalised", "above_median")
# The spatial loss (``spatial_loss_fn``): Eq. 5-6 ("paper"), its one-sided form, or the share of
# the map's mass outside the regulator, read from the weights or from the softmax of their logits.
LOSSES = ("paper", "one_sided", "mass_outside", "softmax_outside")
# What the spatial loss min-max normalises: the patch weights (Eq. 6) or their logits.
NORMALISE = ("weights", "logits")

# Variances below this (in squared patches) are treated as degenerate: a fit that collapses onto a
# single patch would give an infinitely sharp density and a meaningless spatial loss.
MIN_VARIANCE = 1e-3
# Guards the min-max normalisation of a constant map (Eq. 6) against a zero range.
RANGE_EPS = FLAT_ABS


def patch_centres(grid_hw: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
    """Horizontal and vertical centre coordinates of every patch, each shaped (H, W)."""
    rows, cols = grid_hw
    v, h = jnp.meshgrid(jnp.arange(rows) + 0.5, jnp.arange(cols) + 0.5, indexing="ij")
    return h, v


def initial_params(grid_hw: tuple[int, int], fraction: float = 0.0) -> jax.Array:
    """G0 of Alg. 1: mu = (w0, h0), s_hh = w0, s_vv = h0, s_hv = 0 (w0, h0 = half the grid).

    The paper's variances are in patch units, so its G0 covers less of the image the finer the
    grid. ``fraction`` > 0 sets the standard deviation to that fraction of each side instead."""
    rows, cols = grid_hw
    w0, h0 = cols / 2.0, rows / 2.0
    if fraction > 0:
        return jnp.array([w0, h0, (fraction * cols) ** 2, 0.0, (fraction * rows) ** 2],
                         dtype=jnp.float32)
    return jnp.array([w0, h0, w0, 0.0, h0], dtype=jnp.float32)


def gaussian_density(params: jax.Array, grid_hw: tuple[int, int]) -> jax.Array:
    """Eq. 10: the 2-D normal density of ``params`` (..., 5) at the patch centres -> (..., H, W)."""
    h, v = patch_centres(grid_hw)
    p = params[..., None, None, :]
    mu_h, mu_v, s_hh, s_hv, s_vv = (p[..., k] for k in range(5))
    det = s_hh * s_vv - s_hv**2
    dh, dv = h - mu_h, v - mu_v
    # (d^T S^-1 d) with the closed-form inverse of a 2x2 covariance.
    mahalanobis = (s_vv * dh**2 - 2.0 * s_hv * dh * dv + s_hh * dv**2) / det
    return jnp.exp(-0.5 * mahalanobis) / (2.0 * jnp.pi * jnp.sqrt(det))


def min_max(x: jax.Array) -> jax.Array:
    """Per-image min-max normalisation over the last two axes, in [0, 1]; 0 where the map is
    constant to float32 precision. XLA may evaluate x and its min in different fusions, an ulp
    apart: a constant map (G0 on a 2x2 grid) then gave x - lo = 1e-8 over a range of 0, a
    "normalised" value of 1e4 and a spatial loss of -15490."""
    lo = jnp.min(x, axis=(-2, -1), keepdims=True)
    hi = jnp.max(x, axis=(-2, -1), keepdims=True)
    span = hi - lo
    flat = span <= FLAT_REL * jnp.maximum(jnp.abs(hi), jnp.abs(lo)) + RANGE_EPS
    return jnp.where(flat, 0.0, jnp.clip((x - lo) / jnp.where(flat, 1.0, span), 0.0, 1.0))


def spatial_loss(weights: jax.Array, density: jax.Array) -> jax.Array:
    """Eq. 5-6 for one image: sum over its patches of 1 - norm(a_m) * norm(s_m) -> (...)."""
    return jnp.sum(1.0 - min_max(weights) * min_max(density), axis=(-2, -1))


def one_sided_spatial_loss(weights: jax.Array, density: jax.Array) -> jax.Array:
    """Sum over an image's patches of norm(a_m) * (1 - norm(s_m)) -> (...): weight outside the
    regulator costs, weight inside is free. Eq. 6 also charges every patch inside the regulator
    for a weight below 1, which makes the map a uniform cervix mask and hides the lesions."""
    return jnp.sum(min_max(weights) * (1.0 - min_max(density)), axis=(-2, -1))


def mass_outside_loss(weights: jax.Array, density: jax.Array) -> jax.Array:
    """The share of an image's weight mass outside the regulator, times its patch count (the
    scale of Eq. 6): K * sum(a_m * (1 - norm(s_m))) / sum(a_m) -> (...). Unlike the one-sided
    loss a flat map is not free: min-max normalising the weights makes a flat map cost 0 there,
    and on the synthetic benchmark the weights collapsed to one."""
    k = weights.shape[-2] * weights.shape[-1]
    outside = jnp.sum(weights * (1.0 - min_max(density)), axis=(-2, -1))
    return k * outside / jnp.maximum(jnp.sum(weights, axis=(-2, -1)), RANGE_EPS)


def mass_outside_from_logits(logits: jax.Array, density: jax.Array) -> jax.Array:
    """``mass_outside_loss`` of the weights sigmoid(z), read from their logits z: the share
    a_m / sum(a) is softmax(log sigmoid(z))_m, exact where every a_m underflows to 0 in float32.
    On the weights themselves the share is then 0 / 0, which the loss can only read as 0 (a
    collapsed map looks free); with the recipe's settings otherwise, those runs ended in NaN
    within 4 epochs on the benchmark (seeds 3 and 4) and the demo (seed 2)."""
    return _softmax_share_outside(jax.nn.log_sigmoid(logits.astype(jnp.float32)), density)


def _softmax_share_outside(scores: jax.Array, density: jax.Array) -> jax.Array:
    """K * sum(softmax(scores)_m * (1 - norm(s_m))) over an image's K patches -> (...): the share
    of the map softmax(scores) outside the regulator, at the scale of Eq. 6."""
    k = scores.shape[-2] * scores.shape[-1]
    flat = scores.astype(jnp.float32).reshape(*scores.shape[:-2], k)
    share = jax.nn.softmax(flat, axis=-1).reshape(scores.shape)
    return k * jnp.sum(share * (1.0 - min_max(density)), axis=(-2, -1))


def softmax_outside_loss(logits: jax.Array, density: jax.Array) -> jax.Array:
    """The share of softmax(z) outside the regulator, times the patch count: K * sum(softmax(z)_m *
    (1 - norm(s_m))) -> (...). Like ``mass_outside_from_logits`` where the weights are small
    (log sigmoid(z) ~ z), but shift-invariant in z: the loss never moves the logits' shared
    level, so it cannot drive the weights into the sigmoid's flat top."""
    return _softmax_share_outside(logits, density)


def logit_decay_loss(logits: jax.Array) -> jax.Array:
    """Sum over an image's patches of z_m^2 -> (...): pulls the weight logits towards 0 (weight
    0.5), so a loss that rewards their range (``softmax_outside``) cannot push them into the
    sigmoid's flat ends, where every weight inside the regulator reads 1.0 in float32."""
    return jnp.sum(jnp.square(logits.astype(jnp.float32)), axis=(-2, -1))


def spatial_loss_fn(name: str, on_logits: bool = False):
    """The spatial loss named by ``config.regulator.loss``, for the weights or (``on_logits``,
    ``regulator.normalise=logits``) their logits."""
    if name not in LOSSES:
        raise ValueError(f"config.regulator.loss={name!r}: use one of {LOSSES}")
    if name == "mass_outside":
        return mass_outside_from_logits if on_logits else mass_outside_loss
    if name == "softmax_outside":
        return softmax_outside_loss
    return {"paper": spatial_loss, "one_sided": one_sided_spatial_loss}[name]


def fit_gaussian(weights: jax.Array) -> jax.Array:
    """Weighted maximum likelihood (Alg. 1): weighted mean and covariance of the patch centres.

    ``weights`` (..., H, W) are the patch weights a_m; the result is (..., 5). A map whose weights
    sum to zero yields NaNs, which ``is_valid`` rejects, so the old regulator is kept.
    """
    h, v = patch_centres(weights.shape[-2:])
    w = weights.astype(jnp.float32)
    total = jnp.sum(w, axis=(-2, -1))

    def moment(x: jax.Array) -> jax.Array:
        return jnp.sum(w * x, axis=(-2, -1)) / total

    mu_h, mu_v = moment(h), moment(v)
    dh = h - mu_h[..., None, None]
    dv = v - mu_v[..., None, None]
    return jnp.stack([mu_h, mu_v, moment(dh * dh), moment(dh * dv), moment(dv * dv)], axis=-1)


# ---------------------------------------------------------------------------------------------
# Regulator kernels (``regulator.kernel``), the paper's future work. Every kernel's state begins
# with the 5 weighted moments [mu_h, mu_v, c_hh, c_hv, c_vv] of what it was fitted to (mean and
# covariance), so centre errors, ellipses and reports read any kernel's first 5 entries as they
# read the paper's Gaussian (whose state is exactly those 5).
#   "gaussian" (the paper, Eq. 10): 5 entries.
#   "flat_top": a generalised Gaussian exp(-0.5 m^beta), m the Mahalanobis distance of its scatter
#       matrix; beta 1 is the Gaussian, beta > 1 a plateau with a soft edge (a cervix seen face on
#       is a disc, not a bump): 6 entries, beta last.
#   "mixture": two Gaussian components (a transformation zone beside the os): 5 + 11 entries,
#       [pi, mu_h1, mu_v1, s_hh1, s_hv1, s_vv1, mu_h2, ..., s_vv2] after the moments.
KERNELS = ("gaussian", "flat_top", "mixture")
BETA_RANGE = (0.25, 8.0)  # the shapes the flat-top fit can return
EM_STEPS = 10  # EM iterations of the mixture fit (from a split of the single Gaussian)


def state_size(kernel: str) -> int:
    """Entries of one image's regulator state for ``kernel``."""
    if kernel not in KERNELS:
        raise ValueError(f"config.regulator.kernel={kernel!r}: use one of {KERNELS}")
    return {"gaussian": 5, "flat_top": 6, "mixture": 16}[kernel]


def initial_state(grid_hw: tuple[int, int], fraction: float = 0.0,
                  kernel: str = "gaussian") -> jax.Array:
    """G0 in ``kernel``'s state: the same density as the paper's G0 (beta 1; two equal halves)."""
    g0 = initial_params(grid_hw, fraction)
    if state_size(kernel) == 5:
        return g0
    if kernel == "flat_top":
        return jnp.concatenate([g0, jnp.ones(1, jnp.float32)])
    return jnp.concatenate([g0, jnp.full(1, 0.5, jnp.float32), g0, g0])


def _mean_sq_mahalanobis(beta: jax.Array) -> jax.Array:
    """E[m] under exp(-0.5 m^beta) in 2-D, in units of the scatter matrix: 0.5 m^beta is
    Gamma(1/beta, 1) distributed, so E[m] = 2^(1/beta) Gamma(2/beta) / Gamma(1/beta)."""
    return jnp.exp(jnp.log(2.0) / beta + gammaln(2.0 / beta) - gammaln(1.0 / beta))


def _moment_ratio(beta: jax.Array) -> jax.Array:
    """E[m^2] / E[m]^2 under exp(-0.5 m^beta) in 2-D: Gamma(3/b) Gamma(1/b) / Gamma(2/b)^2; 2 for
    the Gaussian, 4/3 for a uniform disc (beta -> inf), decreasing in beta."""
    return jnp.exp(gammaln(3.0 / beta) + gammaln(1.0 / beta) - 2.0 * gammaln(2.0 / beta))


def _mahalanobis(cov5: jax.Array, grid_hw: tuple[int, int]) -> jax.Array:
    """d^T S^-1 d at the patch centres for [mu_h, mu_v, s_hh, s_hv, s_vv] (..., 5) -> (..., H, W),
    and det S (..., 1, 1)."""
    h, v = patch_centres(grid_hw)
    p = cov5[..., None, None, :]
    mu_h, mu_v, s_hh, s_hv, s_vv = (p[..., k] for k in range(5))
    det = s_hh * s_vv - s_hv**2
    dh, dv = h - mu_h, v - mu_v
    return (s_vv * dh**2 - 2.0 * s_hv * dh * dv + s_hh * dv**2) / det, det


def flat_top_density(params: jax.Array, grid_hw: tuple[int, int]) -> jax.Array:
    """The flat-top density of a (..., 6) state at the patch centres -> (..., H, W). Its scatter
    matrix is the covariance over E[m] / 2, its normaliser pi 2^(1/b) Gamma(1 + 1/b) sqrt(det)."""
    beta = params[..., 5]
    scale = (2.0 / _mean_sq_mahalanobis(beta))[..., None]
    scatter = jnp.concatenate([params[..., :2], params[..., 2:5] * scale], axis=-1)
    m, det = _mahalanobis(scatter, grid_hw)
    b = beta[..., None, None]
    norm = jnp.pi * jnp.exp(jnp.log(2.0) / b + gammaln(1.0 + 1.0 / b)) * jnp.sqrt(det)
    return jnp.exp(-0.5 * jnp.maximum(m, 0.0) ** b) / norm


def mixture_density(params: jax.Array, grid_hw: tuple[int, int]) -> jax.Array:
    """pi N(mu_1, S_1) + (1 - pi) N(mu_2, S_2) of a (..., 16) state -> (..., H, W)."""
    pi = params[..., 5, None, None]
    return (pi * gaussian_density(params[..., 6:11], grid_hw)
            + (1.0 - pi) * gaussian_density(params[..., 11:16], grid_hw))


def kernel_density(params: jax.Array, grid_hw: tuple[int, int], kernel: str = "gaussian"
                   ) -> jax.Array:
    """The regulator density s of ``kernel`` at the patch centres (Eq. 10 for the Gaussian)."""
    if kernel == "flat_top":
        return flat_top_density(params, grid_hw)
    if kernel == "mixture":
        return mixture_density(params, grid_hw)
    return gaussian_density(params, grid_hw)


def fit_flat_top(weights: jax.Array) -> jax.Array:
    """Weighted moment fit of the flat-top kernel -> (..., 6): the weighted mean and covariance
    (as the Gaussian), then beta from the shape statistic E_w[m^2] / E_w[m]^2 of the weighted
    Mahalanobis distances, which depends on beta alone (``_moment_ratio``); 40 bisection steps on
    log beta solve it in the jitted refit. beta 1 is returned for a Gaussian's own weights."""
    moments = fit_gaussian(weights)
    m, _ = _mahalanobis(moments, weights.shape[-2:])
    w = weights.astype(jnp.float32)
    total = jnp.sum(w, axis=(-2, -1))
    e1 = jnp.sum(w * m, axis=(-2, -1)) / total
    e2 = jnp.sum(w * m * m, axis=(-2, -1)) / total
    ratio = e2 / (e1 * e1)
    lo = jnp.full_like(ratio, jnp.log(BETA_RANGE[0]))
    hi = jnp.full_like(ratio, jnp.log(BETA_RANGE[1]))

    def bisect(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        above = _moment_ratio(jnp.exp(mid)) > ratio  # too peaked: beta must grow
        return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    lo, hi = jax.lax.fori_loop(0, 40, bisect, (lo, hi))
    return jnp.concatenate([moments, jnp.exp(0.5 * (lo + hi))[..., None]], axis=-1)


def fit_mixture(weights: jax.Array, steps: int = EM_STEPS) -> jax.Array:
    """Weighted EM for two Gaussians -> (..., 16): start from the single Gaussian split along its
    major axis (centres at +-1 standard deviation, each with the covariance less that spread),
    then ``steps`` EM iterations on the patch centres weighted by ``weights``. The moments in
    front are those of the weights (EM keeps the mixture's mean and covariance equal to them)."""
    grid = weights.shape[-2:]
    h, v = patch_centres(grid)
    w = weights.astype(jnp.float32)
    moments = fit_gaussian(w)
    mu_h, mu_v, c_hh, c_hv, c_vv = (moments[..., k] for k in range(5))
    half_tr = 0.5 * (c_hh + c_vv)
    lam1 = half_tr + jnp.sqrt(jnp.maximum(0.25 * (c_hh - c_vv) ** 2 + c_hv**2, 0.0))
    # Major-axis direction of [[c_hh, c_hv], [c_hv, c_vv]] (the h axis when it is diagonal).
    tilted, wide = jnp.abs(c_hv) > 1e-12, c_hh >= c_vv
    eh = jnp.where(tilted, lam1 - c_vv, jnp.where(wide, 1.0, 0.0))
    ev = jnp.where(tilted, c_hv, jnp.where(wide, 0.0, 1.0))
    n = jnp.sqrt(eh**2 + ev**2)
    sd = jnp.sqrt(lam1)
    dh, dv = sd * eh / n, sd * ev / n
    shrink = jnp.stack([c_hh - dh * dh, c_hv - dh * dv, c_vv - dv * dv], axis=-1)
    comp1 = jnp.concatenate([jnp.stack([mu_h - dh, mu_v - dv], -1), shrink], -1)
    comp2 = jnp.concatenate([jnp.stack([mu_h + dh, mu_v + dv], -1), shrink], -1)
    # A small floor keeps the starting covariances definite (the split removes the major axis).
    floor = jnp.array([0.0, 0.0, 0.25, 0.0, 0.25], jnp.float32)
    state = (jnp.full(mu_h.shape, 0.5, jnp.float32), comp1 + floor, comp2 + floor)

    def em(_, state):
        pi, c1, c2 = state
        p1 = pi[..., None, None] * gaussian_density(c1, grid)
        p2 = (1.0 - pi[..., None, None]) * gaussian_density(c2, grid)
        r1 = p1 / jnp.maximum(p1 + p2, 1e-30)
        w1, w2 = w * r1, w * (1.0 - r1)
        new_pi = jnp.sum(w1, axis=(-2, -1)) / jnp.sum(w, axis=(-2, -1))
        return new_pi, fit_gaussian(w1), fit_gaussian(w2)

    pi, c1, c2 = jax.lax.fori_loop(0, steps, em, state)
    return jnp.concatenate([moments, pi[..., None], c1, c2], axis=-1)


def fit_kernel(targets: jax.Array, kernel: str = "gaussian") -> jax.Array:
    """``kernel``'s fit to the per-patch masses ``targets`` (see ``fit_targets``)."""
    if kernel == "flat_top":
        return fit_flat_top(targets)
    if kernel == "mixture":
        return fit_mixture(targets)
    return fit_gaussian(targets)


def kernel_valid(params: jax.Array, grid_hw: tuple[int, int], kernel: str = "gaussian"
                 ) -> jax.Array:
    """``is_valid`` for every Gaussian in the state, beta inside BETA_RANGE, pi in (0, 1)."""
    ok = is_valid(params[..., :5], grid_hw)
    if kernel == "flat_top":
        beta = params[..., 5]
        ok = ok & (beta >= BETA_RANGE[0]) & (beta <= BETA_RANGE[1])
    if kernel == "mixture":
        pi = params[..., 5]
        ok = ok & (pi > 1e-3) & (pi < 1 - 1e-3) & is_valid(params[..., 6:11], grid_hw)
        ok = ok & is_valid(params[..., 11:16], grid_hw)
    return ok


def is_valid(params: jax.Array, grid_hw: tuple[int, int]) -> jax.Array:
    """A fit may replace the old regulator only if its centre lies inside the grid, its covariance
    is symmetric positive definite (not degenerate) and all entries are finite -> bool (...)."""
    rows, cols = grid_hw
    mu_h, mu_v, s_hh, s_hv, s_vv = (params[..., k] for k in range(5))
    finite = jnp.all(jnp.isfinite(params), axis=-1)
    inside = (mu_h >= 0) & (mu_h <= cols) & (mu_v >= 0) & (mu_v <= rows)
    definite = (
        (s_hh > MIN_VARIANCE) & (s_vv > MIN_VARIANCE) & (s_hh * s_vv - s_hv**2 > MIN_VARIANCE**2)
    )
    return finite & inside & definite


def fit_targets(weights: jax.Array, fit_on: str) -> jax.Array:
    """The per-patch masses the regulator is fitted to (Alg. 1's "estimation from patch weights").

    "weights": the raw sigmoid outputs, as the paper states; their background floor drags every
    fit towards the grid centre. "normalised": min-max normalised, what the spatial loss sees.
    "above_median": the normalised weights less their per-image median, clipped at 0, so only the
    patches weighted above the image's typical patch locate the regulator.
    """
    if fit_on == "weights":
        return weights
    normalised = min_max(weights)
    if fit_on == "normalised":
        return normalised
    if fit_on == "above_median":
        median = jnp.median(normalised.reshape(*normalised.shape[:-2], -1), axis=-1)
        return jnp.maximum(normalised - median[..., None, None], 0.0)
    raise ValueError(f"config.regulator.fit_on={fit_on!r}: use one of {FIT_ON}")


def fit(weights: jax.Array, fit_on: str, kernel: str = "gaussian") -> jax.Array:
    """An image's own regulator: ``kernel``'s fit to its fit targets -> (..., state_size)."""
    return fit_kernel(fit_targets(weights, fit_on), kernel)


def gaussian_kl(p: jax.Array, q: jax.Array) -> jax.Array:
    """KL(N_p || N_q) between the Gaussians of the moments p[..., :5] and q[..., :5] -> (...):
    0.5 (tr(Q^-1 P) + d^T Q^-1 d - 2 + ln(det Q / det P)), closed form for 2x2 covariances."""
    ph, pv, p_hh, p_hv, p_vv = (p[..., k] for k in range(5))
    qh, qv, q_hh, q_hv, q_vv = (q[..., k] for k in range(5))
    det_p, det_q = p_hh * p_vv - p_hv**2, q_hh * q_vv - q_hv**2
    trace = (q_vv * p_hh - 2.0 * q_hv * p_hv + q_hh * p_vv) / det_q
    dh, dv = qh - ph, qv - pv
    maha = (q_vv * dh**2 - 2.0 * q_hv * dh * dv + q_hh * dv**2) / det_q
    return 0.5 * (trace + maha - 2.0 + jnp.log(det_q / det_p))


def stop_rule(
    agree: jax.Array, kl: jax.Array, valid: jax.Array, *, stop_kl: float, stop_epochs: int,
    thaw_kl: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """The stopping criterion for a batch of images (``regulator.stop_kl``): ``agree`` counts
    each image's successive valid fits whose KL to the regulator they would replace is below
    ``stop_kl``; at ``stop_epochs`` the image is frozen and its fits are no longer written. A
    frozen image thaws (count back to 0, the fit written) when a fit moves by more than
    ``thaw_kl`` (0: never). An invalid fit changes nothing. Returns (new counts, write)."""
    frozen = agree >= stop_epochs
    thaw = frozen & valid & (thaw_kl > 0) & (kl > thaw_kl)
    counted = jnp.where(kl < stop_kl, agree + 1, 0)
    new = jnp.where(~valid | (frozen & ~thaw), agree, jnp.where(thaw, 0, counted))
    return new, valid & (~frozen | thaw)


def scatter_rows(
    regulators: jax.Array, index: jax.Array, fits: jax.Array, write: jax.Array
) -> jax.Array:
    """Alg. 1's "if valid then update": scatter ``fits`` into rows ``index`` where ``write``.

    Rows that must not be written go to an out-of-range index and are dropped, so a padding row
    can never race a real row for the same slot.
    """
    target = jnp.where(write, index, regulators.shape[0])
    return regulators.at[target].set(fits, mode="drop")


def batch_regulators(
    regulators: jax.Array, index: jax.Array, mode: str, grid_hw: tuple[int, int],
    g0_fraction: float = 0.0, kernel: str = "gaussian",
) -> jax.Array:
    """The regulators a batch's spatial loss uses: each image's own row (Alg. 1), or G0 for
    every image when the mode keeps G0 fixed (or has no spatial loss)."""
    if mode == "iterative":
        return regulators[index]
    g0 = initial_state(grid_hw, g0_fraction, kernel)
    return jnp.broadcast_to(g0, (index.shape[0], g0.shape[-1]))


def refit(
    regulators: jax.Array,
    index: jax.Array,
    weights: jax.Array,
    mask: jax.Array,
    *,
    fit_on: str,
    mode: str,
    kernel: str = "gaussian",
    agree: jax.Array | None = None,
    stop: dict | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """One whole Algorithm-1 update for a batch: fit each image's Gaussian to its (stopped)
    patch weights, keep the fits that are valid (and real rows, ``mask``), write them back into
    rows ``index`` when the mode re-estimates. With ``stop`` (``stop_rule``'s thresholds) and the
    per-image agreement counts ``agree`` (N_train,), frozen images keep their regulator. Returns
    (new regulators, which rows were valid, new counts)."""
    grid = weights.shape[-2:]
    fits = fit(jax.lax.stop_gradient(weights), fit_on, kernel)
    valid = kernel_valid(fits, grid, kernel) & mask
    write = valid
    if stop is not None and agree is not None and mode == "iterative":
        kl = gaussian_kl(fits, regulators[index])
        counts, write = stop_rule(agree[index], kl, valid, **stop)
        agree = agree.at[jnp.where(mask, index, agree.shape[0])].set(counts, mode="drop")
    if mode == "iterative":
        regulators = scatter_rows(regulators, index, fits, write)
    return regulators, valid, agree
