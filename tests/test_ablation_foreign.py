"""ablate on inputs its first tests did not think of: shared modules (one module called several
times, at one shape or at several) in mean and noise mode, and resumes on changed data, class
names or preprocessing."""

from __future__ import annotations

import csv
import shutil

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

import netlens
from netlens.analyzers.ablation.engine import Engine
from netlens.analyzers.ablation.fingerprint import data_fingerprint
from netlens.analyzers.ablation.modes import UnitStats, unit_replacement
from netlens.analyzers.ablation.units import find_units
from netlens.errors import AnalyzerError, NetlensError
from netlens.models.archs import resnet

pytestmark = pytest.mark.usefixtures("one_thread")


# -- shared modules --------------------------------------------------------------------------
class SharedSame(nn.Module):
    """One ReLU module used three times on equal shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1)
        self.c3 = nn.Conv2d(6, 6, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.c1(x))
        x = self.act(self.c2(x))
        x = self.act(self.c3(x))
        return self.fc(x.mean((2, 3)))


class SharedTwoSizes(nn.Module):
    """One ReLU module called at two resolutions (8² then 4²)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 6, 3, stride=2, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.c2(self.act(self.c1(x)))).mean((2, 3)))


def _shared(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    model = cls().eval()
    model.fc.weight.data *= 20  # outputs that move when a call is replaced
    return model


def _xy(n: int = 12, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, size, size, generator=gen), torch.randint(0, 4, (n,), generator=gen)


def _per_call_means(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Each call's own per-element mean over ``x`` (float64), measured independently."""
    outs: list[torch.Tensor] = []
    handle = model.act.register_forward_hook(lambda m, i, o: outs.append(o.double()))
    with torch.no_grad():
        model(x)
    handle.remove()
    return [o.mean(0) for o in outs]


def _kl_with(model: nn.Module, x: torch.Tensor, fills: list[torch.Tensor]) -> float:
    """Mean KL(intact ‖ ablated) with the k-th call of ``act`` replaced by ``fills[k]``."""
    calls = []

    def hook(m: nn.Module, i: tuple, o: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return fills[len(calls) - 1].to(o.dtype).expand_as(o).clone()

    with torch.no_grad():
        base = model(x).double()
        handle = model.act.register_forward_hook(hook)
        ablated = model(x).double()
        handle.remove()
    lb, la = F.log_softmax(base, 1), F.log_softmax(ablated, 1)
    return float((lb.exp() * (lb - la)).sum(1).mean())


@pytest.mark.parametrize("cls", [SharedSame, SharedTwoSizes])
def test_mean_mode_replaces_each_call_of_a_shared_module_with_its_own_mean(cls) -> None:
    model, (x, y) = _shared(cls), _xy()
    means = _per_call_means(model, x)
    own = _kl_with(model, x, means)
    res = netlens.ablate(model, (x, y), layers="act", mode="mean", metric="kl", progress=False)
    assert res.rows[0]["value"] == pytest.approx(own, rel=1e-5)
    assert res.rows[0]["path"] == "naive"
    if cls is SharedSame:  # the pooled mean of all calls is another (much larger) number
        pooled = torch.stack(means).mean(0)
        assert abs(_kl_with(model, x, [pooled] * 3) - own) > 100 * own


def test_noise_mode_on_a_module_called_at_two_resolutions() -> None:
    model, (x, y) = _shared(SharedTwoSizes), _xy()
    kw = {"layers": "act", "mode": "noise", "metric": "kl", "progress": False, "seed": 3}
    one, again = netlens.ablate(model, (x, y), **kw), netlens.ablate(model, (x, y), **kw)
    assert one.rows[0]["value"] > 0 and one.rows == again.rows  # seeded, repeatable


def test_shared_module_statistics_per_call_and_replacement_per_call() -> None:
    from netlens.analyzers.ablation.modes import collect_call

    model, (x, _) = _shared(SharedTwoSizes), _xy()
    stats: list[UnitStats] = []
    calls = [0]

    def hook(m: nn.Module, i: tuple, o: torch.Tensor) -> None:
        collect_call(stats, calls[0], o, "act")
        calls[0] += 1

    handle = model.act.register_forward_hook(hook)
    with torch.no_grad():
        for part in (x[:5], x[5:]):  # two batches: calls numbered within each pass
            calls[0] = 0
            model(part)
    handle.remove()
    assert [s.count for s in stats] == [12, 12]
    assert [tuple(s.mean.shape) for s in stats] == [(6, 8, 8), (6, 4, 4)]
    assert stats[1].name == "'act' (call 2)"
    units, _ = find_units(model, x, "act")
    engine = Engine(model, ["act"])
    assert not engine.is_fast("act")  # called twice: the naive path, hooked at every call
    with torch.no_grad():
        out = engine.naive(x, "act", unit_replacement(units[0], "mean", stats), 0)
    expect = _kl_with(model, x, [s.mean for s in stats])
    with torch.no_grad():
        lb, la = F.log_softmax(model(x).double(), 1), F.log_softmax(out.double(), 1)
    assert float((lb.exp() * (lb - la)).sum(1).mean()) == pytest.approx(expect, rel=1e-5)


def test_fast_and_naive_agree_with_per_call_statistics() -> None:
    """A unit called once: the fast path and the naive one give the same logits with the
    per-call statistics the study now keeps (a list of one)."""
    from netlens.analyzers.ablation.modes import collect_call

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.Flatten(),
        nn.Linear(6 * 8 * 8, 4),
    ).eval()
    x, _ = _xy()
    units, _ = find_units(model, x, "0,2")
    engine = Engine(model, [u.name for u in units])
    with torch.no_grad():
        cache = engine.prefix(x)
        for i, u in enumerate(units):
            stats: list[UnitStats] = []
            collect_call(stats, 0, cache.outputs[u.name], u.name)
            assert engine.is_fast(u.name)
            for mode in ("mean", "noise"):
                rep = unit_replacement(u, mode, stats, seed=3, key=i)
                fast, slow = engine.ablated(cache, u.name, rep, 2), engine.naive(x, u.name, rep, 2)
                assert torch.equal(fast, slow), (u.name, mode)
                assert not torch.equal(fast, cache.logits)


def test_unit_statistics_of_changing_shapes_are_one_line() -> None:
    stats = UnitStats(name="'act'")
    stats.add(torch.ones(2, 3, 4))
    with pytest.raises(AnalyzerError, match=r"'act' returns 3×4 for some images and 3×5") as e:
        stats.add(torch.ones(2, 3, 5))
    assert "--mode zero" in str(e.value) and "\n" not in str(e.value)
    unit = find_units(_shared(SharedSame), _xy()[0], "act")[0][0]
    with pytest.raises(AnalyzerError, match=r"'act' ran 2 times in one forward pass but once"):
        unit_replacement(unit, "mean", [stats])(None, torch.ones(2, 3, 4), 0, call=1)


def test_cli_mean_mode_on_a_shared_module(tmp_path) -> None:
    from netlens.cli.app import app

    model, (x, y) = _shared(SharedTwoSizes), _xy()
    path = tmp_path / "shared.pt"
    torch.save(model, path)
    _folder(tmp_path / "data", x, y, ["a", "b", "c", "d"])
    res = CliRunner().invoke(
        app,
        ["ablate", str(path), "--trust", "--data", str(tmp_path / "data"), "--layers", "act"]
        + ["--mode", "mean", "--size", "8", "--out", str(tmp_path / "out"), "-q", "--json"],
    )
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output and "RuntimeError" not in res.output


# -- resume on changed data, classes or preprocessing ----------------------------------------
CLASSES = ["zebra", "mango", "cat"]


def _folder(root, x: torch.Tensor, y: torch.Tensor, names: list[str]) -> None:
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        d = root / names[int(label) % len(names)]
        d.mkdir(parents=True, exist_ok=True)
        arr = ((img.permute(1, 2, 0).clamp(-2, 2) + 2) / 4 * 255).to(torch.uint8).numpy()
        cv2.imwrite(str(d / f"{i}.png"), np.ascontiguousarray(arr))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return resnet(num_classes=3, in_chans=3, img_size=8, widths=(4, 8), blocks=(1, 1)).eval()


def _lens(classes: list[str] = CLASSES, mean: float = 0.0):
    return netlens.load(
        _net(), classes=classes, size=8, crop_pct=1.0, mean=(mean,) * 3, std=(1.0,) * 3
    )


def _interrupted(tmp_path, data, lens=None) -> dict:
    """A finished study with its last row dropped, as if stopped there."""
    kw = {"metric": "accuracy", "resamples": 10, "progress": False, "out": tmp_path / "out"}
    netlens.ablate(lens or _lens(), data, **kw)
    rows = tmp_path / "out" / "ablation.csv"
    lines = rows.read_text().splitlines()
    rows.write_text("\n".join(lines[:-1]) + "\n")
    return {**kw, "resume": True}


@pytest.fixture
def folder(tmp_path):
    x, _ = _xy(12)
    _folder(tmp_path / "data", x, torch.arange(12) % 3, CLASSES)
    return tmp_path / "data"


def test_resume_with_the_same_settings_goes_on(tmp_path, folder) -> None:
    kw = _interrupted(tmp_path, folder)
    assert netlens.ablate(_lens(), folder, **kw).meta["resumed"] >= 2


def test_resume_refused_after_other_preprocessing(tmp_path, folder) -> None:
    kw = _interrupted(tmp_path, folder)
    with pytest.raises(NetlensError, match=r"other settings \(preprocess\)"):
        netlens.ablate(_lens(mean=0.9), folder, **kw)


def test_resume_refused_after_the_class_names_are_reordered(tmp_path, folder) -> None:
    kw = _interrupted(tmp_path, folder)
    with pytest.raises(NetlensError, match=r"other settings \(classes, data_items\)"):
        netlens.ablate(_lens(["cat", "mango", "zebra"]), folder, **kw)


def test_resume_refused_after_images_swap_classes(tmp_path, folder) -> None:
    kw = _interrupted(tmp_path, folder)
    a, b = folder / "zebra", folder / "mango"  # same folder, same count, other labels
    shutil.move(a, folder / "tmp")
    shutil.move(b, a)
    shutil.move(folder / "tmp", b)
    with pytest.raises(NetlensError, match=r"other settings \(data_items\)"):
        netlens.ablate(_lens(), folder, **kw)


def test_resume_refused_after_tensors_change(tmp_path) -> None:
    x, _ = _xy(12)
    y = torch.arange(12) % 3
    kw = _interrupted(tmp_path, (x, y))
    changed = x.clone()
    changed[5, 0, 0, 0] += 1
    with pytest.raises(NetlensError, match=r"other settings \(data_items\)"):
        netlens.ablate(_lens(), (changed, y), **kw)
    with pytest.raises(NetlensError, match=r"other settings \(data_items\)"):
        netlens.ablate(_lens(), (x, y.roll(1)), **kw)
    assert netlens.ablate(_lens(), (x.clone(), y.clone()), **kw).meta["resumed"] >= 2


def test_data_fingerprint_reads_no_image_and_samples_big_arrays(
    tmp_path, folder, monkeypatch
) -> None:
    from netlens.analyzers.ablation import fingerprint
    from netlens.data import ImageFolderDataset
    from netlens.preprocess import Preprocess

    ds = ImageFolderDataset(folder, Preprocess(size=(8, 8)), classes=CLASSES)
    before = data_fingerprint(ds)
    for f in folder.rglob("*.png"):  # the bytes are never read: only paths and labels count
        f.write_bytes(b"not an image")
    assert data_fingerprint(ds) == before

    class Held(torch.utils.data.Dataset):
        def __init__(self, x: torch.Tensor) -> None:
            self.x = x

        def __len__(self) -> int:
            return len(self.x)

    monkeypatch.setattr(fingerprint, "WHOLE_BYTES", 100 * 4 * 16)  # past it: a sample of rows
    big = torch.zeros(1000, 1, 4, 4)
    one = data_fingerprint(Held(big))
    big[500, 0, 0, 0] = 1
    assert data_fingerprint(Held(big)) == one  # not in the sample
    big[0, 0, 0, 0] = 1
    assert data_fingerprint(Held(big)) != one
    assert data_fingerprint(Held(big[:, :, :2])) != data_fingerprint(Held(big))
    small = torch.zeros(4, 1, 2, 2)  # a TensorDataset by its tensors
    before = data_fingerprint(torch.utils.data.TensorDataset(small, torch.arange(4)))
    small[3] = 1
    assert data_fingerprint(torch.utils.data.TensorDataset(small, torch.arange(4))) != before


def test_cli_resume_with_other_mean_is_refused_in_one_line(tmp_path, folder) -> None:
    from netlens.cli.app import app

    kwargs = {"num_classes": 3, "in_chans": 3, "img_size": 8, "widths": [4, 8], "blocks": [1, 1]}
    path = netlens.save(_net(), tmp_path / "model.pt", arch="resnet", arch_kwargs=kwargs)
    out = tmp_path / "cli"
    args = ["ablate", str(path), "--data", str(folder), "--classes", ",".join(CLASSES)]
    args += ["--size", "8", "--crop-pct", "1", "--std", "1,1,1", "-o", str(out), "-q"]
    runner = CliRunner()
    assert runner.invoke(app, [*args, "--mean", "0,0,0"]).exit_code == 0
    with (out / "ablation.csv").open() as fh:
        lines = list(csv.reader(fh))
    with (out / "ablation.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(lines[:-1])
    res = runner.invoke(app, [*args, "--mean", "0.9,0.9,0.9", "--resume"])
    assert res.exit_code == 1 and "other settings (preprocess)" in res.output
    assert "Traceback" not in res.output
    assert len([ln for ln in res.output.splitlines() if ln.strip()]) == 1
    res = runner.invoke(app, [*args, "--mean", "0,0,0", "--resume"])
    assert res.exit_code == 0, res.output
