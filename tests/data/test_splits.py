"""Grouped, stratified splits: properties checked against the data (and sklearn's
StratifiedGroupKFold as a reference for how balanced a grouped k-fold can be)."""

import json
import types

import numpy as np
import pytest
from sklearn.model_selection import StratifiedGroupKFold

from jaxcerv.data import splits as sp


def make_data(num_sessions: int = 120, seed: int = 0, p1: float = 0.4):
    """Sessions of 1-3 images sharing a label, in shuffled order, like a real index."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 4, num_sessions)
    session_labels = (rng.uniform(size=num_sessions) < p1).astype(np.int64)
    sessions = np.repeat([f"s{k:04d}" for k in range(num_sessions)], sizes)
    labels = np.repeat(session_labels, sizes)
    order = rng.permutation(len(labels))
    ids = np.array([f"img{i:05d}" for i in range(len(labels))])
    return labels[order], sessions[order], ids


def sessions_of(sessions, idx):
    return set(np.asarray(sessions)[idx].tolist())


def assert_ratio_close(labels, idx, sessions):
    """A split's label-1 share may miss the overall share by about one session per class at
    each of the split's two boundaries (max session size / split size, twice)."""
    overall = labels.mean()
    biggest = max(np.unique(sessions, return_counts=True)[1])
    assert abs(labels[idx].mean() - overall) <= 2 * biggest / len(idx) + 1e-9


def test_grouped_split_properties():
    labels, sessions, _ = make_data()
    s = sp.grouped_split(labels, sessions, val_fraction=0.15, test_fraction=0.2, seed=3)
    allidx = np.concatenate([s[k] for k in sp.SPLITS])
    np.testing.assert_array_equal(np.sort(allidx), np.arange(len(labels)))  # a partition
    for a in sp.SPLITS:
        for b in sp.SPLITS:
            if a < b:
                assert not sessions_of(sessions, s[a]) & sessions_of(sessions, s[b])
        assert_ratio_close(labels, s[a], sessions)
    n = len(labels)
    biggest = 3
    for name, frac in (("val", 0.15), ("test", 0.2)):
        # per class, within one session's size (midpoint rule)
        assert abs(len(s[name]) - frac * n) <= 2 * biggest
    sp.check_splits(s, labels, sessions=sessions)


def test_grouped_split_deterministic_and_seeded():
    labels, sessions, _ = make_data()
    kw = dict(val_fraction=0.1, test_fraction=0.2)
    a = sp.grouped_split(labels, sessions, seed=1, **kw)
    b = sp.grouped_split(labels, sessions, seed=1, **kw)
    c = sp.grouped_split(labels, sessions, seed=2, **kw)
    for k in sp.SPLITS:
        np.testing.assert_array_equal(a[k], b[k])
    assert any(not np.array_equal(a[k], c[k]) for k in sp.SPLITS)


def test_mixed_label_session_counts_as_positive():
    # Session "m" has one label-1 image among label-0 ones: it is a positive session, so it must
    # stay whole and be stratified with the positives.
    labels = np.array([0, 1, 0] + [0, 1] * 20)
    sessions = np.array(["m", "m", "m"] + [f"s{i}" for i in range(40)])
    s = sp.grouped_split(labels, sessions, val_fraction=0.2, test_fraction=0.2, seed=0)
    where = [k for k in sp.SPLITS if np.isin([0, 1, 2], s[k]).any()]
    assert len(where) == 1 and np.isin([0, 1, 2], s[where[0]]).all()


def test_kfold_partitions_and_balance_vs_sklearn():
    labels, sessions, _ = make_data(150, seed=5)
    k = 5
    folds = sp.grouped_kfold(labels, sessions, num_folds=k, val_fraction=0.1, seed=0)
    assert len(folds) == k
    tests = np.concatenate([f["test"] for f in folds])
    np.testing.assert_array_equal(np.sort(tests), np.arange(len(labels)))  # each image once
    for f in folds:
        np.testing.assert_array_equal(
            np.sort(np.concatenate([f[n] for n in sp.SPLITS])), np.arange(len(labels))
        )
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            assert not sessions_of(sessions, f[a]) & sessions_of(sessions, f[b])
        assert abs(len(f["val"]) - 0.1 * len(labels)) <= 6
    sp.check_splits(folds, labels, sessions=sessions)

    # Our test folds are at least about as stratified as sklearn's StratifiedGroupKFold.
    def worst(test_folds):
        return max(abs(labels[t].mean() - labels.mean()) for t in test_folds)

    ref = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=0)
    ref_tests = [t for _, t in ref.split(np.zeros(len(labels)), labels, sessions)]
    assert worst([f["test"] for f in folds]) <= worst(ref_tests) + 0.03
    sizes = [len(f["test"]) for f in folds]
    assert max(sizes) - min(sizes) <= max(len(t) for t in ref_tests) - min(map(len, ref_tests)) + 4


def test_kfold_deterministic():
    labels, sessions, _ = make_data(60)
    a = sp.grouped_kfold(labels, sessions, num_folds=3, val_fraction=0.15, seed=4)
    b = sp.grouped_kfold(labels, sessions, num_folds=3, val_fraction=0.15, seed=4)
    for fa, fb in zip(a, b, strict=True):
        for k in sp.SPLITS:
            np.testing.assert_array_equal(fa[k], fb[k])


def test_check_splits_errors():
    labels = np.array([0, 0, 1, 1, 0, 1])
    ok = {"train": np.array([0, 2]), "val": np.array([1, 3]), "test": np.array([4, 5])}
    sp.check_splits(ok, labels)

    with pytest.raises(sp.SplitError, match=r"the val split is empty; raise val_fraction"):
        sp.check_splits({**ok, "val": np.array([], np.int64)}, labels)

    sessions = np.array(["a", "b", "c", "d", "e", "f"])
    no_pos = {**ok, "val": np.array([1])}
    with pytest.raises(
        sp.SplitError, match=r"the val split of fold 1 has no label-1 images: 3 sessions"
    ) as e:
        sp.check_splits([ok, no_pos], labels, sessions=sessions, context="demo: ")
    assert str(e.value).startswith("demo: ") and "or lower num_folds" in str(e.value)

    with pytest.raises(sp.SplitError, match=r"image 'i0' is in both the train and test splits"):
        sp.check_splits(
            {**ok, "test": np.array([0, 4, 5])}, labels, ids=[f"i{k}" for k in range(6)]
        )

    leak = np.array(["a", "a", "c", "d", "e", "f"])  # images 0 (train) and 1 (val) share "a"
    with pytest.raises(sp.SplitError, match=r"session 'a' is in both the train and val splits"):
        sp.check_splits(ok, labels, sessions=leak)

    with pytest.raises(sp.SplitError, match=r"indices outside 0..5"):
        sp.check_splits({**ok, "test": np.array([4, 6])}, labels)
    with pytest.raises(sp.SplitError, match=r"fix the file"):
        sp.check_splits({**ok, "test": np.array([4])}, labels, hint="fix the file")


def test_too_few_sessions_is_reported_with_advice():
    # 3 positive sessions cannot fill 5 test folds.
    labels = np.array([1, 1, 1] + [0] * 20)
    sessions = np.array(["p0", "p1", "p2"] + [f"n{i}" for i in range(20)])
    folds = sp.grouped_kfold(labels, sessions, num_folds=5, val_fraction=0.1, seed=0)
    with pytest.raises(sp.SplitError, match=r"no label-1 images: 3 sessions .*lower num_folds"):
        sp.check_splits(folds, labels, sessions=sessions)


def test_save_load_round_trip(tmp_path):
    labels, sessions, ids = make_data(40)
    folds = sp.grouped_kfold(labels, sessions, num_folds=3, val_fraction=0.1, seed=0)
    path = tmp_path / "sub" / "splits.json"
    sp.save_splits(path, folds, ids)
    doc = json.loads(path.read_text())
    assert doc["folds"][1]["test"] == [str(ids[i]) for i in folds[1]["test"]]
    loaded = sp.load_splits(path, ids)
    for fa, fb in zip(folds, loaded, strict=True):
        for k in sp.SPLITS:
            np.testing.assert_array_equal(fa[k], fb[k])
            assert fb[k].dtype == np.int64
    # Ids resolve by name, not by position: a reordered dataset gets the same images.
    perm = np.random.default_rng(0).permutation(len(ids))
    moved = sp.load_splits(path, ids[perm])
    for k in sp.SPLITS:
        assert set(ids[perm][moved[0][k]]) == set(ids[folds[0][k]])


@pytest.mark.parametrize(
    ("fold", "message"),
    [
        (
            {"train": ["a", "zz"], "val": ["b"], "test": ["c"]},
            r"unknown id 'zz' in the train split",
        ),
        ({"train": ["a", "b"], "val": ["b"], "test": ["c"]}, r"'b' is in both the train and val"),
        ({"train": ["a", "a"], "val": ["b"], "test": ["c"]}, r"'a' is twice in the train split"),
        ({"train": ["a"], "test": ["c"]}, r"fold 0 must have exactly"),
    ],
)
def test_load_errors_name_the_file(tmp_path, fold, message):
    path = tmp_path / "my_splits.json"
    path.write_text(json.dumps({"folds": [fold]}))
    with pytest.raises(sp.SplitError, match=message) as e:
        sp.load_splits(path, ["a", "b", "c", "d"])
    assert "my_splits.json" in str(e.value)


def test_load_bad_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(sp.SplitError, match=r"cannot read splits file .*broken.json"):
        sp.load_splits(path, ["a"])


def config(**kw):
    base = dict(splits_file="", num_folds=0, val_fraction=0.15, test_fraction=0.2)
    return types.SimpleNamespace(**{**base, **kw})


def test_make_splits_writes_and_reproduces(tmp_path):
    labels, sessions, ids = make_data(80)
    records = types.SimpleNamespace(ids=ids, labels=labels, sessions=sessions)
    first = sp.make_splits(records, config(), tmp_path / "run1", seed=7)
    assert len(first) == 1 and (tmp_path / "run1" / "splits.json").exists()
    again = sp.make_splits(
        records, config(splits_file=str(tmp_path / "run1" / "splits.json")), tmp_path / "run2"
    )
    for k in sp.SPLITS:
        np.testing.assert_array_equal(first[0][k], again[0][k])
    assert (tmp_path / "run2" / "splits.json").read_text() == (
        tmp_path / "run1" / "splits.json"
    ).read_text()

    folds = sp.make_splits(records, config(num_folds=4), tmp_path / "run3", write=False)
    assert len(folds) == 4 and not (tmp_path / "run3").exists()
    with pytest.raises(sp.SplitError, match=r"num_folds must be 0 .* or >= 2"):
        sp.make_splits(records, config(num_folds=1), tmp_path / "run4")


def test_make_splits_rejects_a_file_that_leaks_sessions(tmp_path):
    labels, sessions, ids = make_data(30)
    s = sp.grouped_split(labels, sessions, val_fraction=0.2, test_fraction=0.2, seed=0)
    # Move one image of a multi-image train session into test.
    names, counts = np.unique(sessions[s["train"]], return_counts=True)
    victim = s["train"][sessions[s["train"]] == names[counts > 1][0]][0]
    bad = {
        "train": np.setdiff1d(s["train"], [victim]),
        "val": s["val"],
        "test": np.union1d(s["test"], [victim]),
    }
    sp.save_splits(tmp_path / "bad.json", bad, ids)
    records = types.SimpleNamespace(ids=ids, labels=labels, sessions=sessions)
    with pytest.raises(sp.SplitError, match=r"splits file .*bad.json: session .* in both"):
        sp.make_splits(records, config(splits_file=str(tmp_path / "bad.json")), tmp_path)
