"""The denoising U-Net of DDPM (Ho et al. 2020, appendix B), with the usual variants as options.

``UNet(x_t, t, y=None) -> tensor`` of the same shape as ``x_t``. It knows nothing of the noise schedule: ``t`` is
only an integer index fed to a sinusoidal embedding.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class UNetSpec:
    """Everything that fixes the network's shape; ``ModelConfig`` in config.py mirrors it with help text."""

    image_channels: int = 1
    image_size: int = 32
    base_channels: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = ()
    attention_heads: int = 1
    middle_attention: bool = True         # self-attention between the middle block's two ResBlocks (DDPM's)
    dropout: float = 0.0
    norm_groups: int = 32
    norm_eps: float = 1e-5                # GroupNorm epsilon (torch's default; the DDPM authors' code: 1e-6)
    num_classes: int = 0                  # 0: unconditional; else labels 0..num_classes-1 plus a null label
    downsample: str = "conv"              # "conv" (strided 3x3, padding 1), "conv_asymmetric" (strided 3x3 padded
                                          # one row and column after: TensorFlow's SAME, the DDPM authors' code)
                                          # or "space_to_depth" (PixelUnshuffle + 1x1)
    upsample: str = "nearest"             # "nearest" (nearest + 3x3 conv) or "transposed" (4x4 transposed conv)
    weight_standardization: bool = False  # weight-standardised 3x3 convolutions (Qiao et al. 2019)
    output_activation: str = "none"       # "none" or "sigmoid" (an x_0 network trained with a BCE loss)
    embedding_sin_first: bool = False     # timestep embedding [sin, cos] (the DDPM authors' code) or [cos, sin]
    embedding_frequency_shift: float = 0.0  # its frequencies 10000^(-k / (half - shift)): the authors' code has 1
    guidance_input: bool = False          # take the guidance weight w as an input (a guidance-distilled student)


# The guidance weight w enters as the sinusoidal embedding of GUIDANCE_EMBEDDING_SCALE w, so that the w of practice
# (0 to a few) spreads over the embedding's frequencies as timesteps 0 to a few hundred do.
GUIDANCE_EMBEDDING_SCALE = 100.0


DOWNSAMPLES = ("conv", "conv_asymmetric", "space_to_depth")
UPSAMPLES = ("nearest", "transposed")
OUTPUT_ACTIVATIONS = ("none", "sigmoid")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0, sin_first: bool = False,
                       frequency_shift: float = 0.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (Vaswani et al. 2017, §3.5), as used by DDPM: ``half = dim // 2``
    frequencies max_period^(-k / (half - frequency_shift)), k = 0 .. half - 1, as [cos, sin] (or [sin, cos])."""
    half = dim // 2
    k = torch.arange(half, device=t.device, dtype=torch.float32)
    freqs = torch.exp(-math.log(max_period) * k / (half - frequency_shift))
    args = t.float()[:, None] * freqs[None]
    pair = [torch.sin(args), torch.cos(args)] if sin_first else [torch.cos(args), torch.sin(args)]
    emb = torch.cat(pair, dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class WSConv2d(nn.Conv2d):
    """Conv2d whose weights are standardised to zero mean, unit variance per output channel before use."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        eps = 1e-5 if x.dtype == torch.float32 else 1e-3
        return F.conv2d(x, (w - mean) * torch.rsqrt(var + eps), self.bias, self.stride, self.padding)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so that a residual branch starts as the identity (as in DDPM's code)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int, conv: type[nn.Conv2d],
                 eps: float = 1e-5):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=eps)
        self.conv1 = conv(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(conv(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, through scaled_dot_product_attention."""

    def __init__(self, channels: int, heads: int, groups: int, eps: float = 1e-5):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels, eps=eps)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.permute(1, 0, 2, 4, 3).unbind(0)  # each (b, heads, h*w, c/heads)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(2, 3).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int, kind: str):
        super().__init__()
        self.pad_after = kind == "conv_asymmetric"  # TensorFlow's SAME padding for a stride-2 3x3: (0, 1) per side
        if kind in ("conv", "conv_asymmetric"):
            self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=0 if self.pad_after else 1)
        else:  # space_to_depth: lossless 2x2 -> channels rearrangement, then a 1x1 mix
            self.op = nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(4 * channels, channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.op(F.pad(x, (0, 1, 0, 1)) if self.pad_after else x)


class Upsample(nn.Module):
    def __init__(self, channels: int, kind: str):
        super().__init__()
        self.kind = kind
        if kind == "nearest":
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        else:
            self.conv = nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        if self.kind == "nearest":
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x)


class UNet(nn.Module):
    def __init__(self, spec: UNetSpec):
        super().__init__()
        self.spec = spec
        ch, groups = spec.base_channels, spec.norm_groups
        emb_dim = 4 * ch
        conv = WSConv2d if spec.weight_standardization else nn.Conv2d

        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # Label num_classes is the "null" label of classifier-free guidance (Ho & Salimans 2022).
        self.label_emb = nn.Embedding(spec.num_classes + 1, emb_dim) if spec.num_classes > 0 else None
        # A guidance-distilled student's w (Meng et al. 2023, §4.1: w embedded and added to the timestep's
        # embedding). Its last layer starts at zero, so a student made from a teacher starts as the teacher for
        # every w.
        self.guidance_mlp = (nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), zero_module(nn.Linear(emb_dim, emb_dim)))
                             if spec.guidance_input else None)

        def res(i: int, o: int) -> ResBlock:
            return ResBlock(i, o, emb_dim, spec.dropout, groups, conv, spec.norm_eps)

        def attn(c: int) -> SelfAttention:
            return SelfAttention(c, spec.attention_heads, groups, spec.norm_eps)

        self.conv_in = nn.Conv2d(spec.image_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        skip_channels, cur, resolution = [ch], ch, spec.image_size
        for level, mult in enumerate(spec.channel_mults):
            for _ in range(spec.num_res_blocks):
                layers = [res(cur, ch * mult)]
                cur = ch * mult
                if resolution in spec.attention_resolutions:
                    layers.append(attn(cur))
                self.down.append(nn.ModuleList(layers))
                skip_channels.append(cur)
            if level != len(spec.channel_mults) - 1:
                self.down.append(nn.ModuleList([Downsample(cur, spec.downsample)]))
                skip_channels.append(cur)
                resolution //= 2

        # DDPM's middle is ResBlock-attention-ResBlock; without the attention the network is convolutional
        # throughout (UNet-mini, "a deep convolutional network without attention layers").
        self.middle = nn.ModuleList([res(cur, cur), *([attn(cur)] if spec.middle_attention else []), res(cur, cur)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(spec.channel_mults))):
            for block in range(spec.num_res_blocks + 1):
                layers = [res(cur + skip_channels.pop(), ch * mult)]
                cur = ch * mult
                if resolution in spec.attention_resolutions:
                    layers.append(attn(cur))
                if level != 0 and block == spec.num_res_blocks:
                    layers.append(Upsample(cur, spec.upsample))
                    resolution *= 2
                self.up.append(nn.ModuleList(layers))

        self.norm_out = nn.GroupNorm(groups, cur, eps=spec.norm_eps)
        self.conv_out = zero_module(nn.Conv2d(cur, spec.image_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                guidance: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, H, W) noisy images; t: (B,) integer timesteps; y: (B,) class indices (num_classes = null),
        (B, num_classes + 1) float weights over the label embeddings, or None (the null label); guidance: (B,) the
        guidance weights w of a network with spec.guidance_input (None: w = 0)."""
        emb = self.time_mlp(timestep_embedding(t, self.spec.base_channels, sin_first=self.spec.embedding_sin_first,
                                               frequency_shift=self.spec.embedding_frequency_shift))
        if self.guidance_mlp is not None:
            w = torch.zeros(x.shape[0], device=x.device) if guidance is None else guidance.to(x.device).float()
            emb = emb + self.guidance_mlp(timestep_embedding(GUIDANCE_EMBEDDING_SCALE * w, self.spec.base_channels))
        elif guidance is not None:
            raise ValueError("this U-Net does not take the guidance weight as input (spec.guidance_input=False)")
        if self.label_emb is not None:
            if y is None:  # no label given: the null label, i.e. the unconditional model
                y = torch.full((x.shape[0],), self.spec.num_classes, device=x.device, dtype=torch.long)
            if y.is_floating_point():  # (B, num_classes + 1) mixture weights, e.g. to interpolate between classes
                emb = emb + y.to(emb.dtype) @ self.label_emb.weight.to(emb.dtype)
            else:
                emb = emb + self.label_emb(y)
        elif y is not None:
            raise ValueError("this U-Net is unconditional (num_classes=0) but was given labels")

        h = self.conv_in(x)
        skips = [h]
        for layers in self.down:
            for layer in layers:
                h = layer(h, emb)
            skips.append(h)
        for layer in self.middle:
            h = layer(h, emb)
        for layers in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            for layer in layers:
                h = layer(h, emb)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return torch.sigmoid(out) if self.spec.output_activation == "sigmoid" else out
