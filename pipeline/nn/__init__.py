"""The networks: the ReLU MLP the pipeline trains (``model``), its training loop (``training``), the
one function that scores rows (``scoring``) and the capacity measures of ReLU units (``capacity``)."""
