"""A sentiment classifier on top of the GPT body, its text normalization and its checkpoints.

``GPTClassifier`` = the pretrained ``GPTModel`` (its transformer, without using the LM head)
plus ``head``, one ``nn.Linear(n_embd, num_classes)``.

Pooling: the last real token. In a causal model token t only sees tokens <= t, so the last
token is the only position whose hidden state has read the whole sentence; that is what
causal-LM classifiers (GPT-1, Hugging Face's GPTForSequenceClassification) feed to the head.
Every sequence ends with ``<|endoftext|>``, so the pooled position is always the same token,
whatever the sentence's last word is, and an empty text is just that one token. Batches are
right-padded (``data_utils.pad_batch``) and the lengths say where the last real token is;
pad tokens sit *after* it, and causal attention never looks forward, so padding cannot change
a prediction (tests/test_classifier.py checks 0 vs 5 pad tokens give the same logits).

Text that is longer than the context window keeps its *end*: the last ``context_length``
tokens, which still end in ``<|endoftext|>``. Reviews tend to close with their verdict
("... but it is a bore"), and the pooled last token reads exactly that part.

SST-2 is lowercased and tokenized Penn-Treebank style (``does n't``, ``it 's``, ``( really )``,
``` `` quoted '' ```), so ``normalize_text`` rewrites user text the same way before it is
encoded: the model then sees the kind of token sequences it was finetuned on.

Checkpoints (``checkpoint.py``'s format) come in two kinds:

- ``"classifier"``: the whole classifier state, from full finetuning.
- ``"lora-classifier"``: only the LoRA A / B tensors and the head, plus the LoRA settings and
  the base model's ``weights_fingerprint`` and path. It is small, and ``load_classifier``
  refuses to put it on top of a different base model.

``load_classifier`` reads either kind (a LoRA file through ``lora.load_adapters``) and
``predict`` classifies one text; the app uses both.

Training it: ``classification_loss`` is the ``loss_fn`` that ``training.train_model`` calls
(cross-entropy of the class logits), ``evaluate_accuracy`` the share of sentences it gets
right; finetune_classifier.py and finetune_lora_classifier.py use both.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from checkpoint import config_and_tokenizer, make_checkpoint, read_checkpoint
from lora import apply_lora, freeze_all_but_lora, load_adapters, lora_state_dict
from model import GPTModel
from support.checks import check_text
from support.file_checks import check_metadata, checkpoint_metadata, load_weights
from support.files import atomic_save
from tokenizer import BPETokenizer

LABELS = ("negative", "positive")  # SST-2: label 0, label 1

# ---------------------------------------------------------------------------- the model


class GPTClassifier(nn.Module):
    """A GPT body whose last real token's hidden state goes through a linear head."""

    def __init__(self, gpt: GPTModel, labels: tuple[str, ...] = LABELS):
        super().__init__()
        self.gpt = gpt
        self.labels = tuple(labels)
        self.head = nn.Linear(gpt.config.n_embd, len(labels))
        nn.init.normal_(self.head.weight, mean=0.0, std=0.02)  # GPT's init: starts near 50/50
        nn.init.zeros_(self.head.bias)

    @property
    def config(self):
        return self.gpt.config

    def forward(self, idx: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits [B, num_classes] for right-padded ids [B, T] with real lengths [B]."""
        hidden, _ = self.gpt.hidden_states(idx)  # [B, T, n_embd]
        if lengths is None:  # no padding: every row is full
            lengths = torch.full((idx.size(0),), idx.size(1), device=idx.device)
        last = (lengths - 1).clamp(min=0).to(idx.device)
        pooled = hidden[torch.arange(idx.size(0), device=idx.device), last]  # [B, n_embd]
        return self.head(pooled)


# ---------------------------------------------------------------------------- text


_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "no", "bros", "co",
                  "al"}


def _split_period(match: re.Match) -> str:
    """'end.' -> 'end .', but 'mr.', 'u.s.' and 'j.' keep their period (as in SST-2)."""
    word = match.group(1)
    if word in _ABBREVIATIONS or "." in word or (len(word) == 1 and word.isalpha()):
        return word + "."
    return word + " ."


def normalize_text(text: str) -> str:
    """Lowercase and tokenize ``text`` the way SST-2's sentences are written.

    >>> normalize_text("I don't like it (really)!")
    "i do n't like it ( really ) !"

    Clitics split off (``ca n't``, ``wo n't``, ``it 's``, ``you 're``, ``can not``,
    ``gon na``), punctuation stands alone (``, . ! ? ; : ( ) ... --``), double quotes
    become `` and '', curly quotes and other compatibility characters become plain ones.
    Hyphenated words, abbreviations (``mr.``) and numbers (``1.8``, ``1,000``) stay whole.
    This GLUE copy of SST-2 writes parentheses as ``(`` and ``)``, not PTB's ``-lrb-`` /
    ``-rrb-``, so neither does this function. Emoji and other symbols pass through unchanged.
    """
    text = unicodedata.normalize("NFKC", text)  # fullwidth letters, '…' -> '...', ligatures
    text = text.translate({0x2018: "'", 0x2019: "'", 0x201C: '"', 0x201D: '"',
                           0x2013: "-", 0x2014: " -- "})
    text = text.lower()
    # Double quotes: opening `` at the start or after a space / bracket, closing '' otherwise.
    text = re.sub(r'(^|(?<=[\s(\[{]))"', " `` ", text)
    text = text.replace('"', " '' ")
    # Runs of dots and dashes are tokens of their own.
    text = re.sub(r"\.{2,}", lambda m: " ... " if len(m.group()) == 3 else f" {m.group()} ", text)
    text = re.sub(r"-{2,}", " -- ", text)
    # Commas and colons split off unless they sit inside a number (1,000  10:30).
    text = re.sub(r"(?<!\d)([,:])|([,:])(?!\d)", r" \1\2 ", text)
    text = re.sub(r"([!?]+|[;()\[\]{}$%#])", r" \1 ", text)  # but writer/director, r&d stay
    # Clitics: don't -> do n't, can't -> ca n't, it's -> it 's, we'll -> we 'll.
    text = re.sub(r"(\w)n't\b", r"\1 n't", text)
    text = re.sub(r"(\w)('s|'re|'ve|'ll|'d|'m)\b", r"\1 \2", text)
    text = re.sub(r"\b(can)(not)\b|\b(gon|wan)(na)\b|\b(got)(ta)\b", r"\1\3\5 \2\4\6", text)
    text = re.sub(r"(?<=\w)(?<!'n)'(?=\s|$)", " '", text)  # actors' -> actors ', not rock 'n'
    # A period that ends a word (not a number's or an abbreviation's) is its own token.
    text = re.sub(r"(\S+)\.(?=\s|$)", _split_period, text)
    return " ".join(text.split())


def encode_text(tokenizer: BPETokenizer, text: str, context_length: int) -> list[int]:
    """Ids of the normalized text plus <|endoftext|>, cut to the last ``context_length``.

    Used for training data and for ``predict`` alike, so both see identical sequences.
    Only the tail of a huge text is normalized and encoded, since the rest would be cut
    anyway: 16 characters per token is far more than BPE tokens hold on average (about 4),
    so the tail still fills the window.
    """
    text = text[-16 * context_length :]
    ids = tokenizer.encode(normalize_text(text)) + [tokenizer.eot_id]
    return ids[-context_length:]


@torch.no_grad()
def predict(model: GPTClassifier, tokenizer: BPETokenizer, text: str
            ) -> tuple[str, dict[str, float]]:
    """(label, {label: probability}) for one text. Any string works: "", emoji, a whole novel.

    The model is switched to eval mode (no dropout), so the answer is deterministic.
    """
    check_text(text, "predict needs text")  # the app hands over whatever it was given
    model.eval()
    device = next(model.parameters()).device
    ids = encode_text(tokenizer, text, model.config.context_length)
    logits = model(torch.tensor([ids], device=device))[0].float()
    probs = torch.softmax(logits, dim=-1).tolist()
    label = model.labels[int(torch.argmax(logits))]
    return label, dict(zip(model.labels, probs, strict=True))


# ---------------------------------------------------------------------------- checkpoints


def save_classifier(path: str | Path, model: GPTClassifier, tokenizer: BPETokenizer,
                    **metadata: Any) -> None:
    """Save a fully finetuned classifier: every weight, the labels and ``metadata``."""
    atomic_save(make_checkpoint("classifier", model.state_dict(), model.config, tokenizer,
                                labels=list(model.labels), **metadata), path)


def save_lora_classifier(path: str | Path, model: GPTClassifier, tokenizer: BPETokenizer,
                         base_path: str | Path, base_fingerprint: str, lora: dict,
                         **metadata: Any) -> None:
    """Save only the adapters and the head, with what it takes to find and check the base.

    ``lora`` is the settings apply_lora was called with: {"r", "alpha", "dropout", "targets"}.
    ``base_fingerprint`` is ``weights_fingerprint`` of the base GPTModel's state_dict.
    """
    state = {**lora_state_dict(model),
             **{f"head.{k}": v for k, v in model.head.state_dict().items()}}
    atomic_save(make_checkpoint("lora-classifier", state, model.config, tokenizer,
                                labels=list(model.labels), base_path=str(base_path),
                                base_fingerprint=base_fingerprint,
                                lora={**lora, "targets": list(lora["targets"])}, **metadata),
                path)


def load_classifier(path: str | Path, base: str | Path | None = None,
                    map_location: str | torch.device = "cpu"
                    ) -> tuple[GPTClassifier, BPETokenizer, dict]:
    """Rebuild (classifier, tokenizer, metadata) from either checkpoint kind, in eval mode.

    A LoRA checkpoint needs its base model: ``base`` when given, else the path it was trained
    from (``metadata["base_path"]``). A base whose weights differ from the ones the adapters
    were trained on raises CheckpointError.
    """
    ckpt = read_checkpoint(path, kind=("classifier", "lora-classifier"),
                           missing_hint="run python finetune_classifier.py (or "
                           "finetune_lora_classifier.py) first")
    meta = checkpoint_metadata(ckpt, path)
    labels = meta.get("labels", LABELS)
    head = ckpt["state_dict"].get("head.weight")  # one row per label: the file backs the head
    check_metadata(path, "labels", labels, isinstance(labels, list | tuple) and len(labels) > 1
                   and all(isinstance(label, str) for label in labels)
                   and isinstance(head, torch.Tensor) and head.shape[:1] == (len(labels),),
                   "its classification head must hold one row per label; make the file again "
                   "with the script that wrote it")
    if ckpt["kind"] == "classifier":
        config, tokenizer = config_and_tokenizer(ckpt, path, weights_prefix="gpt.")
        model = GPTClassifier(GPTModel(config), tuple(labels))
        load_weights(model, ckpt["state_dict"], path)
    else:
        model, tokenizer = _load_lora_classifier(ckpt, path, base, tuple(labels))
    return model.to(map_location).eval(), tokenizer, meta


def _load_lora_classifier(ckpt: dict, path: str | Path, base: str | Path | None,
                          labels: tuple[str, ...]) -> tuple[GPTClassifier, BPETokenizer]:
    def adapt(gpt: GPTModel, lora: dict) -> GPTClassifier:  # as finetune_lora_classifier.py
        model = GPTClassifier(gpt, labels)
        apply_lora(model.gpt, r=lora["r"], alpha=lora["alpha"],
                   dropout=lora.get("dropout", 0.0), targets=lora["targets"])
        return freeze_all_but_lora(model, trainable_extra=("head",))
    return load_adapters(ckpt, path, base, adapt)


# ---------------------------------------------------------------------------- training


def classification_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Cross-entropy of the class logits (the ``loss_fn`` that train_model calls)."""
    ids, lengths, labels = batch
    return F.cross_entropy(model(ids, lengths).float(), labels)


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, loader: DataLoader) -> float:
    """Share of sentences in ``loader`` whose highest-scoring class is the label."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    for ids, lengths, labels in loader:
        logits = model(ids.to(device), lengths.to(device))
        correct += (logits.argmax(dim=-1).cpu() == labels).sum().item()
        total += len(labels)
    model.train(was_training)
    return correct / max(total, 1)
