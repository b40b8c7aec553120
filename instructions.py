"""Instruction following: the prompt template, response-only targets, QLoRA models, answers.

An instruction-tuned model is an ordinary language model trained on documents of one shape:

    ### Instruction:
    Name three primary colours.

    ### Input:                      <- only when the example has a context
    (the context)

    ### Response:
    Red, yellow and blue.<|endoftext|>

This is the Alpaca template (Taori et al., 2023) without its opening sentence ("Below is an
instruction that describes a task..."): that sentence costs about 45 tokens, a third of the
CPU model's 128-token window, and tells a small model nothing the headers do not. The
template lives here, once: the finetuning script trains on it and the app asks with it.

Training teaches the model to *answer*, not to write instructions, so the loss covers only
the response: every target inside the prompt is -100, which ``F.cross_entropy`` ignores. The
response ends with <|endoftext|>, and that token is a target too, so the model learns when to
stop (generation stops when it samples it).

The prompt and the response are encoded separately and concatenated: at answer time the
prompt is encoded on its own, so training sees exactly the prompt tokens the app will send.

Examples longer than the context window: the whole prompt is kept if it fits, and the
response is cut to the tokens that still fit after it (its start is what teaches the format;
such an example loses its <|endoftext|>). An example whose prompt alone fills more than the
window is dropped. ``encode_examples`` counts both.

QLoRA (Dettmers et al., 2023): the base model's linear layers are frozen in 4-bit NF4
(quantization.py), LoRA adapters (lora.py) sit on top of them, and only the adapters train.
A checkpoint ("qlora-instruct") therefore holds just the adapters, the LoRA settings, the
quantization backend and the base model's identity (path and weights fingerprint): loading
re-quantizes the base, which is deterministic, and refuses a base with other weights (the
loader is lora.load_adapters, the one the LoRA classifier uses too).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from checkpoint import make_checkpoint, read_checkpoint
from data_utils import IGNORE_INDEX, Example, example_loader, pad_inputs_and_targets
from generation import stream_text
from lora import DEFAULT_TARGETS, apply_lora, freeze_all_but_lora, load_adapters, lora_state_dict
from model import GPTModel
from quantization import BACKENDS, dense_state_dict, quantize_model
from support.checks import check_text
from support.file_checks import check_metadata
from support.files import atomic_save
from tokenizer import BPETokenizer

# IGNORE_INDEX = -100 is the target value F.cross_entropy skips (training.lm_loss uses it too).
KIND = "qlora-instruct"  # checkpoint kind of an instruction-tuned adapter file

INSTRUCTION_HEADER = "### Instruction:\n"
INPUT_HEADER = "### Input:\n"
RESPONSE_HEADER = "### Response:\n"
SECTION_SEPARATOR = "\n\n"

# ---------------------------------------------------------------------------- the template


def _text(value: Any, name: str) -> str:
    check_text(value, f"The {name} must be text")  # the app passes what a visitor typed
    return value.strip()


def format_prompt(instruction: str, context: str = "") -> str:
    """The prompt for one request, ending exactly where the response begins.

    >>> format_prompt("Add 2 and 3.")
    '### Instruction:\\nAdd 2 and 3.\\n\\n### Response:\\n'
    """
    sections = [INSTRUCTION_HEADER + _text(instruction, "instruction")]
    context = _text(context, "context")
    if context:  # no empty "### Input:" section: Alpaca's template without input omits it
        sections.append(INPUT_HEADER + context)
    sections.append(RESPONSE_HEADER)
    return SECTION_SEPARATOR.join(sections)


def format_example(record: dict[str, str]) -> str:
    """A whole training document as text (prompt + response), for reading and display."""
    return format_prompt(record["instruction"], record.get("context", "")) + \
        _text(record["response"], "response")


# ---------------------------------------------------------------------------- encoding


@dataclass
class EncodingStats:
    """What happened to the examples when they were fitted into the context window."""

    context_length: int
    whole: int = 0  # prompt and response fit
    truncated: int = 0  # prompt fits, the response was cut to fit
    dropped: int = 0  # the prompt alone is longer than the window

    @property
    def kept(self) -> int:
        return self.whole + self.truncated

    def summary(self) -> str:
        total = self.kept + self.dropped
        return (f"{total:,} examples: {self.whole:,} fit whole, {self.truncated:,} with the "
                f"response cut to fit, {self.dropped:,} dropped (prompt longer than the "
                f"{self.context_length}-token window)")

    def to_dict(self) -> dict[str, int]:
        return {"context_length": self.context_length, "whole": self.whole,
                "truncated": self.truncated, "dropped": self.dropped}


def encode_example(tokenizer: BPETokenizer, record: dict[str, str], context_length: int
                   ) -> tuple[Example | None, bool]:
    """(input ids, targets) for one record and whether its response was cut; None if dropped.

    The token sequence is prompt + response + <|endoftext|>. Inputs are all but its last
    token, targets all but its first (next-token prediction), and targets that are prompt
    tokens become -100. Only the response tokens and <|endoftext|> carry loss.
    """
    prompt = tokenizer.encode(format_prompt(record["instruction"], record.get("context", "")))
    response = tokenizer.encode(_text(record["response"], "response")) + [tokenizer.eot_id]
    if len(prompt) > context_length:
        return None, False
    # The inputs may hold context_length tokens, so the sequence may hold one more.
    room = context_length + 1 - len(prompt)
    truncated = len(response) > room
    ids = prompt + response[:room]
    targets = [IGNORE_INDEX] * (len(prompt) - 1) + ids[len(prompt):]
    return (ids[:-1], targets), truncated


def encode_examples(records: Sequence[dict[str, str]], tokenizer: BPETokenizer,
                    context_length: int) -> tuple[list[Example], EncodingStats]:
    """Encode every record that fits (see encode_example) and count what was cut or dropped."""
    stats = EncodingStats(context_length)
    examples = []
    for record in records:
        example, truncated = encode_example(tokenizer, record, context_length)
        if example is None:
            stats.dropped += 1
            continue
        examples.append(example)
        if truncated:
            stats.truncated += 1
        else:
            stats.whole += 1
    return examples, stats


def instruction_dataloader(examples: list[Example], batch_size: int, pad_id: int,
                           shuffle: bool = True, seed: int = 0, rank: int = 0,
                           world_size: int = 1) -> DataLoader:
    """Batches of (inputs, targets) for ``training.train_model`` with ``lm_loss``.

    Each example is (input ids, targets), equally long; a batch is right-padded, its padded
    targets -100 (``data_utils.pad_inputs_and_targets``). Training batches are shuffled
    anew each epoch, as a pure function of (seed, epoch), so a run is reproducible; evaluation
    batches keep the order and include the last short batch. Under DDP, process ``rank`` of
    ``world_size`` draws from its own share of the examples.
    """
    if not examples:
        raise ValueError("No instruction examples fit the context window; use a base model "
                         "with a longer context (the CPU preset's 128 tokens fit nearly all).")
    return example_loader(examples, batch_size, pad_inputs_and_targets(pad_id), shuffle=shuffle,
                          seed=seed, rank=rank, world_size=world_size)


@torch.no_grad()
def response_loss(model: nn.Module, loader: DataLoader) -> float:
    """Mean cross-entropy per response token (the -100 targets are skipped) over ``loader``.

    Every token weighs the same, however the examples fall into batches; exp() of it is the
    perplexity of the responses.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for inputs, targets in loader:
        logits = model(inputs.to(device))
        targets = targets.to(device)
        total += F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                                 ignore_index=IGNORE_INDEX, reduction="sum").item()
        count += int((targets != IGNORE_INDEX).sum())
    model.train(was_training)
    return total / max(count, 1)  # an evaluation loader always holds response tokens


# ---------------------------------------------------------------------------- QLoRA models


def make_qlora(model: GPTModel, backend: str = "scratch", r: int = 8, alpha: float = 16,
               dropout: float = 0.0, targets: Sequence[str] = DEFAULT_TARGETS) -> GPTModel:
    """Quantize the target linears to NF4 (double quantization on), add LoRA, train only it.

    In place, and idempotent: a second call finds the layers quantized and wrapped already
    and changes nothing (the app caches models and may call it again).
    """
    quantize_model(model, backend=backend, targets=tuple(targets), double_quant=True)
    apply_lora(model, r=r, alpha=alpha, dropout=dropout, targets=tuple(targets))
    freeze_all_but_lora(model)
    return model


def save_instruction_adapters(path: str | Path, model: GPTModel, tokenizer: BPETokenizer, *,
                              base_path: str | Path, base_fingerprint: str, backend: str,
                              lora: dict, **metadata: Any) -> None:
    """Save only the adapters, with what it takes to rebuild and check the 4-bit base.

    ``lora`` holds the make_qlora settings {"r", "alpha", "dropout", "targets"};
    ``base_fingerprint`` is ``weights_fingerprint`` of the dense base model's state_dict.
    """
    atomic_save(make_checkpoint(KIND, lora_state_dict(model), model.config, tokenizer,
                                base_path=str(base_path), base_fingerprint=base_fingerprint,
                                backend=backend, double_quant=True,
                                lora={**lora, "targets": list(lora["targets"])}, **metadata),
                path)


def load_instruction_model(path: str | Path, base: str | Path | None = None,
                           backend: str | None = None, map_location: str | torch.device = "cpu",
                           dense: bool = False) -> tuple[GPTModel, BPETokenizer, dict]:
    """Rebuild (model, tokenizer, metadata) from a "qlora-instruct" checkpoint, in eval mode.

    The base model is ``base`` when given, else the path the adapters were trained on; it is
    quantized again (``backend``, default: the one used in training) on ``map_location`` and
    the adapters are loaded on top. A base whose weights differ from the training base's
    raises CheckpointError; a missing base says to run main.py first. ``dense=True`` returns
    ``inference_model`` of it: for answering only.
    """
    ckpt = read_checkpoint(path, kind=KIND,
                           missing_hint="run python finetune_qlora_instructions.py first")
    meta = ckpt["metadata"]
    if backend is None:
        backend = meta.get("backend")
        check_metadata(path, "backend", backend, backend in BACKENDS)

    def adapt(gpt: GPTModel, lora: dict) -> GPTModel:  # as finetune_qlora_instructions.py
        return make_qlora(gpt.to(map_location), backend, r=lora["r"], alpha=lora["alpha"],
                          dropout=lora.get("dropout", 0.0), targets=lora["targets"])
    model, tokenizer = load_adapters(ckpt, path, base, adapt)
    return (inference_model(model) if dense else model.eval()), tokenizer, meta


def inference_model(model: GPTModel) -> GPTModel:
    """A plain GPTModel, in eval mode, that computes what the QLoRA ``model`` computes.

    Each 4-bit layer of ``model`` unpacks and dequantizes its whole weight in every forward,
    to multiply it with the one new token of a generation step: that made answering about
    five times slower than the base model (benchmarks/bench_app_generation.py). NF4 saves
    memory for *training*; to answer, the dequantized weights plus the merged LoRA update
    (``quantization.dense_state_dict``, the weights the export writes too) are plain ``nn.Linear``
    weights, computed once. The outputs are those of ``model`` up to float rounding
    (W x + B(A x) versus (W + BA) x), the sampled tokens the same in practice (tested); it
    holds fp32 weights, about 8x the 4-bit layers' memory, and cannot be trained as QLoRA.
    """
    device = next(model.parameters()).device
    dense = GPTModel(model.config).to(device)
    dense.load_state_dict(dense_state_dict(model))
    return dense.eval()


# ---------------------------------------------------------------------------- answering


def stream_answer(model: GPTModel, tokenizer: BPETokenizer, instruction: str, context: str = "",
                  max_new_tokens: int = 128, temperature: float = 0.7, top_k: int | None = 40,
                  top_p: float | None = None, seed: int | None = None) -> Iterator[str]:
    """Yield the model's answer to ``instruction`` (with optional ``context``) piece by piece.

    Generation stops at <|endoftext|> or after ``max_new_tokens``. A prompt longer than the
    context window is cut from the left by the generator, so the "### Response:" header and
    the end of the request are what the model sees.
    """
    prompt = format_prompt(instruction, context)
    yield from stream_text(model, tokenizer, prompt, max_new_tokens=max_new_tokens,
                           temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                           stop_at_eot=True)


def answer(model: GPTModel, tokenizer: BPETokenizer, instruction: str, context: str = "",
           max_new_tokens: int = 128, temperature: float = 0.7, top_k: int | None = 40,
           top_p: float | None = None, seed: int | None = None) -> str:
    """The model's whole answer (see stream_answer), without surrounding whitespace."""
    return "".join(stream_answer(model, tokenizer, instruction, context, max_new_tokens,
                                 temperature, top_k, top_p, seed)).strip()


def sample_records(records: list[dict], tokenizer: BPETokenizer, context_length: int, n: int
                   ) -> list[dict]:
    """The first n held-out records whose prompt leaves at least half the window to answer."""
    fits = (r for r in records if len(tokenizer.encode(
        format_prompt(r["instruction"], r["context"]))) <= context_length // 2)
    return list(itertools.islice(fits, n))


def answer_records(model: GPTModel, tokenizer: BPETokenizer, records: list[dict],
                   max_new_tokens: int, seed: int) -> list[str]:
    """The model's answer to each record (``answer``), the same seed for each."""
    return [answer(model, tokenizer, r["instruction"], r["context"],
                   max_new_tokens=max_new_tokens, seed=seed) for r in records]
