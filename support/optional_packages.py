"""Optional packages, imported only by the code that needs them, quietly, with one sentence
that says how to install them when they are missing."""

from __future__ import annotations

import logging
from typing import Any

# bitsandbytes' CPU backend logs a warning through this logger on every import when the CPU
# supports AVX512-BF16 but the optional `kernels` package (which downloads code at run time)
# is not installed. It is harmless: our layers never use that packed kernel (see
# quantization._bitsandbytes_linear4bit).
_BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"


def _drop_kernels_community_warning(record: logging.LogRecord) -> bool:
    return "kernels-community" not in record.getMessage()


def import_bitsandbytes() -> Any:
    """Import bitsandbytes lazily (only the bitsandbytes backend needs it), quietly."""
    logging.getLogger(_BNB_CPU_LOGGER).addFilter(_drop_kernels_community_warning)
    try:
        import bitsandbytes
    except ImportError as error:
        raise ImportError(
            "the bitsandbytes backend needs the bitsandbytes package: pip install "
            "'bitsandbytes>=0.50,<0.51' (or use backend='scratch')"
        ) from error
    return bitsandbytes


def import_datasets() -> Any:
    """Import Hugging Face `datasets` lazily (only --hf-dataset needs it)."""
    try:
        import datasets
    except ImportError:
        raise ImportError("--hf-dataset needs the `datasets` package: pip install datasets") \
            from None
    return datasets
