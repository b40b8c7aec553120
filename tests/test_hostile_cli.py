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

import export_hf
from checkpoint import save_checkpoint
from model import GPTConfig, GPTModel
from support.cli import run
from support.export_folder import MANIFEST
from tokenizer import BPETokenizer

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "LLM_DATA_DIR": str(SHARED_DATA),
       "PYTHONPATH": str(ROOT)}
TEXT = ("ROMEO:\nBut soft, what light through yonder window breaks?\n"
        "it 's a charming and often affecting journey . the acting is astounding .\n") * 30


def tiny_base(folder: Path, name: str = "model_weights.pth", nan: bool = False) -> Path:
    """A 2-layer checkpoint (with its tokenizer) in ``folder``; ``nan``: its weights are NaN."""
    tokenizer = BPETokenizer()
    tokenizer.train(TEXT, 300)
    torch.manual_seed(0)
    model = GPTModel(GPTConfig(vocab_size=320, context_length=96, n_layer=2, n_head=2,
                               n_embd=32))
    if nan:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan"))
    save_checkpoint(folder / name, model, tokenizer)
    return folder / name


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A folder like the project's after main.py: model_weights.pth and a user's README.md."""
    folder = tmp_path_factory.mktemp("project")
    tiny_base(folder)
    (folder / "README.md").write_text("my notes\n")
    (folder / "tokenizer.json").write_text('{"mine": true}\n')
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
    assert "did not write (README.md, model_weights.pth" in results["."][1]
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
