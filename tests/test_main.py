"""main.py on your own text, end to end at tiny scale: a folder the test builds from this
Python's own standard library, prepared once and reused; evaluate.py and sample.py on that
base; an exact resume; 2 DDP processes equal to one; a local dataset file through
--hf-dataset; bad input in one sentence."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, SHARED_DATA

from checkpoint import load_checkpoint, read_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
TINY = ["--preset", "tiny", "--sample-tokens", "0", "--device", "cpu", "--dtype", "float32",
        "--checkpoint-interval", "0"]
STDLIB = Path(sysconfig.get_paths()["stdlib"])
pytestmark = pytest.mark.slow  # every test here runs the scripts as processes


def script(name: str, workdir, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(ROOT / name), *args], cwd=workdir, env=ENV,
                            capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(result.stdout + result.stderr)
    return result


def main_py(workdir, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return script("main.py", workdir, *TINY, *args, check=check)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """About 400 KB of Python: the email package of this Python, one document per file."""
    folder = tmp_path_factory.mktemp("corpus") / "email"
    shutil.copytree(STDLIB / "email", folder, ignore=shutil.ignore_patterns("__pycache__"))
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus):
    workdir = tmp_path_factory.mktemp("own")
    first = main_py(workdir, "--text", str(corpus), "--include", "*.py", "--max-steps", "40",
                    "--eval-interval", "20")
    return workdir, first


def test_own_text_is_prepared_once_and_recorded_in_the_checkpoint(trained, corpus):
    workdir, first = trained
    assert "Training a 320-token BPE tokenizer on" in first.stdout
    assert "Preparing token files for email in data/prepared/email-" in first.stdout
    _, _, meta = load_checkpoint(workdir / "model_weights.pth")
    assert meta["dataset"] == "text" and meta["corpus"]["paths"] == [str(corpus)]
    assert meta["trained_on"].startswith("email (") and "documents" in meta["trained_on"]
    assert meta["split_rule"].startswith("by document: seeded hash order (seed 0)")
    tokens = json.loads((Path(workdir, meta["prepared"]) / "tokens.json").read_text())
    assert tokens["splits"]["test"]["documents"] >= 1
    again = main_py(workdir, "--text", str(corpus), "--include", "*.py", "--max-steps", "2",
                    "--out", "again.pth", "--run-name", "again")
    assert "Reusing tokenizer" in again.stdout and "Reusing the token files" in again.stdout
    assert "Preparing" not in again.stdout


def test_evaluate_and_sample_take_the_base_unchanged(trained):
    workdir, _ = trained
    out = script("evaluate.py", workdir).stdout
    assert "model_weights.pth on the email test split" in out
    metrics = json.loads((workdir / "runs/evaluate/metrics.json").read_text())
    assert metrics["corpus"] == "email"
    assert metrics["model"]["nats_per_char"] < metrics["untrained"]["nats_per_char"]
    assert metrics["unigram"]["nats_per_char"] < metrics["untrained"]["nats_per_char"]
    tokens = json.loads(next((workdir / "data/prepared").glob("email-*/tokens.json"))
                        .read_text())
    assert metrics["model"]["tokens"] == tokens["splits"]["test"]["tokens"] - 1
    sample = script("sample.py", workdir, "--prompt", "def ", "--max-new-tokens", "10",
                    "--no-stream").stdout
    assert sample.startswith("def ")
    import showcase  # the app's overview says what the base read

    model, tokenizer, meta = load_checkpoint(workdir / "model_weights.pth")
    facts = showcase.model_facts(model, tokenizer, meta, workdir / "model_weights.pth")
    assert facts["trained_on"] == meta["trained_on"]


def final_weights(workdir, run: str = "pretrain") -> dict:
    return read_checkpoint(workdir / f"runs/{run}/state.pt", kind="train-state")["state_dict"]


def test_a_killed_run_resumes_exactly(tmp_path, corpus):
    args = ["--text", str(corpus), "--include", "*.py", "--max-steps", "150", "--eval-interval",
            "50", "--checkpoint-interval", "10", "--prepared-dir", str(tmp_path / "tokens")]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    straight.mkdir(), killed.mkdir()
    main_py(straight, *args)
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *TINY, *args], cwd=killed,
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state, deadline = killed / "runs/pretrain/state.pt", time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # kill it once step 20 is saved
        try:
            if read_checkpoint(state, kind="train-state")["training"]["step"] >= 20:
                break
        except Exception:  # not written yet, or mid-rename
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = read_checkpoint(state, kind="train-state")["training"]["step"]
    assert 20 <= step < 150
    resumed = script("main.py", killed, "--resume", "--sample-tokens", "0")
    assert "Reusing the token files" in resumed.stdout and f"at step {step}" in resumed.stdout
    expected, actual = final_weights(straight), final_weights(killed)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)


def test_two_ddp_processes_train_as_one_with_the_same_global_batch(tmp_path, corpus):
    common = [*TINY, "--text", str(corpus), "--include", "*.py", "--max-steps", "6",
              "--eval-interval", "1000", "--prepared-dir", str(tmp_path / "tokens")]
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    single.mkdir(), ddp.mkdir()
    script("main.py", single, *common, "--batch-size", "8")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(ROOT / "main.py"), *common, "--batch-size", "4"],
        cwd=ddp, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "global batch 8 x 32" in result.stdout
    assert result.stdout.count("Reusing the token files") == 1  # rank 0 checks, rank 1 waits
    one, two = final_weights(single), final_weights(ddp)
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-4, msg=name)


def test_a_local_dataset_file_trains_through_hf_dataset(tmp_path, corpus):
    rows = [{"text": path.read_text(encoding="utf-8")} for path in sorted(corpus.glob("*.py"))]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows * 4))
    out = main_py(tmp_path, "--hf-dataset", str(data), "--max-steps", "3").stdout
    assert "Preparing token files for rows.jsonl" in out
    _, _, meta = load_checkpoint(tmp_path / "model_weights.pth")
    assert meta["dataset"] == "hf" and meta["corpus"]["hf_name"] == str(data)
    assert "by document: seeded hash (seed 0)" in meta["trained_on"]


@pytest.mark.parametrize("make, flags, sentence", [
    (lambda d: d.mkdir() or d, [],
     r"error: --text \S+ is an empty folder; point it at text files or change --include\."),
    (lambda d: (d.mkdir(), (d / "a.py").write_text("x = 1\n")) and d, [],
     r"error: --text \S+ holds no file matching --include \*\.txt,\*\.md; point it at text "
     r"files or change --include\."),
    (lambda d: (d.mkdir(), (d / "a.txt").write_text("a few words\n" * 30)) and d / "a.txt",
     ["--vocab-size", "260"],
     r"error: The val split of a\.txt holds \d+ tokens, fewer than one window of 33; use more "
     r"text or a smaller --context-length\."),
    (lambda d: (d.mkdir(), (d / "a.txt").write_text("abc abd\n" * 10_000)) and d / "a.txt", [],
     r"error: The [\d,]+ characters drawn from a\.txt fill only \d+ of the 320 tokens of "
     r"--vocab-size; give a --vocab-size of at most \d+, or more text\."),
])
def test_bad_input_is_one_sentence(tmp_path, make, flags, sentence):
    target = make(tmp_path / "in")
    result = main_py(tmp_path, "--text", str(target), *flags, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(sentence, last), result.stderr
    assert not list(tmp_path.glob("*.pth"))


@pytest.mark.skipif(not (SHARED_DATA / "tinyshakespeare.txt").exists(), reason="needs the data")
def test_an_instruction_file_with_an_existing_tokenizer_is_not_ignored_silently(tmp_path):
    from tokenizer import BPETokenizer

    tokenizer = BPETokenizer()
    tokenizer.train((STDLIB / "json" / "decoder.py").read_text(encoding="utf-8"), 320)
    assert tokenizer.vocab_size == 320
    tokenizer.save(tmp_path / "tokenizer.json")
    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *TINY, "--max-steps", "1", "--instruction-file",
         str(SHARED_DATA / "instruction-data-1100.jsonl")], cwd=tmp_path, capture_output=True,
        text=True, timeout=300, env={**ENV, "LLM_DATA_DIR": str(SHARED_DATA)})
    assert result.returncode == 0, result.stderr
    assert ("Note: --instruction-file is not used: tokenizer.json exists already; delete it to "
            "train a tokenizer that includes that file.") in result.stdout


@pytest.mark.skipif(not (SHARED_DATA / "sst2" / "train.tsv").exists(), reason="needs SST-2")
def test_finetuning_takes_an_own_text_base_unchanged(trained):
    workdir, _ = trained
    result = subprocess.run(
        [sys.executable, str(ROOT / "finetune_classifier.py"), "--base", "model_weights.pth",
         "--max-steps", "2", "--train-size", "64", "--batch-size", "8", "--eval-interval",
         "1000", "--device", "cpu", "--dtype", "float32", "--skip-random-init"],
        cwd=workdir, capture_output=True, text=True, timeout=300,
        env={**ENV, "LLM_DATA_DIR": str(SHARED_DATA)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert (workdir / "classifier.pth").exists()
