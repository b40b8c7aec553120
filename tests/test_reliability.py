"""Faults and scale-out: SIGKILL/SIGTERM mid-run, exact resume, and DDP == one process
(for pretraining and for the finetuning scripts)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, SHARED_DATA

from checkpoint import load_checkpoint, read_checkpoint

pytestmark = [pytest.mark.slow,  # DDP, signals and resumes of whole scripts
              pytest.mark.skipif(not (SHARED_DATA / "tinyshakespeare.txt").exists(),
                                 reason=f"real data not found in {SHARED_DATA}")]

# Deterministic settings: one thread per process, fixed seed, no dropout (tiny preset).
ENV = {**os.environ, "LLM_DATA_DIR": str(SHARED_DATA), "OMP_NUM_THREADS": "1",
       "PYTHONPATH": str(ROOT)}
TINY = ["--preset", "tiny", "--sample-tokens", "0", "--instruction-file",
        str(SHARED_DATA / "instruction-data-1100.jsonl")]


def main_py(workdir, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(ROOT / "main.py"), *TINY, *args], cwd=workdir,
                            env=ENV, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(result.stdout + result.stderr)
    return result


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A folder with a trained tokenizer.json, copied into each test's working folder."""
    workdir = tmp_path_factory.mktemp("tok")
    main_py(workdir, "--max-steps", "1")
    return workdir


def workdir_with_tokenizer(tmp_path, tokenizer_dir, name: str):
    workdir = tmp_path / name
    workdir.mkdir()
    shutil.copy(tokenizer_dir / "tokenizer.json", workdir)
    return workdir


def final_weights(workdir) -> tuple[dict, dict]:
    """The last step's weights and metadata (model_weights.pth holds the best-val step's)."""
    ckpt = read_checkpoint(workdir / "runs/pretrain/state.pt", kind="train-state")
    return ckpt["state_dict"], ckpt["metadata"]


def best_weights(workdir, name: str = "model_weights.pth") -> tuple[dict, dict]:
    model, _, meta = load_checkpoint(workdir / name)
    return model.state_dict(), meta


def wait_for_step(path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until the training state at ``path`` has reached ``step``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError("training ended before it could be interrupted")
        if path.exists():
            try:
                if read_checkpoint(path, kind="train-state")["training"]["step"] >= step:
                    return
            except Exception:  # mid-rename on some filesystems: try again
                pass
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint at step {step} within {timeout} s")


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, tokenizer_dir):
    steps = ["--max-steps", "300", "--checkpoint-interval", "20", "--seed", "7",
             "--dtype", "float32", "--out", "kept.pth"]
    straight = workdir_with_tokenizer(tmp_path, tokenizer_dir, "straight")
    main_py(straight, *steps)

    killed = workdir_with_tokenizer(tmp_path, tokenizer_dir, "killed")
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *TINY, *steps], cwd=killed,
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_step(killed / "runs/pretrain/state.pt", 60, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Whatever moment the kill hit, the last good checkpoint is readable ...
    _, meta = final_weights(killed)
    best_weights(killed, "kept.pth")  # and so is the best-val model
    assert 60 <= meta["step"] < 300
    # ... and `--resume` alone (no preset, steps, seed or --out repeated) reaches exactly the
    # uninterrupted run's weights and loss.
    resumed = subprocess.run([sys.executable, str(ROOT / "main.py"), "--resume",
                              "--sample-tokens", "0"], cwd=killed, env=ENV, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert not (killed / "model_weights.pth").exists()
    expected, expected_meta = final_weights(straight)
    actual, actual_meta = final_weights(killed)
    assert actual_meta["step"] == expected_meta["step"] == 300
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], msg=name)
    (expected, expected_meta), (actual, actual_meta) = (best_weights(straight, "kept.pth"),
                                                        best_weights(killed, "kept.pth"))
    assert actual_meta["step"] == expected_meta["step"]  # the same best-val model was kept
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], msg=name)

    def last_loss(workdir):
        lines = (workdir / "runs/pretrain/metrics.jsonl").read_text().splitlines()
        return json.loads(lines[-1])["train_loss"]

    assert last_loss(killed) == pytest.approx(last_loss(straight), rel=1e-5)


def interrupt(workdir, sig: int, *flags: str) -> tuple[subprocess.Popen, str]:
    """Start main.py, send ``sig`` once its state reaches step 20, return it and its stdout."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *TINY, "--max-steps",
                             "100000", "--checkpoint-interval", "20", *flags], cwd=workdir,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(workdir / "runs/pretrain/state.pt", 20, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err
    return proc, " ".join(out.split())


def test_sigterm_saves_a_checkpoint_before_exiting(tmp_path, tokenizer_dir):
    workdir = workdir_with_tokenizer(tmp_path, tokenizer_dir, "term")
    proc, out = interrupt(workdir, signal.SIGTERM, "--eval-interval", "10")
    assert proc.returncode == 128 + signal.SIGTERM  # 143: the shell's convention
    _, meta = final_weights(workdir)
    assert 20 <= meta["step"] < 100000
    _, best = best_weights(workdir)
    assert f"Training stopped early at step {meta['step']} " in out
    assert (f"Saved the best-val weights (step {best['step']}) to model_weights.pth; "
            "resume state in runs/pretrain/state.pt. To go on: python main.py --resume") in out


def test_ctrl_c_before_any_evaluation_saves_the_last_weights_and_exits_130(tmp_path,
                                                                           tokenizer_dir):
    workdir = workdir_with_tokenizer(tmp_path, tokenizer_dir, "int")
    proc, out = interrupt(workdir, signal.SIGINT, "--eval-interval", "1000000")
    assert proc.returncode == 130
    _, meta = final_weights(workdir)
    _, saved = best_weights(workdir)
    assert saved["step"] == meta["step"] >= 20  # the last weights, as the message says
    assert (f"Training stopped early at step {meta['step']} in " in out
            and "no evaluation yet" in out and "best-val" not in out)
    assert (f"Saved the last weights (step {meta['step']}) to model_weights.pth; resume state "
            "in runs/pretrain/state.pt. To go on: python main.py --resume") in out


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path, tokenizer_dir):
    common = ["--max-steps", "8", "--checkpoint-interval", "0", "--device", "cpu",
              "--dtype", "float32", "--eval-interval", "1000"]
    single = workdir_with_tokenizer(tmp_path, tokenizer_dir, "single")
    main_py(single, *common, "--batch-size", "16")

    ddp = workdir_with_tokenizer(tmp_path, tokenizer_dir, "ddp")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(ROOT / "main.py"), *TINY, *common, "--batch-size", "8"],
        cwd=ddp, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "global batch 16 x 32" in result.stdout

    one, _ = final_weights(single)
    two, _ = final_weights(ddp)
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-4, msg=name)


def torchrun(workdir, script: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(ROOT / script), *args], cwd=workdir, env=ENV, capture_output=True, text=True,
        timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tokenizer_dir):
    """A tiny model_weights.pth for the finetuning scripts (context 128: instructions fit)."""
    workdir = tmp_path_factory.mktemp("base")
    shutil.copy(tokenizer_dir / "tokenizer.json", workdir)
    main_py(workdir, "--max-steps", "5", "--checkpoint-interval", "0", "--context-length", "128")
    return workdir


@pytest.mark.skipif(not (SHARED_DATA / "sst2" / "train.tsv").exists(), reason="needs SST-2")
def test_two_process_classifier_matches_one_process(tmp_path, base_dir):
    """finetune_classifier.py under torchrun: the same weights as one process, same batch."""
    common = ["--base", str(base_dir / "model_weights.pth"), "--max-steps", "4",
              "--train-size", "256", "--eval-interval", "1000", "--device", "cpu",
              "--dtype", "float32", "--skip-random-init", "--no-group-by-length"]
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    single.mkdir(), ddp.mkdir()
    result = subprocess.run([sys.executable, str(ROOT / "finetune_classifier.py"), *common,
                             "--batch-size", "16"], cwd=single, env=ENV, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = torchrun(ddp, "finetune_classifier.py", *common, "--batch-size", "8").stdout
    assert out.count("SST-2, GLUE dev set") == 1  # only rank 0 reports
    assert "2 processes" in out

    from classifier import load_classifier
    one = load_classifier(single / "classifier.pth")[0].state_dict()
    two = load_classifier(ddp / "classifier.pth")[0].state_dict()
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-4, msg=name)
    rows = json.loads((ddp / "runs/classifier/metrics.json").read_text())["rows"]
    assert rows[-1]["processes"] == 2


def test_two_process_qlora_trains_and_saves_once(tmp_path, base_dir):
    out = torchrun(tmp_path, "finetune_qlora_instructions.py", "--base",
                   str(base_dir / "model_weights.pth"), "--data-file",
                   str(SHARED_DATA / "instruction-data-1100.jsonl"), "--max-steps", "3",
                   "--train-size", "64", "--batch-size", "4", "--eval-interval", "1000",
                   "--samples", "1", "--max-new-tokens", "4", "--device", "cpu").stdout
    assert out.count("Held-out response tokens") == 1 and "2 processes" in out
    metrics = json.loads((tmp_path / "runs/qlora-instruct/metrics.json").read_text())
    assert metrics["rows"][-1]["steps"] == 3
