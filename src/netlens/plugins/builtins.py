"""Everything netlens itself contributes, registered in this one place through the same hooks and
the same ``netlens`` entry-point group a third-party plugin uses.

Each class below is one built-in plugin, named by its entry point in ``pyproject.toml`` (``core``,
``archs``, ``datasets``, ``cam``, ``views``, ``metrics``, ``ablation``), so each can be blocked on
its own (``NETLENS_DISABLE_PLUGINS=cam``) and replaced by a plugin of yours. The implementations
are imported only when a hook runs, so loading the plugin host stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import hookimpl

if TYPE_CHECKING:
    from .registry import Registry

__all__ = ["Ablation", "Archs", "Cam", "Core", "Datasets", "Metrics", "Views"]


class Core:
    """How a model file is opened: timm's and Hugging Face's folders, netlens checkpoints, bare
    state_dicts, TorchScript and ``torch.export`` files (their weights), pickled modules."""

    @staticmethod
    @hookimpl
    def netlens_register_model_loaders(registry: Registry) -> None:
        from ..models import load, weights
        from ..models.hf import load_hf_folder
        from ..models.pickled import load_pickled_module
        from ..models.timm_folder import load_timm_folder

        registry.add("timm-hub-folder", load_timm_folder)
        registry.add("hugging-face-folder", load_hf_folder)
        registry.add("netlens-checkpoint", load.load_netlens_checkpoint)
        registry.add("state-dict", weights.load_state_dict_file)
        registry.add("compiled-archive", weights.load_compiled_archive)
        registry.add("pickled-module", load_pickled_module)


class Archs:
    """The architectures of the zoo models (``--arch resnet`` for a bare state_dict)."""

    @staticmethod
    @hookimpl
    def netlens_register_archs(registry: Registry) -> None:
        from ..models.archs import allconv, lenet5, resnet, vgg

        for factory in (lenet5, vgg, resnet, allconv):
            registry.add(factory.__name__, factory)


class Datasets:
    """Named datasets: ``shapes`` (generated, with masks), ``fashion-mnist``, ``mnist5k``."""

    @staticmethod
    @hookimpl
    def netlens_register_datasets(registry: Registry) -> None:
        from ..data.named import fashion_mnist, mnist5k, shapes

        registry.add("shapes", shapes)
        registry.add("fashion-mnist", fashion_mnist)
        registry.add("mnist5k", mnist5k)


class Cam:
    """The ``cam`` analyzer and the nine CAM methods."""

    @staticmethod
    @hookimpl
    def netlens_register_analyzers(registry: Registry) -> None:
        from ..analyzers.cam import CamAnalyzer

        registry.add("cam", CamAnalyzer(), description=CamAnalyzer.description)

    @staticmethod
    @hookimpl
    def netlens_register_cam_methods(registry: Registry) -> None:
        from ..analyzers.cam_methods import METHODS

        for name, method in METHODS.items():
            registry.add(name, method)


class Views:
    """Weight and activation views: kernels, features, stats, top activations."""

    @staticmethod
    @hookimpl
    def netlens_register_analyzers(registry: Registry) -> None:
        from ..analyzers.features import FeaturesAnalyzer
        from ..analyzers.kernels import KernelsAnalyzer
        from ..analyzers.stats import StatsAnalyzer
        from ..analyzers.top_activations import TopActivationsAnalyzer

        for analyzer in (KernelsAnalyzer, FeaturesAnalyzer, StatsAnalyzer, TopActivationsAnalyzer):
            registry.add(analyzer.name, analyzer(), description=analyzer.description)


class Metrics:
    """Explanation-quality metrics and the analyzers that use them: ``evaluate``, ``sanity``."""

    @staticmethod
    @hookimpl
    def netlens_register_metrics(registry: Registry) -> None:
        from ..metrics.deletion import Deletion, Insertion
        from ..metrics.localization import EnergyInMask, PointingGame
        from ..metrics.randomization import Randomization
        from ..metrics.road import RoadLerf, RoadMorf

        kinds = (PointingGame, EnergyInMask, Deletion, Insertion, RoadMorf, RoadLerf, Randomization)
        for kind in kinds:
            registry.add(kind.name, kind(), description=kind.__doc__ or "")

    @staticmethod
    @hookimpl
    def netlens_register_analyzers(registry: Registry) -> None:
        from ..analyzers.evaluate import EvaluateAnalyzer
        from ..analyzers.sanity import SanityAnalyzer

        for analyzer in (EvaluateAnalyzer, SanityAnalyzer):
            registry.add(analyzer.name, analyzer(), description=analyzer.description)


class Ablation:
    """The ``ablate`` analyzer: blocks or channels switched off one at a time."""

    @staticmethod
    @hookimpl
    def netlens_register_analyzers(registry: Registry) -> None:
        from ..analyzers.ablation import AblateAnalyzer

        registry.add("ablate", AblateAnalyzer(), description=AblateAnalyzer.description)
