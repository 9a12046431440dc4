"""Building blocks of the Step-CoT teacher: the graph-attention layer over the step question nodes and the per-step
classification head.

This file ships inside every checkpoint (remote code) next to `modeling_stepcot.py`: it imports only torch and its
sibling `configuration_stepcot`.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_stepcot import StepCoTConfig


class StepCoTGATLayer(nn.Module):
    """Multi-head graph attention over a fully connected node set, then residual projection, LayerNorm, ELU.

    score_ij = LeakyReLU(a_src . W h_i + a_dst . W h_j), alpha_ij = softmax_j(score_ij),
    h'_i = ||_heads sum_j alpha_ij W h_j.
    """

    def __init__(self, config: StepCoTConfig):
        super().__init__()
        self.num_heads = config.gat_num_heads
        self.head_dim = config.hidden_size // config.gat_num_heads
        self.projection = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.attention_source = nn.Parameter(torch.empty(self.num_heads, self.head_dim))
        self.attention_target = nn.Parameter(torch.empty(self.num_heads, self.head_dim))
        self.leaky_relu = nn.LeakyReLU(config.gat_negative_slope)
        self.attention_dropout = nn.Dropout(config.gat_attention_dropout)
        self.residual = nn.Linear(config.hidden_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size)

    def forward(self, nodes):
        batch, num_nodes, _ = nodes.shape
        projected = self.projection(nodes).view(batch, num_nodes, self.num_heads, self.head_dim)
        source_scores = (projected * self.attention_source).sum(-1)  # (B, N, heads)
        target_scores = (projected * self.attention_target).sum(-1)
        scores = self.leaky_relu(source_scores.unsqueeze(2) + target_scores.unsqueeze(1))  # (B, i, j, heads)
        attention = scores.softmax(dim=2).permute(0, 3, 1, 2)  # (B, heads, i, j)
        mixed = self.attention_dropout(attention) @ projected.transpose(1, 2)  # (B, heads, N, head_dim)
        mixed = mixed.transpose(1, 2).reshape(batch, num_nodes, -1)
        return F.elu(self.layer_norm(mixed + self.residual(nodes))), attention


class StepCoTStepHead(nn.Module):
    """MLP over [projected image ; step context] and a linear classifier for one step's options."""

    def __init__(self, config: StepCoTConfig, num_classes: int):
        super().__init__()
        hidden = config.hidden_size
        self.mlp = nn.Sequential(
            nn.Linear(2 * hidden, hidden),
            nn.LayerNorm(hidden),
            nn.ReLU(),
            nn.Dropout(config.classifier_dropout),
            nn.Linear(hidden, hidden),
            nn.LayerNorm(hidden),
            nn.ReLU(),
            nn.Dropout(config.classifier_dropout),
        )
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, image_features, context):
        return self.classifier(self.mlp(torch.cat([image_features, context], dim=-1)))


__all__ = ["StepCoTGATLayer", "StepCoTStepHead"]
