"""Finding a Hugging Face model folder: a local path, or a Hub name downloaded once and cached.

``resolve("gpt2")`` downloads the files hf_gpt2.from_hf reads through ``huggingface_hub`` once
and then finds them in its cache (``~/.cache/huggingface``, or ``HF_HOME``); ``resolve(path)``
uses a local folder as it is. Without a network (or with ``HF_HUB_OFFLINE=1``) a name that is
not cached yet fails with one sentence that says what to do.
"""

from __future__ import annotations

from pathlib import Path

# The files from_hf can read; a download fetches only these (not the TF / Flax / ONNX copies).
WEIGHTS = "model.safetensors"
FILES = ["config.json", WEIGHTS, "tokenizer.json", "vocab.json", "merges.txt"]


def check_folder(folder: Path) -> Path:
    """The folder, if it has a config, safetensors weights and a GPT-2-format tokenizer."""
    has_tokenizer = (folder / "tokenizer.json").is_file() or all(
        (folder / name).is_file() for name in ("vocab.json", "merges.txt"))
    missing = [name for name in ("config.json", WEIGHTS) if not (folder / name).is_file()]
    missing += [] if has_tokenizer else ["tokenizer.json (or vocab.json + merges.txt)"]
    if missing:
        raise FileNotFoundError(f"{folder} is not a Hugging Face GPT-2 folder: it has no "
                                f"{', '.join(missing)}.")
    return folder


def resolve(name_or_path: str | Path) -> Path:
    """A local folder as it is, or a Hub name ("gpt2", "gpt2-medium") downloaded once, cached."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return check_folder(path)
    name = str(name_or_path)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"{name} is neither a model folder nor a Hugging Face Hub name "
                                "like gpt2 or openai-community/gpt2-medium.")
    from huggingface_hub import snapshot_download  # installed with datasets
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        folder = snapshot_download(name, allow_patterns=FILES)
    except LocalEntryNotFoundError:
        raise FileNotFoundError(
            f"Cannot download {name}: there is no network (or HF_HUB_OFFLINE=1 is set) and it "
            "is not in the Hugging Face cache yet; run once with a network to cache it, or "
            "pass the path of a folder holding its config.json, model.safetensors and "
            "tokenizer.json.") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"There is no model named {name} on the Hugging Face Hub "
                                "(try gpt2, gpt2-medium, gpt2-large or gpt2-xl).") from None
    return check_folder(Path(folder))
