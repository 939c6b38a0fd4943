"""Where a run of a config lives and how far it got: its folder under ``--out`` (an earlier
version's name included), whether every round is finished or a stop rule ended it."""

from __future__ import annotations

from pathlib import Path

from dsd2 import store
from dsd2.config import RunConfig, default_gradual_window
from dsd2.errors import UserError
from dsd2.file_schemas import EarlyStop, FloorStop
from dsd2.rundir.layout import CONFIG, EARLY_STOP, FLOOR_STOP
from dsd2.rundir.read import read_config
from dsd2.store import MANIFEST, finished_rounds, round_dir


def run_dir_for(cfg: RunConfig, out: str | Path) -> Path:
    """Where ``dsd2 run`` puts the run of ``cfg``: named by the config's hash, so the same command
    resumes the same directory (and a config asking more rounds extends it). A directory named
    by an earlier version's hash (``RunConfig.legacy_run_ids``) is still found and resumed."""
    path = Path(out) / cfg.run_id()
    try:
        if path.exists():
            return path
    except OSError as err:  # a folder name longer than the file system allows
        raise UserError(f"--out {str(out)[:200]}: {err.strerror or err}; give a shorter --out") from None
    legacy = [Path(out) / rid for rid in cfg.legacy_run_ids()]
    return next((p for p in legacy if p.is_dir()), None) or _older_run_to_extend(cfg, Path(out)) or path


def _older_run_to_extend(cfg: RunConfig, out: Path) -> Path | None:
    """A run of an earlier version with the same config but another prune.rounds: its id
    counted the rounds, so only its saved config can tell (read for this name's folders only)."""
    if not out.is_dir() or default_gradual_window(cfg):
        return None  # an earlier version's gradual run with this config pruned until the last epoch: other numbers
    for candidate in sorted(out.glob(f"{cfg.name}-*")):
        if not (candidate / CONFIG).is_file():
            continue
        try:
            saved = read_config(candidate)
        except UserError:
            continue
        if saved.run_id() == cfg.run_id() and saved.name == cfg.name:
            return candidate
    return None


def finished_note(cfg: RunConfig, run_dir: str | Path) -> str | None:
    """ "finished on <date>, N rounds; showing it" when ``run_dir`` already holds every round ``cfg``
    asks for (the date of its last round's manifest), else None: reusing a run is never silent."""
    path = Path(run_dir)
    done = finished_rounds(path) if path.is_dir() and (path / CONFIG).is_file() else []
    if not done or not is_complete(cfg, len(done), path):
        return None
    from datetime import UTC, datetime

    when = datetime.fromtimestamp((round_dir(path, done[-1]) / MANIFEST).stat().st_mtime, UTC)
    rounds = f"{done[-1]} round" + ("" if done[-1] == 1 else "s")
    return f"finished on {when:%Y-%m-%d %H:%M} UTC, {rounds}; showing it"


def stopped_at(run_dir: str | Path) -> int | None:
    """The round at which the run's online early-stop rule ended it (None: it did not)."""
    path = Path(run_dir) / EARLY_STOP
    if not path.is_file():
        return None
    return store.read_json(path, EarlyStop).stop_round


def floor_stopped_at(run_dir: str | Path) -> int | None:
    """The last round of a run whose next round the channel floor (prune.min_channels) left
    nothing to prune (None: it did not happen). Its curve ends there: no later round can exist."""
    path = Path(run_dir) / FLOOR_STOP
    if not path.is_file():
        return None
    return store.read_json(path, FloorStop).stop_round


def is_complete(cfg: RunConfig, done: int, run_dir: str | Path) -> bool:
    """Every configured round is finished (``done`` of them), or the early-stop rule or the
    channel floor ended the run."""
    if done >= cfg.prune.rounds + 1:
        return True
    if cfg.early_stop.rule != "none" and done > 0 and stopped_at(run_dir) is not None:
        return True
    floor = floor_stopped_at(run_dir) if done > 0 else None
    return floor is not None and done > floor


def classifier_default_note(cfg: RunConfig, run_dir: Path, out: str | Path) -> str | None:
    """A new channel-pruning run (in ``run_dir``, :func:`run_dir_for`) that leaves the classifier
    out, where ``out`` holds the run of the same config with the classifier pruned (made before
    structured allocations left it out by default, dsd2.layer_defaults): say it is a new run and
    where the earlier one is, else None."""
    from dsd2.layer_defaults import structured_allocation

    p = cfg.prune
    if p.include_classifier or not structured_allocation(p.method, p.criterion, p.allocation):
        return None
    if (run_dir / CONFIG).is_file():
        return None  # this run exists: it is resumed or shown, not new
    earlier = run_dir_for(cfg.model_copy(update={"prune": p.model_copy(update={"include_classifier": True})}), out)
    if not (earlier / CONFIG).is_file():
        return None
    return (
        f"a new run: structured allocations now leave the classifier out (its rows are the classes); {earlier} "
        "holds this config's run that pruned it (`dsd2 run` with prune.include_classifier=true shows it)"
    )
