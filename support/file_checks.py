"""What a file from elsewhere may hold: a checkpoint (its metadata; an adapter file, which must
fit its base; a resume state), a tokenizer, a Hugging Face folder.

A file is only a claim. Its config can declare a 51 GB model around a few kilobytes of weights,
its merges can spell gigabyte-long tokens, its regex can backtrack for hours. So each loader
checks what it read before it builds anything from it, and names the first fault in one
sentence with the file: CheckpointError for checkpoints and Hugging Face folders, ValueError
for tokenizers. The formats themselves are the chapters' (checkpoint.py, tokenizer.py,
hf_gpt2.py); the atomic write and the safe load are support/files.py's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from support.checks import FRACTION, NONNEGATIVE_INT, POSITIVE, POSITIVE_INT, Range, is_number
from support.errors import CheckpointError, one_sentence

REMAKE = "make the file again with the script that wrote it"  # a file no loader can use


# ---------------------------------------------------------------------------- checkpoints


def check_structure(ckpt: Any, path: str | Path, kind: str | tuple[str, ...] | None, fmt: str,
                    version: int) -> None:
    """A dict in ``fmt`` at ``version``, of ``kind`` (when given; or one of several), that
    holds weights the file backs."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != fmt:
        raise CheckpointError(f"{path} is not an {fmt} checkpoint.")
    if ckpt.get("version") != version:
        raise CheckpointError(f"{path} has format version {ckpt.get('version')}, "
                              f"this code reads version {version}.")
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds is not None and ckpt.get("kind") not in kinds:
        raise CheckpointError(f"{path} holds a '{ckpt.get('kind')}' model, expected "
                              f"{' or '.join(map(repr, kinds))}.")
    if not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{path} is not a complete checkpoint: it holds no weights "
                              "('state_dict').")
    check_weights(ckpt["state_dict"], path, Path(path).stat().st_size)


def check_weights(state_dict: Mapping[str, Any], path: str | Path, file_bytes: int) -> None:
    """Weights are finite floating-point tensors that the file's bytes back.

    An int, bool or complex tensor would be cast silently into a float parameter, and a NaN or
    inf would only show up as NaN text or a NaN finetune. Tensors may share bytes (a tied
    embedding is listed twice), so together they may claim twice the file, no more: many
    names over the same stored bytes would otherwise build a model many times the file.
    """
    claimed = 0
    for name, tensor in state_dict.items():
        if not isinstance(name, str):
            raise CheckpointError(f"{path}: a weight is named {name!r:.60}, not with text; "
                                  f"{REMAKE}.")
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{path}: its weight {name} is not a tensor.")
        if not tensor.dtype.is_floating_point:
            raise CheckpointError(f"{path}: its weight {name} holds {tensor.dtype} values; "
                                  "weights are floating-point numbers.")
        claimed += tensor.numel() * tensor.element_size()
        if claimed > 2 * file_bytes:
            raise CheckpointError(f"{path}: its weights claim more bytes than the file holds "
                                  f"({file_bytes:,}); they share stored bytes, so it was not "
                                  "loaded.")
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path}: its weight {name} holds NaN or infinite values; "
                                  "the model that wrote it had diverged, use an earlier "
                                  "checkpoint or train again.")


# GPTConfig's size fields under a file's names: our checkpoints use GPTConfig's own, GPT-2's
# config.json calls context_length n_positions.
GPT_SIZES = {name: name for name in ("vocab_size", "context_length", "n_layer", "n_head",
                                     "n_embd")}
HF_SIZES = {**GPT_SIZES, "context_length": "n_positions"}


def check_gpt_config(config: Any, where: str, keys: Mapping[str, str] = GPT_SIZES,
                     entry: str = "entry") -> None:
    """The sizes a file states for a GPTConfig: positive integers, the width divisible by the
    heads. One sentence names the file (``where``) and its own key (``keys``: GPT_SIZES or
    HF_SIZES)."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{where} holds no config (a dict of the model's sizes); "
                              f"{REMAKE}.")
    for key in keys.values():
        value = config.get(key)
        if not POSITIVE_INT.holds(value):
            problem = "is missing" if value is None else f"is {value!r:.40}"
            raise CheckpointError(f"{where}: its {entry} '{key}' {problem}; it must be a "
                                  "positive integer.")
    n_embd, n_head = config[keys["n_embd"]], config[keys["n_head"]]
    if n_embd % n_head:
        raise CheckpointError(f"{where}: its {entry} '{keys['n_embd']}' ({n_embd}) is not "
                              f"divisible by '{keys['n_head']}' ({n_head}).")


@contextmanager
def invalid_config(path: str | Path, config: Any) -> Iterator[dict]:
    """The checkpoint's config dict, its sizes checked (``check_gpt_config``); an error from
    rebuilding the config or tokenizer from it becomes one sentence naming the file."""
    check_gpt_config(config, str(path), entry="config entry")
    with one_sentence(CheckpointError, {(KeyError, TypeError, ValueError):
                                        lambda e: f"{path} has an invalid config or "
                                                  f"tokenizer: {e}"}):
        yield config


def check_config_sizes(path: str | Path, state_dict: Mapping[str, Any], n_layer: int,
                       model_vocab: int, tokenizer_vocab: int) -> None:
    """The sizes a config claims fit its file, before checkpoint.py builds its model on the
    meta device to compare shapes: the tokenizer's ids fit the model's vocabulary, and every
    layer owns tensors in the file, so a config cannot declare more layers than it holds."""
    if tokenizer_vocab > model_vocab:
        raise CheckpointError(f"{path}: its tokenizer has {tokenizer_vocab} tokens but "
                              f"the model only {model_vocab}.")
    if n_layer > len(state_dict):
        raise CheckpointError(f"{path}: its config declares {n_layer} layers but the file "
                              f"holds only {len(state_dict)} tensors.")


def _mismatch(path: str | Path, error: Exception) -> str:
    """``load_state_dict``'s error in one sentence: its first line says only "Error(s) in
    loading state_dict", the second names the first tensor that does not fit."""
    lines = str(error).strip().splitlines()
    return f"{path} does not match this model: {lines[1 if len(lines) > 1 else 0].strip()}"


def load_weights(module: torch.nn.Module, state_dict: dict, path: str | Path,
                 strict: bool = True) -> None:
    """``load_state_dict`` that turns name/shape mismatches into one clear CheckpointError."""
    with one_sentence(CheckpointError, {(RuntimeError, KeyError, TypeError):
                                        lambda e: _mismatch(path, e)}):
        module.load_state_dict(state_dict, strict=strict)


# ---------------------------------------------------------------------------- metadata


def check_metadata(path: str | Path, name: str, value: Any, ok: bool, remedy: str = REMAKE
                   ) -> None:
    """One sentence for a metadata entry that a loader cannot use (``ok`` is False).

    A hand-edited or foreign file then fails here, naming the entry, rather than with a
    TypeError or KeyError deep inside the loader, which the app could not show.
    """
    if not ok:
        problem = "is missing" if value is None else f"is invalid ({value!r:.60})"
        raise CheckpointError(f"{path}: its metadata entry '{name}' {problem}; {remedy}.")


def check_entries(path: str | Path, entries: Mapping[str, tuple[Any, bool]],
                  remedy: str = REMAKE) -> None:
    """``check_metadata`` for each entry name -> (value, ok), in order."""
    for name, (value, ok) in entries.items():
        check_metadata(path, name, value, ok, remedy)


def checkpoint_metadata(ckpt: dict, path: str | Path) -> dict:
    """The checkpoint's metadata dict (one sentence if it is not a dict)."""
    meta = ckpt.get("metadata", {})
    check_metadata(path, "metadata", meta, isinstance(meta, dict))
    return meta


def _rank_matches_tensors(r: Any, state_dict: Mapping[str, Any]) -> bool:
    """Every saved adapter has rank ``r``: lora_A is [r, in], lora_B is [out, r]. (The rank
    decides what apply_lora allocates, so it must be what the file holds.)"""
    for name, tensor in state_dict.items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("lora_A", "lora_B") and not (
                isinstance(tensor, torch.Tensor) and tensor.dim() == 2
                and tensor.shape[0 if leaf == "lora_A" else 1] == r):
            return False
    return True


class AdapterMetadata(NamedTuple):
    """What an adapter checkpoint says, checked: its LoRA settings (apply_lora's {"r", "alpha",
    "dropout", "targets"}) and the base its adapters trained on: that base's weights'
    fingerprint then, and its path (as stored; may be missing when a base is passed)."""

    lora: dict
    base_fingerprint: str
    base_path: Any


def adapter_metadata(ckpt: dict, path: str | Path, base: str | Path | None) -> AdapterMetadata:
    """The metadata of an adapter checkpoint, read and checked once; the stored base path
    must be there unless a ``base`` is given."""
    meta = checkpoint_metadata(ckpt, path)
    lora = meta.get("lora")
    check_metadata(path, "lora", lora, isinstance(lora, dict))
    r, alpha, dropout, targets = (lora.get(k) for k in ("r", "alpha", "dropout", "targets"))
    fingerprint, stored_base = meta.get("base_fingerprint"), meta.get("base_path")
    check_entries(path, {
        "lora.r": (r, POSITIVE_INT.holds(r) and _rank_matches_tensors(r, ckpt["state_dict"])),
        "lora.alpha": (alpha, POSITIVE.holds(alpha)),  # check_lora_layer's --alpha rule
        "lora.dropout": (dropout, dropout is None or FRACTION.holds(dropout)),
        "lora.targets": (targets, isinstance(targets, list | tuple) and len(targets) > 0
                         and all(isinstance(t, str) for t in targets)),
        "base_fingerprint": (fingerprint, isinstance(fingerprint, str)),
        "base_path": (stored_base, base is not None or isinstance(stored_base, str)),
    })
    return AdapterMetadata(lora, fingerprint, stored_base)


RETRAIN = {"lora-classifier": "python finetune_lora_classifier.py",
           "qlora-instruct": "python finetune_qlora_instructions.py"}


def _same_file(a: Any, b: Any) -> bool:
    return Path(str(a)).expanduser().resolve() == Path(str(b)).expanduser().resolve()


def _not_its_base(path: Any, lora: dict) -> CheckpointError:
    return CheckpointError(f"{path} does not match its base model: the adapter tensors differ "
                           f"from the ones r={lora['r']} on {lora['targets']} makes.")


def check_adapters_fit(path: Any, base: Any, ckpt: dict, stored: AdapterMetadata, *,
                       current_fingerprint: str, layers: list[Any]) -> None:
    """An adapter file (``path``, its checked metadata ``stored``) fits the base model ``base``
    it is about to be put on.

    Checked before any adapter is allocated: the base's weights (``current_fingerprint``) are
    the ones the adapters were trained on (``stored.base_fingerprint``), and the file's LoRA
    tensors hold as many numbers as r on the base's target ``layers`` (apply_lora wraps those
    with in_features and out_features) makes, so apply_lora allocates what the file's own
    bytes back (a file may declare any rank).
    """
    if current_fingerprint != stored.base_fingerprint:
        if stored.base_path is not None and _same_file(base, stored.base_path):
            raise CheckpointError(
                f"{path} was trained on a different base model than the current {base}: "
                f"{base} has been trained again since (its weights' fingerprint differs); run "
                f"{RETRAIN.get(ckpt.get('kind'), 'the finetuning script')} again to train "
                "adapters for it, or pass --base with the base they were trained on.")
        raise CheckpointError(
            f"{path} was trained on a different base model than {base} (the weights' "
            f"fingerprints differ); pass the base it was trained on, {stored.base_path}.")
    held = sum(t.numel() for name, t in ckpt["state_dict"].items()
               if name.rsplit(".", 1)[-1] in ("lora_A", "lora_B"))
    sizes = [getattr(layer, "in_features", 0) + getattr(layer, "out_features", 0)
             for layer in layers]
    if held != stored.lora["r"] * sum(sizes):
        raise _not_its_base(path, stored.lora)


def check_adapter_names(path: Any, lora: dict, held: set[str], trained: set[str]) -> None:
    """The adapter file holds exactly the tensors (``held``) that train on the adapted base
    (``trained``)."""
    if held != trained:
        raise _not_its_base(path, lora)


def resume_settings(ckpt: dict, path: str | Path, build: Callable[..., Any]) -> Any:
    """The training settings of a resume state (``build(**saved)``: main.py's TrainConfig),
    once everything ``TrainingRun.resume`` reads is there with its type; a hand-edited or
    damaged state file is one sentence naming it and the entry."""
    training, meta = ckpt.get("training"), checkpoint_metadata(ckpt, path)
    remedy = "start the run again without --resume"
    check_metadata(path, "training", training, isinstance(training, dict), remedy)
    optimizer, rng, best = (training.get(k) for k in ("optimizer", "rng", "best_val"))
    check_entries(path, {
        "training.step": (training.get("step"), NONNEGATIVE_INT.holds(training.get("step"))),
        "training.optimizer": (optimizer, isinstance(optimizer, dict)
                               and isinstance(optimizer.get("state"), dict)
                               and isinstance(optimizer.get("param_groups"), list)),
        "training.rng": (rng, isinstance(rng, dict) and isinstance(rng.get("torch"),
                                                                   torch.Tensor)
                         and rng["torch"].dtype == torch.uint8),
        "training.elapsed": (training.get("elapsed"), is_number(training.get("elapsed", 0.0))),
        "training.best_val": (best, best is None or (isinstance(best, list | tuple)
                                                     and len(best) == 2 and is_number(best[0])
                                                     and NONNEGATIVE_INT.holds(best[1]))),
        "batch_size": (meta.get("batch_size"), POSITIVE_INT.holds(meta.get("batch_size"))),
        "train_config": (meta.get("train_config"), isinstance(meta.get("train_config"), dict)),
    }, remedy)
    with one_sentence(CheckpointError, {(TypeError, ValueError):
                                        lambda e: f"{path}: its training settings are invalid "
                                                  f"({e}); {remedy}."}):
        return build(**meta["train_config"])


def check_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Every per-parameter tensor the optimizer loaded has its parameter's shape (Adam's
    moments, Muon's momentum); a wrong one would fail mid-step, in the first update."""
    for param, entries in optimizer.state.items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor) and value.dim() and value.shape != param.shape:
                raise ValueError(f"its optimizer entry {name} has shape {tuple(value.shape)}, "
                                 f"the parameter {tuple(param.shape)}")


# ---------------------------------------------------------------------------- tokenizers

MAX_MERGES = 1_000_000  # cl100k has 100k merges; a file with more is hostile or broken
MAX_TOKEN_BYTES = 1024  # a chain of merges could otherwise spell gigabyte-long "tokens"
MAX_VOCAB_BYTES = 64 << 20  # all tokens' bytes together; cl100k's take 0.7 MB, o200k's 1.4 MB

Pair = tuple[int, int]


def check_merges(merges: dict[Pair, int]) -> None:
    """Refuse merges that would spell a token longer than MAX_TOKEN_BYTES, or tokens of more
    than MAX_VOCAB_BYTES together, before any is spelled.

    The lengths add up like the bytes do (a merged token is its two parts side by side), so
    they are known without building a single token.
    """
    length = dict.fromkeys(range(256), 1)
    total = 256
    for (a, b), new_id in sorted(merges.items(), key=lambda item: item[1]):
        length[new_id] = length[a] + length[b]
        total += length[new_id]
        if length[new_id] > MAX_TOKEN_BYTES:
            raise ValueError(f"merge {new_id} would spell a token longer than "
                             f"{MAX_TOKEN_BYTES} bytes")
        if total > MAX_VOCAB_BYTES:  # a thousand long tokens pair up into a million longer ones
            raise ValueError(f"the merges up to {new_id} would spell more than "
                             f"{MAX_VOCAB_BYTES >> 20} MiB of tokens")


def check_split_pattern(pattern: object, known: Mapping[str, str]) -> None:
    """A split pattern read from a file must be one of the ``known`` ones, by exact string.

    A regex is a program: a pattern with nested quantifiers can backtrack for hours on a line
    of ordinary text, and no check of the pattern itself can rule that out. The known ones
    (name -> pattern) use possessive quantifiers that never backtrack."""
    if pattern not in known.values():
        raise ValueError(f"its split pattern {pattern!r:.60} is not one this loader runs "
                         f"({', '.join(known)}): a regex from a file could run for hours on "
                         "ordinary text, so only these are accepted.")


Entries = tuple[str, dict[Pair, int], list[int] | None, dict[str, int]]


def check_tokenizer_dict(d: object, version: int, patterns: Mapping[str, str],
                         read: Callable[[dict], Entries]) -> Entries:
    """``read(d)`` (pattern, merges, byte_order, special_tokens) once ``d`` is safe to use.

    Checked: ``d`` is a dict of ``version``, its pattern is one of ``patterns`` (name ->
    regex), at most MAX_MERGES merges, each a pair of ids that exist before it (and no pair
    twice), byte_order a permutation of the 256 bytes, and special ids that are distinct ints
    after the regular tokens. A missing or wrongly typed entry is one ValueError too.
    """
    if not isinstance(d, dict) or d.get("version") != version:
        raise ValueError(f"the tokenizer is missing or is not a version-{version} "
                         "tokenizer dict.")
    with one_sentence(ValueError, {
            KeyError: lambda e: f"the tokenizer has no '{e.args[0]}' entry.",
            (TypeError, AttributeError): lambda e: f"a tokenizer entry has the wrong type ({e})."}):
        check_split_pattern(d["pattern"], patterns)
        if len(d["merges"]) > MAX_MERGES:
            raise ValueError(f"{len(d['merges']):,} merges is more than the {MAX_MERGES:,} "
                             "this loader accepts")
        pattern, merges, byte_order, special_tokens = read(d)
        if len(merges) != len(d["merges"]):
            raise ValueError("a merge is listed twice; each pair is merged once")
        if not all(0 <= a < new_id and 0 <= b < new_id for (a, b), new_id in merges.items()):
            raise ValueError("a merge refers to a token that does not exist yet")
        if byte_order is not None and sorted(byte_order) != list(range(256)):
            raise ValueError("byte_order must be a permutation of 0..255")
    ids, first = list(special_tokens.values()), 256 + len(merges)  # 256 bytes + merges
    after_merges = Range(at_least=first, whole=True)
    if not all(after_merges.holds(i) for i in ids) or len(set(ids)) != len(ids):
        raise ValueError(f"special token ids must be distinct ints >= {first}, so that they "
                         "do not collide with the bytes and merges.")
    return pattern, merges, byte_order, special_tokens


@contextmanager
def tokenizer_file(path: str | Path) -> Iterator[object]:
    """The JSON content of a tokenizer file; any ValueError while it is used names the file.

        with tokenizer_file(path) as d:
            return BPETokenizer.from_dict(d)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} does not exist.")
    invalid = f"tokenizer file {path} is not a valid tokenizer:"
    with one_sentence(ValueError, {
            (ValueError, UnicodeDecodeError): lambda e: f"{invalid} {e}",  # JSONDecodeError too
            KeyError: lambda e: f"{invalid} it has no {e.args[0]!r:.60} entry.",  # a foreign file
            (TypeError, AttributeError, IndexError): lambda e: (
                f"{invalid} an entry has the wrong type ({e})."),
            RecursionError: lambda _: f"{invalid} it nests too deeply."}):
        yield json.loads(path.read_text(encoding="utf-8"))


def check_rank_table(ranks: dict[bytes, int], by_rank: list[bytes],
                     parts: dict[bytes, list[bytes]]) -> None:
    """A tiktoken rank table is BPE: the 256 single bytes at ranks 0-255, the merged tokens
    after them without gaps, and each merged token (in `parts`, as BPE with only the lower
    ranks split it) a merge of exactly two lower-ranked tokens."""
    if ([ranks[t] for t in by_rank] != list(range(len(by_rank)))
            or sorted(by_rank[:256]) != [bytes([b]) for b in range(256)]):
        raise ValueError("rank table must hold the 256 single bytes at ranks 0-255 and the "
                         "merged tokens at the ranks after them, without gaps.")
    for token, two in parts.items():
        if len(two) != 2:
            raise ValueError(f"token {token!r} (rank {ranks[token]}) is not a merge of two "
                             f"lower-ranked tokens, so this is not a BPE rank table.")


# ---------------------------------------------------------------------------- Hugging Face

TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")  # one function, three names


def check_exportable(kind: str | None, kinds: list[str], path: str | Path) -> None:
    """One sentence for a checkpoint kind export_hf.py has no loader for."""
    if kind not in kinds:
        raise CheckpointError(f"{path} holds a '{kind}' model; export_hf.py exports "
                              f"{', '.join(kinds)} checkpoints.")


def read_gpt2_config(folder: Path) -> dict:
    """config.json's settings, once they are JSON, sizes we can build and a GPT-2 we compute
    exactly; else one sentence naming the file and its key."""
    path = folder / "config.json"
    with one_sentence(CheckpointError, {(ValueError, UnicodeDecodeError, RecursionError):
                                        lambda e: f"{path} is not a valid JSON file ({e})."}):
        config = json.loads(path.read_text(encoding="utf-8"))
    check_gpt_config(config, str(path), HF_SIZES)
    check_gpt2_config(config, folder)
    return config


def read_weights(path: Path, to_ours: Callable[[dict], dict[str, torch.Tensor]]
                 ) -> dict[str, torch.Tensor]:
    """The safetensors file's tensors under our names (``to_ours``), checked as our own
    checkpoints' are (finite floats that the file's bytes back)."""
    with one_sentence(CheckpointError, {(SafetensorError, OSError, ValueError):  # truncated, ...
                                        lambda e: f"{path} is corrupted or not a safetensors "
                                                  f"file ({e})."}):
        state = to_ours(load_file(path))
    check_weights({k: v for k, v in state.items() if v is not None}, path, path.stat().st_size)
    return state


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
