"""The showcase: every model the project trains, live in the browser, with its metrics.

    streamlit run app.py

One tab per idea: an overview of the four checkpoints, the tokenizer, text generation with
the base model, sentiment from the fully finetuned and the LoRA classifier side by side,
instruction following with the QLoRA model, attention heatmaps, and the training metrics.

This file only lays out the page. Loading and inference live in the modules the scripts use
(checkpoint.py, classifier.py, instructions.py, generation.py, model.py); showcase.py holds
the glue: paths, facts, chart data. Models are loaded once per file version with
``st.cache_resource`` (Streamlit reruns this script on every click). A missing checkpoint
disables only its own section and says which command creates it; a broken one, or a bad
input, shows its one-sentence error where it happened.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import streamlit as st
import torch.nn as nn

import showcase as sc
from classifier import normalize_text, predict
from generation import stream_text
from instructions import format_prompt, inference_model, stream_answer
from support.metrics import human_bytes

# What loading and inference raise for bad files and bad values (CheckpointError is a
# ValueError, a missing file an OSError, a missing bitsandbytes an ImportError).
EXPECTED_ERRORS = (ValueError, OSError, ImportError)
MAX_NEW_TOKENS = 500
SENTIMENT_LESSON = (
    "What the numbers teach: a base pretrained on one megabyte of Shakespeare knows no "
    "movie-review English, so pretraining barely helps and a bag of words beats both; LoRA can "
    "only steer what a base already knows. A base pretrained on modern text, such as GPT-2, "
    "changes both.")
SCALE_SECTION = "Instruction tuning, and why the answers are poor"  # a README.md heading
MAX_PROMPT_CHARS = 2000
TEXT_STYLE = "white-space:pre-wrap;font-family:monospace"  # generated text, whitespace as is
# The held-out answers: the answers first, and all five columns in 900 px, so that they fit
# a 1400-pixel window beside the sidebar (a long cell shows whole on hover).
SAMPLE_COLUMNS = {
    "column_order": ("instruction", "tuned_answer", "base_answer", "reference", "context"),
    "column_config": {"instruction": st.column_config.TextColumn("instruction", width=200),
                      "tuned_answer": st.column_config.TextColumn("tuned answer", width=220),
                      "base_answer": st.column_config.TextColumn("base answer", width=200),
                      "reference": st.column_config.TextColumn("reference", width=180),
                      "context": st.column_config.TextColumn("context", width=100)},
}

st.set_page_config(page_title="LLM From Scratch", page_icon="🧠", layout="wide")


@st.cache_resource(max_entries=8, show_spinner=False)
def load_cached(key: str, path: str, stamp: tuple, base: str, base_stamp: tuple | None,
                device: str):
    """One load per checkpoint version: the stamps (mtime, size) are part of the cache key,
    so a retrained file, or a retrained base under an adapter file, is loaded again."""
    return sc.load_model(key, Path(path), Path(base), device)


@st.cache_resource(max_entries=2, show_spinner=False)
def dense_cached(path: str, stamp: tuple, base: str, base_stamp: tuple | None, device: str):
    """The QLoRA model in dense layers, to answer with (instructions.inference_model); the
    4-bit model stays loaded for the overview's figures."""
    return inference_model(load_cached("qlora", path, stamp, base, base_stamp, device)[0])


# ---------------------------------------------------------------------------- helpers


def unavailable(slot: sc.Slot) -> bool:
    """If the model cannot be used, say why and how to fix it, and return True."""
    if slot.ready:
        return False
    if slot.error:
        st.error(f"**{slot.spec.title}** could not be loaded: {slot.error}")
    else:
        st.info(f"**{slot.spec.title}** is not there yet: no file at `{slot.path}`. "
                "Create it with:")
        st.code(slot.command, language="bash", wrap_lines=True)  # a narrow card: wrap, not cut
    return True


def show_stream(pieces: Iterator[str], model: nn.Module, prompt: str = "") -> None:
    """Show text as it is generated (the prompt in bold), then its speed."""
    with st.container(border=True):
        box = st.empty()

    def show(text: str) -> None:
        box.html(f'<div style="{TEXT_STYLE}"><b>{html.escape(prompt)}</b>'
                 f"{html.escape(text)}</div>")

    start = time.perf_counter()
    try:
        text, n = sc.stream_to(pieces, model, show)  # redraws at most 20 times a second
    except EXPECTED_ERRORS as e:
        st.error(str(e))
        return
    seconds = time.perf_counter() - start
    if not text:
        show("")
        st.caption("The model ended the text at once (it chose `<|endoftext|>`).")
    st.caption(f"{n} token{'s' * (n != 1)} generated in {seconds:.2f} s: "
               f"{n / max(seconds, 1e-9):.1f} tokens/s")


def chart(spec, **kwargs) -> None:
    st.altair_chart(spec, width="stretch", **kwargs)


# ---------------------------------------------------------------------------- sidebar, loading


def sidebar() -> tuple[Path, dict[str, Path], str]:
    folder = sc.app_dir()
    with st.sidebar:
        st.header("Checkpoints")
        st.caption(f"The `.pth` files in `{folder}` ($LLM_APP_DIR) and one level below it; "
                   "for the base model also Hugging Face GPT-2 folders.")
        paths = {spec.key: sc.resolve(st.selectbox(spec.title, sc.checkpoint_choices(spec, folder),
                                                   key=f"path_{spec.key}"), folder)
                 for spec in sc.MODELS}
        try:
            device = sc.pick_device()
        except ValueError as e:
            st.error(f"{e} Using the CPU.")
            device = "cpu"
        st.caption(f"Device: `{device}` ($LLM_APP_DEVICE)")
    return folder, paths, device


def load_slots(folder: Path, paths: dict[str, Path], device: str) -> dict[str, sc.Slot]:
    base = paths["base"]
    slots = {}
    for spec in sc.MODELS:
        path = paths[spec.key]
        slot = sc.Slot(spec, path, sc.create_command(spec, path, base, folder))
        stamp = sc.file_stamp(path)
        if stamp is not None:
            try:
                with st.spinner(f"Loading {spec.title} ({path.name}) ..."):
                    key = (str(path), stamp, str(base),
                           sc.file_stamp(base) if spec.needs_base else None, device)
                    slot.model, slot.tokenizer, slot.meta = load_cached(spec.key, *key)
                    if spec.key == "qlora":
                        slot.dense = dense_cached(*key)
                slot.facts = sc.model_facts(slot.model, slot.tokenizer, slot.meta, path)
            except EXPECTED_ERRORS as e:
                slot.model, slot.error = None, str(e)
        slots[spec.key] = slot
    return slots


# ---------------------------------------------------------------------------- tabs


def overview(slots: dict[str, sc.Slot]) -> None:
    ready = [slot for slot in slots.values() if slot.ready]
    st.markdown(f"**{len(ready)} of {len(slots)} models loaded.** Each card is one checkpoint; "
                "a missing one switches off only its own tab.")
    cards = list(slots.values())
    columns = [column for _ in range(0, len(cards), 2) for column in st.columns(2)]
    for column, slot in zip(columns, cards, strict=False):  # two a row: names fit unbroken
        with column, st.container(border=True):
            st.markdown(f"#### {slot.spec.title}")
            st.caption(f"`{slot.path.name}`, made by `{slot.spec.script}`")
            if unavailable(slot):
                continue
            facts = slot.facts
            st.metric("Parameters", sc.human_count(facts["parameters"]))
            st.metric("Trained", f"{facts['trained_share']:.2%}",
                      help=f"{facts['trained']:,} parameters changed in training")
            st.metric("Checkpoint file", human_bytes(facts["checkpoint_bytes"]))
            st.metric("In memory", human_bytes(facts["memory_bytes"]))
            st.caption(facts["shape"])
            if "trained_on" in facts:
                st.caption(f"Trained on {facts['trained_on']}")
            if "quantized" in facts:
                q = facts["quantized"]
                st.caption(f"{q['layers']} linear layers in NF4: {human_bytes(q['stored'])} "
                           f"instead of {human_bytes(q['fp32'])} in fp32")
    if ready:
        frame = pd.DataFrame([{"model": s.spec.title, "trained parameters": s.facts["trained"],
                               "checkpoint KB": s.facts["checkpoint_bytes"] / 1024}
                              for s in ready])
        left, right = st.columns(2)
        with left:
            chart(sc.bar_chart(frame, "trained parameters", "model",
                               "Parameters changed by training (log scale)", ",d", log=True))
        with right:
            chart(sc.bar_chart(frame, "checkpoint KB", "model", "Checkpoint size (KB)", ",.0f"))


def tokenizer_tab(slots: dict[str, sc.Slot]) -> None:
    slot = next((s for s in slots.values() if s.ready), slots["base"])
    if unavailable(slot):
        return
    text = st.text_area("Text", "To be, or not to be, that is the question:\n"
                        "Whether 'tis nobler in the mind to suffer", max_chars=MAX_PROMPT_CHARS,
                        key="tok_text")
    pieces = sc.token_pieces(slot.tokenizer, text)
    tokens, chars, ratio = st.columns(3)
    tokens.metric("Tokens", len(pieces))
    chars.metric("Characters", len(text))
    ratio.metric("Characters per token", f"{len(text) / max(len(pieces), 1):.2f}")
    st.html(sc.tokens_html(pieces))
    st.caption(f"Each box is one token of the {slot.tokenizer.vocab_size}-token vocabulary in "
               f"`{slot.path.name}`; hover for its id and bytes.")
    if any(sc.holds_part_of_a_character(raw) for _, raw in pieces):
        st.caption(sc.PARTIAL_NOTE)
    with st.expander("Token ids"):
        st.code(str([token_id for token_id, _ in pieces]), language=None, wrap_lines=True)


def generate_tab(slot: sc.Slot) -> None:
    if unavailable(slot):
        return
    with st.form("generate"):
        prompt = st.text_area("Prompt", "ROMEO:", max_chars=MAX_PROMPT_CHARS, key="gen_prompt")
        length, temperature, top_k, top_p, seed = st.columns(5)
        max_new = length.slider("Max new tokens", 1, MAX_NEW_TOKENS, 120, key="gen_max")
        temp = temperature.slider("Temperature", 0.0, 2.0, 0.8, 0.05, key="gen_temp",
                                  help="0 is greedy: always the most likely token")
        k = top_k.number_input("Top-k (0: off)", 0, slot.tokenizer.vocab_size, 50,
                               key="gen_top_k")
        p = top_p.slider("Top-p (1: off)", 0.05, 1.0, 1.0, 0.05, key="gen_top_p")
        s = seed.number_input("Seed", 0, 2**31 - 1, 1337, key="gen_seed")
        go = st.form_submit_button("Generate", type="primary", key="gen_go")
    if go:
        show_stream(stream_text(slot.model, slot.tokenizer, prompt, max_new_tokens=int(max_new),
                                temperature=float(temp), top_k=int(k) or None,
                                top_p=float(p) if p < 1 else None, seed=int(s)),
                    slot.model, prompt)


def sentiment_tab(slots: list[sc.Slot], accuracy: pd.DataFrame) -> None:
    with st.form("sentiment"):
        text = st.text_input("A sentence", "A gorgeous, witty, seductive movie.", max_chars=500,
                             key="sent_text")
        st.form_submit_button("Classify", type="primary", key="sent_go")
    empty = not text.strip()
    if empty:
        st.info(sc.EMPTY_SENTENCE)
    else:
        st.caption(f"Both read it the way SST-2 is written: `{normalize_text(text)}`")
    for column, slot in zip(st.columns(len(slots)), slots, strict=True):
        with column, st.container(border=True):
            st.markdown(f"#### {slot.spec.title}")
            if unavailable(slot) or empty:
                continue
            label, probs = predict(slot.model, slot.tokenizer, text)
            st.metric("Prediction", label, help=f"{slot.facts['trained']:,} trained parameters")
            frame = pd.DataFrame({"label": list(probs), "probability": list(probs.values())})
            chart(sc.bar_chart(frame, "probability", "label", "Class probabilities", ".1%",
                               domain=(0, 1)))
    st.markdown("**On the 872 sentences of the GLUE dev set**, beside a bag of words (TF-IDF):")
    if accuracy.empty:
        st.info("Run `python finetune_classifier.py` and `python finetune_lora_classifier.py` "
                "to score both, with the baselines.")
    else:
        st.dataframe(accuracy.assign(accuracy=100 * accuracy["accuracy"])[["model", "accuracy"]],
                     hide_index=True, column_config={  # 71.9%, as the charts show it
                         "accuracy": st.column_config.NumberColumn("dev accuracy",
                                                                   format="%.1f%%")})
    st.caption(SENTIMENT_LESSON)


def instructions_tab(slot: sc.Slot, samples: dict[str, list[dict]]) -> None:
    if unavailable(slot):
        return
    st.info("Expect poor answers: a model of under a million parameters that has read only "
            "Shakespeare knows no facts, so QLoRA can teach it the *form* of an answer, not its "
            f"content. Why: README.md, section \"{SCALE_SECTION}\" (below).")
    with st.form("instruct"):
        instruction = st.text_area("Instruction", "Name three primary colours.",
                                   max_chars=1000, key="inst_text")
        context = st.text_area("Context (optional)", "", max_chars=MAX_PROMPT_CHARS,
                               key="inst_context")
        length, temperature, seed = st.columns(3)
        max_new = length.slider("Max new tokens", 1, MAX_NEW_TOKENS, 100, key="inst_max")
        temp = temperature.slider("Temperature", 0.0, 2.0, 0.7, 0.05, key="inst_temp")
        s = seed.number_input("Seed", 0, 2**31 - 1, 1337, key="inst_seed")
        go = st.form_submit_button("Answer", type="primary", key="inst_go")
    with st.expander("Prompt template: what the model reads"):
        st.code(format_prompt(instruction, context), language=None, wrap_lines=True)
    if go and not instruction.strip():
        st.info(sc.EMPTY_INSTRUCTION)
    elif go:
        show_stream(stream_answer(slot.generator, slot.tokenizer, instruction, context,
                                  max_new_tokens=int(max_new), temperature=float(temp),
                                  seed=int(s)), slot.generator)
    for run, records in samples.items():
        with st.expander(f"Held-out answers from training (runs/{run}/samples.jsonl)"):
            st.dataframe(pd.DataFrame(records), hide_index=True, **SAMPLE_COLUMNS)
    with st.expander(f"Why the answers are poor (README.md: {SCALE_SECTION})"):
        st.markdown(sc.readme_section(SCALE_SECTION))


def attention_tab(slot: sc.Slot) -> None:
    if unavailable(slot):
        return
    text = st.text_input("Text", "To be, or not to be, that is the question", max_chars=300,
                         key="attn_text")
    labels, maps = sc.attention_grid(slot.model, slot.tokenizer, text)
    layer_col, head_col = st.columns(2)
    layer = layer_col.selectbox("Layer", range(maps.size(0)), key="attn_layer")
    head = head_col.selectbox("Head", range(maps.size(1)), key="attn_head")
    st.altair_chart(sc.attention_chart(sc.attention_frame(labels, maps, layer, head), labels,
                                       f"Layer {layer}, head {head}"), width="content")
    st.caption(f"Row i: how token i spreads its attention over tokens 0..i (rows sum to 1; "
               f"causal, so nothing above the diagonal). First {sc.MAX_ATTENTION_TOKENS} tokens.")


def metrics_tab(runs: sc.Runs) -> None:
    # The tables first: they skip malformed entries and add them to runs.problems.
    evaluation, accuracy = sc.evaluation_frame(runs), sc.accuracy_frame(runs)
    methods, nf4, memory = sc.methods_frame(runs), sc.nf4_frame(runs), sc.memory_frame(runs)
    for problem in runs.problems:
        st.warning(problem)
    st.subheader("Training curves")
    curves = {run: sc.loss_frame(records) for run, records in runs.curves.items()}
    curves = {run: frame for run, frame in curves.items() if not frame.empty}
    if not curves:
        st.info("No training logs yet: `python main.py` writes runs/pretrain/metrics.jsonl, "
                "and every finetuning script its own runs/<name>/metrics.jsonl.")
    columns = st.columns(2)
    for n, (run, frame) in enumerate(curves.items()):
        with columns[n % 2]:
            chart(sc.loss_chart(frame, f"runs/{run}"))

    st.subheader("Language model on the held-out test split")
    if evaluation.empty:
        st.info("Run `python evaluate.py` for perplexity and nats per character.")
    else:
        left, right = st.columns(2)
        with left:
            chart(sc.bar_chart(evaluation, "perplexity", "model", "Perplexity per token", ",.1f"))
        with right:
            chart(sc.bar_chart(evaluation, "nats_per_char", "model",
                               "Nats per character (bits: / ln 2)", ".4f"))
        st.caption("Per character, so tokenizers of any size compare: "
                   + "; ".join(f"{r.model} {r.nats_per_char:.4f} nats = {r.bits_per_char:.4f} bits"
                               for r in evaluation.itertuples()) + ".")

    st.subheader("Sentiment: accuracy on the GLUE dev set")
    if accuracy.empty:
        st.info("Run `python finetune_classifier.py` and `python finetune_lora_classifier.py`.")
    else:
        chart(sc.bar_chart(accuracy, "accuracy", "model", "Dev accuracy", ".1%", domain=(0, 1)))

    st.subheader("What each finetuning method costs")
    costs_section(methods)
    memory_section(memory, sc.runs_memory_title(methods))

    st.subheader("NF4: memory of the quantized weights")
    if nf4.empty:
        st.info("Run `python finetune_qlora_instructions.py` to quantize the base model.")
    for run, frame in nf4.groupby("run", sort=False):
        sizes = dict(zip(frame["format"], frame["bytes"], strict=True))
        left, right = st.columns([1, 2])
        left.metric(f"Saving (runs/{run})",
                    f"{1 - sizes['NF4 + double quant'] / sizes['fp32']:.1%}",
                    help="NF4 + double quantization versus fp32, for the quantized layers")
        with right:
            chart(sc.bar_chart(frame.assign(KB=frame["bytes"] / 1024), "KB", "format",
                               "Quantized weights (KB)", ",.1f"))


def costs_section(methods: pd.DataFrame) -> None:
    if methods.empty:
        st.info("The finetuning scripts write these numbers to runs/<name>/metrics.json.")
        return
    columns = st.columns(2)
    for column, (field, title, fmt, log) in zip(columns, [
            ("trainable", "Trainable parameters (log scale)", ",d", True),
            ("train_time_s", "Training wall time (s)", ",.1f", False)], strict=True):
        with column:
            chart(sc.bar_chart(methods.dropna(subset=[field]), field, "model", title, fmt,
                               log=log))
    st.dataframe(methods, hide_index=True, column_config={  # 941,058, as the charts show it
        field: st.column_config.NumberColumn(sc.FIELD_TITLES.get(field, field),
                                             format="localized")
        for field in ("trainable", "total", "train_time_s", "peak_mem_mb")} | {
        "trainable_share": st.column_config.NumberColumn("trainable share", format="percent"),
        "peak_mem_source": st.column_config.TextColumn("what the peak measured")})


@st.cache_data(show_spinner="Counting GPT-2 124 M's memory on the meta device ...")
def projection() -> pd.DataFrame:
    return sc.projected_memory()


def memory_section(memory: pd.DataFrame, title: str) -> None:
    """The bytes of one training step by kind, per method: this project's runs and GPT-2
    124 M, as stacked bars, with what they teach and where the totals do not show it."""
    st.markdown(f"**Memory of one training step, by kind.** {sc.MEMORY_LESSON} Counted exactly "
                "from the tensors (memory.py), float32, at each run's largest batch.")
    left, right = st.columns(2)
    with left:
        if memory.empty:
            st.info("The finetuning scripts count these bytes into runs/<name>/metrics.json.")
        else:
            chart(sc.memory_chart(memory, title))
            for note in sc.memory_notes(memory):
                st.caption(note)
    with right:
        big = projection()
        chart(sc.memory_chart(big, "GPT-2 124 M, batch 8 x 128 (meta device, nothing "
                                   "allocated)"))
        for note in sc.memory_notes(big):
            st.caption(note)


# ---------------------------------------------------------------------------- the page


def main() -> None:
    st.title("LLM From Scratch")
    st.caption("A GPT-style model built from the tokenizer up: pretrained on TinyShakespeare, "
               "finetuned for sentiment (full and LoRA) and for instructions (QLoRA).")
    folder, paths, device = sidebar()
    slots = load_slots(folder, paths, device)
    runs = sc.read_runs(folder / "runs")
    tabs = st.tabs(["Overview", "Tokenizer", "Generate", "Sentiment", "Instructions",
                    "Attention", "Metrics"])
    with tabs[0]:
        overview(slots)
    with tabs[1]:
        tokenizer_tab(slots)
    with tabs[2]:
        generate_tab(slots["base"])
    with tabs[3]:
        sentiment_tab([slots["classifier"], slots["lora"]], sc.accuracy_frame(runs))
    with tabs[4]:
        instructions_tab(slots["qlora"], runs.samples)
    with tabs[5]:
        attention_tab(slots["base"])
    with tabs[6]:
        metrics_tab(runs)


main()
