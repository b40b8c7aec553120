"""Export a checkpoint of this project as a Hugging Face GPT-2 folder.

    python export_hf.py --out hf-model                                  # main.py's model
    python export_hf.py --checkpoint classifier.pth --out hf-sst2       # full finetune
    python export_hf.py --checkpoint lora_classifier.pth --out hf-sst2-lora
    python export_hf.py --checkpoint qlora_adapters.pth --out hf-instruct

The folder holds config.json, model.safetensors, tokenizer.json (+ tokenizer_config.json),
generation_config.json and a README.md model card, and loads with no code of ours:

    from transformers import AutoTokenizer, GPT2LMHeadModel
    tok = AutoTokenizer.from_pretrained("hf-model")
    model = GPT2LMHeadModel.from_pretrained("hf-model")
    print(tok.decode(model.generate(**tok("ROMEO:", return_tensors="pt"))[0]))

A base model becomes a GPT2LMHeadModel; a classifier (full or LoRA) a
GPT2ForSequenceClassification; QLoRA instruction adapters a GPT2LMHeadModel whose weights are
the dequantized 4-bit base plus the adapters' update, the model they were trained in. LoRA and
QLoRA adapters need their base model: the path stored in the adapter file, or ``--base``.
How each of our tensors and tokenizer tables maps onto GPT-2's is hf_gpt2.py's chapter (the
import); this one writes the other way, for every model the book has made by now.

Our embedding table is rounded up to a multiple of 64 rows (main.py), so the exported model
has those unused rows too: every logit is kept, and ``generation_config.json`` suppresses the
ids no tokenizer entry has, as our ``generate_ids(vocab_size=...)`` does.

Two things a Hugging Face tokenizer does differently: it turns the *text* "<|endoftext|>" in
user input into the special id (our ``encode(..., allowed_special="all")``), and it cannot take
a string holding a lone surrogate, which our tokenizer encodes via "surrogatepass".

Finetuned models go through ``quantization.dense_state_dict`` first: a LoRA layer's weight
becomes W + B A alpha / r (``lora.merge_lora``'s sum), and a QLoRA layer's its dequantized NF4
weight plus the adapter's update, i.e. exactly what the 4-bit model computed with, stored dense.
A classifier becomes ``GPT2ForSequenceClassification``: both pool the last real token (ours
by its length, theirs as the last one that is not the pad id, so the export adds a
``<|pad|>`` id the tokenizer never produces). Its ``score`` layer has no bias; ours does.
Because the pooled vector is ``ln_f``'s output ``gamma * n + beta``, the bias b moves into
``ln_f``'s beta: adding any d with ``W d = b`` (d = pinv(W) b) gives ``W h + b`` exactly, and in
the classifier nothing else reads ``ln_f``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from checkpoint import load_checkpoint, read_checkpoint
from classifier import GPTClassifier, load_classifier
from hf_gpt2 import PAD, POSSESSIVE_COUNT, bytes_to_unicode, hf_name
from instructions import load_instruction_model
from model import GPTConfig, GPTModel
from quantization import dense_state_dict
from support.cli import FlagParser, path_arg, run
from support.file_checks import check_exportable
from support.hub import check_export_folder, publish, staged
from tokenizer import ENDOFTEXT, GPT2_SPLIT_PATTERN, BPETokenizer


def gpt_to_hf_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A plain GPTModel state dict -> GPT-2's tensors (with zero biases if ours have none)."""
    out = {}
    for name, tensor in state.items():
        if name == "lm_head.weight":  # tied: Hugging Face ties it back to wte on loading
            continue
        theirs, transpose = hf_name(name)
        out["transformer." + theirs] = (tensor.T if transpose else tensor).contiguous()
        module = name.rsplit(".", 1)[0]
        if name.endswith(".weight") and module not in ("tok_emb", "pos_emb") \
                and f"{module}.bias" not in state:  # GPTConfig(bias=False): GPT-2 has biases
            bias_name = "transformer." + hf_name(f"{module}.bias")[0]
            out[bias_name] = torch.zeros(tensor.shape[0], dtype=tensor.dtype)
    return out


def classifier_tensors(model: GPTClassifier, pad_id: int) -> dict[str, torch.Tensor]:
    """GPT2ForSequenceClassification's tensors: the body, ``score`` = our head without its bias
    (folded into ln_f's beta, see the module docstring), and a pad row if the table needs one."""
    tensors = gpt_to_hf_state(dense_state_dict(model.gpt))
    weight, bias = model.head.weight.detach().double().cpu(), model.head.bias.detach().double()
    shift = torch.linalg.pinv(weight) @ bias.cpu()  # W @ shift == b (W has full row rank)
    tensors["transformer.ln_f.bias"] = (tensors["transformer.ln_f.bias"].double() + shift).float()
    wte = tensors["transformer.wte.weight"]
    if pad_id >= wte.size(0):  # no unused row: add one (no LM head reads it)
        tensors["transformer.wte.weight"] = torch.cat([wte, wte.new_zeros(1, wte.size(1))])
    tensors["score.weight"] = weight.float().contiguous()
    return tensors


def hf_config(config: GPTConfig, tokenizer: BPETokenizer, vocab_size: int) -> dict:
    """GPT-2's config.json for our GPTConfig."""
    eot = tokenizer.special_tokens.get(ENDOFTEXT)
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": vocab_size, "n_positions": config.context_length,
            "n_embd": config.n_embd, "n_layer": config.n_layer, "n_head": config.n_head,
            "n_inner": None, "activation_function": "gelu_new",  # = F.gelu(approximate="tanh")
            "resid_pdrop": config.dropout, "embd_pdrop": config.dropout,
            "attn_pdrop": config.dropout, "layer_norm_epsilon": 1e-5,
            "initializer_range": 0.02, "scale_attn_weights": True, "use_cache": True,
            "tie_word_embeddings": True, "bos_token_id": eot, "eos_token_id": eot,
            "dtype": "float32"}


def generation_config(tokenizer: BPETokenizer, vocab_size: int, context_length: int) -> dict:
    """Our generate_text's defaults (temperature 0.8, top-k 50, stop at <|endoftext|>), and a
    length transformers can honour: its generate does not slide the window as ours does, so
    past ``context_length`` tokens, prompt included, it would index a position embedding that
    is not there (IndexError). ``max_length`` counts the prompt, so it never gets there."""
    eot = tokenizer.special_tokens.get(ENDOFTEXT)
    return {"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot, "do_sample": True,
            "temperature": 0.8, "top_k": 50, "max_length": context_length,
            "suppress_tokens": list(range(tokenizer.vocab_size, vocab_size)) or None}


def token_string(data: bytes, table: dict[int, str]) -> str:
    return "".join(table[b] for b in data)


def tokenizer_json(tokenizer: BPETokenizer, post_eot: bool = False, pad_id: int | None = None
                   ) -> dict:
    """The ``tokenizers`` library's file for our tokenizer (see the module docstring).

    ``post_eot`` appends <|endoftext|> to every encoding, as classifier.encode_text does.
    """
    table = bytes_to_unicode()
    specials = dict(tokenizer.special_tokens, **({PAD: pad_id} if pad_id is not None else {}))
    vocab = {token_string(tokenizer.token_bytes(i), table): i
             for i in range(tokenizer.vocab_size) if i not in specials.values()}
    merges = [" ".join(token_string(tokenizer.token_bytes(part), table) for part in pair)
              for pair in sorted(tokenizer.merges, key=tokenizer.merges.get)]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": False}
    steps = [byte_level]
    if tokenizer.pattern:
        oniguruma = POSSESSIVE_COUNT.sub(r"(?>\1{\2})", tokenizer.pattern)
        steps.insert(0, {"type": "Split", "pattern": {"Regex": oniguruma},
                         "behavior": "Isolated", "invert": False})
    eot = {"id": ENDOFTEXT, "ids": [tokenizer.special_tokens.get(ENDOFTEXT)],
           "tokens": [ENDOFTEXT]}
    post = {"type": "TemplateProcessing", "special_tokens": {ENDOFTEXT: eot},
            "single": [{"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": ENDOFTEXT, "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": ENDOFTEXT, "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": ENDOFTEXT, "type_id": 1}}]}
    added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for s, i in specials.items()]
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": None, "pre_tokenizer": {"type": "Sequence", "pretokenizers": steps},
            "post_processor": post if post_eot else None, "decoder": byte_level,
            "model": {"type": "BPE", "dropout": None, "unk_token": None,
                      "continuing_subword_prefix": None, "end_of_word_suffix": None,
                      "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                      "vocab": vocab, "merges": merges}}


def tokenizer_config(tokenizer: BPETokenizer, context_length: int, classifier: bool) -> dict:
    """What AutoTokenizer needs besides tokenizer.json: the class and the special tokens."""
    eot = ENDOFTEXT if ENDOFTEXT in tokenizer.special_tokens else None
    return {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": context_length,
            "bos_token": eot, "eos_token": eot, "pad_token": PAD if classifier else eot,
            "padding_side": "right", "truncation_side": "left" if classifier else "right",
            "clean_up_tokenization_spaces": False}


def model_card(config: GPTConfig, tokenizer: BPETokenizer, tensors: dict[str, torch.Tensor],
               metadata: dict, folder: Path, classifier: bool) -> str:
    """README.md: what the model is, the facts the checkpoint recorded, how to run it."""
    n_params = sum(t.numel() for t in tensors.values())  # the tied head counted once
    rows = tensors["transformer.wte.weight"].size(0)
    facts = "\n".join(f"| {key} | {json.dumps(value, default=str)} |"
                      for key, value in metadata.items())
    task = "text-classification" if classifier else "text-generation"
    usage = (f'from classifier import normalize_text  # LLM From Scratch\nclf = pipeline("{task}", '
             f'model="{folder}")\nprint(clf(normalize_text("A gorgeous, witty film!")))'
             if classifier else f'gen = pipeline("{task}", model="{folder}")\n'
             'print(gen("ROMEO:", max_new_tokens=40)[0]["generated_text"])')
    vocabulary = ("GPT-2's byte-level BPE vocabulary" if tokenizer.pattern == GPT2_SPLIT_PATTERN
                  else "byte-level BPE trained by the project, with a GPT-4-style split regex")
    note = ("Texts must be written like SST-2's sentences first (`normalize_text` lowercases "
            "and splits them); the tokenizer appends <|endoftext|>, whose position is pooled."
            if classifier else "")
    return f"""---
library_name: transformers
pipeline_tag: {task}
tags: [gpt2, llm-from-scratch]
---
# {"GPT2ForSequenceClassification" if classifier else "GPT2LMHeadModel"} from LLM From Scratch

A GPT-2-architecture model trained with the LLM From Scratch scripts and exported by
`export_hf.py`: {config.n_layer} layers, {config.n_head} heads, {config.n_embd} dimensions,
a {config.context_length}-token context, {n_params:,} parameters and {rows:,} embedding rows
(ids past the tokenizer's {tokenizer.vocab_size:,} are padding). Its logits equal the
original's: the project's tests keep the largest difference below 1e-5 in float32.

Training data: {metadata.get("dataset", "see the table below")}.

| recorded in the checkpoint | value |
|---|---|
{facts}

```python
from transformers import pipeline
{usage}
```

The tokenizer is {vocabulary}, <|endoftext|> included. {note}

The context is {config.context_length} tokens, prompt and answer together: transformers'
`generate` does not slide a window over a longer text, so `generation_config.json` stops at
`max_length` {config.context_length}, and a `max_new_tokens` of your own must leave the prompt room.
"""


def to_hf(model: GPTModel | GPTClassifier, tokenizer: BPETokenizer, out_dir: str | Path,
          metadata: dict | None = None, name: str | Path | None = None) -> Path:
    """Write a folder that transformers loads with ``from_pretrained`` and no extra code.

    ``model`` is a GPTModel (-> GPT2LMHeadModel) or a GPTClassifier (->
    GPT2ForSequenceClassification), with or without LoRA / QLoRA layers (stored merged).
    ``name``: the folder the model card tells readers to load (default ``out_dir``; export_hf.py
    writes into a staging folder and then moves the files there).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    classifier = isinstance(model, GPTClassifier)
    cfg = model.config
    pad_id = tokenizer.vocab_size if classifier else None
    if classifier:
        tensors = classifier_tensors(model, pad_id)
    else:
        tensors = gpt_to_hf_state(dense_state_dict(model))
    vocab_size = tensors["transformer.wte.weight"].size(0)
    config = hf_config(cfg, tokenizer, vocab_size)
    if classifier:
        config |= {"architectures": ["GPT2ForSequenceClassification"], "pad_token_id": pad_id,
                   "id2label": dict(enumerate(model.labels)),
                   "label2id": {label: i for i, label in enumerate(model.labels)},
                   "problem_type": "single_label_classification"}
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    files = {"config.json": config,
             "generation_config.json": generation_config(tokenizer, vocab_size,
                                                         cfg.context_length),
             "tokenizer.json": tokenizer_json(tokenizer, classifier, pad_id),
             "tokenizer_config.json": tokenizer_config(tokenizer, cfg.context_length, classifier),
             "README.md": model_card(cfg, tokenizer, tensors, metadata or {}, Path(name or out),
                                     classifier)}
    for file_name, content in files.items():
        text = content if isinstance(content, str) else json.dumps(content, indent=1,
                                                                   ensure_ascii=False) + "\n"
        (out / file_name).write_text(text, encoding="utf-8")
    return out


# ---------------------------------------------------------------------------- the script

# Checkpoint kind -> the loader that rebuilds it as a model (adapters on their base).
LOADERS = {
    "gpt": lambda path, base: load_checkpoint(path),
    "classifier": lambda path, base: load_classifier(path, base),
    "lora-classifier": lambda path, base: load_classifier(path, base),
    "qlora-instruct": lambda path, base: load_instruction_model(path, base),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = FlagParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=path_arg, default="model_weights.pth",
                   help="a checkpoint of main.py, finetune_classifier.py, "
                   "finetune_lora_classifier.py or finetune_qlora_instructions.py")
    p.add_argument("--out", type=path_arg, required=True,
                   help="folder to write: a new or empty one, or one an earlier export wrote "
                   "(other folders are refused: no file of yours is replaced)")
    p.add_argument("--base", type=path_arg, default=None,
                   help="base model of a LoRA / QLoRA checkpoint (default: the path it stores)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = check_export_folder(args.out)  # never a folder with files of the user's in it
    kind = read_checkpoint(args.checkpoint).get("kind")
    check_exportable(kind, list(LOADERS), args.checkpoint)
    model, tokenizer, metadata = LOADERS[kind](args.checkpoint, args.base)
    metadata = {"kind": kind, "exported_from": str(args.checkpoint), **metadata}
    with staged(out) as staging:  # written beside --out, then moved into it
        written = publish(to_hf(model, tokenizer, staging, metadata, name=out), out)
    print(f"Wrote {out}/ ({kind} checkpoint {args.checkpoint}):")
    for path in written:
        print(f"  {path.name:24s} {path.stat().st_size:>12,} bytes")
    return 0


if __name__ == "__main__":
    run(main)
