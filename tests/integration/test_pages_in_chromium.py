"""The pages people open, drawn by a real browser: a run's report and the nightly index.

Debian's headless Chromium through its chromedriver (Selenium, told where both are, so Selenium
Manager fetches nothing). Each page must draw every chart (an SVG with a size and shapes in
it), show its legends and titles, and fetch nothing: Chrome's performance log lists every
request the page made. Screenshots land in the test's tmp folder and their paths are printed.
"""

from __future__ import annotations

import base64
import importlib
import json
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from reports.render import render_report
from tests.unit.test_report import VICTIM, make_journal, make_records, write_records

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--window-size=1280,1000",
    "--hide-scrollbars",
)
TIMELINE_LEGEND = ("completed/s", "errors/s", "TTFT p50", "TTFT p95", "TTFT p99")
SUITE_WAIT_S = 120.0  # reports.suite is written alongside this test; give it time to land
SHAPES = "path, polyline, polygon, line, rect, circle, ellipse, use"
# matplotlib's groups that are not data (its SVG names them so), and anything not drawn
DECORATION = (
    'g[id^="matplotlib.axis"], g[id^="legend"], g[id^="patch"], g[id^="text"], defs, clipPath'
)

# Every top-level <svg> and <canvas> with its box and what is drawn inside it.
CHART_FACTS_JS = """
const [shapes, decoration] = arguments;
const drawn = (el) => [...el.querySelectorAll(shapes)].filter((s) => {
  const b = s.getBBox(); return b.width > 0 || b.height > 0; });
// the plotted data: what is drawn outside axes, ticks, backgrounds, texts and legends,
// as the share of the chart's width that it covers
// (clipped to the chart: a clip path hides what reaches past the axes)
const dataSpan = (el, box) => {
  const rects = drawn(el).filter((s) => !s.closest(decoration))
    .map((s) => s.getBoundingClientRect()).filter((r) => r.width > 0 || r.height > 0);
  if (!rects.length || !box.width) return 0;
  const right = Math.min(box.right, Math.max(...rects.map((r) => r.right)));
  const left = Math.max(box.left, Math.min(...rects.map((r) => r.left)));
  return Math.max(0, right - left) / box.width;
};
const out = [];
for (const el of document.querySelectorAll('svg, canvas')) {
  if (el.parentElement.closest('svg')) continue;
  const r = el.getBoundingClientRect();
  const fact = {tag: el.tagName.toLowerCase(), cls: el.getAttribute('class') || '',
    box: el.closest('[id]') ? el.closest('[id]').id : '', label: el.getAttribute('aria-label'),
    width: r.width, height: r.height, visible: getComputedStyle(el).visibility !== 'hidden'};
  if (fact.tag === 'svg') {
    const d = drawn(el);
    fact.shapes = d.length;
    fact.data_span = dataSpan(el, r);
    fact.texts = [...el.querySelectorAll('text')].map((t) => t.textContent.trim()).filter(Boolean);
    fact.legend = [...el.querySelectorAll('g[id^="legend"] text')]
      .map((t) => t.textContent.trim()).filter(Boolean);
  } else {
    const blank = document.createElement('canvas');
    blank.width = el.width; blank.height = el.height;
    fact.shapes = el.toDataURL() === blank.toDataURL() ? 0 : 1;
  }
  out.push(fact);
}
return out;
"""


# --- The browser ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(
            f"{' and '.join(missing)} not installed (Debian packages chromium, chromium-driver; "
            "scripts/setup.sh installs them)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    service = Service(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()  # stops Chromium and chromedriver (the service) by their pids
        assert service.process is None or service.process.poll() is not None


def open_page(driver: webdriver.Chrome, page: Path) -> dict[str, Any]:
    """Load a file:// page; return what it requested besides itself, and its console errors."""
    driver.get_log("performance")  # drain what earlier pages left
    driver.get_log("browser")
    url = page.resolve().as_uri()
    driver.get(url)
    driver.execute_script("return document.fonts.ready.then(() => true)")
    requests = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") != "Network.requestWillBeSent":
            continue
        requested = message["params"]["request"]["url"]
        if requested != url and not requested.startswith("data:"):
            requests.append(requested)
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    return {"url": url, "requests": requests, "console_errors": errors}


def screenshot(driver: webdriver.Chrome, path: Path) -> Path:
    """The whole page, not just the window."""
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics["cssContentSize"]
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {
                "x": 0,
                "y": 0,
                "width": math.ceil(size["width"]),
                "height": math.ceil(size["height"]),
                "scale": 1,
            },
        },
    )
    path.write_bytes(base64.b64decode(shot["data"]))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"screenshot: {path}")
    return path


def chart_facts(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    return driver.execute_script(CHART_FACTS_JS, SHAPES, DECORATION)


def assert_drawn(fact: dict[str, Any]) -> None:
    name = fact["label"] or fact["box"] or fact["cls"]
    assert fact["visible"], f"{name}: hidden"
    assert fact["width"] > 10 and fact["height"] > 10, f"{name}: {fact['width']}x{fact['height']}"
    assert fact["shapes"] > 0, f"{name}: nothing drawn in it"


# --- The network check works ------------------------------------------------------------------


def test_a_page_that_fetches_is_caught(browser: webdriver.Chrome, tmp_path: Path) -> None:
    """The detector itself: an image from 127.0.0.1 (port 9, nothing listens) is a request."""
    page = tmp_path / "fetches.html"
    page.write_text(
        '<!doctype html><img src="http://127.0.0.1:9/pixel.png" alt="">'
        '<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" alt="">'
    )
    seen = open_page(browser, page)
    assert seen["requests"] == ["http://127.0.0.1:9/pixel.png"]


def test_a_chart_that_drew_nothing_is_caught(browser: webdriver.Chrome, tmp_path: Path) -> None:
    page = tmp_path / "empty.html"
    page.write_text(
        '<!doctype html><svg class="chart" aria-label="empty" viewBox="0 0 100 50"></svg>'
        '<svg class="chart" aria-label="flat" width="0" height="0"><path d="M0 0L9 9"/></svg>'
        '<svg class="chart" aria-label="drawn" width="90" height="40">'
        '<path d="M0 30L80 10" stroke="black"/></svg>'
    )
    open_page(browser, page)
    facts = {f["label"]: f for f in chart_facts(browser)}
    with pytest.raises(AssertionError, match="empty: nothing drawn"):
        assert_drawn(facts["empty"])
    with pytest.raises(AssertionError, match="flat: 0x0"):
        assert_drawn(facts["flat"])
    assert_drawn(facts["drawn"])
    assert facts["drawn"]["data_span"] == pytest.approx(80 / 90, abs=0.02)
    assert facts["empty"]["data_span"] == 0


# --- A run's report ---------------------------------------------------------------------------


def newest_real_run() -> Path | None:
    """The newest run under chaos-runs/ with a whole journal and load records, if any."""
    runs = ROOT / "chaos-runs"
    if not runs.is_dir():
        return None
    for run in sorted(runs.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
        records = run / "records.jsonl"
        try:
            journal = json.loads((run / "journal.json").read_text())
        except (OSError, ValueError):
            continue  # none, or a run still writing it
        if "inference_chaos" in journal and records.is_file() and records.stat().st_size:
            return run
    return None


REAL_RUN = newest_real_run()
SOURCES = ["synthetic"] + (["newest-real-run"] if REAL_RUN else [])


@pytest.fixture(params=SOURCES)
def report(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """A report rendered by the harness's own entry point, from a synthetic journal (as the unit
    tests build it) and, when this machine has run experiments, from the newest real one."""
    out = tmp_path / "report.html"
    if request.param == "synthetic":
        records = write_records(tmp_path / "records.jsonl", make_records(3000))
        render_report(make_journal(), records, out)
        return {"path": out, "synthetic": True}
    assert REAL_RUN is not None
    journal = json.loads((REAL_RUN / "journal.json").read_text())
    render_report(journal, REAL_RUN / "records.jsonl", out)
    return {"path": out, "synthetic": False, "run": REAL_RUN}


def chart_labels_in_source(html: str) -> list[str]:
    """The charts the page must show: the inline SVGs the renderer wrote, by accessible name."""
    return re.findall(r'<svg[^>]*aria-label="([^"]*)"[^>]*class="chart"', html)


def test_report_charts_draw_in_chromium(
    browser: webdriver.Chrome, report: dict[str, Any], tmp_path: Path
) -> None:
    page: Path = report["path"]
    expected = chart_labels_in_source(page.read_text(encoding="utf-8"))
    assert "Requests, errors and time to first token per second" in expected
    seen = open_page(browser, page)
    shot = screenshot(browser, tmp_path / "report.png")
    charts = [f for f in chart_facts(browser) if "chart" in f["cls"].split()]
    for i, chart in enumerate(browser.find_elements("css selector", "svg.chart")):
        chart.screenshot(str(tmp_path / f"report-chart-{i}.png"))

    assert seen["requests"] == [], f"the report fetched {seen['requests']}"
    assert seen["console_errors"] == []
    assert [c["label"] for c in charts] == expected
    for chart in charts:
        assert_drawn(chart)
        assert chart["legend"], f"{chart['label']}: no legend text"
        # lines, areas or bars across the plot, not a dot or an empty frame: the data drew
        assert chart["data_span"] > 0.4, (chart["label"], chart["data_span"])
    timeline = next(c for c in charts if c["box"] == "timeline-chart")
    assert set(TIMELINE_LEGEND) <= set(timeline["legend"])
    assert "Completed requests and errors per second" in timeline["texts"]
    assert "seconds since load start" in timeline["texts"]
    served = next((c for c in charts if c["box"] == "served-by-chart"), None)
    if report["synthetic"]:
        assert served and f"{VICTIM} (victim)" in served["legend"]
        assert any(t.startswith("pod-kill") for t in timeline["texts"]), "fault not labelled"
    elif served:
        assert any(name.startswith("worker-") for name in served["legend"]), served["legend"]
    title = browser.find_element("css selector", "h1").text
    assert title, "the report has no title"
    assert shot.stat().st_size > 20_000  # a page with charts, not a blank frame


# --- The nightly index ------------------------------------------------------------------------

NIGHT = 86_400.0
TONIGHT = 1_790_000_000.0


def night_summary(started_at: float, leader_s: float) -> dict[str, Any]:
    """A summary.json as docs/internals.md ("The nightly suite") lays it out; the raft
    experiment deviates when its leader took longer than 1 s."""
    leader_ok = leader_s <= 1.0
    summary = {
        "suite": "nightly",
        "started_at": started_at,
        "ended_at": started_at + 900.0,
        "duration_s": 900.0,
        "target": "local",
        "host": "ci-runner",
        "commit": "0123456789abcdef0123456789abcdef01234567",
        "score": {},
        "regressions": [],
        "experiments": [
            {
                "name": "worker-kill",
                "file": "experiments/worker-kill.yaml",
                "title": "A GPU worker dies under streaming load",
                "tags": ["worker", "pod-kill", "nightly"],
                "verdict": "passed",
                "exit_code": 0,
                "duration_s": 61.2,
                "overhead_s": 4.1,
                "reasons": [],
                "report": "worker-kill/report.html",
                "checks": [
                    {"name": "availability", "ok": True, "summary": "99.95% vs 99.9%"},
                    {"name": "ttft-p95", "ok": True, "summary": "p95 310 ms vs 1500 ms"},
                ],
                "figures": {"availability": 0.9995, "ttft_p95_s": 0.31, "rto_s": 3.2},
            },
            {
                "name": "raft-leader-kill",
                "file": "experiments/raft-leader-kill.yaml",
                "title": "The metadata store's leader is killed",
                "tags": ["raft", "pod-kill", "nightly"],
                "verdict": "passed" if leader_ok else "deviated",
                "exit_code": 0 if leader_ok else 1,
                "duration_s": 14.0,
                "overhead_s": 2.0,
                "reasons": []
                if leader_ok
                else [f"SLO missed: raft-failover: new leader after {leader_s:.3f} s"],
                "report": "raft-leader-kill/report.html",
                "checks": [
                    {"name": "raft-failover", "ok": leader_ok, "summary": f"{leader_s:.3f} s"},
                    {"name": "linearizable", "ok": True, "summary": "linearizable"},
                ],
                "figures": {"time_to_new_leader_s": leader_s, "linearizable": True},
            },
        ],
    }
    shares = [[c["ok"] for c in e["checks"]] for e in summary["experiments"]]
    summary["score"] = {
        "value": round(sum(sum(s) / len(s) for s in shares) / len(shares), 4),
        "met": sum(sum(s) for s in shares),
        "total": sum(len(s) for s in shares),
        "formula": "mean over experiments of checks met / checks judged",
    }
    return summary


def suite_module() -> Any:
    """reports.suite, waiting a while for it when it is still being written."""
    deadline = time.monotonic() + SUITE_WAIT_S
    while True:
        try:
            from reports import suite
        except ImportError:
            importlib.invalidate_caches()
            if time.monotonic() > deadline:
                pytest.skip("reports.suite (write_index) is not in the tree: index not checked")
            time.sleep(5)
            continue
        return suite


def test_index_charts_draw_in_chromium(browser: webdriver.Chrome, tmp_path: Path) -> None:
    suite = suite_module()
    history = [night_summary(TONIGHT - k * NIGHT, 0.30 + 0.01 * k) for k in range(8, 0, -1)]
    tonight = night_summary(TONIGHT, 1.8)
    assert tonight["score"]["value"] == 0.75 and history[0]["score"]["value"] == 1.0
    tonight["regressions"] = [
        {
            "experiment": "raft-leader-kill",
            "figure": "time_to_new_leader_s",
            "value": 1.8,
            "baseline": 0.335,
            "change": 4.37,
            "tolerance": {"relative": 0.2},
        }
    ]
    reports = tmp_path / "raft-leader-kill"
    render_report(make_journal(), None, reports / "report.html")
    page = suite.write_index(tmp_path, tonight, history)
    assert page == tmp_path / "index.html"

    seen = open_page(browser, page)
    shot = screenshot(browser, tmp_path / "index.png")
    charts = chart_facts(browser)
    body = browser.find_element("css selector", "body").text

    assert seen["requests"] == [], f"the index fetched {seen['requests']}"
    assert seen["console_errors"] == []
    assert charts, "the index has no chart"
    for chart in charts:
        assert_drawn(chart)
    svgs = [c for c in charts if c["tag"] == "svg"]
    # one trend per figure of tonight's experiments, plus the score's: each draws its nights
    figures = sum(len(e["figures"]) for e in tonight["experiments"])
    trends = [c for c in svgs if "legend" not in c["cls"].split()]
    assert len(trends) >= figures + 1, [c["label"] for c in svgs]
    for trend in trends:
        assert trend["shapes"] >= len(history), f"{trend['label']}: not every night drawn"
    labelled = [c for c in svgs if c["texts"]]
    assert len(labelled) == len(svgs), "a chart without any text in it"
    legend = " ".join(t for c in svgs if "legend" in c["cls"] for t in c["texts"])
    assert "tonight" in legend and "earlier nights" in legend, legend
    for experiment in tonight["experiments"]:
        assert experiment["name"] in body
    assert "raft-leader-kill" in browser.find_element("id", "regressions").text
    assert "0.750" in body  # tonight's score
    link = browser.find_element("css selector", "#experiment-raft-leader-kill a")
    assert link.get_attribute("href") == (reports / "report.html").as_uri()
    assert shot.stat().st_size > 20_000
