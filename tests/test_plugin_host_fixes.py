"""Plugin host fixes: a plugin failing in any hook is gone from every registry whichever is asked
for first; a plain analyzer returning no Result is named; plugin model loaders that return the
wrong thing or raise are named in the error; a saved spec with the user's mean/std is not
warned of as guessed."""

from __future__ import annotations

import sys
import types
import warnings

import pytest
import torch

import netlens
import netlens.plugins.manager as manager
from netlens.analyzers.base import Analyzer, Result
from netlens.errors import AnalyzerError, ModelLoadError, NetlensError, NetlensWarning
from netlens.plugins import hookimpl
from netlens.plugins.manager import PluginHost
from netlens.preprocess import Preprocess

pytestmark = [pytest.mark.usefixtures("one_thread")]

ZOO = "zoo:shapes-allconv"


def plugin(name: str, **hooks) -> types.ModuleType:
    mod = types.ModuleType(name)
    for hook, fn in hooks.items():
        setattr(mod, hook, hookimpl(fn))
    return mod


@pytest.fixture
def install(monkeypatch):
    """``install(*modules)``: every PluginHost made meanwhile (the CLI's, a Lens') holds these
    plugin modules, as if installed (package ``netlens-NAME``)."""
    from netlens.cli import app as app_mod

    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # main() sets these: restored after
    monkeypatch.setenv("TORCH_CPP_LOG_LEVEL", "ERROR")
    monkeypatch.delenv("NETLENS_DISABLE_PLUGINS", raising=False)
    before = list(app_mod.app.registered_commands)
    orig = manager.PluginHost

    def _install(*modules: types.ModuleType) -> None:
        class Host(orig):  # type: ignore[misc, valid-type]
            def __init__(self, plugins=(), **kw):
                super().__init__(plugins, **kw)
                for m in modules:
                    if m.__name__ not in self.plugins:
                        pkg = f"netlens-{m.__name__}"
                        self.register(m, name=m.__name__, package=pkg, version="0.1")

        monkeypatch.setattr(manager, "PluginHost", Host)

    yield _install
    app_mod.app.registered_commands[:] = before


def cli(monkeypatch, *args: str) -> int:
    """``netlens ARGS`` in-process; the exit status."""
    from netlens.cli import app as app_mod

    monkeypatch.setattr(sys, "argv", ["netlens", *args])
    try:
        app_mod.main()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


# -- 2: a plugin failing in one hook is taken back everywhere, before any lookup -------------
class Half(Analyzer):
    """half-failing plugin analyzer"""

    name = "half-an"
    takes = "images"

    def compute(self, run):
        return Result(self.name, table=[{"ran": 1}])


def _half() -> types.ModuleType:
    def analyzers(registry):
        registry.add("half-an", Half())

    def cam_methods(registry):
        raise RuntimeError("cam hook fails")

    return plugin(
        "halfok",
        netlens_register_analyzers=analyzers,
        netlens_register_cam_methods=cam_methods,
    )


@pytest.mark.parametrize("first", ["analyzers", "cam_methods", "metrics"])
def test_half_failed_plugin_is_gone_whichever_registry_comes_first(first):
    host = PluginHost([_half()], entry_points=False)
    getattr(host, first)  # the registry asked for first decides nothing
    assert "half-an" not in host.analyzers
    assert "cam hook fails" in host.plugins["halfok"].error
    with pytest.raises(NetlensError, match="unknown analyzer 'half-an'.*halfok"):
        host.analyzers.get("half-an")


def test_half_failed_plugin_does_not_run(install, monkeypatch, capsys, tmp_path):
    install(_half())
    lens = netlens.load(ZOO)
    with pytest.raises(NetlensError, match="unknown analyzer 'half-an'"):
        lens.run("half-an", lens.example())
    assert cli(monkeypatch, "run", "half-an", ZOO, "--out", str(tmp_path / "o")) == 1
    assert "halfok" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_registries_of_unrelated_hooks_stay_unfilled():
    """Opening a model file asks for the loaders only: the built-ins' analyzers (which import
    every analyzer and matplotlib) are not registered for it."""
    host = PluginHost()
    assert host.loaders
    assert "netlens_register_analyzers" not in host._registries
    host.cam_methods  # noqa: B018 - Cam adds to both: filled together
    assert "netlens_register_analyzers" in host._registries


# -- 4: a plain analyzer whose run returns no Result ------------------------------------------
class _Dict:
    """returns a dict"""

    def run(self, lens, inputs=None, **options):
        return {"not": "a result"}


class _Nothing:
    """returns None"""

    def run(self, lens, inputs=None, **options):
        return None


def _garb() -> types.ModuleType:
    def analyzers(registry):
        registry.add("bad-an", _Dict())
        registry.add("none-an", _Nothing())

    return plugin("garb", netlens_register_analyzers=analyzers)


@pytest.mark.parametrize(("name", "what"), [("bad-an", "a dict"), ("none-an", "None")])
def test_cli_names_analyzer_returning_no_result(name, what, install, monkeypatch, capsys, tmp_path):
    install(_garb())
    assert cli(monkeypatch, "run", name, ZOO, "--out", str(tmp_path / "o")) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(err) == 1
    assert (
        f"analyzer '{name}' (plugin netlens-garb) returned {what}, not a netlens Result" in err[0]
    )


def test_checked_result_passes_results_and_names_the_rest():
    host = PluginHost([_garb()], entry_points=False)
    result = Result("bad-an")
    assert host.checked_result("bad-an", result) is result
    with pytest.raises(AnalyzerError, match=r"'none-an' \(plugin garb\) returned None"):
        host.checked_result("none-an", None)
    with pytest.raises(AnalyzerError, match=r"returned an int, not a netlens Result"):
        host.checked_result("bad-an", 3)


def test_lens_run_names_analyzer_returning_no_result(install):
    install(_garb())
    lens = netlens.load(ZOO)
    with pytest.raises(AnalyzerError, match=r"'bad-an' \(plugin netlens-garb\) returned a dict"):
        lens.run("bad-an", lens.example())


# -- 5: plugin model loaders: a wrong return value, a failure on a file it cannot read --------
def _ldr() -> types.ModuleType:
    def loaders(registry):
        def garbage(path, request):
            if path.suffix == ".garbage":
                return torch.nn.Linear(2, 2)
            return None

        def boom(path, request):
            if path.suffix in (".boom", ".pt"):
                raise ValueError("my format's header is version 7, this reader knows 1-6")

        registry.add("garbage-loader", garbage)
        registry.add("boom-loader", boom)

    return plugin("ldr", netlens_register_model_loaders=loaders)


def _ldr_host() -> PluginHost:
    host = PluginHost(disable=())
    host.register(_ldr(), name="ldr", package="netlens-ldr", version="0.1")
    return host


def test_loader_returning_no_loaded_model_is_named(tmp_path):
    path = tmp_path / "m.garbage"
    path.write_text("x")
    with pytest.raises(ModelLoadError) as got:
        netlens.load(path, host=_ldr_host())
    text = str(got.value)
    assert "model loader 'garbage-loader' (netlens-ldr) returned a Linear" in text
    assert "not a netlens LoadedModel" in text


def test_raising_loader_is_said_in_the_error(tmp_path, install, monkeypatch, capsys):
    path = tmp_path / "m.boom"
    path.write_text("x")
    with pytest.raises(ModelLoadError) as got:
        netlens.load(path, host=_ldr_host())
    text = str(got.value)
    assert "model loader 'boom-loader' (netlens-ldr) failed on" in text
    assert "ValueError: my format's header is version 7" in text
    assert "not a PyTorch file or corrupt" in text  # what netlens' own loaders said
    install(_ldr())
    assert cli(monkeypatch, "cam", str(path), "--out", str(tmp_path / "o")) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(err) == 1 and "boom-loader" in err[0] and "version 7" in err[0]


def test_raising_loader_is_a_warning_when_netlens_reads_the_file(tmp_path):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
    path = tmp_path / "m.pt"
    torch.save(model, path)  # a pickled module: netlens reads it with trust=True
    with pytest.warns(NetlensWarning, match="model loader 'boom-loader' .* skipped"):
        lens = netlens.load(path, host=_ldr_host(), trust=True, input_size=(3, 2, 2))
    assert isinstance(lens.model, torch.nn.Sequential)


# -- 8: a saved spec with the user's mean/std is not "guessed" --------------------------------
def _arch(tmp_path) -> str:
    (tmp_path / "tinyarch.py").write_text(
        "import torch\n"
        "from torch import nn\n"
        "def Tiny(num_classes=3):\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),\n"
        "        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))\n"
    )
    return f"{tmp_path / 'tinyarch.py'}:Tiny"


def _guess_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "guesses" in str(w.message)]


def test_saved_user_statistics_are_not_warned_of_as_guessed(tmp_path):
    arch = _arch(tmp_path)
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("tinyarch_fix8", tmp_path / "tinyarch.py")
    mod = module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    module = mod.Tiny().eval()
    given = netlens.load(module, classes=list("abc"), input_size=32, mean=[0.5] * 3, std=[0.5] * 3)
    assert "(guessed)" not in given.transform.source
    assert "user-given" in given.transform.source
    netlens.save(given, tmp_path / "given.pt", arch=arch)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        again = netlens.load(tmp_path / "given.pt", arch=arch)
    info = again.preprocess_info()
    assert (info["mean"], info["std"]) == ([0.5] * 3, [0.5] * 3)
    assert _guess_warnings(record) == []
    # a spec really guessed is still warned of after the round trip
    guessed = netlens.load(module, classes=list("abc"), input_size=32)
    netlens.save(guessed, tmp_path / "guessed.pt", arch=arch)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        netlens.load(tmp_path / "guessed.pt", arch=arch)
    assert len(_guess_warnings(record)) == 1


def test_older_saved_override_text_is_not_guessed():
    """A checkpoint an older netlens saved says the guess, then the user's override."""
    old = (
        "netlens checkpoint (model records no preprocessing: ImageNet mean/std (guessed); input "
        "size unknown + user override (size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))"
    )
    assert not Preprocess(
        size=32, mean=(0.5,) * 3, std=(0.5,) * 3, source=old
    ).guessed_normalisation
    guess = "model records no preprocessing: ImageNet mean/std (guessed) + user override (size=32)"
    assert Preprocess(size=32, source=guess).guessed_normalisation
    only_mean = Preprocess(source=guess).override(mean=(0.5,) * 3)
    assert only_mean.guessed_normalisation  # its std is still the guess


def test_guess_for_a_model_with_an_inferred_size_is_said_as_such():
    """A bare module whose size netlens reads off its first Linear: the warning says that the
    model records no preprocessing (it said "ImageNet mean/std (guessed), so it was trained on
    other images than the architecture's")."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
    with pytest.warns(NetlensWarning) as record:
        netlens.load(model)
    said = _guess_warnings(record)
    assert len(said) == 1
    assert said[0].startswith("model records no preprocessing: netlens guesses ImageNet's")
