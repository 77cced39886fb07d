"""Model builders by name: `build_model("mmoe", manifest, config)`."""

from mtlrec.models.registry import MODELS, build_model, register

# Importing the builder modules registers them.
from mtlrec.models import aple, dlen, esmm, moe, ple, shared_bottom, transfer  # noqa: E402,F401  isort: skip

__all__ = ["MODELS", "build_model", "register"]
