"""Layer-ablation studies: switch parts of a trained model off and measure what each is worth.

``netlens.ablate(model, data)`` / ``lens.ablate(data)`` / ``netlens ablate MODEL --data DIR``.
By default every residual block is skipped in turn (Veit et al., 2016): blocks are recognised by
what they compute, in any library's models (:mod:`.residual`); ``channels=True`` sweeps the
channels of one layer (Morcos et al., 2018). Ablations reuse a cached prefix of the network
(:mod:`.engine`), so they are fast and give the same logits, bit for bit, as re-running the whole
model with the unit switched off. Metrics with labels (accuracy, top5, loss, f1) and without
(prob, kl, agreement: compared with the intact model) are in :mod:`.scoring`; the study, its rows
and its result in :mod:`.study`, :mod:`.rows` and :mod:`.result`. See ``docs/ablation.md``.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import AnalyzerError, DataError
from ..base import Analyzer, Run
from ..specs import ABLATE
from ..unlabelled import describe, unlabelled_data
from .result import AblationResult
from .scoring import METRICS
from .study import ROWS_NAME, study

#: What the run header says about labels when the metric does not read them.
LABEL_SOURCE = "not used: the metric compares the ablated model with the intact one"

if TYPE_CHECKING:
    from ...lens import Lens
    from ...progress import Progress
    from ...storage import Storage

__all__ = ["ROWS_NAME", "AblateAnalyzer", "AblationResult", "ablate"]


def _hint_label_free(resolve: Any, *args: Any) -> None:
    """Resolve the data; a refusal about labels also says which metrics need none."""
    try:
        resolve(*args)
    except DataError as exc:
        if "label" not in str(exc):
            raise
        raise DataError(
            f"{exc}; or ablate with --metric prob, kl or agreement, which need no labels"
        ) from None


class AblateAnalyzer(Analyzer):
    """Layer-ablation study: switch blocks (or channels) off and measure what each is worth."""

    spec = ABLATE

    def run(
        self,
        lens: Lens,
        inputs: Any = None,
        *,
        out: str | Path | None = None,
        resume: bool = False,
        storage: Storage | None = None,
        progress: Progress | bool | None = None,
        strict: bool = False,
        **options: Any,
    ) -> AblationResult:
        """The template's run; ``out=DIR`` keeps the rows in ``DIR`` as they finish (a
        :class:`~netlens.storage.FolderStorage`, holding ``DIR``'s lock), ``resume=True`` keeps
        those there; a finished study's rows are ``DIR/ablation.csv``."""
        from ...output import folder_lock
        from ...storage import FolderStorage, finish_rows

        if out is not None:
            storage = FolderStorage(out, resume)
        elif resume and storage is None:
            raise AnalyzerError("resume needs out=DIR: the folder with the earlier rows")
        group = options.get("group")
        keeps = out is not None and (group is None or group.main)  # rank 0 writes the rows
        with folder_lock(out) if keeps else nullcontext():  # type: ignore[arg-type]
            result = super().run(
                lens, inputs, progress=progress, storage=storage, strict=strict, **options
            )
            if keeps and result.config is not None:  # type: ignore[attr-defined]
                finish_rows(out, ROWS_NAME, result.config, keep_rows=True)  # type: ignore
        return result  # type: ignore[return-value]

    def _resolve_inputs(self, run: Run, inputs: Any, strict: bool) -> None:
        """Metrics that need no labels take any images (see :mod:`..unlabelled`)."""
        if METRICS[run.options.metric].needs_labels:
            return _hint_label_free(super()._resolve_inputs, run, inputs, strict)
        super()._resolve_inputs(run, unlabelled_data(run.lens, inputs), strict)
        run.data.label_source = LABEL_SOURCE  # type: ignore[union-attr]
        run.data.source = describe(inputs) or run.data.source  # type: ignore[union-attr]

    def compute(self, run: Run) -> AblationResult:
        return study(run)


def ablate(
    model: Any,
    data: Any = None,
    layers: Any = None,
    mode: str | None = None,
    metric: str = "accuracy",
    **options: Any,
) -> AblationResult:
    """Run a layer-ablation study on a Lens or a bare ``nn.Module``.

    Args:
        model: a :class:`netlens.Lens` or an ``nn.Module``.
        data: a folder with class subfolders, a ``.csv`` list, a dataset name, a Dataset, a
            DataLoader (``shuffle=False``) or an ``(images, labels)`` pair; None: the model
            card's. The label-free metrics also take a folder of images and image tensors.
        layers: unit selector (names, globs, ``type:X``); None: every residual block, else each
            parameterised child of the feature stack.
        mode: ``identity`` (default for blocks: skip the unit), ``zero`` (default for
            channels), ``mean`` or ``noise``.
        metric: ``accuracy``, ``top5``, ``loss``, ``f1`` (macro); or, needing no labels,
            ``prob``, ``kl``, ``agreement`` (compared with the intact model).
        **options: ``channels`` (True, or a list), ``out`` / ``resume`` (keep rows in
            ``out``; finished: ``out/ablation.csv``), ``batch_size``, ``limit``, ``seed``,
            ``resamples``, ``points``, ``fast``, ``cache_mb``, ``identity_fns``, ``progress``,
            ``storage``; for a bare module, ``output`` and ``task`` as :func:`netlens.load`
            takes them.

    Example:
        >>> res = netlens.ablate(model, (images, labels))
        >>> res.baseline["value"], res.harm()
    """
    from ...bare_lens import lens_for

    lens = lens_for(model, options)
    result = lens.run("ablate", data, layers=layers, mode=mode, metric=metric, **options)
    return result  # type: ignore[return-value]
