"""A dataset plugin written as docs/plugins.md says (a factory returning a Dataset of
(tensor, label) with ``.classes``), its classes listed in another order than the model's:
given by name, its labels are matched to the model's class names, as the same Dataset object's
are."""

from __future__ import annotations

import types

import torch
from torch import nn

import netlens
from netlens.plugins import hookimpl
from netlens.plugins.manager import PluginHost


class Squares(torch.utils.data.Dataset):
    classes = ["blue", "green", "red"]  # this dataset's own order

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int):
        x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i)) * 0.3
        colour = ["red", "green", "blue"][i % 3]
        x[["red", "green", "blue"].index(colour)] += 0.7
        return x, self.classes.index(colour)


def test_a_plugin_dataset_by_name_is_matched_to_the_model_classes() -> None:
    plugin = types.ModuleType("rgb_plugin")

    @hookimpl
    def netlens_register_datasets(registry) -> None:
        registry.add("rgb", lambda split="test", **kw: Squares())

    plugin.netlens_register_datasets = netlens_register_datasets  # type: ignore[attr-defined]
    model = nn.Sequential(
        nn.Conv2d(3, 3, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3)
    )
    with torch.no_grad():  # logit k = 10 × mean of channel k (red, green, blue): always right
        model[0].weight.copy_(torch.eye(3)[:, :, None, None])
        model[0].bias.zero_()
        model[4].weight.copy_(10 * torch.eye(3))
        model[4].bias.zero_()
    lens = netlens.load(
        model.eval(), classes=["red", "green", "blue"], mean=(0, 0, 0), std=(1, 1, 1), input_size=32
    )
    lens._host = PluginHost([plugin])
    by_name = lens.ablate("rgb", metric="accuracy", progress=False)
    assert by_name.meta["baseline"]["value"] == 1.0
    label_source = by_name.meta["run"]["data"]["label_source"]
    assert label_source == "the Dataset's class names matched to model classes"
