"""Shared test setup: run offline, import the flat scripts from the repo root."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The datasets / hub libraries try the network on first use; tests build from local files.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Real files for the end-to-end tests: ../shared/data beside the repo unless LLM_DATA_DIR says.
SHARED_DATA = Path(os.environ.get("LLM_DATA_DIR", ROOT.parent / "shared" / "data")).resolve()

# Unit tests use tiny tensors: one thread is faster and cannot be starved by a busy machine.
import torch  # noqa: E402

torch.set_num_threads(1)
