"""Class names a model is known to have without being told: ImageNet's, for timm and
torchvision classifiers whose head has an ImageNet subset's number of outputs; Pascal VOC's for
torchvision's segmentation models with their 21 outputs (all their weights are VOC's).

A timm or torchvision architecture with 1,000 outputs is, but for rare fine-tunes, an
ImageNet-1k classifier (timm guesses the same way: ``timm.data.infer_imagenet_subset``). Its
classes then get torchvision's short names (``tench``, ``great white shark``) and answer also to
their WordNet IDs (``n01440764``, the folder names of ImageNet's own layout) and to each WordNet
lemma (``Tinca tinca``, ``man-eater``) that names no other class, so folders and targets named
either way match. The larger subsets (12k, 21k, 22k) get the first lemma, with the WordNet ID
where two classes share it. Everything comes from files inside the installed timm and
torchvision packages; ``source`` says where the names came from, and ``--classes`` overrides.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from torch import nn

from ..data.labels import normalize_name
from .classes import output_count

__all__ = ["ClassNames", "described_labels", "imagenet_labels", "known_class_names"]


class ClassNames(list):
    """Class names in output order, with other names each class answers to.

    Attributes:
        aliases: normalised other name (:func:`netlens.data.labels.normalize_name`) → index.
        source: where the names came from (recorded in outputs).
        guessed: told from the model's architecture and head size, not given by its author.
    """

    def __init__(
        self, names: list[str], aliases: dict[str, int], source: str, *, guessed: bool = False
    ) -> None:
        super().__init__(names)
        self.aliases = aliases
        self.source = source
        self.guessed = guessed

    def find(self, name: str) -> int | None:
        """The index ``name`` (a class name or an alias, any case and separators) stands for."""
        if name in self:
            return self.index(name)
        return self.aliases.get(normalize_name(name))


def known_class_names(model: nn.Module) -> ClassNames | None:
    """ImageNet class names for a timm or torchvision classifier with an ImageNet subset's
    number of outputs; a Hugging Face model's ``id2label``; None for any other model.

    A plain list for Hugging Face labels (not guessed), unless they are ImageNet-1k's.
    """
    from .input_norm import input_normalizer
    from .wrappers import activated_network

    # nn.Sequential(network, nn.Softmax(1)), nn.Sequential(Normalize(m, s), network): its names
    inner = activated_network(model)
    if inner is None:
        inner = getattr(input_normalizer(model), "network", None)
    if inner is not None:
        return known_class_names(inner)
    origin = type(model).__module__.split(".")[0]
    if origin == "transformers":  # its config's id2label
        from .hf import hf_class_names

        config = getattr(model, "config", None)
        return hf_class_names(config.to_dict()) if hasattr(config, "to_dict") else None
    if origin not in ("timm", "torchvision"):
        return None
    n = output_count(model)
    if n is None:
        return None
    if type(model).__module__.startswith("torchvision.models.segmentation"):
        return _voc_names(n)
    from .factory import import_timm

    subset = import_timm().data.infer_imagenet_subset({"num_classes": n})
    found = _imagenet(subset) if subset else None
    if found is None or len(found[0]) != n:
        return None
    wnids, lemmas = found
    if subset == "imagenet-1k":
        names = _torchvision_imagenet_names()
    else:
        first = Counter(words[0] for words in lemmas)
        names = [
            w[0] if first[w[0]] == 1 else f"{w[0]} ({s})"
            for w, s in zip(lemmas, wnids, strict=True)
        ]
    if names is None or len(set(names)) != n:
        return None
    whose = "torchvision's names" if subset == "imagenet-1k" else "timm's WordNet lemmas"
    source = f"{subset}, guessed from the {n} outputs ({whose}, WordNet IDs from timm)"
    return ClassNames(names, _aliases(names, wnids, lemmas), source, guessed=True)


def imagenet_labels(names: list[str]) -> ClassNames | None:
    """``names`` (a model's own labels, such as a Hugging Face ``id2label``) with ImageNet-1k's
    WordNet IDs and lemmas as aliases, when they are ImageNet-1k's classes in ImageNet's order
    (the first lemma of every class, as in ``"tench, Tinca tinca"``); None otherwise."""
    found = _imagenet("imagenet-1k") if len(names) == 1000 else None
    if found is None:
        return None
    wnids, lemmas = found
    first = [normalize_name(str(n).split(",")[0]) for n in names]
    if any(f != normalize_name(words[0]) for f, words in zip(first, lemmas, strict=True)):
        return None
    count = Counter(names)  # "crane" is the bird's and the machine's: each gets its WordNet ID
    distinct = [n if count[n] == 1 else f"{n} ({s})" for n, s in zip(names, wnids, strict=True)]
    return ClassNames(distinct, _aliases(distinct, wnids, lemmas), "ImageNet-1k labels")


def described_labels(wnids: list[str], descriptions: Any) -> ClassNames | None:
    """A timm Hub model's ``label_names`` (unique IDs: WordNet IDs for ImageNet) named by its
    ``label_descriptions`` (``{id: "tabby, tabby cat"}`` or a list in the same order): each
    class by its description's first lemma (with its ID where two share it: ImageNet's cranes),
    the IDs and the lemmas that name one class only as aliases. None when they do not pair."""
    if isinstance(descriptions, dict):
        described = [descriptions.get(w) for w in wnids]
    elif isinstance(descriptions, list) and len(descriptions) == len(wnids):
        described = descriptions
    else:
        return None
    if not wnids or not all(isinstance(d, str) and d.strip() for d in described):
        return None
    lemmas = [[w.strip() for w in d.split(",") if w.strip()] for d in described]
    first = [words[0] for words in lemmas]
    count = Counter(first)
    distinct = [n if count[n] == 1 else f"{n} ({w})" for n, w in zip(first, wnids, strict=True)]
    return ClassNames(distinct, _aliases(distinct, wnids, lemmas), "label_descriptions")


def _imagenet(subset: str) -> tuple[list[str], list[list[str]]] | None:
    """An ImageNet subset's WordNet IDs and each class's lemmas, from timm's package files
    (None from a timm without them)."""
    try:
        from .factory import import_timm

        info = import_timm().data.ImageNetInfo(subset)
        wnids, described = list(info.label_names()), info.label_descriptions()
    except Exception:  # noqa: BLE001 - a trimmed or older timm: no names, as before
        return None
    return wnids, [[w.strip() for w in d.split(",")] for d in described]


def _voc_names(n: int) -> ClassNames | None:
    """The 21 Pascal VOC classes of torchvision's segmentation weights (``__background__``
    first) for a segmentation model with 21 outputs."""
    try:
        from torchvision.models.segmentation import FCN_ResNet50_Weights

        names = list(FCN_ResNet50_Weights.DEFAULT.meta["categories"])
    except Exception:  # noqa: BLE001 - an older or trimmed torchvision: no names, as before
        return None
    if len(names) != n:
        return None
    source = f"Pascal VOC, guessed from the {n} outputs of a torchvision segmentation model"
    return ClassNames(names, {}, source, guessed=True)


def _torchvision_imagenet_names() -> list[str] | None:
    try:
        from torchvision.models import ResNet18_Weights

        return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
    except Exception:  # noqa: BLE001 - an older or trimmed torchvision: use the lemmas
        return None


def _aliases(names: list[str], wnids: list[str], lemmas: list[list[str]]) -> dict[str, int]:
    """WordNet IDs, and every lemma that names one class only (and is not another's name)."""
    taken = {normalize_name(n) for n in names}
    count = Counter(key for words in lemmas for key in {normalize_name(w) for w in words})
    out: dict[str, int] = {}
    for i, words in enumerate(lemmas):
        for w in words:
            key = normalize_name(w)
            if count[key] == 1 and (key not in taken or key == normalize_name(names[i])):
                out[key] = i
    for i, s in enumerate(wnids):
        out[normalize_name(s)] = i
    return out
