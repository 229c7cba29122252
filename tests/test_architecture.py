"""The architecture as checked promises: import-linter's contracts (pyproject.toml), and the import
budget of the light paths (``--help``, a user error, judging an audit document)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from docfixtures import small_document

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "mlflow", "sklearn", "fairlearn", "ray", "matplotlib", "scipy")  # (pandas 3 brings pyarrow)


def _imported_after(code: str, *, cwd: Path = ROOT) -> dict:
    """Run ``code`` in a fresh interpreter; return its exit code and which heavy packages it imported."""
    probe = textwrap.dedent(f"""
        import json, sys
        code = None
        try:
{textwrap.indent(textwrap.dedent(code), " " * 12)}
        except SystemExit as exit:
            code = exit.code
        print(json.dumps({{"exit": code, "loaded": sorted(m for m in {HEAVY + ("numpy", "pandas")!r}
                                                       if m in sys.modules)}}))
    """)
    done = subprocess.run([sys.executable, "-c", probe], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_contracts_hold():
    """layers (app > record > mitigation > scale > audited > nn | data > analysis > core), core and analysis
    without torch or MLflow, and
    nothing but the CLI importing the runner: ``lint-imports`` reads them from pyproject.toml."""
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout and "6 kept" in done.stdout


def test_a_broken_contract_is_caught(tmp_path):
    """The contract check can fail: a core module that imports torch breaks 'core-is-light'."""
    copy = tmp_path / "repo"
    subprocess.run(["cp", "-r", str(ROOT / "pipeline"), str(ROOT / "pyproject.toml"), str(tmp_path)], check=True)
    copy.mkdir()
    (tmp_path / "pipeline").rename(copy / "pipeline")
    (tmp_path / "pyproject.toml").rename(copy / "pyproject.toml")
    policy = copy / "pipeline/core/policy.py"
    policy.write_text(policy.read_text() + "\n\ndef _late():\n    import torch  # noqa: F401\n")
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache", "--contract", "core-is-light"], cwd=copy, capture_output=True,
                          text=True, timeout=300, env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 1, done.stdout[-2000:]
    assert "pipeline.core.policy -> torch" in done.stdout


@pytest.mark.parametrize(("argv", "exit_code"), [
    (["pipeline", "--help"], 0),
    (["pipeline", "run", "--help"], 0),
    (["pipeline", "run", "--config", "no-such.yaml"], 2),
], ids=["help", "run-help", "user-error"])
def test_the_command_line_stays_light(argv, exit_code):
    """``--help`` and a user error answer without numpy, pandas, torch or MLflow."""
    found = _imported_after(f"""
        import runpy
        sys.argv = {argv!r}
        runpy.run_module("pipeline", run_name="__main__")
    """)
    assert found == {"exit": exit_code, "loaded": []}


def test_judging_an_audit_document_needs_no_model_library(tmp_path):
    """Reading an audit.json and deciding its verdict imports neither torch, MLflow, scikit-learn nor fairlearn."""
    path = tmp_path / "audit.json"
    path.write_text(json.dumps(small_document().to_json()))
    found = _imported_after(f"""
        import json
        from pipeline.core import policy
        from pipeline.core.document import AuditDocument
        doc = AuditDocument.from_json(json.loads(open({str(path)!r}).read()))
        print(policy.decide(list(doc.findings), features=doc.config.dataset.sensitive_features)[0])
    """)
    assert found["exit"] is None
    assert not set(found["loaded"]) & set(HEAVY), found["loaded"]


def test_a_run_without_mitigation_loads_neither_fairlearn_nor_scikit_learn(write_config, store, tmp_path):
    """fairlearn and scikit-learn serve mitigation only: the default run's command never imports them."""
    from conftest import small_config

    config = write_config(small_config())
    found = _imported_after(f"""
        from pipeline.app import runner
        result = runner.run({str(config)!r}, tracking_uri={store!r}, reports_dir={str(tmp_path / "reports")!r})
        print(result.verdict, file=sys.stderr)
    """)
    assert found["exit"] is None
    assert {"torch", "mlflow"} <= set(found["loaded"])  # it did train and log
    assert not {"fairlearn", "sklearn"} & set(found["loaded"]), found["loaded"]
