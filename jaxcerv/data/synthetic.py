"""The embedded synthetic colposcopy generator: the default dataset, so nothing is ever downloaded.

Each image is a colposcope's view: a pink cervix (an ellipse whose centre, size, aspect and rotation
vary) with a dark os near its centre, darker vaginal walls, grey speculum blades and specular
highlights. Every image has 1-4 whitish acetowhite areas in the transformation zone around the
os. In abnormal images (label 1, CIN grade 2-4) they carry a fine mosaic or punctation texture:
they are the lesions, more and larger with grade. In normal images they are smooth (immature
metaplasia), their number and size drawn from the same distribution (as for a random grade), so
acetowhite extent and colour say nothing about the class. Both classes carry the same texture on
background objects (walls, speculum), so the only class signal is fine texture *inside the cervix*:
a model must learn where to look, and at full resolution: the texture has a period of 2 or 4 px,
zero mean over every period cell and a weight that is constant per cell, so 8x8 box averages
(8 is a multiple of both periods) remove it exactly and the acetowhite areas of both classes then
look alike. That is the demo, drawn by the default ``Knobs``.

``Knobs`` (``config.data.synthetic``) set the difficulty. They let the classes differ in coarse
cues that survive downsampling (acetowhite extent, density and margin sharpness of the CIN2+
lesions against the CIN1-like benign areas of normal images), weaken the fine cue (texture
contrast, scale, the share of lesions that carry it), add nuisance variation (cervix pose,
illumination, specular highlights, defocus blur) and flip a share of the recorded labels
(``Scene.true_label`` keeps the class the pixels show). ``configs/benchmark.py`` mixes them.

Sessions (1-3 photos of one screening) share label, grade, days to diagnosis, cervix geometry and
acetowhite areas, with a small jitter in cervix position and pose per photo. Sessions never cross
a block of ``BLOCK`` consecutive indices, and every random draw is seeded by (seed, block or
session or index), so ``generate(i)`` is random-access and a dataset of N images is a prefix of one
of N' > N images.

Truth geometry, in patch units (patch (row i, col j) has centre h = j + 0.5, v = i + 0.5):
``cervix`` = [mu_h, mu_v, s_hh, s_hv, s_vv] is the mean and covariance of the *uniform distribution
over the cervix ellipse* (semi-axes a, b along angle theta): Sigma = R diag(a^2/4, b^2/4) R^T. So
the ellipse boundary is the 2-sigma contour (Mahalanobis distance 2), and a maximum-likelihood
Gaussian fitted to a patch-weight map that is uniform over the cervix recovers it.
``lesion`` marks the patches that contain at least one lesion pixel: textured acetowhite, or the
visibly whitened pixels of a CIN2+ lesion drawn without texture. Blur (a knob, off in the demo) is
applied after the mask is taken and spreads the drawn lesion by about its sigma.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import numpy as np
import scipy.ndimage

BLOCK = 6  # sessions are cut from blocks of this many consecutive indices
PERIODS = (2, 4)  # texture periods in px: both divide 8, so 8x8 box means cancel them exactly
MAX_SESSION = 3
GRADE_P = {2: 0.45, 3: 0.35, 4: 0.2}  # CIN grade of abnormal sessions
# Acetowhite area count by severity: the abnormal grade, or for normals a phantom grade drawn from
# GRADE_P, so counts (and sizes) have one distribution in both classes.
_AREAS_BY_SEVERITY = {2: (1, 2, 3), 3: (2, 3, 4), 4: (3, 4)}


def _planes(rgb) -> np.ndarray:
    """A colour as (3, 1, 1), to broadcast over the (3, S, S) colour planes ``render`` paints."""
    return np.asarray(rgb, np.float32).reshape(3, 1, 1)


_AW_COLOUR = _planes([222.0, 200.0, 202.0])  # acetowhite epithelium
_VESSEL = _planes([0.45, 1.0, 0.85])  # texture direction: dark red vessels
_OS_COLOUR = _planes([95.0, 30.0, 42.0])
_MUCUS = _planes([190.0, 190.0, 195.0])  # whitish tint of background distractors
_BAR_TINT = _planes([1.0, 1.0, 1.04])  # steel is a touch blue
_CERVIX_INNER = 0.85  # acetowhite areas stay inside this fraction of the cervix ellipse
_VISIBLE = 0.1  # an untextured lesion's pixels: whitened at least this much (~8 grey levels)


@dataclasses.dataclass(frozen=True)
class Knobs:
    """Difficulty knobs (``config.data.synthetic.*``). The defaults draw the demo's images bit for
    bit: lesions and benign areas alike in extent, density and margin, so fine texture is the only
    class signal. Each field says which way it moves difficulty; ``tests/test_synthetic.py``
    checks each direction with a model-free oracle.

    Lesions are the acetowhite areas of CIN2+ images (label 1); benign areas are those of normal
    images (CIN1-like immature metaplasia: flat, smooth, never textured). Ranges are (low, high)
    of a uniform draw."""

    # Coarse cues (visible at 8x downsampling): moving the lesion and benign values apart makes
    # acetowhite extent, density and margin tell the classes apart; equal values carry nothing.
    lesion_count_add: int = 0  # added to the 1-4 areas drawn by grade (at least 1 lesion stays)
    benign_count_add: int = 0  # added to the benign count (may reach 0: no acetowhite at all)
    lesion_scale: float = 1.0  # multiplies lesion radii: larger = more acetowhite extent
    benign_scale: float = 1.0
    lesion_whiten: tuple[float, float] = (0.45, 0.75)  # density: blend towards acetowhite
    benign_whiten: tuple[float, float] = (0.45, 0.75)
    lesion_rim: float = 0.35  # width of the whitening's rim, relative to the radius: small = sharp
    benign_rim: float = 0.35
    # Fine cue (full resolution only): the lesions' mosaic / punctation texture.
    texture_amplitude: float = 1.0  # multiplies the 55-75 grey-level contrast: lower = harder
    texture_scale: int = 1  # multiplies the 2 / 4 px periods; at 1 and 2 they divide 8, so 8x8
    # box means remove the texture exactly; at 4 and above it survives 8x downsampling in part
    textured_fraction: float = 1.0  # share of lesions that carry texture; the rest show coarse cues
    # Nuisance variation: more = harder for every model.
    cervix_radius: tuple[float, float] = (0.25, 0.40)  # geometric-mean semi-axis / image size
    cervix_aspect: tuple[float, float] = (1.0, 1.35)  # squared axis ratio
    cervix_offset: float = 0.25  # largest offset of the session's cervix centre / image size
    position_jitter: float = 0.03  # per photo, / image size
    rotation_jitter: float = 0.12  # per photo, radians (the session's orientation is uniform)
    illumination: float = 0.0  # per photo: exposure within 1 +- x/2 and a linear gradient
    # of slope up to x across the image (0: even light)
    highlights: tuple[int, int] = (3, 9)  # specular highlights per photo, [low, high)
    blur: float = 0.0  # per photo: Gaussian blur of sigma up to this many px (defocus); it
    # weakens the 2 px punctation first
    label_noise: float = 0.0  # share of sessions whose stored label (and grade) is flipped

    def __post_init__(self) -> None:
        def check(ok: bool, field: str, need: str) -> None:
            if not ok:
                raise ValueError(
                    f"config.data.synthetic.{field}={getattr(self, field)!r}: must be {need}"
                )

        for f in ("lesion_whiten", "benign_whiten", "cervix_radius", "cervix_aspect"):
            lo, hi = getattr(self, f)
            check(0 <= lo <= hi, f, "a (low, high) pair with 0 <= low <= high")
        for f in ("lesion_whiten", "benign_whiten"):
            check(getattr(self, f)[1] <= 1, f, "a (low, high) pair within [0, 1]")
        check(self.cervix_aspect[0] >= 1, "cervix_aspect", "a range of ratios >= 1")
        for f in ("lesion_scale", "benign_scale", "lesion_rim", "benign_rim"):
            check(getattr(self, f) > 0, f, "> 0")
        check(self.texture_scale >= 1 and int(self.texture_scale) == self.texture_scale,
              "texture_scale", "an integer >= 1")
        for f in ("texture_amplitude", "cervix_offset", "position_jitter", "rotation_jitter",
                  "illumination", "blur"):
            check(getattr(self, f) >= 0, f, ">= 0")
        check(0 <= self.textured_fraction <= 1, "textured_fraction", "in [0, 1]")
        check(0 <= self.label_noise < 0.5, "label_noise", "in [0, 0.5)")
        check(0 <= self.highlights[0] < self.highlights[1], "highlights", "[low, high) counts")

    @classmethod
    def from_mapping(cls, values) -> Knobs:
        """Knobs from a config mapping (lists become tuples); unknown names are one-line errors."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = dict(values or {})
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"config.data.synthetic.{unknown[0]}: unknown knob; "
                f"known: {', '.join(sorted(known))}"
            )
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def changed(self) -> dict:
        """The knobs that differ from the defaults (what names a dataset build)."""
        default = Knobs()
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
        }


DEMO = Knobs()


@dataclasses.dataclass(frozen=True)
class Blob:
    """An ellipse in pixel coordinates (u = col + 0.5, v = row + 0.5) with a wavy rim."""

    cx: float
    cy: float
    rx: float  # semi-axis along angle theta
    ry: float
    theta: float
    wobble: float = 0.0  # relative rim amplitude
    lobes: int = 3
    phase: float = 0.0

    def extent(self) -> float:
        return max(self.rx, self.ry) * (1.0 + self.wobble) + 2.0


@dataclasses.dataclass(frozen=True)
class Texture:
    """Zero-mean periodic modulation along ``_VESSEL``: mosaic lines or punctation dots."""

    kind: str  # "mosaic" | "punctation"
    period: int
    amplitude: float  # grey levels between texture elements and the ground


@dataclasses.dataclass(frozen=True)
class Area:
    """A whitened blob; textured inside the cervix = lesion, textured outside = distractor."""

    blob: Blob
    whiten: float  # blend weight towards the whitening colour at the blob's core
    texture: Texture | None
    rim: float = 0.35  # width of the whitening's soft rim, relative to the blob's radius


@dataclasses.dataclass(frozen=True)
class Bar:
    """A speculum blade along one image edge, its width going linearly from w0 to w1 px."""

    edge: str  # "top" | "bottom" | "left" | "right"
    w0: float
    w1: float
    grey: float


@dataclasses.dataclass(frozen=True)
class Scene:
    """Everything that determines one image; ``render`` turns it into pixels."""

    index: int
    size: int
    patch: int
    label: int  # as recorded: flipped from the drawn class for a share of sessions (label_noise)
    grade: int  # as recorded, consistent with ``label``
    session: str
    days_to_diagnosis: float
    wall: tuple[float, float, float]
    folds: tuple[float, float, float, float]  # spatial frequencies (rad/px) u, v; phase; depth
    bars: tuple[Bar, ...]
    distractors: tuple[Area, ...]
    cervix: Blob
    pink: tuple[float, float, float]
    areas: tuple[Area, ...]  # acetowhite areas in the transformation zone
    os: Blob
    highlights: tuple[tuple[float, float, float, float], ...]  # (u, v, sigma px, strength)
    noise_seed: int
    true_label: int  # the class the pixels show
    light: tuple[float, float, float] = (1.0, 0.0, 0.0)  # exposure, gradient per image along u, v
    blur: float = 0.0  # Gaussian sigma in px

    @property
    def id(self) -> str:
        return f"syn_{self.index:06d}"

    def cervix_gaussian(self) -> np.ndarray:
        """[mu_h, mu_v, s_hh, s_hv, s_vv] in patch units; the ellipse boundary is at 2 sigma."""
        c = self.cervix
        cos, sin = math.cos(c.theta), math.sin(c.theta)
        a2, b2 = c.rx**2 / 4.0, c.ry**2 / 4.0
        p2 = float(self.patch) ** 2
        return np.array(
            [
                c.cx / self.patch,
                c.cy / self.patch,
                (a2 * cos * cos + b2 * sin * sin) / p2,
                (a2 - b2) * sin * cos / p2,
                (a2 * sin * sin + b2 * cos * cos) / p2,
            ],
            np.float32,
        )


def _rng(seed: int, *keys: int) -> np.random.Generator:
    """Independent streams keyed by (kind, id): 0 block layout, 1 session, 2 photo, 3 area."""
    return np.random.default_rng([seed, *keys])


def _sessions_of_block(seed: int, block: int) -> list[tuple[int, int, int]]:
    """(first index, size, label) of each session in a block; labels alternate from a random
    start, which keeps classes close to 50/50 even in small datasets."""
    rng = _rng(seed, 0, block)
    start, out, label = block * BLOCK, [], int(rng.integers(2))
    while start < (block + 1) * BLOCK:
        size = min(int(rng.integers(1, MAX_SESSION + 1)), (block + 1) * BLOCK - start)
        out.append((start, size, label))
        start, label = start + size, 1 - label
    return out


def session_of(index: int, *, seed: int) -> tuple[int, int, int]:
    """(first index, size, label) of the session holding image ``index``."""
    for first, size, label in _sessions_of_block(seed, index // BLOCK):
        if first <= index < first + size:
            return first, size, label
    raise AssertionError("blocks are covered by their sessions")


def _texture(rng: np.random.Generator, knobs: Knobs = DEMO) -> Texture:
    """Mosaic (lines a quarter of the period wide, period 4) or punctation (dots of half the
    period, period 2 or 4); periods and line widths times ``knobs.texture_scale``."""
    if rng.uniform() < 0.5:
        kind, period = "mosaic", 4  # period-2 lines would cover 3/4 of the area: not a mosaic
    else:
        kind, period = "punctation", PERIODS[int(rng.integers(len(PERIODS)))]
    amplitude = float(rng.uniform(55.0, 75.0)) * knobs.texture_amplitude
    return Texture(kind, period * knobs.texture_scale, amplitude)


def _wobbly(rng: np.random.Generator, cx: float, cy: float, r: float, theta: float) -> Blob:
    aspect = math.sqrt(rng.uniform(0.7, 1.4))
    return Blob(
        cx,
        cy,
        r * aspect,
        r / aspect,
        theta,
        wobble=float(rng.uniform(0.05, 0.25)),
        lobes=int(rng.integers(2, 6)),
        phase=float(rng.uniform(0, 2 * math.pi)),
    )


def make_scene(index: int, *, seed: int, grid: int, patch: int, knobs: Knobs = DEMO) -> Scene:
    """Draw the scene of image ``index``: session-level draws first, then per-photo jitter.

    Knob-driven draws that the demo does not make come from their own streams (kinds 4-6), so
    default knobs leave every demo draw, and so every demo pixel, unchanged."""
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    size = grid * patch
    first, _, label = session_of(index, seed=seed)

    # Session: diagnosis, cervix geometry, os and acetowhite areas in cervix-relative units.
    rs = _rng(seed, 1, first)
    severity = int(rs.choice(list(GRADE_P), p=list(GRADE_P.values())))
    grade = severity if label else int(rs.choice([0, 1]))
    days = float(rs.uniform(0.0, 365.0))
    radius = rs.uniform(*knobs.cervix_radius) * size  # geometric-mean semi-axis
    aspect = math.sqrt(rs.uniform(*knobs.cervix_aspect))
    theta = rs.uniform(0.0, math.pi)
    off_r = knobs.cervix_offset * size * math.sqrt(rs.uniform())
    off_a = rs.uniform(0.0, 2 * math.pi)
    pink = rs.uniform([215.0, 105.0, 115.0], [235.0, 135.0, 145.0])
    os_rel = rs.uniform(-0.12, 0.12, 2)  # os centre, cervix-normalised coordinates
    os_shape = (rs.uniform(0.06, 0.12), rs.uniform(0.02, 0.045), rs.uniform(-0.3, 0.3))
    n_areas = int(rs.choice(_AREAS_BY_SEVERITY[severity]))
    area_scale = 0.9 + 0.1 * (severity - 2)
    if label:
        n_areas = max(1, n_areas + knobs.lesion_count_add)
        area_scale *= knobs.lesion_scale
        whiten_range, rim = knobs.lesion_whiten, knobs.lesion_rim
    else:
        n_areas = max(0, n_areas + knobs.benign_count_add)
        area_scale *= knobs.benign_scale
        whiten_range, rim = knobs.benign_whiten, knobs.benign_rim
    recorded_label, recorded_grade = label, grade
    rn = _rng(seed, 4, first)  # label noise: the record is wrong, the pixels are not
    if rn.uniform() < knobs.label_noise:
        recorded_label = 1 - label
        recorded_grade = severity if recorded_label else int(rn.choice([0, 1]))

    # Photo: jitter the cervix, then draw the background.
    ri = _rng(seed, 2, index)
    radius *= ri.uniform(0.95, 1.05)
    theta += ri.uniform(-knobs.rotation_jitter, knobs.rotation_jitter)
    a, b = radius * aspect, radius / aspect
    cos, sin = math.cos(theta), math.sin(theta)
    half_u = math.sqrt((a * cos) ** 2 + (b * sin) ** 2)
    half_v = math.sqrt((a * sin) ** 2 + (b * cos) ** 2)
    centre = []
    for off, half in ((off_r * math.cos(off_a), half_u), (off_r * math.sin(off_a), half_v)):
        c = size / 2 + off + ri.uniform(-knobs.position_jitter, knobs.position_jitter) * size
        lo, hi = 0.75 * half, size - 0.75 * half  # at most a quarter of each half sticks out
        centre.append(size / 2 if lo > hi else float(np.clip(c, lo, hi)))
    cervix = Blob(centre[0], centre[1], a, b, theta)
    pink = tuple(float(x) for x in np.clip(pink + ri.uniform(-6.0, 6.0, 3), 0, 235))

    def to_pixels(p: float, q: float) -> tuple[float, float]:
        return cervix.cx + p * a * cos - q * b * sin, cervix.cy + p * a * sin + q * b * cos

    ox, oy = to_pixels(*os_rel)
    os = Blob(ox, oy, os_shape[0] * radius, os_shape[1] * radius, os_shape[2])

    areas = []
    for k in range(n_areas):  # each area's own stream: shared by the session's photos
        ra = _rng(seed, 3, first, k)
        rho, phi = ra.uniform(0.2, 0.55), ra.uniform(0.0, 2 * math.pi)
        u, v = to_pixels(os_rel[0] + rho * math.cos(phi), os_rel[1] + rho * math.sin(phi))
        r = ra.uniform(0.16, 0.30) * area_scale * radius
        blob = _wobbly(ra, u, v, r, theta + ra.uniform(0, math.pi))
        whiten = float(ra.uniform(*whiten_range))
        texture = _texture(ra, knobs) if label else None
        if _rng(seed, 5, first, k).uniform() >= knobs.textured_fraction:
            texture = None
        areas.append(Area(blob, whiten, texture, rim))

    wall = tuple(float(x) for x in ri.uniform([115.0, 45.0, 50.0], [140.0, 65.0, 70.0]))
    folds = (
        *(2 * math.pi * ri.uniform(1.0, 3.0, 2) / size),
        ri.uniform(0, 2 * math.pi),
        ri.uniform(0.04, 0.10),
    )
    edges = ("top", "bottom") if ri.uniform() < 0.7 else ("left", "right")
    bars = tuple(
        Bar(e, *(ri.uniform(0.04, 0.13, 2) * size), ri.uniform(130.0, 190.0))
        for e in edges
        if ri.uniform() < 0.9
    )
    distractors = []
    for _ in range(int(ri.integers(1, 3))):
        r = ri.uniform(0.02, 0.05) * size
        for _try in range(20):
            u, v = ri.uniform(r, size - r, 2)
            if _cervix_radius(cervix, u, v) > 1.0 + 1.2 * r / min(a, b):
                blob = _wobbly(ri, u, v, r, ri.uniform(0, math.pi))
                distractors.append(Area(blob, float(ri.uniform(0.0, 0.35)), _texture(ri)))
                break
    highlights = []
    for _ in range(int(ri.integers(*knobs.highlights))):
        if ri.uniform() < 0.6:
            rho, phi = 0.9 * math.sqrt(ri.uniform()), ri.uniform(0, 2 * math.pi)
            u, v = to_pixels(rho * math.cos(phi), rho * math.sin(phi))
        else:
            u, v = ri.uniform(0, size, 2)
        sigma = max(2.0, ri.uniform(0.004, 0.012) * size)
        highlights.append((float(u), float(v), float(sigma), float(ri.uniform(0.5, 0.95))))

    rp = _rng(seed, 6, index)  # photo conditions the demo does not vary
    gain = rp.uniform(-0.5, 0.5) * knobs.illumination
    slope, direction = rp.uniform(0.0, knobs.illumination), rp.uniform(0.0, 2 * math.pi)
    light = (1.0 + gain, slope * math.cos(direction), slope * math.sin(direction))
    blur = float(rp.uniform(0.0, knobs.blur))

    return Scene(
        index=index,
        size=size,
        patch=patch,
        label=recorded_label,
        grade=recorded_grade,
        session=f"syn_s{first:06d}",
        days_to_diagnosis=days,
        wall=wall,
        folds=tuple(float(x) for x in folds),
        bars=bars,
        distractors=tuple(distractors),
        cervix=cervix,
        pink=pink,
        areas=tuple(areas),
        os=os,
        highlights=tuple(highlights),
        noise_seed=int(ri.integers(2**63 - 1)),
        true_label=label,
        light=tuple(float(x) for x in light),
        blur=blur,
    )


def _cervix_radius(c: Blob, u, v, squared: bool = False):
    """Normalised elliptical radius (1 on the rim) of points (u, v); arrays broadcast."""
    du, dv = u - c.cx, v - c.cy
    cos, sin = math.cos(c.theta), math.sin(c.theta)
    p, q = (du * cos + dv * sin) / c.rx, (dv * cos - du * sin) / c.ry
    return p * p + q * q if squared else np.sqrt(p * p + q * q)


def _box(blob: Blob, size: int, reach: float | None = None):
    """Slices of the pixel box around a blob (clipped to the image, maybe empty) and the
    coordinates of its pixel centres (rows, cols)."""
    reach = blob.extent() if reach is None else reach
    r0 = min(size, max(0, int(blob.cy - reach)))
    r1 = max(r0, min(size, int(math.ceil(blob.cy + reach))))
    c0 = min(size, max(0, int(blob.cx - reach)))
    c1 = max(c0, min(size, int(math.ceil(blob.cx + reach))))
    v = np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5
    u = np.arange(c0, c1, dtype=np.float32)[None, :] + 0.5
    return (slice(r0, r1), slice(c0, c1)), u, v


def _blob_radius(blob: Blob, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Normalised radius of the wavy blob (1 on its rim)."""
    du, dv = u - blob.cx, v - blob.cy
    cos, sin = math.cos(blob.theta), math.sin(blob.theta)
    p, q = (du * cos + dv * sin) / blob.rx, (dv * cos - du * sin) / blob.ry
    t = np.sqrt(p * p + q * q)
    if blob.wobble:
        t /= 1.0 + blob.wobble * np.sin(blob.lobes * np.arctan2(q, p) + blob.phase)
    return t


def _pattern(tex: Texture, rows: slice, cols: slice) -> np.ndarray:
    """The texture's zero-mean modulation (grey levels) on a pixel box."""
    p = tex.period
    y = np.arange(rows.start, rows.stop) % p
    x = np.arange(cols.start, cols.stop) % p
    if tex.kind == "mosaic":  # lines a quarter of the period wide
        w = max(1, p // 4)
        on = (y < w)[:, None] | (x < w)[None, :]
        frac = 1.0 - (1.0 - w / p) ** 2
    else:  # square dots of half the period
        d = p // 2
        on = (y < d)[:, None] & (x < d)[None, :]
        frac = (d / p) ** 2
    return (frac - on.astype(np.float32)) * np.float32(tex.amplitude)


def _blend(region: np.ndarray, target, alpha) -> None:
    """region += (target - region) * alpha, in place with one temporary."""
    tmp = np.subtract(target, region, dtype=np.float32)
    tmp *= alpha
    region += tmp


def _paint_area(img, area: Area, whiten_to: np.ndarray, cervix: Blob | None, lesion_px=None):
    """Whiten a blob with a soft rim and add its texture with a sharper rim; inside the cervix
    (``cervix`` given) both are cut to the transformation zone. ``lesion_px`` (given for the
    areas of CIN2+ images) gets the lesion's pixels: the textured ones, or for a lesion without
    texture (``textured_fraction`` < 1) those it whitens visibly (``_VISIBLE``).

    The texture's weight is constant over each texture cell (period x period pixels on a grid
    anchored at the image origin), so any aligned 8x8 box holds whole cells, each of zero mean:
    box means are exactly those of the untextured image, even across the rim."""
    (rows, cols), u, v = _box(area.blob, img.shape[1])
    t = _blob_radius(area.blob, u, v)
    inside = 1.0 if cervix is None else (_cervix_radius(cervix, u, v) < _CERVIX_INNER)
    region = img[:, rows, cols]
    whiten = area.whiten * np.clip((1.0 - t) / area.rim, 0.0, 1.0) * inside
    _blend(region, whiten_to, whiten)
    if area.texture is None and lesion_px is not None:
        lesion_px[rows, cols] |= whiten >= _VISIBLE
    if area.texture is not None:
        p = area.texture.period
        uc, vc = (u - 0.5) // p * p + p / 2, (v - 0.5) // p * p + p / 2  # cell centres
        inside = 1.0 if cervix is None else (_cervix_radius(cervix, uc, vc) < _CERVIX_INNER)
        weight = np.clip((1.0 - _blob_radius(area.blob, uc, vc)) / 0.12, 0.0, 1.0) * inside
        region += _pattern(area.texture, rows, cols) * weight * _VESSEL
        if lesion_px is not None:
            lesion_px[rows, cols] |= weight > 0


def _paint_bar(img: np.ndarray, bar: Bar) -> None:
    """A grey metal blade: shaded across its width, a bright ridge, a soft 1.5-px edge."""
    size = img.shape[1]
    depth = min(size, int(math.ceil(max(bar.w0, bar.w1))) + 2)
    along = (np.arange(size, dtype=np.float32) + 0.5)[None, :]
    across = (np.arange(depth, dtype=np.float32) + 0.5)[:, None]
    width = bar.w0 + (bar.w1 - bar.w0) * along / size
    mask = np.clip((width - across) / 1.5, 0.0, 1.0)  # (depth, size): rows = from the edge
    x = across / width
    grey = np.float32(bar.grey) * (0.75 + 0.3 * x + 0.25 * np.exp(-(((x - 0.35) / 0.12) ** 2)))
    # Orient the small maps, not the image, so the image is touched along contiguous rows.
    if bar.edge in ("bottom", "right"):
        mask, grey = mask[::-1], grey[::-1]
    if bar.edge in ("left", "right"):
        mask, grey = mask.T, grey.T
    region = {
        "top": img[:, :depth],
        "bottom": img[:, size - depth :],
        "left": img[:, :, :depth],
        "right": img[:, :, size - depth :],
    }[bar.edge]
    _blend(region, grey * _BAR_TINT, mask)


def render(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of a scene: (image uint8 (S, S, 3), lesion pixels bool (S, S)).

    Painting happens on colour planes (3, S, S): numpy is slow when the innermost axis has length
    3, and this layout keeps every operation on long contiguous rows."""
    s = scene.size
    coord = np.arange(s, dtype=np.float32) + 0.5
    # Walls: darker away from the cervix, with a few soft folds (separable, so cheap).
    du2 = ((coord - scene.cervix.cx) / s) ** 2
    dv2 = ((coord - scene.cervix.cy) / s) ** 2
    fu, fv, phase, depth = scene.folds
    shade = 1.0 - 0.9 * (du2[None, :] + dv2[:, None])
    shade += depth * np.cos(fu * coord + phase)[None, :] * np.cos(fv * coord)[:, None]
    img = np.clip(shade, 0.35, 1.0) * _planes(scene.wall)
    for bar in scene.bars:
        _paint_bar(img, bar)
    for area in scene.distractors:
        _paint_area(img, area, _MUCUS, None)

    # Cervix: pink, slightly darker towards the rim, anti-aliased edge.
    c = scene.cervix
    (rows, cols), u, v = _box(c, s, max(c.rx, c.ry) + 2.0)
    t2 = _cervix_radius(c, u, v, squared=True)
    mask = np.clip((1.0 - np.sqrt(t2)) * (min(c.rx, c.ry) / 1.5) + 0.5, 0.0, 1.0)
    _blend(img[:, rows, cols], (1.0 - 0.15 * t2) * _planes(scene.pink), mask)

    lesion_px = np.zeros((s, s), bool)
    for area in scene.areas:
        _paint_area(img, area, _AW_COLOUR, c, lesion_px if scene.true_label else None)

    (rows, cols), u, v = _box(scene.os, s)
    mask = np.clip((1.0 - _blob_radius(scene.os, u, v)) * min(scene.os.rx, scene.os.ry) + 0.5, 0, 1)
    _blend(img[:, rows, cols], _OS_COLOUR, mask)
    lesion_px[rows, cols] &= mask < 0.5

    for hu, hv, sigma, strength in scene.highlights:
        (rows, cols), u, v = _box(Blob(hu, hv, 3 * sigma, 3 * sigma, 0.0), s)
        h = strength * np.exp(((u - hu) ** 2 + (v - hv) ** 2) / (-2 * sigma * sigma))
        _blend(img[:, rows, cols], 250.0, h)

    exposure, grad_u, grad_v = scene.light
    if (exposure, grad_u, grad_v) != (1.0, 0.0, 0.0):
        centred = (coord - s / 2) / s
        img *= np.float32(exposure) + grad_u * centred[None, None] + grad_v * centred[None, :, None]
    if scene.blur > 0:
        img = scipy.ndimage.gaussian_filter(img, (0.0, scene.blur, scene.blur), mode="nearest")

    # Mild sensor noise, uniform in [-4, 4] grey levels (sd 2.6), shared by the channels.
    noise = np.frombuffer(np.random.default_rng(scene.noise_seed).bytes(s * s), np.uint8)
    noise = (noise % 9).astype(np.float32).reshape(s, s) - 4.0
    out = np.empty((s, s, 3), np.uint8)
    for k in range(3):
        plane = img[k]
        plane += noise
        out[..., k] = np.clip(plane, 0.0, 255.0, out=plane)
    return out, lesion_px


def patch_any(mask: np.ndarray, patch: int) -> np.ndarray:
    """(S, S) bool -> (grid, grid) uint8: 1 where a patch has any True pixel."""
    g = mask.shape[0] // patch
    return mask.reshape(g, patch, g, patch).any(axis=(1, 3)).astype(np.uint8)


def generate(index: int, *, seed: int, grid: int, patch: int, knobs: Knobs = DEMO) -> dict:
    """One sample (see the module docstring for the fields' meaning)."""
    scene = make_scene(index, seed=seed, grid=grid, patch=patch, knobs=knobs)
    image, lesion_px = render(scene)
    return {
        "image": image,
        "label": scene.label,
        "grade": scene.grade,
        "id": scene.id,
        "session": scene.session,
        "days_to_diagnosis": scene.days_to_diagnosis,
        "cervix": scene.cervix_gaussian(),
        "lesion": patch_any(lesion_px, patch),
    }


def drawn_labels(ids, *, seed: int, grid: int, patch: int, knobs: Knobs = DEMO) -> np.ndarray:
    """The class the pixels show for each record id ("syn_000042"), which ``label_noise`` may
    have flipped in the record: what an evaluation on a noisy benchmark can compare against
    to tell a model's errors from the labels' (benchmarks/time_to_auc.py)."""
    out = []
    for record_id in ids:
        prefix, _, number = str(record_id).partition("_")
        if prefix != "syn" or not number.isdigit():
            raise ValueError(f"{record_id!r} is not a synthetic record id (syn_NNNNNN)")
        out.append(make_scene(int(number), seed=seed, grid=grid, patch=patch,
                              knobs=knobs).true_label)
    return np.asarray(out, dtype=np.int64)


def generate_all(
    num_images: int, *, seed: int, grid: int, patch: int, knobs: Knobs = DEMO
) -> Iterator[dict]:
    """Samples 0 .. num_images - 1 in order (what dataset builders iterate)."""
    for index in range(num_images):
        yield generate(index, seed=seed, grid=grid, patch=patch, knobs=knobs)
