"""The application: the command line (``cli``), the runner that wires the stages (``runner``) and the
other commands (``init``, ``push``, ``review``), with what keeps unattended jobs honest (``jobs``)."""
