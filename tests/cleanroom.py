"""Throw-away virtualenvs WITHOUT this project, holding only what an artifact says it needs.

An artifact that stepcot hands out (a model folder, a metric module, a Space folder, a wheel, a dataset folder) is
tried where its user is: `clean_venv(["transformers==5.24.0", ...])` returns a venv built from the package
registries with exactly those requirements (plus what they pull in), cached per requirements hash under
`$STEPCOT_CLEANROOM_CACHE` (default `~/.cache/stepcot/cleanroom`), so a rerun costs seconds. `run_clean(venv, code)`
runs Python in it from an empty folder, offline, with no path leading back to this checkout.

uv builds the venvs (hard links from its cache: about a second once the wheels are cached, against ~45 s for pip
copying torch). torch is held to the pinned CPU build, which installs from the machine's local wheel folder:
an artifact that asks for plain `torch` (as a Space's requirements do) gets that build, never a CUDA one.
"""

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("STEPCOT_CLEANROOM_CACHE") or Path.home() / ".cache" / "stepcot" / "cleanroom")
TORCH_PIN = "torch==2.13.0"  # the CPU build (setup.cfg pins the same)
LOCAL_WHEELS = Path("/opt/wheels")  # where this machine keeps that build; pip's config names it too
_READY = ".stepcot-cleanroom-complete"


def _uv():
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if found is None:
        raise RuntimeError("uv is not installed (pip install -e '.[test]')")
    return found


def clean_venv(requirements, *, files=()):
    """A cached venv with `requirements` (pip requirement strings) and `files` (local wheels or requirements files,
    passed to the installer as `-r`/paths) installed, and nothing of this project. Safe under parallel test
    workers: one builds, the others wait on a lock."""
    requirements = sorted(requirements)
    digest = hashlib.sha256()
    for line in (sys.version, TORCH_PIN, *requirements):
        digest.update(line.encode() + b"\n")
    for path in files:
        digest.update(Path(path).read_bytes())
    venv = CACHE / digest.hexdigest()[:16]
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / _READY).exists():
            return venv
        shutil.rmtree(venv, ignore_errors=True)  # a build that died half-way
        uv = _uv()
        env = {**os.environ, "VIRTUAL_ENV": str(venv), "UV_NO_PROGRESS": "1"}
        subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True, env=env)
        constraints = venv / "constraints.txt"
        constraints.write_text(TORCH_PIN + "\n")
        command = [uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), "-c", str(constraints)]
        if LOCAL_WHEELS.is_dir():
            command += ["--find-links", str(LOCAL_WHEELS)]
        for path in files:
            path = Path(path)
            command += ["-r", str(path)] if path.suffix == ".txt" else [str(path)]
        result = subprocess.run(command + requirements, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"clean venv for {requirements} {list(files)} failed:\n{result.stderr[-3000:]}")
        (venv / _READY).write_text("\n".join(requirements) + "\n")
        return venv


def clean_env(home, **extra):
    """Environment for a process in a clean venv: offline, its own HF cache, no PYTHONPATH into this checkout."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "HF_HOME": str(Path(home) / "hf_home"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "PYTHONNOUSERSITE": "1",
    }
    env.update(extra)
    return env


def run_clean(venv, code, *, cwd, args=(), timeout=600, env=None):
    """Run Python `code` in `venv` from `cwd` (an empty folder outside this checkout). Returns the
    CompletedProcess; raises with its output if it fails."""
    cwd = Path(cwd)
    cwd.mkdir(parents=True, exist_ok=True)
    if cwd.resolve().is_relative_to(ROOT):
        raise ValueError(f"run clean-room code outside the checkout, not in {cwd}")
    result = subprocess.run(
        [str(Path(venv) / "bin" / "python"), "-c", code, *map(str, args)],
        cwd=cwd, env=env or clean_env(cwd), capture_output=True, text=True, timeout=timeout,
    )
    if result.returncode != 0:
        raise AssertionError(f"clean-room run failed (exit {result.returncode}):\n{result.stdout[-2000:]}\n"
                             f"{result.stderr[-4000:]}")
    return result


def assert_project_absent(venv, tmp_path):
    """The clean venv cannot import any of this project's packages."""
    probe = (
        "import importlib.util as u\n"
        "found = [m for m in ('modeling_stepcot', 'trainers', 'dataset_script', 'model_cards') if u.find_spec(m)]\n"
        "assert not found, found\n"
    )
    run_clean(venv, probe, cwd=tmp_path / "probe")
