"""The shipped `accelerate` configs do what their comments say: each loads with accelerate's own reader, and each
CPU config, launched with `accelerate launch --config_file`, starts the processes it names as one gloo group."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from local_ports import free_port, port_was_taken

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO_ROOT / "configs" / "accelerate").glob("*.yaml"))

PROBE = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
from trainers.training.distillation_config import StepCoTDistillationConfig

config = StepCoTDistillationConfig(output_dir={out!r})
state = config.distributed_state
# one file per rank: the ranks' stdout lines interleave
Path({out!r}, f"rank-{{config.process_index}}.txt").write_text(
    f"RANK {{config.process_index}} WORLD {{config.world_size}} TYPE {{state.distributed_type.value}} "
    f"BACKEND {{state.backend}}")
"""


def _load(path):
    from accelerate.commands.config.config_args import load_config_from_file

    return load_config_from_file(str(path))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_its_comment_names_its_process_count(path):
    config = _load(path)
    comment = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    assert config.num_processes > 1 and config.distributed_type.value == "MULTI_GPU"  # the launcher's multi-process
    if config.use_cpu:
        assert re.search(rf"\b{['', 'One', 'Two', 'Three', 'Four'][config.num_processes]} processes", comment)
    else:  # "One machine, 8 GPUs" / "Two machines x 8 GPUs (num_processes counts all of them)"
        per_machine = config.num_processes // config.num_machines
        assert re.search(rf"\b{per_machine} GPUs", comment), comment


@pytest.mark.slow
@pytest.mark.usefixtures("one_multiprocess_launch_at_a_time")
@pytest.mark.parametrize("path", [p for p in CONFIGS if _load(p).use_cpu], ids=lambda p: p.name)
def test_cpu_config_launches_its_processes_as_one_gloo_group(path, tmp_path):
    script = tmp_path / "probe.py"
    (tmp_path / "out").mkdir()
    script.write_text(PROBE.format(root=str(REPO_ROOT), out=str(tmp_path / "out")))
    accelerate = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([str(accelerate), "launch", "--config_file", str(path), str(script)],
                            capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = sorted(path.read_text() for path in (tmp_path / "out").glob("rank-*.txt"))
    processes = _load(path).num_processes
    assert lines == [f"RANK {rank} WORLD {processes} TYPE MULTI_CPU BACKEND gloo" for rank in range(processes)]


MULTI_NODE_PROBE = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
import torch
import torch.distributed as dist
from trainers.training.distillation_config import StepCoTDistillationConfig

config = StepCoTDistillationConfig(output_dir={out!r})
state = config.distributed_state
total = torch.tensor([config.process_index + 1.0])
dist.all_reduce(total)  # a collective across the two launches
Path({out!r}, f"rank-{{config.process_index}}.txt").write_text(
    f"RANK {{config.process_index}} WORLD {{config.world_size}} TYPE {{state.distributed_type.value}} "
    f"BACKEND {{state.backend}} SUM {{total.item()}}")
"""


@pytest.mark.slow
@pytest.mark.usefixtures("one_multiprocess_launch_at_a_time")
def test_the_multi_node_config_runs_as_two_machines_on_loopback(tmp_path):
    """A CPU dry run of configs/accelerate/multi_node.yaml: the same command twice, --machine_rank 0 and 1, one
    process per 'machine' (--num_processes 2 counts both), rendezvous on 127.0.0.1: one gloo group of world size 2
    whose all-reduce spans both launches."""
    path = REPO_ROOT / "configs" / "accelerate" / "multi_node.yaml"
    assert _load(path).num_machines == 2
    script = tmp_path / "probe.py"
    (tmp_path / "out").mkdir()
    script.write_text(MULTI_NODE_PROBE.format(root=str(REPO_ROOT), out=str(tmp_path / "out")))
    for _ in range(3):  # the rendezvous port can be taken between choosing and binding it: choose again
        outcomes = _launch_two_machines(path, script, tmp_path)
        if not any(code != 0 and port_was_taken(stderr) for code, stderr in outcomes):
            break
    for rank, (returncode, stderr) in enumerate(outcomes):
        assert returncode == 0, f"machine_rank {rank} exited {returncode}: {stderr[-3000:]}"
    lines = sorted(path.read_text() for path in (tmp_path / "out").glob("rank-*.txt"))
    assert lines == [f"RANK {rank} WORLD 2 TYPE MULTI_CPU BACKEND gloo SUM 3.0" for rank in (0, 1)]


def _launch_two_machines(config, script, cwd) -> list[tuple[int, str]]:
    """`accelerate launch` of `script` as machine_rank 0 and 1 rendezvousing on a fresh loopback port; (exit
    code, stderr) of each. A launch that fails leaves its peer waiting at the rendezvous: both are stopped then."""
    accelerate = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    port = str(free_port())
    launches = [subprocess.Popen([str(accelerate), "launch", "--config_file", str(config), "--machine_rank", str(rank),
                                  "--main_process_ip", "127.0.0.1", "--main_process_port", port,
                                  "--num_processes", "2", str(script)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
                for rank in (0, 1)]
    deadline = time.monotonic() + 300
    while any(launch.poll() is None for launch in launches) and time.monotonic() < deadline:
        if any(launch.poll() not in (None, 0) for launch in launches):
            break
        time.sleep(0.2)
    for launch in launches:
        if launch.poll() is None:
            launch.kill()
    return [(launch.wait(), launch.communicate()[1]) for launch in launches]
