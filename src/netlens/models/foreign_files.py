"""Files netlens does not read itself, each named in one line that says what to do instead:
other frameworks' models, and torch.distributed.checkpoint (DCP) folders and their files."""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelLoadError
from ..naming import display_path

__all__ = ["dcp_refusal", "is_dcp_folder"]

_OTHER_FRAMEWORKS = {
    ".onnx": "an ONNX model",
    ".h5": "a Keras (HDF5) model",
    ".hdf5": "a Keras (HDF5) model",
    ".keras": "a Keras model",
    ".tflite": "a TensorFlow Lite model",
    ".pb": "a TensorFlow graph",
    ".engine": "a TensorRT engine",
    ".plan": "a TensorRT engine",
    ".mlmodel": "a Core ML model",
    ".pdparams": "a PaddlePaddle model",
    ".caffemodel": "a Caffe model",
}


def _other_framework(path: Path) -> str | None:
    """The one line for a file torch cannot read that another framework made (by its magic
    bytes or its suffix), else None."""
    with path.open("rb") as fh:
        head = fh.read(8)
    what = _OTHER_FRAMEWORKS.get(path.suffix.lower())
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        what = "a Keras (HDF5) model"
    elif head[4:8] == b"TFL3":
        what = "a TensorFlow Lite model"
    if what is None:
        return None
    return (
        f"{display_path(path)} is {what}; netlens explains PyTorch models (it hooks their "
        "layers and follows their gradients): pass the PyTorch model it was made from (a "
        "checkpoint, state_dict or safetensors file; with --arch for bare weights)"
    )


def is_dcp_folder(path: Path) -> bool:
    """A ``torch.distributed.checkpoint.save`` folder (FSDP's sharded state dict, torchtitan,
    Accelerate's ``SHARDED_STATE_DICT``): ``.metadata`` beside ``*.distcp`` files."""
    try:
        return (path / ".metadata").is_file() and any(path.glob("*.distcp"))
    except OSError:
        return False


def dcp_refusal(path: Path) -> ModelLoadError | None:
    """The one line for a DCP folder, its ``.metadata`` or one of its ``.distcp`` files (how
    to consolidate it into one file netlens reads), else None."""
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        if not is_dcp_folder(path):
            return None
    elif path.suffix != ".distcp" and not (path.name == ".metadata" and _dcp_metadata(path)):
        return None
    shown = display_path(folder)
    what = f"{shown} is" if path.is_dir() else f"{path.name} is part of {shown},"
    return ModelLoadError(
        f"{what} a torch.distributed.checkpoint (DCP) folder of shards, which netlens does not "
        'read; consolidate it into one file with python -c "from torch.distributed.checkpoint'
        f".format_utils import dcp_to_torch_save; dcp_to_torch_save({str(folder)!r}, "
        "'model.pt')\" and load model.pt"
    )


def _dcp_metadata(path: Path) -> bool:
    """``.metadata`` beside ``.distcp`` files, or a pickle of DCP's ``Metadata`` class."""
    if any(path.parent.glob("*.distcp")):
        return True
    try:
        with path.open("rb") as fh:
            return b"torch.distributed.checkpoint" in fh.read(4096)
    except OSError:
        return False
