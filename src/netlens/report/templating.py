"""The Jinja2 environment for netlens' HTML (report pages and inline result cards).

Templates ship as package data in ``netlens/report/templates/``; every value is autoescaped, so
class names, file names and layer names from a model can never inject markup.
"""

from __future__ import annotations

import json
import math
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

__all__ = ["cell", "environment", "pct", "render"]


def environment() -> Environment:
    """A fresh environment (cheap; no module-level state) with netlens' filters."""
    env = Environment(
        loader=PackageLoader("netlens.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["cell"] = cell
    env.filters["pct"] = pct
    return env


def render(template: str, **context: Any) -> str:
    """Render one template by name with ``context``."""
    return environment().get_template(template).render(**context)


def cell(value: Any) -> str:
    """One table cell as text: numbers to 4 significant digits, names never shortened."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        if len(value) > 8 or any(isinstance(v, (list, tuple)) for v in value):
            return f"[{len(value)} values]"
        return ("; " if any(isinstance(v, dict) for v in value) else ", ").join(map(cell, value))
    if isinstance(value, dict) and {"before", "after"} <= set(value) and len(value) <= 3:
        name = " ".join(cell(v) for k, v in value.items() if k not in ("before", "after"))
        return f"{name} {cell(value['before'])}→{cell(value['after'])}".strip()
    if isinstance(value, dict):
        if len(value) > 8 or any(isinstance(v, (list, tuple, dict)) for v in value.values()):
            return json.dumps(value, default=str)
        return ", ".join(f"{k} {cell(v)}" for k, v in value.items())
    return str(value)


def pct(value: float) -> str:
    """A probability as a percentage with sensible precision (0.7 %, 42 %, 99.9 %)."""
    p = 100.0 * float(value)
    if p < 1 or p > 99:
        return f"{p:.1f} %"
    return f"{p:.0f} %"
