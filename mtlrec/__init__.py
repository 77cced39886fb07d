"""mtlrec: multi-task recommendation models on Keras 3.

Importing `mtlrec` stays cheap (no TensorFlow): the data pipeline's worker
processes import only the schema and the record format.
"""

__version__ = "0.1.0"
