"""Option values captum cannot take are refused in one line before captum sees them."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from netlens.cli.app import app
from netlens.errors import NetlensError

runner = CliRunner()


@pytest.mark.parametrize(
    ("name", "opts", "words"),
    [
        ("occlusion", {"window": 1000}, "window 1000 is larger than the input, 32×32 pixels"),
        ("occlusion", {"window": 10**12}, "give --window 32 or less"),
        ("occlusion", {"stride": 1000}, "stride 1000 is larger than the 4-pixel window"),
        ("occlusion", {"window": 8, "stride": 9}, "give --stride 8 or less"),
        ("occlusion", {"batch_size": 10**12}, "batch_size must be at most 1024"),
        ("integrated-gradients", {"steps": 10**6}, "steps must be at most 10000"),
        ("integrated-gradients", {"baseline": "nan"}, "baseline 'nan' is not finite"),
        ("integrated-gradients", {"baseline": "-inf"}, "baseline '-inf' is not finite"),
    ],
)
def test_out_of_range_options_are_refused(name, opts, words, tiny_lens, sample_images):
    with pytest.raises(NetlensError, match=words):
        tiny_lens.run(name, sample_images[:1], **opts)


def test_largest_window_and_stride_still_run(tiny_lens, sample_images):
    result = tiny_lens.run("occlusion", sample_images[:1], window=32, stride=32)
    assert result.maps.shape == (1, 32, 32)


@pytest.mark.parametrize(
    ("name", "opt"), [("occlusion", "window=1000"), ("integrated-gradients", "baseline=nan")]
)
def test_cli_refusal_is_one_line(name, opt, tiny_model_file, sample_images, tmp_path):
    out = tmp_path / "out"
    args = ["run", name, str(tiny_model_file), str(sample_images[0]), "--opt", opt]
    res = runner.invoke(app, [*args, "--out", str(out)])
    assert res.exit_code == 1
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert "NETLENS_DEBUG" not in res.output and "Traceback" not in res.output
    assert not out.exists()
