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

RECORD = json.dumps({"instruction": "Say hi.", "context": "", "response": "Hi.",
                     "category": "open_qa"})


def data_folder(folder: Path, dolly: bool = True, sst2: bool = True) -> Path:
    """A data folder with stand-ins for every step's files (their contents are not read
    before the steps run; the instruction file's records are)."""
    (folder / "sst2").mkdir(parents=True)
    (folder / "tinyshakespeare.txt").write_text("First Citizen:\n")
    if sst2:
        for name in ("train", "dev"):
            (folder / "sst2" / f"{name}.tsv").write_text("sentence\tlabel\ngood\t1\n")
    if dolly:
        (folder / "databricks-dolly-15k.jsonl").write_text(RECORD + "\n")
    return folder


@pytest.fixture
def stand_ins(tmp_path, monkeypatch):
    """A folder of stand-in scripts, one per step: each appends its name and flags to log.txt
    and exits with the code named in $FAIL_<script stem>, else 0; and a data folder that has
    every step's files."""
    monkeypatch.setenv("LLM_DATA_DIR", str(data_folder(tmp_path / "data")))
    monkeypatch.setattr(run_all.sc, "projected_memory", lambda: None)  # seconds: tested apart
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
    assert (stand_ins / "summary.md").read_text().startswith("# This run's results")
    assert "All 5 steps done" in capsys.readouterr().out


def test_quick_writes_its_summary_at_the_top_of_runs_quick(stand_ins, monkeypatch):
    monkeypatch.chdir(stand_ins.parent)
    assert run_all.main(["--quick"]) == 0
    assert (stand_ins.parent / "runs" / "quick" / "summary.md").is_file()
    assert not (stand_ins.parent / "runs" / "quick" / "runs" / "summary.md").exists()


def test_every_steps_data_is_checked_before_step_1(stand_ins, tmp_path, monkeypatch):
    # No Dolly-15k: the error names run_all's own flag, and nothing has run.
    monkeypatch.setenv("LLM_DATA_DIR", str(data_folder(tmp_path / "no-dolly", dolly=False)))
    with pytest.raises(FileNotFoundError, match="as --instruction-file, e.g. --instruction-file "
                       "instruction-data-1100.jsonl; nothing has run yet") as err:
        run_all.main(["--work-dir", str(stand_ins), "--quick"])
    assert "--data-file" not in str(err.value)
    assert not (stand_ins / "log.txt").exists()
    # With an instruction file of its own the run goes ahead.
    mine = tmp_path / "mine.jsonl"
    mine.write_text(RECORD + "\n")
    assert run_all.main(["--work-dir", str(stand_ins), "--instruction-file", str(mine)]) == 0
    # A missing instruction file or SST-2 file is named, before step 1 too.
    (stand_ins / "log.txt").unlink()
    with pytest.raises(FileNotFoundError, match="--instruction-file nope.jsonl: "):
        run_all.main(["--work-dir", str(stand_ins), "--instruction-file", "nope.jsonl"])
    monkeypatch.setenv("LLM_DATA_DIR", str(data_folder(tmp_path / "no-sst2", sst2=False)))
    with pytest.raises(FileNotFoundError, match="sst2/train.tsv is missing"):
        run_all.main(["--work-dir", str(stand_ins)])
    assert not (stand_ins / "log.txt").exists()


def test_the_first_failing_step_stops_the_run_with_its_exit_code(stand_ins, monkeypatch,
                                                                  capsys):
    monkeypatch.setenv("FAIL_finetune_classifier", "3")
    assert run_all.main(["--work-dir", str(stand_ins)]) == 3
    assert (stand_ins / "log.txt").read_text().splitlines() == [
        "main.py", "evaluate.py", "finetune_classifier.py"]
    assert not (stand_ins / "summary.md").exists()
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
            "total": 941058, "train_time_s": 57.2, "peak_mem_mb": 1186.0,
            "memory": {"weights": 3 * 2**20, "grads": 3 * 2**20, "optimizer": 6 * 2**20,
                       "activations": 40 * 2**20, "batch": [32, 128],
                       "activations_cuda": 41 * 2**20}}
    (runs / "classifier" / "metrics.json").write_text(json.dumps({"rows": [
        {"model": "majority class", "dev_acc": 0.509, "trainable": 0},
        {"model": "TF-IDF 1-2gram + logistic regression", "dev_acc": 0.795,
         "trainable": 63294, "train_time_s": 3.0}, full]}))
    (runs / "lora-classifier" / "metrics.json").write_text(json.dumps({"rows": [
        {"model": "LoRA r=2 (qkv+out_proj)", "dev_acc": 0.622, "trainable": 6402,
         "total": 941058, "train_time_s": 54.0, "peak_mem_mb": float("nan"),
         "memory": {"weights": 3 * 2**20 + 2**17, "grads": 2**15, "optimizer": 2**16,
                    "activations": 38 * 2**20, "batch": [32, 128]}},
        {**full, "model": "full finetune (pretrained) [classifier]"}]}))
    (runs / "qlora-instruct" / "metrics.json").write_text(json.dumps({"rows": [
        {"model": "base, NF4+DQ (scratch)", "loss": 6.71, "perplexity": 823.0},
        {"model": "QLoRA r=8 (scratch)", "loss": 4.15, "perplexity": 63.6,
         "memory": {"weights": 2**20, "grads": 2**16, "optimizer": 2**17,
                    "activations": 50 * 2**20, "batch": [16, 128]}}]}))

    text = run_all.summary_markdown(run_all.sc.read_runs(runs), {"main.py": 305.4})
    assert "| `python main.py` | 305 s |" in text
    assert "Best val loss 3.7000 per token at step 400." in text
    assert "| trained: model_weights.pth | 47.26 | 1.6797 | 2.4233 |" in text  # nats, bits
    assert "| untrained (random) | 1,000.00 |" in text
    assert "| TF-IDF 1-2gram + logistic regression | 79.5 % | 63,294 | 3 s | - |" in text
    assert "| full finetune (pretrained) | 71.6 % | 941,058 | 57 s | 1,186 MB process RSS |" \
        in text
    # The memory by kind, with thousands separators, and what it shows of the lesson.
    assert ("| full finetune (pretrained) | 32 x 128 | 3.00 MB | 3.00 MB | 6.00 MB | 40.00 MB "
            "| 52.00 MB |") in text
    assert "| QLoRA r=8 (scratch) | 16 x 128 | 1.00 MB |" in text
    assert "- Weights: QLoRA r=8 (scratch) 1.0 MB < LoRA r=2 (qkv+out_proj) 3.1 MB." in text
    assert "The totals do not order as the methods imply" in text
    assert ("- On the GPU, full finetune (pretrained)'s forward pass took 41.0 MB above its "
            "weights (torch.cuda.max_memory_allocated); counted: 40.0 MB saved") in text
    bars = text.split("```")[1].splitlines()[1:]
    assert bars[0].startswith("full finetune (pretrained)") and "█" in bars[0] \
        and "░" in bars[0] and bars[0].endswith("52.00 MB")
    assert "| LoRA r=2 (qkv+out_proj) | 62.2 % | 6,402 | 54 s | - |" in text  # NaN: '-'
    sentiment = text.split("## Sentiment")[1].split("##")[0]
    assert sentiment.count("full finetune (pretrained)") == 1  # the LoRA run's copy: once
    assert "| QLoRA r=8 (scratch) | 4.15 | 64 |" in text
    assert "Skipped" not in text


def test_a_run_with_no_metrics_gets_a_short_summary(tmp_path):
    text = run_all.summary_markdown(run_all.sc.read_runs(tmp_path / "runs"), {})
    assert text == ("# This run's results\n\n"
                    "Written by `python run_all.py` from the files under runs/; "
                    "compare RESULTS.md.\n")


def test_the_summary_shows_the_124m_projection_in_the_lesson_s_order():
    projection = run_all.sc.projected_memory()
    text = run_all.summary_markdown(run_all.sc.read_runs(Path("no-runs-here")), {}, projection)
    assert "## The same count for GPT-2 124 M" in text
    assert "The totals order as the methods imply: full finetune (AdamW)" in text
    # 124,439,808 GPT-2 weights + a 768 x 2 head, 4 bytes each; AdamW: two moments of each
    assert "| full finetune (AdamW) | 8 x 128 | 474.71 MB | 474.71 MB | 949.41 MB |" in text


def test_a_missing_data_folder_is_named_by_the_flag_the_user_typed(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        run_all.main(["--data-dir", str(tmp_path / "nowhere")])
    assert str(err.value).endswith("(from --data-dir) does not exist.")
    assert "data_dir" not in str(err.value)


def test_what_the_walkthrough_writes_is_ignored_by_git():
    ignored = set((Path(run_all.ROOT) / ".gitignore").read_text().splitlines())
    assert {"hf-model/", ".venv/", "runs/", "*.pth", "data/"} <= ignored
