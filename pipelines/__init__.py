"""Offline data jobs: the Tenrec-shaped generator and CSV -> TFRecord prepare."""
