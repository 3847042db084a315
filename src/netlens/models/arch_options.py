"""Which architecture names and keyword arguments a checkpoint may ask netlens to build.

A checkpoint's ``arch``/``arch_kwargs`` go straight into ``timm.create_model``,
``torchvision.models.get_model`` or a netlens arch. Those also take arguments that read files
or the network (``pretrained``, ``checkpoint_path``, ``pretrained_cfg_overlay=dict(file=...)``,
``weights``, ``cache_dir``, ``hf-hub:`` names) or that change what a model is
(``features_only``, ``device``, ``dtype``). So only names on an allow-list of architecture
options pass, with plain values (numbers, short identifier-like strings, short lists), in sane
ranges; the size they describe is checked separately on the meta device (:mod:`.meta`).
"""

from __future__ import annotations

import inspect
import math
import re
import reprlib
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import ModelLoadError

__all__ = ["ALLOWED_OPTIONS", "check_arch_kwargs", "check_arch_name", "DENIED"]

# constructor arguments of timm, torchvision and netlens models that describe the network
# (collected from timm 1.0 / torchvision 0.2x model classes; callables and configs left out)
ALLOWED_OPTIONS = frozenset(
    """
    aa_layer act_layer always_partition attention_dropout attn_drop_rate attn_layer
    attn_mlp_ratio attn_ratio aux_logits aux_loss avg_down base_width block_channels block_config
    blocks bn_eps bn_momentum bn_size bottleneck_multiplier cardinality channels class_token
    conv_bias conv_ratio depth depth_list depths dim dim_mul dims distillation
    down_kernel_size down_patch_size down_stride downsample_expand_ratios downsample_ratio
    downsamples drop_block_rate drop_path_rate drop_rate dropout dropout_aux dynamic_img_pad
    dynamic_img_size embed_dim embed_dims encoder_pool expand_groups expand_ratio
    expansion_factor expansion_ratio fc_norm final_norm fix_init fix_stem fused_conv
    global_pool global_pos_size group_width groups growth_rate head_dim head_hidden_size
    head_init_scale head_mul head_norm_first head_widths hidden_dim image_size img_size
    in_chans inference_mode init_values init_weights intermediate_size inverted_residual
    kernel_size kernel_sizes key_dim last_channel layer_scale layer_scale_init_value layers
    ls_init_value memory_efficient merge_size mlp_dim mlp_dropout mlp_ratio mlp_ratios
    n_layers nlhb no_embed_class norm_eps norm_layer num_classes num_features num_heads
    num_init_features num_kv_heads num_layers output_stride p_stochastic
    p_stochastic_dropout pad_type partition_size patch_drop_rate patch_kernel patch_padding
    patch_size patch_stride pooling_kernel_size pos_drop_rate pos_embed pos_embed_grid_size
    position_embedding_size pre_norm preact proj_bias proj_drop_rate q_pool q_stride qk_norm
    qkv_bias ref_feat_shape reg_tokens replace_stride_with_dilation representation_size
    rope_temperature rope_theta round_nearest scale_mlp se_from_exp se_layer se_ratio
    squeeze_ratio sr_ratios stages_out_channels stages_repeats standardize stem_bias
    stem_channels stem_chs stem_expand_ratio stem_norm stem_size stem_stride stem_type
    stem_width stochastic_depth_prob strict_img_size swiglu_mlp transform_input
    use_abs_pos_emb use_clipped_linears use_fc_norm use_pos_embed use_post_norm weight_init
    width width_factor width_list width_mult width_per_group widths window_ratio window_size
    zero_init_last zero_init_residual
    """.split()
)
# never an architecture option, whatever a plugin's signature says: files, network, devices
DENIED = re.compile(
    r"pretrain|checkpoint|ckpt|(^|_)paths?$|^paths?_|file|url|uri|(^|_)dirs?($|_)|cache|hub"
    r"|download|overlay|^weights($|_)|device|dtype|(^|_)cfgs?($|_)|features_only|out_indices"
    r"|script|export|jit"
)
_CHANGES_MODEL = re.compile(r"features_only|out_indices")
_LOOP_OPTIONS = frozenset(
    "depth depths layers blocks num_layers n_layers block_config stages_repeats depth_list".split()
)
_SAFE_STRING = re.compile(r"[A-Za-z0-9_+\-]([A-Za-z0-9_.+\-]{0,62}[A-Za-z0-9_+\-])?")
_FILE_LIKE = re.compile(r"\.(pt|pth|bin|ckpt|safetensors|npz|npy|onnx|pkl|pickle|json|ya?ml|zip)$")
# NAME, timm:NAME, tv:NAME, tv:NAME@ENTRY (a torchvision weights entry: its transforms)
_ARCH_NAME = re.compile(
    r"(tv:[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}(@[A-Za-z0-9_]{1,64})?"
    r"|(timm:)?[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127})"
)
_MAX_INT = 1 << 24
_MAX_LIST = 64
_MAX_LOOP = 1000
_MAX_LOOP_TOTAL = 4000
_RANGES: dict[str, tuple[int, int]] = {
    "num_classes": (0, 1 << 20),  # 0: timm's headless model (pooled features out)
    "in_chans": (1, 1024),
    "img_size": (8, 8192),
    "image_size": (8, 8192),
}


def check_arch_name(arch: Any, where: str) -> str:
    """``arch`` when it names an architecture (``NAME``, ``tv:NAME``, ``timm:NAME``, or the
    user's own ``file.py:Class`` — kept as data: netlens never imports code a file names).

    Hub and path prefixes (``hf-hub:``, ``local-dir:``, ``/...``) are refused: a checkpoint
    names an architecture to build from code, never weights to fetch.
    """
    from .factory import parse_user_arch

    if isinstance(arch, str) and len(arch) <= 1024 and parse_user_arch(arch) is not None:
        return arch
    if not isinstance(arch, str):
        raise ModelLoadError(
            f"{where}: 'arch' must be an architecture name like 'resnet18' or 'tv:alexnet' "
            f"(got {_short(arch, 30)}); the file is damaged or not from netlens.save"
        )
    if not _ARCH_NAME.fullmatch(arch):
        raise ModelLoadError(
            f"{where}: 'arch' {_short(arch)} is not an architecture name (letters, digits, "
            "'_', '-', '.', an optional tv:/timm: prefix, tv:NAME@ENTRY; no hub names, paths "
            "or URLs)"
        )
    return arch


def check_arch_kwargs(kwargs: Any, where: str, extra_allowed: Iterable[str] = ()) -> dict[str, Any]:
    """A copy of ``kwargs`` once every key is an allowed option with a plain, sane value.

    Args:
        kwargs: the checkpoint's ``arch_kwargs``.
        where: the file name, for messages.
        extra_allowed: further names (a registered netlens arch's own parameters).
    """
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict):
        raise ModelLoadError(
            f"{where}: 'arch_kwargs' must be a dict of architecture options (got "
            f"{_short(kwargs, 30)}); the file is damaged or not from netlens.save"
        )
    allowed = None if extra_allowed is None else ALLOWED_OPTIONS | set(extra_allowed)
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        _check_key(key, where, allowed)
        out[key] = _check_value(value, f"arch_kwargs.{key}", where, depth=0)
        _check_range(key, out[key], where)
    return out


def signature_options(factory: Callable[..., Any]) -> list[str]:
    """The named keyword parameters of an arch factory (a netlens/plugin arch's options)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in params if p.kind in kinds]


def _check_key(key: Any, where: str, allowed: frozenset[str] | set[str] | None) -> None:
    if not isinstance(key, str) or not key.isidentifier():
        raise ModelLoadError(f"{where}: 'arch_kwargs' has a key {_short(key)} that is not a name")
    if DENIED.search(key):
        what = (
            "changes what is built (feature maps, not the network the weights are of)"
            if _CHANGES_MODEL.search(key)
            else "loads files or weights from elsewhere"
        )
        raise ModelLoadError(
            f"{where}: 'arch_kwargs' asks for '{key}', which {what}; a checkpoint may only "
            "describe the architecture (remove it and re-save)"
        )
    if allowed is not None and key not in allowed:
        raise ModelLoadError(
            f"{where}: 'arch_kwargs' option '{key}' is not an architecture option netlens "
            "builds from a checkpoint; remove it and re-save, or build the model yourself "
            "and pass it to netlens.load(model)"
        )


def _check_value(value: Any, name: str, where: str, depth: int) -> Any:
    """Numbers, booleans, None, identifier-like strings, and short lists/tuples of them."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) > _MAX_INT:
            raise ModelLoadError(f"{where}: {name} = {value} is out of range (|value| ≤ 2^24)")
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or abs(value) > 1e6:
            raise ModelLoadError(f"{where}: {name} = {value} is not a finite, moderate number")
        return value
    if isinstance(value, str):
        if value and (not _SAFE_STRING.fullmatch(value) or _FILE_LIKE.search(value)):
            raise ModelLoadError(
                f"{where}: {name} = {_short(value)} is not an option value (short names like "
                "'avg' or 'gelu' only; no paths, URLs or file names)"
            )
        return value
    if isinstance(value, (list, tuple)) and depth < 2:
        if len(value) > _MAX_LIST:
            raise ModelLoadError(f"{where}: {name} has {len(value)} items (at most {_MAX_LIST})")
        items = [_check_value(v, f"{name}[{i}]", where, depth + 1) for i, v in enumerate(value)]
        return type(value)(items)
    raise ModelLoadError(
        f"{where}: {name} is a {type(value).__name__}; architecture options are numbers, "
        "booleans, short names or short lists of them"
    )


def _check_range(key: str, value: Any, where: str) -> None:
    """Per-option ranges: class counts, channels, image sizes, loop counts, rates."""
    numbers = _flat_ints(value)
    if key in _RANGES and value is not None:
        lo, hi = _RANGES[key]
        ints = [v for v in _flat_numbers(value) if isinstance(v, int)]
        if (
            not ints
            or len(ints) != len(_flat_numbers(value))
            or any(n < lo or n > hi for n in ints)
        ):
            raise ModelLoadError(
                f"{where}: arch_kwargs.{key} = {_short(value)} must be whole numbers "
                f"from {lo} to {hi}"
            )
    if key in _LOOP_OPTIONS and (
        any(n < 0 or n > _MAX_LOOP for n in numbers) or sum(numbers) > _MAX_LOOP_TOTAL
    ):
        raise ModelLoadError(
            f"{where}: arch_kwargs.{key} = {_short(value)} asks for more layers than any "
            f"real network (at most {_MAX_LOOP} per stage, {_MAX_LOOP_TOTAL} in all)"
        )
    if ("drop" in key or "stochastic" in key) and any(
        not 0 <= v <= 1 for v in _flat_numbers(value)
    ):
        raise ModelLoadError(f"{where}: arch_kwargs.{key} = {_short(value)} must be in [0, 1]")


def _flat_numbers(value: Any) -> list[float]:
    if isinstance(value, (list, tuple)):
        return [n for v in value for n in _flat_numbers(v)]
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def _flat_ints(value: Any) -> list[int]:
    return [int(n) for n in _flat_numbers(value) if float(n).is_integer()]


def _short(value: Any, n: int = 60) -> str:
    """A printable, one-line, shortened repr for messages (bounded for any nesting/sharing)."""
    text = _REPR.repr(value).encode("ascii", "backslashreplace").decode()
    return text if len(text) <= n else text[: n - 3] + "..."


def _bounded_repr() -> reprlib.Repr:
    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxset = 3, 4, 4, 4, 4
    r.maxstring = r.maxother = r.maxlong = 40
    return r


_REPR = _bounded_repr()
