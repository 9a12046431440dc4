"""Distillation under DDP (accelerate, gloo on CPU): two processes at half the per-device batch train the same
weights as one process at the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys
sys.path.insert(0, sys.argv[2])
sys.path.insert(0, sys.argv[2] + "/tests")
from safetensors.torch import save_file
from test_distillation import learnable_dataset, make_pair, trainer_for
per_device = int(sys.argv[3])
pair = make_pair(dropout=False)  # no dropout: the ranks' RNG streams differ
trainer = trainer_for(pair, learnable_dataset(64, missing=False), sys.argv[1] + "/run", max_steps=6,
                      per_device_train_batch_size=per_device, alpha_ch=0.0,  # CH relates examples within a rank
                      optim="sgd",  # AdamW divides by sqrt(v): float noise in near-zero gradients flips updates
                      teacher_learning_rate=0.1, student_learning_rate=0.1, ddp_find_unused_parameters=False)
trainer.train()
if trainer.is_world_process_zero():
    save_file({k: v.contiguous() for k, v in pair.state_dict().items()}, sys.argv[1] + "/weights.safetensors")
trainer.accelerator.end_training()
"""


@pytest.mark.slow
@pytest.mark.usefixtures("one_multiprocess_launch_at_a_time")
def test_two_processes_train_what_one_process_trains_at_the_same_global_batch(tmp_path):
    from safetensors.torch import load_file
    from test_distillation import make_pair

    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO_ROOT))
    one, two = tmp_path / "one", tmp_path / "two"
    commands = [
        [sys.executable, str(script), str(one), str(REPO_ROOT), "8"],
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29547",
         str(script), str(two), str(REPO_ROOT), "4"],
    ]
    for command in commands:
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    single, distributed = load_file(one / "weights.safetensors"), load_file(two / "weights.safetensors")
    initial = make_pair(dropout=False).state_dict()
    moved = max(float((single[k] - initial[k]).abs().max()) for k in single)
    assert moved > 1e-3  # training changed the weights
    differences = {k: float((single[k] - distributed[k]).abs().max()) for k in single}
    worst = max(differences, key=differences.get)
    assert differences[worst] < 1e-5, (worst, differences[worst], moved)
