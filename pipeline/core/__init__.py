"""The audit's arithmetic and vocabulary: configuration, counts and intervals, fairness, disclosure
control, policy, decisions and the typed audit document.

numpy and pandas only: nothing here imports torch, MLflow, scikit-learn, fairlearn or Ray
(an import-linter contract in ``pyproject.toml``, checked by the test suite), so judging an
audit document needs none of them.
"""
