"""ddpmkit's U-Net in diffusers' terms: UNet2DModel's config and weight names, both ways.

Both are DDPM's U-Net (unet.py): ResNet blocks (GroupNorm, SiLU, 3x3 conv, plus a linear projection of the time
embedding, dropout before the second conv, a 1x1 skip where the width changes), self-attention with a GroupNorm and
a residual, strided-conv downsampling, nearest + 3x3 conv upsampling, a resnet-attention-resnet middle, and a time
embedding sinusoid(base) -> Linear -> SiLU -> Linear to 4 x base. This module only renames; it never imports
diffusers, since the files it reads and writes are JSON and tensors.

| ddpmkit ``UNetSpec``                     | diffusers ``UNet2DModel`` config                                  |
|------------------------------------------|-------------------------------------------------------------------|
| base_channels x channel_mults            | block_out_channels                                                |
| num_res_blocks                           | layers_per_block (the up path has one more per level in both)     |
| attention_resolutions                    | AttnDownBlock2D / AttnUpBlock2D at those feature-map sides        |
| middle_attention                         | add_attention                                                     |
| attention_heads                          | attention_head_dim = width / heads (None: one head of full width) |
| norm_groups, norm_eps, dropout           | norm_num_groups, norm_eps, dropout                                |
| embedding_sin_first                      | not flip_sin_to_cos                                               |
| embedding_frequency_shift                | freq_shift                                                        |
| downsample conv / conv_asymmetric        | downsample_padding 1 / 0 (0: pad one row and column after)        |
| num_classes (label num_classes = null)   | num_class_embeds = num_classes + 1, class_embed_type None         |
"""
from __future__ import annotations

from typing import Any

import torch

from ..errors import DdpmkitError
from ..unet import UNetSpec


class Unsupported(DdpmkitError):
    """A network one side can build and the other cannot express; the message says which part and why."""


DOWN_BLOCKS = {"DownBlock2D": False, "AttnDownBlock2D": True}  # block type -> has attention
UP_BLOCKS = {"UpBlock2D": False, "AttnUpBlock2D": True}

# UNet2DModel's defaults (diffusers 0.42) for the keys an older config.json leaves out, as diffusers fills them in.
UNET2D_DEFAULTS: dict[str, Any] = {
    "sample_size": None, "in_channels": 3, "out_channels": 3, "center_input_sample": False,
    "time_embedding_type": "positional", "time_embedding_dim": None, "freq_shift": 0, "flip_sin_to_cos": True,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (224, 448, 672, 896), "layers_per_block": 2, "mid_block_scale_factor": 1,
    "downsample_padding": 1, "downsample_type": "conv", "upsample_type": "conv", "dropout": 0.0, "act_fn": "silu",
    "attention_head_dim": 8, "norm_num_groups": 32, "attn_norm_num_groups": None, "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default", "add_attention": True, "class_embed_type": None, "num_class_embeds": None,
    "num_train_timesteps": None,
}

# The oldest diffusers release ddpmkit's tests are run against (pyproject's test extra); every key written is in it.
DIFFUSERS_VERSION = "0.28.0"


# -- config ----------------------------------------------------------------------------------------------------------

def _widths(spec: UNetSpec) -> list[int]:
    return [spec.base_channels * m for m in spec.channel_mults]


def _attends(spec: UNetSpec) -> list[bool]:
    """Whether each level (from the top) has self-attention after its ResBlocks."""
    return [spec.image_size // 2**level in spec.attention_resolutions for level in range(len(spec.channel_mults))]


def unet2d_config(spec: UNetSpec) -> dict[str, Any]:
    """The UNet2DModel config (its constructor's arguments) of the same network as ``UNet(spec)``: the same layers
    with the same shapes, so that the weights carry over one to one. Raises Unsupported for what it cannot express."""
    reasons = []
    if spec.weight_standardization:
        reasons.append("weight-standardised convolutions (model.weight_standardization)")
    if spec.downsample == "space_to_depth":
        reasons.append("space-to-depth downsampling (model.downsample=space_to_depth)")
    if spec.upsample != "nearest":
        reasons.append(f"{spec.upsample} upsampling (model.upsample; UNet2DModel upsamples by nearest + conv)")
    if spec.output_activation != "none":
        reasons.append(f"a {spec.output_activation} output (the bce loss's x_0 network)")
    if reasons:
        raise Unsupported(f"diffusers' UNet2DModel has no equivalent of {' or '.join(reasons)}")
    widths, attends = _widths(spec), _attends(spec)
    # ddpmkit fixes the number of heads, diffusers the width of a head; one head is diffusers' head width None.
    attended = [w for w, a in zip(widths, attends) if a] + ([widths[-1]] if spec.middle_attention else [])
    head_widths = sorted({w // spec.attention_heads for w in attended})
    if spec.attention_heads > 1 and len(head_widths) > 1:
        raise Unsupported(f"{spec.attention_heads} attention heads on layers of different widths make heads of "
                          f"widths {head_widths}; UNet2DModel gives every head one width (attention_head_dim)")
    return {
        "_class_name": "UNet2DModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": spec.image_size,
        "in_channels": spec.image_channels,
        "out_channels": spec.image_channels,
        "center_input_sample": False,
        "block_out_channels": widths,
        "layers_per_block": spec.num_res_blocks,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attends],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attends)],
        "mid_block_type": "UNetMidBlock2D",
        "mid_block_scale_factor": 1,
        "add_attention": spec.middle_attention,
        "attention_head_dim": head_widths[0] if spec.attention_heads > 1 and head_widths else None,
        "norm_num_groups": spec.norm_groups,
        "attn_norm_num_groups": None,
        "norm_eps": spec.norm_eps,
        "dropout": spec.dropout,
        "act_fn": "silu",
        "time_embedding_type": "positional",
        "time_embedding_dim": 4 * spec.base_channels,
        "flip_sin_to_cos": not spec.embedding_sin_first,
        "freq_shift": spec.embedding_frequency_shift,
        "downsample_type": "conv",
        "downsample_padding": 0 if spec.downsample == "conv_asymmetric" else 1,
        "upsample_type": "conv",
        "resnet_time_scale_shift": "default",  # the embedding is added, not a scale and shift
        "class_embed_type": None,
        "num_class_embeds": spec.num_classes + 1 if spec.num_classes else None,
    }


def spec_from_unet2d_config(config: dict[str, Any], source: str) -> UNetSpec:
    """The UNetSpec of a UNet2DModel config.json, or Unsupported naming the first setting ddpmkit cannot build."""
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise Unsupported(f"{source}: a {config['_class_name']}, not a UNet2DModel; ddpmkit reads the pixel-space "
                          f"UNet2DModel of DDPM and diffusers' train_unconditional (not latent or text-conditioned "
                          f"networks)")
    c = {**UNET2D_DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}

    def refuse(reason: str) -> Unsupported:
        return Unsupported(f"{source}: {reason}; ddpmkit cannot build this UNet2DModel")

    fixed = {"center_input_sample": False, "time_embedding_type": "positional", "act_fn": "silu",
             "mid_block_type": "UNetMidBlock2D", "mid_block_scale_factor": 1, "downsample_type": "conv",
             "upsample_type": "conv", "resnet_time_scale_shift": "default", "class_embed_type": None}
    for key, value in fixed.items():
        if c[key] != value:
            raise refuse(f"{key}={c[key]!r} (supported: {value!r} only)")
    widths = list(c["block_out_channels"])
    size = c["sample_size"]
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise refuse(f"non-square sample_size {list(size)}")
        size = size[0]
    if not isinstance(size, int) or size < 1:
        raise refuse(f"sample_size={size!r} (need the image side)")
    if c["in_channels"] not in (1, 3):
        raise refuse(f"in_channels={c['in_channels']} (ddpmkit's images are greyscale or RGB: 1 or 3)")
    if c["in_channels"] != c["out_channels"]:
        raise refuse(f"out_channels={c['out_channels']} differs from in_channels={c['in_channels']} (a network "
                     f"that also predicts its variance, as IDDPM's learned sigma; ddpmkit's predict the mean only)")
    levels = len(widths)
    if len(c["down_block_types"]) != levels or len(c["up_block_types"]) != levels:
        raise refuse("block_out_channels, down_block_types and up_block_types differ in length")
    for kind, allowed in ((c["down_block_types"], DOWN_BLOCKS), (c["up_block_types"], UP_BLOCKS)):
        strange = sorted(set(kind) - set(allowed))
        if strange:
            raise refuse(f"block type {strange[0]} (supported: {', '.join(allowed)})")
    attends = [DOWN_BLOCKS[b] for b in c["down_block_types"]]
    if [UP_BLOCKS[b] for b in reversed(c["up_block_types"])] != attends:
        raise refuse("attention in the up path at other levels than in the down path")
    base = widths[0]
    if any(w % base for w in widths):
        raise refuse(f"block_out_channels {widths} are not multiples of the first")
    if c["time_embedding_dim"] not in (None, 4 * base):
        raise refuse(f"time_embedding_dim={c['time_embedding_dim']} (supported: 4 x the first width, {4 * base})")
    groups = c["norm_num_groups"]
    if groups is None or c["attn_norm_num_groups"] not in (None, groups):
        raise refuse(f"norm_num_groups={groups}, attn_norm_num_groups={c['attn_norm_num_groups']} (supported: one "
                     f"group count for every GroupNorm)")
    if c["downsample_padding"] not in (0, 1):
        raise refuse(f"downsample_padding={c['downsample_padding']} (supported: 0 or 1)")
    attended = [w for w, a in zip(widths, attends) if a] + ([widths[-1]] if c["add_attention"] else [])
    head_dim = c["attention_head_dim"]
    heads = {1} if head_dim is None else {w // head_dim for w in attended}
    if head_dim is not None and any(w % head_dim for w in attended):
        raise refuse(f"attention_head_dim={head_dim} does not divide the attended widths {sorted(set(attended))}")
    if len(heads) > 1:
        raise refuse(f"attention_head_dim={head_dim} gives {sorted(heads)} heads at different levels (ddpmkit uses "
                     f"one number of heads throughout)")
    classes = c["num_class_embeds"]
    if classes is not None and classes < 2:
        raise refuse(f"num_class_embeds={classes} (need the classes plus ddpmkit's null label)")
    spec = UNetSpec(
        image_channels=c["in_channels"], image_size=size, base_channels=base,
        channel_mults=tuple(w // base for w in widths), num_res_blocks=c["layers_per_block"],
        attention_resolutions=tuple(size // 2**level for level, a in enumerate(attends) if a),
        attention_heads=heads.pop() if attended else 1, middle_attention=bool(c["add_attention"]),
        dropout=float(c["dropout"]), norm_groups=groups, norm_eps=float(c["norm_eps"]),
        num_classes=classes - 1 if classes else 0,
        downsample="conv_asymmetric" if c["downsample_padding"] == 0 else "conv",
        embedding_sin_first=not c["flip_sin_to_cos"], embedding_frequency_shift=float(c["freq_shift"]))
    if any(w % groups for w in widths):
        raise refuse(f"norm_num_groups={groups} does not divide every width in {widths}")
    if size % 2 ** (levels - 1):
        raise refuse(f"sample_size={size} cannot be halved {levels - 1} times")
    return spec


# -- weights ---------------------------------------------------------------------------------------------------------

RESBLOCK_NAMES = {"norm1": "norm1", "conv1": "conv1", "emb_proj": "time_emb_proj", "norm2": "norm2",
                  "conv2": "conv2", "skip": "conv_shortcut"}
# Attention layers of diffusers before 0.15 (the google/ddpm-* checkpoints): old name -> current name.
LEGACY_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def module_names(spec: UNetSpec) -> tuple[dict[str, str], dict[str, str]]:
    """ddpmkit module path -> diffusers module path, for the layers whose weights carry over as they are, and for
    the self-attention layers (whose q, k, v are one 1x1 conv in ddpmkit and three linear layers in diffusers).
    The walk follows UNet.__init__ and UNet2DModel.__init__ side by side."""
    same = {"time_mlp.0": "time_embedding.linear_1", "time_mlp.2": "time_embedding.linear_2", "conv_in": "conv_in",
            "norm_out": "conv_norm_out", "conv_out": "conv_out"}
    if spec.num_classes:
        same["label_emb"] = "class_embedding"
    attention: dict[str, str] = {}

    def resblock(ours: str, theirs: str) -> None:
        same.update({f"{ours}.{a}": f"{theirs}.{b}" for a, b in RESBLOCK_NAMES.items()})

    levels, attends = len(spec.channel_mults), _attends(spec)
    index = 0
    for level in range(levels):
        for block in range(spec.num_res_blocks):
            resblock(f"down.{index}.0", f"down_blocks.{level}.resnets.{block}")
            if attends[level]:
                attention[f"down.{index}.1"] = f"down_blocks.{level}.attentions.{block}"
            index += 1
        if level != levels - 1:
            same[f"down.{index}.0.op"] = f"down_blocks.{level}.downsamplers.0.conv"
            index += 1
    resblock("middle.0", "mid_block.resnets.0")
    if spec.middle_attention:
        attention["middle.1"] = "mid_block.attentions.0"
    resblock(f"middle.{2 if spec.middle_attention else 1}", "mid_block.resnets.1")
    index = 0
    for i, level in enumerate(reversed(range(levels))):
        for block in range(spec.num_res_blocks + 1):
            resblock(f"up.{index}.0", f"up_blocks.{i}.resnets.{block}")
            if attends[level]:
                attention[f"up.{index}.1"] = f"up_blocks.{i}.attentions.{block}"
            if level != 0 and block == spec.num_res_blocks:
                same[f"up.{index}.{2 if attends[level] else 1}.conv"] = f"up_blocks.{i}.upsamplers.0.conv"
            index += 1
    return same, attention


def _split(key: str) -> tuple[str, str]:
    module, _, param = key.rpartition(".")
    return module, param


def to_diffusers_weights(weights: dict[str, torch.Tensor], spec: UNetSpec) -> dict[str, torch.Tensor]:
    """ddpmkit U-Net state dict -> the UNet2DModel state dict of the same network (see ``unet2d_config``)."""
    same, attention = module_names(spec)
    out: dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        module, param = _split(key)
        if module in same:
            out[f"{same[module]}.{param}"] = value
            continue
        owner, _, layer = module.rpartition(".")
        if owner not in attention:
            raise DdpmkitError(f"ddpmkit weight {key} has no place in diffusers' UNet2DModel; please report this")
        theirs = attention[owner]
        if layer == "norm":
            out[f"{theirs}.group_norm.{param}"] = value
        elif layer == "qkv":  # (3C, C, 1, 1) conv -> three (C, C) linears; heads are contiguous channels in both
            for name, part in zip(("to_q", "to_k", "to_v"), value.chunk(3, dim=0)):
                out[f"{theirs}.{name}.{param}"] = part.reshape(part.shape[0], -1) if param == "weight" else part
        elif layer == "proj":
            out[f"{theirs}.to_out.0.{param}"] = value.reshape(value.shape[0], -1) if param == "weight" else value
        else:
            raise DdpmkitError(f"ddpmkit weight {key} has no place in diffusers' attention; please report this")
    return {k: v.contiguous() for k, v in out.items()}


def from_diffusers_weights(weights: dict[str, torch.Tensor], spec: UNetSpec, source: str) -> dict[str, torch.Tensor]:
    """A UNet2DModel state dict (current or pre-0.15 attention names) -> ddpmkit's U-Net state dict. A missing
    attention weight or any weight left over is a one-line error naming ``source`` here; a missing one elsewhere,
    when the weights are loaded into the network (checkpoint.load_weights)."""
    weights = dict(weights)
    for key in list(weights):
        module, param = _split(key)
        owner, _, layer = module.rpartition(".")
        if layer in LEGACY_ATTENTION_NAMES and ".attentions." in owner:
            weights[f"{owner}.{LEGACY_ATTENTION_NAMES[layer]}.{param}"] = weights.pop(key)
    same, attention = module_names(spec)
    out: dict[str, torch.Tensor] = {}

    def take(key: str) -> torch.Tensor:
        if key not in weights:
            raise DdpmkitError(f"{source}: weight {key} is missing; the weights do not belong to its config.json")
        return weights.pop(key)

    for ours, theirs in same.items():
        for param in ("weight", "bias"):
            if f"{theirs}.{param}" in weights:  # a ResBlock's conv_shortcut exists only where the width changes
                out[f"{ours}.{param}"] = weights.pop(f"{theirs}.{param}")
    for ours, theirs in attention.items():
        for param in ("weight", "bias"):
            out[f"{ours}.norm.{param}"] = take(f"{theirs}.group_norm.{param}")
        q, k, v = (take(f"{theirs}.{name}.weight") for name in ("to_q", "to_k", "to_v"))
        out[f"{ours}.qkv.weight"] = torch.cat([q, k, v])[:, :, None, None]
        out[f"{ours}.qkv.bias"] = torch.cat([take(f"{theirs}.{name}.bias") for name in ("to_q", "to_k", "to_v")])
        out[f"{ours}.proj.weight"] = take(f"{theirs}.to_out.0.weight")[:, :, None, None]
        out[f"{ours}.proj.bias"] = take(f"{theirs}.to_out.0.bias")
    if weights:
        raise DdpmkitError(f"{source}: {len(weights)} weights ({next(iter(weights))}, ...) have no place in the "
                           f"network its config.json describes")
    return {k: v.contiguous() for k, v in out.items()}
