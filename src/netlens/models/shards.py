"""Sharded weights without a model config: ``model-00001-of-00003.safetensors`` and the rest,
listed by ``model.safetensors.index.json`` (``{"metadata": ..., "weight_map": {name: file}}``),
as Accelerate's ``save_model(max_shard_size=...)``, huggingface_hub's
``split_torch_state_dict_into_shards`` and DeepSpeed's ``zero_to_fp32`` write them (or
``pytorch_model-0000k-of-0000n.bin`` with ``pytorch_model.bin.index.json``).

The index file, or a folder holding one index and its shards, is read as one state_dict: each
shard read safely (safetensors; ``.bin`` shards with ``weights_only=True``, as netlens reads a
``.bin`` state_dict), every name of the index checked present and read from the shard the
index names (a stale copy a shard holds of a weight the index places in another shard is
ignored, with a warning naming it). A tensor the index lists nowhere is read from the shard
holding it, as transformers reads every tensor of the shards an index names: the index is
incomplete, the tensor unambiguous; held by two shards with different values, it is refused.
"""

from __future__ import annotations

import json
import re
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelLoadError, NetlensWarning
from ..naming import display_path

__all__ = ["SHARD_NAME", "folder_index", "read_sharded", "special_payload"]

SHARD_NAME = re.compile(r"^(?P<stem>.+)-(?P<k>\d+)-of-(?P<n>\d+)(?P<ext>\.[A-Za-z0-9]+)$")
INDEX_SUFFIX = ".index.json"


def folder_index(path: Path) -> Path | None:
    """The index file of a folder of shards (the safetensors one when there are both), None
    for a folder without one; a torch.distributed.checkpoint folder is refused in one line."""
    from .foreign_files import dcp_refusal

    refused = dcp_refusal(path)
    if refused is not None:
        raise refused
    try:
        found = sorted(p for p in path.glob("*" + INDEX_SUFFIX) if p.is_file())
    except OSError:
        return None
    safe = [p for p in found if p.name.endswith(".safetensors" + INDEX_SUFFIX)]
    found = safe or found
    if len(found) > 1:
        raise ModelLoadError(
            f"{display_path(path)} holds several indexes of sharded weights "
            f"({', '.join(p.name for p in found[:3])}); pass the one you mean"
        )
    return found[0] if found else None


def special_payload(path: Path) -> Any:
    """What a file of a multi-file checkpoint reads as: the merged state_dict of an index of
    shards, the one-line error for a single shard or a torch.distributed.checkpoint file; None
    for any other file (read as usual)."""
    from .foreign_files import dcp_refusal

    refused = dcp_refusal(path)
    if refused is not None:
        return refused
    if path.name.endswith(INDEX_SUFFIX):
        return read_sharded(path)
    m = SHARD_NAME.match(path.name)
    if m is None or int(m["n"]) < 2:
        return None
    return ModelLoadError(_one_shard(path, m))


def _one_shard(path: Path, m: re.Match[str]) -> str:
    """Which index file to pass for one shard of ``n``."""
    from .hf import hf_folder_weights

    try:
        hf_folder_weights(path)
    except ModelLoadError as exc:
        return str(exc)
    index = _index_listing(path) or path.parent / f"{m['stem']}{m['ext']}{INDEX_SUFFIX}"
    there = "" if index.is_file() else " (not beside it: copy it and every shard there)"
    return (
        f"{display_path(path.name)} is shard {int(m['k'])} of {int(m['n'])} of a sharded "
        f"checkpoint; pass its index file {display_path(index)}{there}, or the folder holding "
        "the index and all the shards"
    )


def _index_listing(shard: Path) -> Path | None:
    """The index file beside ``shard`` whose weight_map names it."""
    for index in sorted(shard.parent.glob("*" + INDEX_SUFFIX)):
        try:
            files = json.loads(index.read_text()).get("weight_map", {}).values()
        except (OSError, ValueError, AttributeError):
            continue
        if shard.name in files:
            return index
    return None


def read_sharded(index: Path) -> dict[str, torch.Tensor] | ModelLoadError:
    """The state_dict an index of shards describes (or the error, in one line)."""
    name = display_path(index)
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        if not isinstance(weight_map, dict) or not weight_map:
            raise TypeError
        names = list(dict.fromkeys(weight_map.values()))
        if not all(isinstance(f, str) and f for f in names):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return ModelLoadError(
            f"{name} is not the index of a sharded checkpoint (a JSON object whose 'weight_map' "
            "maps each weight to its shard file); pass a model file"
        )
    outside = [f for f in names if Path(f).name != f]
    if outside:
        first = Path(outside[0])
        leaves = first.is_absolute() or ".." in first.parts
        return ModelLoadError(
            f"{name} names the shard file {outside[0]!r}"
            f"{f' and {len(outside) - 1} more' if len(outside) > 1 else ''}, "
            f"{'a path that leaves the index' if leaves else 'a path in a folder below the index'}"
            "'s folder: netlens reads shards only beside their index; copy every shard there "
            "and list it by its file name alone"
        )
    absent = [f for f in names if not (index.parent / f).is_file()]
    if absent:
        return ModelLoadError(
            f"{name} lists {len(absent)} of its {len(names)} shard files that are not beside it "
            f"({', '.join(absent[:3])}{', ...' if len(absent) > 3 else ''}); copy every shard "
            "into that folder"
        )
    state: dict[str, torch.Tensor] = OrderedDict()
    stale: list[str] = []
    unlisted: dict[str, tuple[str, torch.Tensor]] = {}
    for f in sorted(names, key=_shard_number):
        shard = _read_shard(index.parent / f)
        if isinstance(shard, ModelLoadError):
            return shard
        # only what the index places in this shard: a stale copy of a weight the index
        # places in another shard must not replace the real one
        state.update((k, v) for k, v in shard.items() if weight_map.get(k) == f)
        stale += [k for k in shard if k in weight_map and weight_map[k] != f]
        for k in (k for k in shard if k not in weight_map):
            if k in unlisted and not torch.equal(unlisted[k][1], shard[k]):
                return ModelLoadError(
                    f"{name} does not list '{k}', and the shards {unlisted[k][0]} and {f} hold "
                    "different values of it: the index is incomplete; save the checkpoint again"
                )
            unlisted.setdefault(k, (f, shard[k]))
    if stale:
        _warn_stale(name, stale)
    state.update((k, v) for k, (_, v) in unlisted.items())
    lost = [k for k, f in weight_map.items() if k not in state]
    if lost:
        more = f" and {len(lost) - 1} more" if len(lost) > 1 else ""
        return ModelLoadError(
            f"{name} lists '{lost[0]}'{more} in {weight_map[lost[0]]}, which does not hold "
            "it: the shards beside the index are not the ones it describes; save them again"
        )
    return state


def _warn_stale(name: str, keys: list[str]) -> None:
    """One warning line for the stale copies shards hold of weights the index places in
    another shard."""
    keys = list(dict.fromkeys(keys))
    shown = ", ".join(f"'{k}'" for k in keys[:4]) + (
        f" and {len(keys) - 4} more" if len(keys) > 4 else ""
    )
    warnings.warn(
        f"{name}: the shards also hold {shown}, which the index does not place there (stale "
        "copies of weights the index places in another shard); ignored: each weight is read "
        "from the shard the index names",
        NetlensWarning,
        stacklevel=4,
    )


def _shard_number(name: str) -> tuple[int, str]:
    m = SHARD_NAME.match(name)
    return (int(m["k"]) if m else 0, name)


def _read_shard(path: Path) -> dict[str, torch.Tensor] | ModelLoadError:
    """One shard, read safely: safetensors, else ``torch.load`` with ``weights_only``."""
    shown = display_path(path.name)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            shard: Any = load_file(str(path))
        else:
            from ..diagnostics import torch_load_quietly
            from .archive import check_archive
            from .load import _plain_data

            check_archive(path)
            with torch_load_quietly(), torch.serialization.safe_globals(_plain_data()):
                shard = torch.load(path, map_location="cpu", weights_only=True)
    except ModelLoadError as exc:
        return exc
    except Exception:  # noqa: BLE001 - damaged, or a pickle of more than tensors
        return ModelLoadError(
            f"cannot read the shard {shown}: damaged, or not a file of tensors (a shard holds "
            "tensors only)"
        )
    if not isinstance(shard, dict) or not all(isinstance(v, torch.Tensor) for v in shard.values()):
        return ModelLoadError(f"the shard {shown} holds more than tensors; it is not a shard")
    return shard
