"""A config's identity: which settings the run id hashes (:func:`identity_settings`), the
hash itself (:func:`config_hash`), the ids of earlier schemes, and the execution settings a run
may change between rounds (docs/run_directory.md, "Run id")."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from dsd2 import safe_read
from dsd2.config.choices import options_of
from dsd2.config.load import validate_config
from dsd2.config.schema import SELF_TEACHER, DistillConfig, PruneConfig, RunConfig
from dsd2.errors import UserError
from dsd2.registry import (
    NOISE_MODELS,
    OPTIMIZERS,
    PRUNING_ALLOCATIONS,
    PRUNING_CRITERIA,
    PRUNING_SCHEDULES,
    RETRAIN_MODES,
    SCHEDULES,
    STOP_RULES,
    Registry,
)

# Fields that do not change the numbers a run produces; they stay out of the hash so that
# moving a run to another device, thread count or data folder resumes the same directory.
# prune.rounds stays out too (as OpenLTH's levels): a run with more rounds extends the same
# curve, whose first rounds do not depend on how many follow.
_ROUNDS_FIELD = ("prune", "rounds")
_LOCATION_FIELDS = {("dataset", "root"), ("dataset", "download")}
_NON_RESULT_FIELDS = _LOCATION_FIELDS | {
    ("noise", "matrix_file"),  # a record: the matrix's values are hashed
    ("noise", "matrix_sha256"),
    ("train", "device"),
    ("train", "compile"),
    ("train", "threads"),
    ("dataset", "workers"),
    ("train", "eval_batch_size"),
    ("train", "checkpoint_interval_s"),
    ("train", "tensorboard"),
    ("entropy", "batch_size"),
}

# dataset.label_file (human noisy labels) is data, like dataset.root: its content is in meta.json's
# data fingerprint (dsd2.data.fingerprint, checked at every start), its path a location. Scheme 6
# counts only that a run has one; schemes up to 5 hashed the path as spelled (legacy_run_ids).
_LABEL_FILE = ("dataset", "label_file")
LABEL_FILE_MARK = "a file: its content is meta.json's data.fingerprint"

# Where and how a run executes (the fields above less the noise matrix's records, and the label
# file's path): given for an existing run, they apply to its next rounds and meta.json records the
# change (dsd2.imp.setup.record_execution); they cannot change the numbers, so the run id leaves them out.
EXECUTION_FIELDS: tuple[tuple[str, str], ...] = tuple(
    sorted(_NON_RESULT_FIELDS - {("noise", "matrix_file"), ("noise", "matrix_sha256")} | {_LABEL_FILE})
)


def execution_changes(old: RunConfig, new: RunConfig) -> dict[str, tuple[Any, Any]]:
    """``section.key -> (old, new)`` for the execution settings that differ."""
    out = {}
    for section, key in EXECUTION_FIELDS:
        a, b = getattr(getattr(old, section), key), getattr(getattr(new, section), key)
        if a != b:
            out[f"{section}.{key}"] = (a, b)
    return out


def with_execution(cfg: RunConfig, source: RunConfig) -> RunConfig:
    """``cfg`` with the location and execution settings of ``source`` (everything else as it is)."""
    if not execution_changes(cfg, source):
        return cfg
    data = cfg.resolved()
    for section, key in EXECUTION_FIELDS:
        data[section][key] = source.resolved()[section][key]
    return validate_config(data, source="config")


# Gradual pruning with prune.gradual_end unset leaves the last quarter of the epochs to train after
# the last pruning step (dsd2.imp.modes.gradual_window); before, it pruned until the last epoch.
# Such runs hash this marker, and no earlier id finds them: an old folder holds other masks.
GRADUAL_WINDOW = "last-quarter-trains"


def default_gradual_window(cfg: RunConfig) -> bool:
    """A gradual run whose window ends where the default puts it (prune.gradual_end unset)."""
    return cfg.prune.schedule == "gradual" and options_of(cfg, PRUNING_SCHEDULES).end is None


def unused_options(cfg: RunConfig) -> list[tuple[str, str]]:
    """The (section, key) options of ``cfg`` that its choices never read: options of an unselected
    choice (a noise matrix under another noise kind, gradual-schedule settings under another
    schedule, ...) and every distillation setting of a run without a teacher. They cannot change
    the run's numbers, so the run id counts them as their defaults (docs/run_directory.md, "Run
    id"): a plain run and a pipeline's teacher of the same settings share one directory."""
    d, n, t, p, es = cfg.dataset, cfg.noise, cfg.train, cfg.prune, cfg.early_stop
    out: list[tuple[str, str]] = []
    if d.label_file is None:
        out.append(("dataset", "label_key"))
    if d.loader != "auto":
        out.append(("dataset", "memory_budget_gb"))  # it only chooses the data path of loader=auto
    # every choice reads the options its registry entry declares (dsd2.registry, "reads")
    out += _not_read(NOISE_MODELS, n.kind)
    out += _not_read(OPTIMIZERS, t.optimizer)
    out += _not_read(SCHEDULES, t.schedule)
    out += _not_read(PRUNING_CRITERIA, _scoring_part(p, "criterion"))
    out += _not_read(PRUNING_ALLOCATIONS, _scoring_part(p, "allocation"))
    out += _not_read(RETRAIN_MODES, p.retrain)
    out += _not_read(PRUNING_SCHEDULES, p.schedule)
    if p.targets:
        out.append(("prune", "rate"))  # one_shot / gradual: the targets are the sparsities
    if not cfg.distill.enabled:
        out += [("distill", k) for k in DistillConfig.model_fields]
    elif cfg.distill.teachers:
        out.append(("distill", "round"))  # each listed teacher names its own round
    out += _not_read(STOP_RULES, es.rule)
    return out


_METHOD_AS_REGISTERED = ""  # no criterion or allocation of its own: the method reads none of their options


def _not_read(registry: Registry[Any], name: str | None) -> list[tuple[str, str]]:
    """The options ``registry``'s choices own that the choice ``name`` does not read (None: the
    choice is unknown, e.g. a plugin method's own criterion, and may read them all)."""
    if name is None:
        return []
    reads = registry.reads(name) if name != _METHOD_AS_REGISTERED else frozenset()
    return [(key.split(".")[0], key.split(".")[1]) for key in registry.owns if key not in reads]


def _scoring_part(p: PruneConfig, part: Literal["criterion", "allocation"]) -> str | None:
    """The run's criterion or allocation (:meth:`PruneConfig.scoring_part`; None: a plugin method's
    own, unknown); a method called as registered (neither given) reads neither's options."""
    if p.criterion is None and p.allocation is None:
        return _METHOD_AS_REGISTERED
    return p.scoring_part(part)


def _non_default(data: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        base = defaults.get(key, _MISSING)
        if isinstance(value, dict) and isinstance(base, dict):
            sub = _non_default(value, base)
            if sub:
                out[key] = sub
        elif value != base:
            out[key] = value
    return out


_MISSING = object()


ID_VERSION = 6  # the scheme of RunConfig.run_id (6 differs from 5 only for runs with a dataset.label_file)


def config_hash(cfg: RunConfig, *, version: int = ID_VERSION, teachers: Mapping[str, Any] | None = None) -> str:
    """Short hash of what the config changes from the defaults (as OpenLTH does).

    Hashing only the non-default values keeps run ids stable when a later version adds a field
    with a default: an old run directory still resumes. ``version``: 4 counts the options of
    unselected choices as their defaults (:func:`unused_options`), 5 also counts a teacher as its
    folder's name and recorded digest, not its path, and 6 (the run id) a dataset.label_file as
    set, not its path (its content is in the data fingerprint); 3 (the third
    scheme's run id) leaves out prune.rounds; 2 (the second scheme's run id, and
    :meth:`RunConfig.digest`) counts it; 1 (the first scheme) also counts the data folder.
    """
    blob = json.dumps(identity_settings(cfg, version=version, teachers=teachers), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def identity_settings(cfg: RunConfig, *, version: int = ID_VERSION, teachers: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The nested settings :func:`config_hash` hashes: those away from their defaults that can
    change the run's numbers (by ``version``'s rules). ``teachers``: the identity to count for a
    teacher path instead of reading it (:func:`teacher_identity`), e.g. one it had earlier."""
    known = teachers or {}
    data = cfg.resolved()
    defaults = RunConfig().resolved()
    data.pop("name")
    data.pop("plugins")  # where names come from is not a setting: the names themselves are hashed
    skip = set(_NON_RESULT_FIELDS) | ({_ROUNDS_FIELD} if version >= 3 else set())
    if version <= 1:
        skip -= _LOCATION_FIELDS
    for section, key in skip:
        data[section].pop(key, None)
    if version >= 4:
        for section, key in unused_options(cfg):
            data[section][key] = defaults[section][key]
        if cfg.dataset.split_seed == cfg.seed:  # the data seed either way (dsd2.imp.setup.data_seed)
            data["dataset"]["split_seed"] = None
        if default_gradual_window(cfg):
            data["prune"]["gradual_window"] = GRADUAL_WINDOW  # the default window changed: other masks
    if version >= 6 and data["dataset"].get("label_file") is not None:  # data: by content, not by path
        data["dataset"]["label_file"] = LABEL_FILE_MARK
    if version >= 5:  # a teacher is the run it names, not how its path is spelled
        distill = data["distill"]
        if distill.get("teacher") not in (None, SELF_TEACHER):
            distill["teacher"] = known.get(distill["teacher"]) or teacher_identity(distill["teacher"])
        for spec in distill.get("teachers") or []:
            spec["run"] = known.get(spec["run"]) or teacher_identity(spec["run"])
    return _non_default(data, defaults)


def teacher_identity(path: str) -> Any:
    """A teacher run as a student's id counts it: its folder's name (<name>-<hash>) and the digest
    its meta.json records (every setting of its curve, rounds included). The same teacher given as
    another path (relative or absolute, a moved study) is the same teacher; a teacher extended
    since is another. A path that holds no readable run stays the path (a teacher not trained yet).

    Read once per version of the teacher's meta.json (every run_id() call asks): the answer is
    kept under the file's (path, device, inode, size, mtime_ns, ctime_ns), which any rewrite
    changes (dsd2 writes it by atomic rename: a new inode; an edit in place changes the inode change
    time, which no tool sets back), so a changed teacher is never answered from before."""
    folder = Path(os.path.abspath(os.path.expanduser(str(path))))
    try:
        st = os.stat(folder / _META)
    except OSError:  # nothing there (or unreadable): no run yet, the path is all there is
        return path
    key = (str(folder), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _IDENTITIES:
        if len(_IDENTITIES) >= _IDENTITIES_KEPT:
            _IDENTITIES.pop(next(iter(_IDENTITIES)))  # the oldest: a sweep names many teachers, a run one
        _IDENTITIES[key] = _read_identity(folder)
    found = _IDENTITIES[key]
    return path if found is None else dict(found)


_META = "meta.json"  # dsd2.rundir.META: config sits below rundir (tests/test_layers.py)
_IDENTITIES: dict[tuple[Any, ...], dict[str, str] | None] = {}
_IDENTITIES_KEPT = 256


def _read_identity(folder: Path) -> dict[str, str] | None:
    """{run, digest} of the run in ``folder`` from its meta.json (None: no readable run there)."""
    try:
        meta = safe_read.read_json(folder / _META)
    except UserError:  # missing, unreadable or hostile (safe_read says which): then the path is all there is
        return None
    digest = meta.get("config_digest") if isinstance(meta, dict) else None
    return {"run": folder.name, "digest": digest} if isinstance(digest, str) else None


def teacher_paths(cfg: RunConfig) -> list[tuple[str, str]]:
    """(key, path) of every teacher run ``cfg`` names: ``distill.teacher``, or each
    ``distill.teachers[i].run`` (self-distillation names none)."""
    d = cfg.distill
    if d.teacher is not None:
        return [] if d.teacher == SELF_TEACHER else [("distill.teacher", d.teacher)]
    return [(f"distill.teachers[{i}].run", t.run) for i, t in enumerate(d.teachers)]


def moved_teachers(old: RunConfig, new: RunConfig) -> dict[str, tuple[str, str]]:
    """``key -> (old path, new path)`` for the teachers ``new`` names at another path than ``old``
    (the same count and form of teachers; anything else is another run, not a move)."""
    a, b = teacher_paths(old), teacher_paths(new)
    if [k for k, _ in a] != [k for k, _ in b]:
        return {}
    return {k: (x, y) for (k, x), (_, y) in zip(a, b, strict=True) if x != y}


def with_teachers_of(cfg: RunConfig, source: RunConfig) -> RunConfig:
    """``cfg`` naming its teachers at ``source``'s paths (everything else as it is)."""
    moves = moved_teachers(cfg, source)
    if not moves:
        return cfg
    d = cfg.distill
    if d.teacher is not None:
        distill = d.model_copy(update={"teacher": source.distill.teacher})
    else:
        runs = [t.model_copy(update={"run": s.run}) for t, s in zip(d.teachers, source.distill.teachers, strict=True)]
        distill = d.model_copy(update={"teachers": runs})
    return cfg.model_copy(update={"distill": distill})


def legacy_run_ids(cfg: RunConfig) -> list[str]:
    """:meth:`RunConfig.legacy_run_ids`: the ids of the schemes before :data:`ID_VERSION`."""
    # schemes before the fourth pruned a default-window gradual run until the last epoch: other numbers
    versions = (5, 4) if default_gradual_window(cfg) else (5, 4, 3, 2, 1)
    ids = [f"{cfg.name}-{config_hash(cfg, version=v)}" for v in versions]
    return [rid for rid in dict.fromkeys(ids) if rid != cfg.run_id()]


def differing_settings(a: RunConfig, b: RunConfig) -> list[str]:
    """The dotted keys whose values differ between the run ids of ``a`` and ``b`` (the name aside)."""
    flat_a, flat_b = _flatten(identity_settings(a)), _flatten(identity_settings(b))
    return sorted(k for k in flat_a.keys() | flat_b.keys() if flat_a.get(k, _MISSING) != flat_b.get(k, _MISSING))


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "class_map":
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
