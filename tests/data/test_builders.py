"""TFDS builders: built by the CLI in a subprocess without TensorFlow, then read back here.

One subprocess builds three datasets (a hospital folder full of bad inputs, synthetic data and,
when present, the IARC atlas) so the TFDS import is paid once; each test then checks one case
against an oracle computed here (file listings, the CSVs, synthetic.generate, hand-made pixels).
"""

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import png_header
from PIL import Image

from jaxcerv.cli import data as cli
from jaxcerv.data import builders, pipeline, regions, synthetic

REPO = Path(__file__).parents[2]
ATLAS = Path(__file__).parents[3] / "shared" / "data" / "iarc-colposcopy-atlas"
ANNOCERV = Path(__file__).parents[3] / "shared" / "data" / "annocerv-384"
GRID, PATCH = 4, 8
S = GRID * PATCH
ATLAS_GRID = 2  # the atlas JPEGs are 800x600: keep its build small

_SCRIPT = r"""
import contextlib, importlib.util, io, json, sys
assert importlib.util.find_spec("tensorflow") is None, "tensorflow is installed"
try:
    import tensorflow  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("tensorflow was importable")
from jaxcerv.cli import data as cli
out = {}
for job in json.loads(sys.argv[1]):
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = cli.main(["jaxcerv data", *job["argv"]])
    out[job["key"]] = {"rc": rc, "stdout": stdout.getvalue()}
out["tensorflow_loaded"] = "tensorflow" in sys.modules
print("RESULT " + json.dumps(out))
"""

# The hospital folder: (image, label, grade, session, date, diagnosis_date, id) and what happens.
ROWS = [
    ("good1.png", "1", "3", "s1", "2020-01-01", "2020-01-31", "", "kept"),
    ("sub/good2.jpg", "0", "", "s1", "", "", "g2", "kept"),
    ("gray.png", "0", "1", "s2", "", "", "", "kept"),
    ("rgba.png", "1", "", "s2", "", "", "", "kept"),
    ("pal.png", "", "2", "s3", "", "", "", "kept"),
    ("deep.png", "0", "0", "s3", "", "", "", "kept"),
    ("trunc.jpg", "1", "", "s4", "", "", "", "truncated"),
    ("tiny.png", "0", "", "s4", "", "", "", "smaller than one patch"),
    ("bomb.png", "1", "", "s4", "", "", "", "decompression bomb"),
    ("absent.png", "1", "", "s5", "", "", "", "file not found"),
    ("good3.png", "2", "", "s5", "", "", "", "label '2' is not 0 or 1"),
    ("good3.png", "", "", "s5", "", "", "", "no label and no grade"),
    ("good3.png", "", "7", "s5", "", "", "", "grade '7' is not one of 0-4"),
    ("good3.png", "0", "3", "s5", "", "", "", "disagrees"),
    ("good3.png", "0", "", "s5", "", "", "good1.png", "duplicate id 'good1.png'"),
    ("good1.png", "1", "", "s6", "", "", "other", "same image file as line 2"),
    ("good3.png", "1", "", "s6", "2020-13-01", "", "", "not an ISO date"),
    ("good3.png", "1", "", "", "", "", "", "empty session"),
    ("../outside.png", "1", "", "s6", "", "", "", "outside the folder"),
    ("loop.png", "1", "", "s6", "", "", "", "unreadable path"),  # a symlink to itself
    ("x" * 300 + ".png", "1", "", "s6", "", "", "", "unreadable path (File name too long)"),
    ("good3.png", "0", "", "s7", "", "", "g3", "kept"),
]
# Stored colour of each kept image (solid images; JPEG within a few levels).
COLOURS = {
    "good1.png": (10, 20, 30),
    "g2": (200, 100, 50),
    "gray.png": (100, 100, 100),
    "rgba.png": (100, 50, 25),  # (200, 100, 50) at alpha 128 on black
    "pal.png": (12, 34, 56),
    "deep.png": (255, 255, 255),  # 16-bit 65535
    "g3": (5, 6, 7),
}


def _make_folder(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    Image.new("RGB", (40, 24), (10, 20, 30)).save(root / "good1.png")
    Image.new("RGB", (48, 40), (200, 100, 50)).save(root / "sub" / "good2.jpg", quality=95)
    Image.new("L", (24, 24), 100).save(root / "gray.png")
    Image.new("RGBA", (24, 24), (200, 100, 50, 128)).save(root / "rgba.png")
    pal = Image.new("P", (24, 24), 1)
    pal.putpalette([0, 0, 0, 12, 34, 56] + [0] * 762)
    pal.save(root / "pal.png")
    Image.fromarray(np.full((24, 24), 65535, np.uint16)).save(root / "deep.png")
    Image.new("RGB", (24, 24), (5, 6, 7)).save(root / "good3.png")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "full.jpg", quality=90)
    data = (root / "full.jpg").read_bytes()
    (root / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (root / "full.jpg").unlink()
    Image.new("RGB", (5, 5), (1, 1, 1)).save(root / "tiny.png")
    (root / "bomb.png").write_bytes(png_header(100_000, 100_000))
    Image.new("RGB", (24, 24)).save(root.parent / "outside.png")
    (root / "loop.png").symlink_to("loop.png")
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "label", "grade", "session", "date", "diagnosis_date", "id",
                         "comment"])
        for row in ROWS:
            writer.writerow([*row[:7], "ignored, with a comma"])
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Run the build CLI for every dataset in one TensorFlow-free subprocess."""
    tmp = tmp_path_factory.mktemp("builders")
    folder = _make_folder(tmp / "hospital")
    data_dir = tmp / "tfds"
    common = ["--data_dir", str(data_dir), "--grid_size", str(GRID), "--patch_size", str(PATCH)]
    jobs = [
        {"key": "folder", "argv": ["build", "cervix_folder", "--manual_dir", str(folder), *common]},
        {"key": "synthetic", "argv": ["build", "synthetic_cervix", *common, "--num_images", "10",
                                      "--synthetic_seed", "3"]},
    ]
    outlined = _make_outlined(tmp / "annocerv")
    jobs += [
        {"key": "annocerv", "argv": ["build", "annocerv", "--manual_dir", str(outlined), *common,
                                     "--resize", "pad"]},
        {"key": "annocerv_square", "argv": ["build", "annocerv", "--manual_dir", str(outlined),
                                            *common, "--resize", "pad", "--norestore_aspect",
                                            "--swede_threshold", "7"]},
    ]
    if ATLAS.is_dir():
        jobs.append({"key": "atlas", "argv": [
            "build", "iarc_colposcopy_atlas", "--manual_dir", str(ATLAS), "--data_dir",
            str(data_dir), "--grid_size", str(ATLAS_GRID), "--patch_size", str(PATCH)]})
    if ANNOCERV.is_dir():
        jobs.append({"key": "annocerv_real", "argv": [
            "build", "annocerv", "--manual_dir", str(ANNOCERV), "--data_dir", str(data_dir),
            "--grid_size", "2", "--patch_size", str(PATCH), "--resize", "pad"]})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(jobs)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result.pop("tensorflow_loaded") is False
    for key, job in result.items():
        assert job["rc"] == 0, (key, proc.stderr[-3000:])
    return {"folder_dir": folder, "outlined_dir": outlined, "data_dir": data_dir, "cli": result}


def _open(name: str, data_dir: Path, **kwargs):
    builder = builders.make_builder(name, data_dir=data_dir, **kwargs)
    assert builder.is_prepared()
    source = builder.as_data_source(split=builders.SPLIT)
    records = pipeline.read_records(builder.data_path / builders.RECORDS_FILE)
    return source, records, builders.read_report(builder)


@pytest.fixture(scope="module")
def folder(built):
    return _open(
        "cervix_folder", built["data_dir"], grid_size=GRID, patch_size=PATCH,
        manual_dir=built["folder_dir"],
    )


def _skip_reason(report, image: str) -> str:
    reasons = [s["reason"] for s in report["skipped"] if f"({image})" in s["file"]]
    assert reasons, f"{image} not skipped"
    return " | ".join(reasons)


# ------------------------------------------------------------------------- hospital folder


def test_folder_keeps_exactly_the_good_rows_in_csv_order(folder):
    source, records, report = folder
    expected = [row[6] or row[0] for row in ROWS if row[7] == "kept"]
    assert list(records.ids) == expected
    assert [source[i]["id"].decode() for i in range(len(source))] == expected
    assert report["num_images"] == len(expected)
    assert len(report["skipped"]) == sum(row[7] != "kept" for row in ROWS)


def test_folder_labels_grades_sessions_and_days(folder):
    _, records, report = folder
    kept = [row for row in ROWS if row[7] == "kept"]
    labels = [int(r[1]) if r[1] else int(int(r[2]) >= 2) for r in kept]
    grades = [int(r[2]) if r[2] else -1 for r in kept]
    np.testing.assert_array_equal(records.labels, labels)
    np.testing.assert_array_equal(records.grades, grades)
    assert list(records.sessions) == [r[3] for r in kept]
    assert records.days_to_diagnosis[0] == 30  # 2020-01-01 -> 2020-01-31
    assert np.isnan(records.days_to_diagnosis[1:]).all()
    assert report["labels"] == {"0": labels.count(0), "1": labels.count(1)}
    assert report["num_sessions"] == len({r[3] for r in kept})


def test_folder_pixels_are_converted_and_resized(folder):
    source, records, _ = folder
    for i, image_id in enumerate(records.ids):
        image = source[i]["image"]
        assert image.shape == (S, S, 3) and image.dtype == np.uint8
        tolerance = 3 if image_id == "g2" else 1  # g2 is a JPEG
        np.testing.assert_allclose(
            image.reshape(-1, 3), [COLOURS[image_id]] * S * S, atol=tolerance, err_msg=image_id
        )


@pytest.mark.parametrize(
    "image, kind", [("gray.png", "L"), ("rgba.png", "RGBA"), ("pal.png", "P"), ("deep.png", "I;16")]
)
def test_converted_images_are_counted(folder, image, kind):
    _, _, report = folder
    conversions = [c["conversion"] for c in report["converted"] if f"({image})" in c["file"]]
    assert len(conversions) == 1 and conversions[0].startswith(kind + " -> RGB")
    assert len(report["converted"]) == 4


@pytest.mark.parametrize("row", [r for r in ROWS if r[7] != "kept"], ids=lambda r: r[7][:24])
def test_bad_row_is_skipped_with_its_reason(folder, row):
    _, records, report = folder
    line = ROWS.index(row) + 2  # header is line 1
    entries = [s for s in report["skipped"] if s["file"].startswith(f"labels.csv:{line} ")]
    assert len(entries) == 1, report["skipped"]
    assert row[0] in entries[0]["file"]
    assert row[7] in entries[0]["reason"]


def test_truncated_jpeg_is_skipped(folder):
    assert "truncated" in _skip_reason(folder[2], "trunc.jpg")


def test_bomb_is_skipped(folder):
    assert "decompression bomb" in _skip_reason(folder[2], "bomb.png")


def test_image_smaller_than_a_patch_is_skipped(folder):
    assert f"smaller than one patch ({PATCH} px)" in _skip_reason(folder[2], "tiny.png")


def test_missing_file_row_is_skipped(folder):
    assert "file not found" in _skip_reason(folder[2], "absent.png")


def test_duplicate_id_keeps_the_first(folder):
    _, records, report = folder
    assert list(records.ids).count("good1.png") == 1
    assert records.labels[list(records.ids).index("good1.png")] == 1  # the first row's label
    reasons = [s["reason"] for s in report["skipped"]]
    # Listed again in the other class: the conflict is named, with the label kept.
    assert "duplicate id 'good1.png' (first at line 2); label conflict: label 0 here, 1 at line " \
        "2, which is kept: fix the CSV" in reasons
    # The same file again in the same class: a plain duplicate, no conflict claimed.
    assert "same image file as line 2 (would leak across splits)" in reasons


def test_report_json_and_summary_list_every_skip(built, folder):
    _, _, report = folder
    summary = built["cli"]["folder"]["stdout"]
    assert f"{report['num_images']} images" in summary
    assert f"skipped: {len(report['skipped'])}" in summary
    for entry in report["skipped"]:
        assert f"{entry['file']}: {entry['reason']}" in summary
    assert "converted: 4" in summary


def test_records_need_no_image_decoding(folder, built):
    """records.npz sits beside the array_record files and lines up with them."""
    source, records, _ = folder
    builder = builders.make_builder(
        "cervix_folder", data_dir=built["data_dir"], grid_size=GRID, patch_size=PATCH,
        manual_dir=built["folder_dir"],
    )
    files = {p.name for p in builder.data_path.iterdir()}
    assert {builders.RECORDS_FILE, builders.REPORT_FILE} <= files
    assert len(records) == len(source)


# ------------------------------------------------------------------------- fatal errors


def _cli(capsys, *argv) -> tuple[int, str]:
    rc = cli.main(["jaxcerv data", "build", *argv])
    return rc, capsys.readouterr().err.strip()


def _csv_folder(tmp_path, header: str, *lines: str) -> Path:
    Image.new("RGB", (24, 24), (1, 2, 3)).save(tmp_path / "a.png")
    (tmp_path / "labels.csv").write_text("\n".join([header, *lines]) + "\n")
    return tmp_path


def test_missing_required_column_is_fatal_and_named(tmp_path, capsys):
    folder = _csv_folder(tmp_path, "image,label", "a.png,1")
    rc, err = _cli(capsys, "cervix_folder", "--manual_dir", str(folder), "--data_dir",
                   str(tmp_path / "tfds"), "--grid_size", "2", "--patch_size", "8")
    assert rc == 1 and len(err.splitlines()) == 1
    assert "labels.csv" in err and "'session'" in err


def test_missing_label_and_grade_columns_is_fatal(tmp_path, capsys):
    folder = _csv_folder(tmp_path, "image,session", "a.png,s")
    rc, err = _cli(capsys, "cervix_folder", "--manual_dir", str(folder), "--data_dir",
                   str(tmp_path / "tfds"), "--grid_size", "2", "--patch_size", "8")
    assert rc == 1 and "'label' or 'grade'" in err


def test_malformed_csv_is_fatal_with_line_number(tmp_path, capsys):
    folder = _csv_folder(tmp_path, "image,label,session", "a.png,1,s", "a.png,1,s,extra")
    rc, err = _cli(capsys, "cervix_folder", "--manual_dir", str(folder), "--data_dir",
                   str(tmp_path / "tfds"), "--grid_size", "2", "--patch_size", "8")
    assert rc == 1 and "labels.csv, line 3" in err and "malformed" in err


def test_no_usable_image_is_fatal(tmp_path, capsys):
    folder = _csv_folder(tmp_path, "image,label,session", "gone.png,1,s")
    rc, err = _cli(capsys, "cervix_folder", "--manual_dir", str(folder), "--data_dir",
                   str(tmp_path / "tfds"), "--grid_size", "2", "--patch_size", "8")
    assert rc == 1 and "no usable images" in err and "gone.png" in err


def test_header_only_csv_is_one_line(tmp_path, capsys):
    folder = _csv_folder(tmp_path, "image,label,session")
    rc, err = _cli(capsys, "cervix_folder", "--manual_dir", str(folder), "--data_dir",
                   str(tmp_path / "tfds"), "--grid_size", "2", "--patch_size", "8")
    assert rc == 1 and len(err.splitlines()) == 1 and "no images listed" in err, err


def test_missing_manual_dir_is_fatal(tmp_path, capsys):
    rc, err = _cli(capsys, "iarc_colposcopy_atlas", "--manual_dir", str(tmp_path / "nope"),
                   "--data_dir", str(tmp_path / "tfds"), "--grid_size", "2", "--patch_size", "8")
    assert rc == 1 and "is not a folder" in err


def test_cli_exit_code_and_one_line_in_a_real_process(tmp_path):
    folder = _csv_folder(tmp_path, "image,label", "a.png,1")
    proc = subprocess.run(
        [sys.executable, "-m", "jaxcerv.data", "build", "cervix_folder", "--manual_dir",
         str(folder), "--data_dir", str(tmp_path / "tfds"), "--grid_size", "2",
         "--patch_size", "8"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: DatasetError: ")


# ------------------------------------------------------------------------- configs


def test_config_names_separate_resolutions_and_policies(tmp_path):
    dirs = {
        builders.make_builder("iarc_colposcopy_atlas", data_dir=tmp_path, grid_size=g,
                              patch_size=p, resize=r, include_variants=v).data_dir
        for g, p, r, v in [
            (4, 8, "stretch", False), (4, 8, "pad", False), (2, 16, "stretch", False),
            (8, 4, "stretch", False), (4, 8, "stretch", True),
        ]
    }
    assert len(dirs) == 5
    name = builders.make_builder("iarc_colposcopy_atlas", data_dir=tmp_path, grid_size=16,
                                 patch_size=28).builder_config.name
    assert name.startswith("s448_") and "stretch" in name


def test_folder_config_name_follows_the_csv_content(tmp_path):
    folder = _csv_folder(tmp_path, "image,label,session", "a.png,1,s")
    first = builders.make_builder("cervix_folder", data_dir=tmp_path, grid_size=2, patch_size=8,
                                  manual_dir=folder).data_dir
    (folder / "labels.csv").write_text("image,label,session\na.png,0,s\n")
    second = builders.make_builder("cervix_folder", data_dir=tmp_path, grid_size=2, patch_size=8,
                                   manual_dir=folder).data_dir
    assert first != second


# ------------------------------------------------------------------------- synthetic


def test_synthetic_builder_stores_the_generator_output(built):
    source, records, report = _open(
        "synthetic_cervix", built["data_dir"], grid_size=GRID, patch_size=PATCH, num_images=10,
        synthetic_seed=3,
    )
    assert len(source) == len(records) == report["num_images"] == 10
    for i in range(10):
        truth = synthetic.generate(i, seed=3, grid=GRID, patch=PATCH)
        example = source[i]
        np.testing.assert_array_equal(example["image"], truth["image"])
        assert records.ids[i] == truth["id"] == example["id"].decode()
        assert records.labels[i] == truth["label"] and records.grades[i] == truth["grade"]
        assert records.sessions[i] == truth["session"]
        np.testing.assert_allclose(records.days_to_diagnosis[i], truth["days_to_diagnosis"],
                                   rtol=1e-6)
        np.testing.assert_allclose(records.truth_cervix[i], truth["cervix"], rtol=1e-6)
        np.testing.assert_array_equal(records.truth_lesion[i], truth["lesion"])
        np.testing.assert_array_equal(example["lesion"], truth["lesion"])


# ------------------------------------------------------------------------- IARC atlas


@pytest.mark.parametrize(
    "text, expected",
    [
        ("HSIL-CIN2.", (1, 2)),
        ("HSIL-CIN3", (1, 3)),
        ("LSIL-CIN1.", (0, 1)),
        ("HSIL-CIN3; LSIL-CIN1 in the anterior lip.", (1, 3)),
        ("CIN II", (1, 2)),
        ("Cervical histopathology was invasive squamous cell cancer, vaginal HSIL-VAIN 3", (1, 4)),
        ("Squamous cell carcinoma", (1, 4)),
        ("No CIN", (0, 0)),
        ("Chronic cervicitis", (0, 0)),
        ("Normal", (0, 0)),
        ("HSIL", (1, -1)),
        ("VIN 3", None),
        ("abnormal, see notes", None),
        ("", None),
    ],
)
def test_parse_histopathology(text, expected):
    assert builders.parse_histopathology(text) == expected


@pytest.fixture(scope="module")
def atlas(built):
    if "atlas" not in built["cli"]:
        pytest.skip(f"IARC atlas not found at {ATLAS} (CI clones ../shared beside the repo)")
    return _open("iarc_colposcopy_atlas", built["data_dir"], grid_size=ATLAS_GRID,
                 patch_size=PATCH)


def _atlas_cases() -> dict[str, int]:
    """case_id -> label from which CSV lists it (high grade = CIN2+ = 1)."""
    cases = {}
    for grade, label in (("high", 1), ("low", 0)):
        with open(ATLAS / f"colposcopy_cases_{grade}_grade.csv", newline="") as f:
            for row in csv.DictReader(f):
                cases[row["case_id"]] = label
    return cases


def test_atlas_counts_match_the_folder(atlas):
    source, records, report = atlas
    cases = _atlas_cases()
    files = [
        p for p in ATLAS.glob("images_*/case_*/*")
        if re.fullmatch(r"\d+_After_acetic_acid\.jpg", p.name) and p.parent.name[5:] in cases
    ]
    assert len(source) == len(records) == report["num_images"] == len(files)
    assert set(records.ids) == {f"{p.parent.name[5:]}/{p.stem}" for p in files}
    assert report["num_sessions"] == len({p.parent.name for p in files})
    assert report["skipped"] == []


def test_atlas_labels_match_the_csvs(atlas):
    _, records, _ = atlas
    cases = _atlas_cases()
    for session, label in zip(records.sessions, records.labels, strict=True):
        assert label == cases[session], session
    texts = {}
    for grade in ("high", "low"):
        with open(ATLAS / f"colposcopy_cases_{grade}_grade.csv", newline="") as f:
            texts.update({r["case_id"]: r["histopathology_diagnosis"] for r in csv.DictReader(f)})
    hand = {"HSIL-CIN2.": 2, "HSIL-CIN3.": 3, "LSIL-CIN1.": 1}
    for session, grade in zip(records.sessions, records.grades, strict=True):
        if texts[session] in hand:
            assert grade == hand[texts[session]], session


def test_atlas_images_are_the_resized_photographs(atlas):
    from jaxcerv.data.images import load_image

    source, records, _ = atlas
    for i in (0, len(records) - 1):
        case, stem = str(records.ids[i]).split("/")
        path = next(ATLAS.glob(f"images_*/case_{case}/{stem}.jpg"))
        expected = load_image(path, image_size=ATLAS_GRID * PATCH, patch_size=PATCH)
        np.testing.assert_array_equal(source[i]["image"], expected)


# ------------------------------------------------------------------------- annocerv layout

# The stored images are 32 x 32 squashed from 2:1 photographs (original 64 x 32); the model input
# is GRID x GRID patches of PATCH px = 32 px, letterboxed ("pad"): the true aspect lands in a
# 32 x 16 box at y0 = 8.
_OUTLINE_SQUARE = "square"  # the outline of rows 8-23, cols 8-23: a closed rectangle
_OUTLINE_U = "u"  # rows 10-31, cols 8-23, open at the bottom edge
# (image, mask, case_id, swede_score, image_id, original_width, original_height, what happens)
OUTLINED = [
    ("a1.png", "a1_m.png:square", "c1", "6", "", "64", "32", "kept"),
    ("a2.png", "a2_m.png:empty", "c1", "6", "a2", "64", "32", "kept"),
    ("b1.png", "b1_m.png:scribble", "c2", "2", "", "64", "32", "kept"),
    ("b2.png", "b2_m.png:u", "c2", "2.0", "", "64", "32", "kept"),
    ("d1.png", "d1_m.png:square", "c3", "7", "", "64", "32", "kept"),
    ("a1.png", "absent_m.png:", "c4", "3", "x1", "64", "32", "mask masks/absent_m.png: file not"),
    ("x2.png", "big_m.png:big", "c4", "3", "x2", "64", "32", "masks/big_m.png: mask is 40x40 px"),
    ("x3.png", "grey_m.png:grey", "c4", "3", "x3", "64", "32", "masks/grey_m.png: mask is not 0/"),
    ("a1.png", "a1_m.png", "c4", "abc", "x4", "64", "32", "swede_score 'abc' is not a number"),
    ("a1.png", "a1_m.png", "c4", "11", "x5", "64", "32", "swede_score '11' is outside 0-10"),
    ("a1.png", "a1_m.png", "c4", "4.5", "x6", "64", "32", "'4.5' is not a whole number"),
    ("a1.png", "a1_m.png", "", "3", "x7", "64", "32", "empty case_id"),
    ("gone.png", "a1_m.png", "c4", "3", "x8", "64", "32", "file not found"),
    ("a1.png", "a1_m.png", "c4", "3", "x9", "0", "32", "original_width '0' is not a positive"),
    ("e1.png", "e1_m.png:square", "c5", "3", "", "64", "32", "disagree on swede_score"),
    ("e2.png", "e2_m.png:square", "c5", "4", "", "64", "32", "disagree on swede_score"),
    ("a1.png", "a1_m.png", "c6", "3", "a2", "64", "32", "duplicate id 'a2'"),
]


def _outline(kind: str, size: int = S) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    if kind == _OUTLINE_SQUARE:
        mask[8, 8:24] = mask[23, 8:24] = mask[8:24, 8] = mask[8:24, 23] = 255
    elif kind == _OUTLINE_U:
        mask[10, 8:24] = mask[10:, 8] = mask[10:, 23] = 255
    elif kind == "scribble":
        mask[np.arange(6, 26), np.arange(6, 26)] = 255
    elif kind == "grey":
        mask[8, 8:24] = 128
    return mask


def _make_outlined(root: Path) -> Path:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    for image, mask_spec, *rest in OUTLINED:
        mask, _, kind = mask_spec.partition(":")
        if not (root / "images" / image).exists() and image != "gone.png":
            pixels = rng.integers(0, 256, (S, S, 3), np.uint8)
            Image.fromarray(pixels).save(root / "images" / image)
        if kind == "big":
            Image.fromarray(np.zeros((40, 40), np.uint8)).save(root / "masks" / mask)
        elif kind:
            Image.fromarray(_outline(kind)).save(root / "masks" / mask)
        rows.append([f"images/{image}", f"masks/{mask}", *rest[:5], "99"])
    with open(root / "metadata.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "mask", "case_id", "swede_score", "image_id",
                         "original_width", "original_height", "acetowhite_pixels"])
        writer.writerows(rows)
    return root


def _outlined_kept() -> list[tuple]:
    return [r for r in OUTLINED if r[7] == "kept"]


@pytest.fixture(scope="module")
def outlined(built):
    return _open("annocerv", built["data_dir"], grid_size=GRID, patch_size=PATCH, resize="pad",
                 manual_dir=built["outlined_dir"])


def test_annocerv_keeps_the_good_rows_with_labels_sessions_and_scores(outlined):
    source, records, report = outlined
    kept = _outlined_kept()
    assert list(records.ids) == [r[4] or f"images/{r[0]}" for r in kept]
    assert list(records.sessions) == [r[2] for r in kept]
    scores = [int(float(r[3])) for r in kept]
    np.testing.assert_array_equal(records.swede_scores, scores)
    np.testing.assert_array_equal(records.labels, [int(v >= 5) for v in scores])
    assert (records.grades == -1).all()  # no histology
    assert report["labels"] == {"0": 2, "1": 3} and report["sessions_per_label"] == {"0": 1, "1": 2}
    assert [int(source[i]["swede_score"]) for i in range(len(source))] == scores


def test_annocerv_label_note_travels_in_records_and_report(outlined):
    _, records, report = outlined
    assert records.label_note == builders.label_note(5) == report["label_note"]
    assert "Swede score >= 5" in records.label_note and "not histology" in records.label_note


@pytest.mark.parametrize("row", [r for r in OUTLINED if r[7] != "kept"], ids=lambda r: r[7][:24])
def test_annocerv_bad_row_is_skipped_with_its_reason(outlined, row):
    _, _, report = outlined
    line = OUTLINED.index(row) + 2
    entries = [s for s in report["skipped"] if s["file"].startswith(f"metadata.csv:{line} ")]
    assert len(entries) == 1, report["skipped"]
    assert row[0] in entries[0]["file"] and row[7] in entries[0]["reason"]
    assert len(report["skipped"]) == sum(r[7] != "kept" for r in OUTLINED)


def test_annocerv_case_disagreement_names_both_scores(outlined):
    _, _, report = outlined
    reasons = [s["reason"] for s in report["skipped"] if "disagree" in s["reason"]]
    assert len(reasons) == 2
    assert all("case c5" in r and "3 at line(s) 16" in r and "4 at line(s) 17" in r
               for r in reasons)


def _block_fractions(region: np.ndarray, restored: bool) -> np.ndarray:
    """The oracle, by block means of the stored 32 x 32 region: restored to 2:1 and letterboxed,
    input patch row p (input rows 8p..8p+7) is stored rows 16(p-1)..16(p-1)+15 for p = 1, 2 and
    letterbox (0) for p = 0, 3; without the restore, patches are stored 8 x 8 blocks."""
    if not restored:
        return region.reshape(GRID, PATCH, GRID, PATCH).mean(axis=(1, 3))
    out = np.zeros((GRID, GRID))
    out[1:3] = region.reshape(2, 2 * PATCH, GRID, PATCH).mean(axis=(1, 3))
    return out


def test_annocerv_regions_land_in_the_right_patches(outlined):
    """The closed square (stored rows/cols 8-23) at the restored 2:1 aspect: input rows 12-19,
    cols 8-23, about half of each of patches (1, 1), (1, 2), (2, 1), (2, 2) (less the corners
    the closing rounds); the U open at the bottom: input rows 13-23."""
    _, records, _ = outlined
    assert records.truth_region.shape == (5, GRID, GRID)
    assert records.truth_region.dtype == np.float32
    for i, kind in ((0, _OUTLINE_SQUARE), (4, _OUTLINE_SQUARE), (3, _OUTLINE_U)):
        region = regions.outline_to_region(_outline(kind)).mask
        np.testing.assert_allclose(records.truth_region[i], _block_fractions(region, True),
                                   atol=1e-5)
    square = np.zeros((GRID, GRID))
    square[1:3, 1:3] = 0.5
    np.testing.assert_allclose(records.truth_region[0], square, atol=0.05)
    u = np.zeros((GRID, GRID))
    u[1, 1:3], u[2, 1:3] = 3 / 8, 1.0
    np.testing.assert_allclose(records.truth_region[3], u, atol=0.05)
    assert not records.truth_region[[1, 2]].any()  # empty and unclosable: no region


def test_annocerv_region_status_and_usable(outlined):
    _, records, report = outlined
    assert list(records.region_status) == ["closed", "empty", "unclosable", "closed", "closed"]
    np.testing.assert_array_equal(records.region_usable, [True, True, False, True, True])
    assert records.region_usable.dtype == bool
    assert report["masks"] == {"closed": 3, "empty": 1, "unclosable": 1}
    assert report["unclosable"] == [
        {"file": "masks/b1_m.png", "reason": "encloses nothing: the strokes close no region"}
    ]


def test_annocerv_summary_counts_masks_and_skips(built, outlined):
    _, _, report = outlined
    summary = built["cli"]["annocerv"]["stdout"]
    assert "(1 = Swede score >= 5: an expert's visual score, not histology)" in summary
    assert "masks: 3 closed into a region, 1 empty (no acetowhite marked), 1 unclosable" in summary
    assert "usable for explanation metrics: 4 (region AUC / pointing game: the 3 closed)" in summary
    assert "unclosable, encloses nothing: 1" in summary
    assert f"skipped: {len(report['skipped'])}" in summary
    for entry in report["skipped"]:
        assert f"{entry['file']}: {entry['reason']}" in summary


def test_annocerv_without_restore_aspect_places_the_stored_square(built):
    """--norestore_aspect: the 32 x 32 stored pixels fill the input; the square's patches are
    whole. --swede_threshold 7: only case c3 (score 7) is positive."""
    source, records, report = _open(
        "annocerv", built["data_dir"], grid_size=GRID, patch_size=PATCH, resize="pad",
        manual_dir=built["outlined_dir"], restore_aspect=False, swede_threshold=7,
    )
    region = regions.outline_to_region(_outline(_OUTLINE_SQUARE)).mask
    np.testing.assert_allclose(records.truth_region[0], _block_fractions(region, False),
                               atol=1e-5)
    square = np.zeros((GRID, GRID))
    square[1:3, 1:3] = 1.0
    np.testing.assert_allclose(records.truth_region[0], square, atol=0.1)
    np.testing.assert_array_equal(records.labels, [0, 0, 0, 0, 1])
    assert records.label_note == builders.label_note(7)
    stored = np.asarray(Image.open(built["outlined_dir"] / "images" / "a1.png"))
    np.testing.assert_array_equal(source[0]["image"], stored)  # 32 px in, 32 px out: unchanged


def test_annocerv_restored_image_is_letterboxed(outlined):
    source, _, _ = outlined
    image = source[0]["image"]
    assert not image[:8].any() and not image[24:].any()  # the 2:1 photograph in rows 8-23
    assert image[8:24].mean() > 50


def _annocerv_cli(capsys, tmp_path, header: str, *lines: str) -> tuple[int, str]:
    (tmp_path / "metadata.csv").write_text("\n".join([header, *lines]) + ("\n" if header else ""))
    rc = cli.main(["jaxcerv data", "build", "annocerv", "--manual_dir", str(tmp_path), "--data_dir",
                   str(tmp_path / "tfds"), "--grid_size", "2", "--patch_size", "8"])
    return rc, capsys.readouterr().err.strip()


def test_annocerv_empty_metadata_is_one_line(tmp_path, capsys):
    rc, err = _annocerv_cli(capsys, tmp_path, "")
    assert rc == 1 and len(err.splitlines()) == 1 and "metadata.csv: empty CSV" in err


def test_annocerv_header_only_metadata_is_one_line(tmp_path, capsys):
    rc, err = _annocerv_cli(capsys, tmp_path, "image,mask,case_id,swede_score")
    assert rc == 1 and len(err.splitlines()) == 1 and "no images listed" in err


@pytest.mark.parametrize("missing", ["image", "mask", "case_id", "swede_score"])
def test_annocerv_missing_column_is_one_line_naming_it(tmp_path, capsys, missing):
    header = ",".join(c for c in ("image", "mask", "case_id", "swede_score") if c != missing)
    rc, err = _annocerv_cli(capsys, tmp_path, header, "a,b,c")
    assert rc == 1 and len(err.splitlines()) == 1
    assert "metadata.csv" in err and f"missing required column '{missing}'" in err


def test_annocerv_missing_metadata_is_one_line(tmp_path, capsys):
    rc = cli.main(["jaxcerv data", "build", "annocerv", "--manual_dir", str(tmp_path), "--data_dir",
                   str(tmp_path / "tfds"), "--grid_size", "2", "--patch_size", "8"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "metadata.csv" in err


def test_annocerv_bad_threshold_is_one_line(tmp_path):
    with pytest.raises(builders.DatasetError, match="swede_threshold must be a whole number"):
        builders.make_builder("annocerv", data_dir=tmp_path, grid_size=2, patch_size=8,
                              manual_dir=tmp_path, swede_threshold=0)


@pytest.fixture(scope="module")
def annocerv_real(built):
    if "annocerv_real" not in built["cli"]:
        pytest.skip(f"AnnoCerv not found at {ANNOCERV} (CI clones ../shared beside the repo)")
    return _open("annocerv", built["data_dir"], grid_size=2, patch_size=PATCH, resize="pad",
                 manual_dir=ANNOCERV)


def test_annocerv_real_counts_match_its_readme(annocerv_real):
    """README: 242 images, 80 cases, 155 with an outline, 30 of the 80 cases score >= 5."""
    _, records, report = annocerv_real
    with open(ANNOCERV / "metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    outlined_images = sum(int(r["acetowhite_pixels"]) > 0 for r in rows)
    assert len(records) == len(rows) == 242 and report["skipped"] == []
    assert report["num_sessions"] == 80 and report["sessions_per_label"]["1"] == 30
    masks = report["masks"]
    assert masks["empty"] == 242 - outlined_images == 87
    assert masks["closed"] + masks["unclosable"] == 155
    assert len(report["unclosable"]) == masks["unclosable"]
    np.testing.assert_array_equal(records.region_usable, records.region_status != "unclosable")
