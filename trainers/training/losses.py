"""Step-CoT distillation losses (paper App. D.4), per step over the examples whose label is present.

- CE: `modeling_stepcot.masked_step_cross_entropy` (optionally inverse-frequency class weights).
- KD: KL(softmax(t/T) || softmax(s/T)) * T^2, batch mean.
- CH: teacher and student features projected to a common width, softmax over the feature dimension (temperature
  T), Gram matrices K = F F^T, centred HSIC h(A, B) = sum((HAH) * (HBH)) with H = I - 11^T/n, weight
  w = h(K_t, K_s) / sqrt(h(K_t, K_t) h(K_s, K_s)), CH = w * KL(k_t || k_s) batch mean. w is treated as a weight
  (no gradient through it, as an importance weight: otherwise the student could lower the loss by making the two
  similarity structures *differ*, the opposite of the term's intent). The teacher side is a fixed target: its
  features are detached and its projection is frozen (see `StepCoTDistillationPair`).
  Documented deviation (within the paper's latitude, which leaves the projections' scale open): by default each
  projected vector is standardised (zero mean, unit variance over its features; a LayerNorm without parameters)
  before the softmax. Without it, a 256-wide projection from a 0.02-std init gives a softmax at T = 2 that is
  ~99.7 % of the maximum entropy: a near-uniform target that carries almost no information, and a gradient that
  shrinks with the projections' scale. `standardize=False` is the paper as written.
"""

import torch
import torch.nn.functional as F

from modeling_stepcot import IGNORE_INDEX, masked_step_cross_entropy


def kd_loss(student_logits, teacher_logits, temperature):
    """Soft-label KD for one step: KL(teacher || student) on temperature-softened logits, times T^2, batch mean.
    The teacher side is detached. An empty batch gives 0."""
    if student_logits.shape[0] == 0:
        return student_logits.sum() * 0.0
    teacher_log_probs = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    student_log_probs = F.log_softmax(student_logits / temperature, dim=-1)
    kl = F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)
    return kl * temperature**2


def centred_hsic(gram_a, gram_b):
    """h(A, B) = sum((H A H) * (H B H)) with H = I - 11^T / n."""
    n = gram_a.shape[0]
    centring = torch.eye(n, device=gram_a.device, dtype=gram_a.dtype) - 1.0 / n
    return ((centring @ gram_a @ centring) * (centring @ gram_b @ centring)).sum()


def hsic_weight(teacher_soft, student_soft, eps=1e-12):
    """Alignment of the teacher's and student's inter-example similarity structures (CKA-like, in [0, 1])."""
    gram_t = teacher_soft @ teacher_soft.T
    gram_s = student_soft @ student_soft.T
    denominator = torch.sqrt(centred_hsic(gram_t, gram_t) * centred_hsic(gram_s, gram_s))
    if float(denominator) < eps:
        return torch.zeros((), device=teacher_soft.device, dtype=teacher_soft.dtype)
    return centred_hsic(gram_t, gram_s) / denominator


def relation_distribution(projected, temperature, standardize=True):
    """Per-example distribution over the projected features: softmax(z / T), z standardised first by default."""
    if standardize:
        projected = F.layer_norm(projected, projected.shape[-1:])
    return F.softmax(projected / temperature, dim=-1)


def ch_loss(teacher_projected, student_projected, temperature, standardize=True):
    """Channel/relation loss for one step on already projected features (n, d). Needs >= 2 examples, else 0."""
    if teacher_projected.shape[0] < 2:
        return student_projected.sum() * 0.0
    teacher_soft = relation_distribution(teacher_projected, temperature, standardize)
    student_soft = relation_distribution(student_projected, temperature, standardize)
    weight = hsic_weight(teacher_soft.detach(), student_soft.detach())
    kl = F.kl_div(torch.log(student_soft + 1e-12), teacher_soft, reduction="batchmean")
    return weight * kl


def inverse_frequency_class_weights(labels, num_classes_per_step):
    """Per step, weight_c = n_valid / (n_classes * count_c) (sklearn's "balanced"); unseen classes get weight 1."""
    weights = []
    for step, num_classes in enumerate(num_classes_per_step):
        column = labels[:, step]
        column = column[column != IGNORE_INDEX]
        counts = torch.bincount(column, minlength=num_classes).float()
        weight = torch.where(counts > 0, column.numel() / (num_classes * counts.clamp(min=1)), torch.ones_like(counts))
        weights.append(weight)
    return weights


def distillation_losses(
    teacher_step_logits,
    student_step_logits,
    labels,
    teacher_projected,
    student_projected,
    *,
    temperature=2.0,
    alpha_kd=0.5,
    alpha_ch=1.0,
    class_weights=None,
    ch_standardize=True,
    label_smoothing=0.0,
):
    """All loss terms of one batch. Returns a dict of scalars: `teacher_ce`, `student_ce`, `kd`, `ch` (each summed
    over steps), and `student` = student_ce + alpha_kd * kd + alpha_ch * ch. Teacher logits and teacher features
    are targets (detached). `teacher_projected` is (n, d), or (n, steps, d) with one teacher feature per step (the
    teacher's step-specific image projections); `student_projected` is (n, d)."""
    teacher_ce = masked_step_cross_entropy(teacher_step_logits, labels, class_weights, label_smoothing).sum()
    student_ce = masked_step_cross_entropy(student_step_logits, labels, class_weights, label_smoothing).sum()
    kd_terms, ch_terms = [], []
    for step, (teacher_logits, student_logits) in enumerate(zip(teacher_step_logits, student_step_logits)):
        valid = labels[:, step] != IGNORE_INDEX
        kd_terms.append(kd_loss(student_logits[valid], teacher_logits[valid], temperature))
        teacher_features = teacher_projected[:, step] if teacher_projected.dim() == 3 else teacher_projected
        ch_terms.append(ch_loss(teacher_features[valid], student_projected[valid], temperature, ch_standardize))
    kd = torch.stack(kd_terms).sum()
    ch = torch.stack(ch_terms).sum()
    return {
        "teacher_ce": teacher_ce,
        "student_ce": student_ce,
        "kd": kd,
        "ch": ch,
        "student": student_ce + alpha_kd * kd + alpha_ch * ch,
    }
