"""The spatial regulator: a per-image 2-D Gaussian on the patch grid (Eq. 5-6, 8-10, Alg. 1).

Pure jittable functions, no Flax state, so the mathematics can be checked line by line against the
paper. Coordinates are patch units: patch (row i, column j) has centre (h = j + 0.5, v = i + 0.5).
A regulator is the 5-vector ``[mu_h, mu_v, s_hh, s_hv, s_vv]`` (mean and covariance entries).
Every function broadcasts over leading batch axes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcerv.model.tolerances import FLAT_ABS, FLAT_REL

# Alg. 1 variants: "iterative" re-fits every image's regulator (the paper), "fixed" keeps G0 for
# every image, "none" drops the spatial loss (the ablation of Fig. 5c).
MODES = ("iterative", "fixed", "none")
# What each regulator is fitted to: see ``fit_targets``.
FIT_ON = ("weights", "normalised", "above_median")
# The spatial loss: Eq. 5-6 ("paper") or its one-sided form (see ``one_sided_spatial_loss``).
LOSSES = ("paper", "one_sided", "mass_outside")
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


def spatial_loss_fn(name: str):
    """The spatial loss named by ``config.regulator.loss``."""
    if name not in LOSSES:
        raise ValueError(f"config.regulator.loss={name!r}: use one of {LOSSES}")
    return {"paper": spatial_loss, "one_sided": one_sided_spatial_loss,
            "mass_outside": mass_outside_loss}[name]


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


def fit(weights: jax.Array, fit_on: str) -> jax.Array:
    """An image's own regulator: the weighted-moment fit of its fit targets -> (..., 5)."""
    return fit_gaussian(fit_targets(weights, fit_on))


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
    g0_fraction: float = 0.0,
) -> jax.Array:
    """The regulators a batch's spatial loss uses: each image's own row (Alg. 1), or G0 for
    every image when the mode keeps G0 fixed (or has no spatial loss)."""
    if mode == "iterative":
        return regulators[index]
    g0 = initial_params(grid_hw, g0_fraction)
    return jnp.broadcast_to(g0, (index.shape[0], 5))


def refit(
    regulators: jax.Array,
    index: jax.Array,
    weights: jax.Array,
    mask: jax.Array,
    *,
    fit_on: str,
    mode: str,
) -> tuple[jax.Array, jax.Array]:
    """One whole Algorithm-1 update for a batch: fit each image's Gaussian to its (stopped)
    patch weights, keep the fits that are valid (and real rows, ``mask``), write them back into
    rows ``index`` when the mode re-estimates. Returns (new regulators, which rows were valid)."""
    grid = weights.shape[-2:]
    fits = fit(jax.lax.stop_gradient(weights), fit_on)
    valid = is_valid(fits, grid) & mask
    if mode == "iterative":
        regulators = scatter_rows(regulators, index, fits, valid)
    return regulators, valid
