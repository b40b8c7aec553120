"""The shared finetuning pieces, and both finetuning scripts end to end on real SST-2.

The batching and measuring pieces they use have their own tests: test_data_utils.py and
test_support_metrics.py."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, SHARED_DATA

import finetune_lora_classifier
import finetune_qlora_instructions
from checkpoint import load_checkpoint
from classifier import (
    GPTClassifier,
    classification_loss,
    evaluate_accuracy,
    load_classifier,
    predict,
)
from data_utils import pad_labelled
from finetuning import (
    check_args,
    instruction_report,
    memory_at_full_batch,
    memory_before_training,
    sst2_loaders,
    train_config,
)
from lora import count_parameters
from main import PRESETS
from model import GPTConfig, GPTModel
from support.cli import train_size_arg
from support.metrics import compared_rows
from tokenizer import BPETokenizer
from training import TrainConfig, train_model

CPU = torch.device("cpu")
HAVE_SST2 = (SHARED_DATA / "sst2" / "train.tsv").is_file()


def test_train_size_flag():
    assert train_size_arg("all") == train_size_arg("ALL") == train_size_arg("0") == 0
    assert train_size_arg("500") == 500
    for bad in ("-3", "many"):
        with pytest.raises(argparse.ArgumentTypeError):
            train_size_arg(bad)


def test_missing_base_says_run_main_first(tmp_path):
    with pytest.raises(FileNotFoundError, match="run python main.py first"):
        load_checkpoint(tmp_path / "model_weights.pth")


def test_loader_pads_batches_and_shuffles_by_seed():
    tok = BPETokenizer()
    tok.train("sentence number word " * 10, 260)
    examples = [(f"sentence number {i} " + "word " * (i % 5), i % 2) for i in range(20)]
    loader = sst2_loaders({"train": examples}, tok, context_length=16, batch_size=4, seed=3)[
        "train"]
    ids, lengths, labels = next(iter(loader))
    assert len(set(lengths.tolist())) <= 2  # grouped by length (examples have 5 lengths)
    assert ids.shape[0] == lengths.shape[0] == labels.shape[0] == 4
    assert ids.shape[1] == int(lengths.max()) <= 16
    assert (ids[torch.arange(4), lengths - 1] == tok.eot_id).all()  # each ends in <|endoftext|>
    again = sst2_loaders({"train": examples}, tok, context_length=16, batch_size=4, seed=3)[
        "train"]
    assert torch.equal(next(iter(again))[2], labels) and len(loader) == 5
    with pytest.raises(ValueError, match="cannot fill one batch"):
        sst2_loaders({"train": examples[:3]}, tok, 16, batch_size=4, seed=0)


class FixedLogits(torch.nn.Module):
    """Predicts class 1 for sequences longer than 2 tokens, else class 0."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(()))

    def forward(self, ids, lengths):
        return torch.stack([(lengths <= 2).float(), (lengths > 2).float()], dim=1) + self.p


def test_evaluate_accuracy_known_answer():
    items = [([1], 0), ([1, 2, 3], 1), ([1, 2, 3, 4], 0), ([1, 2], 1), ([4, 4, 4], 1)]
    loader = torch.utils.data.DataLoader(items, batch_size=2, collate_fn=pad_labelled(0))
    assert evaluate_accuracy(FixedLogits(), loader) == pytest.approx(3 / 5)


def test_classifier_learns_a_separable_task():
    """Label 1 iff token 7 occurs anywhere: the last token must gather it with attention."""
    g = torch.Generator().manual_seed(0)
    items = []
    for _ in range(256):
        seq = torch.randint(8, 32, (int(torch.randint(3, 10, (1,), generator=g)),),
                            generator=g).tolist()
        label = len(items) % 2
        if label:
            seq[int(torch.randint(0, len(seq), (1,), generator=g))] = 7
        items.append((seq + [1], label))  # 1 plays <|endoftext|>
    loader = torch.utils.data.DataLoader(items, batch_size=32, shuffle=True, drop_last=True,
                                         collate_fn=pad_labelled(0),
                                         generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = GPTClassifier(GPTModel(GPTConfig(vocab_size=32, context_length=16, n_layer=2,
                                             n_head=2, n_embd=32)))
    before = evaluate_accuracy(model, loader)
    summary = train_model(model, loader, None, TrainConfig(max_steps=80, learning_rate=3e-3,
                          warmup_steps=5, weight_decay=0.0, dtype="float32"), CPU,
                          loss_fn=classification_loss)
    assert summary["train_loss"] < 0.2
    assert evaluate_accuracy(model, loader) > max(before, 0.95)


def test_an_out_path_that_is_a_folder_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="is a folder"):  # CheckpointError is a ValueError
        check_args(finetune_lora_classifier.parse_args(["--out", str(tmp_path)]))


@pytest.mark.parametrize("flags, sentence", [
    (["--weight-decay", "-0.1"], "error: --weight-decay must be a finite number >= 0, got -0.1\n"),
    (["--lr", "nan"], "error: --lr must be a finite number > 0, got nan\n"),
    (["--rank", "0"], "error: --rank must be an integer >= 1, got 0\n"),
    (["--dropout", "1"], "error: --dropout must be a finite number >= 0 and < 1, got 1\n"),
])
def test_a_bad_flag_value_is_refused_in_one_sentence(flags, sentence, capsys):
    with pytest.raises(SystemExit) as exit:
        finetune_lora_classifier.parse_args(flags)
    assert exit.value.code == 2 and capsys.readouterr().err == sentence
    check_args(finetune_lora_classifier.parse_args(["--weight-decay", "0"]))


@pytest.mark.parametrize("script, defaults", [(finetune_lora_classifier, (2, 4.0, 0.0)),
                                              (finetune_qlora_instructions, (8, 16.0, 0.05))])
def test_both_lora_scripts_take_one_definition_of_the_lora_flags(script, defaults, capsys):
    args = script.parse_args([])
    assert (args.rank, args.alpha, args.dropout) == defaults  # each script its own defaults
    for flags, sentence in [(["--rank", "0"], "--rank must be an integer >= 1, got 0"),
                            (["--alpha", "-1"], "--alpha must be a finite number > 0, got -1"),
                            (["--dropout", "1"],
                             "--dropout must be a finite number >= 0 and < 1, got 1")]:
        with pytest.raises(SystemExit):
            script.parse_args(flags)
        assert capsys.readouterr().err == f"error: {sentence}\n"
    with pytest.raises(SystemExit):
        script.parse_args(["--help"])
    assert "--alpha ALPHA LoRA alpha: the update is scaled by alpha / r" in " ".join(
        capsys.readouterr().out.split())


def test_memory_before_training_counts_a_full_batch_and_hands_over_a_fresh_meter():
    torch.manual_seed(0)
    model = GPTClassifier(GPTModel(GPTConfig(vocab_size=64, context_length=8, n_layer=1,
                                             n_head=2, n_embd=16)))
    args = finetune_lora_classifier.parse_args(["--batch-size", "3"])
    memory, peak = memory_before_training(model, classification_loss, args, 8, CPU,
                                          labelled=True)
    assert memory == memory_at_full_batch(model, classification_loss, args, 8, CPU,
                                          labelled=True)
    assert memory["batch"] == [3, 8] and memory["optimizer_name"] == "AdamW"
    assert (peak.mb, peak.source) == (0.0, "process peak RSS growth")  # not yet measuring
    assert "torch._dynamo" in sys.modules  # the first AdamW's import is behind the meter


def test_train_config_from_flags():
    args = argparse.Namespace(max_steps=200, lr=1e-3, warmup_steps=None, weight_decay=0.05,
                              eval_interval=50, dtype="float32", seed=7)
    cfg = train_config(args)
    assert (cfg.warmup_steps, cfg.min_lr, cfg.weight_decay, cfg.seed) == (20, 1e-4, 0.05, 7)


def test_default_lora_trains_under_one_percent_of_the_cpu_preset_model():
    preset = PRESETS["cpu"]
    config = GPTConfig(vocab_size=preset["vocab_size"], context_length=preset["context_length"],
                       n_layer=preset["n_layer"], n_head=preset["n_head"],
                       n_embd=preset["n_embd"])
    model = GPTClassifier(GPTModel(config))
    finetune_lora_classifier.add_lora(model, finetune_lora_classifier.parse_args([]))
    trainable, total = count_parameters(model)
    assert trainable / total < 0.01


def test_lora_script_rejects_unknown_targets(capsys):
    model = GPTClassifier(GPTModel(GPTConfig(vocab_size=64, context_length=8, n_layer=1,
                                             n_head=1, n_embd=8)))
    with pytest.raises(SystemExit) as exit:  # at the edge, before anything is loaded
        finetune_lora_classifier.parse_args(["--targets", "qkv", "lm_head"])
    assert exit.value.code == 2
    assert capsys.readouterr().err.startswith("error: --targets: invalid choice: 'lm_head'")
    finetune_lora_classifier.add_lora(model, finetune_lora_classifier.parse_args([]))


def test_lora_compares_only_with_a_full_finetune_of_the_same_base(tmp_path, capsys):
    path = tmp_path / "classifier" / "metrics.json"
    path.parent.mkdir()
    rows = [{"model": "majority class", "dev_acc": 0.5, "trainable": 0},
            {"model": "full finetune (pretrained)", "dev_acc": 0.7, "trainable": 9, "total": 9}]
    path.write_text(json.dumps({"rows": rows, "base_fingerprint": "same"}))
    compared = compared_rows(path, "same")
    assert [r["model"] for r in compared] == ["full finetune (pretrained) [classifier]"]
    assert compared_rows(path, "another") == []
    assert "different base model" in capsys.readouterr().out


# ---------------------------------------------------------------------------- end to end


def run(script: str, *flags: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LLM_DATA_DIR": str(SHARED_DATA), "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1"}  # tiny models: one thread is faster on a busy machine
    return subprocess.run([sys.executable, str(ROOT / script), *flags], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_SST2 or not (SHARED_DATA / "tinyshakespeare.txt").is_file(),
                    reason="needs the shared SST-2 and TinyShakespeare files")
def test_both_scripts_end_to_end(tmp_path, monkeypatch):
    made = run("main.py", "--preset", "tiny", "--max-steps", "2", "--sample-tokens", "0",
               "--checkpoint-interval", "0", "--vocab-size", "260", cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-2000:]
    tiny = ("--max-steps", "3", "--train-size", "64", "--batch-size", "16", "--eval-interval",
            "3", "--device", "cpu", "--dtype", "float32")

    full = run("finetune_classifier.py", *tiny, cwd=tmp_path)
    assert full.returncode == 0, full.stderr[-2000:]
    lora = run("finetune_lora_classifier.py", *tiny, "--rank", "2", cwd=tmp_path)
    assert lora.returncode == 0, lora.stderr[-2000:]

    rows = json.loads((tmp_path / "runs/classifier/metrics.json").read_text())["rows"]
    assert [r["model"] for r in rows] == [  # scikit-learn is a requirement: TF-IDF is there
        "majority class", "TF-IDF 1-2gram + logistic regression", "full finetune (pretrained)",
        "full finetune (random init)"]
    assert rows[0]["dev_acc"] == pytest.approx(444 / 872)  # GLUE dev: 444 positive of 872
    lora_rows = json.loads((tmp_path / "runs/lora-classifier/metrics.json").read_text())["rows"]
    lora_row = next(r for r in lora_rows if r["model"].startswith("LoRA"))
    assert lora_row["trainable"] < rows[2]["trainable"]
    assert any("[classifier]" in r["model"] for r in lora_rows)  # the full run, for comparison
    assert "dev acc" in lora.stdout and "LoRA r=2" in lora.stdout
    for name in ("classifier", "classifier-random-init", "lora-classifier"):
        log = (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines()
        assert json.loads(log[0])["step"] == 3 and "dev_acc" in json.loads(log[-1])

    full_ckpt, lora_ckpt = tmp_path / "classifier.pth", tmp_path / "lora_classifier.pth"
    assert lora_ckpt.stat().st_size < full_ckpt.stat().st_size
    monkeypatch.chdir(tmp_path)  # the LoRA checkpoint names its base as it was given
    for ckpt in (full_ckpt, lora_ckpt):
        model, tok, meta = load_classifier(ckpt)
        label, probs = predict(model, tok, "A charming, often affecting journey.")
        assert label in probs and meta["train_size"] == 64

    missing = run("finetune_lora_classifier.py", "--base", "nope.pth", cwd=tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: No checkpoint at nope.pth: run python main.py first."


def test_instruction_report_writes_samples_and_metrics_and_prints_the_answers(tmp_path,
                                                                               monkeypatch,
                                                                               capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs/qlora").mkdir(parents=True)
    args = argparse.Namespace(run_name="qlora", out="adapters.pth")
    rows = [{"model": "base", "loss": 2.0}, {"model": "tuned", "loss": 1.0}]
    samples = [{"instruction": f"Say {w}.", "context": "", "reference": w,
                "base_answer": "?", "tuned_answer": w} for w in ("yes", "no", "maybe")]
    instruction_report(args, rows, samples, started=0.0, steps=7, backend="scratch",
                       heldout_examples=3, train_examples=1200)

    metrics = json.loads((tmp_path / "runs/qlora/metrics.json").read_text())
    assert [row["perplexity"] for row in metrics["rows"]] == pytest.approx([7.389056, 2.718282])
    assert list(metrics)[-4:] == ["backend", "heldout_examples", "train_examples",
                                  "wall_time_s"]
    lines = (tmp_path / "runs/qlora/samples.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == samples
    out = capsys.readouterr().out
    assert "(3 examples); trained on 1,200 examples, 7 steps" in out
    assert out.count("### Instruction:") == 2 and "Say maybe." not in out
    assert "Saved adapters.pth; results in runs/qlora/metrics.json" in out
