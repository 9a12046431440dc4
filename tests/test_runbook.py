"""The multi-machine and GPU runbooks stay runnable: the accelerate configs load, and `benchmarks/gpu.sh` runs end to
end on CPU with tiny shapes (DRY_RUN=1) and writes its Markdown report."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_accelerate_configs_load():
    from accelerate.commands.config.config_args import ClusterConfig

    configs = {path.stem: ClusterConfig.from_yaml_file(str(path))
               for path in sorted((REPO_ROOT / "configs" / "accelerate").glob("*.yaml"))}
    assert set(configs) == {"multi_gpu", "multi_node", "cpu_2proc"}
    assert configs["multi_node"].num_machines == 2 and configs["multi_node"].num_processes == 16
    assert configs["cpu_2proc"].use_cpu and configs["cpu_2proc"].num_processes == 2
    assert all(config.mixed_precision == "no" for config in configs.values())  # precision comes from --bf16


@pytest.mark.slow
def test_gpu_runbook_dry_run_writes_the_report(tmp_path):
    env = dict(os.environ, DRY_RUN="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHON=sys.executable)
    result = subprocess.run(["bash", str(REPO_ROOT / "benchmarks" / "gpu.sh"), str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    report = (tmp_path / "gpu.md").read_text()
    assert "## Paper Table 11" in report and "22.81 ms/sample" in report
    assert all(f"| {model} |" in report or f"| {model} " in report for model in ("teacher", "student"))
    recipe = json.loads((tmp_path / "paper_recipe_fp32.json").read_text())
    assert recipe["tiny"] and recipe["updates"] == 4 and recipe["checkpoint_mib"] > 0  # 64 samples, 2 epochs of 2
