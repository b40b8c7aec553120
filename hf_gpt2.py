"""Our GPT is GPT-2: the same network under other names, and how to move between the two.

``GPTModel`` has GPT-2's architecture (pre-LayerNorm blocks, learned positions, tanh-GELU MLP,
LayerNorm eps 1e-5, an output head tied to the token embedding), so a model trained here can be
written as a Hugging Face ``GPT2LMHeadModel`` folder and OpenAI's GPT-2 can be read back into a
``GPTModel``. Nothing is approximated: both directions move the same numbers; only their names
and the layout of four matrices change.

Weights (ours -> Hugging Face's, block i; everything under the prefix ``transformer.``)::

    tok_emb.weight            wte.weight                 [vocab, n_embd]
    pos_emb.weight            wpe.weight                 [context, n_embd]
    blocks.i.ln_1.*           h.i.ln_1.*
    blocks.i.attn.qkv.*       h.i.attn.c_attn.*          weight transposed: [n_embd, 3 n_embd]
    blocks.i.attn.out_proj.*  h.i.attn.c_proj.*          weight transposed
    blocks.i.ln_2.*           h.i.ln_2.*
    blocks.i.mlp.fc_in.*      h.i.mlp.c_fc.*             weight transposed: [n_embd, 4 n_embd]
    blocks.i.mlp.fc_out.*     h.i.mlp.c_proj.*           weight transposed
    ln_f.*                    ln_f.*
    lm_head.weight            (not stored: tied to wte, as ours is tied to tok_emb)

GPT-2 was written in TensorFlow, where a dense layer computes ``x @ W`` with W stored
[in, out]; Hugging Face kept that as ``Conv1D``. ``nn.Linear`` computes ``x @ W.T`` with W
stored [out, in], so the four projection matrices are transposed on the way. The fused q/k/v
projection splits into q, k, v and then into heads in the same order in both models.

Config (``GPTConfig`` -> ``config.json``): vocab_size -> vocab_size, context_length ->
n_positions, n_layer / n_head / n_embd keep their names, dropout -> resid_pdrop, embd_pdrop and
attn_pdrop; GPT-2's fixed choices are spelled out (activation_function "gelu_new" is the tanh
GELU, layer_norm_epsilon 1e-5, tie_word_embeddings). Our embedding table is rounded up to a
multiple of 64 rows (main.py), so the exported model has those unused rows too: every logit is
kept, and ``generation_config.json`` suppresses the ids no tokenizer entry has, as our
``generate_ids(vocab_size=...)`` does.

Tokenizer: both are byte-level BPE, but the Hugging Face ``tokenizers`` file describes a token
by a *string*. GPT-2 maps each of the 256 bytes to a printable character (``bytes_to_unicode``:
printable bytes stand for themselves, the others borrow characters from 256 up, so a space is
"Ġ" and a newline "Ċ"); a token's string is its bytes so mapped. ``vocab`` maps those strings
to our ids, ``merges`` lists our merges in the order learned (a merge's position is its
priority), our regex becomes a ``Split`` pre-tokenizer followed by ``ByteLevel`` with its own
regex off, and every special token (``<|endoftext|>``) is an added token. ``ignore_merges``
makes a chunk that is a whole token one id before any merging, as our encode does. The regex
is run by another engine there (Oniguruma), which reads a possessive count (GPT-4's "1-3 digits")
as "runs of 1-3 digits, repeated", so that one construct is written as an atomic group. GPT-2's
own vocabulary numbers its 256 bytes in the table's order rather than by value; ``BPETokenizer``'s
``byte_order`` holds exactly that, so GPT-2's 50,257 ids are read in unchanged.

Two things a Hugging Face tokenizer does differently: it turns the *text* "<|endoftext|>" in
user input into the special id (our ``encode(..., allowed_special="all")``), and it cannot take
a string holding a lone surrogate, which our tokenizer encodes via "surrogatepass".

Finetuned models go through ``dense_state_dict`` first: a LoRA layer's weight becomes
W + B A alpha / r (``lora.merge_lora``'s sum), and a QLoRA layer's becomes its dequantized NF4
weight plus the adapter's update, i.e. exactly what the 4-bit model computed with, stored
dense. A classifier becomes ``GPT2ForSequenceClassification``: both pool the last real token
(ours by its length, theirs as the last one that is not the pad id, so the export adds a
``<|pad|>`` id the tokenizer never produces). Its ``score`` layer has no bias; ours does.
Because the pooled vector is ``ln_f``'s output ``gamma * n + beta``, the bias b moves into
``ln_f``'s beta: adding any d with ``W d = b`` (d = pinv(W) b) gives ``W h + b`` exactly, and in
the classifier nothing else reads ``ln_f``.
"""

from __future__ import annotations

import json
from pathlib import Path

import regex
import torch
from safetensors.torch import save_file

from checkpoint import check_config_fits_weights, load_checkpoint, load_weights, model_shapes
from classifier import GPTClassifier
from lora import LoRALayer
from model import GPTConfig, GPTModel
from quantization import dequantized_weight, is_quantized
from support import hf_checks, hub
from support.files import shown_path
from tokenizer import ENDOFTEXT, FORMAT_VERSION, GPT2_SPLIT_PATTERN, BPETokenizer, tokenizer_file

PAD = "<|pad|>"  # the classifier export's padding token (an id our tokenizer never produces)

# Per block: our module name -> (Hugging Face's, stored transposed as a Conv1D?).
BLOCK_NAMES = {"ln_1": ("ln_1", False), "attn.qkv": ("attn.c_attn", True),
               "attn.out_proj": ("attn.c_proj", True), "ln_2": ("ln_2", False),
               "mlp.fc_in": ("mlp.c_fc", True), "mlp.fc_out": ("mlp.c_proj", True)}
TOP_NAMES = {"tok_emb": "wte", "pos_emb": "wpe", "ln_f": "ln_f"}

# Python's regex reads X{1,3}+ as possessive ("1-3 digits, never given back"); Oniguruma, the
# tokenizers library's engine, reads it as (X{1,3})+ ("any number of digits"). An atomic group
# (?>X{1,3}) means the possessive one in both. X: a \p{..} class, a [...] set, an escape or a char.
POSSESSIVE_COUNT = regex.compile(r"(\\p\{\w+\}|\[[^\]]*\]|\\.|[^\\])\{(\d*,?\d*)\}\+")
ATOMIC_COUNT = regex.compile(r"\(\?>(\\p\{\w+\}|\[[^\]]*\]|\\.|[^\\])\{(\d*,?\d*)\}\)")


# ---------------------------------------------------------------------------- weights


def hf_name(name: str) -> tuple[str, bool]:
    """Our parameter name -> (GPT-2's name under ``transformer.``, transpose it?)."""
    module, leaf = name.rsplit(".", 1)
    if module in TOP_NAMES:
        return f"{TOP_NAMES[module]}.{leaf}", False
    _, layer, inner = module.split(".", 2)  # "blocks", "3", "attn.qkv"
    theirs, conv1d = BLOCK_NAMES[inner]
    return f"h.{layer}.{theirs}.{leaf}", conv1d and leaf == "weight"


def file_name(name: str) -> tuple[str, bool]:
    """Our parameter name -> (its name in a GPT-2 model.safetensors, stored transposed?)."""
    if name == "lm_head.weight":
        return "lm_head.weight (tied to wte)", False
    theirs, transposed = hf_name(name)
    return f"transformer.{theirs}", transposed


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


def hf_to_gpt_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """GPT-2's tensors (with or without the ``transformer.`` prefix) -> our state dict."""
    ours_by_theirs = {}
    for ours, (theirs, transpose) in BLOCK_NAMES.items():
        for leaf in ("weight", "bias"):
            ours_by_theirs[f"{theirs}.{leaf}"] = (f"{ours}.{leaf}", transpose and leaf == "weight")
    state = {}
    for name, tensor in tensors.items():
        name = name.removeprefix("transformer.")
        parts = name.split(".", 2)
        if parts[0] == "h" and len(parts) == 3:
            _, layer, rest = parts
            if rest not in ours_by_theirs:  # attn.bias / attn.masked_bias: old causal masks
                continue
            ours, transpose = ours_by_theirs[rest]
            state[f"blocks.{layer}.{ours}"] = (tensor.T if transpose else tensor).contiguous()
        elif len(parts) == 2 and parts[0] in TOP_NAMES.values():  # others: loading names them
            module, leaf = parts
            theirs_to_ours = {v: k for k, v in TOP_NAMES.items()}
            state[f"{theirs_to_ours[module]}.{leaf}"] = tensor
    state["lm_head.weight"] = state.get("tok_emb.weight")  # tied
    return state


def effective_weight(layer: torch.nn.Module) -> torch.Tensor:
    """The dense [out, in] weight a layer computes with: LoRA's update and NF4 included."""
    if isinstance(layer, LoRALayer):
        base = effective_weight(layer.linear)
        return base if layer.merged else base + layer.delta_weight().to(base.dtype)
    if is_quantized(layer):
        return dequantized_weight(layer)
    return layer.weight


def dense_state_dict(gpt: GPTModel) -> dict[str, torch.Tensor]:
    """The state dict of a plain GPTModel that computes what ``gpt`` (LoRA, QLoRA) computes."""
    with torch.device("meta"):  # only the names and shapes, no memory
        names = list(GPTModel(gpt.config).state_dict())
    state = {}
    for name in names:
        module_name, leaf = name.rsplit(".", 1)
        module = gpt.get_submodule(module_name)
        if leaf == "weight":
            tensor = effective_weight(module)
        else:  # a bias stays where the adapter found it
            tensor = (module.linear if isinstance(module, LoRALayer) else module).bias
        state[name] = tensor.detach().float().cpu()
    return state


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


# ---------------------------------------------------------------------------- config


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


def gpt_config(hf: dict, dropout: float = 0.0) -> GPTConfig:
    """Our GPTConfig for GPT-2's config.json (hf_checks.check_gpt2_config has vetted it)."""
    return GPTConfig(vocab_size=hf["vocab_size"], context_length=hf["n_positions"],
                     n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
                     dropout=dropout, bias=True)


def generation_config(tokenizer: BPETokenizer, vocab_size: int, context_length: int) -> dict:
    """Our generate_text's defaults (temperature 0.8, top-k 50, stop at <|endoftext|>), and a
    length transformers can honour: its generate does not slide the window as ours does, so
    past ``context_length`` tokens, prompt included, it would index a position embedding that
    is not there (IndexError). ``max_length`` counts the prompt, so it never gets there."""
    eot = tokenizer.special_tokens.get(ENDOFTEXT)
    return {"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot, "do_sample": True,
            "temperature": 0.8, "top_k": 50, "max_length": context_length,
            "suppress_tokens": list(range(tokenizer.vocab_size, vocab_size)) or None}


# ---------------------------------------------------------------------------- tokenizer


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for every byte, in GPT-2's order of its 256 byte ids."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    for b in range(256):  # the rest borrow 256, 257, ... in byte order
        if b not in table:
            table[b] = chr(256 + len(table) - len(printable))
    return table


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


def split_pattern(pre_tokenizer: dict | None) -> str:
    """The regex a tokenizer.json splits with: a Split step's, or GPT-2's inside ByteLevel."""
    steps = (pre_tokenizer or {}).get("pretokenizers", [pre_tokenizer or {}])
    for step in steps:
        if step.get("type") == "Split":
            return ATOMIC_COUNT.sub(r"\1{\2}+", step["pattern"]["Regex"])  # as we wrote it
        if step.get("type") == "ByteLevel" and step.get("use_regex", True):
            return GPT2_SPLIT_PATTERN
    return ""


def read_vocab_and_merges(folder: Path, spec: dict) -> tuple[dict[str, int], list[list[str]],
                                                            str, dict]:
    """(vocab, merges, pattern, special tokens) from tokenizer.json's content (``spec``) or
    from vocab.json's (``spec``) + merges.txt."""
    if (folder / "tokenizer.json").is_file():
        bpe = spec["model"]
        merges = [m.split(" ") if isinstance(m, str) else m for m in bpe["merges"]]
        specials = {t["content"]: t["id"] for t in spec.get("added_tokens", []) if t["special"]}
        return bpe["vocab"], merges, split_pattern(spec.get("pre_tokenizer")), specials
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [line.split(" ") for line in lines if line and not line.startswith("#version")]
    specials = {ENDOFTEXT: spec[ENDOFTEXT]} if ENDOFTEXT in spec else {}
    return spec, merges, GPT2_SPLIT_PATTERN, specials


def tokenizer_from_hf(folder: Path) -> BPETokenizer:
    """Our BPETokenizer with a GPT-2-format tokenizer's ids, merges and regex."""
    name = "tokenizer.json" if (folder / "tokenizer.json").is_file() else "vocab.json"
    with tokenizer_file(folder / name) as spec:  # any fault: one sentence naming the file
        vocab, merges, pattern, specials = read_vocab_and_merges(folder, spec)
        specials = {s: i for s, i in specials.items() if s != PAD}  # our classifier's pad
        hf_checks.check_gpt2_vocab(vocab, merges, specials, folder)
        byte_of = {c: b for b, c in bytes_to_unicode().items()}
        by_id = {i: s for s, i in vocab.items()}
        return BPETokenizer.from_dict({
            "version": FORMAT_VERSION, "pattern": pattern, "special_tokens": specials,
            "byte_order": [byte_of[by_id[i]] for i in range(256)],
            "merges": [[vocab[a], vocab[b]] for a, b in merges]})


# ---------------------------------------------------------------------------- both directions


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
    for name, content in files.items():
        text = content if isinstance(content, str) else json.dumps(content, indent=1,
                                                                   ensure_ascii=False) + "\n"
        (out / name).write_text(text, encoding="utf-8")
    return out


def from_hf(path_or_name: str | Path, dropout: float = 0.0) -> tuple[GPTModel, BPETokenizer]:
    """GPT-2 in Hugging Face format -> (our GPTModel in eval mode, our BPETokenizer).

    ``path_or_name``: a folder (config.json, model.safetensors and tokenizer.json or
    vocab.json + merges.txt), or a Hub name such as "gpt2" or "gpt2-medium", downloaded once
    and cached (support/hub.py). ``dropout`` is ours to choose: GPT-2 trained with 0.1.
    """
    folder = hub.resolve(path_or_name)
    config = gpt_config(hf_checks.read_gpt2_config(folder), dropout)
    tokenizer = tokenizer_from_hf(folder)
    # The config is only a claim: the weights' shapes must be its model's before it is built.
    state = hf_checks.read_weights(folder / hub.WEIGHTS, hf_to_gpt_state)
    check_config_fits_weights(folder, state, config.n_layer, config.vocab_size,
                              tokenizer.vocab_size, lambda: model_shapes(config),
                              shown=file_name)
    model = GPTModel(config)
    load_weights(model, state, folder)
    return model.eval(), tokenizer


def is_hf_base(base: str | Path) -> bool:
    """Is ``base`` GPT-2 in Hugging Face format (a folder or a Hub name), not our checkpoint?

    Our checkpoints are files (main.py writes ``model_weights.pth``); a missing ``*.pth`` stays
    ours, so it still says to run main.py first."""
    path = Path(base).expanduser()
    try:
        return not (path.is_file() or path.suffix in (".pth", ".pt"))
    except OSError as e:  # a name longer than the filesystem allows, ...
        raise FileNotFoundError(f"No model at {shown_path(base)}: {e.strerror}.") from None


def load_base(base: str | Path, map_location: str | torch.device = "cpu"
              ) -> tuple[GPTModel, BPETokenizer, dict]:
    """The one way a script turns ``--base`` into (model, tokenizer, metadata), in eval mode:
    our checkpoint from main.py, or GPT-2 from a Hugging Face folder or Hub name (``from_hf``).

    A GPT-2 base's metadata says where it came from; adapter files record that name or path
    and its weights' fingerprint, so they reload onto it as onto one of ours.
    """
    if not is_hf_base(base):
        return load_checkpoint(base, map_location=map_location)
    model, tokenizer = from_hf(base)
    return model.to(map_location), tokenizer, {"hf_base": str(base)}
