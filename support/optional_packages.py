"""Optional packages, imported only by the code that needs them, quietly, with one sentence
that says how to install them when they are missing."""

from __future__ import annotations

import importlib
import logging
from typing import Any

# bitsandbytes' CPU backend logs a warning through this logger on every import when the CPU
# supports AVX512-BF16 but the optional `kernels` package (which downloads code at run time)
# is not installed. It is harmless: our layers never use that packed kernel (see
# quantization._bitsandbytes_linear4bit).
_BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"


def _drop_kernels_community_warning(record: logging.LogRecord) -> bool:
    return "kernels-community" not in record.getMessage()


def require(module: str, missing: str) -> Any:
    """``module`` imported, or an ImportError whose sentence (``missing``) says what needs it
    and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(missing) from error


def import_bitsandbytes() -> Any:
    """Import bitsandbytes lazily (only the bitsandbytes backend needs it), quietly."""
    logging.getLogger(_BNB_CPU_LOGGER).addFilter(_drop_kernels_community_warning)
    return require("bitsandbytes", "the bitsandbytes backend needs the bitsandbytes package: "
                   "pip install 'bitsandbytes>=0.50,<0.51' (or use backend='scratch')")


def import_datasets() -> Any:
    """Import Hugging Face `datasets` lazily (only --hf-dataset needs it)."""
    return require("datasets", "--hf-dataset needs the `datasets` package: pip install datasets")
