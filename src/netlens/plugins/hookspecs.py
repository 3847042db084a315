"""Hook specifications: what a netlens plugin can implement.

Every hook is handed a registry object and adds to it; return values are ignored. Built-in
analyzers, CAM methods, loaders and architectures register through these same hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import hookspec

if TYPE_CHECKING:
    from .registry import Registry


@hookspec
def netlens_register_analyzers(registry: Registry) -> None:
    """Add analyzers: ``registry.add(name, analyzer, description=...)``.

    An analyzer is an object with a ``run(lens, inputs=None, **options) -> Result`` method (see
    :class:`netlens.analyzers.base.Analyzer`). It becomes ``netlens run NAME`` and
    ``lens.run(NAME, ...)``.
    """


@hookspec
def netlens_register_cam_methods(registry: Registry) -> None:
    """Add CAM methods: ``registry.add("my-cam", MyCam, description=...)``.

    A method is a :class:`netlens.analyzers.cam_base.CamMethod` subclass supplying channel
    weights; it becomes ``netlens cam --method my-cam``.
    """


@hookspec
def netlens_register_model_loaders(registry: Registry) -> None:
    """Add model loaders: ``registry.add(name, loader)``.

    A loader is ``loader(source: pathlib.Path, request: LoadRequest) -> LoadedModel | None``;
    it returns None when the file is not for it. Loaders from plugins are tried before the
    built-in ones, so a plugin can take over a format.
    """


@hookspec
def netlens_register_archs(registry: Registry) -> None:
    """Add architectures: ``registry.add(name, factory)``.

    ``factory(num_classes: int, **kwargs) -> nn.Module``; the name can then be given as
    ``--arch NAME`` and is stored in netlens checkpoints.
    """


@hookspec
def netlens_register_datasets(registry: Registry) -> None:
    """Add named datasets: ``registry.add(name, factory)``.

    ``factory(split: str = "test", **kwargs) -> torch.utils.data.Dataset`` yielding
    ``(image_tensor, label)``; the dataset should carry ``classes``. Usable as ``--data NAME``.
    """


@hookspec
def netlens_register_metrics(registry: Registry) -> None:
    """Add explanation-quality metrics for ``netlens evaluate``: ``registry.add(name, metric)``."""


@hookspec
def netlens_register_commands(registry: Registry) -> None:
    """Add CLI commands: ``registry.add(name, function)``.

    ``function`` is a typer command function (use :func:`netlens.cli.options.command` and the
    shared option aliases in :mod:`netlens.cli.options` so it speaks the CLI's vocabulary); it
    becomes ``netlens NAME``. A plugin analyzer without a command of its own gets one made from
    its declared options, so this hook is only for commands that need more.
    """
