"""CamResult: heatmaps, targets and probabilities, with overlays, figures and a JSON summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .base import Result, to_jsonable

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..images import Preprocess

_CLASSIFIERS = ("multiclass", "multilabel", "binary")
ORIGINAL_SIDE = 2048  # the longest side any picture of a result is drawn at (``pictures``)

__all__ = ["KEEP_BYTES", "ORIGINAL_SIDE", "CamResult", "ReadAgain", "kept_originals"]


KEEP_BYTES = 512 * 2**20  # decoded pictures one result keeps; beyond, files are read again


@dataclass(frozen=True)
class ReadAgain:
    """An image file a result reads again when it draws it, refusing it if it has changed
    since the maps were made (its size and modification time)."""

    path: Path
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> ReadAgain:
        st = path.stat()
        return cls(path, st.st_size, st.st_mtime_ns)

    def load(self) -> np.ndarray | None:
        from ..errors import ImageError
        from ..images import load_original

        try:
            st = self.path.stat()
        except OSError:
            st = None
        if st is None or (st.st_size, st.st_mtime_ns) != (self.size, self.mtime_ns):
            raise ImageError(
                f"{self.path} has changed or gone since its maps were made; run cam on it again"
            )
        return load_original(self.path)


def kept_originals(sources: list[Any], budget: int | None = None) -> list[Any]:
    """The images as a result keeps them: ``(H×W×3 uint8 shrunk to ORIGINAL_SIDE on its long
    side, full H×W)`` while their bytes stay within ``budget``, so a result shows and saves the
    picture its maps were made of even after the file is overwritten or deleted; beyond it
    (a folder of many large photos), files as :class:`ReadAgain`; None stays None (a tensor)."""
    from ..images import load_original
    from ..render.cam_display import shrunk

    budget = KEEP_BYTES if budget is None else budget
    kept: list[Any] = []
    for source in sources:
        if source is None or (budget <= 0 and isinstance(source, Path)):
            kept.append(None if source is None else ReadAgain.of(source))
            continue
        image = load_original(source)
        small = shrunk(image, ORIGINAL_SIDE)
        budget -= small.nbytes
        kept.append((small, (int(image.shape[0]), int(image.shape[1]))))
    return kept


@dataclass(frozen=True)
class CamResult(Result):
    """What ``lens.cam`` returns.

    ``arrays["heatmaps"]`` is N×K×H×W (K target classes per image, 1 unless ``top=K``);
    :attr:`heatmaps` drops K when it is 1. Heatmaps are float32 in [0, 1] at input resolution.
    ``originals``: each image as shown (see :func:`kept_originals`), ``original_sizes`` its full
    H×W (where the model's input lies in it); None for an input given as a tensor.
    """

    originals: list[Any] = field(default_factory=list, repr=False)
    original_sizes: list[tuple[int, int] | None] = field(default_factory=list, repr=False)
    preprocess: Preprocess | None = field(default=None, repr=False)
    save_arrays = True

    # -- accessors -------------------------------------------------------------------------
    @property
    def heatmaps(self) -> np.ndarray:
        """N×H×W maps (N×K×H×W when ``top=K`` is given, K = 1 included)."""
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
        if len(classes) < 2 and self.meta.get("task") == "binary":
            from ..targets import binary_names  # one name is the positive class's

            classes = binary_names(classes) if classes else ["negative", "positive"]
        return str(classes[index]) if 0 <= index < len(classes) else str(index)

    # -- pictures --------------------------------------------------------------------------
    def original(self, i: int) -> np.ndarray:
        """Image ``i`` as H×W×3 uint8, as it was when the maps were made (at most
        :data:`ORIGINAL_SIDE` px long), or the denormalised input."""
        from ..images import load_original

        source = self.originals[i]
        if isinstance(source, ReadAgain):
            return source.load()  # type: ignore[return-value]
        return load_original(source)  # type: ignore[return-value]

    def _boxes(
        self, pre: Preprocess, i: int, hw: tuple[int, int]
    ) -> tuple[tuple[int, int, int, int], ...]:
        """Where the input lies in image ``i`` (in the kept picture's pixels, measured on the
        full image as the model saw it) and where the image lies in the input."""
        from ..render.overlay import display_scale

        sizes = self.original_sizes
        full = (sizes[i] if i < len(sizes) else None) or hw
        top, bottom, left, right = pre.crop_box(full)
        s = display_scale(full, max_side=ORIGINAL_SIDE) if tuple(full) != tuple(hw) else 1.0
        if s != 1.0:  # rounded as render.overlay rounds a box it shrinks
            top, bottom = round(top * s), min(hw[0], round(bottom * s))
            left, right = round(left * s), min(hw[1], round(right * s))
        return (top, bottom, left, right), pre.input_box(full)

    def overlay(
        self,
        i: int,
        k: int = 0,
        *,
        alpha: float = 0.5,
        cmap: str = "jet",
        min_side: int = 0,
        max_side: int = 0,
    ) -> np.ndarray:
        """Heatmap ``k`` of image ``i`` blended over the original image at its original size
        (``min_side``/``max_side``: enlarged or shrunk for display, see ``render.overlay``)."""
        from ..render.overlay import overlay

        image = self.original(i)
        box = None
        heat = self.arrays["heatmaps"][i, k]
        if not self.meta["from_tensor"][i] and self.preprocess is not None:
            box, (top, bottom, left, right) = self._boxes(self.preprocess, i, image.shape[:2])
            heat = heat[top:bottom, left:right]  # padding (timm's border mode) shows no image
        return overlay(
            image, heat, alpha=alpha, cmap=cmap, box=box, min_side=min_side, max_side=max_side
        )

    def figure(self, i: int = 0, *, top: int = 5, alpha: float = 0.5) -> Figure:
        """Image | overlay per target (with its probability and colour scale) | top predictions.

        Displays inline in Jupyter without ``%matplotlib inline``."""
        from ..render.cam_display import shrunk
        from ..render.cam_figure import MAX_SIDE, cam_figure
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
        task = self.meta.get("task", "multiclass")
        fig = cam_figure(
            shrunk(self.original(i), MAX_SIDE),
            [self.overlay(i, k, alpha=alpha, max_side=MAX_SIDE) for k in range(len(t))],
            [f"{self.meta['method']} · {self.target_name(i, k)}" for k in range(len(t))],
            [self.class_name(int(c)) for c in order],
            [float(self.probs[i, c]) for c in order],
            title=f"{self.names[i]} · layer {self.layer}",
            overlay_probs=[self._value(i, int(c)) for c in t] if task in _CLASSIFIERS else None,
            values=task == "regression",
        )
        return inline_figure(fig)

    def _value(self, i: int, c: int) -> float | None:
        """Image ``i``'s score of output ``c``: a probability, or a regression value."""
        return float(self.probs[i, c]) if 0 <= c < self.probs.shape[1] else None

    def target_name(self, i: int, k: int = 0) -> str:
        """How target ``k`` of image ``i`` is called (a class name, ``output 2``, ...)."""
        names = self.meta.get("target_names")
        if names:
            return str(names[i][k])
        return self.class_name(int(self.arrays["targets"][i, k]))

    def _stem(self, i: int, k: int | None = None) -> str:
        """``image_method_layer[_target]``: unique per image, method, layer and target."""
        from ..output import safe_name

        parts = [self.names[i], self.meta["method"], self.layer]
        if k is not None:
            parts.append(self.target_name(i, k))
        return "_".join(safe_name(p) for p in parts)

    def figures(self) -> dict[str, Figure]:
        alpha = self.meta.get("alpha", 0.5)
        return {
            f"{self._stem(i)}_figure": self.figure(i, alpha=alpha) for i in range(len(self.names))
        }

    def pictures(self) -> dict[str, np.ndarray]:
        """The overlays at the original images' size; a small image (a 28×28 digit) enlarged to
        at least 256 px and a huge one shrunk to at most 2,048 px, so each reads on its own."""
        return {
            self._stem(i, k): self.overlay(
                i, k, alpha=self.meta.get("alpha", 0.5), min_side=256, max_side=ORIGINAL_SIDE
            )
            for i in range(len(self.names))
            for k in range(self.arrays["targets"].shape[1])
        }

    def array_files(self) -> dict[str, np.ndarray]:
        """One ``.npy`` map per image and target (H×W float32 in [0, 1])."""
        h = self.arrays["heatmaps"]
        return {self._stem(i, k): h[i, k] for i in range(h.shape[0]) for k in range(h.shape[1])}

    # -- output ----------------------------------------------------------------------------
    def rows(self) -> list[dict[str, Any]]:
        """One summary row per image: prediction, target(s), probability, method, layer."""
        out = []
        single = self.arrays["targets"].shape[1] == 1 and not self.meta.get("top")
        for i, name in enumerate(self.names):
            t = [int(c) for c in self.arrays["targets"][i]]
            pred = int(self.predictions[i])
            probs = [self._value(i, c) for c in t]
            labels = [self.target_name(i, k) for k in range(len(t))]
            regression = self.meta.get("task") == "regression"  # values: none is "predicted"
            score = "value" if regression else "probability"
            out.append(
                {
                    "image": name,
                    "source": (self.meta.get("sources") or [None] * len(self.names))[i],
                    "prediction": None if regression else pred,
                    "prediction_name": None if regression else self.class_name(pred),
                    f"prediction_{score}": None if regression else float(self.probs[i, pred]),
                    "target": t[0] if single else t,
                    "target_name": labels[0] if single else labels,
                    score: probs[0] if single else probs,
                    "method": self.meta["method"],
                    "layer": self.layer,
                    "map_max": float(self.arrays["heatmaps"][i].max()),
                    "files": [f"{self._stem(i)}_figure.png"]
                    + [
                        f"{self._stem(i, k)}{ext}"
                        for k in range(len(t))
                        for ext in (".png", ".npy")
                    ],
                }
            )
        return out

    def summary(self) -> dict[str, Any]:
        meta = {k: v for k, v in self.meta.items() if k not in ("classes", "run", "target_names")}
        head = {"analyzer": self.name, "run": self.meta.get("run")}
        return to_jsonable({**head, **meta, "layer": self.layer, "images": self.rows()})
