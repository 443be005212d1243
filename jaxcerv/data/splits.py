"""Grouped, stratified train/val/test splits and grouped k-fold cross-validation (numpy only).

Sessions are the grouping unit: the photos of one screening look alike, so a session on both sides
of a split would leak. Stratification works on sessions (a session's label is the largest of its
images' labels) but balances *image* counts, so every split keeps close to the overall class ratio
(the paper: "we keep the ratio between normal/abnormal classes roughly the same").
Fractions are of the whole dataset in both modes: with k folds, val takes ``val_fraction`` of all
images from the k-1 folds that are not the test fold.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SPLITS = ("train", "val", "test")
CLASSES = (0, 1)


class SplitError(ValueError):
    """A split that cannot train or evaluate a model, or a splits file that does not fit."""


def _sessions(labels: np.ndarray, sessions: Sequence[str]) -> tuple[np.ndarray, ...]:
    """Per-image session code, and per session its label (max over images) and image count."""
    names = np.asarray(sessions).astype(str)
    if names.shape != labels.shape:
        raise ValueError(f"{len(labels)} labels but {len(names)} session names")
    _, code = np.unique(names, return_inverse=True)
    n = int(code.max()) + 1 if len(code) else 0
    label = np.zeros(n, np.int64)
    np.maximum.at(label, code, labels)
    return code, label, np.bincount(code, minlength=n)


def _take(pool: np.ndarray, size: np.ndarray, target: float, at_least_one: bool):
    """Walk shuffled sessions, taking each whose image count keeps the total nearest ``target``
    (its midpoint stays under it); take one anyway when asked and the pool can spare it."""
    taken, count = [], 0
    for s in pool:
        if count + size[s] / 2 <= target:
            taken.append(s)
            count += size[s]
    if at_least_one and not taken and len(pool) >= 2:
        taken = [pool[0]]
    return np.asarray(taken, np.int64), np.setdiff1d(pool, taken)


def _indices(code: np.ndarray, split_of_session: np.ndarray) -> dict[str, np.ndarray]:
    split = split_of_session[code]
    return {name: np.flatnonzero(split == k) for k, name in enumerate(SPLITS)}


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise SplitError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must be >= 0 and sum "
            "to less than 1"
        )


def grouped_split(
    labels: Sequence[int],
    sessions: Sequence[str],
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> dict[str, np.ndarray]:
    """One train/val/test split by session, stratified; sorted index arrays."""
    _check_fractions(val_fraction, test_fraction)
    labels = np.asarray(labels, np.int64)
    code, label, size = _sessions(labels, sessions)
    rng = np.random.default_rng(seed)
    split = np.zeros(len(label), np.int64)  # 0 train, 1 val, 2 test
    for c in np.unique(label):
        pool = rng.permutation(np.flatnonzero(label == c))
        total = size[pool].sum()
        test, pool = _take(pool, size, test_fraction * total, test_fraction > 0)
        val, pool = _take(rng.permutation(pool), size, val_fraction * total, val_fraction > 0)
        split[test], split[val] = 2, 1
    return _indices(code, split)


def grouped_kfold(
    labels: Sequence[int],
    sessions: Sequence[str],
    *,
    num_folds: int,
    val_fraction: float,
    seed: int,
) -> list[dict[str, np.ndarray]]:
    """k folds by session, stratified: the test folds partition the images; each fold's val is
    carved by session from the other folds."""
    if num_folds < 2:
        raise SplitError(f"num_folds must be >= 2 for k-fold cross-validation, got {num_folds}")
    _check_fractions(val_fraction, 1.0 / num_folds)
    labels = np.asarray(labels, np.int64)
    code, label, size = _sessions(labels, sessions)
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(label), np.int64)
    for c in np.unique(label):
        pool = rng.permutation(np.flatnonzero(label == c))
        load = np.zeros(num_folds)
        # Largest sessions first, each to a least-loaded fold (ties at random): balanced counts.
        for s in pool[np.argsort(-size[pool], kind="stable")]:
            k = rng.choice(np.flatnonzero(load == load.min()))
            fold[s] = k
            load[k] += size[s]
    folds = []
    for k in range(num_folds):
        fold_rng = np.random.default_rng([seed, k])
        split = np.where(fold == k, 2, 0)
        for c in np.unique(label):
            pool = fold_rng.permutation(np.flatnonzero((label == c) & (fold != k)))
            total = size[label == c].sum()
            val, _ = _take(pool, size, val_fraction * total, val_fraction > 0)
            split[val] = 1
        folds.append(_indices(code, split))
    return folds


def _advice(name: str, kfold: bool) -> str:
    return {
        "train": "lower val_fraction/test_fraction",
        "val": "raise val_fraction" + (" or lower num_folds" if kfold else ""),
        "test": "lower num_folds" if kfold else "raise test_fraction",
    }[name] + ", or use more images"


def check_splits(
    splits: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    labels: Sequence[int],
    ids: Sequence[str] | None = None,
    *,
    sessions: Sequence[str] | None = None,
    context: str = "",
    hint: str | None = None,
    may_be_empty: Sequence[str] = (),
) -> None:
    """Raise SplitError unless every split of every fold is non-empty, holds both classes, and
    shares no image (nor session, when ``sessions`` is given) with another split of its fold.
    The splits named in ``may_be_empty`` may have no images (the 80/20 protocol has no val).

    ``context`` prefixes messages (e.g. the splits file); ``hint`` replaces the advice on which
    setting to change."""
    folds = [splits] if isinstance(splits, Mapping) else list(splits)
    labels = np.asarray(labels, np.int64)
    names = None if sessions is None else np.asarray(sessions).astype(str)

    def name_of(i: int) -> str:
        return f"image {str(ids[i])!r}" if ids is not None else f"image index {i}"

    def fail(message: str) -> None:
        raise SplitError(context + message)

    for k, fold in enumerate(folds):
        where = f" of fold {k}" if len(folds) > 1 else ""
        missing = [name for name in SPLITS if name not in fold]
        if missing:
            fail(f"fold {k} lacks the {', '.join(missing)} split(s)")
        owner: dict[int, str] = {}
        session_owner: dict[str, str] = {}
        for name in SPLITS:
            idx = np.asarray(fold[name])
            n = len(labels)
            if idx.size and (idx.dtype.kind not in "iu" or idx.min() < 0 or idx.max() >= n):
                fail(f"the {name} split{where} has indices outside 0..{n - 1}")
            for i in idx.tolist():
                if i in owner:
                    fail(f"{name_of(i)} is in both the {owner[i]} and {name} splits{where}")
                owner[i] = name
                if names is not None:
                    session = str(names[i])
                    other = session_owner.setdefault(session, name)
                    if other != name:
                        fail(f"session {session!r} is in both the {other} and {name} splits{where}")
            advice = hint or _advice(name, len(folds) > 1)
            if idx.size == 0 and name in may_be_empty:
                continue
            if idx.size == 0:
                fail(f"the {name} split{where} is empty; {advice}")
            for c in CLASSES:
                if not np.any(labels[idx] == c):
                    n_images = int(np.sum(labels == c))
                    in_all = f"{n_images} images"
                    if names is not None:
                        in_all = f"{len(np.unique(names[labels == c]))} sessions ({in_all})"
                    fail(
                        f"the {name} split{where} has no label-{c} images: {in_all} of label {c} "
                        f"in all; {advice}"
                    )


def save_splits(
    path: str | os.PathLike,
    folds: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    ids: Sequence[str],
) -> None:
    """Write {"folds": [{"train": [ids], "val": [...], "test": [...]}, ...]} atomically."""
    folds = [folds] if isinstance(folds, Mapping) else folds
    ids = [str(i) for i in ids]
    doc = {"folds": [{name: [ids[i] for i in fold[name]] for name in SPLITS} for fold in folds]}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)


def load_splits(path: str | os.PathLike, ids: Sequence[str]) -> list[dict[str, np.ndarray]]:
    """Read a splits file and map its ids to dataset indices (sorted); the file may cover only
    part of the dataset, but every id in it must exist, once."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise SplitError(f"cannot read splits file {path}: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("folds"), list) or not doc["folds"]:
        raise SplitError(
            f'splits file {path}: expected {{"folds": [{{"train": [ids], "val": [ids], '
            f'"test": [ids]}}, ...]}}'
        )
    ids = [str(i) for i in ids]
    index = {name: i for i, name in enumerate(ids)}
    if len(index) != len(ids):
        dup = next(name for name, n in Counter(ids).items() if n > 1)
        raise SplitError(f"splits file {path}: the dataset's image ids are not unique ({dup!r})")
    folds = []
    for k, fold in enumerate(doc["folds"]):
        if not isinstance(fold, dict) or set(fold) != set(SPLITS):
            got = sorted(fold) if isinstance(fold, dict) else type(fold).__name__
            raise SplitError(f"splits file {path}: fold {k} must have exactly {SPLITS}, got {got}")
        owner: dict[str, str] = {}
        for name in SPLITS:
            if not isinstance(fold[name], list):
                raise SplitError(f"splits file {path}: fold {k} {name} must be a list of ids")
            for x in map(str, fold[name]):
                if x not in index:
                    raise SplitError(
                        f"splits file {path}: unknown id {x!r} in the {name} split of fold {k} "
                        "(not in this dataset)"
                    )
                if x in owner:
                    what = (
                        f"twice in the {name} split"
                        if owner[x] == name
                        else f"in both the {owner[x]} and {name} splits"
                    )
                    raise SplitError(f"splits file {path}: id {x!r} is {what} of fold {k}")
                owner[x] = name
        folds.append(
            {
                name: np.sort(np.array([index[str(x)] for x in fold[name]], np.int64))
                for name in SPLITS
            }
        )
    return folds


def make_splits(
    records: Any, data_config: Any, workdir: str | os.PathLike, *, seed: int = 0, write: bool = True
) -> list[dict[str, np.ndarray]]:
    """The run's folds: from ``data_config.splits_file`` when set, else one grouped split
    (``num_folds`` 0) or grouped k-fold CV; checked, then written to workdir/splits.json when
    ``write`` (process 0)."""
    splits_file = data_config.splits_file
    if splits_file:
        folds = load_splits(splits_file, records.ids)
        context, hint = f"splits file {splits_file}: ", "fix or remove the splits file"
    else:
        num_folds = int(data_config.num_folds)
        if num_folds == 0:
            folds = [
                grouped_split(
                    records.labels,
                    records.sessions,
                    val_fraction=data_config.val_fraction,
                    test_fraction=data_config.test_fraction,
                    seed=seed,
                )
            ]
        elif num_folds >= 2:
            folds = grouped_kfold(
                records.labels,
                records.sessions,
                num_folds=num_folds,
                val_fraction=data_config.val_fraction,
                seed=seed,
            )
        else:
            raise SplitError(f"num_folds must be 0 (one split) or >= 2, got {num_folds}")
        context, hint = f"{len(records.labels)} images: ", None
    no_val = ("val",) if data_config.val_fraction == 0 else ()
    check_splits(
        folds, records.labels, records.ids, sessions=records.sessions, context=context, hint=hint,
        may_be_empty=no_val,
    )
    if write:
        save_splits(Path(workdir) / "splits.json", folds, records.ids)
    return folds
