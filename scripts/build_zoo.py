"""Train the bundled zoo models with their recipes and write them into ``src/netlens/zoo/``.

Usage::

    python scripts/build_zoo.py                  # train what is missing, export everything
    python scripts/build_zoo.py shapes-allconv   # just one
    python scripts/build_zoo.py --retrain        # train again even when build/zoo/NAME.pt exists
    python scripts/build_zoo.py --export-only    # only re-export existing checkpoints

Training runs ``netlens train --recipe NAME --out build/zoo/NAME.pt`` (the command recorded in
the card); export writes ``model.safetensors``, ``card.json`` and a few real test images (one per
class, the first of each class in the test split; shapes also get their ground-truth masks).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from safetensors.torch import save_file

from netlens import __version__
from netlens.models.zoo import zoo_root
from netlens.plugins.manager import PluginHost
from netlens.train.recipes import RECIPES, Recipe

BUILD = Path("build/zoo")


def train_recipe(recipe: Recipe, threads: int) -> Path:
    """Run ``netlens train --recipe`` in a subprocess (so the recorded command is the real one)."""
    out = BUILD / recipe.name
    cmd = [
        "netlens",
        "train",
        "--recipe",
        recipe.name,
        "--threads",
        str(threads),
        "--out",
        str(out),
    ]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return out / "model.pt"


def pick_samples(recipe: Recipe, host: PluginHost) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(stem, image, mask or None) for the first test image of each class, up to the count."""
    ds = host.datasets.get(recipe.config["data"])(split="test")
    picked = []
    for k, cls in enumerate(ds.classes[: recipe.samples]):
        i = int(np.flatnonzero(ds.labels == k)[0])
        mask = ds.masks[i] if getattr(ds, "masks", None) is not None else None
        picked.append((f"{cls}-{i:04d}", ds.images[i], mask))
    return picked


def write_samples(folder: Path, recipe: Recipe, host: PluginHost) -> list[str]:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    names = []
    for stem, img, mask in pick_samples(recipe, host):
        arr = img[:, :, 0] if img.shape[2] == 1 else cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(folder / f"{stem}.png"), arr)
        if mask is not None:
            (folder / "masks").mkdir(exist_ok=True)
            cv2.imwrite(str(folder / "masks" / f"{stem}.png"), mask.astype(np.uint8) * 255)
        names.append(f"{stem}.png")
    return names


def dump_card(card: dict) -> str:
    """Indented JSON with lists of numbers or short strings kept on one line (readable cards)."""
    text = json.dumps(card, indent=1)
    flat = re.compile(
        r"\[\s*((?:-?[\d.e+-]+|\"[^\"\n]{0,24}\"|null)(?:,\s*(?:-?[\d.e+-]+|"
        r"\"[^\"\n]{0,24}\"|null))*)\s*\]"
    )
    return flat.sub(lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"


def export(recipe: Recipe, ckpt_path: Path, host: PluginHost) -> Path:
    """Write ``zoo/<name>/`` from a trained checkpoint."""
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    rec = ckpt["record"]
    folder = zoo_root() / recipe.name
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "model.safetensors"
    state = {k: v.contiguous() for k, v in ckpt["state_dict"].items()}
    save_file(state, str(weights), metadata={"format": "pt", "arch": ckpt["arch"]})
    weights.chmod(0o644)
    sample_names = write_samples(folder / "samples", recipe, host)
    card = {
        "name": recipe.name,
        "description": recipe.description,
        "arch": ckpt["arch"],
        "arch_kwargs": ckpt["arch_kwargs"],
        "classes": ckpt["classes"],
        "preprocess": ckpt["preprocess"],
        "data": rec["data"],
        "command": rec["command"],
        "epochs": rec["epochs"],
        "best_epoch": rec["best_epoch"],
        "config": rec["config"],
        "test": rec["test"],
        "val": rec["val"],
        "target_accuracy": recipe.target_accuracy,
        "device": rec["device"],
        "hardware_note": "trained on CPU: no GPU was available to the build",
        "wall_time_s": rec["wall_time_s"],
        "images_per_s": rec["images_per_s"],
        "params": rec["params"],
        "history": rec["history"],
        "samples": sample_names,
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "torch": rec["torch"],
        "netlens": __version__,
        "license": "Apache-2.0 (weights); data: see the dataset's own license",
    }
    if not rec["device"].startswith("cpu"):
        card["hardware_note"] = f"trained on {rec['device']}"
    (folder / "card.json").write_text(dump_card(card))
    return folder


def finish_interrupted(recipe: Recipe, host: PluginHost) -> Path:
    """Turn an interrupted run's ``build/zoo/NAME.last.pt`` into a checkpoint, honestly labelled.

    The best epoch so far is evaluated on the test split; the record says how many of the
    planned epochs ran.
    """
    from netlens.train import TrainConfig
    from netlens.train.datasets import make_loader
    from netlens.train.resume import last_path, load_state
    from netlens.train.trainer import _record, _validate, _write, setup

    out = BUILD / f"{recipe.name}.pt"
    saved = torch.load(last_path(out), map_location="cpu", weights_only=True)
    cfg = TrainConfig.from_dict({**saved["config"], "resume": True})
    session = setup(cfg, host)
    state = load_state(session)
    session.model.load_state_dict(state["best_state"])
    loader = make_loader(session.splits.test, 256, shuffle=False, workers=0, pin=False)
    test = _validate(session, loader)
    command = (
        f"netlens train --recipe {recipe.name} --threads {cfg.threads} --out {out} "
        f"(stopped after {state['epoch']} of {cfg.epochs} epochs for lack of CPU time; "
        "best epoch finished with scripts/build_zoo.py --finish-interrupted)"
    )
    record = _record(session, state, test, command)
    record["epochs_planned"], record["epochs"] = cfg.epochs, state["epoch"]
    return _write(session, state["best_state"], record)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="recipes to build (default: all)")
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--export-only", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--finish-interrupted",
        action="store_true",
        help="export the best epoch of an interrupted run (build/zoo/NAME.last.pt)",
    )
    args = parser.parse_args()
    host = PluginHost()
    todo = args.names or list(RECIPES)
    unknown = [n for n in todo if n not in RECIPES]
    if unknown:
        print(f"unknown recipe(s): {', '.join(unknown)} (known: {', '.join(RECIPES)})")
        return 1
    for name in todo:
        recipe = RECIPES[name]
        ckpt = BUILD / f"{name}.pt"
        if args.finish_interrupted:
            ckpt = finish_interrupted(recipe, host)
        elif not args.export_only and (args.retrain or not ckpt.is_file()):
            ckpt = train_recipe(recipe, args.threads)
        if not ckpt.is_file():
            print(f"{name}: no checkpoint at {ckpt}; train it first")
            return 1
        folder = export(recipe, ckpt, host)
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20
        print(f"{name}: wrote {folder} ({size:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
