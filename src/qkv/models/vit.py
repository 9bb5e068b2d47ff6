"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words", section 3.1).

Five steps, as docs/concepts.md#vit tells them, and so does this file:

1. cut the image into ``p × p`` patches and flatten each one (:class:`PatchEmbedding`);
2. project every flattened patch linearly to the model width (768 for ViT-B);
3. put a learned class token in front and add a position embedding to every token
   (learned, the paper's choice, or a fixed 2-D sin/cos table: the tutorials name both);
4. run the pre-norm Transformer encoder of :mod:`qkv.layers` (``norm_first=True``, GELU);
5. classify from the class token: final LayerNorm (the encoder's), then a linear head.

Notation:
    b   batch size
    c   image channels (``in_channels``)
    H,W image height and width (both ``image_size``)
    p   patch side (``patch_size``)
    g   patches per side (``H / p``)
    N   number of patches (``g · g``); the encoder sees ``1 + N`` tokens
    d   model width (``d_model``)
    h   attention heads
    K   number of classes
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.config import ConfigDict
from qkv.dropout import Dropout
from qkv.layers import Encoder, EncoderLayer, EncoderOutput
from qkv.losses import cross_entropy
from qkv.outputs import ModelOutput, export_output
from qkv.positional import positional_encoding

__all__ = [
    "PatchEmbedding",
    "ViT",
    "ViTConfig",
    "ViTOutput",
    "resample_position_embeddings",
    "sinusoidal_2d_position_embeddings",
]

Positional = Literal["learned", "sinusoidal"]

# Shared by the Fashion-MNIST presets (28×28 grey images, 10 classes).
_FASHION: dict[str, Any] = dict(
    image_size=28,
    patch_size=7,
    in_channels=1,
    num_classes=10,
    d_model=128,
    num_layers=6,
    num_heads=4,
    d_ff=256,
    dropout=0.0,
)


@dataclass(frozen=True)
class ViTConfig(ConfigDict):
    """Sizes and switches of a ViT; defaults are the paper's ViT-B/16 at 224 px."""

    image_size: int = 224  # square images, image_size × image_size pixels
    patch_size: int = 16  # square patches; must divide image_size
    in_channels: int = 3
    num_classes: int = 1000
    d_model: int = 768
    num_layers: int = 12
    num_heads: int = 12
    d_ff: int = 3072  # 4 × d_model in every ViT of the paper
    # The paper trains ViT-B on ImageNet with dropout 0.1 after every dense layer
    # and after adding the position embeddings (appendix B.1).
    dropout: float = 0.1
    # Off, as in the paper; also keeps the fused attention kernel on the CPU.
    attention_dropout: float = 0.0
    layer_norm_eps: float = 1e-6  # the JAX reference and timm; Hugging Face uses 1e-12
    positional: Positional = "learned"
    # The paper's pre-training head is an MLP with one tanh hidden layer of this
    # width; fine-tuning (and this default) uses a single linear layer.
    representation_size: int | None = None
    # "jax": the paper's code (Xavier, LeCun); "trunc_normal": timm and Hugging Face
    # (std 0.02 everywhere). See ViT.reset_parameters.
    init: Literal["jax", "trunc_normal"] = "jax"

    # The fused attention kernel when no weights are asked for; False: the explicit
    # matmul-softmax-matmul path (see MultiHeadAttention).
    fused_attention: bool = True

    def __post_init__(self) -> None:
        self.check(
            positive=(
                "image_size", "patch_size", "in_channels", "num_classes", "d_model",
                "num_layers", "num_heads", "d_ff", "layer_norm_eps", "representation_size",
            ),
            probabilities=("dropout", "attention_dropout"),
            heads=("num_heads", "d_model"),
        )  # fmt: skip
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"patch_size ({self.patch_size}) must divide image_size ({self.image_size})"
            )
        if self.positional == "sinusoidal" and self.d_model % 4 != 0:
            # Half the width encodes the row, half the column, each as sin/cos pairs.
            raise ValueError(
                f"2-D sinusoidal position embeddings need d_model divisible by 4, "
                f"got {self.d_model}"
            )

    @property
    def grid_size(self) -> int:
        """Patches per side, ``g = image_size / patch_size``."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """``N = g · g``; the encoder sees one more token, the class token."""
        return self.grid_size**2

    @classmethod
    def b16(cls, **overrides: Any) -> ViTConfig:
        """The paper's ViT-B/16: 224 px, 16 px patches, width 768, 12 layers, 12 heads,
        feed-forward 3072, 1000 classes (86,567,656 parameters)."""
        return cls(**overrides)

    @classmethod
    def fashion_tiny(cls, **overrides: Any) -> ViTConfig:
        """28×28 grey images (Fashion-MNIST), 7 px patches (4 × 4 = 16 tokens + class
        token), width 128, 6 layers, 4 heads of 32, feed-forward 256, no dropout;
        0.80M parameters. The preset for the 30-minute CPU budget.

        No dropout and no random crops: they slow a ViT down while it still underfits,
        having no translation equivariance to lean on. Per epoch it learns as fast as
        4 px patches at a fraction of the cost of a step ("Measurements behind the
        defaults" in benchmarks/RESULTS.md).
        """
        return cls(**{**_FASHION, **overrides})

    @classmethod
    def fashion_small(cls, **overrides: Any) -> ViTConfig:
        """:meth:`fashion_tiny` with 4 px patches (7 × 7 = 49 tokens + class token):
        finer attention maps at about twice the cost of a step."""
        return cls(**{**_FASHION, "patch_size": 4, **overrides})

    @classmethod
    def digits(cls, **overrides: Any) -> ViTConfig:
        """8×8 grey digits (scikit-learn's ``load_digits``), 4 px patches (2 × 2 tokens
        + class token), width 64, 2 layers, 4 heads; 69k parameters: seconds to train,
        for the tests. (2 px patches, 16 tokens of 4 pixels each, learned far more
        slowly in the same time.)"""
        sizes: dict[str, Any] = dict(
            image_size=8,
            patch_size=4,
            in_channels=1,
            num_classes=10,
            d_model=64,
            num_layers=2,
            num_heads=4,
            d_ff=128,
            dropout=0.0,
        )
        return cls(**{**sizes, **overrides})


class PatchEmbedding(nn.Module):
    """Cut images into ``p × p`` patches, flatten each, project it with one ``nn.Linear``.

    Each patch is flattened in ``(c, p_row, p_col)`` order, the layout of a
    ``Conv2d(c, d, kernel_size=p, stride=p)`` weight ``(d, c, p, p)``: the two are
    the same map, and ``conv.weight.reshape(d, -1)`` is this layer's weight. Patches
    are numbered row by row (patch ``(r, s)`` is token ``r · g + s``).

    Args:
        image_size: side of the square images it accepts.
        patch_size: side of the square patches; must divide ``image_size``.
        in_channels: image channels. d_model: output width. bias: projection bias.

    Shape: ``(b, c, H, W)`` -> ``(b, N, d)``.
    """

    def __init__(
        self, *, image_size: int, patch_size: int, in_channels: int, d_model: int, bias: bool = True
    ) -> None:
        super().__init__()
        if patch_size < 1 or image_size % patch_size != 0:
            raise ValueError(f"patch_size ({patch_size}) must divide image_size ({image_size})")
        self.image_size = image_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.proj = nn.Linear(in_channels * patch_size * patch_size, d_model, bias=bias)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    def check_images(self, images: Tensor) -> None:
        """Raise a ``ValueError`` naming what was expected and what was given."""
        expected = f"(batch, {self.in_channels}, {self.image_size}, {self.image_size})"
        if images.dim() != 4:
            raise ValueError(
                f"images must have 4 dims {expected}, got {images.dim()} dims {tuple(images.shape)}"
            )
        if images.shape[1] != self.in_channels:
            raise ValueError(
                f"expected {self.in_channels} channel(s) {expected}, got {images.shape[1]} "
                f"channel(s) {tuple(images.shape)}"
            )
        if tuple(images.shape[2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"expected {self.image_size}×{self.image_size} images {expected}, got "
                f"{images.shape[2]}×{images.shape[3]} {tuple(images.shape)}; "
                "for another size, see ViT.interpolate_position_embeddings"
            )
        if not images.is_floating_point():
            raise ValueError(
                f"images must be floating point (normalise the pixels first), got {images.dtype}"
            )

    def forward(self, images: Tensor) -> Tensor:
        self.check_images(images)
        b, c, g, p = images.shape[0], self.in_channels, self.grid_size, self.patch_size
        patches = images.reshape(b, c, g, p, g, p)  # (b, c, H/p, p, W/p, p)
        patches = patches.permute(0, 2, 4, 1, 3, 5)  # (b, H/p, W/p, c, p, p)
        patches = patches.reshape(b, g * g, c * p * p)  # (b, N, c·p·p)
        return self.proj(patches)  # (b, N, d)


def sinusoidal_2d_position_embeddings(grid_size: int, d_model: int) -> Tensor:
    """Fixed 2-D sin/cos embeddings for a ``g × g`` patch grid, with a zero row in
    front for the class token (which has no place in the grid).

    The first ``d/2`` features are the 1-D table of :func:`qkv.positional.positional_encoding`
    (width ``d/2``) at the patch's row, the last ``d/2`` the same table at its column
    (MoCo v3, MAE). Patches are numbered row by row, as in :class:`PatchEmbedding`.

    Shape: ``(1, 1 + g·g, d)``.
    """
    if d_model % 4 != 0:
        raise ValueError(f"2-D sinusoidal embeddings need d_model divisible by 4, got {d_model}")
    half = d_model // 2
    table = positional_encoding(grid_size, half)  # (g, d/2)
    rows = table[:, None, :].expand(grid_size, grid_size, half)  # (g, g, d/2), row r
    cols = table[None, :, :].expand(grid_size, grid_size, half)  # (g, g, d/2), column s
    grid = torch.cat([rows, cols], dim=-1).reshape(grid_size * grid_size, d_model)  # (N, d)
    return torch.cat([torch.zeros(1, d_model), grid])[None]  # (1, 1 + N, d)


def resample_position_embeddings(
    table: Tensor, grid_size: int, *, prefix_tokens: int = 1, antialias: bool = False
) -> Tensor:
    """A learned position table for another patch grid: the ``g × g`` grid resampled
    bicubically to ``grid_size × grid_size``, the ``prefix_tokens`` in front (the class
    token) kept as they are (the paper's fine-tuning at higher resolution). The same grid
    gives the table back unchanged.

    ``antialias=False`` (default) resamples as Hugging Face's ``interpolate_pos_encoding``
    does (torch's bicubic, ``a = -0.75``); ``antialias=True`` as timm's
    ``resample_abs_pos_embed`` does by default (torch's antialiased bicubic, ``a = -0.5``,
    which also low-pass filters when shrinking). The two differ even when enlarging.

    Shape: ``(1, prefix + g·g, d)`` -> ``(1, prefix + grid_size², d)``.
    """
    prefix, patches = table[:, :prefix_tokens], table[:, prefix_tokens:]  # (1, P, d), (1, N, d)
    g = round(patches.shape[1] ** 0.5)
    if g * g != patches.shape[1]:
        raise ValueError(f"{patches.shape[1]} patch positions are not a square grid")
    if grid_size < 1:
        raise ValueError(f"grid_size must be at least 1, got {grid_size}")
    if grid_size == g:
        return table
    d = table.shape[-1]
    grid = patches.reshape(1, g, g, d).permute(0, 3, 1, 2)  # (1, d, g, g)
    # align_corners=False, as both references. In float32: bicubic is not implemented
    # for half precision on every device.
    grid = F.interpolate(
        grid.float(), size=(grid_size, grid_size), mode="bicubic", antialias=antialias
    ).to(table)
    grid = grid.permute(0, 2, 3, 1).reshape(1, grid_size * grid_size, d)  # (1, N', d)
    return torch.cat([prefix, grid], dim=1)  # (1, P + N', d)


@export_output
@dataclass(kw_only=True)
class ViTOutput(ModelOutput):
    """``logits`` ``(b, K)``; ``loss`` and ``num_targets`` when labels were given
    (:class:`~qkv.outputs.ModelOutput`); ``encoder``: the encoder's output, whose
    ``last_hidden_state`` ``(b, 1 + N, d)`` is after the final LayerNorm and whose
    ``attentions[i]`` ``(b, h, 1 + N, 1 + N)`` are there for the layers asked for
    with ``need_weights``."""

    encoder: EncoderOutput

    @property
    def last_hidden_state(self) -> Tensor:
        return self.encoder.last_hidden_state

    @property
    def attentions(self) -> tuple[Tensor | None, ...] | None:
        return self.encoder.attentions


class ViT(nn.Module):
    """Vision Transformer for image classification.

    ``forward_features`` and ``forward_head`` split the model for feature
    extraction and for fine-tuning a new head; ``forward`` is the two in a row.
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.patch_embedding = PatchEmbedding(
            image_size=c.image_size,
            patch_size=c.patch_size,
            in_channels=c.in_channels,
            d_model=c.d_model,
        )
        # The class token is a learned extra "patch" whose final state summarises the
        # image (BERT's [CLS]); the head reads only this token.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.d_model))
        self._set_position_embeddings(self._new_position_embeddings(c.grid_size))
        self.dropout = Dropout(c.dropout)
        layer = EncoderLayer(
            c.d_model,
            c.num_heads,
            c.d_ff,
            # Also after the GELU inside the feed-forward (the layer's default
            # activation_dropout), as in the paper's JAX code and timm; Hugging Face
            # leaves that one out, which only matters in training.
            dropout=c.dropout,
            attention_dropout=c.attention_dropout,
            activation="gelu",
            norm_first=True,  # ViT is pre-norm; the Encoder then ends in a LayerNorm
            layer_norm_eps=c.layer_norm_eps,
            fused_attention=c.fused_attention,
        )
        self.encoder = Encoder(layer, c.num_layers)
        if c.representation_size is None:
            self.pre_logits: nn.Module = nn.Identity()
            head_in = c.d_model
        else:
            self.pre_logits = nn.Sequential(nn.Linear(c.d_model, c.representation_size), nn.Tanh())
            head_in = c.representation_size
        self.head = nn.Linear(head_in, c.num_classes)
        self.reset_parameters()

    def _new_position_embeddings(self, grid_size: int) -> Tensor:
        if self.config.positional == "sinusoidal":
            return sinusoidal_2d_position_embeddings(grid_size, self.config.d_model)
        return torch.zeros(1, 1 + grid_size**2, self.config.d_model)  # set by reset_parameters

    def _set_position_embeddings(self, table: Tensor) -> None:
        # Learned: a parameter. Sinusoidal: a buffer left out of the state dict,
        # since it is a function of the config, not a weight.
        if self.config.positional == "learned":
            self.position_embeddings = nn.Parameter(table)
        else:
            self.register_buffer("position_embeddings", table, persistent=False)

    def reset_parameters(self) -> None:
        """Initialise every weight, in one place.

        ``init="jax"`` (default), the paper's own code (google-research/vision_transformer):
        Xavier-uniform for the linear layers of the encoder, LeCun normal (truncated)
        for the patch projection and the pre-logits layer, N(0, 0.02) for the learned
        position embeddings, a zero class token, a zero head.

        ``init="trunc_normal"``, timm's default and Hugging Face's: truncated normal
        with std 0.02 for every linear weight, the class token and the positions.

        Both: zero biases, LayerNorm weight 1 and bias 0, and the zero head, so the
        first logits are all 0 and the loss starts at ``log K``. The two are close at
        width 768 (Xavier's std is 0.023–0.036 there), not at small widths: at width
        128 Xavier's weights are 3.6–4.4× larger, attention is less uniform at the
        start, and a Fashion-MNIST model learns much faster ("Measurements behind the
        defaults" in benchmarks/RESULTS.md).
        """

        def truncated_normal_(tensor: Tensor, std: float) -> None:
            # Cut at two standard deviations, as JAX does (not at ±2 in absolute
            # value, which for std 0.02 would cut nothing).
            nn.init.trunc_normal_(tensor, std=std, a=-2 * std, b=2 * std)

        def lecun_normal_(weight: Tensor) -> None:
            # Variance 1/fan_in after the cut at ±2σ, which removes 12% of the
            # variance: hence the division (the constant of jax.nn.initializers).
            truncated_normal_(weight, std=weight.shape[1] ** -0.5 / 0.87962566103423978)

        jax = self.config.init == "jax"
        for module in self.modules():
            if isinstance(module, nn.Linear):
                if jax:
                    nn.init.xavier_uniform_(module.weight)
                else:
                    truncated_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if jax:
            lecun_normal_(self.patch_embedding.proj.weight)
            if isinstance(self.pre_logits, nn.Sequential):
                lecun_normal_(self.pre_logits[0].weight)
            nn.init.zeros_(self.cls_token)
            if isinstance(self.position_embeddings, nn.Parameter):
                nn.init.normal_(self.position_embeddings, std=0.02)
        else:
            truncated_normal_(self.cls_token, std=0.02)
            if isinstance(self.position_embeddings, nn.Parameter):
                truncated_normal_(self.position_embeddings, std=0.02)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def encode(
        self, images: Tensor, *, need_weights: bool | Sequence[int] = False
    ) -> EncoderOutput:
        """Patches, class token, positions, encoder (ending in its final LayerNorm).

        ``need_weights``: ``True`` for every layer or a list of layer indices.

        Shape: images ``(b, c, H, W)`` -> ``last_hidden_state`` ``(b, 1 + N, d)``,
        ``attentions[i]`` ``(b, h, 1 + N, 1 + N)``.
        """
        patches = self.patch_embedding(images)  # (b, N, d); checks the images
        cls = self.cls_token.expand(patches.shape[0], -1, -1)  # (b, 1, d)
        x = torch.cat([cls, patches], dim=1) + self.position_embeddings  # (b, 1 + N, d)
        return self.encoder(self.dropout(x), need_weights=need_weights)

    def forward_features(self, images: Tensor) -> Tensor:
        """Every token's final state: the features to extract or to put a head on.

        Shape: ``(b, c, H, W)`` -> ``(b, 1 + N, d)``.
        """
        return self.encode(images).last_hidden_state

    def forward_head(self, features: Tensor) -> Tensor:
        """Logits from the class token's final state.

        Shape: ``(b, 1 + N, d)`` -> ``(b, K)``.
        """
        return self.head(self.pre_logits(features[:, 0]))  # (b, K)

    def no_weight_decay(self) -> set[str]:
        """Parameters a trainer should not decay beyond the 1-D ones: the class token and
        the position embeddings, which are added to the input rather than multiplied
        with it (timm's and DeiT's recipe)."""
        return {"cls_token", "position_embeddings"}

    def forward(
        self,
        images: Tensor,
        *,
        labels: Tensor | None = None,
        label_smoothing: float = 0.0,
        need_weights: bool | Sequence[int] = False,
    ) -> ViTOutput:
        """Classify a batch of images; with ``labels`` (class indices), also the mean
        label-smoothed cross-entropy.

        Shape: images ``(b, c, H, W)``, labels ``(b,)`` -> logits ``(b, K)``; see
        :class:`ViTOutput`.
        """
        encoded = self.encode(images, need_weights=need_weights)
        logits = self.forward_head(encoded.last_hidden_state)  # (b, K)
        output = ViTOutput(logits=logits, encoder=encoded)
        if labels is not None:
            output.loss, output.num_targets = cross_entropy(
                logits, labels, label_smoothing=label_smoothing
            )
        return output

    @torch.no_grad()
    def reset_head(self, num_classes: int) -> None:
        """A new zero head for ``num_classes`` classes (fine-tuning on other classes): the
        first logits are all 0, as after :meth:`reset_parameters`. ``config.num_classes``
        is updated; call it before building an optimiser."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        old = self.head
        self.head = nn.Linear(old.in_features, num_classes).to(old.weight)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.config = dataclasses.replace(self.config, num_classes=num_classes)

    @torch.no_grad()
    def interpolate_position_embeddings(self, new_image_size: int) -> None:
        """Adapt the model, in place, to ``new_image_size``-pixel images with the same
        patch size (fine-tuning at a higher resolution, section 3.2).

        Learned embeddings: the ``g × g`` grid of patch embeddings is resampled
        bicubically to the new grid (:func:`resample_position_embeddings`); the class
        token's slot is kept as it is. Sinusoidal: the table is rebuilt for the new
        grid. ``config.image_size`` is updated. Call it before building an optimiser:
        the learned table becomes a new parameter.
        """
        c = self.config
        if new_image_size < 1 or new_image_size % c.patch_size != 0:
            raise ValueError(
                f"patch_size ({c.patch_size}) must divide the new image size ({new_image_size})"
            )
        new_grid = new_image_size // c.patch_size
        old = self.position_embeddings  # (1, 1 + N, d)
        if c.positional == "sinusoidal":
            new = self._new_position_embeddings(new_grid).to(old)
        else:
            new = resample_position_embeddings(old.detach(), new_grid).clone()  # (1, 1 + N', d)
        self._set_position_embeddings(new)
        self.patch_embedding.image_size = new_image_size
        self.config = dataclasses.replace(c, image_size=new_image_size)
