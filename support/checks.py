"""Edge checks: one clear sentence for every setting a chapter function cannot use.

The chapters trust their callers; their entry points call one checker from here. Each range
rule is written once, as a ``Range``: a checker tests a value against it with ``need``, and
support/cli.py's flag types parse a flag's text against the same rule. A message a user can
meet from the command line names the flag they typed (``--top-k``), and, where the same value
can also come from a file or from Python, the field as well.
"""

from __future__ import annotations

import errno
import math
import operator
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from support.errors import DataFileError, DataMissingError, one_sentence


def is_int(value: Any) -> bool:
    """A whole number, and not a bool (which Python counts as an int)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A real int or float (a bool is not a number here, though Python says it is an int)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


# ---------------------------------------------------------------------------- range rules

BOUNDS = (("at_least", ">=", operator.ge), ("above", ">", operator.gt),
          ("at_most", "<=", operator.le), ("below", "<", operator.lt))


@dataclass(frozen=True)
class Range:
    """One range rule: an integer (``whole``) or a finite number, within the bounds given
    (each optional). ``str(rule)`` says it as the flag types do: "an integer >= 1"."""

    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    below: float | None = None
    whole: bool = False

    def bounds(self) -> list[tuple[float, str, Any]]:
        """(limit, sign, test) of each bound the rule sets."""
        return [(getattr(self, field), sign, test) for field, sign, test in BOUNDS
                if getattr(self, field) is not None]

    def holds(self, value: Any) -> bool:
        # an int is always finite; math.isfinite would overflow on one past a float's range
        kind = is_int(value) if self.whole else \
            is_number(value) and (isinstance(value, int) or math.isfinite(value))
        return kind and all(test(value, limit) for limit, _, test in self.bounds())

    def __str__(self) -> str:
        limits = " and ".join(f"{sign} {limit:g}" if isinstance(limit, float) else
                              f"{sign} {limit}" for limit, sign, _ in self.bounds())
        return f"{'an integer' if self.whole else 'a finite number'} {limits}".rstrip()


POSITIVE_INT = Range(at_least=1, whole=True)
NONNEGATIVE_INT = Range(at_least=0, whole=True)
POSITIVE = Range(above=0)
NONNEGATIVE = Range(at_least=0)
FRACTION = Range(at_least=0, below=1)  # a dropout probability


def need(value: Any, rule: Range, complaint: str) -> None:
    """``value`` obeys ``rule``; else ValueError "<complaint>, got <value>."."""
    if not rule.holds(value):
        raise ValueError(f"{complaint}, got {value!r}.")


def check_text(value: Any, complaint: str) -> None:
    """``value`` must be a str: else "<complaint>, got <type>." (the app passes what it gets)."""
    if not isinstance(value, str):
        raise ValueError(f"{complaint}, got {type(value).__name__}.")


# ---------------------------------------------------------------------------- tokenizer


def check_training_args(text: Any, vocab_size: Any, special_tokens: Iterable[str]) -> list[str]:
    """BPETokenizer.train's arguments; the special tokens as a list."""
    check_text(text, "train() needs the corpus as a str")
    if not text:
        raise ValueError("train() got an empty corpus; there is nothing to learn merges from.")
    specials = list(special_tokens)
    if len(set(specials)) != len(specials) or not all(s and isinstance(s, str) for s in specials):
        raise ValueError(f"special tokens must be distinct non-empty strings, got {specials}.")
    need(vocab_size, Range(at_least=256 + len(specials), whole=True),
         f"vocab_size must be an int >= 256 bytes + {len(specials)} special tokens = "
         f"{256 + len(specials)}")
    return specials


def check_encode_args(text: Any, allowed: set[str], special_tokens: dict[str, int]) -> None:
    """`encode` got a str, and the special tokens it may produce are ones this tokenizer has."""
    check_text(text, "encode() needs a str")
    if unknown := allowed - set(special_tokens):
        raise ValueError(f"unknown special tokens {sorted(unknown)}; this tokenizer has "
                         f"{sorted(special_tokens)}.")


def check_token_id(token_id: Any, vocab: dict[int, bytes], special_tokens: dict[str, int]) -> int:
    """`token_id` as an int that names a token (a regular one or a special one)."""
    try:  # a 0-d tensor hashes by identity, so `in vocab` needs its int value
        token_id = operator.index(token_id)
    except TypeError:  # (not one_sentence: decode calls this once per token, it must be cheap)
        raise ValueError(f"token ids must be integers, got {token_id!r}.") from None
    if token_id not in vocab and token_id not in special_tokens.values():
        size = max([len(vocab) - 1, *special_tokens.values()]) + 1
        raise ValueError(f"unknown token id {token_id!r}: this tokenizer's ids are 0.."
                         f"{size - 1}.")
    return token_id


# ---------------------------------------------------------------------------- generation

MAX_NEW_TOKENS = 100_000  # about an hour on a CPU; the sequence and its cache grow with it
MAX_TEMPERATURE = 100.0  # far past this, logits / temperature overflow float32 (NaN probabilities)
NEW_TOKENS = Range(at_least=0, at_most=MAX_NEW_TOKENS, whole=True)
TEMPERATURE = Range(at_least=0, at_most=MAX_TEMPERATURE)
TOP_K = Range(at_least=1, whole=True)
TOP_P = Range(above=0, at_most=1)


def check_sampling(max_new_tokens: Any, temperature: Any, top_k: Any, top_p: Any,
                   prompt_tokens: int = 1) -> None:
    """The sampling settings of generation.generate_ids (flags of the same names)."""
    need(max_new_tokens, NEW_TOKENS,
         f"--max-new-tokens must be an integer from 0 to {MAX_NEW_TOKENS:,}")
    need(temperature, TEMPERATURE, f"--temperature must be a number from 0 to "
         f"{MAX_TEMPERATURE:g} (0 means greedy; above 2 the text is mostly noise)")
    for value, rule, complaint in ((top_k, TOP_K, "--top-k must be an integer >= 1"),
                                   (top_p, TOP_P, "--top-p must be in (0, 1]")):
        if value is not None:
            need(value, rule, f"{complaint} (or unset)")
    if prompt_tokens < 1:
        raise ValueError("generate_ids needs at least one prompt token.")


def check_logits(logits: torch.Tensor) -> None:
    """The model's next-token scores are numbers: NaN or inf weights make them NaN, and there is
    nothing to sample from (torch.multinomial's "probability tensor contains inf, nan")."""
    if not torch.isfinite(logits).all():
        raise ValueError("The model's next-token scores are NaN or infinite, so nothing can be "
                         "sampled: its weights are not all numbers (a training run that "
                         "diverged?); use a checkpoint whose training loss stayed finite.")


def check_prompt(prompt: Any, max_chars: int, can_start_empty: bool) -> None:
    """A prompt is text of at most ``max_chars``; an empty one needs a start token."""
    check_text(prompt, "The prompt must be text")
    if len(prompt) > max_chars:
        raise ValueError(f"The prompt has {len(prompt):,} characters; the limit is "
                         f"{max_chars:,}. Shorten it.")
    if not prompt and not can_start_empty:
        raise ValueError("This tokenizer has no <|endoftext|> token to start from, so give a "
                         "non-empty prompt.")


# ---------------------------------------------------------------------------- model


def check_model_config(sizes: dict[str, Any], n_embd: int, n_head: int, dropout: Any) -> None:
    """GPTConfig's fields. ``sizes`` maps each integer field (main.py's flag of the same name
    with dashes) to its value; a float such as 8.0 would only fail deep inside nn.Embedding."""
    for name, value in sizes.items():
        flag = "--" + name.replace("_", "-")
        need(value, Range(whole=True), f"{name} must be an integer ({flag})")
        need(value, POSITIVE_INT, f"{name} must be a positive integer ({flag})")
    if n_embd % n_head != 0:
        raise ValueError(f"n_embd ({n_embd}, --n-embd) must be divisible by n_head ({n_head}, "
                         "--n-head).")
    need(dropout, FRACTION, "dropout must be in [0, 1) (--dropout)")


def check_model_fits(config: Any, device: torch.device) -> None:
    """One sentence, before any allocation, for a model whose training cannot fit in
    ``device``'s memory (``--n-embd 65536`` ended in an allocator traceback). ``config`` is a
    GPTConfig: 12 d^2 weights per block plus the token and position tables; training holds
    four float32 copies of each (weights, gradients, AdamW's two moments)."""
    d = config.n_embd
    weights = config.n_layer * 12 * d * d + (config.vocab_size + config.context_length) * d
    try:
        memory = torch.cuda.get_device_properties(device).total_memory \
            if device.type == "cuda" else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): no way to tell
        return
    if 16 * weights > memory:
        raise ValueError(f"A model of {weights / 1e6:,.0f} M parameters (--n-layer "
                         f"{config.n_layer}, --n-embd {d}, --vocab-size {config.vocab_size}, "
                         f"--context-length {config.context_length}) needs about "
                         f"{16 * weights / 2**30:,.0f} GiB to train, and {device} has "
                         f"{memory / 2**30:,.0f} GiB; make it smaller.")


# ---------------------------------------------------------------------------- training

TRAINING = (  # (fields, their rule, what the sentence says they must be)
    (("grad_accum_steps", "eval_interval", "log_interval", "max_steps"), POSITIVE_INT,
     str(POSITIVE_INT)),
    (("warmup_steps", "checkpoint_interval"), NONNEGATIVE_INT, str(NONNEGATIVE_INT)),
    (("learning_rate", "muon_lr"), POSITIVE, "positive"),
    (("min_lr", "weight_decay", "grad_clip"), NONNEGATIVE, ">= 0"),
)


def check_train_config(values: dict[str, Any]) -> None:
    """One sentence for a training setting that would otherwise fail later, confusingly.

    Left to the loop, these were a ZeroDivisionError mid-run or a "finished" run that never saw
    a batch (grad_accum_steps=0). The names are the fields' own: a script's flags are parsed
    against the same rules (support/cli.py), so this catches programs and resume files.
    """
    for names, rule, words in TRAINING:
        for name in names:
            need(values[name], rule, f"{name} must be {words}")
    if values["optimizer"] not in ("adamw", "muon"):
        raise ValueError(f"Unknown optimizer '{values['optimizer']}'; use adamw or muon.")


# ---------------------------------------------------------------------------- splits & batches


def check_test_split(test_fraction: float, n_test: int, n_records: int, path: Path) -> None:
    need(test_fraction, FRACTION, "test_fraction must be in [0, 1)")
    if n_test >= n_records:
        raise DataFileError(f"{path} has only {n_records} records, too few for a train/test split.")


def check_windows(n_tokens: int, context_length: Any, stride: Any) -> None:
    """Window sizes are positive integers, and the tokens fill at least one window."""
    for name, value in (("context_length", context_length), ("stride", stride)):
        need(value, POSITIVE_INT, f"{name} must be {POSITIVE_INT}")
    # the last window needs context_length inputs plus one more token as its final target
    if n_tokens < context_length + 1:
        raise ValueError(
            f"Need at least context_length + 1 = {context_length + 1} tokens for one "
            f"(input, target) window, got {n_tokens}."
        )


def check_loader(n_tokens: int, sampler: Any, batch_size: Any, num_workers: Any,
                 drop_last: bool) -> None:
    """The batch size, workers and DDP rank are usable, and each rank gets one full batch."""
    for name, value, rule in (("batch_size", batch_size, POSITIVE_INT),
                              ("world_size", sampler.world_size, POSITIVE_INT),
                              ("num_workers", num_workers, NONNEGATIVE_INT)):
        need(value, rule, f"{name} must be {rule}")
    need(sampler.rank, Range(at_least=0, below=sampler.world_size, whole=True),
         f"rank must be in [0, {sampler.world_size})")
    if len(sampler) == 0 or (drop_last and len(sampler) < batch_size):
        raise ValueError(
            f"{n_tokens} tokens give {len(sampler)} windows per rank, not enough for one batch "
            f"of {batch_size}{' with drop_last=True' if drop_last else ''}: use fewer ranks, a "
            "smaller batch_size, context_length or stride, or more tokens."
        )


def check_batches(per_epoch: int, n_windows: int, batch_size: int, world_size: int) -> None:
    if per_epoch < 1:
        raise ValueError(f"The training split holds {n_windows} windows, not enough for one "
                         f"batch of {batch_size} per process ({world_size} processes); use "
                         "more text or a smaller --batch-size or --context-length.")


def check_example_loader(n_examples: int, batch_size: int, training: bool, unit: str,
                         too_few: str) -> None:
    """data_utils.example_loader: a batch size, and enough training examples for one batch."""
    need(batch_size, POSITIVE_INT, "--batch-size must be at least 1")
    if training and n_examples < batch_size:
        raise ValueError(f"{n_examples} training {unit} cannot fill one batch of "
                         f"{batch_size}; {too_few} or a smaller --batch-size.")


# ---------------------------------------------------------------------------- LoRA


def check_lora_layer(layer_name: str, in_features: Any, out_features: Any, r: Any, alpha: Any,
                     dropout: Any, already_wrapped: bool) -> None:
    """What LoRALayer needs: a linear-like layer not yet wrapped, and usable --rank / --alpha /
    --dropout (the rules the flags of the same names are parsed with)."""
    if already_wrapped:
        raise ValueError("this layer already has a LoRA adapter; do not wrap it twice.")
    if not is_int(in_features) or not is_int(out_features):
        raise ValueError(f"LoRA wraps linear layers with in_features/out_features, "
                         f"got {layer_name}.")
    need(r, POSITIVE_INT, "LoRA rank r (--rank) must be a positive integer")
    if r > min(in_features, out_features):  # B A has rank <= min(in, out): more costs memory
        raise ValueError(f"LoRA rank r (--rank) must be at most {min(in_features, out_features)}"
                         f", the smaller side of the {in_features} x {out_features} {layer_name} "
                         f"it adapts, got {r:,}.")
    need(alpha, POSITIVE, "LoRA alpha must be positive (--alpha)")  # 0 would silence the adapters
    need(dropout, FRACTION, "LoRA dropout must be in [0, 1) (--dropout)")


def check_targets(targets: Sequence[str], found: bool, dense_lora: Sequence[str] = ()) -> None:
    """Layer names for apply_lora / quantize_model: at least one, and present in the model.

    ``dense_lora`` names LoRA-wrapped dense layers met by quantize_model: quantizing under an
    adapter would silently change what the adapter was trained on.
    """
    if not targets:
        raise ValueError("apply_lora needs at least one target module name (--targets).")
    if not found:
        raise ValueError(f"no module named any of {list(targets)} found in the model.")
    if dense_lora:
        raise ValueError(f"{dense_lora[0]} already has a LoRA adapter on a dense weight; "
                         "call quantize_model before apply_lora.")


def check_trainable(has_lora: bool, unmatched_extras: Iterable[str]) -> None:
    """freeze_all_but_lora: there are adapters to train, and every extra name matched."""
    if not has_lora:
        raise ValueError("the model has no LoRA layers; call apply_lora first.")
    if missing := sorted(unmatched_extras):
        raise ValueError(f"trainable_extra names match no parameters: {missing}.")


def check_mergeable(layer_name: str, mergeable: bool) -> None:
    """A LoRA update can only be folded into a dense float weight."""
    if not mergeable:
        raise ValueError(f"cannot merge LoRA into a quantized {layer_name}: its weight is "
                         "stored in 4 bits; keep the adapter separate (or merge into a dense "
                         "copy).")


# ---------------------------------------------------------------------------- quantization


def check_quantizable(weight: Any, blocksize: Any) -> None:
    """quantize_nf4's input: a non-empty finite float tensor and a positive block size."""
    if not isinstance(weight, torch.Tensor) or not weight.dtype.is_floating_point:
        found = weight.dtype if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"can only quantize a floating-point tensor, got {found}.")
    if weight.numel() == 0:
        raise ValueError("cannot quantize an empty tensor.")
    need(blocksize, POSITIVE_INT, "blocksize must be a positive integer")
    if weight.device.type != "meta" and not torch.isfinite(weight).all():  # meta: no values
        raise ValueError("cannot quantize a tensor that contains NaN or inf.")


def check_quantize_request(backend: Any, backends: Sequence[str], targets: Sequence[str],
                           found: bool, dense_lora: Sequence[str]) -> None:
    """quantize_model's request: a known --backend, and targets as check_targets wants them."""
    if backend not in backends:
        raise ValueError(f"backend (--backend) must be one of {tuple(backends)}, "
                         f"got {backend!r}.")
    check_targets(targets, found, dense_lora)


# ---------------------------------------------------------------------------- token files


def check_one_source(text: list[str] | None, hf_dataset: str | None) -> None:
    """corpus.corpus_from_args: --text or --hf-dataset, never both."""
    if text and hf_dataset:
        raise ValueError("Give --text or --hf-dataset, not both.")


def check_text_files(given: str, root: Path, files: list[Path], include: str) -> None:
    """A --text path exists and, when it is a folder, holds files --include matches."""
    if not root.exists():
        raise DataMissingError(f"--text {given}: no such file or folder.")
    if root.is_dir() and not files:
        what = ("is an empty folder" if not any(root.iterdir()) else
                f"holds no file matching --include {include}")
        raise DataMissingError(f"--text {given} {what}; point it at text files or "
                               "change --include.")


def check_some_text(paths: list[str], n_files: int, skipped: list[tuple[str, str]]) -> None:
    """At least one of the --text files is UTF-8 text (``skipped``: (file, why) of the rest)."""
    if n_files == len(skipped):
        raise DataFileError(f"--text {' '.join(paths)}: none of its {n_files} files is UTF-8 "
                            f"text (e.g. {skipped[0][0]}: {skipped[0][1]}).")


def check_split_by_document(label: str, n_docs: int, nanogpt: bool) -> None:
    """Several documents split by document: never with --nanogpt-split, and three at least."""
    if nanogpt:
        raise DataFileError(f"--nanogpt-split cuts one text by characters, and "
                            f"{label} holds {n_docs} documents; leave it out.")
    if n_docs < 3:
        raise DataFileError(f"{label} holds {n_docs} readable documents: too few "
                            "for train, val and test splits by document; give one file "
                            "(split by characters) or at least three.")


def check_hf_field(name: str, field: str, row: dict) -> None:
    """The --hf-field a streamed dataset's rows hold their text in."""
    if field not in row:
        raise DataFileError(f"--hf-dataset {name} has no field '{field}' (it has "
                            f"{', '.join(row)}); name the text field with --hf-field.")


def hf_dataset_readable(name: str) -> AbstractContextManager[None]:
    """A dataset that cannot be reached or read is one sentence naming --hf-dataset."""
    return one_sentence(DataMissingError, {(ConnectionError, OSError): lambda err: (
        f"--hf-dataset {name} could not be read ({err}).")})


def check_unchanged(path: str, text: str | None, now: tuple[int, int],
                    surveyed: tuple[int, int]) -> None:
    """A text file is still what it was when it was surveyed: (size, modification time)."""
    if text is None or now != surveyed:
        raise DataFileError(f"{path} changed while it was being prepared; run again.")


def check_no_empty_split(counts: dict[str, dict], label: str, rule: str,
                         several: bool) -> None:
    """Every split of a prepared corpus holds tokens (several documents: split by document;
    else one text, split by characters)."""
    empty = [split for split, count in counts.items() if count["tokens"] == 0]
    if empty:
        remedy = "add more documents" if several else "use more text"
        raise DataFileError(f"The {empty[0]} split of {label} came out empty ({rule}); "
                            f"{remedy}.")


@contextmanager
def disk_space_for(folder: Path) -> Iterator[None]:
    """A full disk while token files are written is one sentence; other errors pass."""
    try:
        yield
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        free = shutil.disk_usage(folder).free / 1e6
        raise DataFileError(f"The disk filled up while writing token files to {folder} "
                            f"({free:,.0f} MB free); free some space or pass --prepared-dir "
                            "on another disk.") from None


def check_fills_window(splits: dict[str, dict], context_length: int, label: str) -> None:
    """Every split needed for training holds at least one window (context + 1 tokens)."""
    for split in ("train", "val"):
        tokens = splits[split]["tokens"]
        if tokens < context_length + 1:
            raise DataFileError(f"The {split} split of {label} holds {tokens:,} tokens, fewer "
                                f"than one window of {context_length + 1}; use more text or a "
                                "smaller --context-length.")


def check_vocab_filled(got: int, asked: int, label: str, sample_chars: int) -> None:
    """The tokenizer sample was rich enough to learn the --vocab-size asked for."""
    if got < asked:
        raise DataFileError(f"The {sample_chars:,} characters drawn from {label} fill only "
                            f"{got} of the {asked} tokens of --vocab-size; give a --vocab-size "
                            f"of at most {got}, or more text.")
