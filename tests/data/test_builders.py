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

from jaxcerv.data import __main__ as cli
from jaxcerv.data import builders, pipeline, synthetic

REPO = Path(__file__).parents[2]
ATLAS = Path(__file__).parents[3] / "shared" / "data" / "iarc-colposcopy-atlas"
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
from jaxcerv.data import __main__ as cli
out = {}
for job in json.loads(sys.argv[1]):
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = cli.main(job["argv"])
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
    if ATLAS.is_dir():
        jobs.append({"key": "atlas", "argv": [
            "build", "iarc_colposcopy_atlas", "--manual_dir", str(ATLAS), "--data_dir",
            str(data_dir), "--grid_size", str(ATLAS_GRID), "--patch_size", str(PATCH)]})
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
    return {"folder_dir": folder, "data_dir": data_dir, "cli": result}


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
    rc = cli.main(["build", *argv])
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
