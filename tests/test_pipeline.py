"""End to end: the scripts run from the shell, at tiny scale, on the real data files."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, SHARED_DATA

from checkpoint import load_checkpoint, read_checkpoint

SCRIPTS = ["main.py", "evaluate.py"]
needs_data = pytest.mark.skipif(not (SHARED_DATA / "tinyshakespeare.txt").exists(),
                                reason=f"real data not found in {SHARED_DATA}")
pytestmark = pytest.mark.slow  # every test here runs main.py or evaluate.py as a process


def run(args: list[str], cwd, check: bool = True, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "LLM_DATA_DIR": str(SHARED_DATA), "OMP_NUM_THREADS": "1", **env}
    result = subprocess.run([sys.executable, *args], cwd=cwd, env=environment, text=True,
                            capture_output=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_has_help(script, tmp_path):
    out = run([str(ROOT / script), "--help"], tmp_path).stdout
    assert "usage:" in out and "--device" in out


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """main.py's tiny preset on the real TinyShakespeare file, then evaluate.py on it."""
    workdir = tmp_path_factory.mktemp("pipeline")
    instructions = SHARED_DATA / "instruction-data-1100.jsonl"
    result = run([str(ROOT / "main.py"), "--preset", "tiny", "--max-steps", "200",
                  "--instruction-file", str(instructions), "--sample-tokens", "20"], workdir)
    return workdir, result


@needs_data
def test_main_trains_saves_and_logs(pretrained):
    workdir, result = pretrained
    assert "--- sample ---" in result.stdout
    assert (workdir / "tokenizer.json").exists()
    records = [json.loads(line) for line in
               (workdir / "runs/pretrain/metrics.jsonl").read_text().splitlines()]
    val = {r["step"]: r["val_loss"] for r in records if "val_loss" in r}
    assert records[-1]["step"] == 200 and val[200] < val[10]
    # model_weights.pth holds the weights of the evaluation with the lowest val loss.
    model, tokenizer, meta = load_checkpoint(workdir / "model_weights.pth")
    assert meta["dataset"] == "tinyshakespeare" and meta["val_loss"] == min(val.values())
    assert val[meta["step"]] == min(val.values())
    state = read_checkpoint(workdir / "runs/pretrain/state.pt", kind="train-state")
    assert state["training"]["step"] == 200
    assert state["metadata"]["train_config"]["optimizer"] == "muon"  # the presets' optimizer


@needs_data
def test_evaluate_beats_both_reference_points(pretrained):
    workdir, _ = pretrained
    result = run([str(ROOT / "evaluate.py")], workdir)
    assert "bits/char" in result.stdout
    metrics = json.loads((workdir / "runs/evaluate/metrics.json").read_text())
    assert metrics["model"]["nats_per_char"] < metrics["untrained"]["nats_per_char"]
    assert metrics["model"]["nats_per_char"] < metrics["unigram"]["nats_per_char"]
    assert metrics["model"]["bits_per_char"] == pytest.approx(
        metrics["model"]["nats_per_char"] / 0.6931471805599453)
    assert metrics["model"]["chars"] > 100_000  # the whole last 10 % of the text


@needs_data
def test_resume_continues_from_the_saved_state(pretrained):
    workdir, _ = pretrained
    result = run([str(ROOT / "main.py"), "--preset", "tiny", "--max-steps", "210", "--resume",
                  "--sample-tokens", "0"], workdir)
    assert "Resuming" in result.stdout and "at step 210" in result.stdout
    state = read_checkpoint(workdir / "runs/pretrain/state.pt", kind="train-state")
    assert state["training"]["step"] == 210
    records = [json.loads(line) for line in
               (workdir / "runs/pretrain/metrics.jsonl").read_text().splitlines()]
    best = min((r["val_loss"], r["step"]) for r in records if "val_loss" in r)
    assert load_checkpoint(workdir / "model_weights.pth")[2]["step"] == best[1]
    done = run([str(ROOT / "main.py"), "--resume", "--max-steps", "210"], workdir, check=False)
    assert done.returncode != 0 and "already at step 210 of 210" in done.stderr


@needs_data
def test_nanogpt_split_trains_on_the_first_90_percent_and_resume_keeps_it(pretrained):
    workdir, _ = pretrained
    tokenizer = load_checkpoint(workdir / "model_weights.pth")[1]
    text = (SHARED_DATA / "tinyshakespeare.txt").read_text(encoding="utf-8")
    expected = len(tokenizer.encode(text[: len(text) * 90 // 100]))

    def train_tokens(stdout: str) -> int:
        return int(re.search(r"; ([\d,]+) train tokens", stdout).group(1).replace(",", ""))

    common = ["--preset", "tiny", "--run-name", "nano", "--out", "nano.pth", "--sample-tokens", "0"]
    first = run([str(ROOT / "main.py"), *common, "--max-steps", "10", "--nanogpt-split"], workdir)
    assert train_tokens(first.stdout) == expected
    assert load_checkpoint(workdir / "nano.pth")[2]["split"] == "nanogpt"
    resumed = run([str(ROOT / "main.py"), *common, "--max-steps", "12", "--resume"], workdir)
    assert train_tokens(resumed.stdout) == expected  # the text it started on, flag or not
    val = run([str(ROOT / "evaluate.py"), "--checkpoint", "nano.pth", "--split", "val",
               "--out", "runs/nano-val.json"], workdir)
    assert "has seen the val split" in val.stdout
    standard = ["--preset", "tiny", "--run-name", "std", "--out", "std.pth", "--sample-tokens", "0"]
    run([str(ROOT / "main.py"), *standard, "--max-steps", "10"], workdir)
    late = run([str(ROOT / "main.py"), *standard, "--max-steps", "12", "--resume",
                "--nanogpt-split"], workdir)
    assert "--nanogpt-split ignored" in late.stdout and train_tokens(late.stdout) < expected


@needs_data
def test_loss_by_line_splits_the_evaluated_loss_into_names_and_the_rest(pretrained):
    workdir, _ = pretrained
    out = run([str(ROOT / "benchmarks" / "loss_by_line.py")], workdir).stdout
    assert "880 of 882 speeches are by speakers the training text never has speak" in out
    rows = {line[:16].strip(): line[16:].split() for line in out.splitlines()[2:5]}
    chars = {k: int(v[0].replace(",", "")) for k, v in rows.items()}
    nats = {k: float(v[2]) for k, v in rows.items()}
    assert chars["speaker names"] + chars["everything else"] == chars["all"] == 111_540
    weighted = (nats["speaker names"] * chars["speaker names"]
                + nats["everything else"] * chars["everything else"]) / chars["all"]
    assert weighted == pytest.approx(nats["all"], abs=2e-4)
    run([str(ROOT / "evaluate.py"), "--out", "runs/by-line.json"], workdir)
    evaluated = json.loads((workdir / "runs/by-line.json").read_text())["model"]
    assert nats["all"] == pytest.approx(evaluated["nats_per_char"], rel=1e-3)


@needs_data
@pytest.mark.parametrize("flags, message", [
    (["--out", "."], "is a folder; give a file name"),
    (["--sample-tokens", "-1"], "--sample-tokens must be an integer >= 0 and <= 100000, got -1"),
    (["--sample-tokens", "100001"], "--sample-tokens must be an integer >= 0 and <= 100000, "
     "got 100001"),  # was refused by generate_text only after the whole run had trained
    (["--max-steps", "0"], "--max-steps must be an integer >= 1, got 0"),
    (["--n-head", "0"], "--n-head must be an integer >= 1, got 0"),
    (["--learning-rate", "nan"], "--learning-rate must be a finite number > 0, got nan"),
    (["--dropout", "1"], "--dropout must be a finite number >= 0 and < 1, got 1"),
])
def test_bad_flags_fail_before_any_work(tmp_path, flags, message):
    result = run([str(ROOT / "main.py"), "--preset", "tiny", *flags], tmp_path, check=False)
    assert result.returncode != 0 and message in result.stderr
    assert "Traceback" not in result.stderr and "usage:" not in result.stderr  # one sentence
    assert "Training a" not in result.stdout  # no tokenizer was trained first


def test_help_shows_each_presets_real_default(tmp_path):
    out = " ".join(run([str(ROOT / "main.py"), "--help"], tmp_path).stdout.split())
    assert "optimizer steps (default: 1800 (cpu preset), 1000 (gpu), 30 (tiny))" in out
    assert "(default: 0.1 (every preset))" in out  # --weight-decay
    assert "None" not in out


def test_missing_checkpoint_is_one_clear_sentence(tmp_path):
    result = run([str(ROOT / "evaluate.py"), "--checkpoint", "nope.pth"], tmp_path, check=False)
    assert result.returncode != 0
    assert "run python main.py first" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_data_is_one_clear_sentence(tmp_path):
    result = run([str(ROOT / "main.py"), "--preset", "tiny", "--data-dir", str(tmp_path)],
                 tmp_path, check=False)
    assert result.returncode != 0
    assert "tinyshakespeare.txt" in result.stderr and "Traceback" not in result.stderr


def test_cuda_request_without_a_gpu_is_one_clear_sentence(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = run([str(ROOT / "evaluate.py"), "--device", "cuda"], tmp_path, check=False)
    assert "no CUDA GPU" in result.stderr and "Traceback" not in result.stderr
