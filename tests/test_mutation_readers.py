"""Seeded, bounded mutation test of every reader of a run folder (issue 23).

The valid files of a tiny finished run (and of a tiny DSD² student) are corrupted at random:
truncated, bytes flipped, nested thousands deep, values replaced by other types, rows
duplicated, or the file replaced by a FIFO, a folder, an empty file or nothing. Every reader
of that file then runs on the copy and must give a result or a :class:`UserError` (the CLI's
exit 2 with one line), never another exception, a traceback or a hang (an alarm bounds each).

"Re-signed" mutations also rewrite the checksums that cover the file (tables.sha256.json for the
tables, the round's MANIFEST.json for metrics.json), so that the parsing behind the checksum is
exercised too, not only the checksum refusal.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from dsd2 import rundir, store
from dsd2.cli import main
from dsd2.errors import UserError

from conftest import TINY

CASES_PER_FILE = 10
SECONDS_PER_READER = 30


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mut_teacher")
    assert main(["run", "tiny_mnist1d", *TINY, "--out", str(out), "-q"]) == 0
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    # files a finished run may have, so that their readers are exercised too
    store.write_json(run_dir / "lr_scale.json", {"history": [{"from_round": 1, "scale": 0.5}]})
    store.write_json(run_dir / "early_stop.json", {"rule": "plain", "stop_round": None})
    return run_dir


@pytest.fixture(scope="module")
def student(teacher, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mut_student")
    assert main(["run", "tiny_mnist1d", *TINY, f"distill.teacher={teacher}", "name=stu", "--out", str(out), "-q"]) == 0
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return run_dir


# ----------------------------------------------------------------------------- the readers


def cli(*args: str) -> Callable[[Path, Path], Any]:
    def call(run: Path, tmp: Path) -> Any:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
            code = main([a.format(run=run, tmp=tmp) for a in args])
        assert code in (0, 2), (args, code, err.getvalue()[-2000:])
        assert "Traceback" not in err.getvalue(), err.getvalue()[-2000:]
        return code

    return call


def report_data(run: Path, tmp: Path) -> Any:
    from dsd2.report.data import load_runs

    return load_runs([run])


def resume_checks(run: Path, tmp: Path) -> Any:
    """What `dsd2 resume` reads before it trains: config, its digest in meta.json, the finished
    rounds' metrics, the lr history, the early stop, the noise record, the teacher record."""
    from dsd2.distill.setup import _recorded_teachers
    from dsd2.imp.setup import check_config_matches, lr_scale_for

    cfg = check_config_matches(run, rundir.read_config(run))
    done = rundir.read_finished(run)
    lr_scale_for(run, len(done.rows))
    rundir.is_complete(cfg, len(done.rows), run)
    rundir.read_noise(run)
    if cfg.distill.enabled:
        _recorded_teachers(run, several=cfg.distill.teacher is None, count=len(cfg.distill.teachers))
    return done


def export_checks(run: Path, tmp: Path) -> Any:
    """What `dsd2 export` reads: the run's config, meta.json's data shape, the finished rounds."""
    cfg = rundir.read_config(run)
    rundir.saved_data_shape(run)
    return rundir.read_finished(run), cfg


SHOW = cli("show", "{run}")
STOP = cli("stop", "{run}")
COMPARE = cli("compare", "{run}")

# file -> its readers
READERS: dict[str, list[Callable[[Path, Path], Any]]] = {
    "meta.json": [resume_checks, export_checks, report_data],
    "config.yaml": [resume_checks, export_checks, report_data, STOP],
    "rounds.csv": [SHOW, STOP, COMPARE, report_data],
    "entropy.csv": [report_data],
    "noise.json": [SHOW, report_data, resume_checks],
    "tables.sha256.json": [SHOW, STOP, report_data],
    "round_001/MANIFEST.json": [resume_checks, export_checks],
    "round_001/metrics.json": [resume_checks, export_checks],
    "lr_scale.json": [resume_checks],
    "early_stop.json": [report_data],
    "timings.csv": [report_data],
    "teacher.json": [resume_checks, report_data],
}


# ----------------------------------------------------------------------------- the mutations


def _leaves(node: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(node, dict):
        for k, v in node.items():
            out.extend(_leaves(v, (*path, k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.extend(_leaves(v, (*path, i)))
    return out


def _replace(node: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    node[path[0]] = _replace(node[path[0]], path[1:], value)
    return node


def _deep(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


ODD_VALUES = [None, "x", -1, 10**30, 1e308, float("nan"), True, [], {}, "../../etc/passwd", "0" * 64]


def retyped(text: str, rnd: random.Random, kind: str) -> str:
    """Parse, replace one random node by a value of another type, write back the same way."""
    data = json.loads(text) if kind == "json" else yaml.safe_load(text)
    path = rnd.choice(_leaves(data))
    value = rnd.choice([*ODD_VALUES, "deep"])
    data = _replace(data, path, _deep(200) if value == "deep" else value)
    if kind == "json":
        return json.dumps(data)
    try:
        return yaml.safe_dump(data)
    except RecursionError:  # the dumper recurses: a deep value is written by hand
        return "a: " + "[" * 200 + "]" * 200 + "\n"


def csv_mutated(text: str, rnd: random.Random) -> str:
    lines = text.splitlines()
    how = rnd.choice(["cell", "duplicate", "drop_column", "swap"])
    if how == "cell" and len(lines) > 1:
        i = rnd.randrange(1, len(lines))
        cells = lines[i].split(",")
        cells[rnd.randrange(len(cells))] = rnd.choice(["nan", "-1", "x", "", "1e400", "inf", "0.5.5", '"'])
        lines[i] = ",".join(cells)
    elif how == "duplicate" and len(lines) > 1:
        lines.insert(1, lines[rnd.randrange(1, len(lines))])
    elif how == "drop_column":
        k = rnd.randrange(len(lines[0].split(",")))
        lines = [",".join(c for j, c in enumerate(line.split(",")) if j != k) for line in lines]
    elif len(lines) > 2:
        lines[1], lines[2] = lines[2], lines[1]
    return "\n".join(lines) + "\n"


def mutate(path: Path, rnd: random.Random) -> str:
    """Damage ``path`` one random way; returns the name of the way (for the failure message)."""
    kind = "csv" if path.suffix == ".csv" else "yaml" if path.suffix == ".yaml" else "json"
    how = rnd.choice(["truncate", "flip", "nest", "retype", "retype", "fifo", "dir", "empty", "delete", "garbage"])
    raw = path.read_bytes()
    if how == "truncate":
        path.write_bytes(raw[: rnd.randrange(len(raw))])
    elif how == "flip":
        data = bytearray(raw)
        for _ in range(rnd.randint(1, 4)):
            data[rnd.randrange(len(data))] ^= 1 << rnd.randrange(8)
        path.write_bytes(bytes(data))
    elif how == "nest":
        depth = rnd.choice([100, 5000, 100000])
        path.write_text(("a: " if kind == "yaml" else "") + "[" * depth + "]" * depth)
    elif how == "retype":
        path.write_text(csv_mutated(raw.decode(), rnd) if kind == "csv" else retyped(raw.decode(), rnd, kind))
    elif how == "fifo":
        path.unlink()
        os.mkfifo(path)
    elif how == "dir":
        path.unlink()
        path.mkdir()
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "delete":
        path.unlink()
    else:
        path.write_bytes(bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 300))))
    return how


def resign(run: Path, name: str) -> None:
    """Rewrite the checksums that cover ``name`` (when it is still a file)."""
    path = run / name
    if not (path.is_file() and not path.is_symlink()):
        return
    if name.endswith(".csv"):
        rundir.record_tables(run)
    elif name.endswith("metrics.json"):
        store.write_manifest(path.parent, list(rundir.ROUND_FILES))


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang()


def run_reader(reader: Callable[[Path, Path], Any], run: Path, tmp: Path, what: str) -> None:
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(SECONDS_PER_READER)
    try:
        reader(run, tmp)
    except UserError as err:
        assert "\n" not in str(err).strip() or str(err).startswith("invalid configuration"), (what, str(err))
    except _Hang:
        pytest.fail(f"{what}: the reader did not return within {SECONDS_PER_READER} s")
    except Exception as err:  # anything else is the bug this test looks for
        pytest.fail(f"{what}: {type(err).__name__}: {err}"[:2000])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("name", list(READERS))
def test_random_corruptions_give_a_result_or_one_clean_error(name, teacher, student, tmp_path):
    source = student if name == "teacher.json" else teacher
    rnd = random.Random(f"dsd2-mutation-{name}")  # seeded: a failure reproduces
    for case in range(CASES_PER_FILE):
        run = tmp_path / f"case{case}"
        shutil.copytree(source, run, symlinks=True)
        how = mutate(run / name, rnd)
        signed = rnd.random() < 0.5
        if signed:
            resign(run, name)
        for reader in READERS[name]:
            label = getattr(reader, "__name__", "cli")
            run_reader(reader, run, tmp_path, f"{name} case {case} ({how}{', re-signed' if signed else ''}) read by {label}")
        shutil.rmtree(run)
