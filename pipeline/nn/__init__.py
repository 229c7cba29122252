"""The networks: the ReLU MLP the pipeline trains and a user's model loaded for an audit (``model``), its
training loop (``training``), the one function that scores rows (``scoring``) and the capacity measures of
ReLU units (``capacity``)."""
