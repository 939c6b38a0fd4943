"""Hostile folders and files around export, report and run: dsd2 replaces only what it wrote,
never writes through a planted link, and refuses a doctored export in one line (exit 2),
leaving every folder as it was."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from dsd2 import store
from dsd2.cli import main
from dsd2.errors import UserError
from dsd2.exporting import read_info
from dsd2.imp import run

from conftest import tiny_config


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished tiny run: rounds 0..2."""
    return run(tiny_config(), tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    """A clean export of round 0 (copied by the tests that doctor it)."""
    out = tmp_path_factory.mktemp("clean") / "model"
    assert main(["export", str(tiny_run), "-o", str(out), "--round", "0"]) == 0
    return out


def snapshot(root: Path) -> dict[str, object]:
    """Every entry under ``root`` (links not followed): its kind and bytes or target."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir",)
            elif p.is_file():
                out[rel] = ("file", p.read_bytes())
            else:  # a FIFO: reading it would block
                out[rel] = ("special", p.lstat().st_mode)
    return out


def one_line_error(capsys, needle: str) -> None:
    err = capsys.readouterr().err.strip()
    # a status line ("report: reading ...", "export: writing ...") may come first
    err = err[err.find("error:") :] if "error:" in err else err
    assert err.startswith("error:") and needle in err, err
    assert "Traceback" not in err and len(err.splitlines()) <= 4, err


def user_folder(path: Path) -> Path:
    """A folder of the user's: a thesis, a sub-folder with a file."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "thesis.txt").write_text("three years of work")
    (path / "sub").mkdir(exist_ok=True)
    (path / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return path


def planted_export(path: Path, files: dict[str, object]) -> Path:
    """A model.json claiming ``path`` is a dsd2 export listing ``files``."""
    (path / "model.json").write_text(json.dumps({"format": "dsd2-export", "format_version": 1, "files": files}))
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- export -o


def _planted_empty(tmp: Path) -> Path:
    return planted_export(user_folder(tmp / "d"), {})


def _planted_thesis(tmp: Path) -> Path:
    d = user_folder(tmp / "d")
    return planted_export(d, {"thesis.txt": {"sha256": sha(d / "thesis.txt"), "bytes": 19}})


def _planted_weights(tmp: Path) -> Path:
    """A model.safetensors of the user's and a model.json that names it with a wrong hash."""
    d = user_folder(tmp / "d")
    (d / "model.safetensors").write_bytes(b"my own weights")
    return planted_export(d, {"model.safetensors": {"sha256": "0" * 64, "bytes": 14}})


def _edited_export(tmp: Path, exported: Path) -> Path:
    """An earlier export whose weights the user has since changed: no longer ours."""
    d = tmp / "d"
    shutil.copytree(exported, d)
    (d / "model.safetensors").write_bytes(b"fine-tuned by hand")
    return d


def _linked_weights(tmp: Path, exported: Path) -> Path:
    """An earlier export whose model.safetensors is a link to a file elsewhere."""
    d = tmp / "d"
    shutil.copytree(exported, d)
    elsewhere = user_folder(tmp / "elsewhere") / "weights.bin"
    shutil.copy(d / "model.safetensors", elsewhere)
    (d / "model.safetensors").unlink()
    (d / "model.safetensors").symlink_to(elsewhere)
    return d


def _dangling_link(tmp: Path) -> Path:
    (tmp / "link").symlink_to(tmp / "nowhere" / "deep" / "model")
    return tmp / "link"


def _live_link(tmp: Path) -> Path:
    (tmp / "link").symlink_to(user_folder(tmp / "target"))
    return tmp / "link"


def _other_run(tmp: Path, tiny_run: Path) -> Path:
    other = tmp / "other_run"
    shutil.copytree(tiny_run, other)
    return other / "exports"


@pytest.mark.parametrize(
    "make, args, needle",
    [
        (_planted_empty, ["--force"], "not a dsd2 export"),
        (_planted_thesis, ["--force"], "not a dsd2 export"),
        (_planted_weights, ["--force"], "not a dsd2 export"),
        (_planted_empty, [], "not empty"),
        (lambda tmp: user_folder(tmp / "d"), ["--force"], "not a dsd2 export"),
        ("edited", ["--force"], "not a dsd2 export"),
        ("linked", ["--force"], "not a dsd2 export"),
        (_dangling_link, [], "symbolic link"),
        (_live_link, ["--force"], "symbolic link"),
        ("other_run", [], "inside the run directory"),
    ],
)
def test_export_never_touches_what_is_not_its_own(tiny_run, exported, tmp_path, capsys, make, args, needle):
    if make == "edited":
        out = _edited_export(tmp_path, exported)
    elif make == "linked":
        out = _linked_weights(tmp_path, exported)
    elif make == "other_run":
        out = _other_run(tmp_path, tiny_run)
    else:
        out = make(tmp_path)
    before = snapshot(tmp_path)
    assert main(["export", str(tiny_run), "-o", str(out), "--round", "1", *args]) == 2
    one_line_error(capsys, needle)
    assert snapshot(tmp_path) == before


def test_export_dot_with_user_files_is_refused(tiny_run, tmp_path, capsys, monkeypatch):
    d = planted_export(user_folder(tmp_path / "d"), {})
    monkeypatch.chdir(d)
    before = snapshot(tmp_path)
    for args in ([], ["--force"]):
        assert main(["export", str(tiny_run), "-o", ".", "--round", "1", *args]) == 2
        one_line_error(capsys, "export")
    assert snapshot(tmp_path) == before


def test_force_replaces_only_the_earlier_exports_files(tiny_run, exported, tmp_path, capsys):
    d = tmp_path / "d"
    shutil.copytree(exported, d)
    user_folder(d)
    # an ONNX file of the earlier export (listed with its hash): stale once round 1 has none
    (d / "model.onnx").write_bytes(b"onnx of round 0")
    info = json.loads((d / "model.json").read_text())
    info["files"]["model.onnx"] = {"bytes": 15, "sha256": sha(d / "model.onnx")}
    (d / "model.json").write_text(json.dumps(info))
    assert main(["export", str(tiny_run), "-o", str(d), "--round", "1", "--force"]) == 0
    assert read_info(d)["round"] == 1
    assert (d / "thesis.txt").read_text() == "three years of work"
    assert (d / "sub" / "data.csv").read_text() == "a,b\n1,2\n"
    assert not (d / "model.onnx").exists()  # ours, not written again: no stale ONNX beside the new weights
    assert sorted(p.name for p in d.iterdir()) == ["model.json", "model.safetensors", "sub", "thesis.txt"]
    capsys.readouterr()


def test_export_into_an_empty_dot(tiny_run, tmp_path, capsys, monkeypatch):
    (tmp_path / "d").mkdir()
    monkeypatch.chdir(tmp_path / "d")
    assert main(["export", str(tiny_run), "-o", ".", "--round", "0"]) == 0
    assert read_info(tmp_path / "d")["round"] == 0
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["model.json", "model.safetensors"]
    capsys.readouterr()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--round", "²"], "best, last_good"),
        (["--round", "1" * 5000], "best, last_good"),
    ],
)
def test_export_bad_round_text(tiny_run, tmp_path, capsys, args, needle):
    assert main(["export", str(tiny_run), "-o", str(tmp_path / "x"), *args]) == 2
    one_line_error(capsys, needle)
    assert not list(tmp_path.iterdir())


def test_export_long_out_name(tiny_run, tmp_path, capsys):
    assert main(["export", str(tiny_run), "-o", str(tmp_path / ("x" * 300)), "--round", "0"]) == 2
    one_line_error(capsys, "x" * 20)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("kind", ["fifo", "dir", "list", "nested", "no digest"])
def test_export_refuses_a_bad_meta_json(tiny_run, tmp_path, capsys, kind):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    meta = run_dir / "meta.json"
    if kind == "fifo":
        meta.unlink()
        os.mkfifo(meta)
    elif kind == "dir":
        meta.unlink()
        meta.mkdir()
    elif kind == "list":
        meta.write_text("[]")
    elif kind == "nested":
        meta.write_text("[" * 100_000 + "]" * 100_000)
    else:
        doc = json.loads(meta.read_text())
        doc.pop("config_digest")
        doc.pop("config_hash")
        meta.write_text(json.dumps(doc))
    assert main(["export", str(run_dir), "-o", str(tmp_path / "x"), "--round", "0"]) == 2
    one_line_error(capsys, "meta.json")
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- report -o


def _report(run_dir: Path, out: Path) -> int:
    return main(["report", str(run_dir), "-o", str(out)])


def _user_index(tmp: Path) -> Path:
    d = user_folder(tmp / "site")
    (d / "index.html").write_text("<h1>my homepage</h1>")
    return d


def _user_figure(tmp: Path) -> Path:
    d = user_folder(tmp / "site")
    (d / "figures").mkdir()
    (d / "figures" / "accuracy.png").write_bytes(b"my plot")
    return d


def _planted_report(tmp: Path) -> Path:
    """A report listing that vouches for an index.html with the wrong hash."""
    d = _user_index(tmp)
    (d / ".dsd2-report.json").write_text(json.dumps({"format": "dsd2-report", "files": {"index.html": "0" * 64}}))
    return d


def _linked_figures(tmp: Path) -> Path:
    d = user_folder(tmp / "site")
    (d / "figures").symlink_to(user_folder(tmp / "elsewhere"))
    return d


@pytest.mark.parametrize(
    "make, needle",
    [
        (_user_index, "index.html is listed by no .dsd2-report.json"),
        (_user_figure, "accuracy.png was not written by dsd2"),
        (_planted_report, "index.html was not written by dsd2"),
        (_linked_figures, "not a folder dsd2 made"),
        (_dangling_link, "symbolic link"),
        (lambda tmp: tmp / ("r" * 300), "File name too long"),
        ("run_dir", "inside the run directory"),
        ("in_run_dir", "inside the run directory"),
    ],
)
def test_report_never_overwrites_what_is_not_its_own(tiny_run, tmp_path, capsys, make, needle):
    if make in ("run_dir", "in_run_dir"):
        run_dir = tmp_path / "run"
        shutil.copytree(tiny_run, run_dir)
        out = run_dir if make == "run_dir" else run_dir / "round_000" / "report"
        target = run_dir
    else:
        out = make(tmp_path)
        target = tmp_path
    before = snapshot(tmp_path)
    assert _report(target if make in ("run_dir", "in_run_dir") else tiny_run, out) == 2
    one_line_error(capsys, needle)
    assert snapshot(tmp_path) == before


def test_report_rewrites_its_own_files_and_keeps_the_users(tiny_run, tmp_path, capsys):
    d = user_folder(tmp_path / "site")
    assert _report(tiny_run, d) == 0
    first = snapshot(d)
    assert "index.html" in first and "figures/accuracy.png" in first and ".dsd2-report.json" in first
    (d / "figures" / "notes.txt").write_text("mine")
    assert _report(tiny_run, d) == 0  # its own earlier report: replaced
    assert (d / "thesis.txt").read_text() == "three years of work"
    assert (d / "figures" / "notes.txt").read_text() == "mine"
    (d / "index.html").write_text("<h1>edited by hand</h1>")  # now the user's
    before = snapshot(tmp_path)
    assert _report(tiny_run, d) == 2
    one_line_error(capsys, "index.html was not written by dsd2")
    assert snapshot(tmp_path) == before


def test_a_report_from_before_the_listing_is_refused_saying_why(tiny_run, tmp_path, capsys):
    """A folder an earlier dsd2 wrote (index.html and figures, no .dsd2-report.json): kept as it
    is, and the refusal says why instead of calling dsd2's own page foreign."""
    d = tmp_path / "report"
    assert _report(tiny_run, d) == 0
    (d / ".dsd2-report.json").unlink()  # what a report before the listing left
    capsys.readouterr()
    before = snapshot(tmp_path)
    assert _report(tiny_run, d) == 2
    one_line_error(capsys, "is listed by no .dsd2-report.json (a report made before dsd2 listed its files")
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- run --out


def _run_cli(out: Path, *args: str) -> int:
    from conftest import TINY

    return main(["run", "tiny_mnist1d", *TINY, "--out", str(out), "-q", *args])


def _linked_run_dir(tmp: Path, run_id: str) -> Path:
    """OUT/<run-id> planted as a link to a folder of the user's."""
    (tmp / "out").mkdir()
    (tmp / "out" / run_id).symlink_to(user_folder(tmp / "victim"))
    return tmp / "out"


def _dangling_run_dir(tmp: Path, run_id: str) -> Path:
    (tmp / "out").mkdir()
    (tmp / "out" / run_id).symlink_to(tmp / "nowhere" / "deep")
    return tmp / "out"


def _linked_round(tmp: Path, run_id: str, tiny_run: Path, name: str = "round_002", dangling: bool = False) -> Path:
    """A copy of a finished run with one of its entries replaced by a link."""
    shutil.copytree(tiny_run, tmp / "out" / run_id)
    entry = tmp / "out" / run_id / name
    target = tmp / "victim" / name.replace("/", "_")
    if not dangling:
        user_folder(tmp / "victim")
        shutil.move(entry, target)
    if entry.is_dir():
        shutil.rmtree(entry)
    elif entry.exists():
        entry.unlink()
    entry.symlink_to(target)
    return tmp / "out"


@pytest.mark.parametrize(
    "case",
    ["run dir link", "run dir dangling", "round link", "round dangling", "table link", "round file link"],
)
def test_run_never_writes_through_a_planted_link(tiny_run, tmp_path, capsys, case):
    run_id = tiny_config().run_id()
    if case == "run dir link":
        out = _linked_run_dir(tmp_path, run_id)
    elif case == "run dir dangling":
        out = _dangling_run_dir(tmp_path, run_id)
    elif case == "round link":
        out = _linked_round(tmp_path, run_id, tiny_run, "round_002")
    elif case == "round dangling":
        out = _linked_round(tmp_path, run_id, tiny_run, "round_002", dangling=True)
    elif case == "table link":
        out = _linked_round(tmp_path, run_id, tiny_run, "rounds.csv")
    else:
        out = _linked_round(tmp_path, run_id, tiny_run, "round_001/metrics.json")
    before = snapshot(tmp_path)
    assert _run_cli(out) == 2
    one_line_error(capsys, "symbolic link")
    assert snapshot(tmp_path) == before


def test_a_link_planted_during_a_run_is_refused_at_the_write(tmp_path):
    """The per-write guard: a round folder that became a link after the lock was taken."""
    run_dir = tmp_path / "run"
    victim = user_folder(tmp_path / "victim")
    before = snapshot(victim)
    with store.run_lock(run_dir):
        (run_dir / "round_000").symlink_to(victim)
        with pytest.raises(UserError, match="round_000 is a symbolic link"):
            store.write_json(run_dir / "round_000" / "metrics.json", {})
        with pytest.raises(UserError, match="symbolic link"):
            store.save_tensors(run_dir / "round_000", {})
    store.write_json(victim / "other.json", {})  # outside a locked run folder: the user's own links are theirs
    (victim / "other.json").unlink()
    assert snapshot(victim) == before


# ----------------------------------------------------------------------------- load_exported


@pytest.fixture(scope="module")
def exported_compressed(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "compressed"
    assert main(["export", str(tiny_run), "-o", str(out), "--round", "2", "--compressed"]) == 0
    return out


def _info(d: Path) -> dict:
    return json.loads((d / "model.json").read_text())


def _set_info(d: Path, info: object) -> None:
    (d / "model.json").write_text(json.dumps(info))


def _edit(**changes):
    """A case that sets top-level keys of model.json (None deletes)."""

    def apply(d: Path) -> None:
        info = _info(d)
        for k, v in changes.items():
            if v is None:
                info.pop(k, None)
            else:
                info[k] = v
        _set_info(d, info)

    return apply


def _edit_model(**changes):
    def apply(d: Path) -> None:
        info = _info(d)
        info["model"] = {**info["model"], **changes}
        _set_info(d, info)

    return apply


def _set_weights(d: Path, raw: bytes) -> None:
    """Replace model.safetensors, its entry in model.json updated to match (a consistent forgery)."""
    (d / "model.safetensors").write_bytes(raw)
    info = _info(d)
    info["files"]["model.safetensors"] = {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    _set_info(d, info)


def _edit_header(fn):
    """A case that rewrites model.safetensors' JSON header with ``fn`` (data section untouched)."""

    def apply(d: Path) -> None:
        raw = (d / "model.safetensors").read_bytes()
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + n])
        fn(header)
        new = json.dumps(header).encode()
        new += b" " * (-len(new) % 8)
        _set_weights(d, len(new).to_bytes(8, "little") + new + raw[8 + n :])

    return apply


def _first_tensor(header: dict) -> str:
    return next(k for k in header if k != "__metadata__")


def _claim_huge(header: dict) -> None:
    header[_first_tensor(header)]["shape"] = [2**30]


def _drop_tensor(d: Path) -> None:
    from safetensors.torch import load_file, save

    tensors = load_file(d / "model.safetensors")
    tensors.pop(sorted(tensors)[-1])
    _set_weights(d, save(tensors, metadata={"dsd2_format": "dense"}))


def _huge_compressed_shape(header: dict) -> None:
    meta = header["__metadata__"]
    shapes = json.loads(meta["dsd2_shapes"])
    shapes[next(iter(shapes))] = [2**30]
    meta["dsd2_shapes"] = json.dumps(shapes)


def _planted_file(name: str, target: str):
    def apply(d: Path) -> None:
        info = _info(d)
        info["files"][name] = {"bytes": 1, "sha256": "0" * 64}
        _set_info(d, info)

    return apply


def _link_weights_out(d: Path) -> None:
    elsewhere = d.parent / "elsewhere.safetensors"
    shutil.move(d / "model.safetensors", elsewhere)
    (d / "model.safetensors").symlink_to(elsewhere)  # same bytes, same hash: still refused


def _link_info_out(d: Path) -> None:
    elsewhere = d.parent / "elsewhere.json"
    shutil.move(d / "model.json", elsewhere)
    (d / "model.json").symlink_to(elsewhere)


def _fifo_info(d: Path) -> None:
    (d / "model.json").unlink()
    os.mkfifo(d / "model.json")


def _grow_layer(d: Path) -> None:
    info = _info(d)
    info["structured"] = {"shapes": {"net.0": [4096, 4096]}}
    _set_info(d, info)


def _evil_plugin(d: Path) -> None:
    (d.parent / "dsd2_evil_plugin_x.py").write_text(f"open({str(d.parent / 'pwned')!r}, 'w').write('ran')\n")
    info = _info(d)
    info["plugins"] = ["dsd2_evil_plugin_x"]
    info["model"]["name"] = "evil_net"
    _set_info(d, info)


LOAD_CASES = [
    ("model not a mapping", _edit(model="mlp"), "model"),
    ("options a list", _edit_model(options=[1, 2]), "model.options"),
    ("name a number", _edit_model(name=7), "model.name"),
    ("unknown model", _edit_model(name="no_such_net"), "no_such_net"),
    ("bad option", _edit_model(options={"hidden": "wide"}), "hidden"),
    ("huge hidden", _edit_model(options={"hidden": [20000, 20000]}), "more than"),
    ("other hidden", _edit_model(options={"hidden": [8, 8]}), "does not fit the model"),
    ("version a string", _edit(format_version="1"), "format_version"),
    ("version a bool", _edit(format_version=True), "format_version"),
    ("version from the future", _edit(format_version=99), "upgrade dsd2"),
    ("no format", _edit(format=None), "not a dsd2 export"),
    ("no files", _edit(files={}), "model.safetensors"),
    ("files a list", _edit(files=["model.safetensors"]), "files"),
    ("files entry a string", _edit(files={"model.safetensors": "abc"}), "files"),
    ("absolute path", _planted_file("/etc/passwd", ""), "not a file an export writes"),
    ("dotdot path", _planted_file("../../secret", ""), "not a file an export writes"),
    ("num_classes a string", _edit(num_classes="10"), "num_classes"),
    ("num_classes zero", _edit(num_classes=0), "num_classes"),
    ("input_shape nested", _edit(input_shape=[[1]]), "input_shape"),
    ("structured shapes a string", _edit(structured={"shapes": "x"}), "structured"),
    ("structured shape nested", _edit(structured={"shapes": {"net.0": [[1]]}}), "structured"),
    ("structured grows a layer", _grow_layer, "does not shrink"),
    ("deep json", lambda d: (d / "model.json").write_text("[" * 100_000 + "]" * 100_000), "not valid JSON"),
    ("json a list", lambda d: _set_info(d, []), "not a dsd2 export"),
    ("fifo model.json", _fifo_info, "not a regular file"),
    ("model.json a link", _link_info_out, "symbolic link"),
    ("weights a link", _link_weights_out, "symbolic link"),
    ("weights missing", lambda d: (d / "model.safetensors").unlink(), "missing"),
    ("weights edited", lambda d: (d / "model.safetensors").write_bytes(b"x" * 100), "checksum"),
    ("header claims 2**30", _edit_header(_claim_huge), "does not fit its bytes"),
    ("header a list", lambda d: _set_weights(d, (2).to_bytes(8, "little") + b"[]"), "not a mapping"),
    ("header length past the end", lambda d: _set_weights(d, (10**9).to_bytes(8, "little") + b"{}"), "header length"),
    ("tensor missing", _drop_tensor, "does not fit the model"),
    ("plugin not allowed", _evil_plugin, "allow_plugins=True"),
]


@pytest.mark.parametrize("case, doctor, needle", LOAD_CASES, ids=[c[0] for c in LOAD_CASES])
def test_load_exported_refuses_a_doctored_export(exported, tmp_path, case, doctor, needle):
    from dsd2.exporting import load_exported

    d = tmp_path / "model"
    shutil.copytree(exported, d)
    doctor(d)
    before = snapshot(tmp_path)
    with pytest.raises(UserError, match=None) as err:
        load_exported(d)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg, msg
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "pwned").exists()


COMPRESSED_CASES = [
    ("dense shape 2**30", _edit_header(_huge_compressed_shape), "do not fit shape"),
    ("no shapes", _edit_header(lambda h: h["__metadata__"].pop("dsd2_shapes")), "dsd2_shapes"),
    ("shapes nested", _edit_header(lambda h: h["__metadata__"].update(dsd2_shapes='{"a": [[1]]}')), "dsd2_shapes"),
]


@pytest.mark.parametrize("case, doctor, needle", COMPRESSED_CASES, ids=[c[0] for c in COMPRESSED_CASES])
def test_load_exported_refuses_a_doctored_compressed_export(exported_compressed, tmp_path, case, doctor, needle):
    from dsd2.exporting import load_exported

    d = tmp_path / "model"
    shutil.copytree(exported_compressed, d)
    doctor(d)
    before = snapshot(tmp_path)
    with pytest.raises(UserError) as err:
        load_exported(d)
    assert needle in str(err.value), str(err.value)
    assert snapshot(tmp_path) == before


def test_load_exported_bounds_and_plugins_can_be_allowed(exported, exported_compressed, tmp_path):
    from dsd2.exporting import load_exported

    assert load_exported(exported_compressed) is not None
    with pytest.raises(UserError, match="max_bytes"):
        load_exported(exported, max_bytes=100)
    assert load_exported(exported, max_bytes=10**6) is not None


_ODD_VALUES = [None, 0, -1, 2**70, 1.5, float("inf"), "x", "", [], {}, [[1]], [-3], True, "../x", "/etc/passwd", {"a": {"b": []}}]


def _mutate_json(node: object, rng) -> object:
    """``node`` with one randomly chosen value replaced by an odd one, or one key deleted."""
    if isinstance(node, dict) and node and rng.random() < 0.8:
        key = rng.choice(sorted(node))
        if rng.random() < 0.15:
            return {k: v for k, v in node.items() if k != key}
        return {**node, key: _mutate_json(node[key], rng)}
    if isinstance(node, list) and node and rng.random() < 0.8:
        i = rng.randrange(len(node))
        return [*node[:i], _mutate_json(node[i], rng), *node[i + 1 :]]
    return rng.choice(_ODD_VALUES)


def test_load_exported_survives_random_corruptions(exported, exported_compressed, tmp_path):
    """Seeded and bounded: random edits of model.json and of the weights' header (with a matching
    checksum, so the checks behind it are reached) give a model or a UserError, nothing else."""
    import random

    from torch import nn

    from dsd2.exporting import load_exported

    rng = random.Random(1234)
    outcomes = {"loaded": 0, "refused": 0}
    for i in range(120):
        d = tmp_path / f"m{i}"
        shutil.copytree(exported if i % 2 else exported_compressed, d)
        if i < 80:
            _set_info(d, _mutate_json(_info(d), rng))
        else:
            raw = bytearray((d / "model.safetensors").read_bytes())
            n = int.from_bytes(raw[:8], "little")
            for _ in range(rng.randint(1, 4)):
                raw[rng.randrange(0, 8 + n)] = rng.randrange(256)
            _set_weights(d, bytes(raw))
        try:
            model = load_exported(d)
        except UserError as err:
            assert "\n" not in str(err), str(err)
            outcomes["refused"] += 1
        else:
            assert isinstance(model, nn.Module)
            outcomes["loaded"] += 1
        shutil.rmtree(d)
    assert outcomes["refused"] > 60, outcomes


def test_run_refuses_names_and_folders_too_long_for_the_file_system(tmp_path, capsys):
    assert _run_cli(tmp_path / "out", "name=" + "n" * 300) == 2
    one_line_error(capsys, "at most 200 characters")
    assert _run_cli(tmp_path / ("o" * 300)) == 2
    one_line_error(capsys, "File name too long")
    assert not list(tmp_path.iterdir())


def test_a_model_that_cannot_be_built_on_meta_still_loads(exported, tmp_path, monkeypatch):
    """A builder needing real tensors at init (``.item()``) is built for real, then checked alike."""
    import torch

    from dsd2 import exporting
    from dsd2.exporting import load  # where load_exported finds _build

    real_build = load._build

    def no_meta(info, path, device=None):
        if device == "meta":
            raise UserError("Tensor.item() cannot be called on meta tensors")
        return real_build(info, path, device)

    monkeypatch.setattr(load, "_build", no_meta)
    model = exporting.load_exported(exported)
    x = torch.randn(2, *exporting.read_info(exported)["input_shape"])
    monkeypatch.undo()
    assert torch.equal(model(x), exporting.load_exported(exported)(x))
    d = tmp_path / "model"
    shutil.copytree(exported, d)
    _edit_model(options={"hidden": [8, 8]})(d)
    monkeypatch.setattr(load, "_build", no_meta)
    with pytest.raises(UserError, match="does not fit the model"):
        exporting.load_exported(d)
