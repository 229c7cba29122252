"""What an audit leaves behind: its files in ``reports/<run_id>/`` (``outputs``), the plots, HTML report and
model card (``report``), and everything logged to MLflow (``tracking``, the only module here that imports it)."""
