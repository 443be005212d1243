"""pipeline.batches on an in-memory source (any sequence of dicts), and pipeline.load end to end."""

import ml_collections
import numpy as np
import pytest

from jaxcerv.data import pipeline, synthetic

SIDE = 8


def _source(n: int = 23) -> list[dict]:
    """Image i is filled with value i, so a batch's pixels say which records it holds."""
    rng = np.random.default_rng(0)
    return [
        {
            "image": np.full((SIDE, SIDE, 3), i, np.uint8),
            "label": int(rng.integers(0, 2)),
            "grade": int(rng.integers(0, 5)),
            "id": f"r{i}",
        }
        for i in range(n)
    ]


def _all(source, indices, **kwargs) -> list[dict]:
    options = dict(batch_size=4, seed=7, epoch=0, shuffle=True, augment=False,
                   drop_remainder=False)
    return list(pipeline.batches(source, indices, **{**options, **kwargs}))


def _equal(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
        for x, y in zip(a, b, strict=True)
    )


INDICES = np.array([3, 5, 6, 8, 9, 10, 12, 15, 16, 20, 21, 22, 0, 1])  # 14: not a multiple of 4


def test_batches_hold_the_right_records_and_fields():
    source = _source()
    batches = _all(source, INDICES, shuffle=False)
    assert [b["image"].shape for b in batches] == [(4, SIDE, SIDE, 3)] * 4
    index = np.concatenate([b["index"] for b in batches])
    mask = np.concatenate([b["mask"] for b in batches])
    np.testing.assert_array_equal(index[mask], np.arange(len(INDICES)))  # unshuffled positions
    for b in batches:
        assert b["image"].dtype == np.uint8 and b["mask"].dtype == np.bool_
        for k in ("label", "grade", "index"):
            assert b[k].dtype == np.int32
        for row in np.flatnonzero(b["mask"]):
            record = source[INDICES[b["index"][row]]]
            assert (b["image"][row] == INDICES[b["index"][row]]).all()
            assert b["label"][row] == record["label"] and b["grade"][row] == record["grade"]


def test_same_seed_and_epoch_give_the_same_batches():
    source = _source()
    assert _equal(_all(source, INDICES, augment=True), _all(source, INDICES, augment=True))


def test_epochs_reorder_but_cover_every_record_once():
    source = _source()
    orders = []
    for epoch in range(3):
        batches = _all(source, INDICES, epoch=epoch)
        index = np.concatenate([b["index"][b["mask"]] for b in batches])
        np.testing.assert_array_equal(np.sort(index), np.arange(len(INDICES)))
        orders.append(index.tolist())
    assert orders[0] != orders[1] != orders[2]
    assert _all(source, INDICES, seed=8)[0]["index"].tolist() != orders[0][:4]


def test_last_partial_batch_is_padded_and_masked():
    batches = _all(_source(), INDICES)
    assert len(batches) == 4  # ceil(14 / 4)
    last = batches[-1]
    np.testing.assert_array_equal(last["mask"], [True, True, False, False])
    assert (last["image"][2:] == 0).all()
    assert (last["index"][2:] == 0).all() and (last["label"][2:] == 0).all()
    assert all(b["mask"].all() for b in batches[:-1])


def test_drop_remainder_drops_the_partial_batch():
    batches = _all(_source(), INDICES, drop_remainder=True)
    assert len(batches) == 3 and all(b["mask"].all() for b in batches)
    index = np.concatenate([b["index"] for b in batches])
    assert len(set(index.tolist())) == 12


@pytest.mark.parametrize("augment", [False, True])
def test_shards_of_two_processes_concatenate_to_the_global_batch(augment):
    source = _source()
    whole = _all(source, INDICES, augment=augment)
    shards = [_all(source, INDICES, augment=augment, shard_index=p, shard_count=2)
              for p in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(whole)
    for k, batch in enumerate(whole):
        for key in batch:
            joined = np.concatenate([shards[0][k][key], shards[1][k][key]])
            np.testing.assert_array_equal(joined, batch[key], err_msg=key)


def test_batch_size_must_divide_by_the_shard_count():
    with pytest.raises(ValueError, match="multiple"):
        _all(_source(), INDICES, batch_size=5, shard_count=2)


def test_empty_indices_give_no_batches():
    assert _all(_source(), np.array([], np.int64)) == []


def _naive_jitter(image, brightness, contrast, saturation):
    """Oracle: the three adjustments applied one after the other, in float64."""
    luma = np.array([0.299, 0.587, 0.114])
    x = image.astype(np.float64) * brightness
    mean = (x @ luma).mean()
    x = (x - mean) * contrast + mean
    gray = (x @ luma)[..., None]
    x = (x - gray) * saturation + gray
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def test_augment_is_flip_plus_mild_jitter_never_vertical():
    image = np.random.default_rng(1).integers(0, 256, (16, 12, 3), dtype=np.uint8)
    flips = 0
    for seed in range(40):
        out = pipeline.augment_image(image, np.random.default_rng(seed))
        draws = np.random.default_rng(seed)  # the same draws, in augment_image's order
        flipped = draws.random() < 0.5
        factors = draws.uniform(0.9, 1.1, 3)
        assert np.all(np.abs(factors - 1) <= 0.1)
        source = image[:, ::-1] if flipped else image
        expected = _naive_jitter(source, *factors)
        assert np.abs(out.astype(int) - expected).max() <= 1  # float32 vs float64 rounding
        flips += flipped
        # Not a vertical flip: rows stay in place (compare against the jittered upside-down image).
        assert np.abs(out.astype(int) - _naive_jitter(source[::-1], *factors)).max() > 1
    assert 5 < flips < 35


def test_augment_keeps_labels_and_varies_with_epoch():
    source = [
        {"image": np.random.default_rng(i).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8),
         "label": i % 2, "grade": i % 5, "id": str(i)}
        for i in range(8)
    ]
    plain = _all(source, np.arange(8), shuffle=False)
    epoch0 = _all(source, np.arange(8), shuffle=False, augment=True)
    epoch1 = _all(source, np.arange(8), shuffle=False, augment=True, epoch=1)
    for a, b in zip(plain, epoch0, strict=True):
        np.testing.assert_array_equal(a["label"], b["label"])
        assert not np.array_equal(a["image"], b["image"])
    assert not np.array_equal(epoch0[0]["image"], epoch1[0]["image"])


def test_worker_processes_give_the_same_batches():
    source = _source()
    in_process = _all(source, INDICES, augment=True)
    workers = _all(source, INDICES, augment=True, num_workers=2)
    assert _equal(in_process, workers)


def test_synchronous_prefetch_zero_gives_the_same_batches():
    source = _source()
    assert _equal(_all(source, INDICES, prefetch=0), _all(source, INDICES, prefetch=3))


# ------------------------------------------------------------------------- load


def _config(tmp_path) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.grid_size, config.patch_size = 4, 8
    config.data = ml_collections.ConfigDict(dict(
        name="synthetic_cervix", data_dir=str(tmp_path / "tfds"), manual_dir="", csv="",
        num_images=6, synthetic_seed=5, resize="stretch", include_variants=False,
    ))
    return config


def test_load_builds_once_and_returns_aligned_records(tmp_path, capsys):
    config = _config(tmp_path)
    source, records = pipeline.load(config, tmp_path)
    assert "building synthetic_cervix/" in capsys.readouterr().out
    assert len(source) == len(records) == 6
    for i in range(6):
        truth = synthetic.generate(i, seed=5, grid=4, patch=8)
        assert records.ids[i] == truth["id"] == source[i]["id"].decode()
        assert records.labels[i] == truth["label"] == source[i]["label"]
        np.testing.assert_array_equal(records.truth_lesion[i], truth["lesion"])
    again, records_again = pipeline.load(config, tmp_path)
    assert "building" not in capsys.readouterr().out
    np.testing.assert_array_equal(records_again.ids, records.ids)
    batch = next(pipeline.batches(again, np.arange(6), batch_size=4, seed=0, epoch=0,
                                  shuffle=True, augment=True, drop_remainder=False))
    assert batch["image"].shape == (4, 32, 32, 3)


def test_data_dir_defaults_to_the_workdir(tmp_path):
    config = _config(tmp_path)
    config.data.data_dir = ""
    builder = pipeline.dataset_builder(config, tmp_path / "run")
    assert str(builder.data_dir).startswith(str(tmp_path / "run" / "tfds"))


# ------------------------------------------------------------- colposcopy augmentation


def _blob(h: int = 64, w: int = 80, at: tuple[float, float] = (50.0, 20.0)) -> np.ndarray:
    """A bright Gaussian spot (sigma 3 px) centred at (x, y) = ``at`` on black."""
    y, x = np.mgrid[:h, :w]
    spot = 250 * np.exp(-((x - at[0]) ** 2 + (y - at[1]) ** 2) / (2 * 3.0**2))
    return np.repeat(spot[..., None], 3, axis=2).astype(np.uint8)


def _centroid(image: np.ndarray) -> np.ndarray:
    m = image[..., 0].astype(np.float64)
    y, x = np.mgrid[: m.shape[0], : m.shape[1]]
    return np.array([(m * x).sum(), (m * y).sum()]) / m.sum()


def test_geometry_moves_a_spot_where_the_affine_formula_says():
    spec = pipeline.Augment(flip=False, colour=0.0, rotation=15.0, scale=0.2, translate=0.1)
    image = _blob()
    h, w = image.shape[:2]
    for seed in range(6):
        out = pipeline.augment_image(image, np.random.default_rng(seed), spec)
        draws = np.random.default_rng(seed)  # augment_image's documented order
        draws.random(), draws.uniform(1, 1, 3)
        degrees, zoom = draws.uniform(-15, 15), draws.uniform(0.8, 1.2)
        shift = draws.uniform(-0.1, 0.1, 2) * (w, h)
        # Oracle: the forward map applied by hand to the spot's centre (pixel centres at +0.5).
        t = np.deg2rad(degrees)
        rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        centre = np.array([w / 2, h / 2])
        expected = zoom * rot @ (np.array([50.5, 20.5]) - centre) + centre + shift - 0.5
        np.testing.assert_allclose(_centroid(out), expected, atol=0.3)


def test_geometry_keeps_the_view_upright_never_a_vertical_flip():
    spec = pipeline.Augment(rotation=10.0, scale=0.1, translate=0.05, white_balance=0.1,
                            illumination=0.3, blur=1.0)
    image = _blob(at=(40.0, 12.0))  # near the top edge
    for seed in range(20):
        out = pipeline.augment_image(image, np.random.default_rng(seed), spec)
        assert _centroid(out)[1] < 24  # stays in the top part; a vertical flip sends it to 51


def test_blur_spreads_a_point_by_the_drawn_sigma():
    spec = pipeline.Augment(flip=False, colour=0.0, blur=2.0)
    image = np.zeros((41, 41, 3), np.uint8)
    image[20, 20] = 255
    for seed in range(4):
        out = pipeline.augment_image(image, np.random.default_rng(seed), spec)
        draws = np.random.default_rng(seed)
        draws.random(), draws.uniform(1, 1, 3)
        sigma = draws.uniform(0, 2.0)
        m = out[..., 0].astype(np.float64)
        x = np.arange(41) - 20
        variance = (m.sum(axis=0) * x**2).sum() / m.sum()
        # Pillow approximates the Gaussian with box filters; uint8 rounding loses the tails.
        assert abs(np.sqrt(variance) - sigma) < 0.35, (np.sqrt(variance), sigma)


def test_white_balance_and_illumination_follow_their_formulas():
    spec = pipeline.Augment(flip=False, colour=0.0, white_balance=0.2, illumination=0.4)
    image = np.full((30, 50, 3), 120, np.uint8)
    out = pipeline.augment_image(image, np.random.default_rng(3), spec)
    draws = np.random.default_rng(3)
    draws.random(), draws.uniform(1, 1, 3)
    gains = draws.uniform(0.8, 1.2, 3)
    angle, amplitude = draws.uniform(0, 2 * np.pi), draws.uniform(0, 0.4)
    u, v = np.meshgrid(np.linspace(-1, 1, 50), np.linspace(-1, 1, 30))
    field = 1 + amplitude / 2 * (u * np.cos(angle) + v * np.sin(angle))
    expected = np.clip(np.rint(120 * gains[None, None, :] * field[..., None]), 0, 255)
    assert np.abs(out.astype(int) - expected).max() <= 1


def test_augmentation_is_a_function_of_seed_epoch_and_index():
    spec = pipeline.Augment(rotation=10.0, scale=0.1, translate=0.05, blur=1.0)
    source = [
        {"image": np.random.default_rng(i).integers(0, 256, (SIDE * 2, SIDE * 2, 3), np.uint8),
         "label": i % 2, "grade": 0, "id": str(i)}
        for i in range(8)
    ]
    a = _all(source, np.arange(8), augment=spec)
    b = _all(source, np.arange(8), augment=spec, num_workers=2)
    assert _equal(a, b)
    c = _all(source, np.arange(8), augment=spec, epoch=1)
    assert not _equal(a, c)


def test_augment_from_config_reads_the_spec():
    config = ml_collections.ConfigDict({"augment": True, "augmentation": {"rotation": 7.0,
                                                                          "blur": 0.5}})
    spec = pipeline.Augment.from_config(config)
    assert spec == pipeline.Augment(rotation=7.0, blur=0.5)
    config.augment = False
    assert pipeline.Augment.from_config(config) is None


# ------------------------------------------------------------------- balanced sampling


def test_balanced_epochs_draw_each_class_half_the_time_and_use_every_image():
    labels = np.array([1] * 20 + [0] * 4)
    rng_epochs = [pipeline.balanced_order(labels, np.random.default_rng([0, e]))
                  for e in range(50)]
    n = len(labels)
    drawn = np.concatenate(rng_epochs) % n
    assert all(len(o) == n for o in rng_epochs)
    share = labels[drawn].mean()
    assert abs(share - 0.5) < 0.05  # binomial sd over 1200 draws: 0.014
    counts = np.bincount(drawn, minlength=n)
    # Within a class every image is drawn equally often, up to one per epoch.
    for c in (0, 1):
        members = counts[labels == c]
        assert members.max() - members.min() <= 50
    assert counts[labels == 0].mean() > 4 * counts[labels == 1].mean()


def test_balanced_batches_give_repeats_their_own_augmentation():
    source = [
        {"image": np.random.default_rng(i).integers(0, 256, (SIDE, SIDE, 3), np.uint8),
         "label": int(i < 2), "grade": 0, "id": str(i)}
        for i in range(8)
    ]
    labels = np.array([s["label"] for s in source])
    batches = _all(source, np.arange(8), augment=True, balance=labels, drop_remainder=True)
    index = np.concatenate([b["index"] for b in batches])
    images = np.concatenate([b["image"] for b in batches])
    assert set(index.tolist()) <= set(range(8))
    assert labels[index].sum() >= 2  # the 2 positives come back more than once
    for i in (0, 1):
        rows = np.flatnonzero(index == i)
        for r in rows[1:]:
            assert not np.array_equal(images[rows[0]], images[r])
