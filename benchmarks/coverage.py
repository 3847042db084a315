"""Coverage sweep: netlens on many timm and torchvision architectures, as a user runs it.

Each architecture is built with random weights (normalisation statistics and affine parameters
randomised, constant parameters such as zero-initialised heads and layer scales jittered, so no
branch is a no-op), then explained on real photos from scikit-image at a small input size:

- ``build``: the model, and for the CLI route its state_dict saved to a temporary file;
- ``cam``: Grad-CAM with the ``auto`` layer (maps checked: N×H×W at input size, finite, in [0, 1]);
- ``parity``: that Grad-CAM map against pytorch-grad-cam's on the same layer and target
  (Pearson r ≥ 0.99; only where the chosen layer is a plain N×C×H×W module output);
- ``free``: a gradient-free method (Eigen-CAM, or Score-CAM / Ablation-CAM on one image);
- ``features``: the ``auto`` layer's top channels; ``kernels``: the default (first conv) layer;
- ``ablate``: one residual block (the last one netlens finds) with the label-free ``agreement``.

Every step goes through the public entry points: ``netlens.load(model, arch=..., size=...)`` and
``lens.cam`` / ``lens.features`` / ``lens.kernels`` / ``lens.ablate`` (route ``py``), or the
``netlens`` CLI on a saved state_dict with ``--arch`` (route ``cli``: loading, the model's own
preprocessing and the CLI's one-line errors included). By default every fourth architecture of
each family takes the CLI route.

A cell is ``ok``, a one-line reason (a ``NetlensError`` that says why the step cannot run), or
``FAIL`` (a traceback, a CLI error that is not a netlens one, or a check that found a wrong
answer). The script prints the table, the pass rate and the time, and exits 1 when anything
failed::

    python benchmarks/coverage.py                      # everything (timm and torchvision)
    python benchmarks/coverage.py --family timm --limit 10
    python benchmarks/coverage.py --only resnet18,tv:vit_b_16 --size 96 --route cli

Needs the ``bench`` extras (grad-cam, scikit-image).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import netlens  # noqa: E402
from netlens.errors import NetlensError  # noqa: E402

STEPS = ("build", "cam", "parity", "free", "features", "kernels", "ablate")
NUM_CLASSES = 10
PARITY_R = 0.99


# -- the architectures ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Arch:
    """One architecture of the sweep.

    Attributes:
        name: the ``--arch`` name: a timm model name, or ``tv:NAME`` for torchvision.
        kwargs: extra keyword arguments for the constructor (``--arch-kwargs`` on the CLI).
        sized: the constructor takes ``img_size`` (ViTs, Swin, MLP-Mixer...): built for the
            sweep's input size.
        min_size: the smallest input the architecture takes (Inception's stem needs 75+).
        free: the gradient-free CAM method; Score-CAM and Ablation-CAM run on one image.
        note: why the architecture is special, shown in ``--list``.
    """

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    sized: bool = False
    min_size: int = 0
    free: str = "eigencam"
    note: str = ""

    @property
    def family(self) -> str:
        return "tv" if self.name.startswith("tv:") else "timm"

    def size(self, requested: int) -> int:
        return max(requested, self.min_size)

    def build_kwargs(self, size: int) -> dict[str, Any]:
        return {**self.kwargs, **({"img_size": size} if self.sized else {})}


def _timm(name: str, **kw: Any) -> Arch:
    return Arch(name, **kw)


TIMM = [
    _timm("resnet18", free="scorecam"),
    _timm("resnet50"),
    _timm("resnext26ts", note="ResNeXt, SiLU"),
    _timm("seresnext26d_32x4d", note="squeeze-excitation, deep stem"),
    _timm("res2net50_26w_4s", note="multi-scale split blocks"),
    _timm("efficientnet_b0", free="ablationcam"),
    _timm("tf_efficientnet_b0", note="TF 'same' padding"),
    _timm("efficientnetv2_rw_t"),
    _timm("mobilenetv3_small_100", free="scorecam"),
    _timm("mobilenetv3_large_100"),
    _timm("mobilenetv4_conv_small"),
    _timm("regnetx_002", free="scorecam"),
    _timm("regnety_002"),
    _timm("regnetz_b16"),
    _timm("convnext_atto", free="ablationcam"),
    _timm("convnextv2_atto", note="global response norm"),
    _timm("densenet121", note="F.relu(inplace=True) after features"),
    _timm("inception_v3", min_size=112, note="Mixed_7c is 1×1 below 107 px"),
    _timm("inception_v4", min_size=112),
    _timm("xception41"),
    _timm("vgg11_bn", note="conv 'pre_logits' head"),
    _timm("ghostnet_100"),
    _timm("rexnet_100"),
    _timm("hrnet_w18_small", note="multi-resolution branches"),
    _timm("dla34"),
    _timm("dpn68", note="dual-path blocks return tuples"),
    _timm("cspresnet50"),
    _timm("tresnet_m", note="space-to-depth stem"),
    _timm("ese_vovnet19b_dw"),
    _timm("lcnet_050", free="scorecam"),
    _timm("nfnet_l0", note="normaliser-free"),
    _timm("fastvit_t8"),
    _timm("inception_next_tiny"),
    _timm("poolformer_s12"),
    _timm("mambaout_femto", note="NHWC throughout"),
    _timm("botnet26t_256", sized=True, note="self-attention in a ResNet"),
    _timm("vit_tiny_patch16_224", sized=True, free="ablationcam"),
    _timm("deit_tiny_distilled_patch16_224", sized=True, note="class + distillation tokens"),
    _timm("vit_small_patch14_reg4_dinov2", sized=True, note="4 register tokens"),
    _timm("vit_base_patch16_siglip_224", sized=True, note="no class token, attention pooling"),
    _timm("eva02_tiny_patch14_224", sized=True, note="rotary embeddings"),
    _timm("beit_base_patch16_224", sized=True),
    _timm("cait_xxs24_224", sized=True, note="class-attention layers"),
    _timm("xcit_nano_12_p16_224", sized=True),
    _timm("pit_ti_224", sized=True, note="pooling stages of tokens"),
    _timm("levit_128s", sized=True, note="conv stem, tokens without a class token"),
    _timm("swin_tiny_patch4_window7_224", sized=True, note="NHWC stages"),
    _timm("swinv2_cr_tiny_ns_224", sized=True),
    _timm("maxvit_tiny_rw_224", sized=True),
    _timm("coatnet_nano_rw_224", sized=True),
    _timm("mixer_s16_224", sized=True, free="scorecam"),
    _timm("resmlp_12_224", sized=True),
    _timm("gmlp_ti16_224", sized=True),
    _timm("coat_lite_tiny", sized=True),
    _timm("coat_tiny", sized=True, note="parallel blocks"),
    _timm("pvt_v2_b0"),
    _timm("twins_svt_small"),
    _timm("tiny_vit_5m_224"),
    _timm("efficientvit_m0", sized=True, min_size=128, note="stride 64: last stage 1×1 below"),
    _timm("mobilevit_xxs"),
    _timm("edgenext_xx_small"),
    _timm("davit_tiny"),
    _timm("mvitv2_tiny", sized=True),
    _timm("hiera_tiny_224", sized=True, note="tokens in mask-unit order"),
]

#: Constructor arguments torchvision models need for small inputs and for a fair build.
_TV_KWARGS: dict[str, dict[str, Any]] = {
    "inception_v3": {"aux_logits": False, "init_weights": False},
    "googlenet": {"aux_logits": False, "init_weights": False},
}
_TV_MIN = {"inception_v3": 112, "maxvit_t": 224}  # Mixed_7c 1×1 below 107; 7×7 windows
_TV_SIZED = ("vit_",)  # torchvision ViTs take image_size


def tv_archs() -> list[Arch]:
    """Every torchvision classification model (``list_models(module=torchvision.models)``)."""
    import torchvision

    archs = []
    for name in torchvision.models.list_models(module=torchvision.models):
        kwargs = dict(_TV_KWARGS.get(name, {}))
        if name.startswith(_TV_SIZED):
            kwargs["image_size"] = None  # filled with the sweep's size by build_kwargs
        archs.append(Arch(f"tv:{name}", kwargs, min_size=_TV_MIN.get(name, 0)))
    return archs


def all_archs() -> list[Arch]:
    return TIMM + tv_archs()


def build_kwargs(arch: Arch, size: int) -> dict[str, Any]:
    """The constructor's keyword arguments at input size ``size``."""
    kw = arch.build_kwargs(size)
    if "image_size" in kw:
        patch = int(arch.name.rsplit("_", 1)[-1])
        kw["image_size"] = max(patch * 2, size // patch * patch)
    return kw


def input_size(arch: Arch, size: int) -> int:
    """The input size the sweep gives ``arch`` (its minimum; a ViT's multiple of the patch)."""
    size = arch.size(size)
    return int(build_kwargs(arch, size).get("image_size") or size)


# -- models and photos ---------------------------------------------------------------------------
def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random normalisation statistics and affine parameters; constant parameters jittered.

    timm zero-initialises residual branches (last BN scale), heads (MLP-Mixer) and sets layer
    scales to 1e-6: left so, branches are no-ops and maps empty.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                n = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(1 + 0.2 * torch.rand(n, generator=g))
        for p in model.parameters():
            flat = p.flatten()
            if p.numel() > 1 and bool((flat == flat[0]).all()):
                v = float(flat[0])
                scale = 0.3 * abs(v) if abs(v) > 0.01 else 0.05
                p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def build(arch: Arch, size: int, seed: int = 0) -> nn.Module:
    """``arch`` with random weights for ``NUM_CLASSES`` classes, eval mode."""
    torch.manual_seed(seed)
    kw = build_kwargs(arch, size)
    if arch.family == "tv":
        import torchvision

        model = torchvision.models.get_model(arch.name[3:], num_classes=NUM_CLASSES, **kw)
    else:
        import timm

        model = timm.create_model(arch.name, pretrained=False, num_classes=NUM_CLASSES, **kw)
    return randomize(model, seed).eval()


def photos(n: int) -> list[np.ndarray]:
    """``n`` real photos from scikit-image (RGB uint8, each its own size)."""
    from skimage import data

    return [f() for f in (data.chelsea, data.astronaut, data.coffee, data.rocket)[:n]]


# -- outcomes ------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """One cell: ``ok``, ``said`` (a one-line NetlensError), ``FAIL`` or ``skip``."""

    status: str
    detail: str = ""
    seconds: float = 0.0

    def cell(self) -> str:
        if self.status == "said":
            return "— " + self.detail
        if self.status == "FAIL":
            return "FAIL " + self.detail.splitlines()[-1][:120] if self.detail else "FAIL"
        return self.status


class CheckFailed(AssertionError):
    """A step ran but its answer is wrong (a silent wrong answer, caught)."""


def attempt(fn: Callable[[], Any]) -> tuple[Outcome, Any]:
    """Run one step: ok, a netlens one-liner, or FAIL with the traceback."""
    t0 = time.perf_counter()
    try:
        value = fn()
    except NetlensError as exc:
        return Outcome("said", str(exc), time.perf_counter() - t0), None
    except Exception:  # noqa: BLE001 - the sweep reports every failure
        return Outcome("FAIL", traceback.format_exc(), time.perf_counter() - t0), None
    if isinstance(value, Outcome):
        value.seconds = time.perf_counter() - t0
        return value, None
    return Outcome("ok", seconds=time.perf_counter() - t0), value


def check_maps(heat: np.ndarray, n: int, size: int) -> None:
    """CAM maps must be N×K×H×W (or N×H×W) at the input size, finite and in [0, 1]."""
    if heat.shape[0] != n or heat.shape[-2:] != (size, size):
        raise CheckFailed(f"maps of shape {heat.shape}, expected {n} maps of {size}×{size}")
    if not np.isfinite(heat).all() or heat.min() < 0 or heat.max() > 1:
        raise CheckFailed(f"maps not finite in [0, 1]: {heat.min()}..{heat.max()}")


# -- the Python route ----------------------------------------------------------------------------
@dataclass
class Case:
    """What the steps of one architecture share."""

    arch: Arch
    size: int
    model: nn.Module
    images: list[np.ndarray]
    workdir: Path
    lens: Any = None
    layer: str | None = None
    target: np.ndarray | None = None
    heat: np.ndarray | None = None
    block: tuple[str, str] | None = None


def open_lens(case: Case) -> Any:
    if case.lens is None:
        arch = case.arch.name if case.arch.family == "tv" else None
        case.lens = netlens.load(case.model, arch=arch, size=case.size)
    return case.lens


def py_cam(case: Case) -> None:
    res = open_lens(case).cam(case.images[:2], method="gradcam", progress=False)
    check_maps(res.heatmaps, 2, case.size)
    case.layer, case.heat = res.meta["layers"][0], res.heatmaps
    case.target = np.asarray(res.targets).reshape(2, -1)[:, 0]


def py_free(case: Case) -> None:
    n = 2 if case.arch.free == "eigencam" else 1
    res = open_lens(case).cam(case.images[:n], method=case.arch.free, batch_size=64, progress=False)
    check_maps(res.heatmaps, n, case.size)


def py_features(case: Case) -> None:
    res = open_lens(case).features(case.images[:2], top=4, progress=False)
    maps = res.arrays[f"{res.meta['layers'][0]}:maps"]
    if maps.shape[:2] != (2, min(4, res.meta["shapes"][res.meta["layers"][0]][1])):
        raise CheckFailed(f"feature maps of shape {maps.shape}")
    if not np.isfinite(maps).all():
        raise CheckFailed("feature maps not finite")


def py_kernels(case: Case) -> None:
    res = open_lens(case).kernels(progress=False)
    if not np.isfinite(res.arrays["tiles"]).all():
        raise CheckFailed("kernel tiles not finite")


def pick_block(case: Case) -> tuple[str | None, str | None]:
    """One of the units ``ablate`` switches off by default, and the mode for it: the last
    residual block (identity), else the last layer that keeps its shape (identity), else the
    last layer that returns a tensor (zero); (None, None): let ``ablate`` choose (and say why
    it cannot)."""
    from netlens.analyzers.ablation.units import find_units

    if case.block is None:
        lens = open_lens(case)
        x = lens.preprocess(case.images[:1])
        with netlens_eval(lens.model):
            units, _ = find_units(lens.model, x)
        tensors = [u for u in units if u.shape_out is not None]
        same = [u for u in tensors if u.residual or u.shape_in == u.shape_out]
        blocks = [u for u in same if u.residual]
        unit = (blocks or same or tensors or [None])[-1]
        mode = None if unit is None else ("identity" if unit in same else "zero")
        case.block = (unit.name if unit else None, mode)
    return case.block


def py_ablate(case: Case) -> None:
    lens = open_lens(case)
    x = lens.preprocess(case.images)
    layer, mode = pick_block(case)
    res = lens.ablate(x, layers=layer, mode=mode, metric="agreement", resamples=100, progress=False)
    check_ablation(res.rows, res.baseline)


def check_ablation(rows: list[dict[str, Any]], baseline: dict[str, Any]) -> None:
    if baseline["value"] != 1.0:
        raise CheckFailed(f"the intact model disagrees with itself: {baseline['value']}")
    if not rows:
        raise CheckFailed("no ablation rows")
    for row in rows:
        if not 0.0 <= float(row["value"]) <= 1.0:
            raise CheckFailed(f"agreement {row['value']} outside [0, 1]")


@contextlib.contextmanager
def netlens_eval(model: nn.Module) -> Iterator[None]:
    from netlens.layers import eval_mode

    with torch.no_grad(), eval_mode(model):
        yield


# -- parity with pytorch-grad-cam ------------------------------------------------------------
def parity(case: Case) -> Outcome:
    """netlens' Grad-CAM map against pytorch-grad-cam's on the same layer, input and target.

    Token and NHWC layers are brought to N×C×H×W for the peer by :func:`peer_reshape`, written
    here from the model's own attributes, not with netlens' code.
    """
    layer = case.layer or ""
    if "@" in layer or ":" in layer:
        return Outcome("skip", f"{layer}: a call, not a module pytorch-grad-cam can hook")
    lens = open_lens(case)
    x = lens.preprocess(case.images[:2])
    module = lens.model.get_submodule(layer)
    raw = _output_of(lens.model, module, x)
    reshape = peer_reshape(lens.model, raw)
    if reshape is None:
        return Outcome("skip", f"{layer}: output {tuple(raw.shape)} has no known layout")
    peer = _peer_gradcam(lens.model, module, x, case.target, reshape)
    rs = [
        _pearson(a, b) for a, b in zip(case.heat.reshape(2, -1), peer.reshape(2, -1), strict=True)
    ]
    rs = [r for r in rs if r is not None]
    if rs and min(rs) < PARITY_R:
        raise CheckFailed(f"Grad-CAM at {layer} differs from pytorch-grad-cam: r = {min(rs):.3f}")
    return Outcome("ok", f"r = {min(rs):.4f}" if rs else "both maps empty")


def peer_reshape(model: nn.Module, raw: torch.Tensor) -> Callable | None:
    """pytorch-grad-cam's ``reshape_transform`` for this layer output (None: unknown layout).

    N×C×H×W as is; N×H×W×C (timm models with ``output_fmt="NHWC"``) permuted; N×L×D tokens:
    the patch embedding's grid (timm ``patch_embed.grid_size``, torchvision ``image_size //
    patch_size``) after the tokens in front of it, else a square grid after 0–5 prefix tokens.
    """
    if raw.dim() == 4:
        nhwc = str(getattr(model, "output_fmt", "")).upper() == "NHWC"
        return (lambda t: t.permute(0, 3, 1, 2)) if nhwc else (lambda t: t)
    if raw.dim() != 3:
        return None
    length = raw.shape[1]
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is None and hasattr(model, "patch_size") and hasattr(model, "image_size"):
        grid = (model.image_size // model.patch_size,) * 2  # torchvision ViT
    fits = [(length - g[0] * g[1], g[0], g[1]) for g in [grid] if g]
    sides = [(k, int(round(max(length - k, 0) ** 0.5))) for k in range(6)]
    fits += [(k, side, side) for k, side in sides]
    for k, h, w in fits:
        if k >= 0 and h * w == length - k and h * w > 1:
            return lambda t, k=k, h=h, w=w: (
                t[:, k:].reshape(t.shape[0], h, w, -1).permute(0, 3, 1, 2)
            )
    return None


def _output_of(model: nn.Module, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        with netlens_eval(model):
            model(x)
    finally:
        handle.remove()
    return seen[-1] if seen and isinstance(seen[-1], torch.Tensor) else torch.zeros(0)


def _peer_gradcam(
    model: nn.Module, layer: nn.Module, x: torch.Tensor, target: np.ndarray, reshape: Callable
) -> np.ndarray:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with GradCAM(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in target])
    model.zero_grad(set_to_none=True)
    return np.asarray(maps)


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    a, b = a.astype(np.float64), b.astype(np.float64)
    if a.std() < 1e-9 and b.std() < 1e-9:
        return None
    if a.std() < 1e-9 or b.std() < 1e-9:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


# -- the CLI route -------------------------------------------------------------------------------
def cli(args: list[str]) -> Outcome:
    """Run ``netlens ARGS`` in this process; classify what it printed and its exit status."""
    from typer.testing import CliRunner

    from netlens.cli.app import app

    threads = torch.get_num_threads()
    try:
        res = CliRunner().invoke(app, args)
    finally:
        torch.set_num_threads(threads)
    text = res.stderr if hasattr(res, "stderr") else res.output
    if res.exit_code in (0, 3) and "Traceback" not in res.output:
        return Outcome("ok")
    errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
    if res.exit_code == 1 and len(errors) == 1 and "NETLENS_DEBUG" not in errors[0]:
        raise NetlensError(errors[0].removeprefix("error:").strip())
    raise CheckFailed(f"exit {res.exit_code}: {' | '.join(text.splitlines()[-3:])[:400]}")


def cli_args(case: Case, command: str, *rest: str) -> list[str]:
    kw = build_kwargs(case.arch, case.size)
    out = case.workdir / command
    args = [command, str(case.workdir / "model.pt"), *rest, "--arch", case.arch.name]
    args += ["--arch-kwargs", json.dumps(kw)] if kw else []
    return args + ["--size", str(case.size), "--out", str(out), "--quiet"]


def image_files(case: Case, n: int) -> list[str]:
    folder = case.workdir / "images"
    if not folder.exists():
        import cv2

        folder.mkdir()
        for i, img in enumerate(case.images):
            cv2.imwrite(str(folder / f"photo{i}.png"), img[:, :, ::-1])
    return [str(p) for p in sorted(folder.iterdir())[:n]]


def cli_cam(case: Case) -> Outcome:
    return cli_maps(case, "cam", 2, "gradcam")


def cli_free(case: Case) -> Outcome:
    return cli_maps(case, "free", 2 if case.arch.free == "eigencam" else 1, case.arch.free)


def cli_maps(case: Case, step: str, n: int, method: str) -> Outcome:
    """``netlens cam`` on ``n`` photos; the .npy maps it wrote checked as in the Python route."""
    args = cli_args(case, "cam", *image_files(case, n), "--method", method)
    out = case.workdir / "cam"
    args[args.index("--out") + 1] = str(out / step)
    outcome = cli(args)
    cam = json.loads((out / step / "cam.json").read_text())
    case.layer = case.layer or cam["layers"][0]
    maps = np.stack([np.load(f) for f in sorted((out / step).glob("*.npy"))])
    check_maps(maps, n, case.size)
    return outcome


def cli_features(case: Case) -> Outcome:
    return cli(cli_args(case, "features", *image_files(case, 2), "--top", "4"))


def cli_kernels(case: Case) -> Outcome:
    return cli(cli_args(case, "kernels"))


def cli_ablate(case: Case) -> Outcome:
    image_files(case, 4)
    layer, mode = pick_block(case)
    args = ["--data", str(case.workdir / "images"), "--metric", "agreement"]
    args += ["--layers", layer, "--mode", mode] if layer and mode else []
    return cli(cli_args(case, "ablate", *args))


# -- the sweep -----------------------------------------------------------------------------------
PY_STEPS = {
    "cam": py_cam,
    "parity": parity,
    "free": py_free,
    "features": py_features,
    "kernels": py_kernels,
    "ablate": py_ablate,
}
CLI_STEPS = {
    "cam": cli_cam,
    "free": cli_free,
    "features": cli_features,
    "kernels": cli_kernels,
    "ablate": cli_ablate,
}


@dataclass
class Row:
    """One architecture's outcomes."""

    arch: Arch
    route: str
    size: int
    cells: dict[str, Outcome] = field(default_factory=dict)
    layer: str = ""

    @property
    def passed(self) -> bool:
        return all(c.status != "FAIL" for c in self.cells.values())

    @property
    def seconds(self) -> float:
        return sum(c.seconds for c in self.cells.values())


def sweep_one(arch: Arch, size: int, route: str, images: list[np.ndarray]) -> Row:
    """Every step on one architecture (a failed build skips the rest)."""
    size = input_size(arch, size)
    row = Row(arch, route, size)
    with tempfile.TemporaryDirectory(prefix="netlens-coverage-") as tmp:
        row.cells["build"], model = attempt(lambda: build(arch, size))
        if model is None:
            return row
        case = Case(arch, size, model, images, Path(tmp))
        if route == "cli":
            torch.save(model.state_dict(), case.workdir / "model.pt")
        steps = CLI_STEPS if route == "cli" else PY_STEPS
        for step in STEPS[1:]:
            if step not in steps:
                row.cells[step] = Outcome("skip", "python route only")
            elif step == "parity" and case.heat is None:
                row.cells[step] = Outcome("skip", "no Grad-CAM map")
            else:
                row.cells[step], _ = attempt(lambda fn=steps[step], c=case: fn(c))
        row.layer = case.layer or ""
        del case, model
    gc.collect()
    return row


def select(archs: list[Arch], only: str | None, family: str | None, limit: int | None) -> list:
    if only:
        wanted = [n.strip() for n in only.split(",") if n.strip()]
        by_name = {a.name: a for a in archs}
        missing = [n for n in wanted if n not in by_name]
        extra = [Arch(n) for n in missing]  # any other timm/tv name: default settings
        archs = [by_name[n] for n in wanted if n in by_name] + extra
    if family:
        archs = [a for a in archs if a.family == family]
    return archs[:limit] if limit else archs


def routes(archs: list[Arch], route: str) -> list[str]:
    """``mixed``: every fourth architecture of each family through the CLI."""
    if route != "mixed":
        return [route] * len(archs)
    seen: dict[str, int] = {}
    out = []
    for a in archs:
        k = seen[a.family] = seen.get(a.family, -1) + 1
        out.append("cli" if k % 4 == 3 else "py")
    return out


def sweep(
    archs: list[Arch],
    size: int,
    route: str = "mixed",
    echo: Callable[[str], None] | None = None,
) -> list[Row]:
    """Run every step on every architecture; ``echo`` gets one line per finished row."""
    images = photos(4)
    rows = []
    for arch, how in zip(archs, routes(archs, route), strict=True):
        row = sweep_one(arch, size, how, images)
        rows.append(row)
        if echo is not None:
            echo(format_row(row))
    return rows


# -- the report ----------------------------------------------------------------------------------
def format_row(row: Row) -> str:
    cells = [f"{row.arch.name:38s}", f"{row.route:3s}", f"{row.size:4d}"]
    cells += [f"{_short(row.cells.get(s)):8s}" for s in STEPS]
    return " ".join(cells) + f" {row.seconds:6.1f}s  {row.layer}"


def _short(outcome: Outcome | None) -> str:
    if outcome is None:
        return "-"
    return {"ok": "ok", "said": "said", "FAIL": "FAIL", "skip": "skip"}[outcome.status]


def header() -> str:
    cols = [f"{'architecture':38s}", "via", "size"] + [f"{s:8s}" for s in STEPS]
    return " ".join(cols) + "    time"


_QUIET = ("python route only", "no Grad-CAM map")  # skips every CLI row has: not listed


def details(rows: list[Row]) -> list[str]:
    """One line per step that did not simply pass: the reason or the failure."""
    lines = []
    for row in rows:
        for step, c in row.cells.items():
            shown_skip = c.status == "skip" and step == "parity" and c.detail not in _QUIET
            if c.status == "said" or shown_skip:
                lines.append(f"{row.arch.name} {step}: {c.detail}")
            elif c.status == "FAIL":
                lines.append(f"{row.arch.name} {step}: FAIL\n{c.detail.rstrip()}")
    return lines


def summary(rows: list[Row], seconds: float) -> str:
    passed = sum(r.passed for r in rows)
    fams = sorted({r.arch.family for r in rows})
    said = sum(c.status == "said" for r in rows for c in r.cells.values())
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return (
        f"{passed}/{len(rows)} architectures pass ({100 * passed / max(1, len(rows)):.1f} %; "
        f"families: {', '.join(fams)}); {said} step(s) refused with a reason; "
        f"{seconds:.0f} s wall, {torch.get_num_threads()} torch thread(s), "
        f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", help="comma-separated architecture names (tv:NAME for torchvision)")
    p.add_argument("--family", choices=("timm", "tv"))
    p.add_argument("--limit", type=int, help="the first N architectures")
    p.add_argument("--size", type=int, default=64, help="input size in pixels (default 64)")
    p.add_argument("--route", choices=("mixed", "py", "cli"), default="mixed")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", type=Path, help="also write the outcomes to this JSON file")
    p.add_argument("--list", action="store_true", help="list the architectures and stop")
    a = p.parse_args(argv)
    archs = select(all_archs(), a.only, a.family, a.limit)
    if a.list:
        for arch in archs:
            print(f"{arch.name:40s} {input_size(arch, a.size):4d} {arch.free:12s} {arch.note}")
        return 0
    if a.threads:
        torch.set_num_threads(a.threads)
    print(header(), flush=True)
    t0 = time.perf_counter()
    rows = sweep(archs, a.size, a.route, echo=lambda line: print(line, flush=True))
    seconds = time.perf_counter() - t0
    for line in details(rows):
        print(line)
    print(summary(rows, seconds))
    if a.json:
        a.json.write_text(json.dumps([to_json(r) for r in rows], indent=1))
    return 0 if all(r.passed for r in rows) else 1


def to_json(row: Row) -> dict[str, Any]:
    return {
        "arch": row.arch.name,
        "route": row.route,
        "size": row.size,
        "layer": row.layer,
        "cells": {s: vars(c) for s, c in row.cells.items()},
    }


if __name__ == "__main__":
    sys.exit(main())
