"""A compact Vision Transformer for small images (CIFAR 32×32, (Fashion-)MNIST 28×28).

Layout (pre-norm, as ViT / DeiT)::

    patch_embed  Conv2d(C, dim, kernel=stride=patch_size)   image -> (H/p)·(W/p) tokens
    [cls_token]  only with pool="cls"
    pos_embed    learned, one vector per token
    blocks.i     x + attn(norm1(x)); x + mlp(norm2(x))
                 attn: qkv Linear(dim, 3·dim) -> F.scaled_dot_product_attention -> proj Linear(dim, dim)
                 mlp:  fc1 Linear(dim, mlp_ratio·dim) -> act nn.GELU -> fc2 Linear(., dim)
    norm         LayerNorm
    pool         "mean": average over the tokens (default) | "cls": the class token
    head         Linear(dim, K)

Why these choices: attention uses its own ``qkv``/``proj`` Linear modules (not
``nn.MultiheadAttention``, whose packed ``in_proj_weight`` is not a Linear), so every weight
matrix of a block is a plain prunable Linear whose FLOPs :mod:`dsd2.flops` attributes and scales
by its density. Mean pooling is the default because it needs no extra parameter and trains as
well as a class token on small data. Each block has its own ``nn.GELU`` module, so the activation
entropy has one layer per block, ``blocks.<i>.mlp.act`` (a unit = one token × one hidden
channel; ON = GELU output > 0 ⇔ pre-activation > 0, :mod:`dsd2.entropy`).

Pruning: every Conv/Linear weight is prunable (:func:`dsd2.models.prunable_weights`). A ``vit``
config keeps the patch embedding (the model's first conv: ``prune.exclude_first_conv=true``)
and the head (``prune.include_classifier=false``) dense unless it says otherwise (the model's
defaults, :data:`dsd2.layer_defaults.MODEL_PRUNE_DEFAULTS`), so only the attention and MLP
Linears are pruned. Biases, LayerNorms, ``pos_embed`` and ``cls_token`` are never pruned.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsd2.errors import UserError
from dsd2.models.registry import register_model

Pool = Literal["mean", "cls"]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, d)))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, hidden, dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        input_size: int,
        *,
        patch_size: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        dropout: float,
        pool: Pool,
    ) -> None:
        super().__init__()
        self.pool = pool
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        tokens = (input_size // patch_size) ** 2 + (pool == "cls")
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pool == "cls" else None
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))
        self.drop = nn.Dropout(dropout)
        hidden = max(1, round(mlp_ratio * dim))
        self.blocks = nn.Sequential(*(Block(dim, heads, hidden, dropout) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # ViT/DeiT's initialisation: truncated normal (std 0.02) for Linears and embeddings
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # N x tokens x dim
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.norm(self.blocks(self.drop(x + self.pos_embed)))
        return self.head(x[:, 0] if self.cls_token is not None else x.mean(dim=1))


@register_model("vit", input_shape=(3, 32, 32))
def vit(
    num_classes: int,
    in_channels: int,
    input_size: int,
    patch_size: int = 4,
    dim: int = 192,
    depth: int = 12,
    heads: int = 3,
    mlp_ratio: float = 4.0,
    dropout: float = 0.0,
    pool: Pool = "mean",
) -> nn.Module:
    """Compact ViT: ``(input_size/patch_size)**2`` tokens of width ``dim``, ``depth`` pre-norm
    blocks with ``heads`` heads and an MLP of ``mlp_ratio·dim`` hidden units; mean-pooled (or
    class-token) head. Defaults: DeiT-Tiny's widths on 4×4 patches (64 tokens for 32×32, ~5.4 M parameters)."""
    name = "model 'vit'"
    for option, value in (("patch_size", patch_size), ("dim", dim), ("depth", depth), ("heads", heads)):
        if value < 1:
            raise UserError(f"{name}: {option} must be a positive integer, got {value}.")
    if input_size % patch_size:
        divisors = [p for p in range(1, input_size + 1) if input_size % p == 0]
        raise UserError(
            f"{name}: input_size={input_size} is not a multiple of patch_size={patch_size}; "
            f"use one of {', '.join(map(str, divisors))} (e.g. 4 for 32×32 and 28×28)."
        )
    if dim % heads:
        raise UserError(f"{name}: dim={dim} must be a multiple of heads={heads} (each head gets dim/heads channels).")
    if mlp_ratio <= 0:
        raise UserError(f"{name}: mlp_ratio must be > 0, got {mlp_ratio}.")
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"{name}: dropout must be in [0, 1), got {dropout}.")
    return ViT(
        num_classes,
        in_channels,
        input_size,
        patch_size=patch_size,
        dim=dim,
        depth=depth,
        heads=heads,
        mlp_ratio=mlp_ratio,
        dropout=dropout,
        pool=pool,
    )
