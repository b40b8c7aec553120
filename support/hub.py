"""Finding a Hugging Face model folder, and checking that it holds a GPT-2 we can read.

``resolve("gpt2")`` downloads the files hf_gpt2.from_hf reads through ``huggingface_hub`` once
and then finds them in its cache (``~/.cache/huggingface``, or ``HF_HOME``); ``resolve(path)``
uses a local folder as it is. Without a network (or with ``HF_HUB_OFFLINE=1``) a name that is
not cached yet fails with one sentence that says what to do. The checkers look at plain dicts
(config.json, vocab and merges) and name the first thing our GPTModel / BPETokenizer cannot
represent.
"""

from __future__ import annotations

from pathlib import Path

# The files from_hf can read; a download fetches only these (not the TF / Flax / ONNX copies).
WEIGHTS = "model.safetensors"
FILES = ["config.json", WEIGHTS, "tokenizer.json", "vocab.json", "merges.txt"]
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")  # one function, three names


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


def check_gpt2_config(config: dict, folder: Path) -> None:
    """One sentence for a config.json that is not a GPT-2 our GPTModel can compute exactly."""
    n_embd = config.get("n_embd")
    problems = {
        "model_type": config.get("model_type") == "gpt2",
        "activation_function": config.get("activation_function", "gelu_new") in TANH_GELU,
        "n_inner": config.get("n_inner") in (None, 4 * (n_embd or 0)),
        "layer_norm_epsilon": config.get("layer_norm_epsilon", 1e-5) == 1e-5,
        "scale_attn_weights": config.get("scale_attn_weights", True) is True,
        "scale_attn_by_inverse_layer_idx": not config.get("scale_attn_by_inverse_layer_idx"),
        "add_cross_attention": not config.get("add_cross_attention"),
        "tie_word_embeddings": config.get("tie_word_embeddings", True) is True,
    }
    wrong = [name for name, ok in problems.items() if not ok]
    if wrong:
        raise ValueError(f"{folder}/config.json is not a GPT-2 this project's GPTModel computes "
                         f"exactly: {wrong[0]} = {config.get(wrong[0])!r}.")


def check_gpt2_vocab(vocab: dict[str, int], merges: list[list[str]], specials: dict[str, int],
                     folder: Path) -> None:
    """GPT-2's id layout: 256 single-byte tokens at ids 0-255, merge i's token at 256 + i, the
    special tokens after them. BPETokenizer numbers tokens this way (its id is its rank)."""
    byte_ids = {i for token, i in vocab.items() if len(token) == 1 and token not in specials}
    plain = len(vocab) - sum(token in vocab for token in specials)
    ok = byte_ids == set(range(256)) and plain == 256 + len(merges) and all(
        len(pair) == 2 and vocab.get(pair[0] + pair[1]) == 256 + i
        for i, pair in enumerate(merges))
    first_special = 256 + len(merges)
    if not ok or any(i < first_special for i in specials.values()):
        raise ValueError(f"{folder}'s tokenizer does not number its tokens like GPT-2 (bytes "
                         "0-255, then one id per merge in merge order, then the special "
                         "tokens), so BPETokenizer cannot represent it.")
