"""The synthetic colposcopy generator, checked against properties measured on its pixels.

Oracles are computed here from the returned arrays and the truth 5-vector alone (Mahalanobis
distances, colour statistics, box downsampling, a periodic-texture detector), not from the
generator's internals; the counterfactual tests only switch a scene's lesion texture off.
"""

import dataclasses

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from jaxcerv.data import synthetic as sy

GRID, PATCH = 16, 28  # the default config's geometry: the one models must learn on
SMALL = dict(grid=8, patch=16)  # 128 px, for bulk properties


def same_sample(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def mahalanobis(truth: np.ndarray, patch: int, u, v) -> np.ndarray:
    """Distance of pixel coordinates (u, v) from the truth Gaussian (given in patch units)."""
    mu = truth[:2] * patch
    cov = np.array([[truth[2], truth[3]], [truth[3], truth[4]]]) * patch**2
    inv = np.linalg.inv(cov)
    du, dv = u - mu[0], v - mu[1]
    return np.sqrt(inv[0, 0] * du * du + 2 * inv[0, 1] * du * dv + inv[1, 1] * dv * dv)


def pixel_distance(sample: dict, patch: int) -> np.ndarray:
    s = sample["image"].shape[0]
    c = np.arange(s) + 0.5
    return mahalanobis(sample["cervix"], patch, c[None, :], c[:, None])


def patch_corner_distances(sample: dict, grid: int, patch: int) -> np.ndarray:
    """(4, grid, grid) distances of each patch's corners."""
    j, i = np.meshgrid(np.arange(grid), np.arange(grid))
    return np.stack(
        [
            mahalanobis(sample["cervix"], patch, (j + a) * patch, (i + b) * patch)
            for a in (0, 1)
            for b in (0, 1)
        ]
    )


def box_down(x: np.ndarray, k: int) -> np.ndarray:
    s = x.shape[0] // k
    return x.reshape(s, k, s, k, *x.shape[2:]).mean(axis=(1, 3))


def texture_score(image: np.ndarray, patch: int) -> np.ndarray:
    """Per-patch periodic fine-texture detector: the green channel's residual after 4x4 box
    smoothing (which removes nothing of a smooth image and all the mean of any period-2 or -4
    pattern), correlated with itself 4 px away along rows AND along columns (the smaller of the
    two). Texture of period 2 or 4 correlates along both; noise does not, and an edge (os rim,
    highlight, cervix rim) correlates along at most one direction."""
    g = image[..., 1].astype(np.float64)
    s = g.shape[0]
    r = g - np.repeat(np.repeat(box_down(g, 4), 4, 0), 4, 1)
    cx, cy = np.zeros_like(r), np.zeros_like(r)
    cx[:, :-4] = r[:, :-4] * r[:, 4:]
    cy[:-4] = r[:-4] * r[4:]
    g_ = s // patch
    return np.minimum(box_down(cx, patch), box_down(cy, patch)).reshape(g_, g_)


@pytest.fixture(scope="module")
def default_samples() -> list[dict]:
    return [sy.generate(i, seed=11, grid=GRID, patch=PATCH) for i in range(36)]


def test_fields_and_types():
    d = sy.generate(5, seed=0, **SMALL)
    s = SMALL["grid"] * SMALL["patch"]
    assert d["image"].dtype == np.uint8 and d["image"].shape == (s, s, 3)
    assert d["lesion"].dtype == np.uint8 and d["lesion"].shape == (SMALL["grid"],) * 2
    assert d["cervix"].dtype == np.float32 and d["cervix"].shape == (5,)
    assert d["id"] == "syn_000005" and isinstance(d["session"], str)
    assert isinstance(d["label"], int) and isinstance(d["grade"], int)
    assert 0.0 <= d["days_to_diagnosis"] <= 365.0


def test_deterministic_and_seeded():
    a = sy.generate(7, seed=3, **SMALL)
    b = sy.generate(7, seed=3, **SMALL)
    assert same_sample(a, b)
    assert a["image"].tobytes() == b["image"].tobytes()
    c = sy.generate(7, seed=4, **SMALL)
    assert not np.array_equal(a["image"], c["image"])


def test_random_access_matches_sequential_and_prefixes():
    seq = list(sy.generate_all(14, seed=2, **SMALL))
    for i in reversed(range(14)):
        assert same_sample(sy.generate(i, seed=2, **SMALL), seq[i])
    shorter = list(sy.generate_all(5, seed=2, **SMALL))
    assert all(same_sample(x, y) for x, y in zip(shorter, seq, strict=False))


def test_labels_grades_sessions_and_balance():
    n = 900
    scenes = [sy.make_scene(i, seed=1, **SMALL) for i in range(n)]
    labels = np.array([s.label for s in scenes])
    grades = np.array([s.grade for s in scenes])
    assert set(np.unique(grades)) <= {0, 1, 2, 3, 4}
    np.testing.assert_array_equal(labels, (grades >= 2).astype(int))
    assert {0, 1, 2, 3, 4} == set(grades.tolist())

    by_session: dict[str, list[int]] = {}
    for s in scenes:
        by_session.setdefault(s.session, []).append(s.index)
    sizes = np.array([len(v) for v in by_session.values()])
    assert sizes.min() >= 1 and sizes.max() <= 3 and len(set(sizes.tolist())) == 3
    for members in by_session.values():
        assert members == list(range(members[0], members[0] + len(members)))  # contiguous
        first = scenes[members[0]]
        for i in members[1:]:
            assert (scenes[i].label, scenes[i].grade) == (first.label, first.grade)
            assert scenes[i].days_to_diagnosis == first.days_to_diagnosis
            # Similar cervix: the same photo session moves it only a little.
            assert abs(scenes[i].cervix.cx - first.cervix.cx) <= 0.07 * scenes[i].size
            assert abs(scenes[i].cervix.rx / first.cervix.rx - 1) <= 0.11

    # Balanced: a fair coin per session would give |p - 0.5| ~ 0.03 here; we ask for better.
    assert abs(labels.mean() - 0.5) <= 0.04
    session_labels = np.array([scenes[v[0]].label for v in by_session.values()])
    assert abs(session_labels.mean() - 0.5) <= 0.04


def test_cervix_truth_matches_pink_pixels(default_samples):
    """The truth Gaussian's 2-sigma ellipse is the pink region: pink inside, not outside, and
    (for cervices wholly in view) the pink pixels' second moments equal the truth covariance."""
    checked_moments = 0
    for d in default_samples:
        img = d["image"].astype(np.float64)
        r, g = img[..., 0], img[..., 1]
        pink = (r >= 170) & (r - g >= 25)  # pink mucosa or acetowhite on it; walls are darker
        dist = pixel_distance(d, PATCH)
        assert pink[dist < 1.8].mean() >= 0.85
        assert pink[dist > 2.2].mean() <= 0.05
        # Around the truth centre the colour is cervix, far from the background's.
        centre = dist < 0.6
        assert np.median(r[centre]) >= np.median(r[dist > 2.2]) + 40
        assert pink[centre].mean() >= 0.75

        s = img.shape[0]
        mu, cov = d["cervix"][:2] * PATCH, np.array(d["cervix"][[2, 4]]) * PATCH**2
        if np.all(mu - 2.1 * np.sqrt(cov) > 0) and np.all(mu + 2.1 * np.sqrt(cov) < s):
            v, u = np.nonzero(pink & (dist < 2.5))
            u, v = u + 0.5, v + 0.5
            emp = np.cov(np.stack([u, v]))
            truth = np.array([[d["cervix"][2], d["cervix"][3]], [d["cervix"][3], d["cervix"][4]]])
            truth = truth * PATCH**2
            np.testing.assert_allclose(np.diag(emp), np.diag(truth), rtol=0.08)
            assert abs(emp[0, 1] - truth[0, 1]) <= 0.05 * np.sqrt(truth[0, 0] * truth[1, 1])
            np.testing.assert_allclose([u.mean(), v.mean()], mu, atol=0.02 * s)
            checked_moments += 1
    assert checked_moments >= 5


def test_cervix_placement_varies_and_stays_mostly_in_view():
    p = SMALL["patch"]
    scenes = [sy.make_scene(i, seed=5, **SMALL) for i in range(300)]
    s = scenes[0].size
    truth = np.stack([sc.cervix_gaussian() for sc in scenes]).astype(np.float64)
    offsets = np.abs(truth[:, :2] * p - s / 2)
    assert offsets.max() >= 0.15 * s  # not always centred
    assert offsets.max() <= 0.3 * s
    # Points uniform over each 2-sigma ellipse: most of the cervix is in the image.
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4000, 2))
    z *= np.sqrt(rng.uniform(size=(4000, 1))) / np.linalg.norm(z, axis=1, keepdims=True)
    for t in truth:
        cov = np.array([[t[2], t[3]], [t[3], t[4]]]) * p**2
        pts = t[:2] * p + 2 * z @ np.linalg.cholesky(cov).T
        assert np.all((pts >= 0) & (pts <= s), axis=1).mean() >= 0.8
    # Geometric-mean semi-axis sqrt(ab) = 2 det(cov)^(1/4) with the boundary at 2 sigma.
    radius = 2 * (truth[:, 2] * truth[:, 4] - truth[:, 3] ** 2) ** 0.25 * p / s
    assert 0.22 <= radius.min() and radius.max() <= 0.45
    assert radius.max() - radius.min() >= 0.1  # sizes vary


def test_lesions_inside_cervix_only_in_abnormal():
    p = SMALL["patch"]
    for i in range(60):
        d = sy.generate(i, seed=8, **SMALL)
        if d["label"] == 0:
            assert d["lesion"].sum() == 0
            continue
        assert d["lesion"].sum() >= 1
        # Every lesion patch reaches into the cervix ellipse (distance <= 2 somewhere in it).
        fine = (np.arange(9) / 8.0)[:, None]
        for i_, j_ in zip(*np.nonzero(d["lesion"]), strict=True):
            u = ((j_ + fine) * p).ravel()[None, :]
            v = ((i_ + fine) * p).ravel()[:, None]
            assert mahalanobis(d["cervix"], p, u, v).min() <= 2.0


def test_texture_is_where_the_labels_say(default_samples):
    """Fine periodic texture: in every abnormal image's lesion patches; nowhere else inside the
    cervix; and on background objects outside the cervix in both classes (so a model must learn
    where to look)."""
    textured = 150.0  # detector units: noise and edges score < 60, lesions > 300 at this size
    background = {0: [], 1: []}
    for d in default_samples:
        score = texture_score(d["image"], PATCH)
        corners = patch_corner_distances(d, GRID, PATCH)
        inside, outside = corners.max(0) < 1.9, corners.min(0) > 2.1
        lesion = d["lesion"].astype(bool)
        if d["label"]:
            assert score[lesion].max() >= textured
        assert np.all(score[inside & ~lesion] < textured)
        background[d["label"]].append(bool(np.any(score[outside] >= textured)))
    for label in (0, 1):
        assert len(background[label]) >= 10
        assert np.mean(background[label]) >= 0.6


def smooth_twin(scene: sy.Scene) -> sy.Scene:
    """The same scene with its lesions' texture removed: they become plain acetowhite areas."""
    areas = tuple(dataclasses.replace(a, texture=None) for a in scene.areas)
    return dataclasses.replace(scene, areas=areas)


def test_lesion_texture_does_not_survive_8x_downsampling():
    """Counterfactual: render each abnormal scene with and without its lesion texture.
    Full resolution: lesion patches carry much more high-frequency energy than the same areas
    smooth. After an 8x box downsample: the energy ratio is ~1 and the lesion's mean colour
    differs from the smooth acetowhite's by under 1 grey level (criterion, over the 8x8 blocks
    wholly inside a lesion: per-channel mean difference <= 1 grey level, and no block off by more
    than 3, which leaves room for the lesion's soft rim and uint8 rounding)."""

    def hf(x: np.ndarray, mask: np.ndarray) -> float:
        """Mean squared neighbour difference (both axes, all channels) where mask holds."""
        dx = np.diff(x, axis=1)[:-1] ** 2
        dy = np.diff(x, axis=0)[:, :-1] ** 2
        return float((dx + dy)[mask[:-1, :-1]].mean())

    full_ratios, down_ratios = [], []
    i = 0
    while len(full_ratios) < 6:
        scene = sy.make_scene(i, seed=21, grid=GRID, patch=PATCH)
        i += 1
        if scene.label == 0:
            continue
        textured, lesion_px = sy.render(scene)
        smooth, _ = sy.render(smooth_twin(scene))
        tex, smo = textured.astype(np.float64), smooth.astype(np.float64)
        full_ratios.append(hf(tex, lesion_px) / hf(smo, lesion_px))

        interior = box_down(lesion_px.astype(np.float64), 8) == 1.0  # blocks fully in a lesion
        assert interior.sum() >= 4
        tex8, smo8 = box_down(tex, 8), box_down(smo, 8)
        down_ratios.append(hf(tex8, interior) / hf(smo8, interior))
        diff = (tex8 - smo8)[interior]
        assert np.all(np.abs(diff.mean(axis=0)) <= 1.0)
        assert np.abs(diff).max() <= 3.0
    assert min(full_ratios) >= 5.0
    assert max(down_ratios) <= 1.5


def test_mean_colour_does_not_separate_classes():
    """Population check at 8x: each image's mean colour over its cervix (blocks within the
    2-sigma ellipse) does not tell the classes apart (per-channel ROC AUC within 0.5 +- 0.2 over
    120 images; a colour signal of even half a between-image SD would give ~0.64 and climb)."""
    labels, colours = [], []
    for i in range(120):
        d = sy.generate(i, seed=31, grid=8, patch=32)
        down = box_down(d["image"].astype(np.float64), 8)
        c = (np.arange(down.shape[0]) + 0.5) * 8
        inside = mahalanobis(d["cervix"], 32, c[None, :], c[:, None]) < 1.8
        colours.append(down[inside].mean(axis=0))
        labels.append(d["label"])
    labels, colours = np.array(labels), np.array(colours)
    assert 40 <= labels.sum() <= 80
    for channel in range(3):
        assert abs(roc_auc_score(labels, colours[:, channel]) - 0.5) <= 0.2


# ------------------------------------------------------------------ difficulty knobs

BENCH = sy.Knobs.from_mapping(__import__("configs.benchmark").benchmark.get_config().data.synthetic)


def test_default_config_knobs_are_the_demo():
    from configs import default

    assert sy.Knobs.from_mapping(default.get_config().data.synthetic) == sy.Knobs()
    assert BENCH.changed()  # the benchmark really departs from the demo


def test_bad_knobs_are_one_line_errors():
    with pytest.raises(ValueError, match=r"config.data.synthetic.nope: unknown knob"):
        sy.Knobs.from_mapping({"nope": 1})
    with pytest.raises(ValueError, match=r"config.data.synthetic.label_noise=0.6: must be"):
        sy.Knobs(label_noise=0.6)
    with pytest.raises(ValueError, match=r"benign_whiten=\(0.8, 0.3\)"):
        sy.Knobs(benign_whiten=(0.8, 0.3))
    assert sy.Knobs.from_mapping({"highlights": [2, 5]}).highlights == (2, 5)


def untextured(scene: sy.Scene) -> sy.Scene:
    return dataclasses.replace(
        scene, areas=tuple(dataclasses.replace(a, texture=None) for a in scene.areas)
    )


def abnormal_scenes(knobs: sy.Knobs, n: int, seed: int = 41, **geometry) -> list[sy.Scene]:
    geometry = geometry or dict(grid=GRID, patch=PATCH)
    out, i = [], 0
    while len(out) < n:
        scene = sy.make_scene(i, seed=seed, knobs=knobs, **geometry)
        if scene.true_label == 1:
            out.append(scene)
        i += 1
    return out


@pytest.mark.parametrize("knobs", [sy.Knobs(), dataclasses.replace(BENCH, blur=0.0)],
                         ids=["demo", "benchmark_unblurred"])
def test_lesion_mask_is_the_drawn_lesion(knobs):
    """Counterfactual: render each CIN2+ scene with and without its lesions. Every lesion patch
    holds pixels the lesions change (by 4+ grey levels), and nearly all changed pixels lie in
    lesion patches (a soft whitening rim may spill a little past them). Holds for textured
    lesions and for those drawn without texture (``textured_fraction`` < 1)."""
    for scene in abnormal_scenes(knobs, 8):
        image, lesion_px = sy.render(scene)
        bare, _ = sy.render(dataclasses.replace(scene, areas=()))
        changed = np.abs(image.astype(int) - bare).max(axis=-1) >= 4
        lesion = sy.patch_any(lesion_px, PATCH).astype(bool)
        assert lesion.any()
        np.testing.assert_array_equal(sy.patch_any(changed & lesion_px, PATCH).astype(bool),
                                      lesion)
        in_lesion_patches = np.repeat(np.repeat(lesion, PATCH, 0), PATCH, 1)
        assert (changed & ~in_lesion_patches).sum() <= 0.02 * changed.sum()


def texture_contrast(knobs: sy.Knobs, down: int = 1, n: int = 5) -> float:
    """RMS of the lesion texture (textured minus untextured render, green channel) over the
    lesion pixels, after a ``down`` x ``down`` box average."""
    sq, count = 0.0, 0
    for scene in abnormal_scenes(knobs, n):
        image, lesion_px = sy.render(scene)
        smooth, _ = sy.render(untextured(scene))
        diff = image[..., 1].astype(np.float64) - smooth[..., 1]
        mask = box_down(lesion_px.astype(np.float64), down) == 1.0  # blocks wholly in a lesion
        sq += float(np.sum(box_down(diff, down)[mask] ** 2))
        count += int(mask.sum())
    return np.sqrt(sq / count)


def test_texture_amplitude_scales_the_fine_cue():
    strong, faint = texture_contrast(sy.Knobs()), texture_contrast(sy.Knobs(texture_amplitude=0.4))
    assert 0.3 <= faint / strong <= 0.5  # 0.4 up to uint8 rounding


def test_texture_scale_decides_what_survives_8x_downsampling():
    """Periods 2-4 px (scale 1) and 4-8 px (scale 2) vanish in 8x8 means; 8-16 px (scale 4)
    keeps a large share of its full-resolution contrast."""
    for scale, lo, hi in ((1, 0.0, 0.05), (2, 0.0, 0.05), (4, 0.25, 1.0)):
        knobs = sy.Knobs(texture_scale=scale)
        ratio = texture_contrast(knobs, down=8) / texture_contrast(knobs)
        assert lo <= ratio <= hi, (scale, ratio)


def test_textured_fraction_sets_the_share_of_textured_lesions():
    counts = {}
    for fraction in (1.0, 0.5, 0.0):
        areas = [a for s in abnormal_scenes(sy.Knobs(textured_fraction=fraction), 60, **SMALL)
                 for a in s.areas]
        counts[fraction] = np.mean([a.texture is not None for a in areas])
    assert counts[1.0] == 1.0 and counts[0.0] == 0.0
    assert 0.35 <= counts[0.5] <= 0.65  # ~150 areas: binomial sd 0.04


def test_blur_weakens_the_fine_texture():
    sharp = texture_contrast(sy.Knobs(texture_amplitude=0.5))
    blurred = texture_contrast(sy.Knobs(texture_amplitude=0.5, blur=2.0))
    assert blurred < 0.6 * sharp


def coarse_auc(knobs: sy.Knobs, n: int = 240) -> float:
    """ROC AUC of one low-resolution statistic, against the drawn class: how many of the
    cervix's 8x8 blocks have a green channel 25 grey levels above the cervix's median
    (acetowhite extent), scored on 8x8-averaged pixels only."""
    labels, scores = [], []
    for i in range(n):
        scene = sy.make_scene(i, seed=51, grid=8, patch=32, knobs=knobs)
        image, _ = sy.render(scene)
        down = box_down(image.astype(np.float64), 8)
        c = (np.arange(down.shape[0]) + 0.5) * 8
        inside = mahalanobis(scene.cervix_gaussian(), 32, c[None, :], c[:, None]) < 1.8
        g = down[..., 1][inside]
        scores.append(np.sum(g >= np.median(g) + 25))
        labels.append(scene.true_label)
    return roc_auc_score(labels, scores)


def test_coarse_knobs_move_the_low_resolution_signal():
    """Demo: acetowhite extent at 8x says nothing of the class. Each coarse knob pulled towards
    bigger, more numerous lesions (or smaller benign areas) makes it informative, and the
    benchmark's knobs together sit between chance and saturation. Same scenes throughout, so
    the comparisons are paired (session-to-session noise moves the demo's AUC by +-0.1 across
    seeds; the knobs' gains over it were 0.18-0.37 on two seeds)."""
    demo = coarse_auc(sy.Knobs())
    assert abs(demo - 0.5) <= 0.15
    for change in (dict(lesion_scale=1.4), dict(benign_scale=0.6), dict(benign_count_add=-2),
                   dict(lesion_count_add=2)):
        assert coarse_auc(sy.Knobs(**change)) >= demo + 0.15, change
    bench = coarse_auc(BENCH)
    assert demo + 0.1 <= bench <= 0.9


def test_denser_lesions_are_whiter_and_sharper_margins_have_stronger_edges():
    """Paired renders of the same scenes: whiten raises the lesions' green level; a smaller
    rim concentrates the lesion edge into fewer pixels (a larger peak gradient at 4x)."""

    def lesion_stats(knobs: sy.Knobs) -> tuple[float, float]:
        greens, edges = [], []
        for scene in abnormal_scenes(dataclasses.replace(knobs, textured_fraction=0.0), 5):
            image, lesion_px = sy.render(scene)
            greens.append(image[..., 1][lesion_px].mean())
            g4 = box_down(image[..., 1].astype(np.float64), 4)
            gy, gx = np.gradient(g4)
            edges.append(np.hypot(gx, gy)[box_down(lesion_px.astype(float), 4) > 0].max())
        return float(np.mean(greens)), float(np.mean(edges))

    faint, dense = lesion_stats(sy.Knobs(lesion_whiten=(0.3, 0.4))), lesion_stats(
        sy.Knobs(lesion_whiten=(0.7, 0.8)))
    assert dense[0] >= faint[0] + 20
    soft, sharp = lesion_stats(sy.Knobs(lesion_rim=0.8)), lesion_stats(sy.Knobs(lesion_rim=0.1))
    assert sharp[1] >= 1.3 * soft[1]


def test_label_noise_flips_records_not_pixels():
    knobs = sy.Knobs(label_noise=0.2)
    scenes = [sy.make_scene(i, seed=61, knobs=knobs, **SMALL) for i in range(600)]
    first = {}
    for s in scenes:
        first.setdefault(s.session, s)
        assert s.label == first[s.session].label  # a session's record flips as a whole
        assert s.label == int(s.grade >= 2)
    flipped = np.mean([s.label != s.true_label for s in first.values()])
    assert 0.13 <= flipped <= 0.27  # ~330 sessions: binomial sd 0.022
    clean = [sy.make_scene(i, seed=61, **SMALL) for i in range(600)]
    for s, c in zip(scenes, clean, strict=True):
        assert s.true_label == c.label  # the noise does not change what is drawn
        assert s.areas == c.areas


def test_nuisance_knobs():
    """Illumination spreads the cervix's brightness across photos; more highlights put more
    near-white pixels in the image."""

    def cervix_green(knobs):
        out = []
        for i in range(40):
            d = sy.generate(i, seed=71, knobs=knobs, **SMALL)
            out.append(d["image"][..., 0][pixel_distance(d, SMALL["patch"]) < 1.5].mean())
        return np.std(out)

    assert cervix_green(sy.Knobs(illumination=0.4)) >= 2 * cervix_green(sy.Knobs())

    def near_white(knobs):
        return np.mean([(sy.generate(i, seed=72, knobs=knobs, **SMALL)["image"].min(-1) >= 240)
                        .mean() for i in range(30)])

    assert near_white(sy.Knobs(highlights=(12, 16))) >= 2 * near_white(sy.Knobs())


def test_benchmark_truth_still_matches_the_pixels():
    """Under the benchmark's knobs (light, blur, highlights) the cervix truth stays the pink
    region, and lesion patches exist exactly in the images whose pixels are CIN2+."""
    for i in range(24):
        d = sy.generate(i, seed=81, grid=GRID, patch=PATCH, knobs=BENCH)
        scene = sy.make_scene(i, seed=81, grid=GRID, patch=PATCH, knobs=BENCH)
        img = d["image"].astype(np.float64)
        pink = (img[..., 0] >= 150) & (img[..., 0] - img[..., 1] >= 20)
        dist = pixel_distance(d, PATCH)
        assert pink[dist < 1.7].mean() >= 0.8
        assert pink[dist > 2.3].mean() <= 0.08
        assert bool(d["lesion"].any()) == bool(scene.true_label)


def test_drawn_labels_are_the_pixels_class_under_label_noise():
    """drawn_labels gives the class the pixels show (lesion patches exist exactly in CIN2+
    images), also where the recorded label was flipped; a foreign id is refused."""
    knobs = dataclasses.replace(BENCH, label_noise=0.3)
    samples = [sy.generate(i, seed=82, grid=GRID, patch=PATCH, knobs=knobs) for i in range(30)]
    drawn = sy.drawn_labels([d["id"] for d in samples], seed=82, grid=GRID, patch=PATCH,
                            knobs=knobs)
    np.testing.assert_array_equal(drawn, [int(d["lesion"].any()) for d in samples])
    assert (drawn != [d["label"] for d in samples]).any()  # some records are flipped
    with pytest.raises(ValueError, match="case_7"):
        sy.drawn_labels(["case_7"], seed=82, grid=GRID, patch=PATCH, knobs=knobs)


def test_knobs_name_the_dataset_build(tmp_path):
    """Changed knobs give a new dataset (never a stale build); the demo keeps its name."""
    from jaxcerv.data import builders

    def name(synthetic) -> str:
        b = builders.make_builder("synthetic_cervix", data_dir=tmp_path, grid_size=4,
                                  patch_size=8, num_images=6, synthetic=synthetic)
        return b.builder_config.name

    from configs import benchmark, default

    assert name(None) == name(default.get_config().data.synthetic) == "s32_g4_seed0_n6"
    bench = name(benchmark.get_config().data.synthetic)
    assert bench.startswith("s32_g4_seed0_n6_k") and bench == name(dict(BENCH.changed()))
    assert name({"label_noise": 0.1}) not in (bench, name({"label_noise": 0.2}))
    with pytest.raises(builders.DatasetError, match="config.data.synthetic.blur=-1"):
        name({"blur": -1})
