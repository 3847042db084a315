"""One layer selection: a module by dotted name, optionally one call of it, optionally as consumed.

A module can run several times in one forward (a shared activation after the stem and after the
head; torchvision's ResNet blocks call their ``relu`` twice). ``name@k`` picks call ``k``
(from 0; negative from the end: ``relu@-1`` is the last call). ``name:consumed`` (or
``name@k:consumed``) is that output *as later code reads it*: after in-place ops that rewrite it
outside any module (``F.relu(x, inplace=True)`` in a ``forward``). See ``docs/layers.md``.

:class:`LayerCall` is a ``str`` (``"relu@1"``), so code that keys dicts, prints or compares
layer names keeps working; ``.name``, ``.call`` and ``.consumed`` give the parts.
"""

from __future__ import annotations

from .errors import LayerNotFoundError

__all__ = ["CONSUMED", "LayerCall"]

CONSUMED = ":consumed"


class LayerCall(str):
    """A layer selection: module ``name``, ``call`` index (None: every call), ``consumed``.

    Example:
        >>> c = LayerCall.parse("layer4.1.relu@-1")
        >>> c.name, c.call, c.consumed, str(c)
        ('layer4.1.relu', -1, False, 'layer4.1.relu@-1')
        >>> LayerCall("features", consumed=True)
        'features:consumed'
    """

    _name: str
    _call: int | None
    _consumed: bool

    def __new__(cls, name: str, call: int | None = None, *, consumed: bool = False) -> LayerCall:
        name = str(name)
        text = name if call is None else f"{name}@{int(call)}"
        self = super().__new__(cls, text + (CONSUMED if consumed else ""))
        self._name, self._call, self._consumed = name, None if call is None else int(call), consumed
        return self

    @classmethod
    def parse(cls, text: str) -> LayerCall:
        """Split ``NAME[@K][:consumed]``; ``NAME`` may be a dotted name, glob or ``type:Cls``."""
        if isinstance(text, LayerCall):
            return text
        base = text.strip()
        consumed = base.endswith(CONSUMED)
        if consumed:
            base = base[: -len(CONSUMED)]
        call = None
        if "@" in base:
            base, _, k = base.rpartition("@")
            try:
                call = int(k)
            except ValueError:
                raise LayerNotFoundError(
                    f"bad call index in '{text}': write NAME@K with an integer K, e.g. "
                    f"'{base}@0' (first call) or '{base}@-1' (last call)"
                ) from None
        return cls(base, call, consumed=consumed)

    @property
    def name(self) -> str:
        """The module's dotted name (or the glob / ``type:`` selector before resolution)."""
        return self._name

    @property
    def call(self) -> int | None:
        """Which call of the module (negative from the end); None for every call."""
        return self._call

    @property
    def consumed(self) -> bool:
        """True for the output as later ops read it (after in-place rewrites outside modules)."""
        return self._consumed

    def with_name(self, name: str) -> LayerCall:
        """The same call and ``consumed`` flag on another module (resolving globs and types)."""
        return LayerCall(name, self._call, consumed=self._consumed)

    def __reduce__(self) -> tuple:  # pickling keeps the parts
        return (_rebuild, (self._name, self._call, self._consumed))


def _rebuild(name: str, call: int | None, consumed: bool) -> LayerCall:
    return LayerCall(name, call, consumed=consumed)
