"""A raw Step-CoT release on the Hub: safe unpacking of image archives, and download -> build -> train -> push ->
`load_dataset` against a Hub look-alike on loopback (`tests/hub_server.py`, reached through HF_ENDPOINT, so
`huggingface_hub` and `datasets` run their real HTTP code)."""

import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from hub_server import FakeHub

from dataset_script.records import StepCoTDataError
from dataset_script.release_download import archive_stem, looks_like_hub_id, safe_unpack

REPO_ROOT = Path(__file__).resolve().parents[1]
RELEASE_ID = "fl-15o/Step-CoT"


# ---------------------------------------------------------------------------------------------------------------
# Safe unpacking
# ---------------------------------------------------------------------------------------------------------------


def _zip(path, members: dict, symlinks: dict | None = None):
    with zipfile.ZipFile(path, "w") as handle:
        for name, data in members.items():
            handle.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)  # S_IFLNK
            handle.writestr(info, target)
    return path


def _tar(path, members: dict, links: dict | None = None, mode="w:gz"):
    with tarfile.open(path, mode) as handle:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            handle.addfile(info, io.BytesIO(data))
        for name, (kind, target) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE
            info.linkname = target
            handle.addfile(info)
    return path


def test_archive_names():
    assert archive_stem("images.zip") == "images"
    assert archive_stem("images_2.tar.gz") == "images_2"
    assert archive_stem("x.tgz") == "x" and archive_stem("x.tar") == "x"
    assert archive_stem("data.json") is None
    assert looks_like_hub_id("fl-15o/Step-CoT") and not looks_like_hub_id("demo")


@pytest.mark.parametrize("layout", ["flat", "foldered"])
@pytest.mark.parametrize("kind", ["zip", "tar.gz", "tar"])
def test_unpack_puts_images_under_the_archive_stem(tmp_path, layout, kind):
    prefix = "images/" if layout == "foldered" else ""
    members = {f"{prefix}a.png": b"A", f"{prefix}sub/b.png": b"B"}
    archive = tmp_path / f"images.{kind}"
    if kind == "zip":
        _zip(archive, members)
    else:
        _tar(archive, members, mode="w:gz" if kind == "tar.gz" else "w")
    folder = safe_unpack(archive, tmp_path / "out")
    assert folder == tmp_path / "out" / "images"
    assert (folder / "a.png").read_bytes() == b"A" and (folder / "sub" / "b.png").read_bytes() == b"B"


@pytest.mark.parametrize("name", ["../evil.png", "images/../../evil.png", "/abs/evil.png", "C:/evil.png",
                                  "images\\..\\evil.png"])
@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_unpack_refuses_members_that_escape(tmp_path, name, kind):
    archive = tmp_path / f"images.{kind}"
    members = {"images/ok.png": b"ok", name: b"evil"}
    _zip(archive, members) if kind == "zip" else _tar(archive, members)
    with pytest.raises(StepCoTDataError, match="refusing to unpack") as error:
        safe_unpack(archive, tmp_path / "out")
    assert "images." in str(error.value)  # names the archive
    assert not list(tmp_path.rglob("evil.png")) and not (tmp_path / "out" / "images" / "ok.png").exists()


def test_unpack_refuses_a_zip_symlink(tmp_path):
    archive = _zip(tmp_path / "images.zip", {"images/ok.png": b"ok"}, symlinks={"images/link.png": "/etc/passwd"})
    with pytest.raises(StepCoTDataError, match="symbolic link"):
        safe_unpack(archive, tmp_path / "out")


@pytest.mark.parametrize("kind,target", [("sym", "/etc/passwd"), ("sym", "../../outside"), ("hard", "../outside"),
                                         ("hard", "/etc/passwd")])
def test_unpack_refuses_tar_links_outside(tmp_path, kind, target):
    archive = _tar(tmp_path / "images.tar.gz", {"images/ok.png": b"ok"}, links={"images/link.png": (kind, target)})
    with pytest.raises(StepCoTDataError, match="outside the target folder"):
        safe_unpack(archive, tmp_path / "out")


def test_unpack_keeps_links_inside(tmp_path):
    archive = _tar(tmp_path / "images.tar.gz", {"images/ok.png": b"ok"}, links={"images/same.png": ("sym", "ok.png")})
    folder = safe_unpack(archive, tmp_path / "out")
    assert (folder / "same.png").read_bytes() == b"ok"


# ---------------------------------------------------------------------------------------------------------------
# The Hub release end to end, over HTTP on loopback
# ---------------------------------------------------------------------------------------------------------------


def raw_release_files(release_dir: Path) -> dict[str, bytes]:
    """The files of a Hub raw release: data.json, the split sheets, and each image folder as a .zip / .tar.gz."""
    files = {name: (release_dir / name).read_bytes() for name in ("data.json", "train.xlsx", "val.xlsx", "test.xlsx")}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as handle:  # foldered: images/<name>
        for path in sorted((release_dir / "images").iterdir()):
            handle.write(path, f"images/{path.name}")
    files["images.zip"] = buffer.getvalue()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as handle:  # flat: <name> only
        for path in sorted((release_dir / "images_2").iterdir()):
            handle.add(path, path.name)
    files["images_2.tar.gz"] = buffer.getvalue()
    return files


def _hub_env(hub: FakeHub, home: Path) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGINGFACE"))}
    return dict(env, HF_ENDPOINT=hub.endpoint, HF_HOME=str(home), HF_TOKEN="hf_test_token", HF_HUB_OFFLINE="0",
                HF_DATASETS_OFFLINE="0", HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
                PYTHONPATH=str(REPO_ROOT), TOKENIZERS_PARALLELISM="false")


def _stepcot(args, env, timeout=300):
    result = subprocess.run([sys.executable, "-m", "trainers.cli", *args], env=env, capture_output=True, text=True,
                            timeout=timeout, cwd=REPO_ROOT)
    return result


def _python(code, env, *args, timeout=120):
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT)


def _resolve_gets(hub: FakeHub) -> list[str]:
    return [path for method, path, status in hub.requests if method == "GET" and "/resolve/" in path]


@pytest.mark.slow
def test_release_download_download_build_train_push_and_load_back(demo_release_dir, tiny_clip_dir, tmp_path):
    from datasets import load_dataset

    with FakeHub(lifetime_s=280) as hub:
        first = hub.commit(RELEASE_ID, raw_release_files(demo_release_dir), message="raw release")
        env = _hub_env(hub, tmp_path / "hf_home")
        # A run whose archive download keeps failing stops with a one-line error; the next run fetches only what
        # is missing (huggingface_hub keeps finished files in the cache), and a connection dropped in the middle of
        # data.json is retried.
        hub.broken_files = {"images_2.tar.gz"}
        built = tmp_path / "built"
        result = _stepcot(["data", "build", "--source", RELEASE_ID, "--out", str(built)], env)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert "images_2.tar.gz" in result.stderr and not built.exists()
        fetched_before = {path.rsplit("/", 1)[1] for path in _resolve_gets(hub)}
        hub.broken_files = set()
        hub.fail_next_download_after = 2000
        count = len(hub.requests)
        result = _stepcot(["data", "build", "--source", RELEASE_ID, "--out", str(built)], env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert any(status == -200 for _, _, status in hub.requests[count:]), "the interruption did not happen"
        fetched_again = [path.rsplit("/", 1)[1] for method, path, status in hub.requests[count:]
                         if method == "GET" and "/resolve/" in path and status == 200]
        assert "images_2.tar.gz" in fetched_again and "images.zip" in fetched_before
        assert "images.zip" not in fetched_again  # finished in the failed run: not downloaded again
        summary = json.loads(result.stdout[result.stdout.index("{"):])
        assert summary["hub_source"]["revision"] == first
        assert summary["hub_source"]["unpacked"] == {"images.zip": "images", "images_2.tar.gz": "images_2"}
        card = (built / "README.md").read_text()
        assert f"`{RELEASE_ID}` at revision `{first}`" in card  # the commit is pinned in the card
        local = load_dataset(str(built))
        reference = load_dataset(str(_build_locally(demo_release_dir, tmp_path / "reference")))
        for split in reference:
            assert local[split]["labels"] == reference[split]["labels"]
            assert local[split]["patient_id"] == reference[split]["patient_id"]
            assert [i["bytes"] for i in local[split].cast_column("image", _raw_image())["image"]] == \
                [i["bytes"] for i in reference[split].cast_column("image", _raw_image())["image"]]

        # a revision is pinned: a later commit on main does not change a build asked for at the first commit
        second = hub.commit(RELEASE_ID, {"data.json": b"{not json"}, message="broken main")
        result = _stepcot(["data", "build", "--source", RELEASE_ID, "--revision", first, "--out",
                           str(tmp_path / "pinned")], env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"at revision `{first}`" in (tmp_path / "pinned" / "README.md").read_text()
        result = _stepcot(["data", "build", "--source", RELEASE_ID, "--out", str(tmp_path / "main")], env)
        assert result.returncode == 1 and "data.json: not valid JSON" in result.stderr, result.stderr[-2000:]
        assert "Traceback" not in result.stderr and second != first

        # `--dataset <hub id>` in train: downloads and builds once into the cache, one epoch on tiny models
        hub.commit(RELEASE_ID, raw_release_files(demo_release_dir), message="fixed main")
        train_args = ["train", "--dataset", RELEASE_ID, "--vision_encoder", str(tiny_clip_dir),
                      "--teacher_hidden_size", "16", "--student_hidden_size", "16", "--relation_dim", "8",
                      "--num_train_epochs", "1", "--teacher_pretrain_epochs", "0", "--save_strategy", "no",
                      "--num_bootstrap", "10", "--disable_tqdm", "true", "--per_device_train_batch_size", "16"]
        before = len(_resolve_gets(hub))
        result = _stepcot([*train_args, "--output_dir", str(tmp_path / "run1")], env, timeout=400)
        assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
        assert json.loads((tmp_path / "run1" / "results.json").read_text())
        downloads = len(_resolve_gets(hub)) - before
        assert downloads >= 6  # data.json, three sheets, two archives
        before = len(_resolve_gets(hub))
        code = ("import sys; from dataset_script.release_download import prepare_hub_dataset as p; "
                "print(p(sys.argv[1]))")
        cached = _python(code, env, RELEASE_ID)
        assert cached.returncode == 0, cached.stderr[-2000:]
        assert len(_resolve_gets(hub)) == before  # the second use reuses the cached build: nothing downloaded
        assert (Path(cached.stdout.strip().splitlines()[-1]) / "README.md").is_file()

        # push the build, then `load_dataset` reads it back from the same server; a Parquet repo is used as is
        result = _stepcot(["data", "push", str(built), "--repo", "someone/step-cot-built"], env)
        assert result.returncode == 0, result.stderr[-3000:]
        pushed = hub.snapshot("someone/step-cot-built", "main")[1]
        assert "README.md" in pushed and any(name.endswith(".parquet") for name in pushed)
        assert "validation_report.json" not in pushed
        code = ("import sys, json; from datasets import load_dataset; "
                "from dataset_script.sources import prepare_source as r; src = r(sys.argv[1]); "
                "d = load_dataset(src); print(json.dumps([src, {k: list(d[k]['labels']) for k in d}]))")
        read_back = _python(code, env, "someone/step-cot-built")
        assert read_back.returncode == 0, read_back.stderr[-3000:]
        source, labels = json.loads(read_back.stdout.strip().splitlines()[-1])
        assert source == "someone/step-cot-built"  # already Parquet: straight to load_dataset
        assert labels == {split: list(local[split]["labels"]) for split in local}


@pytest.mark.slow  # subprocesses (imports torch), or 480 real images
def test_hub_build_errors_are_one_line(tmp_path):
    with FakeHub(lifetime_s=60) as hub:
        hub.commit("someone/not-a-release", {"README.md": b"---\n---\nhello\n"})
        env = _hub_env(hub, tmp_path / "hf_home")
        for repo, expected in (("someone/not-a-release", "no data.json"), ("someone/missing", "refused")):
            result = _stepcot(["data", "build", "--source", repo, "--out", str(tmp_path / "out")], env)
            assert result.returncode == 1
            assert expected in result.stderr and repo in result.stderr
            assert "Traceback" not in result.stderr


def _raw_image():
    from datasets import Image

    return Image(decode=False)


def _build_locally(release_dir, out):
    from dataset_script.parquet_export import build_hub_dataset

    build_hub_dataset(release_dir, out)
    return out


@pytest.mark.slow
def test_offline_a_cached_build_is_used_and_without_one_the_error_says_so(tmp_path):
    cache = tmp_path / "cache"
    built = cache / "hub-releases" / "fl-15o--Step-CoT" / ("a" * 40) / "built"
    built.mkdir(parents=True)
    (built / "README.md").write_text("---\n---\n")
    (built / "hub_source.json").write_text("{}")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGINGFACE"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), STEPCOT_CACHE=str(cache),
               PYTHONPATH=str(REPO_ROOT))
    code = ("import sys; from dataset_script.release_download import prepare_hub_dataset as p\n"
            "try:\n    print(p(sys.argv[1]))\nexcept Exception as error:\n    print('error:', error)")
    found = _python(code, env, RELEASE_ID)
    assert found.stdout.strip() == str(built) and "using the cached build" in found.stderr
    missing = _python(code, env, "someone/never-built")
    assert "someone/never-built: cannot reach the Hub" in missing.stdout and "no cached build" in missing.stdout
