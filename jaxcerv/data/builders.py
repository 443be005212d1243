"""TFDS builders for every data source, so all data reaches training through one path.

The builders run without TensorFlow: images are stored as `tfds.features.Tensor` (uint8, zlib)
rather than `tfds.features.Image` (which needs TF), in `array_record` files read back with
`builder.as_data_source()`. Each builder writes one split, `SPLIT` ("full"; TFDS reserves "all"):
train/val/test are made by session in `jaxcerv.data.splits`, never here.

Bad input never kills a build and is never dropped silently. A validation pass decodes every image
first (`jaxcerv.data.images.read_image`); files that cannot be used are skipped with a reason,
converted files (grayscale, RGBA, palette, 16-bit) are counted, and both go into `build_report.json`
beside the dataset (and the log). Only problems with the dataset as a whole (missing folder, CSV
without a required column, malformed CSV, nothing usable) are fatal: `DatasetError`, one line.

Beside the dataset the build also writes `records.npz`: the per-image metadata in dataset order,
so `pipeline.load` gets labels, sessions, ... without decoding a single image.

Builder config names carry everything that changes the stored pixels, so builds never collide:
`s{image_size}_p{patch_size}_{resize}` (+ `_variants` for the atlas, + a CSV fingerprint for
cervix_folder; + the Swede threshold, `_aspect` when the aspect is restored and a CSV fingerprint
for annocerv), `s{image_size}_g{grid}_seed{seed}_n{count}` for synthetic_cervix (+ `_k` and a
fingerprint of the difficulty knobs that differ from the demo's).
"""

from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import datetime
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from jaxcerv.data import regions
from jaxcerv.data.images import (
    RESIZE_POLICIES,
    Decoded,
    ImageError,
    read_image,
    read_mask,
    region_fractions,
)

log = logging.getLogger(__name__)

SPLIT = "full"
REPORT_FILE = "build_report.json"
RECORDS_FILE = "records.npz"
DATASETS = ("synthetic_cervix", "iarc_colposcopy_atlas", "cervix_folder", "annocerv")
_VERSION = tfds.core.Version("1.0.0")
_THREADS = min(8, os.cpu_count() or 1)  # Pillow and zlib release the GIL while decoding
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


class DatasetError(ValueError):
    """A problem with the dataset as a whole; the message is one line naming the file."""


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One image the source lists, with its labels, before its pixels are checked."""

    path: Path
    source: str  # how the report names it: relative path (atlas), "labels.csv:LINE (path)"
    id: str
    label: int
    grade: int  # 0-4, -1 unknown
    session: str
    days_to_diagnosis: float = float("nan")


@dataclasses.dataclass
class _Scan:
    """What a source listing produced: candidates plus everything set aside, with reasons."""

    candidates: list[Candidate] = dataclasses.field(default_factory=list)
    skipped: list[dict[str, str]] = dataclasses.field(default_factory=list)
    excluded: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    notes: list[str] = dataclasses.field(default_factory=list)

    def skip(self, source: str, reason: str) -> None:
        log.warning("skipping %s: %s", source, reason)
        self.skipped.append({"file": source, "reason": reason})


# ----------------------------------------------------------------------------- configs


@dataclasses.dataclass(eq=False)
class ImageConfig(tfds.core.BuilderConfig):
    """Stored resolution and resize policy of a dataset of real photographs."""

    image_size: int = 448
    patch_size: int = 28
    resize: str = "stretch"


@dataclasses.dataclass(eq=False)
class AtlasConfig(ImageConfig):
    include_variants: bool = False


@dataclasses.dataclass(eq=False)
class FolderConfig(ImageConfig):
    csv: str = ""  # absolute path of the labels CSV


@dataclasses.dataclass(eq=False)
class OutlineConfig(ImageConfig):
    csv: str = ""  # absolute path of metadata.csv
    swede_threshold: int = 5  # label = swede_score >= this
    restore_aspect: bool = True  # place by original_width:original_height, not the stored size


@dataclasses.dataclass(eq=False)
class SyntheticConfig(tfds.core.BuilderConfig):
    grid_size: int = 16
    patch_size: int = 28
    seed: int = 0
    num_images: int = 560
    knobs: tuple[tuple[str, Any], ...] = ()  # `synthetic.Knobs` fields that differ from the demo


def _synthetic_knobs(values: Any) -> tuple[tuple[str, Any], ...]:
    """Validated non-default knobs, sorted by name; a bad knob is a one-line DatasetError."""
    from jaxcerv.data import synthetic

    try:
        knobs = synthetic.Knobs.from_mapping(values)
    except (TypeError, ValueError) as e:
        raise DatasetError(str(e).splitlines()[0]) from None
    return tuple(sorted(knobs.changed().items()))


def _knobs_suffix(knobs: tuple[tuple[str, Any], ...]) -> str:
    """'' for the demo's knobs, else `_k` + 8 hex digits of their SHA-1: new knobs, new dataset."""
    if not knobs:
        return ""
    return "_k" + hashlib.sha1(json.dumps(knobs).encode()).hexdigest()[:8]


def _image_config_name(image_size: int, patch_size: int, resize: str) -> str:
    return f"s{image_size}_p{patch_size}_{resize}"


def csv_fingerprint(path: str | os.PathLike[str]) -> str:
    """First 8 hex digits of the CSV's SHA-1: editing the labels gives a new dataset."""
    try:
        return hashlib.sha1(Path(path).read_bytes()).hexdigest()[:8]
    except OSError as e:
        raise DatasetError(f"cannot read CSV {path}: {e.strerror}") from None


# ----------------------------------------------------------------------------- shared


class _Compressed(bytes):
    """An image already zlib-compressed by `compress_image`."""


class ZlibImage(tfds.features.Tensor):
    """`Tensor(encoding="zlib")` that also accepts `compress_image` output.

    zlib is the slow part of a build (about 0.2 s for a 1176 px image); TFDS would run it in its
    one writer thread, this lets the build's thread pool do it. Stored bytes and decoding are
    exactly those of `tfds.features.Tensor(encoding="zlib")`.
    """

    def encode_example(self, example_data):
        if isinstance(example_data, _Compressed):
            return bytes(example_data)
        return super().encode_example(example_data)


def compress_image(image: np.ndarray, image_size: int) -> _Compressed:
    if image.shape != (image_size, image_size, 3) or image.dtype != np.uint8:
        raise DatasetError(
            f"image {image.shape} {image.dtype}, expected ({image_size}, {image_size}, 3) uint8"
        )
    return _Compressed(zlib.compress(np.ascontiguousarray(image).tobytes()))


def _features(image_size: int, extra: dict[str, Any] | None = None) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict(
        {
            "image": ZlibImage(shape=(image_size, image_size, 3), dtype=np.uint8, encoding="zlib"),
            "label": tfds.features.Scalar(dtype=np.int32),
            "grade": tfds.features.Scalar(dtype=np.int32),
            "id": tfds.features.Text(),
            "session": tfds.features.Text(),
            "days_to_diagnosis": tfds.features.Scalar(dtype=np.float32),
            **(extra or {}),
        }
    )


def _ordered_map(fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
    """`map(fn, items)` on a thread pool, in order, with a bounded number of results in flight."""
    with ThreadPoolExecutor(_THREADS) as pool:
        window: collections.deque = collections.deque()
        for item in items:
            window.append(pool.submit(fn, item))
            if len(window) >= 2 * _THREADS:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


def _summarise(
    dataset: str,
    config_name: str,
    source: str,
    rows: list[dict[str, Any]],
    scan: _Scan,
    converted: list[dict[str, str]],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The build report: counts of what was kept and every file set aside, with its reason
    (+ `extra`: what a source adds, e.g. annocerv's label note and mask counts)."""
    labels = collections.Counter(int(r["label"]) for r in rows)
    grades = collections.Counter(int(r["grade"]) for r in rows)
    sessions = {r["session"] for r in rows}
    return {
        "dataset": dataset,
        "config": config_name,
        "source": source,
        "num_images": len(rows),
        "labels": {str(k): labels[k] for k in sorted(labels)},
        "grades": {str(k): grades[k] for k in sorted(grades)},
        "num_sessions": len(sessions),
        "sessions_per_label": {
            str(k): len({r["session"] for r in rows if int(r["label"]) == k})
            for k in sorted(labels)
        },
        "converted": converted,
        "skipped": scan.skipped,
        "excluded": dict(sorted(scan.excluded.items())),
        "notes": scan.notes,
        **(extra or {}),
    }


def format_summary(report: dict[str, Any]) -> str:
    """Human-readable build summary (printed by the build command and on first load)."""
    lines = [
        f"{report['dataset']}/{report['config']}: {report['num_images']} images, "
        f"{report['num_sessions']} sessions (source: {report['source']})",
        f"  per label (1 = {report.get('label_note', 'CIN2+')}): "
        + ", ".join(f"{k}: {v}" for k, v in report["labels"].items())
        + "  (sessions: "
        + ", ".join(f"{k}: {v}" for k, v in report["sessions_per_label"].items()) + ")",
        "  per grade: " + ", ".join(
            f"{'unknown' if k == '-1' else k}: {v}" for k, v in report["grades"].items()
        ),
    ]
    if "swede_scores" in report:
        lines.append(
            "  per Swede score: "
            + ", ".join(f"{k}: {v}" for k, v in report["swede_scores"].items())
        )
    if "masks" in report:
        masks = report["masks"]
        lines.append(
            f"  masks: {masks['closed']} closed into a region, {masks['empty']} empty (no "
            f"acetowhite marked), {masks['unclosable']} unclosable; usable for explanation "
            f"metrics: {masks['closed'] + masks['empty']} (region AUC / pointing game: the "
            f"{masks['closed']} closed)"
        )
        reasons = collections.Counter(u["reason"].split(":")[0] for u in report["unclosable"])
        lines += [f"    unclosable, {k}: {v}" for k, v in sorted(reasons.items())]
    if report["excluded"]:
        lines.append(
            "  not selected by design: "
            + ", ".join(f"{k}: {v}" for k, v in report["excluded"].items())
        )
    lines += [f"  note: {n}" for n in report["notes"]]
    if report["converted"]:
        kinds = collections.Counter(c["conversion"] for c in report["converted"])
        lines.append(
            f"  converted: {len(report['converted'])} ("
            + ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items())) + ")"
        )
    lines.append(f"  skipped: {len(report['skipped'])}")
    lines += [f"    {s['file']}: {s['reason']}" for s in report["skipped"]]
    return "\n".join(lines)


@contextlib.contextmanager
def _dropping_absl_warning(prefix: str) -> Iterator[None]:
    """Drop absl log records starting with ``prefix`` for the duration (TFDS logs via absl)."""

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(prefix)

    logger = logging.getLogger("absl")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Validate, report, then generate: the shared skeleton of the builders."""

    VERSION = _VERSION
    BUILDER_CONFIGS: list[tfds.core.BuilderConfig] = []

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> None:
        """None: nothing is downloaded, so there is no checksums file to locate. (TFDS's lookup
        would import the `importlib_resources` backport, which the pinned stack lacks.)"""
        return None

    def _create_builder_config(self, builder_config, version):
        """Without TFDS's "Using custom data configuration" warning: every config of ours is
        made on the fly (its name encodes the resolution), none is declared in BUILDER_CONFIGS."""
        with _dropping_absl_warning("Using custom data configuration"):
            return super()._create_builder_config(builder_config, version=version)

    def is_prepared(self) -> bool:
        """Without TFDS's "Variant folder ... has no dataset_info.json" for an unbuilt folder."""
        return (self.data_path / "dataset_info.json").is_file() and super().is_prepared()

    def _log_download_bytes(self) -> None:
        """Silent: TFDS would print "Downloading and preparing dataset Unknown size", but nothing
        is downloaded; ``prepare`` announces the build."""

    def _log_download_done(self) -> None:
        """Silent: ``prepare`` announces the build summary."""

    def _image_size(self) -> int:
        raise NotImplementedError

    def _extra_features(self) -> dict[str, Any]:
        return {}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(self.__doc__ or "").strip().splitlines()[0],
            features=_features(self._image_size(), self._extra_features()),
            # Dataset order = generation order, so records.npz lines up with source[i].
            disable_shuffling=True,
        )

    def _write_json(self, name: str, payload: dict[str, Any]) -> None:
        (self.data_path / name).write_text(json.dumps(payload, indent=1))

    def _write_records(self, rows: list[dict[str, Any]], label_note: str = "") -> None:
        """Metadata without pixels, in dataset order (see `pipeline.Records`)."""
        arrays = {
            "ids": np.array([r["id"] for r in rows], dtype=str),
            "labels": np.array([r["label"] for r in rows], dtype=np.int32),
            "grades": np.array([r["grade"] for r in rows], dtype=np.int32),
            "sessions": np.array([r["session"] for r in rows], dtype=str),
            "days_to_diagnosis": np.array([r["days_to_diagnosis"] for r in rows], np.float32),
        }
        if "cervix" in rows[0]:
            arrays["truth_cervix"] = np.stack([r["cervix"] for r in rows]).astype(np.float32)
            arrays["truth_lesion"] = np.stack([r["lesion"] for r in rows]).astype(np.uint8)
        if "region" in rows[0]:
            arrays["truth_region"] = np.stack([r["region"] for r in rows]).astype(np.float32)
            status = np.array([r["region_status"] for r in rows], dtype=str)
            arrays["region_status"] = status
            arrays["region_usable"] = status != "unclosable"
            arrays["swede_scores"] = np.array([r["swede_score"] for r in rows], np.int32)
        if label_note:
            arrays["label_note"] = np.array(label_note)
        with (self.data_path / RECORDS_FILE).open("wb") as f:
            np.savez(f, **arrays)


class _PhotoBuilder(Builder, skip_registration=True):
    """A builder of real photographs listed by `_scan` (atlas, hospital folder, annocerv)."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass the data folder with --manual_dir (see the docstring)."

    def _image_size(self) -> int:
        return self.builder_config.image_size

    def _scan(self, root: Path) -> _Scan:
        raise NotImplementedError

    def _source_name(self, root: Path) -> str:
        return str(root)

    def _read(self, candidate: Candidate) -> Decoded:
        cfg = self.builder_config
        return read_image(
            candidate.path, image_size=cfg.image_size, patch_size=cfg.patch_size,
            resize=cfg.resize,
        )

    def _read_compressed(self, candidate: Candidate) -> _Compressed:
        return compress_image(self._read(candidate).pixels, self.builder_config.image_size)

    def _annotate(self, candidate: Candidate, decoded: Decoded) -> dict[str, Any]:
        """Per-image fields beyond the labels, read in the validation pass (annocerv: the mask's
        region); an `ImageError` skips the image with its problem."""
        return {}

    def _report_extra(self, kept: list[Candidate], rows: list[dict[str, Any]]) -> dict[str, Any]:
        """What this source adds to the build report."""
        return {}

    def _label_note(self) -> str:
        """What label 1 means, when it is not a histological CIN2+ (records and report)."""
        return ""

    def _split_generators(self, dl_manager):
        root = Path(dl_manager.manual_dir)
        scan = self._scan(root)

        def check(candidate: Candidate) -> tuple[Candidate, str | None, dict | None, str | None]:
            try:
                decoded = self._read(candidate)
                return candidate, decoded.conversion, self._annotate(candidate, decoded), None
            except ImageError as e:
                return candidate, None, None, e.problem

        kept: list[Candidate] = []
        annotations: list[dict[str, Any]] = []
        converted: list[dict[str, str]] = []
        for candidate, conversion, extra, problem in _ordered_map(check, scan.candidates):
            if problem is not None:
                scan.skip(candidate.source, problem)
                continue
            if conversion is not None:
                converted.append({"file": candidate.source, "conversion": conversion})
            kept.append(candidate)
            annotations.append(extra)
        if not kept:
            if not scan.skipped:
                raise DatasetError(
                    f"no images listed in {self._source_name(root)}: add one row per image "
                    "(the CSV has a header but no rows, or the folder is empty)"
                )
            first = scan.skipped[0]
            raise DatasetError(
                f"no usable images in {self._source_name(root)} ({len(scan.skipped)} skipped; "
                f"first: {first['file']}: {first['reason']})"
            )
        rows = [dataclasses.asdict(c) | a for c, a in zip(kept, annotations, strict=True)]
        extra = self._report_extra(kept, rows)
        if self._label_note():
            extra["label_note"] = self._label_note()
        report = _summarise(
            self.name, self.builder_config.name, self._source_name(root), rows, scan, converted,
            extra,
        )
        self._write_json(REPORT_FILE, report)
        return {SPLIT: self._generate_examples(kept, annotations)}

    def _generate_examples(self, kept: list[Candidate], annotations: list[dict[str, Any]]):
        rows = []
        for index, (candidate, extra, image) in enumerate(
            zip(kept, annotations, _ordered_map(self._read_compressed, kept), strict=True)
        ):
            row = {
                "id": candidate.id,
                "label": candidate.label,
                "grade": candidate.grade,
                "session": candidate.session,
                "days_to_diagnosis": np.float32(candidate.days_to_diagnosis),
                **extra,
            }
            rows.append(row)
            yield index, {"image": image, **row}
        self._write_records(rows, self._label_note())


# ----------------------------------------------------------------------------- CSV helper


def _read_csv(
    path: Path, required: tuple[str, ...], one_of: tuple[str, ...] = ()
) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV as (line number, {column: stripped value}); malformed CSV is fatal."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            if not any(header):
                raise DatasetError(f"{path}: empty CSV (no header row)")
            duplicated = sorted({h for h in header if header.count(h) > 1})
            if duplicated:
                raise DatasetError(f"{path}: duplicated column(s) {', '.join(duplicated)}")
            for column in required:
                if column not in header:
                    raise DatasetError(
                        f"{path}: missing required column '{column}' "
                        f"(columns: {', '.join(header)})"
                    )
            if one_of and not set(one_of) & set(header):
                raise DatasetError(
                    f"{path}: needs a column '{one_of[0]}' or '{one_of[1]}' "
                    f"(columns: {', '.join(header)})"
                )
            rows = []
            for row in reader:
                if not any(v.strip() for v in row):
                    continue
                if len(row) != len(header):
                    raise DatasetError(
                        f"{path}, line {reader.line_num}: {len(row)} fields but the header has "
                        f"{len(header)} (malformed CSV)"
                    )
                rows.append(
                    (reader.line_num, {h: v.strip() for h, v in zip(header, row, strict=True)})
                )
            return rows
    except FileNotFoundError:
        raise DatasetError(f"CSV not found: {path}") from None
    except (csv.Error, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: malformed CSV ({e})") from None


# ----------------------------------------------------------------------------- IARC atlas

_CASE_CSV_GLOB = "colposcopy_cases_*.csv"
_PRIMARY_STAGE = "after_acetic_acid"
_VARIANT_STAGES = (
    "after_acetic_acid_with_green_filter",
    "after_acetic_acid_with_higher_magnification",
)
_CIN = re.compile(r"\bcin\s*[-_ ]?\s*(iii|ii|i|[123])\b")
_ROMAN = {"i": 1, "ii": 2, "iii": 3, "1": 1, "2": 2, "3": 3}
_INVASIVE = re.compile(r"invasive|carcinoma|cancer")
_NEGATIVE = re.compile(r"\bno cin\b|\bnormal\b|cervicitis|\bnegative\b|\bnilm\b|\bbenign\b")


def parse_histopathology(text: str) -> tuple[int, int] | None:
    """(label, grade) from a histopathology diagnosis, or None when the text is not understood.

    Grade: invasive/carcinoma/cancer -> 4; else the worst "CIN n" mentioned (Arabic or Roman
    numerals; "HSIL-CIN3; LSIL-CIN1 ..." -> 3; VIN/VAIN do not count); else no CIN/normal/
    cervicitis/negative/NILM/benign -> 0; else HSIL -> (1, unknown), LSIL -> (0, unknown).
    Label = 1 for CIN2 or worse (high grade), as in the paper.
    """
    lower = text.lower()
    if _INVASIVE.search(lower):
        return 1, 4
    grades = [_ROMAN[m] for m in _CIN.findall(lower)]
    if grades:
        grade = max(grades)
        return int(grade >= 2), grade
    if _NEGATIVE.search(lower):
        return 0, 0
    if "hsil" in lower:
        return 1, -1
    if "lsil" in lower:
        return 0, -1
    return None


class IarcColposcopyAtlas(_PhotoBuilder):
    """IARC Atlas of Colposcopy cases: photographs after acetic acid, labelled CIN2+ or not.

    manual_dir layout (as /work/shared/data/iarc-colposcopy-atlas): `colposcopy_cases_*.csv`
    (columns `case_id`, `histopathology_diagnosis`, ...) and `images_*/case_<ID>/<n>_<Stage>.jpg`.
    Label and grade come from `histopathology_diagnosis` (`parse_histopathology`); the session is
    the case. By default only stage "After_acetic_acid" is used (the paper's VIA images);
    `include_variants` adds its green-filter and higher-magnification shots. Other stages (saline,
    Lugol's iodine, ...) are a different modality: they are counted under "excluded", not skipped.
    """

    def _scan(self, root: Path) -> _Scan:
        scan = _Scan()
        csv_paths = sorted(root.glob(_CASE_CSV_GLOB))
        if not csv_paths:
            raise DatasetError(f"{root}: no {_CASE_CSV_GLOB} found (is this the atlas folder?)")
        cases: dict[str, tuple[int, int, str]] = {}
        for csv_path in csv_paths:
            for line, row in _read_csv(csv_path, ("case_id", "histopathology_diagnosis")):
                where = f"{csv_path.name}:{line}"
                case, text = row["case_id"], row["histopathology_diagnosis"]
                parsed = parse_histopathology(text)
                if not case:
                    scan.skip(where, "empty case_id")
                elif parsed is None:
                    scan.skip(where, f"case {case}: unrecognised histopathology_diagnosis {text!r}")
                elif case in cases and cases[case][:2] != parsed:
                    scan.skip(where, f"case {case} listed again with a different diagnosis")
                else:
                    cases.setdefault(case, (*parsed, where))
        stages = {_PRIMARY_STAGE}
        if self.builder_config.include_variants:
            stages.update(_VARIANT_STAGES)
        folders = {}
        for folder in sorted(root.glob("images_*/case_*")):
            case = folder.name.removeprefix("case_")
            if not folder.is_dir():
                continue
            if case in folders:
                scan.skip(
                    folder.relative_to(root).as_posix(),
                    f"case {case} already read from {folders[case].relative_to(root).as_posix()}",
                )
                continue
            folders[case] = folder
        for case, (_, _, where) in cases.items():
            if case not in folders:
                scan.skip(where, f"case {case}: no images_*/case_{case} folder")
        without_images = []
        for case, folder in sorted(folders.items()):
            selected = 0
            for image in sorted(folder.iterdir(), key=_stage_order):
                if image.suffix.lower() not in _IMAGE_SUFFIXES:
                    continue
                source = image.relative_to(root).as_posix()
                stage = re.sub(r"^\d+_", "", image.stem).lower()
                if stage not in stages:
                    scan.excluded[re.sub(r"^\d+_", "", image.stem)] += 1
                    continue
                if case not in cases:
                    scan.skip(source, f"case {case} is not in any {_CASE_CSV_GLOB}")
                    continue
                label, grade, _ = cases[case]
                scan.candidates.append(
                    Candidate(image, source, f"{case}/{image.stem}", label, grade, case)
                )
                selected += 1
            if selected == 0 and case in cases:
                without_images.append(case)
        if without_images:
            scan.notes.append(
                f"{len(without_images)} case(s) without a selected image: "
                + ", ".join(without_images)
            )
        return scan


def _stage_order(path: Path) -> tuple[int, str]:
    """Examination order: '10_x' after '9_x'."""
    number = re.match(r"\d+", path.name)
    return (int(number.group()) if number else 1 << 30, path.name)


# ----------------------------------------------------------------------------- hospital folder


class CervixFolder(_PhotoBuilder):
    """A hospital export: a folder of images plus a labels CSV (one row per image).

    Columns (header row required, UTF-8; extra columns are ignored):
      image             required. Path of the image file relative to the folder (manual_dir).
      session           required. Patient visit / exam the image belongs to; train/val/test are
                        split by session so images of one exam never straddle splits.
      label             0 (normal or CIN1) / 1 (CIN2 or worse).      } at least one of the two;
      grade             0 normal, 1-3 CIN1-3, 4 invasive carcinoma.  } label = grade >= 2 when
                                                                      label is absent; if both are
                                                                      given they must agree.
      date              optional. Date the image was taken, ISO yyyy-mm-dd.
      diagnosis_date    optional. Date of the histological diagnosis, ISO yyyy-mm-dd;
                        days_to_diagnosis = diagnosis_date - date (NaN unless both are given).
      id                optional. Unique image id (default: the `image` path).
    Rows that cannot be used are skipped and listed with the reason in build_report.json: missing
    or unreadable file, path outside the folder, missing/invalid label or grade, label and grade
    that disagree, empty session, invalid date, and a duplicate id or image path (the first row
    wins, later ones are skipped). A missing required column or a malformed CSV stops the build.
    Images are decoded, converted to RGB and resized as described in `jaxcerv.data.images`.
    """

    def _source_name(self, root: Path) -> str:
        return f"{root} + {self.builder_config.csv}"

    def _scan(self, root: Path) -> _Scan:
        scan = _Scan()
        csv_path = Path(self.builder_config.csv)
        rows = _read_csv(csv_path, ("image", "session"), one_of=("label", "grade"))
        seen_ids: dict[str, int] = {}
        seen_paths: dict[Path, int] = {}
        root_resolved = root.resolve()
        for line, row in rows:
            where = f"{csv_path.name}:{line}"
            image = row["image"]
            try:
                candidate = _folder_candidate(root, root_resolved, row, f"{where} ({image})")
            except _RowError as e:
                scan.skip(f"{where} ({image})" if image else where, str(e))
                continue
            if candidate.id in seen_ids:
                scan.skip(
                    f"{where} ({image})",
                    f"duplicate id {candidate.id!r} (first at line {seen_ids[candidate.id]})",
                )
                continue
            real = candidate.path.resolve()
            if real in seen_paths:
                scan.skip(
                    f"{where} ({image})",
                    f"same image file as line {seen_paths[real]} (would leak across splits)",
                )
                continue
            seen_ids[candidate.id] = line
            seen_paths[real] = line
            scan.candidates.append(candidate)
        return scan


class _RowError(ValueError):
    """Why one CSV row cannot be used (a skip, not a failure)."""


def _file_in(root: Path, root_resolved: Path, relative: str, what: str = "image") -> Path:
    """`root / relative`, an existing file inside `root`; else a `_RowError` saying why."""
    if not relative:
        raise _RowError(f"empty {what} path")
    prefix = "" if what == "image" else f"{what} {relative}: "
    path = root / relative
    try:
        resolved = path.resolve()
        is_file = path.is_file()
        if is_file:
            os.stat(path)  # a symlink loop or an over-long name fails here, not at decode time
    except (RuntimeError, OSError) as e:  # RuntimeError: symlink loop (Path.resolve)
        reason = e.strerror if isinstance(e, OSError) else e
        raise _RowError(f"{prefix}unreadable path ({reason})") from None
    if Path(relative).is_absolute() or not resolved.is_relative_to(root_resolved):
        raise _RowError(f"{what} path {relative!r} is outside the folder {root}")
    if not is_file:
        raise _RowError(f"{prefix}file not found")
    return path


def _folder_candidate(
    root: Path, root_resolved: Path, row: dict[str, str], source: str
) -> Candidate:
    image = row["image"]
    path = _file_in(root, root_resolved, image)
    label_text, grade_text = row.get("label", ""), row.get("grade", "")
    label = grade = None
    if label_text:
        if label_text not in ("0", "1"):
            raise _RowError(f"label {label_text!r} is not 0 or 1")
        label = int(label_text)
    if grade_text:
        if grade_text not in ("0", "1", "2", "3", "4"):
            raise _RowError(f"grade {grade_text!r} is not one of 0-4")
        grade = int(grade_text)
    if label is None and grade is None:
        raise _RowError("no label and no grade")
    if label is not None and grade is not None and label != int(grade >= 2):
        raise _RowError(f"label {label} disagrees with grade {grade} (label 1 means grade >= 2)")
    if label is None:
        label = int(grade >= 2)
    session = row["session"]
    if not session:
        raise _RowError("empty session")
    days = float("nan")
    date_text, diagnosis_text = row.get("date", ""), row.get("diagnosis_date", "")
    dates = {}
    for column, text in (("date", date_text), ("diagnosis_date", diagnosis_text)):
        if text:
            try:
                dates[column] = datetime.date.fromisoformat(text)
            except ValueError:
                raise _RowError(f"{column} {text!r} is not an ISO date (yyyy-mm-dd)") from None
    if len(dates) == 2:
        days = float((dates["diagnosis_date"] - dates["date"]).days)
    return Candidate(
        path=path,
        source=source,
        id=row.get("id") or Path(image).as_posix(),
        label=label,
        grade=-1 if grade is None else grade,
        session=session,
        days_to_diagnosis=days,
    )


# ----------------------------------------------------------------------------- outlined folder


@dataclasses.dataclass(frozen=True)
class OutlinedCandidate(Candidate):
    """An annocerv image: its mask, the case's Swede score and the photograph's true aspect."""

    mask: Path = Path()
    mask_source: str = ""
    swede_score: int = -1
    aspect: tuple[int, int] | None = None


def label_note(threshold: int) -> str:
    """What label 1 means for annocerv: carried by records.npz and the build report."""
    return f"Swede score >= {threshold}: an expert's visual score, not histology"


class Annocerv(_PhotoBuilder):
    """AnnoCerv's layout: photographs with an examiner's acetowhite outline and the case's Swede
    score (as /work/shared/data/annocerv-384; any folder in this layout works).

    metadata.csv (header row, UTF-8; extra columns such as acetowhite_pixels are ignored):
      image              required. Image path relative to the folder (manual_dir).
      mask               required. Its outline mask: same size, 0/255, strokes = 255 (a
                         mask with no stroke says "no acetowhite area").
      case_id            required. The patient record: the session train/val/test split by.
      swede_score        required. The case's Swede score, a whole number 0-10; every image of a
                         case must carry the same one.
      image_id           optional. Unique image id (default: the `image` path).
      original_width,    optional. The photograph's true size when the stored pixels were
      original_height    squashed (AnnoCerv's 3:2 originals at 384 x 384): with restore_aspect,
                         image and mask are placed at that aspect (`images.place`).
    Label = swede_score >= swede_threshold (default 5, the usual threshold to refer or biopsy):
    the colposcopist's visual judgement, not histology (`label_note`); grade is unknown (-1).
    The outline is closed into a region (`regions.outline_to_region`) and stored per model patch
    as the share of the patch inside it (`images.region_fractions`, the image's own geometry):
    records.npz gets truth_region, region_status, region_usable, swede_scores and label_note.
    An unclosable outline keeps its image (for classification) with region_usable False.
    Skipped with the reason, like any bad row: missing or unreadable image or mask, a mask not
    0/255 or of another size than its image, a swede_score that is not a whole number in 0-10, a
    bad original_width/height, empty case_id, duplicate id or image, and every image of a case
    whose images disagree on the score. Missing columns or an empty CSV stop the build.
    """

    _REQUIRED = ("image", "mask", "case_id", "swede_score")

    def _source_name(self, root: Path) -> str:
        return str(Path(self.builder_config.csv))

    def _label_note(self) -> str:
        return label_note(self.builder_config.swede_threshold)

    def _extra_features(self) -> dict[str, Any]:
        grid = self.builder_config.image_size // self.builder_config.patch_size
        return {
            "region": tfds.features.Tensor(shape=(grid, grid), dtype=np.float32),
            "region_status": tfds.features.Text(),
            "region_reason": tfds.features.Text(),
            "swede_score": tfds.features.Scalar(dtype=np.int32),
        }

    def _read(self, candidate: Candidate) -> Decoded:
        cfg = self.builder_config
        aspect = getattr(candidate, "aspect", None) if cfg.restore_aspect else None
        return read_image(
            candidate.path, image_size=cfg.image_size, patch_size=cfg.patch_size,
            resize=cfg.resize, aspect=aspect,
        )

    def _annotate(self, candidate: OutlinedCandidate, decoded: Decoded) -> dict[str, Any]:
        cfg = self.builder_config
        try:
            strokes = read_mask(candidate.mask, size=(decoded.width, decoded.height))
        except ImageError as e:
            raise ImageError(e.path, f"{candidate.mask_source}: {e.problem}") from None
        region = regions.outline_to_region(strokes)
        fractions = region_fractions(
            region.mask, grid=cfg.image_size // cfg.patch_size, patch_size=cfg.patch_size,
            resize=cfg.resize, aspect=candidate.aspect if cfg.restore_aspect else None,
        )
        return {
            "region": fractions,
            "region_status": region.status,
            "region_reason": region.reason,
            "swede_score": np.int32(candidate.swede_score),
        }

    def _report_extra(self, kept: list[Candidate], rows: list[dict[str, Any]]) -> dict[str, Any]:
        status = collections.Counter(r["region_status"] for r in rows)
        scores = collections.Counter(int(r["swede_score"]) for r in rows)
        return {
            "swede_threshold": self.builder_config.swede_threshold,
            "swede_scores": {str(k): scores[k] for k in sorted(scores)},
            "masks": {k: status[k] for k in regions.STATUSES},
            "unclosable": [
                {"file": c.mask_source, "reason": r["region_reason"]}
                for c, r in zip(kept, rows, strict=True) if r["region_status"] == "unclosable"
            ],
        }

    def _scan(self, root: Path) -> _Scan:
        scan = _Scan()
        cfg = self.builder_config
        csv_path = Path(cfg.csv)
        rows = _read_csv(csv_path, self._REQUIRED)
        header = set(rows[0][1]) if rows else set()
        aspect_columns = {"original_width", "original_height"} <= header
        if cfg.restore_aspect and rows and not aspect_columns:
            scan.notes.append(
                "no original_width/original_height columns: the stored aspect is the photograph's"
            )
        seen_ids: dict[str, int] = {}
        seen_paths: dict[Path, int] = {}
        root_resolved = root.resolve()
        candidates: list[tuple[int, OutlinedCandidate]] = []
        for line, row in rows:
            where = f"{csv_path.name}:{line}"
            image = row["image"]
            source = f"{where} ({image})" if image else where
            try:
                candidate = _outlined_candidate(
                    root, root_resolved, row, source, cfg.swede_threshold,
                    aspect_columns and cfg.restore_aspect,
                )
            except _RowError as e:
                scan.skip(source, str(e))
                continue
            if candidate.id in seen_ids:
                first = seen_ids[candidate.id]
                scan.skip(source, f"duplicate id {candidate.id!r} (first at line {first})")
                continue
            real = candidate.path.resolve()
            if real in seen_paths:
                scan.skip(source, f"same image file as line {seen_paths[real]} (would leak across "
                                  "splits)")
                continue
            seen_ids[candidate.id] = line
            seen_paths[real] = line
            candidates.append((line, candidate))
        scores: dict[str, dict[int, list[int]]] = collections.defaultdict(dict)
        for line, c in candidates:
            scores[c.session].setdefault(c.swede_score, []).append(line)
        for _, c in candidates:
            if len(scores[c.session]) > 1:
                listed = "; ".join(
                    f"{score} at line(s) {', '.join(map(str, lines))}"
                    for score, lines in sorted(scores[c.session].items())
                )
                scan.skip(
                    c.source, f"case {c.session}: its images disagree on swede_score ({listed})"
                )
            else:
                scan.candidates.append(c)
        return scan


def _outlined_candidate(
    root: Path,
    root_resolved: Path,
    row: dict[str, str],
    source: str,
    threshold: int,
    with_aspect: bool,
) -> OutlinedCandidate:
    path = _file_in(root, root_resolved, row["image"])
    mask = _file_in(root, root_resolved, row["mask"], "mask")
    case = row["case_id"]
    if not case:
        raise _RowError("empty case_id")
    score = _swede_score(row["swede_score"])
    aspect = None
    if with_aspect:
        sides = []
        for column in ("original_width", "original_height"):
            text = row[column]
            if not text.isdigit() or int(text) < 1:
                raise _RowError(f"{column} {text!r} is not a positive whole number of px")
            sides.append(int(text))
        aspect = (sides[0], sides[1])
    return OutlinedCandidate(
        path=path, source=source, id=row.get("image_id") or Path(row["image"]).as_posix(),
        label=int(score >= threshold), grade=-1, session=case, mask=mask,
        mask_source=row["mask"], swede_score=score, aspect=aspect,
    )


def _swede_score(text: str) -> int:
    """A Swede score: a whole number 0-10 (the sum of five 0-2 items); "7" and "7.0" read."""
    try:
        value = float(text)
    except ValueError:
        raise _RowError(f"swede_score {text!r} is not a number") from None
    if not math.isfinite(value) or not 0 <= value <= 10:
        raise _RowError(f"swede_score {text!r} is outside 0-10")
    if value != int(value):
        raise _RowError(f"swede_score {text!r} is not a whole number (Swede scores are 0-10)")
    return int(value)


# ----------------------------------------------------------------------------- synthetic


class SyntheticCervix(Builder):
    """Synthetic colposcopy-like images with known cervix position and lesion masks.

    Wraps `jaxcerv.data.synthetic.generate` so synthetic data takes the same path (TFDS ->
    grain) as real data; adds the ground truth `cervix` (5,) and `lesion` (grid, grid).
    """

    def _image_size(self) -> int:
        cfg = self.builder_config
        return cfg.grid_size * cfg.patch_size

    def _extra_features(self) -> dict[str, Any]:
        grid = self.builder_config.grid_size
        return {
            "cervix": tfds.features.Tensor(shape=(5,), dtype=np.float32),
            "lesion": tfds.features.Tensor(shape=(grid, grid), dtype=np.uint8),
        }

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        if cfg.num_images < 1:
            raise DatasetError(f"synthetic_cervix: num_images must be >= 1, got {cfg.num_images}")
        return {SPLIT: self._generate_examples()}

    def _generate_examples(self):
        from jaxcerv.data import synthetic  # the generator is only needed to build

        cfg = self.builder_config
        size = self._image_size()
        knobs = synthetic.Knobs(**dict(cfg.knobs))

        def make(index: int) -> tuple[dict[str, Any], _Compressed]:
            example = synthetic.generate(
                index, seed=cfg.seed, grid=cfg.grid_size, patch=cfg.patch_size, knobs=knobs
            )
            return example, compress_image(np.asarray(example["image"]), size)

        rows = []
        for index, (example, image) in enumerate(_ordered_map(make, range(cfg.num_images))):
            row = {
                "id": str(example["id"]),
                "label": int(example["label"]),
                "grade": int(example["grade"]),
                "session": str(example["session"]),
                "days_to_diagnosis": np.float32(example["days_to_diagnosis"]),
                "cervix": np.asarray(example["cervix"], np.float32),
                "lesion": np.asarray(example["lesion"], np.uint8),
            }
            rows.append(row)
            yield index, {"image": image, **row}
        self._write_records(rows)
        source = f"jaxcerv.data.synthetic seed {cfg.seed}"
        if cfg.knobs:
            source += ", knobs " + ", ".join(f"{k}={v}" for k, v in cfg.knobs)
        report = _summarise(self.name, cfg.name, source, rows, _Scan(), [])
        self._write_json(REPORT_FILE, report)


# ----------------------------------------------------------------------------- entry points


def make_builder(
    name: str,
    *,
    data_dir: str | os.PathLike[str],
    grid_size: int,
    patch_size: int,
    resize: str = "stretch",
    manual_dir: str | os.PathLike[str] = "",
    csv: str | os.PathLike[str] = "",
    include_variants: bool = False,
    num_images: int = 0,
    synthetic_seed: int = 0,
    synthetic: Any = None,
    swede_threshold: int = 5,
    restore_aspect: bool = True,
) -> Builder:
    """The builder of dataset `name` at grid_size * patch_size px (nothing is built yet).

    `synthetic`: the difficulty knobs of synthetic_cervix (a mapping of `synthetic.Knobs` fields,
    e.g. `config.data.synthetic`); None or {} draws the demo's images. `swede_threshold`,
    `restore_aspect`: annocerv's label (swede_score >= it) and aspect (see `Annocerv`)."""
    if grid_size < 1 or patch_size < 1:
        raise DatasetError(f"grid_size and patch_size must be >= 1, got {grid_size}, {patch_size}")
    if resize not in RESIZE_POLICIES:
        raise DatasetError(f"resize must be one of {RESIZE_POLICIES}, got {resize!r}")
    size = grid_size * patch_size
    base = _image_config_name(size, patch_size, resize)
    if name == "synthetic_cervix":
        knobs = _synthetic_knobs(synthetic)
        config: tfds.core.BuilderConfig = SyntheticConfig(
            name=f"s{size}_g{grid_size}_seed{synthetic_seed}_n{num_images}" + _knobs_suffix(knobs),
            grid_size=grid_size, patch_size=patch_size, seed=synthetic_seed,
            num_images=num_images, knobs=knobs,
        )
        cls: type[Builder] = SyntheticCervix
    elif name == "iarc_colposcopy_atlas":
        config = AtlasConfig(
            name=base + ("_variants" if include_variants else ""),
            image_size=size, patch_size=patch_size, resize=resize,
            include_variants=include_variants,
        )
        cls = IarcColposcopyAtlas
    elif name == "cervix_folder":
        if not manual_dir and not csv:
            raise DatasetError("cervix_folder needs manual_dir (the image folder) and/or a csv")
        csv_path = Path(csv) if csv else Path(manual_dir) / "labels.csv"
        csv_path = csv_path.resolve()
        config = FolderConfig(
            name=f"{base}_csv{csv_fingerprint(csv_path)}",
            image_size=size, patch_size=patch_size, resize=resize, csv=str(csv_path),
        )
        cls = CervixFolder
    elif name == "annocerv":
        if not manual_dir and not csv:
            raise DatasetError("annocerv needs manual_dir (the folder with metadata.csv)")
        if isinstance(swede_threshold, bool) or not isinstance(swede_threshold, int) or \
                not 1 <= swede_threshold <= 10:
            raise DatasetError(f"swede_threshold must be a whole number in 1-10, got "
                               f"{swede_threshold!r}")
        csv_path = (Path(csv) if csv else Path(manual_dir) / "metadata.csv").resolve()
        config = OutlineConfig(
            name=f"{base}_sw{swede_threshold}{'_aspect' if restore_aspect else ''}"
                 f"_csv{csv_fingerprint(csv_path)}",
            image_size=size, patch_size=patch_size, resize=resize, csv=str(csv_path),
            swede_threshold=swede_threshold, restore_aspect=bool(restore_aspect),
        )
        cls = Annocerv
    else:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return cls(data_dir=os.fspath(data_dir), config=config, file_format="array_record")


def prepare(
    builder: Builder,
    manual_dir: str | os.PathLike[str] = "",
    *,
    announce: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Build `builder`'s dataset unless it exists; returns its build report.

    A file lock in data_dir serialises builders of the same dataset, so several processes (one
    per host or per test worker) may call this at once: one builds, the others wait and reuse.
    After a build by another process, open a fresh builder before reading (TFDS caches its info).
    `announce` gets a progress line before a build and the summary after it.
    """
    root = Path(builder.data_dir_root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{builder.name}-{builder.builder_config.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not builder.is_prepared():
            download_config = None
            if isinstance(builder, _PhotoBuilder):
                if not manual_dir or not Path(manual_dir).is_dir():
                    raise DatasetError(
                        f"{builder.name}: manual_dir {os.fspath(manual_dir)!r} is not a folder"
                    )
                download_config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
            if announce:
                announce(
                    f"building {builder.name}/{builder.builder_config.name} in "
                    f"{builder.data_dir} (first use)"
                )
            # TFDS's bars redraw with carriage returns: one bar per line in a log file.
            tfds.display_progress_bar(sys.stderr.isatty())
            builder.download_and_prepare(download_config=download_config)
            if announce:
                announce(format_summary(read_report(builder)))
    return read_report(builder)


def read_report(builder: Builder) -> dict[str, Any]:
    return json.loads((builder.data_path / REPORT_FILE).read_text())
