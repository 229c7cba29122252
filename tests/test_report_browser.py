"""What a reviewer sees of report.html in a browser, at 1400 and 420 px: headless Chromium (tests/chromium.py).

A real audit of the Adult data (one seed, the shipped policy: it fails by sex and race) writes
``reports/<run_id>/report.html``; the browser loads that file with an exact viewport and reads the page
after layout: the status colours as computed, where the summary sentences sit, the contents list and
what is folded. A hand-built document with all four statuses checks the colours of the fourth.
Screenshots of the first two screens go to the test's temp dir (and to $REPORT_SCREENSHOTS when set).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from chromium import Browser
from conftest import ROOT
from docfixtures import small_document

from pipeline.app import runner
from pipeline.record import outputs

WIDTHS = {1400: 900, 420: 800}  # a laptop window and a phone, each with its screen height
# The status colours of the report's stylesheet, as Chromium computes them.
COLOURS = {"fail": "rgb(180, 35, 24)", "pass": "rgb(26, 127, 55)", "inconclusive": "rgb(154, 103, 0)",
           "not_evaluated": "rgb(110, 119, 129)"}
STYLES = {"fail": "solid", "pass": "solid", "inconclusive": "dashed", "not_evaluated": "dotted"}
WORDS = {"fail": "✗ FAIL", "pass": "✓ PASS", "inconclusive": "? INCONCLUSIVE", "not_evaluated": "– NOT EVALUATED"}


@pytest.fixture(scope="module")
def adult(tmp_path_factory, store):
    """A real Adult audit under the shipped policy, one seed."""
    tmp = tmp_path_factory.mktemp("report-browser")
    cfg = yaml.safe_load((ROOT / "configs/adult.yaml").read_text())
    cfg["dataset"]["path"] = str(ROOT / cfg["dataset"]["path"])
    cfg["training"].update(seeds=[0], epochs=4)
    cfg["tracking"] = {"experiment": "tests-report-browser"}
    (tmp / "adult.yaml").write_text(yaml.safe_dump(cfg))
    result = runner.run(tmp / "adult.yaml", tracking_uri=store, reports_dir=tmp / "reports")
    return result, json.loads(result.audit_json.read_text())


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with Browser(tmp_path_factory.mktemp("chromium")) as b:
        yield b


def _open(browser: Browser, path: Path, width: int) -> None:
    browser.viewport(width, WIDTHS[width])
    browser.open(path.resolve().as_uri())


def _shots(browser: Browser, tmp_path: Path, name: str) -> None:
    """The first screen and the first two screens, as PNG (kept when $REPORT_SCREENSHOTS names a folder)."""
    for screens in (1, 2):
        shot = browser.screenshot(tmp_path / f"{name}-{screens}.png", screens=screens)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("REPORT_SCREENSHOTS"):
            shutil.copy(shot, Path(os.environ["REPORT_SCREENSHOTS"]) / shot.name)


STATUS_PROBE = """(() => [...document.querySelectorAll('li.finding')].map(li => {
  const s = getComputedStyle(li), tag = li.querySelector('.status');
  return {status: li.className.replace('finding ', ''), color: s.borderLeftColor, style: s.borderLeftStyle,
          width: parseFloat(s.borderLeftWidth), text: getComputedStyle(li).color, tag: tag.innerText.trim(),
          tagColor: getComputedStyle(tag).color};
}))()"""


def _check_statuses(found: list[dict], expected: set[str]) -> None:
    assert {f["status"] for f in found} == expected
    for f in found:
        # the bar in the status colour (not the text colour it fell back to), and the second cue: word and pattern
        assert f["color"] == COLOURS[f["status"]] != f["text"], f
        assert f["width"] >= 5 and f["style"] == STYLES[f["status"]], f
        assert f["tag"] == WORDS[f["status"]] and f["tagColor"] == COLOURS[f["status"]], f


@pytest.mark.parametrize("width", WIDTHS)
def test_status_colours_as_computed(adult, browser, width):
    result, audit = adult
    _open(browser, result.report_html, width)
    browser.evaluate("document.querySelectorAll('details.passed').forEach(d => d.open = true); 1")
    found = browser.evaluate(STATUS_PROBE)
    assert len(found) == len(audit["findings"])
    _check_statuses(found, {f["status"] for f in audit["findings"]})
    assert {"fail", "pass"} <= {f["status"] for f in found}


def test_all_four_status_colours(browser, tmp_path):
    doc = small_document()
    outputs.write_reports(doc, tmp_path)
    _open(browser, tmp_path / outputs.REPORT_HTML, 1400)
    browser.evaluate("document.querySelectorAll('details.passed').forEach(d => d.open = true); 1")
    _check_statuses(browser.evaluate(STATUS_PROBE), {"fail", "pass", "inconclusive", "not_evaluated"})


SUMMARY_PROBE = """(() => {
  const box = e => { const r = e.getBoundingClientRect(); return {top: r.top + scrollY, bottom: r.bottom + scrollY}; };
  const summary = document.querySelector('#summary');
  const open = document.querySelector('#findings ul.findings');
  const passed = document.querySelector('#findings details.passed > summary');
  return {screen: innerHeight, width: document.documentElement.clientWidth,
          page: document.documentElement.scrollHeight, scrollWidth: document.documentElement.scrollWidth,
          headline: {text: summary.querySelector('.headline').innerText, ...box(summary.querySelector('.headline'))},
          affected: [...summary.querySelectorAll('.affected li')].map(li => ({text: li.innerText, ...box(li)})),
          review: box(summary.querySelector('.review')), summary: box(summary),
          findings: box(open), passed: passed ? box(passed) : null,
          nav: box(document.querySelector('nav.contents'))};
})()"""


@pytest.mark.parametrize("width", WIDTHS)
def test_summary_sentences_above_the_fold(adult, browser, tmp_path, width):
    """The verdict's sentence and who is affected by how much are on the first screen; the summary and the
    findings fit the first two screens; nothing runs off the side."""
    result, audit = adult
    _open(browser, result.report_html, width)
    _shots(browser, tmp_path, f"report-{width}")
    page = browser.evaluate(SUMMARY_PROBE)
    screen = page["screen"]
    assert page["width"] == width and page["scrollWidth"] <= width
    failed = [f for f in audit["findings"] if f["status"] == "fail"]
    assert page["headline"]["text"].startswith(f"This model fails the policy: {len(failed)} of "
                                                f"{len(audit['findings'])} checks failed")
    assert page["headline"]["bottom"] <= screen
    # By sex, Female's selection rate over Male's, in the groups' own rates (from audit.json, not from the report)
    rates = {g["group"]: g["selection_rate"] for g in audit["groups"]["sex"]}
    ratio = rates["Female"] / rates["Male"]
    sex = next(a for a in page["affected"] if a["text"].startswith("By sex:"))
    assert sex["text"].startswith(f"By sex: 'Female' is selected at {ratio:.0%} of the rate of 'Male' "
                                  f"({rates['Female']:.1%} against {rates['Male']:.1%})")
    assert sex["bottom"] <= screen  # who is affected, and by how much, without scrolling
    assert page["summary"]["bottom"] <= 2 * screen and page["nav"]["bottom"] <= 2 * screen
    assert page["findings"]["bottom"] <= 2 * screen and page["passed"]["bottom"] <= 2 * screen


@pytest.mark.parametrize("width", WIDTHS)
def test_contents_list_links_every_section(adult, browser, width):
    result, _ = adult
    _open(browser, result.report_html, width)
    links = browser.evaluate("[...document.querySelectorAll('nav.contents a')].map(a => a.getAttribute('href'))")
    assert {"#findings", "#bias-audit", "#groups", "#capacity", "#leakage", "#slices", "#review", "#data"} <= set(links)
    sections = browser.evaluate("[...document.querySelectorAll('section[id] > h2')].map(h => '#' + h.parentElement.id)")
    assert set(sections) <= set(links), set(sections) - set(links)  # every titled section is in the list
    for href in links:
        browser.evaluate(f"window.scrollTo(0, 0); document.querySelector('nav.contents a[href=\"{href}\"]').click(); 1")
        top = browser.wait_for(f"(() => {{ const t = document.querySelector('{href}').getBoundingClientRect().top;"
                               " return Math.abs(t) < 2 ? 'at top' : (scrollY + innerHeight >= "
                               "document.documentElement.scrollHeight - 2 ? 'page end' : ''); })()", timeout=10)
        assert top in ("at top", "page end"), href


@pytest.mark.parametrize("width", WIDTHS)
def test_details_are_folded_and_one_click_away(adult, browser, width):
    """The configuration, the group tables, the plots and the passed checks are folded; opening them all
    makes the page several times taller. Heights are printed for the record."""
    result, audit = adult
    _open(browser, result.report_html, width)
    folded = browser.evaluate("""(() => {
      const pre = document.querySelector('#data pre');
      // checkVisibility: false inside a closed <details>, whose content Chromium keeps laid out but hidden
      return {closed: document.querySelectorAll('details:not([open])').length, config: pre.checkVisibility(),
              passedShown: document.querySelector('details.passed li').checkVisibility(),
              images: [...document.images].filter(i => i.checkVisibility()).length,
              height: document.documentElement.scrollHeight};
    })()""")
    assert folded["closed"] >= 10 and folded["config"] is False and folded["passedShown"] is False
    assert folded["images"] == 0  # every plot is one click away
    browser.evaluate("document.querySelector('#data details summary').click(); 1")
    assert browser.evaluate("document.querySelector('#data pre').checkVisibility()") is True
    browser.evaluate("document.querySelectorAll('details').forEach(d => d.open = true); 1")
    unfolded = browser.evaluate("document.documentElement.scrollHeight")
    print(f"report height at {width} px: {folded['height']} folded, {unfolded} unfolded")
    assert unfolded > 2 * folded["height"]
    assert folded["height"] <= 6 * WIDTHS[width] if width > 600 else folded["height"] <= 10 * WIDTHS[width]
