"""Figures for the report (paper Fig. 4 b-f and Fig. 5) and heatmap overlays for ``predict``.

Matplotlib is used only through its object API (``matplotlib.figure.Figure``, which renders PNG
with Agg) and is imported lazily, so importing this module never touches pyplot's global state or
picks a GUI backend on a headless node. The heatmap/ellipse rasterisation is plain numpy
(``overlay_array``) so it can be saved with Pillow and checked pixel by pixel in tests.

Plot functions take arrays and an output path and return the path written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from jaxcerv.evaluation import metrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PathLike = str | os.PathLike
CLASS_NAMES = ("Normal (< CIN2)", "Abnormal (CIN2+)")
CLASS_COLOURS = ("tab:blue", "tab:green")  # the paper's Fig. 4c colours
GRADE_NAMES = {0: "0 (normal)", 1: "1", 2: "2", 3: "3", 4: "4 (cancer)"}
EVOLUTION_EPOCHS = (1, 32, 48)  # Fig. 5 d-f; the final epoch is appended by evolution_epochs
DPI = 120


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` x ``height`` inches at the package's DPI, without pyplot state."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save_figure(fig: Figure, path: PathLike) -> str:
    """Write ``fig`` to ``path`` (its folder made as needed); returns the path."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def _finish(fig: Figure, ax, path: PathLike, **labels: Any) -> str:
    """The tail of a one-axes plot: its labels and limits, the legend, the file."""
    ax.set(**labels)
    ax.legend(fontsize="small")
    return save_figure(fig, path)


def colormap(name: str):
    import matplotlib

    return matplotlib.colormaps[name]


# ---------------------------------------------------------------------------------------------
# Fig. 4: classification behaviour.


def roc_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: PathLike) -> str:
    """Several runs or baselines on one ROC plot (Fig. 4b), AUC in the legend."""
    if not curves:
        raise ValueError("roc_curves needs at least one (labels, probs) pair")
    fig = new_figure(5.5, 5.0)
    ax = fig.add_subplot()
    for name, (labels, probs) in curves.items():
        fpr, tpr, _ = metrics.roc_points(labels, probs)
        auc = float(np.trapezoid(tpr, fpr))
        ax.plot(fpr, tpr, lw=1.8, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="Chance (AUC 0.500)")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        xlabel="False positive rate (1 - specificity)",
        ylabel="True positive rate (sensitivity)",
        title="ROC curve: CIN2+ vs normal",
        aspect="equal",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return save_figure(fig, path)


def score_distribution(
    labels, probs, path: PathLike, *, threshold: float | None = None, bins: int = 20
) -> str:
    """Histogram of predicted probability per true class (Fig. 4c)."""
    y = np.asarray(labels).reshape(-1)
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    fig = new_figure(6.0, 4.2)
    ax = fig.add_subplot()
    edges = np.linspace(0.0, 1.0, bins + 1)
    for cls in (0, 1):
        sel = p[y == cls]
        ax.hist(
            sel,
            bins=edges,
            alpha=0.6,
            color=CLASS_COLOURS[cls],
            label=f"{CLASS_NAMES[cls]}, n={sel.size}",
            edgecolor="white",
        )
    if threshold is not None:
        ax.axvline(threshold, color="black", ls="--", lw=1, label=f"Threshold {threshold:.2f}")
    return _finish(
        fig, ax, path,
        xlim=(0, 1),
        xlabel="Predicted probability of CIN2+",
        ylabel="Number of images",
        title="Predicted score distribution by true class",
    )


def tsne(
    features, labels, path: PathLike, seed: int = 0, *, perplexity: float = 30.0
) -> str | None:
    """2-D t-SNE of image-level features coloured by class (Fig. 4d); None (no figure) when every
    image has the same features (a dead network), where scikit-learn's t-SNE crashes the process.

    Perplexity is clipped to n - 1 because scikit-learn requires it below the sample count.
    OpenMP is limited to one thread: with the cores shared (data workers, other jobs) its
    spin-waiting made a 40-point embedding take seconds instead of a fraction of one.
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    y = np.asarray(labels).reshape(-1)
    if x.shape[0] < 3:
        raise ValueError(f"t-SNE needs at least 3 images, got {x.shape[0]}")
    if not np.any(np.ptp(x, axis=0) > 0):
        return None
    with threadpool_limits(limits=1, user_api="openmp"):
        emb = TSNE(
            n_components=2,
            perplexity=min(perplexity, x.shape[0] - 1.0),
            init="pca",
            random_state=seed,
        ).fit_transform(x)
    fig = new_figure(5.5, 5.0)
    ax = fig.add_subplot()
    for cls in (0, 1):
        sel = y == cls
        ax.scatter(
            emb[sel, 0],
            emb[sel, 1],
            s=14,
            alpha=0.8,
            color=CLASS_COLOURS[cls],
            label=f"{CLASS_NAMES[cls]}, n={int(sel.sum())}",
        )
    return _finish(
        fig, ax, path,
        xlabel="t-SNE dimension 1",
        ylabel="t-SNE dimension 2",
        title="t-SNE of image-level features",
    )


def probability_by_grade(grades, probs, path: PathLike) -> str | None:
    """Box plot of predicted probability per CIN grade (Fig. 4e); unknown grades (-1) are left out.

    Returns None and writes nothing when no image has a known grade.
    """
    g = np.asarray(grades).reshape(-1)
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    present = [int(k) for k in np.unique(g) if k >= 0]
    if not present:
        return None
    data = [p[g == k] for k in present]
    fig = new_figure(6.0, 4.2)
    ax = fig.add_subplot()
    ax.boxplot(
        data,
        tick_labels=[
            f"{GRADE_NAMES.get(k, str(k))}\nn={d.size}" for k, d in zip(present, data, strict=True)
        ],
        medianprops={"color": "red", "lw": 1.8},
        showfliers=True,
    )
    ax.set(
        ylim=(-0.02, 1.02),
        xlabel="CIN grade (histology)",
        ylabel="Predicted probability of CIN2+",
        title="Predicted probability by CIN grade (red line: median)",
    )
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def probability_by_quarter(days_to_diagnosis, probs, path: PathLike, *, labels=None) -> str | None:
    """Mean predicted probability per quarter of the 365-day image-to-diagnosis window (Fig. 4f).

    Images with unknown (NaN) or out-of-window days are left out; returns None and writes nothing
    when none remain. With ``labels`` the bars are split by true class, which keeps a quarter's
    mean from just reflecting its class mix. Error bars are standard errors of the mean.
    """
    d = np.asarray(days_to_diagnosis, dtype=np.float64).reshape(-1)
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    ok = np.isfinite(d) & (d >= 0) & (d <= 365)
    if not ok.any():
        return None
    quarter = np.minimum((d[ok] // (365.0 / 4)).astype(int), 3)
    p = p[ok]
    groups = [("All images", np.ones_like(p, bool), "tab:grey")]
    if labels is not None:
        y = np.asarray(labels).reshape(-1)[ok]
        groups = [(CLASS_NAMES[c], y == c, CLASS_COLOURS[c]) for c in (0, 1)]
    fig = new_figure(6.0, 4.2)
    ax = fig.add_subplot()
    width = 0.8 / len(groups)
    for gi, (name, sel, colour) in enumerate(groups):
        means, sems, counts = [], [], []
        for q in range(4):
            vals = p[sel & (quarter == q)]
            counts.append(vals.size)
            means.append(vals.mean() if vals.size else 0.0)
            sems.append(vals.std(ddof=1) / np.sqrt(vals.size) if vals.size > 1 else 0.0)
        x = np.arange(4) + (gi - (len(groups) - 1) / 2) * width
        bars = ax.bar(x, means, width, yerr=sems, capsize=3, color=colour, alpha=0.8, label=name)
        ax.bar_label(bars, labels=[f"n={c}" for c in counts], fontsize="x-small", padding=2)
    ax.set_xticks(range(4), [f"Q{q + 1}\n{q * 91}-{(q + 1) * 91 + (q == 3)} d" for q in range(4)])
    return _finish(
        fig, ax, path,
        ylim=(0, 1.05),
        xlabel="Time from image to diagnosis (quarter of the 1-year window)",
        ylabel="Mean predicted probability of CIN2+",
        title="Average predicted probability per quarter",
    )


# ---------------------------------------------------------------------------------------------
# Heatmaps and the spatial regulator (Fig. 5).


def normalise_weights(
    weights, normalisation: str = "minmax", percentiles: tuple[float, float] = (2.0, 98.0)
) -> np.ndarray:
    """Map weights to [0, 1]: min-max, or clipped between two percentiles (robust to outliers).

    A constant map has no spatial information and maps to all zeros rather than NaN.
    """
    w = np.asarray(weights, dtype=np.float64)
    if normalisation == "minmax":
        lo, hi = w.min(), w.max()
    elif normalisation == "percentile":
        lo, hi = np.percentile(w, percentiles)
    else:
        raise ValueError(f"normalisation must be 'minmax' or 'percentile', got {normalisation!r}")
    if not hi > lo:
        return np.zeros_like(w)
    return np.clip((w - lo) / (hi - lo), 0.0, 1.0)


def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """Row-normalised Gaussian kernel matrix, truncated at 4 sigma; edges renormalise (no pad)."""
    i = np.arange(n)
    d = i[:, None] - i[None, :]
    k = np.where(np.abs(d) <= int(4.0 * sigma + 0.5), np.exp(-0.5 * (d / sigma) ** 2), 0.0)
    return k / k.sum(axis=1, keepdims=True)


def gaussian_smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a 2-D map (sigma in pixels), as two matrix products."""
    if sigma <= 0:
        return np.asarray(x, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    return _blur_matrix(x.shape[0], sigma) @ x @ _blur_matrix(x.shape[1], sigma).T


def _scale(
    image_shape: Sequence[int], grid_shape: Sequence[int], patch_size: float | None
) -> float:
    """Pixels per patch; the image must be the patch grid scaled uniformly."""
    sy, sx = image_shape[0] / grid_shape[0], image_shape[1] / grid_shape[1]
    if not np.isclose(sy, sx):
        raise ValueError(f"image {image_shape[:2]} is not a uniform scaling of grid {grid_shape}")
    if patch_size is not None and not np.isclose(patch_size, sx):
        raise ValueError(
            f"patch_size {patch_size} does not match image {image_shape[:2]} / grid {grid_shape}"
        )
    return float(sx)


def heatmap_rgba(
    weights,
    size: tuple[int, int],
    *,
    normalisation: str = "minmax",
    percentiles: tuple[float, float] = (2.0, 98.0),
    cmap: str = "jet",
    alpha: float = 0.45,
    smooth_sigma: float = 0.0,
) -> np.ndarray:
    """Colour-mapped patch weights upsampled to ``size`` (rows, cols): uint8 (rows, cols, 4).

    Each pixel takes the weight of the patch it lies in; ``smooth_sigma`` (in patch units) then
    blurs the patch borders; normalisation happens last so the colours span the full scale.
    The alpha channel is ``alpha`` everywhere, so the result can be saved as a transparent layer.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or not np.all(np.isfinite(w)):
        raise ValueError(f"weights must be a finite 2-D patch grid, got shape {w.shape}")
    rows, cols = size
    ri = np.minimum(np.arange(rows) * w.shape[0] // rows, w.shape[0] - 1)
    ci = np.minimum(np.arange(cols) * w.shape[1] // cols, w.shape[1] - 1)
    up = w[ri[:, None], ci[None, :]]
    up = gaussian_smooth(up, smooth_sigma * rows / w.shape[0])
    norm = normalise_weights(up, normalisation, percentiles)
    rgba = colormap(cmap)(norm)
    rgba[..., 3] = alpha
    return np.round(rgba * 255.0).astype(np.uint8)


def regulator_is_drawable(params: np.ndarray) -> bool:
    """Finite, positive-definite covariance (an ellipse exists); others are reported, not drawn."""
    s_hh, s_hv, s_vv = float(params[2]), float(params[3]), float(params[4])
    return s_hh > 0 and s_hh * s_vv - s_hv**2 > 0


def draw_regulator(
    image: np.ndarray,
    params,
    patch_size: float,
    *,
    n_sigma: float = 2.0,
    colour: tuple[int, int, int] = (255, 255, 255),
    thickness: int | None = None,
) -> np.ndarray:
    """Return a copy of ``image`` with the regulator's n-sigma ellipse and a centre cross drawn.

    Params [mu_h, mu_v, s_hh, s_hv, s_vv] are in patch units; pixel x = h * patch_size,
    y = v * patch_size. A state of another kernel (flat-top, mixture: longer) starts with these
    5 weighted moments, so its moments' ellipse is drawn. The ellipse is
    mu + n_sigma * L [cos t, sin t] with L L^T = Sigma.
    Lines are 2 * thickness - 1 pixels wide (default scales with the image, at least 3 px, so the
    line survives downscaling in a figure).
    """
    out = np.array(image, copy=True)
    rows, cols = out.shape[:2]
    mu_h, mu_v, s_hh, s_hv, s_vv = (float(v) for v in np.asarray(params).reshape(-1)[:5])
    cov = np.array([[s_hh, s_hv], [s_hv, s_vv]])
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError as err:
        raise ValueError(f"regulator covariance is not positive definite: {cov.tolist()}") from err
    r = max(2, round(min(rows, cols) / 300)) if thickness is None else thickness
    centre = np.array([mu_h, mu_v]) * patch_size
    # Sample densely enough that consecutive points are < 1 px apart along the longest axis.
    radius_px = n_sigma * np.sqrt(np.linalg.eigvalsh(cov).max()) * patch_size
    t = np.linspace(0.0, 2.0 * np.pi, max(64, int(8 * radius_px)), endpoint=False)
    ring = centre[:, None] + n_sigma * patch_size * chol @ np.stack([np.cos(t), np.sin(t)])
    arm = max(3.0, min(rows, cols) / 50)
    s = np.linspace(-arm, arm, int(4 * arm) + 1)
    cross = np.concatenate(
        [
            centre[:, None] + np.stack([s, np.zeros_like(s)]),
            centre[:, None] + np.stack([np.zeros_like(s), s]),
        ],
        axis=1,
    )
    pts = np.concatenate([ring, cross], axis=1)  # (2, P) as (x, y) in pixels
    off = np.arange(-r + 1, r)
    # Pixel (row y, col x) covers [x, x+1) x [y, y+1); stamp a (2r-1)^2 square around each point.
    px = (np.floor(pts[0])[:, None, None] + off[None, :, None]).astype(int)
    py = (np.floor(pts[1])[:, None, None] + off[None, None, :]).astype(int)
    px, py = np.broadcast_arrays(px, py)
    ok = (px >= 0) & (px < cols) & (py >= 0) & (py < rows)
    out[py[ok], px[ok], :3] = colour
    return out


def overlay_array(
    image: np.ndarray,
    weights,
    *,
    normalisation: str = "minmax",
    percentiles: tuple[float, float] = (2.0, 98.0),
    cmap: str = "jet",
    alpha: float = 0.45,
    smooth_sigma: float = 0.0,
    regulator=None,
    patch_size: float | None = None,
    ellipse_colour: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Blend the colour-mapped heatmap onto an RGB uint8 image: (1 - alpha) * image + alpha * map.

    With ``regulator`` (5,) the 2-sigma ellipse and centre are drawn on top. Returns uint8 (S,S,3).
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (rows, cols, 3), got {img.dtype} {img.shape}")
    w = np.asarray(weights)
    scale = _scale(img.shape, w.shape, patch_size)
    heat = heatmap_rgba(
        w,
        img.shape[:2],
        normalisation=normalisation,
        percentiles=percentiles,
        cmap=cmap,
        alpha=1.0,
        smooth_sigma=smooth_sigma,
    )[..., :3].astype(np.float64)
    out = np.round((1.0 - alpha) * img + alpha * heat).astype(np.uint8)
    if regulator is not None:
        out = draw_regulator(out, regulator, scale, colour=ellipse_colour)
    return out


def heatmap_overlay(
    image: np.ndarray,
    weights,
    path: PathLike,
    *,
    normalisation: str = "minmax",
    percentiles: tuple[float, float] = (2.0, 98.0),
    cmap: str = "jet",
    alpha: float = 0.45,
    smooth_sigma: float = 0.0,
    regulator=None,
    patch_size: float | None = None,
    title: str = "",
) -> str:
    """Input image beside its patch-weight heatmap overlay (Fig. 5 a-b), with a colourbar."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    over = overlay_array(
        image,
        weights,
        normalisation=normalisation,
        percentiles=percentiles,
        cmap=cmap,
        alpha=alpha,
        smooth_sigma=smooth_sigma,
        regulator=regulator,
        patch_size=patch_size,
    )
    fig = new_figure(9.5, 4.8)
    left, right = fig.subplots(1, 2)
    left.imshow(image)
    left.set_title("Input image")
    right.imshow(over)
    note = (
        "\n(white: spatial regulator, 2-sigma ellipse, + centre)" if regulator is not None else ""
    )
    right.set_title(f"Patch-weight heatmap{note}")
    for ax in (left, right):
        ax.set_xlabel("x (pixels)")
        ax.set_ylabel("y (pixels)")
    scale = "min-max" if normalisation == "minmax" else f"{percentiles[0]:g}-{percentiles[1]:g} pct"
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), colormap(cmap)), ax=right, shrink=0.85)
    bar.set_label(f"Relative patch weight ({scale} scaled)")
    bar.set_ticks([0, 0.5, 1], labels=["low", "", "high"])
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def photo_view(
    pixels: np.ndarray, weights, width: int, height: int, resize: str, *, max_side: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """The model input and its patch weights back at the photograph's own aspect ratio.

    ``pixels`` (S, S, 3) is what the model saw (``resize`` "stretch" or "pad" of a width x height
    photograph); a letterbox is cropped off, then both are resized to the photograph's shape with
    the long side at most ``max_side``. Weights stay blocky (nearest), one block per patch.
    Returns uint8 (h, w, 3) and float (h, w).
    """
    from PIL import Image

    from jaxcerv.data.images import letterbox_box

    img = np.asarray(pixels)
    w = np.asarray(weights, dtype=np.float32)
    size = img.shape[0]
    ri = np.minimum(np.arange(size) * w.shape[0] // size, w.shape[0] - 1)
    ci = np.minimum(np.arange(size) * w.shape[1] // size, w.shape[1] - 1)
    heat = w[ri[:, None], ci[None, :]]
    if resize == "pad":
        x0, y0, bw, bh = letterbox_box(width, height, size)
        img, heat = img[y0 : y0 + bh, x0 : x0 + bw], heat[y0 : y0 + bh, x0 : x0 + bw]
    scale = min(1.0, max_side / max(width, height))
    shape = (max(1, round(width * scale)), max(1, round(height * scale)))  # PIL: (w, h)
    photo = np.asarray(Image.fromarray(img).resize(shape, Image.Resampling.BICUBIC))
    heat = np.asarray(Image.fromarray(heat, "F").resize(shape, Image.Resampling.NEAREST))
    return photo, heat


def clinician_figure(
    photo: np.ndarray,
    heat: np.ndarray | None,
    probability: float,
    threshold: float,
    *,
    cmap: str = "jet",
    alpha: float = 0.45,
    warning: str = "",
    title: str = "",
) -> Figure:
    """The photograph at its own aspect ratio with the patch-weight heatmap over it, a colour bar
    in weight units, and the probability, threshold and decision written on the figure.

    ``photo`` and ``heat`` come from ``photo_view``; ``warning`` (e.g. the model never saw a real
    photograph) is printed in red under the image. ``heat`` None (a whole-image model, which has
    no patch weights): the photograph alone, and the figure says that there is no heatmap.
    """
    from matplotlib.colors import Normalize

    rows, cols = photo.shape[:2]
    fig = new_figure(7.0, 7.0 * rows / cols + 1.6)
    ax = fig.subplots()
    ax.imshow(photo)
    shown = None
    if heat is not None:
        lo, hi = float(np.min(heat)), float(np.max(heat))
        shown = ax.imshow(heat, cmap=colormap(cmap), alpha=alpha,
                          norm=Normalize(lo, hi if hi > lo else lo + 1e-6))
    ax.set_xticks([])
    ax.set_yticks([])
    decision = CLASS_NAMES[int(probability >= threshold)]
    sign = ">=" if probability >= threshold else "<"
    ax.set_title(
        (f"{title}\n" if title else "")
        + f"P(CIN2+) = {probability:.3f} {sign} threshold {threshold:.3f}: {decision}"
    )
    if shown is not None:
        bar = fig.colorbar(shown, ax=ax, shrink=0.8)
        bar.set_label("Patch weight (where the model looked)")
    note = "" if shown is not None else "No heatmap: a whole-image model has no patch weights."
    if warning or note:
        ax.set_xlabel("\n".join(t for t in (note, warning) if t),
                      color="tab:red" if warning else "black", wrap=True)
    return fig


def evolution_epochs(available: Sequence[int]) -> list[int]:
    """Epochs shown in Fig. 5 d-g: 1, 32, 48 when they were run, plus the last one."""
    avail = sorted(set(int(e) for e in available))
    if not avail:
        raise ValueError("no epochs available")
    return sorted({e for e in EVOLUTION_EPOCHS if e in avail} | {avail[-1]})


def regulator_evolution(
    image: np.ndarray,
    params_by_epoch: Mapping[int, np.ndarray],
    path: PathLike,
    patch_size: float,
    *,
    title: str = "",
    colour: tuple[int, int, int] = (255, 230, 0),
) -> str:
    """One panel per epoch: the regulator's 2-sigma ellipse and centre on the image (Fig. 5 d-g).

    The last epoch is labelled final. The caller picks the epochs (see ``evolution_epochs``).
    """
    if not params_by_epoch:
        raise ValueError("params_by_epoch is empty")
    epochs = sorted(params_by_epoch)
    img = np.asarray(image)
    fig = new_figure(3.0 * len(epochs) + 0.4, 3.6)
    axes = np.atleast_1d(fig.subplots(1, len(epochs)))
    for ax, epoch in zip(axes, epochs, strict=True):
        ax.imshow(draw_regulator(img, params_by_epoch[epoch], patch_size, colour=colour))
        ax.set_title(f"Epoch {epoch}" + (" (final)" if epoch == epochs[-1] else ""))
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or "Spatial regulator during training (2-sigma ellipse, + = centre)")
    return save_figure(fig, path)


def training_curves(metrics_jsonl_path: PathLike, path: PathLike) -> str:
    """Training curves from metrics.jsonl (see ``training_curves_figure``)."""
    with open(metrics_jsonl_path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if not rows:
        raise ValueError(f"{os.fspath(metrics_jsonl_path)} has no epochs")
    return save_figure(training_curves_figure(rows), path)


def training_curves_figure(rows: Sequence[Mapping[str, float]]) -> Figure:
    """BCE (train, validation), the spatial loss and the validation scores, each on its own axes:
    the spatial loss is a sum over patches (~10^1-10^2) and would flatten the BCE (~0.5)."""

    def series(key: str) -> tuple[np.ndarray, np.ndarray] | None:
        pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
        return (np.array([e for e, _ in pts]), np.array([v for _, v in pts])) if pts else None

    fig = new_figure(13.5, 4.0)
    bce_ax, spatial_ax, score_ax = fig.subplots(1, 3)
    panels = (
        (bce_ax, (("train_bce", "Train BCE"), ("val_loss", "Validation BCE")), "BCE",
         "Classification loss (BCE)"),
        (spatial_ax, (("train_spatial", "Train spatial loss"),), "Spatial loss",
         "Spatial loss per image (config.regulator.loss, added x lambda)"),
        (score_ax, (("val_roc_auc", "Validation ROC AUC"),
                    ("val_balanced_accuracy", "Validation balanced accuracy")), "Score",
         "Validation scores (CIN2+ vs rest)"),
    )
    for ax, keys, ylabel, ax_title in panels:
        for key, label in keys:
            s = series(key)
            if s is not None:
                ax.plot(*s, marker="o" if s[0].size < 30 else None, ms=3, label=label)
        ax.set(xlabel="Epoch", ylabel=ylabel, title=ax_title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    score_ax.set_ylim(0, 1.02)
    return fig
