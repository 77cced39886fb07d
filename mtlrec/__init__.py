"""mtlrec: multi-task recommendation models on Keras 3.

Importing `mtlrec` stays cheap (no TensorFlow): the data pipeline's worker
processes import only the schema and the record format.
"""

import os as _os

# Quiet by default in the Python API as in the CLI: TensorFlow's C++ log lines (CUDA factories, oneDNN, rendezvous)
# are hidden unless the user set TF_CPP_MIN_LOG_LEVEL. Set here, before anything imports TensorFlow; the data
# pipeline's worker processes inherit it. No effect when TensorFlow was imported first.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"
