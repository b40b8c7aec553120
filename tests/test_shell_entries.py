"""The shell entries: sample.py, classify.py and ask.py, each on tiny checkpoints of every kind.

The checkpoints are made in this process (a saved base, a full and a LoRA classifier on it,
QLoRA adapters on it), with the file names the pipeline gives them, so each script runs with
its defaults in that folder. Each script also runs once as a real process from the shell;
all of those start together, since each pays for importing torch.
"""

import io
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT
from test_classifier import perturb
from test_instructions import tiny_gpt, trained_adapters

import ask
import classify
import sample
from checkpoint import load_checkpoint, save_checkpoint, weights_fingerprint
from classifier import LABELS, GPTClassifier, save_classifier, save_lora_classifier
from generation import generate_text
from instructions import answer, format_prompt, load_instruction_model
from lora import apply_lora, freeze_all_but_lora
from support.cli import run
from tokenizer import BPETokenizer

TEXT = ("ROMEO:\nBut soft, what light through yonder window breaks?\n\n"
        "### Instruction:\nName a colour.\n\n### Response:\nThe sky is blue.\n"
        "it 's a charming and often affecting journey . the acting is astounding .\n") * 20
LORA = {"r": 2, "alpha": 4.0, "dropout": 0.0, "targets": ["qkv", "out_proj"]}
SENTENCES = ["A gorgeous, witty, seductive movie.", "It is a bore.", "Not bad at all."]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A folder with model_weights.pth, classifier.pth, lora_classifier.pth and
    qlora_adapters.pth, the adapter files naming the base by its relative path, as the
    finetuning scripts do."""
    folder = tmp_path_factory.mktemp("shell")
    tokenizer = BPETokenizer()
    tokenizer.train(TEXT, 300)
    base = tiny_gpt(seed=0)
    save_checkpoint(folder / "model_weights.pth", base, tokenizer)
    fingerprint = weights_fingerprint(base.state_dict())
    full = GPTClassifier(tiny_gpt(seed=0))
    perturb(full)
    save_classifier(folder / "classifier.pth", full, tokenizer)
    lora = GPTClassifier(tiny_gpt(seed=0))
    apply_lora(lora.gpt, **LORA)
    freeze_all_but_lora(lora, trainable_extra=("head",))
    perturb(lora)
    save_lora_classifier(folder / "lora_classifier.pth", lora, tokenizer,
                         base_path="model_weights.pth", base_fingerprint=fingerprint, lora=LORA)
    trained_adapters("model_weights.pth", tokenizer, "scratch", folder / "qlora_adapters.pth")
    return folder


@pytest.fixture(scope="module")
def shell(project):
    """(stdout, stderr, exit code) of each script run as a process in the project folder."""
    runs = {
        "sample": (["sample.py", "--max-new-tokens", "30", "--seed", "7", "--device", "cpu"], ""),
        "classify": (["classify.py", "--json", "--model", "lora_classifier.pth", "--device",
                      "cpu"], "\n".join([SENTENCES[0], "", SENTENCES[1], SENTENCES[2]]) + "\n"),
        "ask": (["ask.py", "Name a colour.", "--max-new-tokens", "20", "--device", "cpu"], ""),
        "missing": (["classify.py", "--model", "nothing.pth", "Fine."], ""),
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = {name: subprocess.Popen([sys.executable, str(ROOT / args[0]), *args[1:]],
                                        cwd=project, env=env, text=True, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for name, (args, _) in runs.items()}
    results = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(runs[name][1], timeout=300)
        results[name] = (stdout, stderr, process.returncode)
    return results


def call(module, args: list[str], capsys, stdin: str | None = None,
         monkeypatch=None) -> str:
    """What ``module.main(args)`` prints; ``stdin`` replaces standard input."""
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    capsys.readouterr()
    assert module.main([*args, "--device", "cpu"]) == 0
    return capsys.readouterr().out


@pytest.fixture
def in_project(project, monkeypatch):
    monkeypatch.chdir(project)
    return project


# ---------------------------------------------------------------------------- sample.py


@pytest.mark.slow
def test_sample_from_the_shell_streams_the_prompt_and_its_continuation(shell, in_project,
                                                                        capsys):
    stdout, stderr, code = shell["sample"]
    assert code == 0, stderr
    assert stdout.startswith("ROMEO:") and len(stdout) > len("ROMEO:\n")
    # The same seed gives the same text, which is generate_text's with the same settings.
    assert call(sample, ["--max-new-tokens", "30", "--seed", "7"], capsys) == stdout
    model, tokenizer, _ = load_checkpoint("model_weights.pth")
    expected = generate_text(model, tokenizer, "ROMEO:", max_new_tokens=30, temperature=0.8,
                             top_k=50, seed=7)
    assert stdout == "ROMEO:" + expected + "\n"


def test_sample_settings_reach_the_sampler(in_project, capsys):
    greedy = call(sample, ["--temperature", "0", "--prompt", "But", "--max-new-tokens", "20"],
                  capsys)
    assert call(sample, ["--temperature", "0", "--prompt", "But", "--max-new-tokens", "20",
                         "--seed", "99", "--no-stream"], capsys) == greedy  # greedy: no draws
    two = call(sample, ["--num-samples", "2", "--top-k", "0", "--top-p", "0.9"], capsys)
    first, second = two.split("---------------\n")
    assert first.startswith("ROMEO:") and second.startswith("ROMEO:") and first != second
    assert first == call(sample, ["--top-k", "0", "--top-p", "0.9"], capsys)


def test_sample_flags_are_checked_where_they_are_typed(capsys):
    for flag, value, wanted in [("--top-p", "2", "a finite number > 0 and <= 1"),
                                ("--temperature", "-1", "a finite number >= 0 and <= 100"),
                                ("--max-new-tokens", "0", "an integer >= 1 and <= 100000"),
                                ("--top-k", "x", "an integer >= 0")]:
        with pytest.raises(SystemExit) as exit:
            sample.parse_args([flag, value])
        assert exit.value.code == 2
        assert f"error: {flag} must be {wanted}, got {value}" in capsys.readouterr().err


# ---------------------------------------------------------------------------- classify.py


@pytest.mark.slow
def test_classify_from_stdin_answers_each_line_as_json(shell):
    stdout, stderr, code = shell["classify"]
    assert code == 0, stderr
    records = [json.loads(line) for line in stdout.splitlines()]
    assert [r["text"] for r in records] == SENTENCES  # the blank line is skipped
    for record in records:
        assert record["label"] in LABELS and set(record["probabilities"]) == set(LABELS)
        assert record["probabilities"][record["label"]] == max(record["probabilities"].values())
        assert abs(sum(record["probabilities"].values()) - 1) < 1e-6
    assert records[2]["normalized"] == "not bad at all ."


@pytest.mark.parametrize("model", ["classifier.pth", "lora_classifier.pth"])
def test_classify_prints_one_aligned_line_per_sentence(model, in_project, capsys):
    lines = call(classify, ["--model", model, *SENTENCES], capsys).splitlines()
    assert len(lines) == len(SENTENCES)
    for line, sentence in zip(lines, SENTENCES, strict=True):
        label, confidence, text = line.split(maxsplit=2)[0], line[10:16], line[18:]
        assert label in LABELS and text == sentence and confidence.endswith("%")
        assert 50 <= float(confidence.rstrip("%")) <= 100


def test_classify_reads_stdin_where_a_dash_stands(in_project, capsys, monkeypatch):
    out = call(classify, ["First.", "-", "Last."], capsys, stdin="two\n\nthree\n",
               monkeypatch=monkeypatch)
    assert [line[18:] for line in out.splitlines()] == ["First.", "two", "three", "Last."]
    assert call(classify, ["--json"], capsys, stdin="", monkeypatch=monkeypatch) == ""


def test_lora_classifier_takes_its_base_from_the_flag(in_project, capsys, tmp_path):
    moved = tmp_path / "elsewhere.pth"
    moved.write_bytes((in_project / "model_weights.pth").read_bytes())
    args = ["--model", "lora_classifier.pth", "--json", *SENTENCES]
    assert call(classify, [*args, "--base", str(moved)], capsys) == call(classify, args, capsys)


# ---------------------------------------------------------------------------- ask.py


@pytest.mark.slow
def test_ask_from_the_shell_streams_an_answer(shell, in_project):
    stdout, stderr, code = shell["ask"]
    assert code == 0, stderr
    model, tokenizer, _ = load_instruction_model("qlora_adapters.pth")
    expected = answer(model, tokenizer, "Name a colour.", max_new_tokens=20, temperature=0.7,
                      top_k=40, seed=1337)
    assert stdout.strip() == expected and stdout.endswith("\n")


def test_ask_shows_the_prompt_and_repeats_itself_with_a_seed(in_project, capsys):
    args = ["What is this?", "--context", "A rose.", "--show-prompt", "--max-new-tokens", "15"]
    out = call(ask, args, capsys)
    assert out.startswith(format_prompt("What is this?", "A rose."))
    assert call(ask, [*args, "--no-stream"], capsys) == out


# ---------------------------------------------------------------------------- every script


@pytest.mark.slow
def test_a_missing_file_is_one_sentence_and_exit_code_1(shell):
    stdout, stderr, code = shell["missing"]
    assert (stdout, stderr, code) == (
        "", "error: No checkpoint at nothing.pth: run python finetune_classifier.py "
        "(or finetune_lora_classifier.py) first.\n", 1)


def test_a_reader_that_stops_early_ends_the_output_quietly():
    # What `python sample.py --num-samples 1000 | head -1` meets, without loading torch.
    program = ("from support.cli import run\n"
               "def main():\n    while True:\n        print('text', flush=True)\n"
               "run(main)\n")
    writer = subprocess.Popen([sys.executable, "-c", program], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert writer.stdout.readline() == "text\n"
    writer.stdout.close()  # as head does after its lines
    assert (writer.wait(timeout=60), writer.stderr.read()) == (1, "")


@pytest.mark.parametrize("module, args, message", [
    (sample, [], "No checkpoint at model_weights.pth: run python main.py first."),
    (ask, ["Hi."], "No checkpoint at qlora_adapters.pth: run python "
                   "finetune_qlora_instructions.py first."),
    (classify, ["--model", "lora_classifier.pth", "Fine."],  # its base is elsewhere
     "lora_classifier.pth holds adapters for the base model model_weights.pth, which is not "
     "here: pass --base with that file's path."),
])
def test_missing_files_name_the_command_that_makes_them(module, args, message, project,
                                                        tmp_path, monkeypatch):
    (tmp_path / "lora_classifier.pth").write_bytes(
        (project / "lora_classifier.pth").read_bytes())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit:
        run(lambda: module.main(args))
    assert exit.value.code == f"error: {message}"  # printed to stderr, exit status 1


@pytest.mark.parametrize("module, args, message", [
    (classify, ["Fine.", "  "], "error: a sentence given on the command line is empty: "
                                "classify.py needs text to classify"),
    (classify, [""], "error: a sentence given on the command line is empty"),
    (ask, [" \n"], "error: the instruction is empty: ask.py needs something to answer"),
])
def test_an_empty_input_is_one_sentence_before_any_model_loads(module, args, message, capsys):
    with pytest.raises(SystemExit) as exit:
        module.parse_args(args)
    assert exit.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(message)


@pytest.mark.parametrize("module, defaults", [
    (sample, ["model_weights.pth", "ROMEO:", "(default: 120)", "(default: 0.8)",
              "(default: 50)", "(default: 1337)"]),
    (classify, ["classifier.pth", "--json"]),
    (ask, ["qlora_adapters.pth", "(default: 100)", "(default: 0.7)", "(default: 40)"]),
])
def test_help_shows_the_real_defaults(module, defaults, capsys):
    with pytest.raises(SystemExit) as exit:
        module.parse_args(["--help"])
    assert exit.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert all(d in text for d in defaults)
    assert "default: None" not in text and "default: False" not in text
