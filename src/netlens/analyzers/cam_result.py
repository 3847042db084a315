"""CamResult: heatmaps, targets and probabilities, with overlays, figures and a JSON summary."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .base import Result, to_jsonable

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..images import Preprocess

__all__ = ["CamResult"]


@dataclass(frozen=True)
class CamResult(Result):
    """What ``lens.cam`` returns.

    ``arrays["heatmaps"]`` is N×K×H×W (K target classes per image, 1 unless ``top=K``);
    :attr:`heatmaps` drops K when it is 1. Heatmaps are float32 in [0, 1] at input resolution.
    """

    originals: list[np.ndarray] = field(default_factory=list, repr=False)
    preprocess: Preprocess | None = field(default=None, repr=False)

    # -- accessors -------------------------------------------------------------------------
    @property
    def heatmaps(self) -> np.ndarray:
        """N×H×W maps (N×K×H×W with ``top=K``, K > 1)."""
        h = self.arrays["heatmaps"]
        return h[:, 0] if h.shape[1] == 1 and not self.meta.get("top") else h

    @property
    def targets(self) -> np.ndarray:
        """The explained class per image (N), or N×K with ``top=K``."""
        t = self.arrays["targets"]
        return t[:, 0] if t.shape[1] == 1 and not self.meta.get("top") else t

    @property
    def probs(self) -> np.ndarray:
        """N×classes softmax probabilities."""
        return self.arrays["probs"]

    @property
    def predictions(self) -> np.ndarray:
        """The most probable class per image."""
        return self.probs.argmax(axis=1)

    @property
    def layer(self) -> str:
        """The layer explained (several layers: comma-separated)."""
        return ",".join(self.meta["layers"])

    @property
    def names(self) -> list[str]:
        return list(self.meta["images"])

    def class_name(self, index: int) -> str:
        classes = self.meta.get("classes") or []
        return str(classes[index]) if 0 <= index < len(classes) else str(index)

    # -- pictures --------------------------------------------------------------------------
    def original(self, i: int) -> np.ndarray:
        """Image ``i`` as H×W×3 uint8: the file as read, or the denormalised input tensor."""
        return self.originals[i]

    def overlay(self, i: int, k: int = 0, *, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
        """Heatmap ``k`` of image ``i`` blended over the original image at its original size."""
        from ..render.overlay import crop_box, overlay

        image = self.original(i)
        box = None
        if not self.meta["from_tensor"][i] and self.preprocess is not None:
            box = crop_box(image.shape[:2], self.preprocess.size, self.preprocess.crop_pct)
        return overlay(image, self.arrays["heatmaps"][i, k], alpha=alpha, cmap=cmap, box=box)

    def figure(self, i: int = 0, *, top: int = 5, alpha: float = 0.5) -> Figure:
        """Image | overlay per target (with its probability and colour scale) | top predictions.

        Displays inline in Jupyter without ``%matplotlib inline``."""
        from ..render.cam_figure import cam_figure
        from ..render.display import inline_figure

        if not -len(self.names) <= i < len(self.names):
            from ..errors import NetlensError

            raise NetlensError(
                f"image {i} does not exist: this result has {len(self.names)} image(s)"
                + (f" (0..{len(self.names) - 1})" if self.names else "")
            )
        i %= len(self.names)
        t = self.arrays["targets"][i]
        order = np.argsort(-self.probs[i])[:top]
        fig = cam_figure(
            self.original(i),
            [self.overlay(i, k, alpha=alpha) for k in range(len(t))],
            [f"{self.meta['method']} · {self.class_name(int(c))}" for c in t],
            [self.class_name(int(c)) for c in order],
            [float(self.probs[i, c]) for c in order],
            title=f"{self.names[i]} · layer {self.layer}",
            overlay_probs=[float(self.probs[i, int(c)]) for c in t],
        )
        return inline_figure(fig)

    def figures(self) -> dict[str, Figure]:
        m = _safe(self.meta["method"])
        return {f"{name}_{m}_figure": self.figure(i) for i, name in enumerate(self.names)}

    # -- output ----------------------------------------------------------------------------
    def rows(self) -> list[dict[str, Any]]:
        """One summary row per image: prediction, target(s), probability, method, layer."""
        out = []
        for i, name in enumerate(self.names):
            t = [int(c) for c in self.arrays["targets"][i]]
            pred = int(self.predictions[i])
            row = {
                "image": name,
                "prediction": pred,
                "prediction_name": self.class_name(pred),
                "prediction_probability": float(self.probs[i, pred]),
                "target": t[0] if len(t) == 1 and not self.meta.get("top") else t,
                "target_name": [self.class_name(c) for c in t],
                "probability": [float(self.probs[i, c]) for c in t],
                "method": self.meta["method"],
                "layer": self.layer,
            }
            if len(t) == 1 and not self.meta.get("top"):
                row["target_name"], row["probability"] = (
                    row["target_name"][0],
                    row["probability"][0],
                )
            out.append(row)
        return out

    def summary(self) -> dict[str, Any]:
        meta = {k: v for k, v in self.meta.items() if k != "classes"}
        return to_jsonable(
            {"analyzer": self.name, **meta, "layer": self.layer, "images": self.rows()}
        )

    def save(self, directory: str | Path, *, arrays: bool = True, alpha: float = 0.5) -> list[Path]:
        """Per image: overlay PNG(s) at original size, the side-by-side figure, the ``.npy`` map;
        plus ``cam.json`` listing per image prediction, target, probability, method, layer and
        its files. Returns every path written."""
        from ..render.figures import save_figure
        from ..render.overlay import write_png

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        m = _safe(self.meta["method"])
        named = bool(self.meta.get("top") or self.meta.get("explicit_target"))
        summary = self.summary()
        written: list[Path] = []
        for i, (name, row) in enumerate(zip(self.names, summary["images"], strict=True)):
            files = []
            for k, c in enumerate(self.arrays["targets"][i]):
                suffix = f"_{_safe(self.class_name(int(c)))}" if named else ""
                files.append(
                    write_png(self.overlay(i, k, alpha=alpha), out / f"{name}_{m}{suffix}.png")
                )
            files.append(save_figure(self.figure(i, alpha=alpha), out / f"{name}_{m}_figure.png"))
            if arrays:
                np.save(out / f"{name}_{m}.npy", self.heatmaps[i])
                files.append(out / f"{name}_{m}.npy")
            row["files"] = [str(f) for f in files]
            written += files
        json_path = out / "cam.json"
        json_path.write_text(json.dumps(summary, indent=2))
        return [*written, json_path]


def _safe(text: str) -> str:
    """A file-name-safe version of a class or method name."""
    return re.sub(r"[^A-Za-z0-9+.-]+", "-", str(text)).strip("-") or "x"
