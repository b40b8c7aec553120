"""Tests for finetune_qlora_instructions.py: flags, clear errors, and one real run end to end."""

import argparse
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, SHARED_DATA

import finetune_qlora_instructions as script
from checkpoint import read_checkpoint, save_checkpoint
from data_utils import load_instructions, load_tinyshakespeare
from finetuning import load_instruction_splits
from instructions import answer, load_instruction_model, make_qlora
from model import GPTConfig, GPTModel
from support.errors import DataMissingError
from support.runtime import launch
from tokenizer import BPETokenizer

INSTRUCTIONS = SHARED_DATA / "instruction-data-1100.jsonl"
needs_data = pytest.mark.skipif(
    not (INSTRUCTIONS.exists() and (SHARED_DATA / "tinyshakespeare.txt").exists()),
    reason=f"real data not found in {SHARED_DATA}")


@pytest.mark.slow
def test_help_lists_the_flags():
    result = subprocess.run([sys.executable, str(ROOT / "finetune_qlora_instructions.py"),
                             "--help"], capture_output=True, text=True, timeout=120)
    for flag in ("--base", "--out", "--max-steps", "--train-size", "--data-file", "--backend",
                 "--rank", "--alpha", "--seed", "--device", "--data-dir", "--run-name"):
        assert flag in result.stdout


@needs_data
@pytest.mark.parametrize("seed", ["0", "1337", "5"])
def test_held_out_instructions_are_the_ones_the_tokenizer_corpus_leaves_out(seed):
    # tokenizer_training_corpus keeps load_instructions' default split; --seed must not move
    # the held-out records into what the tokenizer was trained on.
    args = script.parse_args(["--data-file", str(INSTRUCTIONS), "--seed", seed,
                              "--train-size", "100"])
    splits = load_instruction_splits(args)
    corpus_split = load_instructions(INSTRUCTIONS)
    assert splits["test"] == corpus_split["test"]
    assert len(splits["train"]) == 100 and all(r in corpus_split["train"] for r in splits["train"])


def test_flags_speak_of_instructions_and_take_only_what_the_script_uses(capsys):
    with pytest.raises(SystemExit):
        script.parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "training instructions" in help_text
    assert "SST-2" not in help_text and "66k" not in help_text
    assert "group_by_length" not in vars(script.parse_args([]))  # so not in metrics.json
    with pytest.raises(SystemExit):
        script.parse_args(["--no-group-by-length"])


def test_missing_dolly_names_the_data_file_flag(tmp_path):
    args = argparse.Namespace(data_file=None, data_dir=str(tmp_path), seed=0, train_size=0)
    with pytest.raises(DataMissingError, match="databricks-dolly-15k.jsonl.*--data-file"):
        load_instruction_splits(args)


def test_missing_base_says_run_main_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="run python main.py first"):
        script.main(["--base", str(tmp_path / "model_weights.pth")])


def tiny_base(context_length: int) -> tuple[BPETokenizer, GPTModel]:
    """A 300-token tokenizer of the instruction data and a one-block base model (seed 0)."""
    tokenizer = BPETokenizer()
    tokenizer.train(INSTRUCTIONS.read_text()[:5_000], 300)
    torch.manual_seed(0)
    return tokenizer, GPTModel(GPTConfig(vocab_size=320, context_length=context_length,
                                         n_layer=1, n_head=2, n_embd=64))


@needs_data
def test_bitsandbytes_backend_runs_in_process(tmp_path, monkeypatch):
    """Trains, evaluates and trains again with bitsandbytes told the CPU has AVX512-BF16 (on
    such CPUs its packed inference kernel used to crash the training step after an eval)."""
    bnb = pytest.importorskip("bitsandbytes")
    monkeypatch.setattr(bnb.nn.modules, "has_avx512bf16", lambda: True)
    monkeypatch.chdir(tmp_path)
    tokenizer, base = tiny_base(context_length=128)
    save_checkpoint("base.pth", base, tokenizer)
    script.main(["--base", "base.pth", "--data-file", str(INSTRUCTIONS), "--backend",
                 "bitsandbytes", "--max-steps", "4", "--eval-interval", "2", "--train-size",
                 "16", "--batch-size", "8", "--samples", "1", "--max-new-tokens", "4",
                 "--device", "cpu"])
    assert read_checkpoint("qlora_adapters.pth")["metadata"]["backend"] == "bitsandbytes"
    metrics = json.loads((tmp_path / "runs/qlora-instruct/metrics.json").read_text())
    assert metrics["backend"] == "bitsandbytes" and metrics["quantized_bytes"]["layers"] == 4
    log = [json.loads(line) for line in
           (tmp_path / "runs/qlora-instruct/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "val_loss" in r] == [2, 4]


@needs_data
@pytest.mark.slow
def test_the_dense_copy_of_the_weights_is_dropped_before_training(tmp_path, monkeypatch):
    """The fp32 copy quantization_report measures the error against does not live on."""
    monkeypatch.chdir(tmp_path)
    tokenizer, base = tiny_base(context_length=64)
    args = script.parse_args(["--data-file", str(INSTRUCTIONS), "--train-size", "16",
                              "--batch-size", "4", "--samples", "1", "--max-new-tokens", "2",
                              "--device", "cpu"])
    book = script.QLoRABook.open(args, launch("cpu"), base, tokenizer, started=0.0)
    assert "dense" in book.facts
    book.before_training(make_qlora(base, args.backend, **book.lora))
    assert "dense" not in book.facts
    assert 0 < book.facts["quantization_error"] < 0.2


@needs_data
@pytest.mark.slow
def test_end_to_end_on_a_tiny_base(tmp_path, monkeypatch):
    """main.py --preset tiny, then the script on instruction-data-1100.jsonl, from the shell."""
    env = {**os.environ, "LLM_DATA_DIR": str(SHARED_DATA), "OMP_NUM_THREADS": "1"}
    # A tokenizer trained here on a slice of the text is much faster than main.py's (which
    # then reuses it); the model itself is main.py's tiny preset with a 128-token window.
    tokenizer = BPETokenizer()
    tokenizer.train(load_tinyshakespeare(SHARED_DATA)[:20_000] +
                    INSTRUCTIONS.read_text()[:20_000], 320)
    tokenizer.save(tmp_path / "tokenizer.json")

    def run(name: str, *args: str) -> str:
        result = subprocess.run([sys.executable, str(ROOT / name), *args], cwd=tmp_path,
                                env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    run("main.py", "--preset", "tiny", "--context-length", "128", "--max-steps", "20",
        "--sample-tokens", "0", "--checkpoint-interval", "0")
    out = run("finetune_qlora_instructions.py", "--data-file", str(INSTRUCTIONS),
              "--max-steps", "12", "--train-size", "96", "--batch-size", "8", "--lr", "1e-2",
              "--dropout", "0", "--eval-interval", "6", "--samples", "2",
              "--max-new-tokens", "8", "--device", "cpu")
    assert "dropped" in out and "NF4+DQ" in out and "Saved qlora_adapters.pth" in out

    run_dir = tmp_path / "runs/qlora-instruct"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    losses = {row["model"]: row["loss"] for row in metrics["rows"]}
    assert losses["QLoRA r=8 (scratch)"] < losses["base, NF4+DQ (scratch)"]  # it learned
    assert metrics["quantized_bytes"]["nf4_dq"] <= 0.15 * metrics["quantized_bytes"]["fp32"]
    assert metrics["encoding"]["heldout"]["whole"] > 0
    assert "group_by_length" not in metrics["args"]
    log = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "val_loss" in r] == [6, 12]
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and {"instruction", "reference", "base_answer",
                                  "tuned_answer"} <= samples[0].keys()

    ckpt = read_checkpoint(tmp_path / "qlora_adapters.pth", kind="qlora-instruct")
    assert all(k.endswith(("lora_A", "lora_B")) for k in ckpt["state_dict"])
    assert ckpt["metadata"]["base_path"] == "model_weights.pth"
    monkeypatch.chdir(tmp_path)  # the checkpoint names its base relative to where it trained
    model, tokenizer, _ = load_instruction_model("qlora_adapters.pth")
    assert isinstance(answer(model, tokenizer, "Name a colour.", max_new_tokens=5), str)
