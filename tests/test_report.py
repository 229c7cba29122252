"""The report, model card and MLflow keys on data whose group names are hostile: escaped everywhere."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from conftest import run_audit, small_config
from mlflow.tracking import MlflowClient

from pipeline.core.document import AuditDocument
from pipeline.record import report

HOSTILE = "<script>alert('x')</script>"
GROUPS = [HOSTILE, "a|b*c_d `code` [link](http://x)", "Ünïcode & co"]


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory, store):
    tmp = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(0)
    n = 600
    group = rng.choice(GROUPS, size=n)
    x1 = rng.normal(size=n)
    frame = pd.DataFrame({
        "x1": x1, "x2": rng.choice(["u", "v"], size=n), "grp": group,
        "label": np.where(x1 + (group == GROUPS[1]) > 0.3, "yes", "no"),
    })
    path = tmp / "hostile.csv"
    frame.to_csv(path, index=False)
    cfg = small_config()
    cfg["dataset"] = {"name": "hostile", "path": str(path), "target": "label", "positive_label": "yes",
                      "sensitive_features": ["grp"]}
    cfg["policy"].update(max_demographic_parity_difference=0.0, min_demographic_parity_ratio=1.0,  # name groups
                         gate_on="point")
    return run_audit(tmp, cfg, store)


def test_html_escapes_group_names(hostile_run):
    result, audit = hostile_run
    html = result.report_html.read_text()
    assert HOSTILE not in html and "<script" not in html.lower()
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    assert "Ünïcode &amp; co" in html
    assert {r["group"] for r in audit["groups"]["grp"]} == set(GROUPS)


def test_report_is_self_contained(hostile_run):
    result, _ = hostile_run
    html = result.report_html.read_text()
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    # inlined images and links within the page (the contents list): nothing to fetch
    assert sources and all(s.startswith(("data:image/png;base64,", "#")) for s in sources)
    anchors = {s[1:] for s in sources if s.startswith("#")}
    assert anchors and all(f'id="{a}"' in html for a in anchors)


def test_model_card_and_description_escape_markdown(hostile_run):
    result, audit = hostile_run
    card = (result.report_html.parent / "model_card.md").read_text()
    text = card + report.run_description(AuditDocument.from_json(audit))
    assert audit["verdict"] == "fail"  # so the findings name the groups
    assert "\\<script\\>" in text and "<script>" not in text
    assert "[link](http://x)" not in text  # no live link from data


def test_mlflow_keys_are_sanitized_and_group_names_stay_in_tables(hostile_run, store):
    """Group names are data: they never enter a metric key; the group table keeps them as written."""
    import json

    result, _ = hostile_run
    client = MlflowClient(store)
    keys = client.get_run(result.run_id).data.metrics
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-/]+", k) for k in keys)
    assert not [k for k in keys if k.startswith("group/")]
    path = client.download_artifacts(result.run_id, "fairness/groups_grp.json", str(result.report_html.parent.parent))
    table = json.loads(open(path, encoding="utf-8").read())
    groups = [row[table["columns"].index("group")] for row in table["data"]]
    assert sorted(groups) == sorted(GROUPS)


def test_fmt_never_shows_undefined_as_zero():
    assert report.fmt(None) == "undefined" and report.fmt(float("nan")) == "undefined"
    assert report.fmt(0.0) == "0.0%" and report.fmt(0.1234) == "12.3%"
