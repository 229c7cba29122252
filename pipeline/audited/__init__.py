"""The audited model: where scores (and ReLU activations) come from when ``audit`` judges a model it did not train.

``sources`` turns the command's options into a checked scorer; ``scorers`` holds the scorers (the pipeline's
own network with its encoder, a team's network fed data columns, a file of scores); ``mlflow_models`` opens
any MLflow model (the pipeline's, a bare PyTorch network, a pyfunc of any flavor); ``capture`` records the
ReLU activations of torch networks inside a model while its own code runs.
"""
