"""The report: figures plot the run data, the HTML is self-contained, escaped and renders."""

from __future__ import annotations

import base64
import io
import math
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from dsd2 import compare, imp, rundir, store
from dsd2.config import load_config
from dsd2.errors import UserError
from dsd2.report import (
    accuracy_figure,
    compute_figure,
    entropy_figure,
    esc,
    format_sparsity,
    group_runs,
    load_run,
    memorisation_figure,
    phase_spans,
    sparsity_to_x,
    write_report,
)
from dsd2.report.figures import setup_sparsity_axis

from conftest import TINY

BASE = [*TINY, "prune.rounds=3"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    v0 = imp.run(load_config("tiny_mnist1d", BASE), out)
    v1 = imp.run(load_config("tiny_mnist1d", BASE + ["seed=1"]), out)
    st = imp.run(load_config("tiny_mnist1d", BASE + ["name=student", f"distill.teacher={v0}"]), out)
    return {"v0": v0, "v1": v1, "student": st}


def rows(run_dir):
    return store.read_csv(Path(run_dir) / "rounds.csv")


def artist(fig, gid):
    found = [a for ax in fig.axes for a in [*ax.lines, *ax.collections, *ax.patches] if a.get_gid() == gid]
    assert found, f"no artist with gid {gid!r}"
    return found[0]


def artists(fig, prefix):
    return [a for ax in fig.axes for a in [*ax.lines, *ax.collections, *ax.patches] if (a.get_gid() or "").startswith(prefix)]


# ----------------------------------------------------------------------------- axis


def test_sparsity_axis_transform_and_labels():
    sp = [1 - 0.8**i for i in range(31)]
    assert sparsity_to_x(0.0) == 0.0
    assert sparsity_to_x(0.99) == pytest.approx(2.0)
    labels = {i: format_sparsity(sp[i]) for i in (0, 1, 3, 6, 10, 15, 20, 25, 30)}
    assert labels == {0: "0", 1: "20", 3: "48.8", 6: "73.8", 10: "89.3", 15: "96.5", 20: "98.8", 25: "99.62", 30: "99.88"}
    assert format_sparsity(1 - 0.8**34) == "99.95"
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    ticks = setup_sparsity_axis(ax, sp)
    assert 5 <= len(ticks) <= 10
    assert ticks[0] == 0.0 and ticks == sorted(ticks) and ticks[-1] == pytest.approx(sparsity_to_x(sp[-1]))
    assert ax.get_xticklabels()[0].get_text() == "0"
    assert all(min(abs(t - sparsity_to_x(s)) for s in sp) < 1e-9 for t in ticks)  # ticks only at IMP rounds


# ----------------------------------------------------------------------------- figures


def test_accuracy_figure_single_run_plots_rounds_csv(study):
    r = rows(study["v0"])
    fig = accuracy_figure([study["v0"]])
    test = artist(fig, "test_acc:0")
    assert list(test.get_ydata()) == pytest.approx([100 * x["test_acc"] for x in r])
    assert list(test.get_xdata()) == pytest.approx([-math.log10(1 - x["sparsity"]) for x in r])
    assert test.get_linestyle() == "-"
    val = artist(fig, "val_acc:0")
    assert list(val.get_ydata()) == pytest.approx([100 * x["val_acc"] for x in r])
    assert val.get_linestyle() == "--"
    assert not artists(fig, "band:")  # one seed: no band


def test_seed_band_is_mean_and_std_of_the_two_runs(study):
    a, b = rows(study["v0"]), rows(study["v1"])
    fig = accuracy_figure([study["v0"], study["v1"]])
    mean = artist(fig, "test_acc:0")
    expected = [100 * (x["test_acc"] + y["test_acc"]) / 2 for x, y in zip(a, b)]
    assert list(mean.get_ydata()) == pytest.approx(expected)
    band = artist(fig, "band:test_acc:0")
    verts = band.get_paths()[0].vertices
    for x_r, y_r, m in zip(a, b, expected):
        x = sparsity_to_x(x_r["sparsity"])
        ys = [v[1] for v in verts if abs(v[0] - x) < 1e-9]
        half = 100 * abs(x_r["test_acc"] - y_r["test_acc"]) / 2  # population std of two values
        assert min(ys) == pytest.approx(m - half) and max(ys) == pytest.approx(m + half)


def test_phase_spans_cover_each_rounds_range(study):
    r = rows(study["v0"])
    xs = [-math.log10(1 - x["sparsity"]) for x in r]
    edges = [xs[0] - (xs[1] - xs[0]) / 2] + [(p + q) / 2 for p, q in zip(xs, xs[1:])] + [xs[-1] + (xs[-1] - xs[-2]) / 2]
    expected = []  # merge consecutive rounds with the same phase
    for i, x in enumerate(r):
        if expected and expected[-1][0] == x["phase"]:
            expected[-1][2] = edges[i + 1]
        else:
            expected.append([x["phase"], edges[i], edges[i + 1]])
    got = phase_spans(load_run(study["v0"]))
    assert [s[0] for s in got] == [e[0] for e in expected]
    for (_, a0, a1), (_, b0, b1) in zip(got, expected):
        assert (a0, a1) == pytest.approx((b0, b1))

    fig = accuracy_figure([study["v0"], study["v1"], study["student"]])  # phases of the teacher run (v0)
    patches = artists(fig, "phase:")
    assert len(patches) == len(expected)
    for patch, (phase, x0, x1) in zip(patches, expected):
        assert patch.get_gid() == f"phase:{phase}"
        pts = patch.get_patch_transform().transform(patch.get_path().vertices)
        assert (pts[:, 0].min(), pts[:, 0].max()) == pytest.approx((x0, x1))
    legend_texts = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    order = ["light", "critical", "sweet", "collapsed"]
    assert [t for t in legend_texts if t in order] == [p for p in order if p in {e[0] for e in expected}]
    # the student's teacher point is starred at the teacher round
    info = store.read_json(study["student"] / "teacher.json")
    star = artist(fig, f"teacher:{info['round']}")
    assert list(star.get_ydata()) == pytest.approx([100 * r[info["round"]]["test_acc"]])


def test_memorisation_and_entropy_figures(study):
    r = rows(study["student"])
    fig = memorisation_figure([study["student"]])
    assert list(artist(fig, "train_acc_noisy:0").get_ydata()) == pytest.approx([100 * x["train_acc_noisy"] for x in r])
    flipped = artist(fig, "train_acc_flipped:0")
    assert list(flipped.get_ydata()) == pytest.approx([100 * x["train_acc_flipped"] for x in r])
    assert flipped.get_linestyle() == "--"

    ent = store.read_csv(study["student"] / "entropy.csv")
    fig = entropy_figure([study["student"]])
    assert list(artist(fig, "entropy:0").get_ydata()) == pytest.approx([x["entropy"] for x in r])
    assert list(artist(fig, "layer-mean:0").get_ydata()) == pytest.approx([x["entropy"] for x in r])
    layers = sorted({x["layer"] for x in ent})
    assert len(artists(fig, "layer:0:")) == len(layers)
    for layer in layers:
        assert list(artist(fig, f"layer:0:{layer}").get_ydata()) == pytest.approx([x["entropy"] for x in ent if x["layer"] == layer])


def test_compute_figure_x_is_units_with_pflops_on_top(study):
    v, s = rows(study["v0"]), rows(study["student"])
    unit = v[0]["round_pflops_dense"]
    outcomes = compare.strategy_table(study["v0"], study["student"])
    fig = compute_figure(study["v0"], study["student"])
    assert list(artist(fig, "pflops:vanilla").get_xdata()) == pytest.approx([x["train_pflops_dense"] / unit for x in v])
    assert list(artist(fig, "pflops:vanilla").get_ydata()) == pytest.approx([100 * x["test_acc"] for x in v])
    assert list(artist(fig, "pflops:student").get_xdata()) == pytest.approx([x["train_pflops_dense"] / unit for x in s])
    points = artists(fig, "strategy:")
    assert len(points) == len(outcomes)
    for pt, o in zip(points, outcomes):
        assert (pt.get_xdata()[0], pt.get_ydata()[0]) == pytest.approx((o.units, 100 * o.test_acc))
        assert o.strategy in pt.get_label()
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("cumulative training compute (units")
    texts = [t.get_text() for t in ax.texts]
    assert texts == [str(i) for i in range(1, len(outcomes) + 1)]
    # the top axis: PFLOPs = units x the unit
    (top,) = ax.child_axes
    assert top.get_xlabel() == "measured PFLOPs"
    fig.canvas.draw()
    for tick in (1.0, 2.5):
        assert ax.transData.transform((tick, 0))[0] == pytest.approx(top.transData.transform((tick * unit, 0))[0])


def test_strategies_on_one_point_nest_and_stay_visible(study):
    """Strategies selecting the same point (exhaustive and entropy stop at the same round) are
    drawn smaller and above the earlier ones: every marker shows."""
    from dsd2.report.figures import stacked_marker_sizes

    assert stacked_marker_sizes([(1, 50), (2, 60), (1, 50.001), (1, 50)]) == [13, 13, 9.5, 6]
    outcomes = compare.strategy_table(study["v0"], study["student"])
    same = compare.Outcome(**{**outcomes[0].as_dict(), "strategy": "a strategy on the first one's point"})
    fig = compute_figure(study["v0"], study["student"], [*outcomes, same])
    first, last = artist(fig, "strategy:1"), artist(fig, f"strategy:{len(outcomes) + 1}")
    assert (first.get_xdata()[0], first.get_ydata()[0]) == (last.get_xdata()[0], last.get_ydata()[0])
    assert last.get_markersize() < first.get_markersize() and last.get_zorder() > first.get_zorder()
    fig.canvas.draw()  # the later marker lies inside the earlier one: both show
    r = fig.canvas.get_renderer()
    assert last.get_window_extent(r).width < first.get_window_extent(r).width


def test_teacher_point_is_labelled_in_the_legend_not_on_the_curves(study):
    fig = accuracy_figure([study["v0"], study["student"]])
    info = store.read_json(study["student"] / "teacher.json")
    assert not [t for ax in fig.axes for t in ax.texts]  # no label drawn over the curves
    legend = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert f"teacher point: round {info['round']} ({format_sparsity(info['sparsity'])}% sparse)" in legend
    assert artist(fig, f"teacher:{info['round']}").get_label() in legend


def test_group_runs_by_config_without_seed_and_name(study, tmp_path):
    other = tmp_path / "other_noise"
    shutil.copytree(study["v1"], other, ignore=shutil.ignore_patterns("round_*", "*.safetensors"))
    cfg = store.read_yaml_file(other / "config.yaml")
    cfg["noise"]["rate"] = 0.3
    store.write_yaml(other / "config.yaml", cfg)
    groups = group_runs([study["v1"], study["student"], study["v0"], other])
    assert [[r.path for r in g.runs] for g in groups] == [[study["v0"], study["v1"]], [study["student"]], [other]]
    assert [g.role for g in groups] == ["teacher", "student", "vanilla"]


# ----------------------------------------------------------------------------- errors


def test_clear_errors(tmp_path, study):
    with pytest.raises(UserError, match="no run directories"):
        write_report([], tmp_path / "out")
    (tmp_path / "notarun").mkdir()
    with pytest.raises(UserError, match="no rounds.csv"):
        write_report([tmp_path / "notarun"], tmp_path / "out")
    with pytest.raises(UserError, match="not a directory"):
        write_report([tmp_path / "missing"], tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(study["v0"] / "config.yaml", empty / "config.yaml")
    (empty / "rounds.csv").write_text((study["v0"] / "rounds.csv").read_text().splitlines()[0] + "\n")
    rundir.record_tables(empty)
    with pytest.raises(UserError, match="no finished round"):
        write_report([study["v0"], empty], tmp_path / "out")
    assert not (tmp_path / "out" / "index.html").exists()


# ----------------------------------------------------------------------------- HTML


class PageParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs: list[dict] = []
        self.tables: list[dict] = []
        self.links: list[str] = []
        self.scripts: list[dict] = []
        self.text: list[str] = []
        self._in_tbody = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a)
        elif tag == "table":
            self.tables.append({"class": a.get("class", ""), "rows": 0})
        elif tag == "tbody":
            self._in_tbody = True
        elif tag == "tr" and self._in_tbody:
            self.tables[-1]["rows"] += 1
        elif tag in ("link", "a") and a.get("href"):
            self.links.append(a["href"])
        elif tag == "script":
            self.scripts.append(a)

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_tbody = False

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def report(study, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    index = write_report([study["v0"], study["v1"], study["student"]], out, title="Tiny study")
    return out, index


def test_report_is_self_contained_with_valid_pngs_and_tables(study, report):
    out, index = report
    assert index == out / "index.html"
    text = index.read_text()
    page = PageParser()
    page.feed(text)
    assert len(page.imgs) == 4  # accuracy, memorisation, entropy, compute
    for img in page.imgs:
        src = img["src"]
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png.startswith(PNG_SIGNATURE)
        arr = mpimg.imread(io.BytesIO(png), format="png")
        assert arr.ndim == 3 and arr.shape[0] > 100 and arr.shape[1] > 100
        assert img.get("alt")
    # no external resource: only inline scripts, links to the local figure files
    assert all(not s.get("src") for s in page.scripts)
    assert all(h.startswith("figures/") or h.startswith("#") for h in page.links)
    assert "http://" not in text and "https://" not in text and "<link" not in text
    for stem in ("accuracy", "memorisation", "entropy", "compute"):
        assert (out / "figures" / f"{stem}.png").read_bytes().startswith(PNG_SIGNATURE)
        assert (out / "figures" / f"{stem}.svg").read_text().lstrip().startswith("<?xml")
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]

    # tables: runs summary, strategy, selection, and one rounds table per run with every round
    by_class: dict[str, list[int]] = {}
    for t in page.tables:
        by_class.setdefault(t["class"], []).append(t["rows"])
    assert by_class["runs"] == [3]
    assert by_class["selection"] == [3]
    # the paper's stopping setting and the "sparsest good model" one, a table each
    assert by_class["strategy"] == [
        len(compare.strategy_table(study["v0"], study["student"])),
        len(compare.strategy_table(study["v0"], study["student"], **compare.COMPRESS_RULE)),
    ]
    assert by_class["rounds"] == [len(rows(study[k])) for k in ("v0", "v1", "student")]
    body = "".join(page.text)
    assert "Tiny study" in body
    meta = store.read_json(study["v0"] / "meta.json")
    if meta.get("git_commit"):
        assert meta["git_commit"] in body
    assert meta["cpu_capability"] in body  # which CPU kernels made these numbers (AVX2, AVX512, ...)
    assert "noise:" in body and "rate: 0.2" in body  # the resolved config in a <pre>
    assert "DSD² + early stop" in body


def test_every_string_from_files_is_escaped(study, tmp_path):
    assert esc('a<b>&c"') == "a&lt;b&gt;&amp;c&quot;"
    assert esc(None) == ""
    weird = tmp_path / "a<b>&c" / "run$x"
    # a run folder whose tables are edited here (their checksums rewritten below)
    shutil.copytree(study["v0"], weird, ignore=shutil.ignore_patterns("round_*", "*.safetensors", "tables.sha256.json"))
    cfg = (weird / "config.yaml").read_text().replace("name: tiny_mnist1d", "name: <script>alert(1)</script>")
    (weird / "config.yaml").write_text(cfg)
    csv_text = (weird / "rounds.csv").read_text().replace(",light,", ",<i>light</i>,", 1)
    (weird / "rounds.csv").write_text(csv_text)
    rundir.record_tables(weird)  # checksums of the edited tables: the escaping is what is tested
    index = write_report([weird], tmp_path / "out")
    text = index.read_text()
    assert "a<b>&c" not in text and "a&lt;b&gt;&amp;c" in text
    assert "<script>alert" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<i>light</i>" not in text and "&lt;i&gt;light&lt;/i&gt;" in text
    assert text.count("<script>") == 1  # the report's own inline script only
    page = PageParser()
    page.feed(text)
    assert len(page.scripts) == 1
    assert str(weird) in "".join(page.text)  # the parser reads the original path back


# ----------------------------------------------------------------------------- browser

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian: apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    _, index = report
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
        "--window-size=1280,900",
        "--enable-logging=stderr",
        "--v=0",
        "--dump-dom",
        index.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'data-images-ok="4/4"' in proc.stdout, proc.stderr[-2000:]
    # at 1280 px only the per-run rounds tables (every rounds.csv column) may scroll sideways
    wide = re.search(r'data-wide-tables="([^"]*)"', proc.stdout)
    assert wide is not None and set(wide.group(1).split()) <= {"rounds"}, wide
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if "Uncaught" in line or "Error" in line], console


def test_report_without_val_entropy_or_phases(study, tmp_path):
    """A run without validation split, entropy and phases, and a student without its teacher."""
    bare = tmp_path / "bare"
    shutil.copytree(study["v1"], bare, ignore=shutil.ignore_patterns("round_*", "*.safetensors", "entropy.csv", "tables.sha256.json"))
    rs = rows(bare)
    for r in rs:
        r.update(val_acc=None, entropy=None, phase=None)
    store.write_csv(bare / "rounds.csv", rs, imp.ROUND_COLUMNS)
    rundir.record_tables(bare)
    fig = accuracy_figure([bare])
    assert artists(fig, "test_acc:0") and not artists(fig, "val_acc:") and not artists(fig, "phase:")
    assert entropy_figure([bare]) is None
    index = write_report([bare, study["student"]], tmp_path / "out")
    page = PageParser()
    page.feed(index.read_text())
    assert [i["alt"].split(" ")[0] for i in page.imgs] == ["Test", "Train", "Activation", "Accuracy"]  # the student has entropy
    assert "a vanilla run of the student's architecture" in "".join(page.text)


def test_figures_come_first_and_the_phase_definitions_are_in_the_page(report):
    _, index = report
    text = index.read_text()
    assert text.index("<h2>Figures</h2>") < text.index('id="phases"') < text.index("<h2>Summary</h2>") < text.index("<h2>Runs</h2>")
    for phase in ("light", "critical", "sweet", "collapsed", "undetermined"):
        assert f'class="phase-{phase}"' in text


def test_full_disk_during_report_is_one_line_and_leaves_the_runs_alone(study, tmp_path, monkeypatch, capsys):
    import errno

    from dsd2.cli import main

    def snapshot(d):
        return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(Path(d).rglob("*")) if p.is_file()}

    before = snapshot(study["v0"])

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.os, "fsync", full)  # the atomic write's fsync hits the full disk
    out = tmp_path / "rep"
    assert main(["report", str(study["v0"]), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err
    msg = " ".join(err.split())
    assert "no space left on the device" in msg and "run the same command again" in msg
    assert "resume" not in msg.lower()  # a report has nothing to resume
    assert snapshot(study["v0"]) == before  # the run folder is untouched
    assert not [p for p in out.rglob("*") if p.is_file()]  # no temp file or half-written figure left


def test_summary_table_is_built_to_fit_a_1280_px_window(report):
    """Few columns, headers and text cells that wrap: the runs summary needs no sideways scroll
    (the headless-Chromium test measures it)."""
    from dsd2.report.html import _CSS, SUMMARY_HEADERS

    _, index = report
    text = index.read_text()
    table = text[text.index('<table class="runs">') :]
    table = table[: table.index("</table>")]
    head = table[: table.index("</thead>")]
    assert head.count("<th ") == len(SUMMARY_HEADERS) <= 11
    assert "th{background:#f3f3f3;white-space:normal" in _CSS  # headers wrap between words
    assert "td.t{overflow-wrap:break-word" in _CSS  # long folder names wrap too: at their parts first
    assert "tiny_<wbr>mnist1d-<wbr>" in table  # names break after _ and -, not in the middle of a word
    assert "max-width:1200px" in _CSS


def test_a_student_is_compared_only_with_a_vanilla_run_of_its_task(study, tmp_path, capsys):
    """compare and the report paired a student with any vanilla run of its architecture: another
    seed's (other samples and noisy labels) or another noise gave a strategy table of two tasks."""
    from dsd2.cli import main

    assert main(["compare", str(study["v1"]), str(study["student"])]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "train on other" in err and "not comparable" in err and str(study["v1"]) in err
    assert main(["compare", str(study["v0"]), str(study["student"])]) == 0
    index = write_report([study["v1"], study["student"]], tmp_path / "out")
    page = PageParser()
    page.feed(index.read_text())
    assert "architecture and data among the inputs: vanilla strategies only" in "".join(page.text)
