"""Left items of sweep 14: an all-zero Score-CAM/Ablation-CAM map explained, the distributed
training command recorded whole, a sharded checkpoint whose index misses a key."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

import netlens
from netlens.errors import NetlensWarning


def _net(acts_sign: float, head_sign: float) -> nn.Module:
    """conv (no ReLU: its output has the sign ``acts_sign``) → GAP → linear whose weights all
    have the sign ``head_sign``."""
    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("conv", nn.Conv2d(3, 4, 3, padding=1))
    net.add_module("pool", nn.AdaptiveAvgPool2d(1))
    net.add_module("flat", nn.Flatten())
    net.add_module("fc", nn.Linear(4, 2))
    with torch.no_grad():
        net.conv.weight.uniform_(0.0, 0.1)
        net.conv.bias.fill_(2.0 * acts_sign)
        net.fc.weight.uniform_(0.5, 1.0).mul_(head_sign)
        net.fc.bias.zero_()
    return net.eval()


def _cam(net: nn.Module, method: str) -> tuple[float, list[str]]:
    x = torch.rand(2, 3, 8, 8)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        r = netlens.cam(net, x, method=method, layer="conv", target=0)
    lines = [str(w.message) for w in seen if issubclass(w.category, NetlensWarning)]
    return float(r.heatmaps.max()), lines


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_all_zero_map_of_signed_activations_warns_why(method: str) -> None:
    # negative activations, negative head: Score-CAM's positive weights and Ablation-CAM's
    # positive drops both sum the negative maps to below zero everywhere: ReLU leaves nothing
    peak, lines = _cam(_net(-1.0, -1.0), method)
    assert peak == 0.0
    said = [s for s in lines if "2 of 2 images" in s and "negative" in s]
    assert len(said) == 1, lines
    assert "--layer" in said[0] and "gradcam" in said[0] and "\n" not in said[0]


def test_ablation_map_zero_as_no_channel_lowers_the_score_warns_why() -> None:
    # positive activations (a post-ReLU layer) but a head that reads them negatively:
    # zeroing any channel raises the target's score, so every weight is negative
    peak, lines = _cam(_net(1.0, -1.0), "ablationcam")
    assert peak == 0.0
    said = [s for s in lines if "2 of 2 images" in s and "raises" in s]
    assert len(said) == 1, lines


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_a_map_with_evidence_gives_no_such_warning(method: str) -> None:
    peak, lines = _cam(_net(1.0, 1.0), method)
    assert peak == 1.0
    assert not [s for s in lines if "of 2 images" in s], lines


# -- 2: `netlens train --distributed N` records the command as typed ---------------------------
def test_distributed_train_records_the_command_as_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import sys

    import torch.distributed.launcher.api as api

    from netlens.distributed.launch import relaunch
    from netlens.train import trainer

    typed = ["train", "--arch", "lenet5", "--data", "mnist5k", "--distributed", "2"]
    seen: list[str | None] = []

    def worker(args: list[str]) -> str | None:
        # a worker is another process than its launcher, and its argv lacks --distributed
        key = "NETLENS_LAUNCHER_PID"
        launcher = os.environ[key]
        monkeypatch.setenv(key, str(os.getppid()))
        monkeypatch.setattr(sys, "argv", ["netlens", *args[2:]])
        try:
            return trainer._argv_command()
        finally:
            monkeypatch.setenv(key, launcher)

    def elastic_launch(config, entrypoint):  # torch's launcher, in this process
        return lambda *args: seen.append(worker(list(args)))

    monkeypatch.setattr(api, "elastic_launch", elastic_launch)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert relaunch(2, typed) == 0
    assert seen == ["netlens train --arch lenet5 --data mnist5k --distributed 2"]


# -- 3: a shard holds a weight its index does not list ----------------------------------------
def _shards(tmp_path, unlisted: str, copy_to_first: bool = False):
    """test_resnet's weights in two shards; the index lists every weight but ``unlisted``
    (which shard 2 holds; with ``copy_to_first``, shard 1 holds a different value too)."""
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=5).eval()
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    keys = list(sd)
    one, two = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    first = {k: sd[k] for k in keys[: len(keys) // 2]}
    if copy_to_first:
        first[unlisted] = sd[unlisted] + 1
    save_file(first, str(tmp_path / one))
    save_file({k: sd[k] for k in keys[len(keys) // 2 :]}, str(tmp_path / two))
    wm = {k: one for k in keys[: len(keys) // 2]}
    wm.update({k: two for k in keys[len(keys) // 2 :] if k != unlisted})
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    return index, sd


def test_a_weight_the_index_omits_is_read_from_the_shard_holding_it(tmp_path) -> None:
    index, sd = _shards(tmp_path, "fc.bias")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        lens = netlens.load(index, arch="test_resnet")
    got = lens.model.state_dict()
    for k, v in sd.items():
        assert torch.equal(got[k].cpu(), v), k
    assert not [w for w in seen if issubclass(w.category, NetlensWarning)]


def test_a_weight_the_index_omits_in_two_shards_is_one_line(tmp_path) -> None:
    from netlens.errors import ModelLoadError

    index, _ = _shards(tmp_path, "fc.bias", copy_to_first=True)
    with pytest.raises(ModelLoadError) as got:
        netlens.load(index, arch="test_resnet")
    line = str(got.value)
    assert "'fc.bias'" in line and "00001" in line and "00002" in line and "\n" not in line
    assert "--arch" not in line
