"""Hostile command lines: flags, output folders, signals and outputs a program reads.

Every case is the user's side of the contract: one sentence that names the flag or file (exit
status 1, or 2 where the flag parser refuses it before any work), or 130 / 143 after Ctrl-C /
SIGTERM, never a traceback, and no file of the user's written over. Scripts whose exit status
matters run as real processes, started together since each pays for importing torch.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, SHARED_DATA
from test_training import CPU, fresh_model, loaders

import export_hf
import finetune_classifier
import finetune_lora_classifier
import finetune_qlora_instructions
import main
import sample
from benchmarks.probe_hostile_cli import save_checkpoints_and_user_files, tiny_gpt
from checkpoint import save_checkpoint
from generation import generate_text
from support.cli import run
from support.hub import MANIFEST
from support.runtime import Bookkeeping
from training import TrainConfig, lm_loss, train_model

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "LLM_DATA_DIR": str(SHARED_DATA),
       "PYTHONPATH": str(ROOT)}
pytestmark = pytest.mark.slow  # the scripts as processes: exit codes, signals, refusals


def tiny_base(folder: Path, name: str = "model_weights.pth", nan: bool = False) -> Path:
    """The probe's ``tiny_gpt`` saved as main.py saves it, in ``folder``."""
    save_checkpoint(folder / name, *tiny_gpt(nan))
    return folder / name


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A folder like the project's after main.py (the probe's): model_weights.pth,
    nan_weights.pth, classifier.pth and a user's README.md and tokenizer.json."""
    folder = tmp_path_factory.mktemp("project")
    save_checkpoints_and_user_files(folder)
    return folder


def start(script: str, *args: str, cwd: Path, stdin: bytes | None = None) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, str(ROOT / script), *args], cwd=cwd, env=ENV,
                               stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.given_input = stdin
    return process


def finish(process: subprocess.Popen) -> tuple[int, str, bytes]:
    """(exit status, stderr, stdout) of a started script."""
    out, err = process.communicate(process.given_input, timeout=300)
    return process.returncode, err.decode(), out


def assert_one_sentence(err: str, *words: str) -> None:
    """stderr is one line, "error: ...", no traceback, naming each of ``words``."""
    assert "Traceback" not in err and err.startswith("error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err, err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------- export_hf --out


def test_export_into_a_users_folder_is_refused_and_writes_nothing(project):
    """--out . once wrote over the project's README.md and tokenizer.json; "" means . too."""
    (project / "notes").mkdir(exist_ok=True)
    (project / "notes" / "config.json").write_text("{}")
    before = snapshot(project)
    runs = {out: start("export_hf.py", "--out", out, cwd=project)
            for out in (".", "", "notes", "model_weights.pth", "model_weights.pth/hf")}
    results = {out: finish(process) for out, process in runs.items()}
    assert snapshot(project) == before  # nothing written, nothing left behind
    for out, (code, err, _) in results.items():
        assert code == 1, (out, err)
        assert_one_sentence(err, f"--out {out}".rstrip())
    assert "did not write (README.md, classifier.pth, model_weights.pth" in results["."][1]
    assert "did not write (config.json)" in results["notes"][1]
    assert "is empty" in results[""][1]
    assert "is a file" in results["model_weights.pth"][1]
    assert "inside model_weights.pth, which is a file" in results["model_weights.pth/hf"][1]


def test_export_replaces_only_its_own_files(project, tmp_path, capsys):
    out = tmp_path / "hf"
    for _ in range(2):  # a new folder, then the same folder again: it is the exporter's
        assert export_hf.main(["--checkpoint", str(project / "model_weights.pth"),
                               "--out", str(out)]) == 0
    written = json.loads((out / MANIFEST).read_text())["files"]
    assert sorted(written) == sorted(p.name for p in out.iterdir() if p.name != MANIFEST)
    assert f'model="{out}"' in (out / "README.md").read_text()  # not the staging folder's
    assert not [p for p in tmp_path.iterdir() if p.name != "hf"]  # no staging folder left
    (out / "README.md").write_text("edited by hand\n")  # now the user's, not the exporter's
    with pytest.raises(SystemExit) as exit:
        run(lambda: export_hf.main(["--checkpoint", str(project / "model_weights.pth"),
                                    "--out", str(out)]))
    assert exit.value.code == f"error: --out {out} holds files export_hf.py did not write " \
                              "(README.md); give a new or empty folder."
    assert (out / "README.md").read_text() == "edited by hand\n"


def test_export_to_a_folder_it_cannot_write_is_one_sentence(project, tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr("tempfile.TemporaryFile", read_only)
    with pytest.raises(SystemExit) as exit:
        run(lambda: export_hf.main(["--checkpoint", str(project / "model_weights.pth"),
                                    "--out", str(tmp_path / "hf")]))
    assert exit.value.code == f"error: Cannot write --out {tmp_path / 'hf'}: " \
                              "Read-only file system."
    assert not (tmp_path / "hf").exists()


# ---------------------------------------------------------------------------- Ctrl-C, SIGTERM

FINETUNES = {  # script -> its flags for a run far longer than the test waits
    "finetune_classifier.py": ["--skip-random-init"],
    "finetune_lora_classifier.py": [],
    "finetune_qlora_instructions.py": ["--data-file", "instruction-data-1100.jsonl",
                                       "--samples", "0"],
}


@pytest.mark.skipif(not (SHARED_DATA / "sst2").exists(), reason="needs the real SST-2 data")
def test_a_stopped_finetune_exits_130_or_143_and_keeps_out(tmp_path):
    """They exited 0 and saved the early model over --out, so run_all.py went on."""
    base = tiny_base(tmp_path)
    runs = {}
    for (script, flags), sig in zip(FINETUNES.items(),
                                    (signal.SIGTERM, signal.SIGINT, signal.SIGTERM), strict=True):
        out = tmp_path / f"{script}.pth"
        out.write_bytes(b"the last finished run")
        process = start(script, "--base", str(base), "--out", str(out), "--max-steps", "100000",
                        "--train-size", "64", "--batch-size", "4", "--run-name", script,
                        "--device", "cpu", *flags, cwd=tmp_path)
        runs[script] = (process, sig, out)
    for script, (process, sig, _) in runs.items():  # the first log line: training is under way
        log = tmp_path / "runs" / script / "metrics.jsonl"
        deadline = time.monotonic() + 240
        while not log.exists() or not log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, finish(process)[1]
            time.sleep(0.2)
        process.send_signal(sig)
    for process, sig, out in runs.values():
        code, err, _ = finish(process)
        assert code == 128 + sig, err
        assert "Traceback" not in err, err
        assert ("stopped early at step " in err and "the half-trained model was not saved "
                f"({out} still holds the last finished run)") in err, err
        assert out.read_bytes() == b"the last finished run"


# ---------------------------------------------------------------------------- NaN in training


@pytest.mark.parametrize("interrupted", [False, True])
def test_a_loss_that_is_not_a_number_stops_training_and_saves_nothing(interrupted):
    """NaN adapters, --alpha inf or a wild --lr trained on and saved a NaN model."""
    calls, saved = 0, []

    def poisoned_at_step_3(model, batch):
        nonlocal calls
        calls += 1
        if calls == 3:  # the weights stop being numbers (as after a too large step)
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
            if interrupted:  # Ctrl-C now: the loop ends and would save the last state
                os.kill(os.getpid(), signal.SIGINT)
        return lm_loss(model, batch)

    cfg = TrainConfig(max_steps=40, warmup_steps=2, eval_interval=1000, checkpoint_interval=5)
    train, val = loaders()
    with pytest.raises(ValueError, match=r"^The training loss became nan at step [35]: the "
                       r"weights are no longer numbers, so training stopped without saving "
                       r"them\. Lower --lr \(or --alpha\) and run again\.$"):
        train_model(fresh_model(), train, val, cfg, CPU, loss_fn=poisoned_at_step_3,
                    bookkeeping=Bookkeeping(save_fn=lambda state: saved.append(state["step"]),
                                            best_fn=lambda state: saved.append(state["step"])))
    assert saved == []


# ---------------------------------------------------------------------------- flags


@pytest.mark.parametrize("module, argv, message", [
    (main, ["--seed", "18446744073709551616"],  # was "Overflow when unpacking long long"
     "--seed must be an integer >= 0 and <= 2147483647, got 18446744073709551616"),
    (finetune_classifier, ["--seed", "-1"], "--seed must be an integer >= 0"),
    (finetune_lora_classifier, ["--alpha", "inf"], "--alpha must be a finite number > 0, got inf"),
    (finetune_qlora_instructions, ["--alpha", "nan"],
     "--alpha must be a finite number > 0, got nan"),
    (finetune_classifier, ["--base", "b" * 5000],  # was OSError: File name too long
     "--base must be a path the system can hold (at most 255 bytes per file or folder name, "
     "4,096 in all), got one of 5,000 characters"),
    (sample, ["--model", "m/" * 2100], "--model must be a path the system can hold"),
    (export_hf, ["--out", "o" * 300], "--out must be a path the system can hold"),
    (main, ["--run-name", "../../x"],  # wrote outside runs/
     "--run-name must be one folder name inside runs/ (no '/', not '..'), got '../../x'"),
    (finetune_lora_classifier, ["--run-name", ".."], "--run-name must be one folder name"),
    (finetune_qlora_instructions, ["--run-name", "a/b"], "--run-name must be one folder name"),
])
def test_a_bad_flag_is_one_sentence_before_any_work(module, argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        module.parse_args(argv)
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.startswith(f"error: {message}") and err.count("\n") == 1


def test_sampling_settings_that_overflowed_are_one_sentence():
    model, tokenizer = tiny_gpt()
    for settings, message in [({"temperature": 1e39}, "--temperature must be a number from 0 "
                               "to 100 (0 means greedy; above 2 the text is mostly noise), got "
                               "1e+39."),
                              ({"max_new_tokens": 10**12}, "--max-new-tokens must be an integer "
                               "from 0 to 100,000, got 1000000000000.")]:
        with pytest.raises(ValueError) as error:
            generate_text(model, tokenizer, "ROMEO:", **{"max_new_tokens": 5, **settings})
        assert str(error.value) == message


def test_a_model_whose_weights_are_nan_cannot_be_sampled_and_says_so():
    """torch.multinomial raised "probability tensor contains either inf, nan or element < 0"."""
    model, tokenizer = tiny_gpt(nan=True)
    with pytest.raises(ValueError, match=r"^The model's next-token scores are NaN or infinite"):
        generate_text(model, tokenizer, "ROMEO:", max_new_tokens=5, temperature=0.8, seed=0)


# ---------------------------------------------------------------------------- the scripts


def test_the_scripts_say_one_sentence_and_write_valid_output(project):
    """Each runs as a process: exit status, stderr and what a program reads from stdout."""
    bad_utf8 = b"caf\xe9 is good\n\xff\xfe\n"
    runs = {
        "temperature": start("sample.py", "--temperature", "1e39", "--device", "cpu",
                             cwd=project),
        "tokens": start("sample.py", "--max-new-tokens", "100000000000", "--device", "cpu",
                        cwd=project),
        "seed": start("main.py", "--seed", "18446744073709551616", cwd=project),
        "base": start("finetune_classifier.py", "--base", "b" * 5000, cwd=project),
        "classify": start("classify.py", "--json", "-", os.fsdecode(b"bad \xff"), cwd=project,
                          stdin=bad_utf8),
        "evaluate": start("evaluate.py", "--checkpoint", "nan_weights.pth", "--out",
                          "nan.json", "--device", "cpu", cwd=project),
        "prompt": start("sample.py", "--prompt", os.fsdecode(b"RO\xffMEO"), "--max-new-tokens",
                        "5", "--device", "cpu", cwd=project),
        "n-embd": start("main.py", "--n-embd", "65536", "--n-head", "1", cwd=project),
        "unwritable": start("main.py", "--tokenizer", "/proc/no/tokenizer.json", "--preset",
                            "tiny", "--instruction-file",
                            str(SHARED_DATA / "instruction-data-1100.jsonl"), cwd=project),
    }
    results = {name: finish(process) for name, process in runs.items()}
    for name in ("temperature", "tokens"):  # refused as parsed: the flag types hold the bounds
        assert results[name][0] == 2
        assert_one_sentence(results[name][1], f"--{name.replace('tokens', 'max-new-tokens')}")
    for name in ("seed", "base"):
        assert results[name][0] == 2 and results[name][1].startswith(f"error: --{name} must ")
    assert results["n-embd"][0] == 1  # was an allocator's traceback (51 GB for one matrix)
    assert_one_sentence(results["n-embd"][1], "--n-embd 65536", "make it smaller")
    assert results["unwritable"][0] == 1  # was PermissionError's traceback
    assert_one_sentence(results["unwritable"][1], "Cannot use /proc/no")
    code, err, out = results["classify"]
    assert code == 0, err
    lines = [json.loads(line) for line in out.decode("utf-8").splitlines()]  # valid UTF-8
    assert [line["text"] for line in lines] == ["caf\ufffd is good", "\ufffd\ufffd",
                                                "bad \ufffd"]
    code, err, out = results["prompt"]  # the byte came back raw, so the output was not UTF-8
    assert code == 0 and out.decode("utf-8").startswith("RO\ufffdMEO"), err
    code, err, out = results["evaluate"]
    if code == 0:  # scored: NaN figures are null in valid JSON, and the output says why
        record = json.loads((project / "nan.json").read_text(), parse_constant=pytest.fail)
        assert record["model"]["perplexity"] is None
        assert "null stands for what is not a finite number: model.perplexity (nan)" in \
            out.decode()
    else:  # or the file is refused when loaded: one sentence naming it
        assert_one_sentence(err, "nan_weights.pth")
