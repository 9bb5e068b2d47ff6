"""Copy qkv weights into the ``torch.nn`` reference modules.

``torch.nn.MultiheadAttention`` packs the query, key and value projections in one
``in_proj_weight`` ``(3d, d)`` and, unlike qkv, reads a boolean mask as
``True`` = *ignore*: tests invert masks at this boundary.
"""

from __future__ import annotations

import torch
from torch import nn

from qkv.attention import MultiHeadAttention
from qkv.layers import AddNorm, DecoderLayer, EncoderLayer, FeedForward


@torch.no_grad()
def copy_mha(ours: MultiHeadAttention, ref: nn.MultiheadAttention) -> None:
    ref.in_proj_weight.copy_(
        torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight])
    )
    ref.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
    ref.out_proj.weight.copy_(ours.out_proj.weight)
    ref.out_proj.bias.copy_(ours.out_proj.bias)


@torch.no_grad()
def _copy_linear(src: nn.Module, dst: nn.Module) -> None:
    dst.weight.copy_(src.weight)
    dst.bias.copy_(src.bias)


def _copy_ff(ours: FeedForward, ref: nn.Module) -> None:
    _copy_linear(ours.linear1, ref.linear1)
    _copy_linear(ours.linear2, ref.linear2)


def _copy_norm(ours: AddNorm, ref: nn.LayerNorm) -> None:
    _copy_linear(ours.norm, ref)


def copy_encoder_layer(ours: EncoderLayer, ref: nn.TransformerEncoderLayer) -> None:
    copy_mha(ours.self_attn, ref.self_attn)
    _copy_ff(ours.feed_forward, ref)
    _copy_norm(ours.self_attn_norm, ref.norm1)
    _copy_norm(ours.feed_forward_norm, ref.norm2)


def copy_decoder_layer(ours: DecoderLayer, ref: nn.TransformerDecoderLayer) -> None:
    copy_mha(ours.self_attn, ref.self_attn)
    copy_mha(ours.cross_attn, ref.multihead_attn)
    _copy_ff(ours.feed_forward, ref)
    _copy_norm(ours.self_attn_norm, ref.norm1)
    _copy_norm(ours.cross_attn_norm, ref.norm2)
    _copy_norm(ours.feed_forward_norm, ref.norm3)
