"""The HTML report: one self-contained page, organised by questions, that a browser renders."""

import base64
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from bayesim_hpc import (MockFitter, bias_metric, coverage_metric, power_metric, rmse_metric, run_simulation,
                         sbc_rank_metric)
from bayesim_hpc.report import build_report

from .studies.linear import make_config

QUIET = dict(progress=False, emit=lambda s: None)


class Overconfident(MockFitter):
    """Method "narrow" reports posteriors 0.4 times as wide as they should be."""

    def fit(self, data, fit_spec, seed, task_ctx):
        res = super().fit(data, fit_spec, seed, task_ctx)
        if fit_spec["method"] == "narrow":
            res.draws = {k: v.mean() + 0.4 * (v - v.mean()) for k, v in res.draws.items()}
        return res


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    rdir = tmp_path_factory.mktemp("rep") / "r"
    cfg = make_config(result_path=rdir, data_grid={"n": [50, 200], "sigma": [0.5, 1.0]},
                      fit_grid={"method": ["exact", "narrow"]},
                      fitter=Overconfident(fail_tasks=("d002_f001_r00004", "d003_f002_r00007"), warn_rate=0.2),
                      metrics=[rmse_metric(), bias_metric(), coverage_metric(0.9), power_metric(0.95, null=0.0),
                               sbc_rank_metric(19)],
                      n_replicates=30, retain="standard")
    run_simulation(cfg, **QUIET)
    (rdir / "study.pkl").write_bytes(b"not a pickle: the report must not read me")
    build_report(rdir)
    return rdir


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)]


def test_report_is_self_contained_and_organised_by_questions(report_dir):
    page = (report_dir / "report.html").read_text()
    assert not re.search(r"(src|href)=['\"](?!data:|#)", page)  # nothing outside the file
    for q in ("Which method is biased?", "Where does coverage fail?", "How does precision compare?",
              "Did the sampler converge?", "Are posteriors calibrated (SBC, sbc_rank)?", "What failed or warned?"):
        assert q in page, q
    meta = json.loads((report_dir / "report.json").read_text())
    titles = {p["title"] for p in meta["plots"]}
    assert titles >= {"Bias", "Coverage (cover90)", "Zip plot (cover90)", "Precision", "Diagnostics",
                      "SBC ranks (sbc_rank)", "Power (power95)"}
    imgs = _images(page)
    assert len(imgs) == len(meta["plots"])
    for raw in imgs:
        img = Image.open(io.BytesIO(raw))
        img.load()
        assert img.width > 200 and img.height > 150
    # the overconfident method is named where coverage fails; Wilson intervals are shown
    assert "Coverage differs from the nominal 90%" in page and "method=narrow at n=50, sigma=0.5" in page and "95% Wilson" in page
    # failures grouped by kind with example ids and the replay command
    assert "2 tasks failed, in 1 kinds" in page
    assert f"bayesim-hpc replay {report_dir} d002_f001_r00004" in page
    assert "injected warning" in page and "Warnings by kind" in page
    assert "Paired comparisons with method=exact" in page


@pytest.mark.slow
def test_chromium_renders_the_report(report_dir, tmp_path):
    """Headless Chromium: the page loads without console errors and every image decodes."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    page = report_dir / "report.html"
    shot = tmp_path / "report.png"
    probe = tmp_path / "probe.html"
    # the probe loads the report in an iframe and reports how many images decoded
    probe.write_text(
        "<!doctype html><html><body><iframe id='f' src='report.html' width='1300' height='900'></iframe><script>"
        "document.getElementById('f').onload=function(){var d=this.contentDocument;var im=d.images;var ok=0;"
        "for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0)ok++;}"
        "document.title='IMAGES '+ok+'/'+im.length+' SECTIONS '+d.querySelectorAll('section').length;};"
        "</script></body></html>")
    shutil.copy(page, tmp_path / "report.html")
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
              "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run(common + ["--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120)
    title = re.search(r"<title>IMAGES (\d+)/(\d+) SECTIONS (\d+)</title>", dom.stdout)
    assert title, dom.stdout[-2000:] + dom.stderr[-2000:]
    ok, total, sections = map(int, title.groups())
    assert total > 5 and ok == total and sections >= 6
    run = subprocess.run(common + ["--window-size=1300,2400", f"--screenshot={shot}", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    # the report has no scripts: any console message (an error, a failed resource) is a fault
    assert not [line for line in run.stderr.splitlines() if ":CONSOLE" in line], run.stderr[-2000:]
    broken = tmp_path / "broken.html"  # the same check does see a fault
    broken.write_text("<html><body><script>undefinedFn();</script></body></html>")
    bad = subprocess.run(common + [f"--screenshot={tmp_path / 'b.png'}", broken.as_uri()], capture_output=True,
                         text=True, timeout=120)
    assert any(":CONSOLE" in line and "undefinedFn" in line for line in bad.stderr.splitlines())
    img = Image.open(shot)
    assert img.size == (1300, 2400)
    assert len(np.unique(np.asarray(img.convert("L").resize((65, 120))))) > 20  # not a blank page
    shutil.copy(shot, report_dir / "report-screenshot.png")


def test_report_of_an_old_directory_uses_current_names(tmp_path):
    from .test_measures import _OldCoverage

    run_simulation(make_config(metrics=[_OldCoverage()], n_replicates=10, result_path=tmp_path / "old"), **QUIET)
    page = build_report(tmp_path / "old").read_text()
    assert "cover90: nominal 0.9" in page and ">mean<" not in page


@pytest.mark.parametrize("fitter", [MockFitter(), MockFitter(fail_rate=1.0)], ids=["one-cell", "all-failed"])
def test_report_of_small_and_failed_studies(tmp_path, fitter):
    run_simulation(make_config(fitter=fitter, n_replicates=4, max_errors=100, result_path=tmp_path / "r"),
                   keep_going=True, **QUIET)
    page = build_report(tmp_path / "r").read_text()
    assert "What failed or warned?" in page
    for raw in _images(page):
        Image.open(io.BytesIO(raw)).load()
    if fitter.fail_rate:
        assert "4 tasks failed, in 1 kinds" in page and "bayesim-hpc replay" in page
