"""Mitigation: candidate models for a failed audit (``candidates``: built with fairlearn and
scikit-learn), and a candidate served as an MLflow pyfunc model (``candidate_model``: numpy and torch)."""
