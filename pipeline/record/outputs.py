"""The files of one audit in ``reports/<run_id>/``: plots, ``report.html``, ``model_card.md``, ``audit.json``,
``bias_audit.csv``.

The report stage renders; this module writes, so that a run, a review and a push write
the same files the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.core.document import AuditDocument

AUDIT_JSON, REPORT_HTML, MODEL_CARD = "audit.json", "report.html", "model_card.md"
TEST_ROWS = "split/test_rows.npz"  # run: the rows of the data file that formed the test split
HOLDOUT_ROWS = "split/holdout_rows.npz"  # run with post-processing: rows held out of training to fit it
AUDITED_ROWS = "split/audited_rows.npz"  # audit: every audited row of the data file
SHARDS = "split/shards.json"  # a streamed audit: the Parquet shards whose every row was audited, in order


def write_reports(doc: AuditDocument, out_dir: Path, plots: dict[str, bytes] | None = None) -> list[Path]:
    """Write the audit's files (rendering the plots unless given); returns the text files written."""
    from pipeline.core import bias_audit
    from pipeline.record import report

    out_dir.mkdir(parents=True, exist_ok=True)
    if plots is None:
        plots = report.plots(doc)
        for name, png in plots.items():
            (out_dir / name).write_bytes(png)
    (out_dir / REPORT_HTML).write_text(report.render_html(doc, plots), encoding="utf-8")
    (out_dir / MODEL_CARD).write_text(report.model_card(doc), encoding="utf-8")
    (out_dir / bias_audit.CSV_NAME).write_text(bias_audit.to_csv(bias_audit.table(doc)), encoding="utf-8")
    write_document(doc, out_dir / AUDIT_JSON)
    return [out_dir / AUDIT_JSON, out_dir / REPORT_HTML, out_dir / MODEL_CARD]


def rewrite_reports(doc: AuditDocument, folder: Path) -> list[Path]:
    """Re-render report.html and model_card.md from an updated document, reusing the folder's plots."""
    return write_reports(doc, folder, plots={p.name: p.read_bytes() for p in folder.glob("*.png")})


def write_rows(path: Path, rows) -> None:
    """Row numbers as an ``.npz`` with one int64 array ``rows``: sorted 0-based positions among the data
    file's rows (header excluded), counted before rows with missing values were dropped. Read it back
    with ``numpy.load(path)["rows"]`` (no pickle)."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, rows=np.sort(np.asarray(rows, dtype=np.int64)))


def write_shards(path: Path, shards: list[dict]) -> None:
    """The shards of a streamed audit (file, row groups, first row number, rows), in audit order, as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(shards, indent=1), encoding="utf-8")


def write_document(doc: AuditDocument, path: Path) -> None:
    path.write_text(json.dumps(doc.to_json(), indent=2, allow_nan=False), encoding="utf-8")


def read_document(path: Path) -> AuditDocument:
    """An ``audit.json`` read back and checked (schema version, shape): a user error if it is not one."""
    from pipeline.core.errors import UserError

    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot read the audit document: {err}") from err
    return AuditDocument.from_json(raw, source=str(path))


def write_judged(out_dir: Path, judged) -> None:
    """Which rows an audit judged (``core.document.Judged``): the file rows' numbers, or a streamed audit's shards."""
    if judged.rows is None:  # streamed: every row of the shards, in order
        write_shards(out_dir / judged.artifact, judged.streaming["files"])
    else:
        write_rows(out_dir / judged.artifact, judged.rows)
