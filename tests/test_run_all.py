"""run_all.py: the pipeline's steps in order, the first failure stops the run with its exit code,
and runs/summary.md is built from the metrics files the steps write.

The real scripts take minutes even at toy scale (tests/test_app.py builds the same tiny
project in-process), so the order and the stopping are checked with stand-in scripts that
record their arguments, and the summary with metrics files shaped like the scripts' own.
"""

import json
from pathlib import Path

import pytest

import run_all


@pytest.fixture
def stand_ins(tmp_path, monkeypatch):
    """A folder of stand-in scripts, one per step: each appends its name and flags to log.txt
    and exits with the code named in $FAIL_<script stem>, else 0."""
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    for script in run_all.STEPS:
        (scripts / script).write_text(
            "import os, sys\n"
            "with open('log.txt', 'a') as f:\n"
            "    f.write(' '.join([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + '\\n')\n"
            f"sys.exit(int(os.environ.get('FAIL_{Path(script).stem}', 0)))\n")
    monkeypatch.setattr(run_all, "ROOT", scripts)
    return tmp_path / "work"


def test_every_step_runs_in_order_then_the_summary_is_written(stand_ins, capsys):
    assert run_all.main(["--work-dir", str(stand_ins)]) == 0
    assert (stand_ins / "log.txt").read_text().splitlines() == list(run_all.STEPS)
    assert (stand_ins / "runs" / "summary.md").read_text().startswith("# This run's results")
    assert "All 5 steps done" in capsys.readouterr().out


def test_the_first_failing_step_stops_the_run_with_its_exit_code(stand_ins, monkeypatch,
                                                                  capsys):
    monkeypatch.setenv("FAIL_finetune_classifier", "3")
    assert run_all.main(["--work-dir", str(stand_ins)]) == 3
    assert (stand_ins / "log.txt").read_text().splitlines() == [
        "main.py", "evaluate.py", "finetune_classifier.py"]
    assert not (stand_ins / "runs" / "summary.md").exists()
    assert "python finetune_classifier.py failed (exit code 3); stopping here." in \
        capsys.readouterr().out


def test_quick_and_data_flags_reach_the_right_scripts(tmp_path):
    data, instructions = tmp_path / "data", tmp_path / "data" / "my.jsonl"
    args = run_all.parse_args(["--quick", "--data-dir", str(data),
                               "--instruction-file", str(instructions)])
    commands = {script: flags for script, *flags in run_all.commands(args)}
    assert list(commands) == list(run_all.STEPS)
    assert commands["main.py"] == [*run_all.QUICK["main.py"], "--data-dir", str(data),
                                   "--instruction-file", str(instructions)]
    assert commands["evaluate.py"] == ["--data-dir", str(data)]
    assert commands["finetune_qlora_instructions.py"][-2:] == ["--data-file", str(instructions)]
    assert all(script == "main.py" or "--instruction-file" not in flags
               for script, flags in commands.items())
    defaults = run_all.commands(run_all.parse_args([]))
    assert defaults == [[script] for script in run_all.STEPS]  # the README's commands, as is


def test_an_instruction_file_is_a_path_here_or_a_name_in_the_data_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.jsonl").write_text("")

    def passed(name: str) -> str:
        commands = run_all.commands(run_all.parse_args(["--instruction-file", name]))
        return dict((script, flags) for script, *flags in commands)["main.py"][-1]

    assert passed("mine.jsonl") == str(tmp_path / "mine.jsonl")  # the steps run elsewhere
    assert passed("instruction-data-1100.jsonl") == "instruction-data-1100.jsonl"  # data folder


def test_the_summary_holds_every_steps_figures(tmp_path):
    runs = tmp_path / "runs"
    for name in ("pretrain", "evaluate", "classifier", "lora-classifier", "qlora-instruct"):
        (runs / name).mkdir(parents=True)
    (runs / "pretrain" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"step": 200, "train_loss": 4.1, "val_loss": 3.9}, {"step": 300, "train_loss": 3.5},
        {"step": 400, "train_loss": 3.4, "val_loss": 3.7}, {"step": 600, "val_loss": 3.8}]))
    scores = {"perplexity": 47.26, "nats_per_char": 1.6797, "bits_per_char": 2.4233}
    (runs / "evaluate" / "metrics.json").write_text(json.dumps(
        {"checkpoint": "model_weights.pth", "model": scores,
         "unigram": {**scores, "perplexity": 331.7}, "untrained": {**scores, "perplexity": 1e3}}))
    full = {"model": "full finetune (pretrained)", "dev_acc": 0.716, "trainable": 941058,
            "total": 941058, "train_time_s": 57.2, "peak_mem_mb": 186.0}
    (runs / "classifier" / "metrics.json").write_text(json.dumps({"rows": [
        {"model": "majority class", "dev_acc": 0.509, "trainable": 0},
        {"model": "TF-IDF 1-2gram + logistic regression", "dev_acc": 0.795,
         "trainable": 63294, "train_time_s": 3.0}, full]}))
    (runs / "lora-classifier" / "metrics.json").write_text(json.dumps({"rows": [
        {"model": "LoRA r=2 (qkv+out_proj)", "dev_acc": 0.622, "trainable": 6402,
         "total": 941058, "train_time_s": 54.0, "peak_mem_mb": float("nan")},
        {**full, "model": "full finetune (pretrained) [classifier]"}]}))
    (runs / "qlora-instruct" / "metrics.json").write_text(json.dumps({"rows": [
        {"model": "base, NF4+DQ (scratch)", "loss": 6.71, "perplexity": 823.0},
        {"model": "QLoRA r=8 (scratch)", "loss": 4.15, "perplexity": 63.6}]}))

    text = run_all.summary_markdown(run_all.sc.read_runs(runs), {"main.py": 305.4})
    assert "| `python main.py` | 305 s |" in text
    assert "Best val loss 3.7000 per token at step 400." in text
    assert "| trained: model_weights.pth | 47.26 | 2.4233 |" in text
    assert "| TF-IDF 1-2gram + logistic regression | 79.5 % | 63,294 | 3 s | - |" in text
    assert "| full finetune (pretrained) | 71.6 % | 941,058 | 57 s | 186 MB |" in text
    assert "| LoRA r=2 (qkv+out_proj) | 62.2 % | 6,402 | 54 s | - |" in text  # NaN: '-'
    assert text.count("full finetune (pretrained)") == 1  # the LoRA run's copy: once
    assert "| QLoRA r=8 (scratch) | 4.15 | 64 |" in text
    assert "Skipped" not in text


def test_a_run_with_no_metrics_gets_a_short_summary(tmp_path):
    text = run_all.summary_markdown(run_all.sc.read_runs(tmp_path / "runs"), {})
    assert text == ("# This run's results\n\n"
                    "Written by `python run_all.py` from the files under runs/; "
                    "compare RESULTS.md.\n")
