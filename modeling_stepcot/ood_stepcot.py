"""Out-of-distribution check on the image embedding: the training embeddings' statistics that
`config.embedding_statistics` holds, a split-conformal threshold on held-out distances, and the flag the
`stepcot-vqa` pipeline reports for an image.

This file ships inside checkpoints (remote code) with `pipeline_stepcot.py`: it imports only numpy.
"""

import math

import numpy as np

OOD_QUANTILE = 0.99


def embedding_distance(embeds, statistics) -> np.ndarray:
    """Root-mean-square z-score of each embedding (rows of `embeds`) against the training embeddings' per-dimension
    mean and scale: about 1 for a typical training image, larger the further an image lies from them."""
    embeds = np.asarray(embeds, dtype=np.float64)
    mean = np.asarray(statistics["mean"], dtype=np.float64)
    scale = np.asarray(statistics["scale"], dtype=np.float64)
    if embeds.shape[-1] != mean.shape[0]:
        raise ValueError(f"embedding width {embeds.shape[-1]} does not match the recorded statistics "
                         f"({mean.shape[0]})")
    return np.sqrt(np.mean(((embeds - mean) / scale) ** 2, axis=-1))


def embedding_mean_and_scale(train_embeds) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and scale (standard deviation, floored) of training embeddings (N, D), N >= 2."""
    train = np.asarray(train_embeds, dtype=np.float64)
    if train.ndim != 2 or train.shape[0] < 2:
        raise ValueError(f"need at least 2 training embeddings (N, D), got shape {train.shape}")
    spread = train.std(0)
    # A near-constant dimension (e.g. on small or synthetic sets) would turn rounding noise into huge z-scores.
    return train.mean(0), np.maximum(spread, 0.1 * np.median(spread) + 1e-12)


def embedding_statistics(train_embeds, reference_embeds=None, quantile: float = OOD_QUANTILE) -> dict:
    """What `config.embedding_statistics` holds: the training embeddings' per-dimension mean and scale, and the
    threshold above which an image is flagged: the conformal `quantile` (`conformal_threshold`) of the distances of
    `reference_embeds` (held-out images the model did not train on, the validation split; the training images
    themselves when None, which lie closer than unseen images and flag too many)."""
    train = np.asarray(train_embeds, dtype=np.float64)
    mean, scale = embedding_mean_and_scale(train)
    statistics = {"mean": mean.tolist(), "scale": scale.tolist()}
    reference = train if reference_embeds is None or len(reference_embeds) == 0 else reference_embeds
    distances = embedding_distance(reference, statistics)
    threshold, false_flag_rate = conformal_threshold(distances, quantile)
    statistics.update(threshold=threshold, quantile=quantile, expected_false_flag_rate=false_flag_rate,
                      reference="validation" if reference is not train else "train",
                      num_reference=int(len(distances)), num_train=int(train.shape[0]))
    return statistics


def conformal_threshold(distances, quantile: float = OOD_QUANTILE) -> tuple[float, float]:
    """(threshold, expected false-flag rate): the k-th smallest of n held-out distances, k = ceil((n + 1) q), so
    that a new image exchangeable with them lies above it with probability 1 - k / (n + 1) <= 1 - q (split
    conformal); with too few distances for that rank (k > n), the largest, flagged with probability 1 / (n + 1)."""
    ordered = np.sort(np.asarray(distances, dtype=np.float64))
    n = len(ordered)
    rank = min(n, math.ceil((n + 1) * quantile))
    return float(ordered[rank - 1]), 1.0 - rank / (n + 1)


def out_of_distribution(distance: float, statistics) -> dict:
    """{distance, threshold, quantile, flagged} for one image's embedding distance."""
    threshold = float(statistics["threshold"])
    return {"distance": float(distance), "threshold": threshold, "quantile": float(statistics.get("quantile", 0)),
            "flagged": bool(distance > threshold)}


__all__ = ["OOD_QUANTILE", "conformal_threshold", "embedding_distance", "embedding_statistics", "out_of_distribution"]
