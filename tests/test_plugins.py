"""Plugins (docs/plugins.md): a package written to a temporary folder registers a model and a
dataset; runs, resumes (after a kill), pipelines, reports, exports and sweeps (in-process and on
Ray) that name them work with the plugin recorded in config.yaml and no other flag. A plugin that
fails to import is exit 2 naming it."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from dsd2 import plugins, rundir, store
from dsd2.cli import main
from dsd2.config import RunConfig, apply_overrides, load_config
from dsd2.data import DATASETS
from dsd2.errors import UserError
from dsd2.models import MODELS

PLUGIN = "dsd2_test_plugin"
PLUGIN_SOURCE = '''
"""A dsd2 plugin for the tests: a model and a dataset nobody else registers."""
import torch
from torch import nn

from dsd2.data import RawDataset, register_dataset
from dsd2.models import register_model


@register_model("plug_mlp", input_shape=(12,))
def plug_mlp(num_classes: int, in_channels: int, input_size: int, width: int = 8) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(input_size, width), nn.ReLU(), nn.Linear(width, num_classes))


@register_dataset("plug_blobs", num_classes=3, input_shape=(12,), train_size=300, test_size=90, default_val_size=60)
def plug_blobs(root, *, download=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = 2 * torch.randn(3, 12, generator=g)

    def draw(n):
        y = torch.arange(n) % 3
        return centres[y] + torch.randn(n, 12, generator=g), y

    x, y = draw(300)
    xt, yt = draw(90)
    return RawDataset("plug_blobs", 3, x, y, xt, yt, (0.0,), (1.0,), default_val_size=60)
'''
# seconds-long: one epoch per round, two rounds
RUN = [
    "name=plugged",
    "dataset={name: plug_blobs, root: null}",
    "model={name: plug_mlp, width: 8}",
    "noise.rate=0.2",
    "train.epochs=1",
    "train.batch_size=64",
    "train.device=cpu",
    "prune.rounds=2",
    "prune.rate=0.5",
    "entropy.enabled=false",
]


def _forget_plugin() -> None:
    """This process as if it had never imported the plugin (a fresh `dsd2` process)."""
    for name in [m for m in sys.modules if m == PLUGIN or m.startswith(PLUGIN + ".")]:
        del sys.modules[name]
    for reg, name in ((MODELS, "plug_mlp"), (DATASETS, "plug_blobs")):
        if name in reg:
            reg.unregister(name)
    if PLUGIN in plugins._loaded:
        plugins._loaded.remove(PLUGIN)


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A folder holding the plugin package, on sys.path (not on PYTHONPATH: Ray workers must be told)."""
    root = tmp_path / "plugsrc"
    (root / PLUGIN).mkdir(parents=True)
    (root / PLUGIN / "__init__.py").write_text(PLUGIN_SOURCE)
    importlib.invalidate_caches()
    monkeypatch.syspath_prepend(str(root))
    _forget_plugin()
    yield root
    _forget_plugin()


# ----------------------------------------------------------------------------- loading


def test_unknown_names_without_the_plugin_and_known_with_it(plugin_dir):
    from dsd2.models.registry import validate_options

    with pytest.raises(UserError, match="unknown model 'plug_mlp'"):
        validate_options("plug_mlp", {})
    cfg = load_config("tiny_mnist1d", RUN, plugins=[PLUGIN])
    assert cfg.plugins == [PLUGIN] and "plug_mlp" in MODELS and "plug_blobs" in DATASETS


def test_plugins_are_not_part_of_the_run_id(plugin_dir):
    with_plugin = load_config("tiny_mnist1d", ["train.epochs=2"], plugins=[PLUGIN, PLUGIN])
    without = load_config("tiny_mnist1d", ["train.epochs=2"])
    assert with_plugin.plugins == [PLUGIN]  # given twice, kept once
    assert with_plugin.run_id() == without.run_id() and with_plugin.digest() == without.digest()
    assert RunConfig().run_id() == "run-44136fa355"  # ids of runs made before plugins existed stay


def test_a_plugin_that_fails_to_import_is_exit_2_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken_ext.py").write_text("raise RuntimeError('boom: no GPU driver')\n")
    importlib.invalidate_caches()
    assert main(["run", "tiny_mnist1d", "--plugin", "broken_ext", "-q"]) == 2
    err = capsys.readouterr().err
    assert "plugin broken_ext failed to import: RuntimeError: boom: no GPU driver" in err and "Traceback" not in err
    assert main(["models", "--plugin", "no_such_ext_xyz"]) == 2
    assert "plugin no_such_ext_xyz failed to import: ModuleNotFoundError" in capsys.readouterr().err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("plugins: [broken_ext]\n")
    assert main(["config", str(cfg)]) == 2  # from the config key as from the option
    assert "plugin broken_ext failed to import" in capsys.readouterr().err
    assert main(["config", "tiny_mnist1d", "--plugin", "not/a/module.py"]) == 2
    assert "not a module name" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_plugin_in_the_current_directory_is_found(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    (tmp_path / "here_ext.py").write_text("LOADED = True\n")
    importlib.invalidate_caches()
    try:
        plugins.load_plugins(["here_ext"])
        assert sys.modules["here_ext"].LOADED
    finally:
        sys.modules.pop("here_ext", None)
        plugins._loaded.remove("here_ext")


def _installed(site: Path, dist: str, entry_points: dict[str, str]) -> None:
    """A distribution as pip leaves it: ``<dist>-0.1.dist-info`` with METADATA and entry_points.txt."""
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{plugins.ENTRY_POINT_GROUP}]\n{lines}")


def test_entry_points_load_once_per_process_in_every_command(tmp_path):
    site = tmp_path / "site"
    _installed(site, "dsd2_ep_ext", {"ep_ext": "ep_ext_mod"})
    (site / "ep_ext_mod.py").write_text(
        "from torch import nn\nfrom dsd2.models import register_model\nprint('loaded', flush=True)\n\n"
        "@register_model('ep_net')\ndef ep_net(num_classes, in_channels, input_size, depth: int = 2):\n    return nn.Identity()\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    code = "import sys; from dsd2.cli import main; from dsd2.config import RunConfig; RunConfig(); sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "models"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("loaded") == 1 and "ep_net" in proc.stdout and "depth=2" in proc.stdout


def test_a_failing_entry_point_is_exit_2_naming_it(tmp_path, monkeypatch, capsys):
    site = tmp_path / "site"
    _installed(site, "dsd2_bad_ext", {"bad": "ep_bad_mod"})
    (site / "ep_bad_mod.py").write_text("raise ImportError('needs torch_geometric')\n")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    monkeypatch.setattr(plugins, "_entry_points_done", False)
    try:
        assert main(["config", "tiny_mnist1d"]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert "plugin entry point bad = ep_bad_mod (group dsd2.plugins) failed to load: ImportError: needs torch_geometric" in err
    finally:
        sys.modules.pop("ep_bad_mod", None)


# ----------------------------------------------------------------------------- runs


_KILL_AFTER_ROUND_0 = """
import os, sys
from dsd2 import imp
from dsd2.config import load_config

def die(row):
    if row["round"] == 0:
        os._exit(9)  # as if killed: no cleanup, no exception handling

cfg = load_config(sys.argv[1])
imp.run(cfg, sys.argv[2], on_round=die)
"""


def test_run_killed_then_resumed_pipeline_report_export_without_a_flag(plugin_dir, tmp_path, capsys):
    yaml_path = tmp_path / "plugged.yaml"
    yaml_path.write_text(yaml.safe_dump(apply_overrides({"plugins": [PLUGIN]}, RUN)))
    out = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_dir), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _KILL_AFTER_ROUND_0, str(yaml_path), str(out)], env=env, capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    assert rundir.read_config(run_dir).plugins == [PLUGIN]  # recorded in config.yaml
    assert store.read_yaml_file(run_dir / "config.yaml")["plugins"] == [PLUGIN]
    assert len(rundir.finished_rounds(run_dir)) == 1
    _forget_plugin()  # a fresh process: nothing registered

    assert main(["resume", str(run_dir), "-q"]) == 0  # no --plugin: config.yaml names it
    assert len(rundir.finished_rounds(run_dir)) == 3

    _forget_plugin()
    assert main(["pipeline", "tiny_mnist1d", *RUN, "name=plugpipe", "--plugin", PLUGIN, "--out", str(tmp_path / "pipe"), "-q"]) == 0
    students = [p for p in (tmp_path / "pipe").iterdir() if (p / "teacher.json").is_file()]
    assert students and all(rundir.read_config(p).plugins == [PLUGIN] for p in (tmp_path / "pipe").iterdir() if p.is_dir())

    _forget_plugin()
    assert main(["report", str(run_dir), "-o", str(tmp_path / "report")]) == 0
    _forget_plugin()
    assert main(["export", str(run_dir), "-o", str(tmp_path / "export")]) == 0
    assert main(["show", str(run_dir)]) == 0
    capsys.readouterr()


# ----------------------------------------------------------------------------- sweeps


def _sweep_file(tmp_path: Path, name: str, *, plugin_key: bool) -> Path:
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(apply_overrides({}, RUN)))  # no plugins: the sweep file names it
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        name: {name}
        base: base.yaml
        {f"plugins: [{PLUGIN}]" if plugin_key else ""}
        grid:
          seed: [0, 1]
        retries: 0
        """)
    )
    return path


def _check_sweep(out: Path, name: str) -> None:
    cells = [p for p in out.iterdir() if p.name.startswith(f"{name}_seed")]
    assert len(cells) == 2
    for cell in cells:
        assert rundir.read_config(cell).plugins == [PLUGIN]
        assert len(rundir.finished_rounds(cell)) == 3


def test_sequential_sweep_with_a_plugin(plugin_dir, tmp_path, capsys):
    path = _sweep_file(tmp_path, "plugsweep", plugin_key=False)
    assert main(["sweep", str(path), "--backend", "sequential", "--out", str(tmp_path / "runs")]) == 2  # unknown model
    assert "unknown dataset 'plug_blobs'" in capsys.readouterr().err  # what a sweep said before plugins
    assert main(["sweep", str(path), "--backend", "sequential", "--plugin", PLUGIN, "--out", str(tmp_path / "runs")]) == 0
    _check_sweep(tmp_path / "runs", "plugsweep")
    _forget_plugin()
    assert main(["report", str(tmp_path / "runs" / "plugsweep"), "-o", str(tmp_path / "rep")]) == 0
    capsys.readouterr()


@pytest.mark.slow
def test_ray_sweep_with_a_plugin_only_on_the_drivers_sys_path(plugin_dir, tmp_path, capsys, monkeypatch):
    # the plugin folder is on this process's sys.path only: the Ray workers learn it from the task
    monkeypatch.delenv("PYTHONPATH", raising=False)
    path = _sweep_file(tmp_path, "plugray", plugin_key=True)
    assert main(["sweep", str(path), "--max-parallel", "2", "--out", str(tmp_path / "runs")]) == 0
    _check_sweep(tmp_path / "runs", "plugray")
    captured = capsys.readouterr()
    assert "Token authentication" not in captured.err + captured.out
