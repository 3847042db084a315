"""Explanation-quality metrics for ``netlens evaluate``, registered through a plugin hook.

A metric is an object with

- ``name`` (str), ``needs_masks`` (bool), ``higher_is_better`` (bool), optionally ``default``
  (bool, True when absent: whether ``evaluate`` runs it when no metrics are named);
- ``cost(n_images, **opts) -> int``: images it will forward-pass (printed before a run);
- ``__call__(model, x, heatmaps, targets, masks=None, **opts) -> dict[str, np.ndarray]``:
  per-image arrays. ``"score"`` (N) is required; ``"baseline"`` (N) is the chance level or the
  random-order score of the same images; ``"curve"`` / ``"curve_baseline"`` (N×K) are optional
  curves, sampled at ``"curve_x"`` (K) or evenly on [0, 1].

``x`` is the preprocessed N×C×H×W batch, ``heatmaps`` N×H×W at input resolution, ``targets`` the
N explained classes and ``masks`` N×H×W bool ground truth (for metrics with ``needs_masks``);
``opts`` carry the run's options and ``explain(model, x, targets) -> N×H×W``, the method being
evaluated (for metrics that re-explain, such as ``randomization``), and ``shared``, a dict that
lives for one batch of images (same model, images and targets; all methods), where metrics keep
what they can reuse across methods and metrics (ROAD keeps its random-order baseline there).
A plugin adds its own from a ``netlens_register_metrics(registry)`` hook:
``registry.add("my-metric", MyMetric())``.
"""

from __future__ import annotations

from ..plugins import hookimpl
from ..plugins.registry import Registry


@hookimpl
def netlens_register_metrics(registry: Registry) -> None:
    from .deletion import Deletion, Insertion
    from .localization import EnergyInMask, PointingGame
    from .randomization import Randomization
    from .road import RoadLerf, RoadMorf

    builtins = (
        PointingGame(),
        EnergyInMask(),
        Deletion(),
        Insertion(),
        RoadMorf(),
        RoadLerf(),
        Randomization(),
    )
    for metric in builtins:
        registry.add(metric.name, metric, description=type(metric).__doc__ or "")


@hookimpl
def netlens_register_analyzers(registry: Registry) -> None:
    from ..analyzers.evaluate import EvaluateAnalyzer
    from ..analyzers.sanity import SanityAnalyzer

    registry.add("evaluate", EvaluateAnalyzer())
    registry.add("sanity", SanityAnalyzer())
