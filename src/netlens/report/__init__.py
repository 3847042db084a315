"""One self-contained HTML page per model, built from the Results the commands produce.

>>> import netlens
>>> report = netlens.load().report(out="netlens-out")
>>> report.path
PosixPath('netlens-out/report-zoo-shapes-allconv.html')
"""

from .build import Report, build_report, parse_sections
from .sections import BUILDERS

SECTIONS = tuple(BUILDERS)

__all__ = ["SECTIONS", "Report", "build_report", "parse_sections"]
