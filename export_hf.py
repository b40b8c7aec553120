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
How each of our tensors and tokenizer tables maps onto GPT-2's is hf_gpt2.py's chapter.
"""

from __future__ import annotations

import argparse

from checkpoint import load_checkpoint, read_checkpoint
from classifier import load_classifier
from hf_gpt2 import to_hf
from instructions import load_instruction_model
from support.cli import run
from support.export_folder import check_export_folder, publish, staged
from support.flags import FlagParser, path_arg
from support.hf_checks import check_exportable

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
