"""Bytes a `stepcot train` run writes, and the size of one per-epoch checkpoint (lean checkpoints).

Runs `trainers.run_distill.main` in a child process from the source tree `--tree` (this checkout by default; point
it at an export of an older commit to compare) and reads the child's `wchar` from /proc (bytes passed to write
calls: also counts on tmpfs, where `write_bytes` stays 0). Arguments after `--` go to the training script.

    python benchmarks/checkpoint_bytes.py --label after -- --output_dir /tmp/run --num_train_epochs 2
    git archive OLD | tar -x -C /tmp/old && python benchmarks/checkpoint_bytes.py --tree /tmp/old --label before -- ...
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
from trainers.run_distill import main
code = main(sys.argv[3:])
io = dict(line.split(": ") for line in open("/proc/self/io").read().split("\\n") if line)
print("BYTES " + json.dumps({"code": code, "wchar": int(io["wchar"]), "write_bytes": int(io["write_bytes"])}))
"""


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", default=str(Path(__file__).resolve().parents[1]), help="source tree to run")
    parser.add_argument("--label", default="run")
    parser.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    args, train_args = parser.parse_known_args(argv)
    train_args = [a for a in train_args if a != "--"]
    output_dir = Path(train_args[train_args.index("--output_dir") + 1])
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", CHILD, args.tree, "--", *train_args], capture_output=True,
                            text=True)
    seconds = time.perf_counter() - start
    lines = [line for line in result.stdout.splitlines() if line.startswith("BYTES ")]
    if result.returncode or not lines:
        sys.exit(f"training failed ({result.returncode}): {result.stderr[-2000:]}")
    measured = json.loads(lines[-1][len("BYTES "):])
    checkpoints = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    record = {
        "label": args.label, "args": train_args, "seconds": round(seconds, 1),
        "bytes_written": measured["wchar"],
        "checkpoint_bytes": folder_bytes(checkpoints[-1]) if checkpoints else 0,
        "export_bytes": sum(folder_bytes(output_dir / role) for role in ("teacher", "student")),
    }
    print(json.dumps(record))
    if args.json:
        with open(args.json, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
