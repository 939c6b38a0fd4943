"""Commands that train or read one run: run, resume, show, pipeline, demo."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

import typer

from dsd2.cli import render
from dsd2.cli.options import load_plugins, out_option, plugin_option, quiet_option
from dsd2.cli.render import RoundProgress, dip_rich_table, rounds_table, strategy_rich_table
from dsd2.errors import UserError


def _run_config(cfg, out: Path, run_dir: Path | None, quiet: bool) -> Path:
    from dsd2 import api, rundir

    with RoundProgress(enabled=not quiet, last_round=cfg.prune.rounds) as prog:
        target = run_dir or rundir.run_dir_for(cfg, out)
        finished = rundir.finished_note(cfg, target)
        moved = rundir.moved_note(cfg, target)  # said once the start has checked it
        render.RESUME["how"] = render.RESUME["how"] or f"`dsd2 resume {shlex.quote(str(target))}`"
        if not quiet:
            render.err_console.print(f"run directory: {target}")
        if run_dir is None and (new_default := rundir.classifier_default_note(cfg, target, out)):
            render.err_console.print(new_default, soft_wrap=True)
        res = api.run(cfg, out=out, run_dir=run_dir, on_round=prog.round_done, progress=prog.epoch)
    path = res.run_dir
    if moved:
        render.console.print(moved)
    if finished:
        render.console.print(finished)
    elif (floor := rundir.floor_stopped_at(path)) is not None:
        render.console.print(
            f"stopped after round {floor}: the next round would remove no channel (the floor prune.min_channels="
            f"{cfg.prune.min_channels}, or prune.rate={cfg.prune.rate} rounding to none); the run is complete at round {floor} "
            "(floor_stop.json says why)"
        )
    render.console.print(
        rounds_table(
            res.rows,
            title=f"{cfg.name}: {cfg.model.name} on {cfg.dataset.name}, "
            + (
                "no label noise"  # noise.rate is not read: "none noise 0.2" said a rate it did not use
                if cfg.noise.kind == "none"
                else f"{cfg.noise.kind} noise"
                + ("" if cfg.noise.kind == "transition" else f" {cfg.noise.rate:g}")  # the matrix sets its rate
            ),
        )
    )
    render.console.print(f"run directory: {path}")
    return path


def run(
    config: str = typer.Argument(..., help="YAML config, preset name, or an existing run directory (resumes it)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides, e.g. prune.rounds=10 seed=1"),
    out: Path = out_option(),
    quiet: bool = quiet_option(),
    plugins: Optional[list[str]] = plugin_option(recorded=True),
    seeds: Optional[str] = typer.Option(
        None, "--seeds", help="One run per seed (e.g. 0,1,2), each with its own run directory; fused on a GPU (docs/fused.md)."
    ),
    fuse: Optional[bool] = typer.Option(
        None,
        "--fuse/--no-fuse",
        help="With --seeds: train the runs as one fused group, or one after another (default: fused on a GPU, one after another on a CPU, where fusing measured slower).",
    ),
) -> None:
    """Run (or resume) an IMP study: dense training, then prune/retrain rounds."""
    from dsd2 import rundir
    from dsd2.config import PRESET_DIR, load_config

    if seeds is not None:  # several runs of one config (dsd2.cli.fused)
        from dsd2.cli.fused import run_seeds

        run_seeds(config, overrides or [], seeds, out, fuse=fuse, quiet=quiet, plugins=plugins or [])
        return
    p = Path(config)
    if p.is_dir() and not rundir.config_path(p).is_file() and (PRESET_DIR / f"{config}.yaml").is_file():
        render.err_console.print(f"{p}/ is a folder, not a run directory: using the preset {config!r}")
    elif p.is_dir():
        if overrides:  # where and how it runs, or more rounds; anything else is refused naming it
            load_plugins(plugins)
            _run_config(rundir.with_overrides(p, overrides), p.parent, p, quiet)
            return None
        return resume(p, None, quiet=quiet, lr_scale=None, restart_round=False, plugins=plugins)
    cfg = load_config(config, overrides or [], plugins=plugins or [])
    _run_config(cfg, out, None, quiet)


def resume(
    run_dir: Path = typer.Argument(..., help="Run directory printed by `dsd2 run`."),
    overrides: Optional[list[str]] = typer.Argument(
        None,
        help="Where and how it goes on (train.threads=2, dataset.root=DIR) or more rounds; a setting that changes its numbers is refused.",
    ),
    quiet: bool = quiet_option(),
    lr_scale: Optional[float] = typer.Option(
        None,
        "--lr-scale",
        help="Retry after a divergence with this factor on the lr, from the next unfinished round on (recorded in lr_scale.json).",
    ),
    restart_round: bool = typer.Option(
        False, "--restart-round", help="Drop the unfinished round's epoch checkpoint: it retrains from the last finished round."
    ),
    plugins: Optional[list[str]] = plugin_option(),
) -> None:
    """Resume an interrupted run from its last finished round (or epoch checkpoint)."""
    from dsd2 import imp, rundir, store

    render.RESUME["how"] = f"`dsd2 resume {shlex.quote(str(run_dir))}`"
    load_plugins(plugins)
    cfg = rundir.with_overrides(run_dir, overrides) if overrides else rundir.read_config(run_dir)
    if lr_scale is not None:
        with store.run_lock(run_dir):
            first = imp.set_lr_scale(run_dir, lr_scale)
        render.err_console.print(f"rounds {first}+ train with lr × {lr_scale:g}")
    if restart_round:
        with store.run_lock(run_dir):
            first = imp.restart_round(run_dir)
        render.err_console.print(f"round {first} restarts from round {first - 1}'s weights" if first else "round 0 restarts from scratch")
    _run_config(cfg, run_dir.parent, run_dir, quiet)


def show(run_dir: Path = typer.Argument(..., help="Run directory."), plugins: Optional[list[str]] = plugin_option()) -> None:
    """Print the rounds table of a run."""
    from dsd2 import rundir

    load_plugins(plugins)
    if (run_dir / "sweep.json").is_file() and not (run_dir / rundir.CONFIG).is_file():
        raise UserError(f"{run_dir} is a sweep's folder, not a run: `dsd2 report {run_dir}` summarises it; its runs lie beside it")
    render.console.print(rounds_table(rundir.read_rounds(run_dir), title=str(run_dir)))
    noise = rundir.read_noise(run_dir)
    if noise is not None and isinstance(noise.get("realized_rate"), (int, float)):
        render.console.print(
            f"label noise: {noise.get('kind')}, realised rate {100 * noise['realized_rate']:.2f}% "
            f"({noise.get('num_flipped')} of {noise.get('n')} train labels changed; noise.json)"
        )
    probe = noise.get("probe") if noise is not None else None
    if isinstance(probe, dict):
        render.console.print(
            f"memorisation probe: {probe.get('num_probe')} more train labels flipped by dsd2 (noise.probe={probe.get('fraction')}); "
            "'probe memorised' is their fit to the flipped labels"
        )


def _pipeline(cfg, student_cfg, out: Path, quiet: bool):
    from dsd2 import api

    def run_stage(c, o):
        return _run_config(c, o, None, quiet)

    return api.pipeline(cfg, student=student_cfg, out=out, run_stage=run_stage)


def pipeline_cmd(
    config: str = typer.Argument(..., help="Teacher/vanilla config (YAML or preset); its distill section sets round, alpha, T."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides for both runs."),
    student: Optional[str] = typer.Option(None, "--student", help="Student config (default: the same config, KD from the teacher)."),
    out: Path = out_option(),
    quiet: bool = quiet_option(),
    plugins: Optional[list[str]] = plugin_option(recorded=True),
) -> None:
    """Teacher IMP -> teacher at best fit (or dense / a round) -> student IMP with KD at every round."""
    from dsd2 import compare, rundir, store
    from dsd2.config import load_config

    cfg = load_config(config, overrides or [], plugins=plugins or [])
    scfg = load_config(student, overrides or [], plugins=plugins or []) if student else None
    render.RESUME["how"] = "the same `dsd2 pipeline` command (finished stages and rounds are kept)"
    study = _pipeline(cfg, scfg, out, quiet)
    from dsd2.file_schemas import TeacherInfo

    t = store.read_json_dict(rundir.teacher_path(study.student.run_dir), TeacherInfo)
    render.console.print(
        f"teacher: {t['run_dir']} round {t['round']} ({t['choice']}, sparsity {100 * t['sparsity']:.2f}%, selected on {t['selected_on']})"
    )
    vanilla, student_dir = study.vanilla.run_dir, study.student.run_dir
    if vanilla != study.teacher.run_dir:
        render.console.print(f"the student's architecture differs from the teacher's: vanilla baseline {vanilla}")
    render.console.print(strategy_rich_table(compare.strategy_table(vanilla, student_dir)))
    rule = compare.COMPRESS_RULE
    render.console.print(strategy_rich_table(compare.strategy_table(vanilla, student_dir, **rule), compare.rule_text(rule)))


def demo(
    out: Path = out_option("Folder for the run directories and demo_report/."),
    seeds: str = typer.Option("0,1", help="Comma-separated seeds; one vanilla + DSD² pipeline per seed."),
    jobs: int = typer.Option(2, help="Pipelines run side by side (processes)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Overrides for the demo preset, e.g. prune.rounds=10."),
    plugins: Optional[list[str]] = plugin_option(recorded=True),
    fuse: bool = typer.Option(
        False, "--fuse", help="Train the seeds' vanilla runs as one fused group, then their students (docs/fused.md)."
    ),
) -> None:
    """The CPU demo: vanilla IMP with SDD, DSD² students from the best-fit teacher, compute table."""
    from dsd2 import compare, rundir
    from dsd2.config import load_config
    from dsd2.study import run_pipelines_parallel

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, got {seeds!r}") from None
    if not seed_list:
        raise UserError(f"--seeds names no seed ({seeds!r}): give comma-separated integers, e.g. --seeds 0,1")
    configs = [load_config("demo_fmnist", [*(overrides or []), f"seed={s}"], plugins=plugins or []) for s in seed_list]
    render.RESUME["how"] = "the same `dsd2 demo` command (finished runs and rounds are kept)"
    if fuse:
        from dsd2.fused.pipelines import run_pipelines_fused

        render.err_console.print(f"demo: {len(configs)} pipeline(s) (vanilla IMP, then DSD² student), fused; this takes minutes")
        pairs = run_pipelines_fused(configs, out=out, say=render.err_console.print)
    else:
        render.err_console.print(f"demo: {len(configs)} pipeline(s) (vanilla IMP, then DSD² student), {jobs} at a time; this takes minutes")
        render.err_console.print(_expected_demo_time(configs[0], len(configs), jobs), highlight=False, soft_wrap=True)
        pairs = run_pipelines_parallel(configs, out=out, jobs=jobs)
    for cfg, (teacher_dir, student_dir) in zip(configs, pairs):
        render.console.rule(f"seed {cfg.seed}")
        render.console.print(rounds_table(rundir.read_rounds(teacher_dir), title=f"vanilla IMP (seed {cfg.seed}): {teacher_dir}"))
        render.console.print(rounds_table(rundir.read_rounds(student_dir), title=f"DSD² student (seed {cfg.seed}): {student_dir}"))
        render.console.print(strategy_rich_table(compare.strategy_table(teacher_dir, student_dir)))
        rule = compare.COMPRESS_RULE
        render.console.print(strategy_rich_table(compare.strategy_table(teacher_dir, student_dir, **rule), compare.rule_text(rule)))
    render.console.print(dip_rich_table(pairs))
    for teacher_dir, student_dir in pairs:
        render.console.print(f"vanilla run: {teacher_dir}   DSD² student run: {student_dir}")
    from dsd2.report import write_report
    from dsd2.report.html import report_status

    render.err_console.print("writing the report, one line per figure…", highlight=False)
    with report_status(lambda line: render.err_console.print(f"  {line}", highlight=False)):
        page = write_report(
            [d for pair in pairs for d in pair], out / "demo_report", title="dsd2 demo: SDD and DSD² on Fashion-MNIST (40% noise)"
        )
    render.console.print(f"report: {page.resolve()}")
    from dsd2.verdict import verdict_for_runs

    render.console.print(verdict_for_runs(pairs, page.resolve(), seeds=[c.seed for c in configs]), highlight=False, soft_wrap=True)


def _expected_demo_time(cfg, pipelines: int, jobs: int) -> str:
    """What `dsd2 estimate` predicts for the demo on this machine: the vanilla run timed for a few
    steps, twice per pipeline (its DSD² student trains as long, plus the teacher's forward passes),
    the pipelines ``jobs`` at a time."""
    import math

    from dsd2.sweep.measure import measure, predict
    from dsd2.threads import Share

    # timed with the threads each run gets beside the others (one of 2 cores when 2 run at once):
    # timed with all the cores, the estimate read 4 min for an 8-minute demo
    run_s = predict(cfg, measure(cfg, steps=50, share=Share(min(jobs, pipelines))))["total_s"]
    total_s = 2 * run_s * math.ceil(pipelines / max(1, jobs))
    return (
        f"expected: about {total_s / 60:.0f} min here (dsd2 estimate: {run_s / 60:.1f} min per run, 2 runs per pipeline, "
        f"{jobs} at a time; more when other jobs share the cores, a little more for the students' teacher forwards)"
    )
