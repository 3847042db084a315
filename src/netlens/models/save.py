"""``netlens.save``: write a model (or Lens) as a netlens checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..errors import NetlensError
from .checkpoint import make_checkpoint, write_checkpoint
from .validate import check_before_save
from .wrappers import unwrap


def save(
    obj: Any,
    path: str | Path,
    *,
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    classes: list[str] | str | Path | None = None,
    record: dict[str, Any] | None = None,
    output: str | int | None = None,
) -> Path:
    """Save a Lens or ``nn.Module`` as a netlens checkpoint (loadable with ``netlens.load``).

    ``arch`` names how to rebuild the module (a timm name, ``tv:NAME``, a netlens arch, or your
    own ``file.py:Class``, which loading then asks you to name again); a Lens loaded from a file
    knows it already. The Lens' class names and preprocessing (with its source) are stored;
    ``classes`` (a list or a class names file) overrides the names and is checked against the
    model's outputs. ``output`` (default: the Lens' own) is which output is explained when
    forward returns a dict, tuple or object; it is kept in ``record["output"]`` and
    ``netlens.load`` (or the CLI) uses it unless told another with ``output=`` / ``--output``.

    Example:
        >>> netlens.save(model, "model.pt", arch="resnet18", classes=["cat", "dog"])
    """
    from ..data.labels import read_class_names
    from ..lens import Lens

    preprocess = host = None
    record = dict(record) if record is not None else None
    if isinstance(obj, Lens):
        if record is None:  # the card's record: its output is the Lens' choice, or none
            record = dict(obj.card.get("record") or {})
            record.pop("output", None)
        output = output if output is not None else obj.output_key
        arch = arch or obj.card.get("arch")
        arch_kwargs = arch_kwargs or obj.card.get("arch_kwargs")
        if classes is None and not getattr(obj.classes, "guessed", False):
            classes = obj.classes  # (guessed ImageNet names are guessed again on load)
        preprocess, host = obj.transform, obj.host
        obj = obj.model
    if not isinstance(obj, nn.Module):
        raise NetlensError(f"netlens.save takes a Lens or nn.Module, not a {type(obj).__name__}")
    obj = unwrap(obj)[0]  # the network inside torch.compile / DataParallel: its names and forward
    if not arch:
        raise NetlensError("say how to rebuild the model: netlens.save(model, path, arch=NAME)")
    names = read_class_names(classes) if classes is not None else None
    if output is not None:
        if (
            isinstance(output, bool)
            or not isinstance(output, (str, int))
            or (isinstance(output, str) and (not output.strip() or not output.isprintable()))
        ):
            raise NetlensError(f"output= is a key, index or attribute name, not {output!r}")
        problem = output_problem(obj, preprocess, output)
        if problem:
            raise NetlensError(
                f"netlens.save: output={output!r} does not fit this model ({problem}); "
                "netlens.load would refuse every analysis of the file: leave out output=, or "
                "give a key, index or attribute the model's forward returns"
            )
        record = {**(record or {}), "output": output}
    arch_kwargs = dict(arch_kwargs or {})
    given = arch_kwargs.get("num_classes")
    if names is not None or given is None:
        n = _num_classes(obj, preprocess, names)
        arch_kwargs["num_classes"] = given if given is not None else n  # 0: timm's headless
    ckpt = make_checkpoint(
        obj,
        arch=arch,
        arch_kwargs={k: v for k, v in arch_kwargs.items() if v is not None},
        classes=names,
        preprocess=preprocess.to_dict() if preprocess is not None else None,
        record=record,
    )
    # checked as netlens.load will check it: an option or shape it refuses is refused now
    host = _host_that_builds(arch, host)
    check_before_save(ckpt, path, _extra_options(arch, host) if host is not None else None)
    if host is not None:
        _check_fits(ckpt, Path(path), host)
    return write_checkpoint(ckpt, path)


def _host_that_builds(arch: Any, host: Any) -> Any:
    """A plugin host that builds ``arch`` (the Lens', else the default one); None where none
    does here: the user's own ``file.py:Class`` (never imported to save), or an arch a plugin
    the loading side has registers (``netlens.load(path, host=...)``)."""
    from ..plugins.manager import PluginHost
    from .factory import check_arch, parse_user_arch

    if not isinstance(arch, str) or parse_user_arch(arch) is not None:
        return None
    host = host if host is not None else PluginHost()
    try:
        check_arch(arch, host)
    except NetlensError:
        return None
    return host


def _check_fits(ckpt: dict[str, Any], path: Path, host: Any) -> None:
    """The weights fit ``arch`` built with ``arch_kwargs`` on the meta device, as
    ``netlens.load`` builds it (where it cannot be built there, it is not checked)."""
    from ..naming import display_path
    from .deploy_form import deployed, in_deploy_form
    from .factory import create_arch
    from .meta import shapes_on_meta

    arch, kwargs = ckpt["arch"], dict(ckpt["arch_kwargs"])
    n = kwargs.pop("num_classes", None)
    deploy = in_deploy_form(ckpt["state_dict"])  # timm's fused RepVGG/MobileOne/FastViT
    shapes = shapes_on_meta(lambda: deployed(create_arch(arch, n, host, **kwargs), deploy))
    problem = shapes.mismatch(ckpt["state_dict"]) if shapes is not None else None
    if problem:
        raise NetlensError(
            f"netlens.save: netlens.load would refuse {display_path(path.name)}: the model's "
            f"weights do not fit {arch} built with arch_kwargs {kwargs or {}}"
            f"{f' and num_classes={n}' if n is not None else ''} ({problem}); give arch= and "
            f"arch_kwargs= that build this model, or save model.state_dict() with torch.save "
            f"and load it with --arch {arch} (its head and input channels are read off the "
            "weights)"
        )


def _extra_options(arch: str, host: Any) -> list[str]:
    """The ``arch_kwargs`` names netlens.load allows beyond the architecture options (see
    ``read_checkpoint``): a netlens arch's own parameters."""
    from .arch_options import signature_options

    return signature_options(host.archs.get(arch)) if arch in host.archs else []


def recorded_output(
    output: str | int | None, card: dict[str, Any] | None, lens: Any = None
) -> str | int | None:
    """The output asked for, else the one :func:`save` recorded (``record["output"]``); a
    recorded one that ``lens``' model cannot give (one forward says) is dropped with a warning
    saying the file recorded it, as a ``--output`` the user never gave could not be left out."""
    if output is not None:
        return output
    kept = ((card or {}).get("record") or {}).get("output")
    if not isinstance(kept, (str, int)) or isinstance(kept, bool):
        return None
    problem = output_problem(lens.model, lens.transform, kept) if lens is not None else None
    if problem:
        import warnings

        from ..errors import NetlensWarning

        warnings.warn(
            f"the file records output {kept!r} (netlens.save's output=), which this model "
            f"cannot give ({problem}); ignored: the model's output is read as usual (pick "
            "one with --output, output= in Python)",
            NetlensWarning,
            stacklevel=3,
        )
        return None
    return kept


def output_problem(model: nn.Module, preprocess: Any, key: str | int) -> str | None:
    """Why ``key`` picks no tensor from ``model``'s output (one forward of two blank images
    at the preprocessing's size); None when it does, or when the model cannot be run here."""
    from ..model_output import picked_output
    from ..preprocess import preprocess_for
    from .classes import blank_forward

    try:
        spec = preprocess if preprocess is not None else preprocess_for(model)
    except Exception:  # noqa: BLE001 - a model whose preprocessing cannot be told: not checked
        return None
    out = blank_forward(model, spec)
    if out is None:
        return None
    try:
        picked_output(out, key)
    except NetlensError as exc:
        return str(exc).split("; ")[0]
    return None


def _num_classes(model: nn.Module, preprocess: Any, names: list[str] | None) -> int | None:
    """The model's class count, checked against ``names`` when both are known."""
    from ..preprocess import preprocess_for
    from .classes import check_class_names, output_count

    spec = preprocess if preprocess is not None else preprocess_for(model)
    if names is not None:
        check_class_names(names, model, spec)
    n = output_count(model, spec)
    return n if n is not None else (len(names) if names else None)
