"""Classify the sentiment of sentences with a finetuned classifier, from the shell.

    python classify.py "A gorgeous, witty, seductive movie." "It is a bore."
    cat reviews.txt | python classify.py --model lora_classifier.pth
    python classify.py --json "Not bad at all." > predictions.jsonl

Prints one line per sentence: the label, the model's probability for it and the sentence.
The sentences come from the command line, or, when there are none (or one is ``-``), one per
line from stdin, each answered as soon as it is read; blank lines are skipped.

Either classifier works: ``classifier.pth`` (finetune_classifier.py: every weight trained) or
``lora_classifier.pth`` (finetune_lora_classifier.py: adapters and head only, put back on
the base model it was trained on, which ``--base`` can point to). Both read a sentence the way
SST-2 is written (classifier.normalize_text: lowercased, ``do n't``), so the text can be
typed normally; ``--json`` shows that normalized form too.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator

from classifier import load_classifier, normalize_text, predict
from support.cli import FlagParser, path_arg, run, text_arg
from support.runtime import pick_device


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = FlagParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sentences", nargs="*", default=None, type=text_arg,
                   help="sentences to classify; none, or -, reads them from stdin, one a line")
    p.add_argument("--model", type=path_arg, default="classifier.pth",
                   help="classifier.pth (full finetune) or lora_classifier.pth (LoRA)")
    p.add_argument("--base", type=path_arg, default=None,
                   help="the base model under a LoRA classifier (a .pth, or a GPT-2 name or "
                        "folder); unset: the one it was trained on")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per line: text, normalized text, label, probabilities")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 or mps")
    args = p.parse_args(argv)
    if any(not sentence.strip() for sentence in args.sentences):  # blank stdin lines: skipped
        p.error("a sentence given on the command line is empty: classify.py needs text to "
                'classify, e.g. python classify.py "A gorgeous, witty film."')
    return args


def sentences(given: list[str]) -> Iterator[str]:
    """The sentences in the order given; ``-`` stands for stdin's non-blank lines."""
    for sentence in given or ["-"]:
        if sentence != "-":
            yield sentence
            continue
        if sys.stdin.isatty():  # nothing piped in: someone is about to type
            print("Type sentences, one a line; end with Ctrl-D.", file=sys.stderr)
        if hasattr(sys.stdin, "reconfigure"):  # read bytes that are not UTF-8, not fail
            sys.stdin.reconfigure(errors="surrogateescape")
        # bytes that are not UTF-8 become U+FFFD, as in the sentences typed as arguments
        yield from (text_arg(line.rstrip("\r\n")) for line in sys.stdin if line.strip())


def result_line(text: str, label: str, probabilities: dict[str, float], width: int,
                as_json: bool) -> str:
    """One sentence's result: aligned columns for people, a JSON object for programs."""
    if as_json:
        return json.dumps({"text": text, "normalized": normalize_text(text), "label": label,
                           "probabilities": probabilities}, ensure_ascii=False)
    return f"{label:<{width}}  {probabilities[label]:6.1%}  {text}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model, tokenizer, _ = load_classifier(args.model, base=args.base,
                                          map_location=pick_device(args.device))
    width = max(len(label) for label in model.labels)
    for text in sentences(args.sentences):
        label, probabilities = predict(model, tokenizer, text)
        print(result_line(text, label, probabilities, width, args.json), flush=True)
    return 0


if __name__ == "__main__":
    run(main)
