"""Lens: a model with its preprocessing and class names; the notebook-facing object."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .callable_output import RawReader, current_scope, handed_raw, not_image_maps, target_scope
from .channel_layout import learning_layouts, share_layouts
from .errors import NetlensError, NetlensWarning, TargetError
from .fresh_input import fresh, write_count
from .images import Batch, load_batch
from .layers import LayerInfo, eval_mode, exclusive, layer_table
from .model_checks import refuse_compiled, refuse_meta, tensors, warn_batch_statistics
from .model_output import picked_output
from .models.known_classes import ClassNames, known_class_names
from .models.wrappers import unwrap
from .output_reader import is_binary_dense, output_rules
from .output_rows import rows_refusal
from .preprocess import Preprocess, SizeFromFirstImage
from .targets import check_task

if TYPE_CHECKING:
    from .analyzers.base import Result
    from .plugins.manager import PluginHost

__all__ = ["Lens"]


class Lens:
    """A model plus what netlens needs to analyse it.

    Every analysis runs the model in eval mode and restores each module's own train/eval flag
    afterwards; weights, ``.grad`` and ``requires_grad`` are never changed.

    Args:
        model: the ``nn.Module``; used as is (not copied).
        preprocess: a :class:`~netlens.preprocess.Preprocess` spec, a callable (PIL image →
            C×H×W tensor) or a dict of changes; the model's own (timm data config, its
            ``input_size``...) when not given. ``lens.transform`` holds the spec in use.
        classes: class names, index-aligned with the model's outputs (a list, or a file: one
            name per line, a JSON list, ``{index: name}`` or ``{name: index}``).
        host: plugin host to find analyzers in (a new one by default).
        card: model card / training record, if any.
        samples: sample images for commands called without images.

    Example:
        >>> lens = netlens.load("zoo:shapes-allconv")
        >>> lens.cam(lens.samples).heatmaps.shape
    """

    def __init__(
        self,
        model: nn.Module,
        preprocess: Preprocess | Any = None,
        classes: list[str] | str | Path | None = None,
        *,
        name: str = "model",
        host: PluginHost | None = None,
        card: dict[str, Any] | None = None,
        samples: list[Path] | None = None,
        task: str | None = None,
        output: str | int | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise NetlensError(f"expected a torch nn.Module, got a {type(model).__name__}")
        refuse_compiled(model)
        model, self.unwrapped = unwrap(model)  # DataParallel, torch.compile: the network inside
        refuse_compiled(model)
        refuse_meta(model)
        warn_batch_statistics(model)
        if not isinstance(preprocess, Preprocess):
            from .preprocess import preprocess_for, with_overrides

            preprocess = with_overrides(preprocess_for(model), preprocess)
        self.model = model
        self.transform: Preprocess = preprocess
        self.classes = _class_names(classes) if classes is not None else _own_class_names(model)
        self._found_classes = self.classes if classes is None else None  # read off the model
        self.label_map: Any = None  # data label → model class, for data the model names otherwise
        self.name = name
        self.card = dict(card or {})
        self.samples = list(samples or [])
        self._host = host
        self._sigmoid: bool | None = None  # does the output come out of a sigmoid? (told once)
        self._batch_dims: int | None = None  # the output's dims for a batch, if one image's squeeze
        self.output_key = output
        self.task = check_task(task) or _own_task(model)
        self._digest: tuple[tuple, str] | None = None  # (what the weights were, their hash)

    def __repr__(self) -> str:
        from .models.classes import head_width

        n = len(self.classes) if self.classes else head_width(self.model) or "?"
        return f"Lens({self.name}: {type(self.model).__name__}, {n} classes, {self.transform})"

    @property
    def host(self) -> PluginHost:
        """The plugin host (made on first use, so creating a Lens stays cheap)."""
        if self._host is None:
            from .plugins.manager import PluginHost

            self._host = PluginHost()
        return self._host

    @property
    def device(self) -> torch.device:
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the model's weights (float32 when it has none)."""
        for t in itertools.chain(self.model.parameters(), self.model.buffers()):
            if t.is_floating_point():
                return t.dtype
        return torch.float32

    def place(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the model's device and, when floating, in its dtype (images are made in
        float32; a half- or double-precision model gets them in its own precision)."""
        if x.is_floating_point():
            return x.to(self.device, self.dtype)
        return x.to(self.device)

    def to(self, device: str | torch.device | None) -> Lens:
        """Move the model (``None``: CUDA when available, else CPU)."""
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(check_device(device))
        return self

    # -- inputs ----------------------------------------------------------------------------
    @property
    def input_size(self) -> tuple[int, int, int]:
        """(C, H, W) the model takes; a one-line error when nothing says it yet."""
        spec = self.transform
        if spec.size is not None:
            return (spec.channels, *spec.size)
        if spec.function is not None:  # a user's function decides: ask it once
            import numpy as np

            return tuple(spec(np.full((256, 256, 3), 128, np.uint8)).shape)  # type: ignore[return-value]
        raise NetlensError(
            "the input size of this model is unknown (it records none): pass input_size=28 or "
            "(28, 28) to netlens.load (--input-size 28 on the command line), or give images"
        )

    def batch(self, images: Any = None, *, strict: bool = False) -> Batch:
        """Read and preprocess ``images`` (the sample images when None) into a Batch.

        A model of unknown input size takes the size of the first image it is given (no
        resize); the lens keeps it from then on and says so in :meth:`preprocess_info`.
        """
        if images is None:
            images = self.samples or self._dataset_images()
        spec = self.transform
        sized = SizeFromFirstImage(spec) if spec.size is None and spec.function is None else None
        batch = load_batch(images, sized or spec, strict=strict)
        if sized is not None:
            self.transform = sized.resolved or spec.sized_like(batch.tensor.shape[-2:])
        batch.tensor = self.place(batch.tensor)
        return batch

    def _dataset_images(self, count: int = 8) -> list[Any]:
        """The first images of the model's own dataset, for runs given no images."""
        name = self.default_data()
        if not name:
            raise NetlensError(
                "no images given, and this model has neither sample images nor a training "
                "dataset on its card; pass image files or a folder"
            )
        from .data import as_dataset

        ds = as_dataset(name, self.transform, host=self.host)
        if not hasattr(ds, "image"):
            raise NetlensError(f"no images given; dataset {name} cannot give raw images: pass some")
        return [ds.image(i) for i in range(min(count, len(ds)))]

    def preprocess(self, images: Any) -> torch.Tensor:
        """Images (paths, folder, arrays, tensor) → the N×C×H×W tensor the model takes."""
        return self.batch(images, strict=True).tensor

    def predict(self, images: Any) -> torch.Tensor:
        """Class probabilities: N×K softmax (sigmoid for multi-label/binary models)."""
        x = self.preprocess(images)  # as cam reads them: uint8 too; a float N×C×H×W as is
        with exclusive(self.model), torch.no_grad(), eval_mode(self.model):
            return self.probabilities(self.output(self.place(x)))

    def on(self, model: nn.Module) -> Lens:
        """This lens's preprocessing, classes, task and output reading on another module of
        the same architecture (a randomised copy, in sanity checks and evaluate's metrics)."""
        view = Lens(
            model,
            self.transform,
            self.classes,
            host=self.host,
            task=self.task,
            output=self.output_key,
        )
        view._sigmoid = self._sigmoid  # the same architecture: its output reads the same
        view._batch_dims = self._batch_dims
        share_layouts(self.model, model)  # and its layers are laid out the same
        return view

    @property
    def output_key(self) -> str | int | None:
        """Which tensor of a dict, tuple or object output is explained (None: the default)."""
        return self._output_key

    @output_key.setter
    def output_key(self, key: str | int | None) -> None:
        self._output_key, self._sigmoid, self._batch_dims = key, None, None  # tell it again

    @property
    def reader(self) -> RawReader:
        """Raw model output → the tensor to explain (see :mod:`netlens.output_reader`; a
        callable target's: :mod:`netlens.callable_output`)."""
        regression = self.task == "regression"  # a bounded score: its values, as they are
        sigmoid = bool(self._sigmoid) and not regression
        two = not regression and self.task != "multilabel"  # one channel: background, foreground
        scope = current_scope(self.model)  # a callable target's analysis: its output as it is
        return RawReader(self.output_key, sigmoid, two, self._batch_dims, scope)

    def learn_output(self, x: torch.Tensor) -> None:
        """Tell, once, from one forward of ``x[:1]`` with autograd, whether the model ends in
        a sigmoid, whether it squeezes one image's batch axis away, and which layers keep
        channels last (analyzers call this before any hook is set)."""
        if self._sigmoid is None:
            with learning_layouts(self.model):  # the same forward: channels-last layers
                rules = output_rules(self.model, fresh(self.place(x)), self.output_key, self.task)
            self._sigmoid, self._batch_dims = rules

    def output(self, x: torch.Tensor, *, rows: int | None = None) -> torch.Tensor:
        """Run the model; the tensor to explain (``output=`` picks one of a dict/tuple/object).

        N×K logits for classifiers (a sigmoid's probabilities read back as logits), N×1 for a
        binary single-logit model, N×K×H×W for dense (segmentation) models; see
        :mod:`netlens.targets`. ``rows``: how many rows to expect when a hook makes the batch
        another size than ``x``'s (a layer's output swapped for R copies of one image's).
        """
        self.learn_output(x)
        raw = self.model(fresh(x))  # a model may write into its input
        out = self.reader(raw, x)
        expected = x.shape[0] if rows is None else rows
        if out.shape[0] != expected:  # told by the tensor the model returned
            raise NetlensError(rows_refusal(picked_output(raw, self.output_key), expected))
        if not handed_raw(self.model):  # a callable target's own output: nothing to check
            self._check_class_count(out)
            _check_maps(out, x, self.output_key is not None)
        return out

    def _check_class_count(self, out: torch.Tensor) -> None:
        """The class names still name the outputs: a head replaced since the lens was made
        (``reset_classifier(3)`` in a notebook) leaves names of the old classes; those read off
        the model are dropped with a warning, names the user gave are refused in one line."""
        names, n = self.classes, out.shape[1] if out.dim() in (2, 4) else None
        if not names or n is None or n == len(names) or (n == 1 and len(names) == 2):
            return
        if names is self._found_classes:
            import warnings

            where = "" if self.output_key is None else f" (output {self.output_key!r})"
            warnings.warn(
                f"the model has {n} outputs{where}, not the {len(names)} its class names were "
                "read for (another output, or a replaced head?): outputs are numbered; give "
                "their names with --classes (classes= or lens.classes = [...] in Python)",
                NetlensWarning,
                stacklevel=3,
            )
            self.classes = self._found_classes = None
            return
        where = "" if self.output_key is None else f" (output {self.output_key!r})"
        raise NetlensError(  # given by the user, or stored with the model for another output
            f"the model has {n} outputs{where} but {len(names)} class names (given, or stored "
            "with the model); give one name per output, in output order: --classes FILE or "
            "a,b,... on the command line, classes= or lens.classes = [...] in Python"
        )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Run the model and check it returns N×K (classification or regression) outputs."""
        out = self.output(x)
        if out.dim() != 2:
            raise NetlensError(
                f"the model returned {tuple(out.shape)}; this needs N×classes outputs "
                "(pick another with --output KEY, or wrap the model so forward returns them)"
            )
        return out

    def task_for(self, output: torch.Tensor) -> str:
        """The task (``multiclass``, ``multilabel``, ``binary``, ``regression``, ``dense``)."""
        from .targets import detect_task

        if handed_raw(self.model):  # a callable target's own output: values, not classes
            return "regression"
        if self.task is None and self._sigmoid and output.dim() == 2 and output.shape[1] > 1:
            return "multilabel"  # independent sigmoids: one probability per label
        if output.dim() == 4 and self.task == "multilabel":
            return "dense"  # multi-label masks: see dense_sigmoids
        if self.task in ("binary", "dense") and detect_task(output) != self.task:
            need = "one logit per image (N×1)" if self.task == "binary" else "N×K×H×W maps"
            shape = output.shape  # as the model gives it: one channel, not the two read off it
            shape = (shape[0], 1, *shape[2:]) if is_binary_dense(output) else shape
            raise NetlensError(
                f"task '{self.task}' needs a model that outputs {need}, and this one gives "
                f"{'×'.join(map(str, shape))}; leave --task out (task= in Python) to "
                "read the outputs as they are"
            )
        return self.task or detect_task(output)

    def dense_sigmoids(self, output: torch.Tensor) -> bool:
        """Whether a dense output is independent masks (multi-label segmentation: a model
        ending in a sigmoid over several channels, or ``task="multilabel"``): each pixel's
        classes read through sigmoids, a class's region where its logit is positive, rather
        than a softmax and an argmax across classes."""
        if output.dim() != 4 or is_binary_dense(output):
            return False
        return self.task == "multilabel" or (self.task is None and bool(self._sigmoid))

    def probabilities(self, output: torch.Tensor) -> torch.Tensor:
        """What a person reads as class probabilities for ``output`` (by the task)."""
        from .targets import probabilities

        if handed_raw(self.model):  # a callable target's own output: its values
            return output.detach().float().flatten(1)
        if self.dense_sigmoids(output):  # the mean over pixels of each mask's probability
            return torch.sigmoid(output.detach().float()).mean(dim=(2, 3))
        return probabilities(output, self.task_for(output))

    def digest(self) -> str:
        """SHA-256 of the model's weights and buffers: computed again when any has changed
        since (an optimizer step, ``load_state_dict``, a replaced head: their version counters,
        storages or names differ). Weights made under ``torch.inference_mode()`` have no version
        counter: then it is computed every time."""
        key = tuple(
            (n, write_count(t), t.data_ptr(), t.dtype, tuple(t.shape), str(t.device))
            for n, t in tensors(self.model)
        )
        unversioned = any(k[1] is None for k in key)
        if self._digest is None or self._digest[0] != key or unversioned:
            from .provenance import model_digest

            self._digest = (key, model_digest(self.model))
        return self._digest[1]

    def preprocess_info(self) -> dict[str, Any]:
        """The preprocessing in use, JSON-able, with where it came from (``source``)."""
        return self.transform.to_dict()

    def dataset(self, data: Any, *, split: str = "test") -> Any:
        """``data`` as a Dataset for this model: its preprocessing, labels matched by class name.

        Folder names and CSV labels are matched to ``lens.classes`` (``lens.label_map`` first);
        the dataset's ``label_source`` says how (see :func:`netlens.data.as_dataset`).
        """
        from .data import as_dataset
        from .models.classes import output_count

        unnamed = self.classes is None
        count = output_count(self.model, self.transform, self.output_key) if unnamed else None
        if count == 1 and self.task != "regression":
            count = 2  # a single logit scores two classes: 0 (negative) and 1 (positive)
        return as_dataset(
            data,
            self.transform,
            host=self.host,
            split=split,
            classes=self.classes,
            label_map=self.label_map,
            num_classes=count,
        )

    def default_data(self) -> Any:
        """The data for runs given none, from the card: its held-out images where the training
        record lists them, else its dataset (see :mod:`netlens.train.heldout`)."""
        from .train.heldout import default_data

        return default_data(self)

    # -- classes ---------------------------------------------------------------------------
    def class_name(self, index: int) -> str:
        if self.classes and 0 <= index < len(self.classes):
            return self.classes[index]
        return str(index)

    def class_index(self, target: int | str, num_classes: int) -> int:
        """A class index from an int or a class name; out of range fails with one line.

        Text that is a class name is that class, also when it is a number (folders named
        ``1 … 102`` are numbered in text order): ``"2"`` is the class named 2, with a warning
        when that is not index 2; other numbers are indices, as ints always are."""
        names = list(self.classes or [])
        if isinstance(target, str) and target.strip() in names:
            idx = names.index(target.strip())
            number = int(target) if re.fullmatch(r"\s*\d+\s*", target) else None
            if number is not None and number != idx and number < min(num_classes, len(names)):
                import warnings

                from .errors import NetlensWarning

                warnings.warn(
                    f"target '{target.strip()}' is the class named {target.strip()} (output "
                    f"{idx}), not output {number} (the class named {names[number]})",
                    NetlensWarning,
                    stacklevel=2,
                )
            return idx
        if isinstance(target, str) and not re.fullmatch(r"\s*-?\d+\s*", target):
            from .data.labels import find_name, normalize_name

            names = self.classes or []
            known = names.find(target) if isinstance(names, ClassNames) else None
            if known is None:  # any case and separators, as folder names are matched
                known = find_name(target.strip(), list(names))
            if known is not None:
                return known
            from .errors import hint

            key = normalize_name(target)  # ImageNet's two cranes: "crane (n02012849)", ...
            same = [n for n in names if normalize_name(n.split(" (")[0]) == key]
            listed = ", ".join(same or names[:20])
            listed = listed or "none: this model has no class names, use an index"
            raise TargetError(
                f"unknown class '{target}'{'' if same else hint(target, names)} "
                f"({'it names several: ' if same else 'classes: '}{listed})"
            )
        idx = int(target)
        if not 0 <= idx < num_classes:
            raise TargetError(
                f"class index {idx} is out of range: the model has {num_classes} classes "
                f"(0..{num_classes - 1})"
            )
        return idx

    # -- analyses --------------------------------------------------------------------------
    def layers(self) -> list[LayerInfo]:
        """The layer table: name, type, output shape, parameters."""
        return layer_table(self.model, self.example())

    def example(self, batch: int = 1) -> torch.Tensor:
        """A zero input batch of the size this model takes (see :attr:`input_size`)."""
        return torch.zeros(batch, *self.input_size, device=self.device, dtype=self.dtype)

    def run(self, analyzer: str, *args: Any, **options: Any) -> Result:
        """Run any registered analyzer by name: ``lens.run("kernels", layer="conv1")``.

        An analyzer that is no :class:`~netlens.analyzers.base.Analyzer` (any object with
        ``run(lens, inputs=None, **options)``) gets the reproducibility header stamped here
        when its Result has none.
        """
        import time

        from .analyzers.base import Analyzer
        from .provenance import now, stamped

        found = self.host.analyzers.get(analyzer)
        if isinstance(found, Analyzer):
            return found.run(self, *args, **options)  # (its target's scope: Analyzer.run)
        started, clock = now(), time.perf_counter()
        with target_scope(options.get("target"), self.model):
            result = self.host.checked_result(analyzer, found.run(self, *args, **options))
        if not result.meta.get("run"):
            at = {"started": started, "clock": clock, "options": options}
            result = stamped(result, self, **at, layers=result.meta.get("layers"))
        return result

    def cam(
        self,
        images: Any = None,
        method: str = "gradcam",
        layer: Any = "auto",
        target: Any = None,
        **options: Any,
    ) -> Result:
        """Class activation maps; see ``netlens cam --help``."""
        return self.run("cam", images, method=method, layer=layer, target=target, **options)

    def evaluate(
        self, data: Any = None, methods: Any = None, metrics: Any = None, **options: Any
    ) -> Result:
        """Score heatmaps (pointing game, deletion/insertion, ROAD); see ``netlens evaluate``
        (``methods`` None: Grad-CAM, or ``method=``)."""
        return self.run("evaluate", data, methods=methods, metrics=metrics, **options)

    def kernels(self, layer: Any = None, **options: Any) -> Result:
        """Weights of a conv/linear layer as an image grid."""
        return self.run("kernels", layer=layer, **options)

    def features(
        self, images: Any = None, layer: Any = "auto", top: int = 16, **options: Any
    ) -> Result:
        """Feature maps of a layer for an image."""
        return self.run("features", images, layer=layer, top=top, **options)

    def ablate(
        self,
        data: Any = None,
        layers: Any = None,
        mode: str = "identity",
        metric: str = "accuracy",
        **options: Any,
    ) -> Result:
        """A layer-ablation study: what each block is worth."""
        return self.run("ablate", data, layers=layers, mode=mode, metric=metric, **options)

    def report(
        self,
        images: Any = None,
        *,
        data: Any = None,
        sections: Any = None,
        out: str | Path | None = "netlens-out",
        **options: Any,
    ) -> Any:
        """One self-contained HTML page about this model; see :func:`netlens.report.build_report`.

        Written to ``out/report-MODEL.html`` (``out=None``: built, not written); returns the
        :class:`netlens.report.Report` (``.path``, ``.html``, ``.sections``).
        """
        from .report import build_report
        from .report.build import check_page_path, page_path

        if out is not None:  # a page that cannot be written: said before any work
            check_page_path(page_path(out, self.name))
        report = build_report(self, images, data=data, sections=sections, **options)
        return report.save(out) if out is not None else report


def _check_maps(out: torch.Tensor, x: torch.Tensor, picked: bool) -> None:
    """A dense output (N×K×H×W; N×H×W is read as N×1×H×W) must be maps of the image: its H×W
    of about the input's aspect. Tokens (N×197×768 of a backbone) are not, and would be
    explained as a binary segmentation (``picked``: the output the user picked)."""
    if (why := not_image_maps(out, x, picked)) is not None:
        raise NetlensError(why)


def _own_class_names(model: nn.Module) -> list[str] | None:
    """The names the model carries (``model.class_to_idx``, set by its author), else the names
    it is known to have (ImageNet's for a timm or torchvision head of that size)."""
    from .models.classes import output_count
    from .models.recorded_classes import recorded_class_names

    own = recorded_class_names(model, lambda: output_count(model), "the model")
    return own if own is not None else known_class_names(model)


def _own_task(model: nn.Module) -> str | None:
    """The task a Hugging Face model's config records (``problem_type``), else None."""
    if not type(model).__module__.startswith("transformers."):
        return None
    from .models.hf import hf_task

    return hf_task(getattr(model, "config", None))


def _class_names(classes: Any) -> list[str] | None:
    if classes is None or isinstance(classes, ClassNames):
        return classes
    from .data.labels import read_class_names

    return read_class_names(classes)


_DEVICE_TYPES = ("cpu", "cuda", "mps")


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device that exists here; one line saying what to do otherwise."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise NetlensError(
            f"device {device!r} is not a device name; use cpu, cuda, cuda:1 or mps"
        ) from None
    allowed = _DEVICE_TYPES + (("xpu",) if hasattr(torch, "xpu") else ())
    if dev.type not in allowed:  # meta holds no data; xla, hpu... need their own runtimes
        raise NetlensError(
            f"device {device!r} is not supported: netlens runs on {', '.join(allowed)} "
            "(cuda:1 picks a GPU); use one of those"
        )
    if dev.type == "xpu" and not torch.xpu.is_available():
        raise NetlensError(f"device {device!r} is not available here; use --device cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise NetlensError(
                f"device {device!r} is not available: torch sees no CUDA GPU here; use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            n = torch.cuda.device_count()
            raise NetlensError(f"device {device!r}: only {n} CUDA device(s) here (0..{n - 1})")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise NetlensError(f"device {device!r} is not available here; use --device cpu")
    return dev
