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
from PIL import Image, ImageFilter

from jaxcerv.data import builders
from jaxcerv.data.plan import balanced_order, batch_plan  # noqa: F401 (re-exported)

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
    # annocerv only: the share of each model patch inside the examiner's acetowhite region,
    # float32 (N, grid, grid) in [0, 1], all 0 where the outline is empty or unclosable;
    # region_status str (N,) "closed" | "empty" | "unclosable" (jaxcerv.data.regions);
    # region_usable bool (N,) = status != "unclosable" (an empty region is a real "no
    # acetowhite"; region AUC and pointing game need status "closed"); swede_scores int32 (N,).
    truth_region: np.ndarray | None = None
    region_status: np.ndarray | None = None
    region_usable: np.ndarray | None = None
    swede_scores: np.ndarray | None = None
    label_note: str = ""  # what label 1 means when it is not histology (annocerv: Swede >= 5)

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
        swede_threshold=data.get("swede_threshold", 5),
        restore_aspect=data.get("restore_aspect", True),
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
        optional = ("truth_cervix", "truth_lesion", "truth_region", "region_status",
                    "region_usable", "swede_scores")
        return Records(
            ids=z["ids"],
            labels=z["labels"],
            grades=z["grades"],
            sessions=z["sessions"],
            days_to_diagnosis=z["days_to_diagnosis"],
            **{k: z[k] for k in optional if k in z},
            label_note=str(z["label_note"]) if "label_note" in z else "",
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


@dataclasses.dataclass(frozen=True)
class Augment:
    """What training augmentation may change, and how far (``config.data.augmentation``).

    The defaults are the original light augmentation (horizontal flip, colour jitter within
    10%); the geometric, white-balance, illumination and blur terms are off unless set. Never a
    vertical flip and only small rotations: colposcopy images are always taken from below with
    the anterior lip up, and the spatial regulator learns where lesions sit in that frame.
    """

    flip: bool = True  # horizontal (left/right): the cervix is roughly symmetric that way
    colour: float = _COLOUR_JITTER  # brightness, contrast, saturation factors in [1-c, 1+c]
    rotation: float = 0.0  # degrees, uniform in [-r, r] about the image centre
    scale: float = 0.0  # zoom factor in [1-s, 1+s]
    translate: float = 0.0  # shift, fraction of the side, each axis in [-t, t]
    white_balance: float = 0.0  # per-channel gain in [1-w, 1+w]: the light source's colour
    illumination: float = 0.0  # linear light gradient across the image, amplitude up to this
    blur: float = 0.0  # Gaussian blur, sigma uniform in [0, blur] px: defocus

    @classmethod
    def from_config(cls, data: Any) -> Augment | None:
        """The spec ``config.data`` asks for; None when augmentation is off."""
        if not data.augment:
            return None
        spec = data.get("augmentation")
        return cls(**(spec.to_dict() if spec is not None else {}))


def affine_coefficients(
    size: tuple[int, int], degrees: float, zoom: float, shift: tuple[float, float]
) -> tuple[float, ...]:
    """PIL's AFFINE data (output pixel -> input pixel) for the forward map
    out = zoom * R (in - c) + c + shift, R = [[cos, -sin], [sin, cos]] of ``degrees``, c the
    image centre, (x, y) pixel coordinates with y pointing down (positive degrees turn the
    picture clockwise on screen)."""
    w, h = size
    cx, cy = w / 2.0, h / 2.0
    t = np.deg2rad(degrees)
    # The inverse: in = R^-1 (out - c - shift) / zoom + c, R^-1 = [[cos, sin], [-sin, cos]].
    a, b = np.cos(t) / zoom, np.sin(t) / zoom
    d, e = -np.sin(t) / zoom, np.cos(t) / zoom
    ox, oy = cx + shift[0], cy + shift[1]
    return (a, b, cx - a * ox - b * oy, d, e, cy - d * ox - e * oy)


def augment_image(
    image: np.ndarray, rng: np.random.Generator, spec: Augment = Augment()
) -> np.ndarray:
    """One random draw of ``spec``'s changes, all from ``rng`` in a fixed order.

    Order: flip, colour factors, then (each only when enabled) rotation/zoom/shift, white
    balance, illumination gradient, blur. The colour jitter is, in order, brightness (x * b),
    contrast (around the mean luma, factor c) and saturation (around each pixel's luma, factor
    s); with the white-balance gains these are all linear, so they are applied as one 3x3 colour
    matrix plus an offset, on channel planes (numpy's (N,3)@(3,3) is slow). Geometry and blur
    run in Pillow (C, a few ms at 672 px); pixels moved in from outside are black, like the
    letterbox.
    """
    if rng.random() < 0.5 and spec.flip:  # drawn even when off: the order stays fixed
        image = image[:, ::-1]
    brightness, contrast, saturation = rng.uniform(1 - spec.colour, 1 + spec.colour, 3)
    if spec.rotation or spec.scale or spec.translate:
        degrees = rng.uniform(-spec.rotation, spec.rotation)
        zoom = rng.uniform(1 - spec.scale, 1 + spec.scale)
        h, w = image.shape[:2]
        shift = rng.uniform(-spec.translate, spec.translate, 2) * (w, h)
        image = np.asarray(
            Image.fromarray(np.ascontiguousarray(image)).transform(
                (w, h), Image.Transform.AFFINE,
                affine_coefficients((w, h), degrees, zoom, tuple(shift)),
                resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0),
            )
        )
    gains = rng.uniform(1 - spec.white_balance, 1 + spec.white_balance, 3) if spec.white_balance \
        else np.ones(3)
    field = None
    if spec.illumination:
        angle, amplitude = rng.uniform(0, 2 * np.pi), rng.uniform(0, spec.illumination)
        field = illumination_field(image.shape[:2], angle, amplitude)
    planes = [image[..., k].astype(np.float32) for k in range(3)]
    mean_luma = brightness * sum(float(p.mean()) * w for p, w in zip(planes, _LUMA, strict=True))
    # saturation: out_j = s * x_j + (1 - s) * luma(x), luma(x) = sum_k w_k x_k
    mix = saturation * np.eye(3) + (1 - saturation) * np.outer(_LUMA, np.ones(3))
    mix *= brightness * contrast
    offset = (1 - contrast) * mean_luma  # luma weights sum to 1
    out = np.empty(image.shape, np.uint8)
    acc = np.empty(image.shape[:2], np.float32)
    for j in range(3):
        np.multiply(planes[0], np.float32(mix[0, j] * gains[j]), out=acc)
        acc += planes[1] * np.float32(mix[1, j] * gains[j])
        acc += planes[2] * np.float32(mix[2, j] * gains[j])
        acc += np.float32(offset * gains[j])
        if field is not None:
            acc *= field
        np.clip(acc, 0, 255, out=acc)
        out[..., j] = np.rint(acc, out=acc)
    if spec.blur:
        sigma = rng.uniform(0, spec.blur)
        out = np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(sigma)))
    return out


def illumination_field(
    shape: tuple[int, int], angle: float, amplitude: float
) -> np.ndarray:
    """(h, w) float32 multiplier 1 + amplitude * (u cos(angle) + v sin(angle)) / 2, with u, v
    in [-1, 1] across the image: uneven light from one side, the mean brightness unchanged."""
    h, w = shape
    u = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    v = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    return 1 + np.float32(amplitude / 2) * (u * np.float32(np.cos(angle))
                                            + v * np.float32(np.sin(angle)))


@dataclasses.dataclass(frozen=True)
class _LoadRow:
    """Plan entry -> one example; picklable for grain workers.

    An entry is position + n * repeat (n = len(indices)): the position in `indices`, or -1 for
    padding, and which repeat of that image in this epoch it is (balanced sampling draws the
    minority class more than once; each repeat gets its own augmentation)."""

    source: Sequence[dict]
    indices: np.ndarray
    seed: int
    epoch: int
    augment: Augment | None

    def __call__(self, entry: int) -> dict[str, np.ndarray]:
        repeat, position = divmod(int(entry), len(self.indices)) if entry >= 0 else (0, -1)
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
        if self.augment is not None:
            key = [self.seed, self.epoch, 2, position] + ([repeat] if repeat else [])
            image = augment_image(image, np.random.default_rng(key), self.augment)
        return {
            "image": image,
            "label": np.int32(record["label"]),
            "grade": np.int32(record["grade"]),
            "index": np.int32(position),
            "mask": np.bool_(True),
        }


def batches(
    source: Sequence[dict],
    indices: Sequence[int] | np.ndarray,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    shuffle: bool,
    augment: bool | Augment | None,
    drop_remainder: bool,
    num_workers: int = 0,
    prefetch: int = 2,
    shard_index: int = 0,
    shard_count: int = 1,
    balance: np.ndarray | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Numpy batches of `source[indices[...]]`, deterministic from (seed, epoch).

    Yields image uint8 (b,S,S,3), label/grade/index int32 (b,), mask bool (b,), with
    b = batch_size // shard_count; `index` is the position in `indices`. Without drop_remainder
    the last batch is padded (zero image, mask False, index 0). ``augment``: an `Augment` spec,
    True for the default one, False/None for none; drawn per (seed, epoch, position), so it does
    not depend on workers or sharding. ``balance``: the labels of `indices`, for class-balanced
    epochs (`balanced_order`). prefetch is the number
    of batches read ahead (0: synchronous). num_workers = 0 loads in up to 16 threads, which is
    usually fastest: decompression and augmentation release the GIL. num_workers > 0 uses grain
    worker processes, started anew for each call (seconds: they import grain and JAX), so they
    pay off only for long epochs; the caller's main module needs the `__main__` guard (spawn).
    """
    indices = np.asarray(indices, dtype=np.int64)
    plan = batch_plan(
        len(indices), batch_size=batch_size, seed=seed, epoch=epoch, shuffle=shuffle,
        drop_remainder=drop_remainder, shard_index=shard_index, shard_count=shard_count,
        balance=balance,
    )
    spec = Augment() if augment is True else augment or None
    if plan.size == 0:
        return
    per_process = plan.shape[1]
    rows = grain.MapDataset.source(plan.reshape(-1)).map(
        _LoadRow(source, indices, seed, epoch, spec)
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
