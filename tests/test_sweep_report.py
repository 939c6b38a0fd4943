"""The whole-sweep report: analysis figures read back the summary they plot; the page renders offline."""

import base64
import re

import pytest

from dsd2 import store
from dsd2.cli import main
from dsd2.errors import UserError
from dsd2.report.sweep import analysis_figure, grid_keys, write_sweep_report
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
