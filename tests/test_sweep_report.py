"""The whole-sweep report: analysis figures read back the summary they plot; the page renders offline."""

import base64
import re
import shutil
import subprocess

import pytest

from dsd2 import store
from dsd2.cli import main
from dsd2.errors import UserError
from dsd2.report import accuracy_figure
from dsd2.report.sweep import analysis_figure, grid_keys, point_label, sweep_runs, write_sweep_report
from dsd2.sweep import load_sweep, run_sweep


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    spec = load_sweep("tiny_demo")
    result = run_sweep(spec, out=out, backend="sequential")
    assert result.ok
    return result.sweep_dir


def test_analysis_figure_plots_the_summary(sweep_dir):
    rows = store.read_csv(sweep_dir / "summary_by_point.csv")
    assert grid_keys(rows) == ["noise.rate"]
    fig = analysis_figure(rows, "noise.rate")
    acc_ax, sp_ax = fig.axes[:2]
    (line,) = [ln for ln in acc_ax.lines if (ln.get_gid() or "").startswith("best_acc:")]
    ordered = sorted(rows, key=lambda r: r["noise.rate"])
    assert list(line.get_xdata()) == [r["noise.rate"] for r in ordered]
    assert list(line.get_ydata()) == pytest.approx([100 * r["best_acc_mean"] for r in ordered])
    (sp,) = [ln for ln in sp_ax.lines if (ln.get_gid() or "").startswith("best_sparsity:")]
    assert list(sp.get_ydata()) == pytest.approx([100 * r["best_sparsity_mean"] for r in ordered])


def test_sweep_report_page(sweep_dir, tmp_path):
    index = write_sweep_report(sweep_dir, tmp_path / "rep")
    page = index.read_text()
    assert "Sweep analysis" in page and "noise.rate" in page
    imgs = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    assert len(imgs) >= 3
    assert all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in imgs)
    assert (tmp_path / "rep" / "figures" / "sweep_noise.rate.png").is_file()
    # the CLI picks the sweep report for a sweep folder
    assert main(["report", str(sweep_dir), "-o", str(tmp_path / "cli")]) == 0
    assert "Sweep analysis" in (tmp_path / "cli" / "index.html").read_text()


def test_not_a_sweep_folder(tmp_path):
    with pytest.raises(UserError, match="not a sweep folder"):
        write_sweep_report(tmp_path)


def test_legends_name_the_grid_point_not_the_cell(sweep_dir):
    assert point_label({"seed": 0, "noise.rate": 0.2, "model.depth": 3}, "x") == "noise.rate=0.2, model.depth=3"
    assert point_label({"seed": 1}, "tiny_demo") == "tiny_demo"
    runs = sweep_runs(sweep_dir)
    assert {r.display for r in runs} == {"noise.rate=0.1", "noise.rate=0.4"}
    fig = accuracy_figure(runs)
    legend = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    titles = [leg.get_title().get_text() for leg in fig.legends]
    assert "vanilla: noise.rate=0.1 (seeds 0, 1; mean ± std) — test" in legend
    assert "vanilla: noise.rate=0.4 (seeds 0, 1; mean ± std) — val" in legend
    assert not [t for t in legend + titles if "tiny_demo_" in t]  # no internal cell name


def test_sweep_summary_table_wraps_to_fit(sweep_dir, tmp_path):
    page = write_sweep_report(sweep_dir, tmp_path / "rep").read_text()
    table = page[page.index('<table class="sweep-summary">') :]
    table = table[: table.index("</table>")]
    head = table[: table.index("</thead>")]
    assert "best test acc %" in head and "best_test_acc" not in head  # headers wrap between words
    assert '<td class="w">' in table and "\u00b1\u00a0" in table  # mean over "± std" when narrow
    assert "vanilla: noise.rate=0.1 (seed 0)" in page  # headings name the grid point


CHROMIUM = shutil.which("chromium")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian: apt-get install -y chromium)")
def test_sweep_report_tables_fit_1280_px_in_headless_chromium(sweep_dir, tmp_path):
    index = write_sweep_report(sweep_dir, tmp_path / "rep")
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1280,900",
        "--virtual-time-budget=5000",
        "--dump-dom",
        index.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wide = re.search(r'data-wide-tables="([^"]*)"', proc.stdout)
    # the page's script lists the tables wider than the page; only per-run rounds tables may be
    assert wide is not None and set(wide.group(1).split()) <= {"rounds"}, wide


def test_a_sweeps_own_report_from_before_the_listing_is_kept_and_the_refusal_offers_no_flag(sweep_dir):
    """<sweep>/report written before reports listed their files: rerunning the sweep keeps it and
    says to move it away (`dsd2 sweep` has no -o to offer)."""
    report = sweep_dir / "report"
    report.mkdir()
    try:
        (report / "index.html").write_text("<h1>an earlier report</h1>")
        with pytest.raises(UserError) as err:
            write_sweep_report(sweep_dir)
        text = str(err.value)
        assert f"move {report} away" in text and " -o" not in text and "\n" not in text, text
        assert (report / "index.html").read_text() == "<h1>an earlier report</h1>" and sorted(report.iterdir()) == [report / "index.html"]
        # a figure of the user's under figures/: the same way out
        (report / "index.html").unlink()
        (report / "figures").mkdir()
        (report / "figures" / "sweep_noise.rate.png").write_bytes(b"mine")
        with pytest.raises(UserError) as err:
            write_sweep_report(sweep_dir)
        assert f"move {report} away" in str(err.value) and " -o" not in str(err.value), err.value
        assert (report / "figures" / "sweep_noise.rate.png").read_bytes() == b"mine"
    finally:
        shutil.rmtree(report)


def test_a_moved_sweep_folder_still_reports_its_runs(sweep_dir, tmp_path):
    # before: sweep.json records its runs' folders absolute, so a moved --out folder said
    # "sweep tiny_demo has no finished cell yet: run `dsd2 sweep` first"
    moved = tmp_path / "moved"
    shutil.copytree(sweep_dir.parent, moved, ignore=shutil.ignore_patterns("report"))
    real = sweep_dir.parent
    hidden = real.with_name(real.name + "_hidden")
    real.rename(hidden)
    try:
        runs = sweep_runs(moved / sweep_dir.name)
    finally:
        hidden.rename(real)
    assert len(runs) == 4 and all(r.path.parent == moved for r in runs)
