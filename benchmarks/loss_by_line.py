"""Where a pretrained model's test loss goes: speaker names against everything else.

    python benchmarks/loss_by_line.py [--checkpoint model_weights.pth] [--data-dir DIR]

TinyShakespeare is a play script: each speech opens with a line naming its speaker
("PETRUCHIO:"). A name can only be predicted from earlier text about the same play, so the
loss on those lines shows how much of a model's test loss comes from plays it has not read.
Each token's loss is charged to the line its first byte lies on, and the report counts the
test speeches whose speaker never speaks in the training text.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from checkpoint import load_checkpoint  # noqa: E402
from evaluate import token_nll, trained_splits  # noqa: E402

SPEAKER = re.compile(r"^([A-Z][A-Z' ]*[A-Z]):$", re.MULTILINE)


def on_speaker_line(text: str, ids: list[int], tokenizer) -> torch.Tensor:
    """For each scored token (ids[1:]), whether its first byte lies on a speaker's line."""
    on_line = torch.zeros(len(text.encode("utf-8")), dtype=torch.bool)
    for m in SPEAKER.finditer(text):  # ASCII text: character offsets are byte offsets
        on_line[m.start() : m.end()] = True
    lengths = torch.tensor([len(tokenizer.token_bytes(i)) for i in ids])
    starts = lengths.cumsum(0) - lengths  # each token's first byte
    return on_line[starts[1:]]  # the first token is never scored


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="model_weights.pth")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: $LLM_DATA_DIR)")
    args = p.parse_args(argv)

    model, tokenizer, meta = load_checkpoint(args.checkpoint)
    splits = trained_splits(meta, args.data_dir)
    if not splits["test"].isascii():  # names are found by character, tokens counted in bytes
        sys.exit("error: the test slice is not ASCII; this breakdown expects TinyShakespeare.")
    test = splits["test"]
    ids = tokenizer.encode(test)
    nll = token_nll(model, ids).double()

    names = on_speaker_line(test, ids, tokenizer)
    name_chars = sum(len(m.group(0)) for m in SPEAKER.finditer(test))
    other_chars = len(test) - name_chars

    known = set(SPEAKER.findall(splits["train"]))
    speakers = SPEAKER.findall(test)
    unseen = [s for s in speakers if s not in known]
    print(f"{args.checkpoint} on the test slice (trained on the {meta.get('split', 'standard')}"
          f" split): {len(unseen)} of {len(speakers)} speeches are by speakers the training "
          f"text never has speak")
    print(f"{'lines':<16}{'chars':>9}{'share':>8}{'nats/char':>11}{'share of loss':>15}")
    for label, mask, chars in (("speaker names", names, name_chars),
                               ("everything else", ~names, other_chars)):
        print(f"{label:<16}{chars:>9,}{chars / len(test):>8.1%}{nll[mask].sum() / chars:>11.4f}"
              f"{nll[mask].sum() / nll.sum():>15.1%}")
    print(f"{'all':<16}{len(test):>9,}{1:>8.0%}{nll.sum() / len(test):>11.4f}{1:>15.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
