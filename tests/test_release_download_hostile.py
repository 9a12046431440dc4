"""Hostile release data: zip / tar bombs and name clashes in Hub release archives, exact duplicate records, EXIF
orientation, images whose header claims too many pixels, large data.json files."""

import io
import json
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from dataset_script.records import StepCoTDataError
from dataset_script.release_download import assemble_release, safe_unpack

ARCHIVE_KINDS = ["zip", "tar", "tar.gz", "tgz"]


def _archive(path, members: dict, kind: str, directories=()):
    """An archive at PATH.KIND with `members` {name: bytes} and directory entries `directories`."""
    archive = path.with_name(f"{path.name}.{kind}")
    if kind == "zip":
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as handle:
            for name in directories:
                handle.writestr(zipfile.ZipInfo(name.rstrip("/") + "/"), b"")
            for name, data in members.items():
                handle.writestr(name, data)
        return archive
    mode = "w" if kind == "tar" else "w:gz"
    with tarfile.open(archive, mode) as handle:
        for name in directories:
            info = tarfile.TarInfo(name.rstrip("/"))
            info.type = tarfile.DIRTYPE
            handle.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            handle.addfile(info, io.BytesIO(data))
    return archive


def _leftovers(folder):
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


@pytest.mark.parametrize("kind", ["zip", "tar.gz", "tgz"])
def test_a_compression_bomb_is_refused_and_leaves_nothing(tmp_path, kind):
    archive = _archive(tmp_path / "images", {"images/a.png": b"\0" * 60_000_000}, kind)
    assert archive.stat().st_size < 200_000
    out = tmp_path / "out"
    with pytest.raises(StepCoTDataError, match="times its size.*STEPCOT_MAX_COMPRESSION_RATIO"):
        safe_unpack(archive, out)
    assert _leftovers(out) == []


@pytest.mark.parametrize("kind", ARCHIVE_KINDS)
def test_unpacked_bytes_and_member_count_are_capped(tmp_path, kind, monkeypatch):
    archive = _archive(tmp_path / "images", {f"images/{i}.png": bytes(range(256)) * 8 for i in range(5)}, kind)
    monkeypatch.setenv("STEPCOT_MAX_UNPACKED_BYTES", "4096")
    with pytest.raises(StepCoTDataError, match="10,240 bytes.*STEPCOT_MAX_UNPACKED_BYTES"):
        safe_unpack(archive, tmp_path / "out")
    monkeypatch.delenv("STEPCOT_MAX_UNPACKED_BYTES")
    monkeypatch.setenv("STEPCOT_MAX_ARCHIVE_MEMBERS", "3")
    with pytest.raises(StepCoTDataError, match="5 members.*STEPCOT_MAX_ARCHIVE_MEMBERS"):
        safe_unpack(archive, tmp_path / "out")
    assert _leftovers(tmp_path / "out") == []
    monkeypatch.delenv("STEPCOT_MAX_ARCHIVE_MEMBERS")
    assert len(list(safe_unpack(archive, tmp_path / "out").iterdir())) == 5


@pytest.mark.parametrize("kind", ARCHIVE_KINDS)
def test_a_directory_entry_and_a_file_of_the_same_name_are_refused(tmp_path, kind):
    archive = _archive(tmp_path / "images", {"images/a": b"file"}, kind, directories=["images/a"])
    with pytest.raises(StepCoTDataError, match="'images/a' is both a file and a folder"):
        safe_unpack(archive, tmp_path / "out")
    assert _leftovers(tmp_path / "out") == []


@pytest.mark.parametrize("kind", ARCHIVE_KINDS)
def test_a_file_below_a_file_is_refused(tmp_path, kind):
    archive = _archive(tmp_path / "images", {"images/a": b"file", "images/a/b.png": b"x"}, kind)
    with pytest.raises(StepCoTDataError, match="both a file and a folder"):
        safe_unpack(archive, tmp_path / "out")


@pytest.mark.parametrize("kind", ARCHIVE_KINDS)
def test_data_json_beside_data_json_archive_is_one_error(tmp_path, kind):
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    (snapshot / "data.json").write_text("[]")
    _archive(snapshot / "data.json", {"x.json": b"[]"}, kind)
    release = tmp_path / "release"
    with pytest.raises(StepCoTDataError, match="data.json"):
        assemble_release(snapshot, release)
    assert not release.exists()


def test_a_zip_member_longer_than_it_declares_is_refused(tmp_path):
    """A zip whose central directory understates a member's size: zipfile stops at the declared size and the CRC
    check fails; nothing is left."""
    archive = _archive(tmp_path / "images", {"images/a.png": b"x" * 10_000}, "zip")
    raw = bytearray(archive.read_bytes())
    central = raw.rindex(b"PK\x01\x02")
    raw[central + 24:central + 28] = (100).to_bytes(4, "little")  # uncompressed size in the central directory
    local = raw.index(b"PK\x03\x04")
    raw[local + 22:local + 26] = (100).to_bytes(4, "little")
    archive.write_bytes(bytes(raw))
    with pytest.raises((StepCoTDataError, zipfile.BadZipFile)):
        safe_unpack(archive, tmp_path / "out")
    assert _leftovers(tmp_path / "out") == []


def _png(path, size=(8, 8)):
    Image.fromarray(np.zeros(size[::-1], dtype=np.uint8)).save(path)
    return path


def test_release_download_refusal_is_one_line_and_leaves_no_release(tmp_path):
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    (snapshot / "data.json").write_text("[]")
    _archive(snapshot / "images", {"images/a.png": b"\0" * 60_000_000}, "zip")
    with pytest.raises(StepCoTDataError) as error:
        assemble_release(snapshot, tmp_path / "release")
    assert len(str(error.value).splitlines()) == 1
    assert not (tmp_path / "release").exists()


def test_a_valid_release_still_assembles(tmp_path):
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    (snapshot / "data.json").write_text(json.dumps([]))
    _archive(snapshot / "images", {"images/a.png": _png(tmp_path / "a.png").read_bytes()}, "zip")
    done = assemble_release(snapshot, tmp_path / "release")
    assert done == {"unpacked": {"images.zip": "images"}, "copied": ["data.json"]}
    assert (tmp_path / "release" / "images" / "a.png").is_file()
    assert [p.name for p in (tmp_path / "release").iterdir() if p.name.startswith(".")] == []


def _rotated_jpeg(path):
    """A 60 x 30 (w x h) JPEG, bright on its left half, stored with EXIF orientation 6 (displayed rotated 90
    degrees clockwise: 30 wide, 60 high, bright on top)."""
    pixels = np.zeros((30, 60), dtype=np.uint8)
    pixels[:, :30] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    return path


def test_exif_orientation_is_applied_where_images_become_pixels(tmp_path):
    from modeling_stepcot.processing_stepcot import image_to_8bit, image_to_rgb

    path = _rotated_jpeg(tmp_path / "rotated.jpg")
    for convert in (image_to_8bit, lambda image: image_to_rgb(image, 16)):
        with Image.open(path) as image:
            upright = np.asarray(convert(image).convert("L"), dtype=np.float32)
        assert upright.shape == (60, 30)
        assert upright[:30].mean() > 200 and upright[30:].mean() < 50


def test_predict_reports_the_upright_image_size(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_models import tiny_student

    from trainers.inference.predict import build_pipeline

    path = _rotated_jpeg(tmp_path / "rotated.jpg")
    result = build_pipeline(tiny_student())(str(path))
    assert tuple(result["image_size"]) == (60, 30)  # (height, width) as displayed


def _png_claiming(path, width, height):
    """A PNG whose header claims WIDTH x HEIGHT (its data is a tiny image's)."""
    import struct
    import zlib

    raw = bytearray(_png(path).read_bytes())
    ihdr = raw.index(b"IHDR")
    raw[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    raw[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(raw[ihdr:ihdr + 17])))
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("size", [(60_000, 60_000), (11_000, 10_000)])
def test_predict_refuses_an_image_claiming_too_many_pixels_in_one_line(tmp_path, capsys, size):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_models import tiny_student

    from trainers import cli

    tiny_student().save_pretrained(tmp_path / "student")
    bomb = _png_claiming(tmp_path / "bomb.png", *size)
    capsys.readouterr()
    assert cli.main(["predict", str(bomb), "--model", str(tmp_path / "student")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "bomb.png" in error and "decompression-bomb guard" in error


def _duplicate_first_record(folder):
    records = json.loads((folder / "data.json").read_text())
    records.append(dict(records[0]))
    (folder / "data.json").write_text(json.dumps(records))
    return len(records) - 1


@pytest.mark.parametrize("with_split_files", [True, False])
def test_an_exact_duplicate_record_is_reported_as_one(release, with_split_files):
    from dataset_script.release import StepCoTRelease

    if not with_split_files:
        for sheet in release.glob("*.xlsx"):
            sheet.unlink()
    duplicate = _duplicate_first_record(release)
    lenient = StepCoTRelease(release, strict=False)
    texts = [p["text"] for entry in lenient.report["skipped"] for p in entry["problems"]]
    assert [t for t in texts if f"record {duplicate}" in t] == [
        next(t for t in texts if f"record {duplicate}" in t)]
    assert any(f"record {duplicate}" in t and "exact duplicate of record 0" in t for t in texts)
    assert not any("listed in no split file" in t for t in texts)
    assert [r["index"] for r in lenient.records].count(0) == 1
    with pytest.raises(StepCoTDataError, match="exact duplicate"):
        StepCoTRelease(release)


def test_validating_a_large_release_shows_progress(release, monkeypatch, capsys):
    import dataset_script.release as release_module

    monkeypatch.setattr(release_module, "PROGRESS_MIN_RECORDS", 1)
    release_module.StepCoTRelease(release, strict=False)
    assert "validating records" in capsys.readouterr().err
