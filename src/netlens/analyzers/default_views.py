"""netlens' built-in weight and activation views, registered like any outside plugin would be."""

from __future__ import annotations

from ..plugins import hookimpl
from ..plugins.registry import Registry


@hookimpl
def netlens_register_analyzers(registry: Registry) -> None:
    from .features import FeaturesAnalyzer
    from .kernels import KernelsAnalyzer
    from .stats import StatsAnalyzer
    from .top_activations import TopActivationsAnalyzer

    for analyzer in (
        KernelsAnalyzer(),
        FeaturesAnalyzer(),
        StatsAnalyzer(),
        TopActivationsAnalyzer(),
    ):
        registry.add(analyzer.name, analyzer, description=analyzer.description)
