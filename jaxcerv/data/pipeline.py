"""From config to batches: build/load the TFDS dataset, read its metadata, feed numpy batches.

`load` returns the random-access source and the `Records` (metadata, no pixels); `batches` turns
a list of record indices into deterministic, shardable, optionally augmented numpy batches with
grain.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grain
import numpy as np
from absl import flags

from jaxcerv.data import builders

_COLOUR_JITTER = 0.1  # brightness, contrast and saturation factors drawn from [0.9, 1.1]
_MAX_THREADS = 16  # in-process loader threads
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601 luma weights, as Pillow's "L"


@dataclasses.dataclass(frozen=True)
class Records:
    """Per-image metadata in dataset order (all arrays length N); no pixels."""

    ids: np.ndarray  # str, unique
    labels: np.ndarray  # int32, 1 = CIN2+
    grades: np.ndarray  # int32, 0-4, -1 unknown
    sessions: np.ndarray  # str
    days_to_diagnosis: np.ndarray  # float32, NaN unknown
    truth_cervix: np.ndarray | None = None  # float32 (N, 5), patch units; synthetic only
    truth_lesion: np.ndarray | None = None  # uint8 (N, grid, grid); synthetic only

    def __len__(self) -> int:
        return len(self.ids)


def dataset_builder(config: Any, workdir: str | os.PathLike[str]) -> builders.Builder:
    """The TFDS builder `config.data` describes (data_dir "" -> <workdir>/tfds)."""
    data = config.data
    return builders.make_builder(
        data.name,
        data_dir=data.data_dir or Path(workdir) / "tfds",
        grid_size=config.grid_size,
        patch_size=config.patch_size,
        resize=data.resize,
        manual_dir=data.manual_dir,
        csv=data.csv,
        include_variants=data.include_variants,
        num_images=data.num_images,
        synthetic_seed=data.synthetic_seed,
        synthetic=data.get("synthetic"),
    )


def load(config: Any, workdir: str | os.PathLike[str]) -> tuple[Sequence[dict], Records]:
    """(source, records): builds the dataset on first use, then opens it for random access.

    Every process may call this: the first to arrive builds, the others wait (see
    `builders.prepare`).
    """
    builders.prepare(
        dataset_builder(config, workdir),
        config.data.manual_dir,
        announce=lambda line: print(line, flush=True),
    )
    builder = dataset_builder(config, workdir)  # fresh: TFDS caches info read before a build
    source = builder.as_data_source(split=builders.SPLIT)
    records = read_records(builder.data_path / builders.RECORDS_FILE)
    _check_aligned(source, records, builder.data_dir)
    return source, records


def read_records(path: str | os.PathLike[str]) -> Records:
    """The `records.npz` a build writes beside the dataset."""
    with np.load(path, allow_pickle=False) as z:
        return Records(
            ids=z["ids"],
            labels=z["labels"],
            grades=z["grades"],
            sessions=z["sessions"],
            days_to_diagnosis=z["days_to_diagnosis"],
            truth_cervix=z["truth_cervix"] if "truth_cervix" in z else None,
            truth_lesion=z["truth_lesion"] if "truth_lesion" in z else None,
        )


def _check_aligned(source: Sequence[dict], records: Records, where: str) -> None:
    """Cheap guard that records.npz belongs to these array_record files (first and last id)."""
    n = len(records)
    ok = len(source) == n and all(
        _text(source[i]["id"]) == records.ids[i] for i in {0, n - 1}
    )
    if not ok:
        raise builders.DatasetError(
            f"{where}: {builders.RECORDS_FILE} does not match the dataset; delete the folder to "
            "rebuild"
        )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# ----------------------------------------------------------------------------- batches


def augment_image(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random horizontal flip and mild brightness/contrast/saturation jitter (within 10%).

    Never a vertical flip: colposcopy images are always taken from below with the anterior lip
    up, and the spatial regulator learns where lesions sit in that frame; flipping vertically
    would contradict the prior the model is regularised towards. Horizontal (left/right) symmetry
    of the cervix does hold.

    The jitter is, in order, brightness (x * b), contrast (around the mean luma, factor c) and
    saturation (around each pixel's luma, factor s). All three are linear, so they are applied as
    one 3x3 colour matrix plus an offset, on channel planes (numpy's (N,3)@(3,3) is slow).
    """
    if rng.random() < 0.5:
        image = image[:, ::-1]
    brightness, contrast, saturation = rng.uniform(1 - _COLOUR_JITTER, 1 + _COLOUR_JITTER, 3)
    planes = [image[..., k].astype(np.float32) for k in range(3)]
    mean_luma = brightness * sum(float(p.mean()) * w for p, w in zip(planes, _LUMA, strict=True))
    # saturation: out_j = s * x_j + (1 - s) * luma(x), luma(x) = sum_k w_k x_k
    mix = saturation * np.eye(3) + (1 - saturation) * np.outer(_LUMA, np.ones(3))
    mix *= brightness * contrast
    offset = np.float32((1 - contrast) * mean_luma)  # luma weights sum to 1
    out = np.empty(image.shape, np.uint8)
    acc = np.empty(image.shape[:2], np.float32)
    for j in range(3):
        np.multiply(planes[0], np.float32(mix[0, j]), out=acc)
        acc += planes[1] * np.float32(mix[1, j])
        acc += planes[2] * np.float32(mix[2, j])
        acc += offset
        np.clip(acc, 0, 255, out=acc)
        out[..., j] = np.rint(acc, out=acc)
    return out


@dataclasses.dataclass(frozen=True)
class _LoadRow:
    """Position in `indices` (or -1 for padding) -> one example; picklable for grain workers."""

    source: Sequence[dict]
    indices: np.ndarray
    seed: int
    epoch: int
    augment: bool

    def __call__(self, position: int) -> dict[str, np.ndarray]:
        position = int(position)
        record = self.source[int(self.indices[max(position, 0)])]
        image = np.asarray(record["image"], np.uint8)
        if position < 0:
            return {
                "image": np.zeros_like(image),
                "label": np.int32(0),
                "grade": np.int32(-1),
                "index": np.int32(0),
                "mask": np.bool_(False),
            }
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, 2, position])
            image = augment_image(image, rng)
        return {
            "image": image,
            "label": np.int32(record["label"]),
            "grade": np.int32(record["grade"]),
            "index": np.int32(position),
            "mask": np.bool_(True),
        }


def batch_plan(
    n: int,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    shuffle: bool,
    drop_remainder: bool,
    shard_index: int = 0,
    shard_count: int = 1,
) -> np.ndarray:
    """(num_batches, batch_size // shard_count) positions in `indices`, -1 for padding.

    The global batch order depends only on (seed, epoch); process p of P takes columns
    [p*b/P, (p+1)*b/P) of each global batch, so the global batch is the same for any P.
    """
    if batch_size < 1 or batch_size % shard_count:
        raise ValueError(f"batch_size {batch_size} must be a positive multiple of {shard_count}")
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
    if shuffle:
        order = np.random.default_rng([seed, epoch, 1]).permutation(n)
    else:
        order = np.arange(n)
    if drop_remainder:
        order = order[: n - n % batch_size]
    else:
        order = np.concatenate([order, np.full(-n % batch_size, -1, order.dtype)])
    per = batch_size // shard_count
    return order.reshape(-1, batch_size)[:, shard_index * per : (shard_index + 1) * per]


def batches(
    source: Sequence[dict],
    indices: Sequence[int] | np.ndarray,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    shuffle: bool,
    augment: bool,
    drop_remainder: bool,
    num_workers: int = 0,
    prefetch: int = 2,
    shard_index: int = 0,
    shard_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Numpy batches of `source[indices[...]]`, deterministic from (seed, epoch).

    Yields image uint8 (b,S,S,3), label/grade/index int32 (b,), mask bool (b,), with
    b = batch_size // shard_count; `index` is the position in `indices`. Without drop_remainder
    the last batch is padded (zero image, mask False, index 0). Augmentation is drawn per
    (seed, epoch, position), so it does not depend on workers or sharding. prefetch is the number
    of batches read ahead (0: synchronous). num_workers = 0 loads in up to 16 threads, which is
    usually fastest: decompression and augmentation release the GIL. num_workers > 0 uses grain
    worker processes, started anew for each call (seconds: they import grain and JAX), so they
    pay off only for long epochs; the caller's main module needs the `__main__` guard (spawn).
    """
    indices = np.asarray(indices, dtype=np.int64)
    plan = batch_plan(
        len(indices), batch_size=batch_size, seed=seed, epoch=epoch, shuffle=shuffle,
        drop_remainder=drop_remainder, shard_index=shard_index, shard_count=shard_count,
    )
    if plan.size == 0:
        return
    per_process = plan.shape[1]
    rows = grain.MapDataset.source(plan.reshape(-1)).map(
        _LoadRow(source, indices, seed, epoch, augment)
    )
    threads = min(_MAX_THREADS, os.cpu_count() or 1) if prefetch > 0 else 0
    if num_workers > 0:
        # Workers each take whole batches (a worker slices the dataset it is given), so batch
        # first: the batches are then the same as in-process.
        # grain's worker start-up reads absl flags; outside `absl.app.run` nobody parsed them.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        stream = (
            rows.batch(per_process)
            .to_iter_dataset(grain.ReadOptions(num_threads=min(threads, prefetch),
                                               prefetch_buffer_size=prefetch))
            .mp_prefetch(grain.MultiprocessingOptions(
                num_workers=num_workers, per_worker_buffer_size=max(prefetch, 1)))
        )
    else:
        # In-process: threads load single images (zlib and numpy release the GIL), `prefetch`
        # batches ahead.
        stream = rows.to_iter_dataset(
            grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch * per_process)
        ).batch(per_process)
    iterator = iter(stream)
    try:
        for batch in iterator:
            # Worker output lives in shared memory until garbage-collected; a plain copy frees it
            # now, so callers may keep batches around.
            yield {k: np.array(v) for k, v in batch.items()} if num_workers > 0 else batch
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
