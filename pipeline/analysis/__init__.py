"""What the fairness tables alone do not show: leakage of the sensitive attributes into each ReLU layer, and the
slices of people a model fails.

- ``leakage.py``: a linear probe for each sensitive feature, fitted and scored by stratified k-fold on the
  audited rows, on the model's inputs (the baseline), each post-ReLU layer and the score
  (:func:`leakage.probe_leakage` -> :class:`pipeline.core.document.LeakageSection`).
- ``slices.py``: conjunctions of feature values whose error, false positive, false negative or selection
  rate differs from the rest's, the false discovery rate controlled over every test
  (:func:`slices.find_slices` -> :class:`pipeline.core.document.SliceSection`).

Plain data in (arrays, DataFrames), the document's frozen records out; no torch, no files, no MLflow.
``run`` calls them where the activations are (:mod:`pipeline.nn.evaluation`), ``audit`` on the rows it
sampled while scoring (:mod:`pipeline.scale.sampled`).
"""
