"""Pictures of the stepwise maps (the paper's Fig. 4): each step's Grad-CAM overlaid on the radiograph, one PNG per
step plus a summary panel. The maps themselves come from the `stepcot-vqa` pipeline (`maps=True`)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

from modeling_stepcot.processing_stepcot import image_to_8bit

# Figures are drawn with this many pixels on the long side: readable titles for small inputs, fast for 2,000 px
# radiographs.
FIGURE_MAX_SIDE = 512
FIGURE_MIN_SIDE = 384
OVERLAY_ALPHA = 0.55
COLORMAP = "jet"


def colormap(name: str = COLORMAP):
    import matplotlib

    return matplotlib.colormaps[name]


def overlay(image_rgb: np.ndarray, saliency: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Blend a colour-mapped saliency map (H, W) in [0, 1] into an RGB uint8 image (H, W, 3); the colour's weight
    grows with the saliency, so unremarkable regions keep the radiograph's grey values."""
    if image_rgb.shape[:2] != saliency.shape:
        raise ValueError(f"image {image_rgb.shape[:2]} and saliency {saliency.shape} differ in size")
    heat = colormap()(np.clip(saliency, 0, 1))[..., :3]
    weight = alpha * np.clip(saliency, 0, 1)[..., None]
    blended = (1 - weight) * (image_rgb.astype(np.float32) / 255.0) + weight * heat
    return (np.clip(blended, 0, 1) * 255).round().astype(np.uint8)


def figure_image(image, max_side: int = FIGURE_MAX_SIDE, min_side: int = FIGURE_MIN_SIDE) -> np.ndarray:
    """The radiograph as RGB uint8, resized into [min_side, max_side] (long side) for drawing."""
    if isinstance(image, (str, Path)):
        image = Image.open(image)
    image = image_to_8bit(image).convert("RGB")
    scale = min(max(1.0, min_side / max(image.size)), max_side / max(image.size))
    if scale != 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.BILINEAR)
    return np.asarray(image)


def _resize_map(saliency: np.ndarray, shape) -> np.ndarray:
    if saliency.shape == tuple(shape):
        return saliency
    resized = Image.fromarray(saliency.astype(np.float32), mode="F").resize((shape[1], shape[0]), Image.BILINEAR)
    return np.clip(np.asarray(resized), 0, 1)


def figure_and_maps(image, result: dict) -> tuple[np.ndarray, list[np.ndarray]]:
    """The radiograph resized for drawing (`figure_image`) and the result's per-step maps at that size."""
    if "maps" not in result:
        raise ValueError("the result has no maps: call the pipeline with maps=True")
    picture = figure_image(image)
    return picture, [_resize_map(m, picture.shape[:2]) for m in result["maps"]]


def step_title(step: dict) -> str:
    if step.get("trained") is False:
        return f"{step['step']}. {step['name']}: unknown (not trained)"
    title = f"{step['step']}. {step['name']}: {step['answer']} (p = {step['score']:.2f})"
    if step["is_na"]:
        title += "\nmap: evidence for N/A"
    return title


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def save_step_maps(image, result: dict, out_dir, dpi: int = 100) -> dict:
    """Write `step{n}_{name}.png` for each step and `summary.png` (the radiograph and all seven maps, with the
    chain) into `out_dir`. `result` is one output of the pipeline called with `maps=True`. Returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    picture, maps = figure_and_maps(image, result)
    height, width = picture.shape[:2]
    paths = {"steps": []}
    for step, saliency in zip(result["steps"], maps):
        figure = plt.figure(figsize=(width / dpi, height / dpi + 0.55), dpi=dpi)
        axes = figure.add_axes((0, 0, 1, height / (height + 0.55 * dpi)))
        axes.imshow(overlay(picture, saliency))
        axes.set_axis_off()
        title = "\n".join(line for part in step_title(step).split("\n")
                          for line in textwrap.wrap(part, max(20, width // 6)))
        figure.suptitle(title, fontsize=8, y=0.995, va="top")
        path = out_dir / f"step{step['step']}_{_slug(step['name'])}.png"
        figure.savefig(path, dpi=dpi)
        plt.close(figure)
        paths["steps"].append(path)

    panels = [("Input", picture)] + [(step_title(s), overlay(picture, m)) for s, m in zip(result["steps"], maps)]
    columns = 4
    rows = int(np.ceil(len(panels) / columns))
    figure, grid = plt.subplots(rows, columns, figsize=(columns * 3.0, rows * 3.3 + 0.8), dpi=dpi)
    for axes, (title, picture_panel) in zip(grid.flat, panels):
        axes.imshow(picture_panel, cmap="gray")
        axes.set_title(title, fontsize=7)
    for axes in grid.flat:
        axes.set_axis_off()
    chain = result.get("chain", "")
    if not result.get("is_consistent", True):
        chain += "   [inconsistent: " + ", ".join(v["rule"] for v in result["violations"]) + "]"
    figure.suptitle("\n".join(textwrap.wrap(chain, 150)), fontsize=7)
    figure.tight_layout(rect=(0, 0, 1, 0.95))
    paths["summary"] = out_dir / "summary.png"
    figure.savefig(paths["summary"], dpi=dpi)
    plt.close(figure)
    return paths


__all__ = ["figure_and_maps", "figure_image", "overlay", "save_step_maps", "step_title"]
