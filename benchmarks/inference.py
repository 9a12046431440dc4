"""Inference cost of the Step-CoT teacher and student against the bare vision encoder (paper's Table 11 sizes).

A thin wrapper around `trainers.paper.efficiency` (also `stepcot bench-efficiency`, which adds the baselines and CUDA):
random weights at the paper's shapes, CLIP ViT-B/32 image tower (+projection), BERT-base question encoder, teacher
hidden 768, student hidden 512, each model measured in its own subprocess so the peak resident memory is its own.

    python benchmarks/inference.py [--batch-size 32] [--repeats 5] [--out benchmarks/inference.json]

Targets: teacher <= 1.3x and student <= 1.05x the bare vision encoder's time per batch.

`--predict-vs-eval MODEL --dataset BUILT` measures instead, side by side in one process on the same loaded model,
the time per image of `stepcot eval`'s prediction loop (`evaluate_model.predict`, images from the split's Parquet
rows, batch 32) and of `stepcot predict`'s (`predict_images` over the same images written as PNG files, the
command's default batch), alternating which runs first; target: predict <= 1.2x eval per image.

    python benchmarks/inference.py --predict-vs-eval outputs/demo/teacher --dataset outputs/demo/dataset
"""

import argparse
import json

import torch

from trainers.paper.efficiency import environment, measure_all

MODELS = ("vision_encoder", "teacher", "student")
TARGETS = {"teacher": 1.3, "student": 1.05}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--predict-vs-eval", metavar="MODEL", help="time predict against eval on this model")
    parser.add_argument("--dataset", help="with --predict-vs-eval: a built dataset folder")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    if args.predict_vs_eval:
        return predict_vs_eval(args.predict_vs_eval, args.dataset, args.split, args.repeats)

    rows = measure_all(MODELS, batch_size=args.batch_size, repeats=args.repeats, device="cpu")
    header = list(rows[0])
    print(environment("cpu"))
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(row[key]) for key in header) + " |")
    ratios = {row["model"]: row["x_vision_encoder"] for row in rows}
    print(f"teacher {ratios['teacher']}x (target <= {TARGETS['teacher']}), student {ratios['student']}x "
          f"(target <= {TARGETS['student']}) the bare encoder per batch")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"device": "cpu", "torch": torch.__version__, "rows": rows}, handle, indent=2)


def predict_vs_eval(model_dir: str, dataset: str, split: str, repeats: int) -> None:
    import statistics
    import tempfile
    import time
    from pathlib import Path

    from trainers.evaluation.evaluate_model import ImagePreprocessor, load_split, predict
    from trainers.inference.predict import build_pipeline, check_images, expand_images, predict_images
    from trainers.model_loading import load_model

    data, split = load_split(dataset, split)
    folder = Path(tempfile.mkdtemp(prefix="stepcot-predict-bench-"))
    for index, image in enumerate(data["image"]):
        image.save(folder / f"{index:05d}.png")
    paths = expand_images([str(folder)])
    model = load_model(model_dir)
    preprocess = ImagePreprocessor(model_dir, model.config)
    pipe = build_pipeline(model)

    def run_eval():
        predict(model, data, preprocess, 32, "cpu")

    def run_predict():
        check_images(paths)
        predict_images(pipe, paths)  # `stepcot predict`'s default batch

    times = {"eval": [], "predict": []}
    for repeat in range(repeats):
        order = (("eval", run_eval), ("predict", run_predict))
        for name, function in order if repeat % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            function()
            times[name].append((time.perf_counter() - start) / len(paths))
    per_image = {name: statistics.median(values) for name, values in times.items()}
    print(environment("cpu"))
    print(f"{model_dir} on {len(paths)} {split} images, median of {repeats} (alternating order), torch threads "
          f"{torch.get_num_threads()}")
    print(f"eval {1000 * per_image['eval']:.1f} ms/image, predict {1000 * per_image['predict']:.1f} ms/image: "
          f"predict/eval {per_image['predict'] / per_image['eval']:.2f} (target <= 1.2)")


if __name__ == "__main__":
    main()
