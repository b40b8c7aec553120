"""Ask the instruction-tuned (QLoRA) model a question and print its answer as it is written.

    python ask.py "Give three tips for staying healthy."
    python ask.py "Summarize the text." --context "Romeo loves Juliet; their families feud."
    python ask.py "Name three primary colours." --show-prompt --temperature 0

The instruction, and the context if there is one, are put into the template the model was
tuned on (instructions.format_prompt; ``--show-prompt`` prints it), and the model continues
after "### Response:" until it samples <|endoftext|> or reaches ``--max-new-tokens``.

The adapters file (``qlora_adapters.pth``, from finetune_qlora_instructions.py) holds only the
LoRA adapters: loading quantizes the base model to 4-bit NF4 again and puts them on top, so
the base must be the one they were trained on (``--base``; unset: the file named inside).

Expect poor answers: a model of under a million parameters that has read only Shakespeare
learns the *form* of an answer, not facts (README, "why the answers are poor").
"""

from __future__ import annotations

import argparse

from instructions import format_prompt, load_instruction_model, stream_answer
from quantization import BACKENDS
from sample import add_sampling_args, sampling, show
from support.cli import FlagParser, path_arg, run, text_arg
from support.runtime import pick_device


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = FlagParser(description=__doc__.split("\n\n")[0])
    p.add_argument("instruction", type=text_arg,
                   help="what the model should do, e.g. a question")
    p.add_argument("--context", type=text_arg, default="",
                   help="text the instruction is about (optional)")
    p.add_argument("--adapters", type=path_arg, default="qlora_adapters.pth",
                   help="the QLoRA adapters, written by finetune_qlora_instructions.py")
    p.add_argument("--base", type=path_arg, default=None,
                   help="the base model under the adapters (a .pth, or a GPT-2 name or "
                        "folder); unset: the one they were trained on")
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="NF4 implementation; unset: the one the adapters were trained with")
    p.add_argument("--show-prompt", action="store_true",
                   help="print the prompt the model reads before its answer")
    add_sampling_args(p, max_new_tokens=100, temperature=0.7, top_k=40)
    args = p.parse_args(argv)
    if not args.instruction.strip():
        p.error('the instruction is empty: ask.py needs something to answer, e.g. python ask.py '
                '"Name three primary colours."')
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model, tokenizer, _ = load_instruction_model(args.adapters, base=args.base,
                                                 backend=args.backend,
                                                 map_location=pick_device(args.device),
                                                 dense=True)  # answering only: no 4-bit
    if args.show_prompt:
        print(format_prompt(args.instruction, args.context), end="")
    show(stream_answer(model, tokenizer, args.instruction, args.context, **sampling(args)),
         stream=not args.no_stream)
    return 0


if __name__ == "__main__":
    run(main)
