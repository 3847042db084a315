"""Build the one-page HTML report of a model and write it atomically."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import NetlensError, hint
from . import repro
from .inputs import ReportInputs
from .sections import BUILDERS, Section

if TYPE_CHECKING:
    from ..lens import Lens

__all__ = [
    "Report",
    "build_report",
    "check_page_path",
    "model_source",
    "page_path",
    "parse_sections",
]

DATA_SECTIONS = ("stats", "ablate", "evaluate")


@dataclass(frozen=True)
class Report:
    """A built report: the page, its sections, and where it was written (once saved)."""

    html: str
    sections: list[Section]
    seconds: float
    model: str
    path: Path | None = None

    def save(self, out: str | Path) -> Report:
        """Write ``out/report-MODEL.html`` (or ``out`` itself when it ends in ``.html``);
        the file appears whole or not at all, under the folder's lock (see
        :func:`netlens.output.folder_lock`)."""
        from ..output import folder_lock

        path = page_path(out, self.model)
        check_page_path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with folder_lock(path.parent):
            try:
                tmp.write_text(self.html, encoding="utf-8")
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        return Report(self.html, self.sections, self.seconds, self.model, path)

    @property
    def skipped_inputs(self) -> list[str]:
        """Images that could not be read (one line each, once)."""
        return list(dict.fromkeys(line for s in self.sections for line in s.skipped_inputs))

    @property
    def skipped(self) -> dict[str, str]:
        """Sections that could not be built, with the reason."""
        return {s.key: s.skipped for s in self.sections if s.skipped}

    def __repr__(self) -> str:
        where = f" → {self.path}" if self.path else ""
        kb = len(self.html.encode()) / 1024
        return (
            f"Report({self.model}: {len(self.sections)} sections, {kb:,.0f} KB, "
            f"built in {self.seconds:.1f} s{where})"
        )


def page_path(out: str | Path, model: str) -> Path:
    """Where :meth:`Report.save` writes: ``out`` itself when it ends in ``.html``, else
    ``out/report-MODEL.html``."""
    out = Path(out)
    stem = Path(model).name or model  # a path names the page by its file, not its folders
    return out if out.suffix.lower() == ".html" else out / f"report-{_safe(stem)}.html"


def check_page_path(path: Path) -> None:
    """One line, before any work, when the page cannot be written at ``path``: a folder is
    there, or a file where its folder should be."""
    from ..naming import display_path

    if path.is_dir():
        raise NetlensError(
            f"{display_path(path)} is a folder, so the report page cannot be written there: "
            f"give --out a .html file name that is free ({display_path(path / 'report.html')}"
            ", say)"
        )
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise NetlensError(
            f"cannot write the report to {display_path(path)}: {display_path(parent)} is a "
            "file, not a folder; give --out a folder or a .html file name"
        )


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9+.-]+", "-", text).strip("-") or "model"


def parse_sections(sections: str | Sequence[str] | None) -> tuple[list[str], bool]:
    """Section keys in page order, and whether the user chose them; unknown names fail."""
    if sections is None or sections == "" or sections == "all":
        return list(BUILDERS), False
    items = sections.split(",") if isinstance(sections, str) else list(sections)
    wanted = [s.strip() for s in items if s.strip()]
    for name in wanted:
        if name not in BUILDERS:
            raise NetlensError(
                f"unknown report section '{name}'{hint(name, BUILDERS)} "
                f"(sections: {', '.join(BUILDERS)})"
            )
    return [k for k in BUILDERS if k in wanted], True


def build_report(
    lens: Lens,
    images: Any = None,
    *,
    data: Any = None,
    sections: str | Sequence[str] | None = None,
    methods: str | Sequence[str] = "gradcam,gradcam++,scorecam",
    limit: int | None = None,
    max_images: int = 8,
    seed: int = 0,
    invocation: repro.Invocation | None = None,
    source_file: str | Path | None = None,
    progress: Any = None,
    strict: bool = False,
) -> Report:
    """Run the chosen analyses and put their Results on one self-contained HTML page.

    Args:
        lens: the model.
        images: images to explain (default: the model's sample images, else the data's first).
        data: dataset for stats, ablation and evaluation (default: the model card's dataset).
        sections: keys of :data:`BUILDERS` (comma-separated or a list); default all. A section
            left at its default that cannot run (no data) is shown as skipped; one you chose
            fails with its reason.
        methods: CAM methods compared side by side, evaluated and sanity-checked.
        limit: images per dataset analysis (default: stats/ablate 512, evaluate 32).
        max_images: at most this many images are explained.
        seed: seed for ablation bootstraps and sanity re-initialisation.
        invocation: how the model, images and data are named on a command line.
        source_file: the model file, for its checksum in the reproducibility header.
        progress: a :class:`netlens.progress.Progress`, True/False or None (as every analyzer
            takes it): a line per section, and each analyzer's own bar.
        strict: stop at the first unreadable image (default: skip it and say so).

    torch's global RNG is left as it was, as every analyzer leaves it (a model that draws in
    its forward, Monte-Carlo dropout, draws from a fork).
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        return _build_page(
            lens,
            images,
            data,
            sections,
            methods,
            limit,
            max_images,
            seed,
            invocation=invocation,
            source_file=source_file,
            progress=progress,
            strict=strict,
        )


def _build_page(
    lens: Lens,
    images: Any,
    data: Any,
    sections: str | Sequence[str] | None,
    methods: str | Sequence[str],
    limit: int | None,
    max_images: int,
    seed: int,
    *,
    invocation: repro.Invocation | None,
    source_file: str | Path | None,
    progress: Any,
    strict: bool,
) -> Report:
    """:func:`build_report`'s work."""
    keys, chosen = parse_sections(sections)
    method_list = [m.strip() for m in (methods.split(",") if isinstance(methods, str) else methods)]
    method_list = [m for m in method_list if m]
    for m in method_list:
        lens.host.cam_methods.get(m)  # an unknown method fails before any work
    if not method_list:
        raise NetlensError("give at least one CAM method (e.g. --methods gradcam)")
    call = invocation or _named_inputs(lens_invocation(lens), images, data)
    if source_file is None and invocation is None and not call.unnamed:
        source_file = lens.card.get("source")
    from ..progress import auto_progress

    sink = auto_progress(progress)
    ctx = ReportInputs(lens, images, data, method_list, limit, max_images, seed, call, sink, strict)
    started = time.perf_counter()
    built = [_build(key, ctx, chosen) for key in keys]
    seconds = time.perf_counter() - started
    header = _repro(ctx, built, source_file, seconds, keys, chosen)
    from .templating import render

    html = render(
        "report.html.j2",
        title=f"netlens report · {call.model or lens.name}",
        model=call.model or lens.name,
        sections=built,
        repro=header,
        seconds=seconds,
    )
    return Report(html, built, seconds, call.model or lens.name)


def model_source(lens: Lens) -> str:
    """``zoo:NAME`` for a bundled model; else the file it was loaded from; else its name."""
    from ..models import zoo

    name = lens.card.get("name")
    if name and name in zoo.names():
        return f"zoo:{name}"
    return str(lens.card.get("source") or lens.name)


def lens_invocation(lens: Lens) -> repro.Invocation:
    """How to name a lens made in Python on a command line: its file (or zoo name) with the
    load options it records (architecture, class names, label map, preprocessing changes);
    a model held in memory cannot be named, and the commands say so."""
    import json

    from ..models import zoo

    name = lens.card.get("name")
    if name and name in zoo.names():
        return repro.Invocation(model=f"zoo:{name}")
    source = lens.card.get("source")
    options: dict[str, Any] = {}
    arch = lens.card.get("arch")
    if arch and source:
        options["arch"] = arch
        kwargs = dict(lens.card.get("arch_kwargs") or {})
        if "num_classes" in kwargs:
            options["num_classes"] = kwargs.pop("num_classes")
        if kwargs:
            options["arch_kwargs"] = json.dumps(kwargs, sort_keys=True)
    remarks: dict[str, str] = {}
    options["classes"] = _classes_option(lens, remarks)
    data_options = {}
    if lens.label_map:  # given in Python: its file is not known, only its contents
        data_options["label_map"] = "LABEL_MAP.json"
        mapping = json.dumps({str(k): v for k, v in dict(lens.label_map).items()})
        remarks["LABEL_MAP.json"] = f"a file holding {mapping}"
    if lens.task:
        options["task"] = lens.task
    if lens.output_key is not None:
        options["output"] = lens.output_key
    options |= _preprocess_options(lens)
    if not source:  # the load options still apply: class names, task, preprocessing
        what = type(lens.model).__name__
        return repro.Invocation(
            model=lens.name,
            options=options,
            data_options=data_options,
            remarks=remarks,
            unnamed=f"the model ({what}) was given in memory, not as a file: save it "
            "(torch.save(model, 'model.pt')) and put its path here, with --trust",
        )
    return repro.Invocation(
        model=str(source), options=options, data_options=data_options, remarks=remarks
    )


CLASS_NAMES_INLINE = 300  # longest --classes list spelled out on a command line (characters)


def _classes_option(lens: Lens, remarks: dict[str, str]) -> str | None:
    """``--classes`` for a rerun: none when the names are the ones read off the model again
    (its own, or ImageNet's told from its head); the list when it is short and holds no comma
    (which separates the names on a command line); else CLASSES.json, with a remark."""
    import json

    names = [str(n) for n in lens.classes or []]
    found = lens.classes is getattr(lens, "_found_classes", None)
    if not names or found or getattr(lens.classes, "guessed", False):
        return None
    import unicodedata

    inline = ",".join(names)
    # format and control characters (a right-to-left override) would reorder the command
    # line they stand in: such names go to the file, listed with escapes
    hidden = any(unicodedata.category(ch) in ("Cc", "Cf") for n in names for ch in n)
    if not hidden and not any("," in n for n in names) and len(inline) <= CLASS_NAMES_INLINE:
        return inline
    listed = json.dumps(names, ensure_ascii=hidden)
    held = listed if len(listed) <= CLASS_NAMES_INLINE else "lens.classes"
    remarks["CLASSES.json"] = (
        f"a file holding the {len(names)} class names of the model in output order, as a "
        f"JSON list (json.dump(lens.classes, f)): {held}"
    )
    return "CLASSES.json"


def _named_inputs(call: repro.Invocation, images: Any, data: Any) -> repro.Invocation:
    """``call`` with the images and data when they are files (Python gave them); IMAGES and
    DATA, with a remark, for those given in memory."""
    from dataclasses import replace

    items = images if isinstance(images, (list, tuple)) else [images]
    named = [str(i) for i in items if isinstance(i, (str, Path))]
    remarks = dict(call.remarks)
    in_memory = images is not None and len(named) != len(items)
    if in_memory:
        remarks["IMAGES"] = (
            "the images were given in memory, not as files: save them as image files "
            "(PIL.Image.fromarray(array).save('image0.png')) and put the paths here"
        )
    data_word = str(data) if isinstance(data, (str, Path)) else ""
    if data is not None and not data_word:
        data_word = "DATA"
        remarks["DATA"] = (
            f"the data was given in memory ({type(data).__name__}), not as a folder, a .csv "
            "list or a dataset name: save it as a folder with a subfolder per class and put "
            "its path here"
        )
    return replace(
        call,
        images=["IMAGES"] if in_memory else named if images is not None else [],
        data=data_word,
        remarks=remarks,
    )


def _preprocess_options(lens: Lens) -> dict[str, Any]:
    """The preprocessing in use as command-line options, when the user changed the model's."""
    pre = lens.transform
    if "override" not in pre.source or pre.function is not None:
        return {}
    nums = lambda v: ",".join(f"{x:g}" for x in v)  # noqa: E731
    out: dict[str, Any] = {}
    if pre.size is not None:
        out["input_size"] = f"{pre.channels},{pre.size[0]},{pre.size[1]}"
    out["crop_pct"] = f"{pre.crop_pct:g}"
    if pre.mean is not None and pre.std is not None:
        out["mean"], out["std"] = nums(pre.mean), nums(pre.std)
    out["interpolation"] = pre.interpolation
    out["channel_order"] = pre.channel_order
    return out


def _build(key: str, ctx: ReportInputs, chosen: bool) -> Section:
    builder, title = BUILDERS[key]
    if key in DATA_SECTIONS and ctx.data_source() is None and not chosen:
        ctx.progress.note(f"report: {title}: skipped (no data; give --data)")
        return Section(
            key, title, skipped="no data: this model's card names no dataset; give --data"
        )
    t0 = time.perf_counter()
    try:
        section = builder(ctx)
    except NetlensError as exc:
        if chosen:
            raise
        ctx.progress.note(f"report: {title}: skipped ({exc})")
        return Section(key, title, skipped=str(exc), seconds=time.perf_counter() - t0)
    section.seconds = time.perf_counter() - t0
    ctx.progress.note(f"report: {title} ({section.seconds:.1f} s)")
    return section


def _repro(
    ctx: ReportInputs,
    sections: list[Section],
    source_file: str | Path | None,
    seconds: float,
    keys: list[str],
    chosen: bool,
) -> dict[str, Any]:
    """The reproducibility header's view: versions, checksums, data, seeds, commands."""
    lens = ctx.lens
    model = [
        ("source", ctx.call.model or lens.name),
        ("weights sha256", lens.digest()),
    ]
    file = Path(source_file) if source_file else _zoo_file(lens)
    if file is not None and file.is_file():
        model.append((f"file sha256 ({file.name})", repro.file_sha256(file)))
    data = ctx.data_source()
    flags: dict[str, Any] = {
        "data": ctx.call.data or None,
        "sections": ",".join(keys) if chosen else None,
        "method": ",".join(ctx.methods),
        "limit": ctx.limit,
        "max_images": ctx.max_images if ctx.max_images != 8 else None,
        "seed": ctx.seed,
    }
    return {
        "built": repro.now(),
        "seconds": seconds,
        "versions": repro.versions(),
        "host": repro.host(),
        "device": str(lens.device),
        "model": model,
        "preprocess": str(lens.transform),
        "data": str(data)
        if isinstance(data, (str, Path))
        else (type(data).__name__ if data is not None else "none"),
        "seeds": [("ablation bootstrap", ctx.seed), ("sanity re-initialisation", ctx.seed)],
        "command": ctx.call.command("report", *_report_images(ctx), **flags),
        "commands": [(s.title, c) for s in sections for c in s.commands],
    }


def _report_images(ctx: ReportInputs) -> list[str]:
    """The images on the rebuild command: as given (the report picks from them again)."""
    if ctx.call.images:
        return list(ctx.call.images)
    if ctx.images is not None and ctx.image_words():
        return ctx.image_words()
    return []


def _zoo_file(lens: Lens) -> Path | None:
    from ..models import zoo

    name = lens.card.get("name")
    return zoo.model_dir(name) / "model.safetensors" if name and name in zoo.names() else None
