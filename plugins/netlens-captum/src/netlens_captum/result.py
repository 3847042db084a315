"""``AttributionResult``: per-image attribution maps as a netlens Result."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from netlens.analyzers.base import Result

from .render import attribution_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["AttributionResult"]


@dataclass(frozen=True)
class AttributionResult(Result):
    """Attributions of a captum method for a batch of images.

    Arrays: ``attributions`` (N×C×H×W, as captum returns them), ``maps`` (N×H×W, summed over
    channels, signed) and ``inputs`` (N×H×W×3 uint8, the images as the model saw them). Meta:
    method, targets, classes, probabilities, options, and ``completeness_delta`` for
    Integrated Gradients (|sum of attributions − (f(x) − f(baseline))| per image).
    """

    @property
    def maps(self) -> np.ndarray:
        """N×H×W signed attribution maps."""
        return self.arrays["maps"]

    @property
    def targets(self) -> list[int]:
        """The class index each image was explained for."""
        return list(self.meta["targets"])

    def figures(self) -> dict[str, Figure]:
        """One figure per image: input, attribution map with colour bar, overlay."""
        figs = {}
        for i, image in enumerate(self.meta["images"]):
            title = (
                f"{self.meta['method']} · {image} · class {self.meta['classes'][i]} "
                f"({'value' if self.meta.get('values') else 'p'}="
                f"{self.meta['probabilities'][i]:.{4 if self.meta.get('values') else 2}g})"
            )
            figs[f"{self.name}-{image}"] = attribution_figure(
                self.arrays["inputs"][i], self.maps[i], title, signed=self.meta["signed"]
            )
        return figs

    def save(self, directory: str | Path, *, arrays: bool = True) -> list[Path]:
        """Write the PNGs, the JSON summary, the CSV table and (by default) the ``.npy`` arrays."""
        return super().save(directory, arrays=arrays)
