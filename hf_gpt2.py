"""Our GPT is GPT-2: the same network under other names, so OpenAI's weights load into it.

``GPTModel`` has GPT-2's architecture (pre-LayerNorm blocks, learned positions, tanh-GELU MLP,
LayerNorm eps 1e-5, an output head tied to the token embedding), so OpenAI's GPT-2, a Hugging
Face folder or a Hub name, reads into a ``GPTModel`` (``from_hf``), and ``load_base`` gives every
later script its base: our main.py checkpoint or GPT-2. Nothing is approximated: both models
hold the same numbers; only their names and the layout of four matrices change. The other
direction, any of our models written as a Hugging Face folder, is export_hf.py's chapter.

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
GELU, layer_norm_epsilon 1e-5, tie_word_embeddings).

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
"""

from __future__ import annotations

from pathlib import Path

import regex
import torch

from checkpoint import check_config_fits_weights, load_checkpoint
from model import GPTConfig, GPTModel
from support import hub
from support.file_checks import (
    check_gpt2_vocab,
    load_weights,
    read_gpt2_config,
    read_weights,
    tokenizer_file,
)
from support.files import shown_path
from tokenizer import ENDOFTEXT, FORMAT_VERSION, GPT2_SPLIT_PATTERN, BPETokenizer

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


# ---------------------------------------------------------------------------- config


def gpt_config(hf: dict, dropout: float = 0.0) -> GPTConfig:
    """Our GPTConfig for GPT-2's config.json (file_checks.check_gpt2_config has vetted it)."""
    return GPTConfig(vocab_size=hf["vocab_size"], context_length=hf["n_positions"],
                     n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
                     dropout=dropout, bias=True)


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


def split_pattern(pre_tokenizer: dict | None) -> str:
    """The regex a tokenizer.json splits with: a Split step's, or GPT-2's inside ByteLevel."""
    steps = (pre_tokenizer or {}).get("pretokenizers", [pre_tokenizer or {}])
    for step in steps:
        if step.get("type") == "Split":
            return ATOMIC_COUNT.sub(r"\1{\2}+", step["pattern"]["Regex"])  # as we wrote it
        if step.get("type") == "ByteLevel" and step.get("use_regex", True):
            return GPT2_SPLIT_PATTERN
    return ""


def read_vocab_and_merges(folder: Path, spec: dict, tokenizer_json: bool
                          ) -> tuple[dict[str, int], list[list[str]], str, dict]:
    """(vocab, merges, pattern, special tokens) from tokenizer.json's content (``spec``, when
    ``tokenizer_json``) or from vocab.json's (``spec``) + merges.txt."""
    if tokenizer_json:
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
    tokenizer_json = (folder / "tokenizer.json").is_file()  # else vocab.json + merges.txt
    path = folder / ("tokenizer.json" if tokenizer_json else "vocab.json")
    with tokenizer_file(path) as spec:  # any fault: one sentence naming the file
        vocab, merges, pattern, specials = read_vocab_and_merges(folder, spec, tokenizer_json)
        specials = {s: i for s, i in specials.items() if s != PAD}  # our classifier's pad
        check_gpt2_vocab(vocab, merges, specials, folder)
        byte_of = {c: b for b, c in bytes_to_unicode().items()}
        by_id = {i: s for s, i in vocab.items()}
        return BPETokenizer.from_dict({
            "version": FORMAT_VERSION, "pattern": pattern, "special_tokens": specials,
            "byte_order": [byte_of[by_id[i]] for i in range(256)],
            "merges": [[vocab[a], vocab[b]] for a, b in merges]})


# ---------------------------------------------------------------------------- loading


def from_hf(path_or_name: str | Path, dropout: float = 0.0) -> tuple[GPTModel, BPETokenizer]:
    """GPT-2 in Hugging Face format -> (our GPTModel in eval mode, our BPETokenizer).

    ``path_or_name``: a folder (config.json, model.safetensors and tokenizer.json or
    vocab.json + merges.txt), or a Hub name such as "gpt2" or "gpt2-medium", downloaded once
    and cached (support/hub.py). ``dropout`` is ours to choose: GPT-2 trained with 0.1.
    """
    folder = hub.resolve(path_or_name)
    config = gpt_config(read_gpt2_config(folder), dropout)
    tokenizer = tokenizer_from_hf(folder)
    # The config is only a claim: the weights' shapes must be its model's before it is built.
    state = read_weights(folder / hub.WEIGHTS, hf_to_gpt_state)
    check_config_fits_weights(folder, state, config, tokenizer.vocab_size, shown=file_name)
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
