"""The MLflow UI, rendered by headless Chromium, shows an audit logged to a real tracking server.

Chromium loads the React app with a virtual-time budget, so the page's API calls finish before
the DOM is dumped; the test reads the rendered DOM, not the REST API. The run-page screenshot is
written to the test's temp dir; with UPDATE_DOCS_SCREENSHOT=1 it also replaces docs/mlflow-run.png.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_cli, small_config
from mlflow.tracking import MlflowClient

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; .ci/run installs it
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic", "--hide-scrollbars",
         "--virtual-time-budget=20000"]
# Wide enough for MLflow's two-column run page next to the MLflow Assistant panel, which opens
# by itself on a first visit to a server on 127.0.0.1.
WINDOW = (1700, 1100)
RENDER_TIMEOUT = 90  # seconds of real time for one page
DOCS_SCREENSHOT = ROOT / "docs" / "mlflow-run.png"


class _Text(HTMLParser):
    """The DOM's text nodes in document order, each with its enclosing tag; scripts and styles skipped."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes: list[tuple[str, str]] = []
        self.iframes: list[dict[str, str | None]] = []
        self._stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "iframe":
            self.iframes.append(dict(attrs))
        if tag not in ("br", "img", "input", "meta", "link", "hr", "path", "source"):
            self._stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self._stack:
            while self._stack.pop() != tag:
                pass

    def handle_data(self, data):
        enclosing = self._stack[-1] if self._stack else ""
        if data.strip() and enclosing not in ("script", "style"):
            self.nodes.append((enclosing, data.strip()))

    def texts(self) -> list[str]:
        return [text for _, text in self.nodes]


def render(url: str, tmp: Path, screenshot: Path | None = None, window: tuple[int, int] = WINDOW,
           scrollbars: bool = False) -> _Text:
    """The DOM of `url` after MLflow's UI has rendered it (and a screenshot, when asked)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: the browser test needs Debian's chromium "
                    "(apt-get install -y chromium chromium-driver; .ci/run installs it)")
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp)  # fresh: no state from earlier pages
    flags = [f for f in FLAGS if not (scrollbars and f == "--hide-scrollbars")]
    cmd = [str(CHROMIUM), *flags, f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}",
           "--dump-dom", *([f"--screenshot={screenshot}"] if screenshot else []), url]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    pgid = os.getpgid(proc.pid)
    try:
        dom, errors = proc.communicate(timeout=RENDER_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(pgid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium did not render {url} within {RENDER_TIMEOUT} s")
    finally:
        try:  # its zygote and renderers share its group; none may outlive it
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, f"chromium exited {proc.returncode} on {url}:\n{errors[-3000:]}"
    parser = _Text()
    parser.feed(dom)
    return parser


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def _js_number(value: float) -> str:
    """A metric value as the UI prints it (JavaScript's shortest round-trip form)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _follows(texts: list[str], first: str, second: str) -> bool:
    return any(a == first and b == second for a, b in zip(texts, texts[1:]))


@pytest.fixture(scope="module")
def logged(mlflow_server, tmp_path_factory):
    """An audit of German credit under the shipped German policy, logged to the server by the CLI."""
    tmp = tmp_path_factory.mktemp("browser")
    config = tmp / "german.yaml"
    policy = yaml.safe_load((ROOT / "configs/german.yaml").read_text())["policy"]
    config.write_text(yaml.safe_dump(small_config(**{
        "training.epochs": 30, "training.seeds": [0], "tracking.experiment": "fairness-audit-german",
        **{f"policy.{key}": value for key, value in policy.items()}})))
    proc = run_cli("run", "--config", str(config), "--tracking-uri", mlflow_server,
                   "--reports-dir", str(tmp / "reports"), "--json")
    assert proc.returncode in (0, 1), proc.stderr[-4000:]  # pass or policy fail: the audit completed
    summary = json.loads(proc.stdout)
    run = MlflowClient(mlflow_server).get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    return summary, run


def test_run_page_shows_verdict_tag_and_metrics(logged, mlflow_server, tmp_path):
    summary, run = logged
    screenshot = tmp_path / "mlflow-run.png"
    page = render(f"{mlflow_server}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}", tmp_path,
                  screenshot)
    texts = page.texts()
    verdict = summary["verdict"].upper()
    assert run.info.run_name in texts
    # The run description, rendered from Markdown: a heading with the verdict in bold.
    assert ("h2", "Audit verdict:") in page.nodes and ("strong", verdict) in page.nodes, texts[:80]
    assert _follows(texts, "Audit verdict:", verdict)
    assert not any("**" in text for text in texts)
    if summary["failed_findings"]:
        assert "Failed checks" in texts
    # The verdict tag, and a metric with the value MLflow holds.
    assert _follows(texts, "verdict", f": {summary['verdict']}")
    assert _follows(texts, "accuracy", _js_number(run.data.metrics["accuracy"]))
    assert f"Metrics ({len(run.data.metrics)})" in texts
    assert len(run.data.metrics) < 200  # the headline numbers; per-group numbers are tables
    # The picture in the README and docs/mlflow.md.
    assert _png_size(screenshot) == WINDOW
    assert screenshot.stat().st_size > 50_000  # a rendered page, not a blank one
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(screenshot, DOCS_SCREENSHOT)


def test_artifacts_view_lists_and_opens_the_report(logged, mlflow_server, tmp_path):
    _, run = logged
    page = render(f"{mlflow_server}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
                  "/artifacts/report.html", tmp_path)
    texts = page.texts()
    assert {"report.html", "audit.json", "model_card.md", "fairness", "model_inputs"} <= set(texts), texts[:80]
    # report.html is selected: its server path is shown and its content, fetched by the browser, previewed.
    assert f"Path: {run.info.artifact_uri}/report.html" in texts
    (preview,) = [f for f in page.iframes if "mlflow-html-iframe" in (f.get("class") or "")]
    assert (preview.get("src") or "").startswith(f"blob:{mlflow_server}/")


# Appended to a copy of report.html: after layout, each table's box and scroll extent, as one text node.
OVERFLOW_PROBE = """<script>
window.addEventListener("load", () => {
  const tables = [...document.querySelectorAll("table")].map(t => ({
    right: t.getBoundingClientRect().right, scrollWidth: t.scrollWidth, clientWidth: t.clientWidth,
    overflowX: getComputedStyle(t).overflowX}));
  const out = document.createElement("div");
  out.textContent = "OVERFLOW:" + JSON.stringify({viewport: document.documentElement.clientWidth,
                                                  page: document.documentElement.scrollWidth, tables});
  document.body.appendChild(out);
});
</script>"""


@pytest.mark.parametrize("width", [1280, 600])
def test_report_tables_fit_or_scroll_visibly(logged, tmp_path, width):
    """No table of report.html runs off the page: each fits, or scrolls inside its own box."""
    summary, _ = logged
    report = Path(summary["report_html"])
    probed = report.with_name(f"report-probe-{width}.html")
    probed.write_text(report.read_text(encoding="utf-8").replace("</body>", OVERFLOW_PROBE + "</body>"),
                      encoding="utf-8")
    screenshot = tmp_path / f"report-{width}.png"
    page = render(probed.as_uri(), tmp_path, screenshot, window=(width, 1000), scrollbars=True)
    (found,) = [t for t in page.texts() if t.startswith("OVERFLOW:")]
    layout = json.loads(found.removeprefix("OVERFLOW:"))
    assert layout["tables"], "the report has tables"
    assert layout["page"] <= layout["viewport"], f"the page scrolls sideways at {width} px: {layout}"
    for i, table in enumerate(layout["tables"]):
        assert table["right"] <= layout["viewport"] + 0.5, f"table {i} runs off the page at {width} px: {table}"
        if table["scrollWidth"] > table["clientWidth"]:
            assert table["overflowX"] in ("auto", "scroll"), f"table {i} is cut off at {width} px: {table}"
    if width <= 600:
        assert any(t["scrollWidth"] > t["clientWidth"] for t in layout["tables"]), "a wide table scrolls"
    assert _png_size(screenshot) == (width, 1000)


def test_experiment_opens_in_the_model_training_view(logged, mlflow_server, tmp_path):
    """Tagged ``mlflow.experimentKind: custom_model_development``. MLflow 3.17's UI reads the view from
    its GenAI / Model training switch (``?workflowType=``, else the browser's last choice, else GenAI),
    not from the tag: a link with ``workflowType=machine_learning`` shows the runs, not GenAI evaluations."""
    _, run = logged
    experiment = MlflowClient(mlflow_server).get_experiment(run.info.experiment_id)
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development"
    page = render(f"{mlflow_server}/#/experiments/{run.info.experiment_id}/runs?workflowType=machine_learning",
                  tmp_path)
    texts = page.texts()
    assert {"Run Name", run.info.run_name} <= set(texts), texts[:120]  # the runs table
    # the verdict leads the run's name, so that the list shows it (the column shows some 20 characters)
    assert run.info.run_name.startswith(f"{run.data.tags['verdict'].upper()} · german-")
    assert not {"Evaluation runs", "Token Usage", "Judges", "Playground"} & set(texts), texts[:120]
