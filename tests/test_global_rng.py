"""Analyses leave the user's random number generators as they found them: a script that seeds,
analyses and then trains gets the very run it gets without the analysis. A DataLoader draws its
base seed from torch's global RNG, and rich (imported by the first analysis) drew from Python's
``random``; both moved the user's streams."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_analyses_do_not_move_the_users_random_streams() -> None:
    script = textwrap.dedent(
        """
        import random
        import torch, torchvision
        import netlens
        torch.manual_seed(0)
        model = torchvision.models.resnet18(num_classes=3).eval()
        data = (torch.rand(6, 3, 32, 32), torch.randint(0, 3, (6,)))
        lens = netlens.load(model, classes=["a", "b", "c"])
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*data), batch_size=4)
        calls = {
            "cam": lambda: lens.cam(data[0][:1]),
            "stats": lambda: lens.run("stats", data),
            "top": lambda: lens.run("top-activations", data, layer="layer4", k=2),
            "evaluate": lambda: lens.evaluate(data, metrics="deletion", steps=2),
            "ablate": lambda: lens.ablate(data, metric="prob", resamples=10),
            "ablate a DataLoader": lambda: lens.ablate(loader, metric="prob", resamples=10),
        }
        moved = []
        for name, call in calls.items():
            torch.manual_seed(123)
            random.seed(123)
            before = torch.get_rng_state(), random.getstate()
            call()
            if not torch.equal(before[0], torch.get_rng_state()):
                moved.append(f"{name}: torch")
            if before[1] != random.getstate():
                moved.append(f"{name}: random")
        print("MOVED", moved)
        """
    )
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script], capture_output=True, text=True, timeout=600
    )
    assert "MOVED []" in out.stdout, out.stdout + out.stderr[-2000:]
