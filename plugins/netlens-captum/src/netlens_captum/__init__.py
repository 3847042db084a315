"""netlens-captum: captum's attribution methods as netlens analyzers.

Installed, it adds ``integrated-gradients``, ``saliency``, ``occlusion``, ``guided-backprop``
and ``guided-gradcam`` to netlens (``netlens run integrated-gradients MODEL IMAGES``,
``lens.run("integrated-gradients", images)``). netlens finds this module through the entry
point ``[project.entry-points.netlens] captum = "netlens_captum"``; importing it is cheap
(captum is imported when an analyzer runs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from netlens.plugins import hookimpl

if TYPE_CHECKING:
    from netlens.plugins.registry import Registry

__version__ = "0.1.0"
__all__ = ["netlens_register_analyzers"]


@hookimpl
def netlens_register_analyzers(registry: Registry) -> None:
    """Register one analyzer per captum method."""
    from .analyzer import CaptumAnalyzer
    from .methods import METHODS

    for name, method in METHODS.items():
        registry.add(name, CaptumAnalyzer(method), description=method.description)
