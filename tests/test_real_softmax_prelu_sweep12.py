"""Sweep 12 (facenet-pytorch's MTCNN O-Net: a softmax head returned in a tuple, PReLU
activations): a softmax's probabilities explained as log p, stats on activations with a
negative half, ``predict`` of uint8 tensors, ablate's default units on a multi-head net, and
the class-name message of another output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import netlens
from netlens.analyzers.ablation.units import find_units
from netlens.errors import NetlensError

pytestmark = [pytest.mark.usefixtures("one_thread")]


class Trunk(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.prelu1 = nn.PReLU(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu2(self.conv2(self.prelu1(self.conv1(x))))


class SoftHead(nn.Module):
    """O-Net's form: three heads, the classifier declared first, its softmax returned last."""

    def __init__(self, log: bool = False) -> None:
        super().__init__()
        self.trunk = Trunk()
        self.dense5 = nn.Linear(8, 16)
        self.cls = nn.Linear(16, 3)
        self.softmax = nn.Softmax(dim=1)
        self.box = nn.Linear(16, 4)
        self.lmk = nn.Linear(16, 10)
        self.log = log

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.dense5(self.trunk(x).mean((2, 3))).relu()
        z = self.cls(h)
        p = torch.log_softmax(z, dim=1) if self.log else self.softmax(z)
        return self.box(h), self.lmk(h), p


def _models() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    soft = SoftHead().eval()
    for m in soft.modules():  # varied weights: maps with structure
        if isinstance(m, nn.Linear):
            m.weight.data *= 4
    logp = SoftHead(log=True).eval()
    logp.load_state_dict(soft.state_dict())
    return soft, logp


def _x(n: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_softmax_model_is_explained_as_its_log_probabilities() -> None:
    """Score-CAM, Ablation-CAM and Grad-CAM++ of a softmax model equal those of the same network
    returning log_softmax (log p, read as it is): before, the probabilities were scored (masked
    Score-CAM scores all in [0, 1]: O-Net's map r ≥ 0.984 with the unweighted channel sum)."""
    soft, logp = _models()
    x = _x()
    a = netlens.Lens(soft, {"size": (32, 32)}, output=2)
    b = netlens.Lens(logp, {"size": (32, 32)}, output=2)
    for method in ("scorecam", "ablationcam", "gradcam++", "gradcam"):
        for target in (0, 2):
            ha = np.asarray(a.cam(x, method=method, layer="trunk.prelu1", target=target).heatmaps)
            hb = np.asarray(b.cam(x, method=method, layer="trunk.prelu1", target=target).heatmaps)
            np.testing.assert_allclose(ha, hb, atol=1e-4, err_msg=f"{method} {target}")


def test_softmax_probabilities_shown_are_the_models_own() -> None:
    soft, _ = _models()
    x = _x()
    lens = netlens.Lens(soft, {"size": (32, 32)}, output=2)
    with torch.no_grad():
        p = soft(x)[2]
    assert torch.allclose(lens.predict(x), p, atol=1e-6, rtol=0)
    out = lens.output(x)  # log p: read once, not taken the log of again anywhere
    assert torch.allclose(out, p.double().log().float(), atol=1e-6)
    assert torch.allclose(lens.probabilities(out), p, atol=1e-6, rtol=0)


def _acts(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    got = {}
    h = model.get_submodule(layer).register_forward_hook(lambda m, i, o: got.update(a=o))
    with torch.no_grad():
        model(x)
    h.remove()
    return got["a"]


def test_stats_on_prelu_count_absolute_values_and_relu_keeps_its_rule() -> None:
    """PReLU: near zero is |x| ≤ eps and dead is max |x| ≤ eps (x ≤ eps counted O-Net's negative
    half, 31–59 %, and called units dead whose outputs ran down to −0.89)."""
    soft, _ = _models()
    x, eps = _x(4), 0.05
    lens = netlens.Lens(soft, {"size": (32, 32)}, output=2)
    r = lens.run("stats", x, layers="trunk.prelu1,trunk.relu2", eps=eps, batch_size=3)
    rows = {row["layer"]: row for row in r.table}
    a = _acts(soft, "trunk.prelu1", x).double()
    assert float(a.min()) < -eps
    row = rows["trunk.prelu1"]
    assert row["zero_rule"] == "|x| ≤ eps"
    assert row["near_zero"] == pytest.approx(float((a.abs() <= eps).double().mean()))
    assert row["dead_units"] == pytest.approx(float((a.abs().amax(0) <= eps).double().mean()))
    assert row["near_zero"] < float((a <= eps).double().mean())  # not the negatives' share
    c = _acts(soft, "trunk.relu2", x).double()
    row = rows["trunk.relu2"]
    assert row["zero_rule"] == "x ≤ eps"
    assert row["near_zero"] == float((c <= eps).sum()) / c.numel()
    assert row["dead_units"] == float((c.amax(0) <= eps).double().mean())


def test_predict_reads_uint8_tensors_as_cam_does() -> None:
    """torchvision.io.read_image's uint8 C×H×W (and N×C×H×W): a raw RuntimeError before."""
    soft, _ = _models()
    lens = netlens.Lens(soft, {"size": (32, 32)}, output=2)
    u8 = (torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2)) * 255).to(torch.uint8)
    want = torch.as_tensor(np.asarray(lens.cam(u8, target=0, layer="trunk.prelu1").probs))
    assert torch.allclose(lens.predict(u8), want.float(), atol=1e-6)
    assert torch.allclose(lens.predict(u8[None]), want.float(), atol=1e-6)
    x = lens.preprocess(u8)  # a float N×C×H×W tensor: as it is
    assert torch.equal(lens.predict(x), lens.predict(u8))


class Branches(SoftHead):
    """A side branch (``aux``) that only the box head reads."""

    def __init__(self) -> None:
        super().__init__()
        self.aux = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.dense5(self.trunk(x).mean((2, 3))).relu()
        return self.box(self.aux(h)), self.lmk(h), self.softmax(self.cls(h))


def test_ablate_default_units_leave_out_every_head() -> None:
    """O-Net: the last declared Linear (landmarks) was left out as "the classifier", so the real
    classifier was ablated (drop 0.452) and the box head, which output 2 never reads, showed 0."""
    torch.manual_seed(0)
    model = SoftHead().eval()
    units, explicit = find_units(model, _x(2))
    assert not explicit
    assert [u.name for u in units] == ["trunk", "dense5"]
    branches = Branches().eval()
    names = [u.name for u in find_units(branches, _x(2))[0]]
    assert names == ["trunk", "dense5", "aux"]  # no heads; aux: no explained output named
    lens = netlens.Lens(branches, {"size": (32, 32)}, output=2)
    names = [u.name for u in find_units(branches, _x(2), output=lens.reader)[0]]
    assert names == ["trunk", "dense5"]  # output 2 does not read aux


def test_class_names_of_another_output_say_both_remedies() -> None:
    soft, _ = _models()
    lens = netlens.Lens(soft, {"size": (32, 32)}, ["face", "nonface", "other"], output=1)
    with pytest.raises(NetlensError) as err:
        lens.predict(_x(1))
    msg = str(err.value)
    assert "--classes" in msg and "lens.classes = [...]" in msg and "\n" not in msg


def test_class_names_stored_for_another_output_are_dropped_with_a_warning(tmp_path) -> None:
    """A file whose names belong to output 2 (O-Net's face classifier) run with another
    ``output``: the stored names, which the user never gave, were refused as if given."""
    from netlens.errors import NetlensWarning

    soft, _ = _models()
    names = ["face", "nonface", "other"]
    arch = f"{__file__}:SoftHead"
    netlens.save(
        netlens.Lens(soft, {"size": (32, 32)}, names, output=2), tmp_path / "c.pt", arch=arch
    )
    lens = netlens.load(tmp_path / "c.pt", arch=arch, output=1)
    assert lens.classes == ["face", "nonface", "other"]
    with pytest.warns(NetlensWarning, match="another output"):
        lens.predict(_x(1))
    assert lens.classes is None
