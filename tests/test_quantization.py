"""Tests for quantization.py: NF4 against bitsandbytes, error bounds, 4-bit layers, QLoRA."""

import copy
import logging
import math
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import quantization
from lora import DEFAULT_TARGETS, apply_lora, count_parameters, freeze_all_but_lora, lora_layers
from model import GPTConfig, GPTModel
from quantization import (
    DQ_BLOCKSIZE,
    DYNAMIC_CODE,
    NF4_CODE,
    Linear4bit,
    NF4Tensor,
    dense_weights,
    dequantize_nf4,
    dequantized_weight,
    nf4_nbytes,
    normal_float_code,
    pack_4bit,
    quantization_line,
    quantization_report,
    quantize_model,
    quantize_nf4,
    quantized_nbytes,
    unpack_4bit,
)


@pytest.fixture(scope="module")
def bnb():
    pytest.importorskip("bitsandbytes")
    return quantization.import_bitsandbytes()


class TinyBlock(nn.Module):
    """The four GPT linears by name, plus a head that is never quantized."""

    def __init__(self, d: int = 64):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.out_proj = nn.Linear(3 * d, d)
        self.fc_in = nn.Linear(d, 2 * d)
        self.fc_out = nn.Linear(2 * d, d, bias=False)
        self.head = nn.Linear(d, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.out_proj(torch.tanh(self.qkv(x)))
        x = x + self.fc_out(F.gelu(self.fc_in(x)))
        return self.head(x)


def tiny_gpt() -> GPTModel:
    torch.manual_seed(0)
    return GPTModel(GPTConfig(vocab_size=64, context_length=16, n_layer=2, n_head=2, n_embd=32))


def from_bitsandbytes(packed: torch.Tensor, state) -> NF4Tensor:
    """bitsandbytes' (packed, QuantState) in our container, to decode with our code."""
    q = NF4Tensor(packed.reshape(-1), state.shape, state.dtype, state.blocksize)
    if state.nested:
        q.absmax_codes, q.absmax_scales = state.absmax, state.state2.absmax
        q.absmax_offset = state.offset
    else:
        q.absmax = state.absmax
    return q


def block_absmax(weight: torch.Tensor, blocksize: int = 64) -> torch.Tensor:
    flat = weight.reshape(-1).float()
    flat = F.pad(flat, (0, -flat.numel() % blocksize))
    return flat.view(-1, blocksize).abs().amax(dim=1)


def half_step(code: torch.Tensor, scaled: torch.Tensor) -> torch.Tensor:
    """Half the gap between the two grid values around each scaled value."""
    below = (torch.bucketize(scaled, code, right=True) - 1).clamp(0, len(code) - 2)
    return (code[below + 1] - code[below]) / 2


# ---------------------------------------------------------------------------------------
# The data types


def test_code_tables_equal_bitsandbytes(bnb):
    assert torch.equal(NF4_CODE, bnb.functional.get_4bit_type("nf4", device="cpu"))
    assert torch.equal(DYNAMIC_CODE, bnb.functional.create_dynamic_map())
    # The NF4 values are the normal quantiles (bitsandbytes derived them with scipy in
    # float64 and stored them rounded to float32, hence the tolerance).
    torch.testing.assert_close(normal_float_code(), NF4_CODE, rtol=0, atol=1e-6)
    assert NF4_CODE[7] == 0 and (NF4_CODE > 0).sum() == 8 and (NF4_CODE < 0).sum() == 7


@settings(max_examples=30, deadline=None)
@given(codes=st.lists(st.integers(0, 15), min_size=1, max_size=200))
def test_pack_unpack_round_trip(codes):
    codes = torch.tensor(codes, dtype=torch.uint8)
    packed = pack_4bit(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == (len(codes) + 1) // 2
    assert torch.equal(unpack_4bit(packed, len(codes)), codes)


def test_packing_puts_the_first_value_in_the_high_nibble():
    assert pack_4bit(torch.tensor([1, 2, 15, 0, 9])).tolist() == [0x12, 0xF0, 0x97]


# ---------------------------------------------------------------------------------------
# Bit-for-bit against bitsandbytes

# Totals that are not multiples of 64 exercise the short last block; (5, 7) has an odd
# number of values (a padded last byte) and an odd last dimension.
SHAPES = [(64, 64), (96, 40), (7, 30), (300,), (5, 7), (128, 200)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
def test_nf4_matches_bitsandbytes_bit_for_bit(bnb, shape, dtype):
    torch.manual_seed(hash(shape) % 1000)
    weight = (torch.randn(shape) * 0.05).to(dtype)
    packed, state = bnb.functional.quantize_4bit(weight, blocksize=64, quant_type="nf4")
    q = quantize_nf4(weight, blocksize=64, double_quant=False)
    assert torch.equal(q.packed, packed.reshape(-1))
    assert torch.equal(q.absmax, state.absmax)
    # bitsandbytes dequantizes an odd last dimension with a torch.compile'd kernel; eager
    # mode runs the same code without seconds of compilation.
    with torch.compiler.set_stance("force_eager"):
        expected = bnb.functional.dequantize_4bit(packed, state)
    result = dequantize_nf4(q)
    assert result.dtype == expected.dtype == dtype and result.shape == weight.shape
    # (bitsandbytes' CPU kernel returns a 1-D tensor as [1, n]; the values are what count.)
    assert torch.equal(result, expected.reshape(weight.shape))


def bitsandbytes_cpu_8bit_codes(normed: torch.Tensor) -> torch.Tensor:
    """What bitsandbytes' CPU quantize_blockwise (0.50) does after scaling a block into [-1, 1]:
    round the value to one of 65536 evenly spaced points, then read the code nearest to that
    point from a table. Written out here only to show that this explains every difference."""
    grid = -1.0 + (2.0 * torch.arange(65536, dtype=torch.float32)) / 65535.0
    table = torch.bucketize(grid, (DYNAMIC_CODE[:-1] + DYNAMIC_CODE[1:]) / 2)
    point = ((normed.clamp(-1, 1) + 1.0) * 0.5 * 65535.0 + 0.5).long()
    return table[point].to(torch.uint8)


def test_double_quantization_matches_bitsandbytes(bnb):
    torch.manual_seed(0)
    weight = torch.randn(1024, 384) * 0.02  # 6144 blocks of 64 -> 24 blocks of 256 absmax
    packed, state = bnb.functional.quantize_4bit(
        weight, blocksize=64, compress_statistics=True, quant_type="nf4"
    )
    q = quantize_nf4(weight, blocksize=64, double_quant=True)
    # The 4-bit codes, the fp32 second-level scales and the offset agree bit for bit.
    assert torch.equal(q.packed, packed.reshape(-1))
    assert torch.equal(q.absmax_offset, state.offset)
    assert torch.equal(q.absmax_scales, state.state2.absmax)
    assert q.absmax_codes.shape == state.absmax.shape
    # The 8-bit absmax codes: ours are exactly the nearest entry of the dynamic map;
    # bitsandbytes' CPU kernel first rounds to a 1/32768 grid (reproduced exactly by
    # bitsandbytes_cpu_8bit_codes), which moves a few near-ties to the neighbouring code.
    centered = (block_absmax(weight) - state.offset).view(-1, DQ_BLOCKSIZE)
    scales = centered.abs().amax(dim=1, keepdim=True)
    nearest = torch.bucketize(centered / scales, (DYNAMIC_CODE[:-1] + DYNAMIC_CODE[1:]) / 2)
    assert torch.equal(q.absmax_codes, nearest.to(torch.uint8).reshape(-1))
    bnb_codes = bitsandbytes_cpu_8bit_codes(centered * (1.0 / scales)).reshape(-1)
    assert torch.equal(state.absmax, bnb_codes)
    differ = q.absmax_codes != state.absmax
    assert differ.float().mean() < 0.01
    assert (q.absmax_codes.int() - state.absmax.int())[differ].abs().max() <= 1
    # Decoding is identical: our dequantizer on bitsandbytes' state gives its weights bit for
    # bit, and our own weights equal them in every block whose absmax code agrees.
    expected = bnb.functional.dequantize_4bit(packed, state)
    assert torch.equal(dequantize_nf4(from_bitsandbytes(packed, state)), expected)
    same_block = (~differ).repeat_interleave(64).view_as(weight)
    ours = dequantize_nf4(q)
    assert torch.equal(ours[same_block], expected[same_block])
    torch.testing.assert_close(ours, expected, rtol=0.01, atol=1e-6)


# ---------------------------------------------------------------------------------------
# Error bounds


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 40), cols=st.integers(1, 70), log_scale=st.floats(-4, 2),
    seed=st.integers(0, 2**16), blocksize=st.sampled_from([32, 64, 128]),
)
def test_every_value_lands_on_the_nearest_point_of_its_block_grid(
    rows, cols, log_scale, seed, blocksize
):
    torch.manual_seed(seed)
    weight = torch.randn(rows, cols) * 10**log_scale
    q = quantize_nf4(weight, blocksize=blocksize, double_quant=False)
    result = dequantize_nf4(q)
    absmax = block_absmax(weight, blocksize).repeat_interleave(blocksize)[: weight.numel()]
    codes = unpack_4bit(q.packed, weight.numel()).long()
    # On the grid: each value is exactly its block's absmax times one NF4 value ...
    assert torch.equal(result.reshape(-1), NF4_CODE[codes] * absmax)
    # ... and that grid point is the nearest one: within half a code step of the input.
    scaled = weight.reshape(-1) / absmax
    error = (scaled - NF4_CODE[codes]).abs()
    assert (error <= half_step(NF4_CODE, scaled) + 1e-6).all()


@settings(max_examples=15, deadline=None)
@given(n_blocks=st.integers(1, 700), seed=st.integers(0, 2**16))
def test_double_quantized_absmax_round_trip(n_blocks, seed):
    torch.manual_seed(seed)
    weight = torch.randn(n_blocks * 64) * torch.rand(n_blocks).repeat_interleave(64)
    plain = quantize_nf4(weight, double_quant=False)
    q = quantize_nf4(weight, double_quant=True)
    assert torch.equal(q.packed, plain.packed)  # codes come from the exact absmax either way
    absmax = plain.absmax
    recovered = quantization._dequantize_absmax_8bit(q)
    # Each absmax is within half an 8-bit step (of its 256-block's scale) of the original.
    centered = (absmax - q.absmax_offset).view(-1)
    scales = quantization._blocks(centered, DQ_BLOCKSIZE).abs().amax(dim=1)
    scales = scales.repeat_interleave(DQ_BLOCKSIZE)[: absmax.numel()]
    normed = torch.where(scales > 0, centered / scales, torch.zeros_like(centered))
    bound = half_step(DYNAMIC_CODE, normed) * scales + 1e-6
    assert ((recovered - absmax).abs() <= bound).all()
    # Dequantized weights use the recovered absmax on the same codes (|code| <= 1), so no
    # weight moves further than its block's absmax did.
    moved = (dequantize_nf4(q) - dequantize_nf4(plain)).abs()
    assert (moved <= bound.repeat_interleave(64) + 1e-6).all()


def test_all_zero_and_constant_tensors():
    zeros = torch.zeros(3, 64)
    assert torch.equal(dequantize_nf4(quantize_nf4(zeros)), zeros)
    ones = torch.full((2, 64), 0.5)  # one absmax per block, all equal: centred absmax is 0
    assert torch.equal(dequantize_nf4(quantize_nf4(ones)), ones)


def test_bad_tensors_give_clear_errors():
    with pytest.raises(ValueError, match="floating-point"):
        quantize_nf4(torch.ones(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="empty"):
        quantize_nf4(torch.ones(0))
    with pytest.raises(ValueError, match="NaN"):
        quantize_nf4(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="blocksize"):
        quantize_nf4(torch.ones(4), blocksize=0)


# ---------------------------------------------------------------------------------------
# Memory accounting


def test_memory_accounting_reaches_the_qlora_ratio(bnb):
    linear = nn.Linear(256, 1024)
    n = 256 * 1024
    dense = nf4_nbytes(n, double_quant=False)
    double = nf4_nbytes(n, double_quant=True)
    assert dense == n // 2 + 4 * (n // 64)  # 4 bits + an fp32 absmax per 64: 4.5 bits
    assert double == n // 2 + n // 64 + 4 * (n // 64 // 256) + 4  # ~4.127 bits
    assert double <= 0.15 * 4 * n < dense * 1.07
    assert quantize_nf4(linear.weight, double_quant=False).nbytes == dense
    assert quantize_nf4(linear.weight, double_quant=True).nbytes == double
    for backend in ("scratch", "bitsandbytes"):
        model = nn.Module()
        model.qkv = copy.deepcopy(linear)
        quantize_model(model, backend=backend, targets=("qkv",))
        report = quantized_nbytes(model)
        assert report == {"layers": 1, "params": n, "fp32": 4 * n, "nf4": dense,
                          "nf4_dq": double, "stored": double}


def test_quantization_report_measures_the_bytes_and_the_relative_weight_error():
    model = TinyBlock()
    dense = dense_weights(model)
    assert sorted(dense) == ["fc_in", "fc_out", "out_proj", "qkv"]  # never the head
    quantize_model(model, targets=DEFAULT_TARGETS)
    report = quantization_report(model, dense)
    assert report["quantized_bytes"] == quantized_nbytes(model)
    squared = {name: ((dequantize_nf4(model.get_submodule(name).quantized_weight) - w).pow(2)
                      .sum().item(), w.pow(2).sum().item()) for name, w in dense.items()}
    error = (sum(e for e, _ in squared.values()) / sum(r for _, r in squared.values())) ** 0.5
    assert report["quantization_error"] == pytest.approx(error, rel=1e-6)
    assert 0.05 < error < 0.15  # NF4 on a uniform init: about a tenth of the weight's norm
    assert math.isnan(quantization_report(model, {})["quantization_error"])  # not measured


def test_quantization_line_known_answer():
    report = {"quantized_bytes": {"layers": 2, "params": 2**20, "fp32": 2**22, "nf4": 2**19 + 2**16,
                                  "nf4_dq": 2**19 + 2**14, "stored": 2**19 + 2**14},
              "quantization_error": 0.09181}
    assert quantization_line("scratch", report) == (
        "NF4 (scratch) on 2 linear layers, 1,048,576 weights: fp32 4.00 MB -> NF4 0.56 MB -> "
        "NF4+DQ 0.52 MB (0.129 x fp32, 4.125 bits/weight); relative weight error 0.0918")


# ---------------------------------------------------------------------------------------
# 4-bit layers and models


def test_linear4bit_stores_packed_buffers_and_computes_with_the_dequantized_weight():
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    layer = Linear4bit(linear)
    assert [name for name, _ in layer.named_parameters()] == ["bias"]
    assert not layer.bias.requires_grad
    buffers = dict(layer.named_buffers())
    assert buffers["weight_packed"].dtype == torch.uint8
    assert buffers["weight_packed"].numel() == 64 * 48 // 2
    x = torch.randn(5, 64)
    weight = dequantize_nf4(quantize_nf4(linear.weight))
    assert torch.equal(layer(x), F.linear(x, weight, linear.bias))
    assert layer(x.to(torch.bfloat16)).dtype == torch.bfloat16
    # The state dict (packed weight + statistics) loads into a re-quantized copy.
    other = Linear4bit(nn.Linear(64, 48))
    other.load_state_dict(layer.state_dict())
    assert torch.equal(other(x), layer(x))


def test_linear4bit_keeps_no_dense_weight_for_backward():
    # The gradient reaching x is the dense layer's, yet backward dequantizes again instead of
    # keeping the fp32 weight from forward: only x itself is saved.
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    layer = Linear4bit(linear)
    x = torch.randn(5, 64, requires_grad=True)
    dense_x = x.detach().clone().requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = layer(x)
    out.square().sum().backward()
    F.linear(dense_x, layer.dequantized_weight(), linear.bias).square().sum().backward()
    assert torch.allclose(x.grad, dense_x.grad, atol=1e-6)
    assert all(t.numel() != 48 * 64 for t in saved)  # no weight, nor its transpose


def test_shapes_not_divisible_by_the_block_size():
    torch.manual_seed(0)
    for in_features, out_features in [(33, 7), (5, 3), (100, 1)]:
        linear = nn.Linear(in_features, out_features)
        layer = Linear4bit(linear)
        assert layer.weight_packed.numel() == (in_features * out_features + 1) // 2
        x = torch.randn(2, in_features)
        torch.testing.assert_close(layer(x), linear(x), rtol=0.2, atol=0.05)


@pytest.mark.parametrize("backend", ["scratch", "bitsandbytes"])
def test_gradients_reach_lora_and_input_through_a_frozen_4bit_layer(bnb, backend):
    torch.manual_seed(0)
    model = quantize_model(TinyBlock(), backend=backend)
    apply_lora(model, r=4)
    freeze_all_but_lora(model, trainable_extra=("head",))
    with torch.no_grad():
        for layer in lora_layers(model):
            layer.lora_B.normal_(std=0.1)
    x = torch.randn(3, 5, 64, requires_grad=True)
    model(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, param in model.named_parameters():
        trainable = "lora_" in name or name.startswith("head.")
        assert (param.grad is not None) == trainable, name
        if trainable:
            assert param.grad.abs().sum() > 0, name
    # The input gradient is the one through the dequantized weight.
    layer = model.fc_out
    h = torch.randn(4, 128, requires_grad=True)
    layer(h).sum().backward()
    w = dequantized_weight(layer) + layer.delta_weight().detach()
    torch.testing.assert_close(h.grad, w.sum(dim=0).expand(4, -1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["scratch", "bitsandbytes"])
def test_quantize_model_is_idempotent(bnb, backend):
    model = quantize_model(TinyBlock(), backend=backend)
    modules = {name: id(m) for name, m in model.named_modules()}
    quantize_model(model, backend=backend)
    quantize_model(model, backend="scratch")  # a quantized layer stays as it is
    assert {name: id(m) for name, m in model.named_modules()} == modules
    assert isinstance(model.head, nn.Linear) and not quantization.is_quantized(model.head)
    # The QLoRA order, repeated as the app does: quantize, apply LoRA, again and again.
    apply_lora(model)
    wrapped = {name: id(m) for name, m in model.named_modules()}
    quantize_model(model, backend=backend)
    apply_lora(model)
    assert {name: id(m) for name, m in model.named_modules()} == wrapped


def test_both_backends_compute_the_same_weights(bnb):
    torch.manual_seed(0)
    model = TinyBlock()
    scratch = quantize_model(copy.deepcopy(model), backend="scratch", double_quant=False)
    reference = quantize_model(copy.deepcopy(model), backend="bitsandbytes", double_quant=False)
    for name in ("qkv", "out_proj", "fc_in", "fc_out"):
        assert torch.equal(dequantized_weight(getattr(scratch, name)),
                           dequantized_weight(getattr(reference, name)))
    x = torch.randn(2, 3, 64)
    torch.testing.assert_close(scratch(x), reference(x), rtol=1e-5, atol=1e-5)


def train_evaluate_train(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Two AdamW steps on the LoRA adapters with an eval-mode forward between, as a
    finetune with an evaluation does; returns both eval outputs and the last loss."""
    torch.manual_seed(1)  # the same adapters for either backend
    apply_lora(model, r=4)
    freeze_all_but_lora(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    outputs = []
    for _ in range(2):
        model.train()
        loss = model(x).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        model.eval()
        with torch.no_grad():
            outputs.append(model(x))
    return outputs + [loss.detach()]


@pytest.mark.parametrize("cpu_has_avx512_bf16", [True, False])
def test_bitsandbytes_trains_evaluates_and_trains_again_like_ours(bnb, monkeypatch,
                                                                  cpu_has_avx512_bf16):
    """bitsandbytes 0.50 repacks a Linear4bit for its AVX512-BF16 inference kernel at the first
    eval forward without grad (lossily, in place), after which training crashed. Forcing its
    capability check both ways covers either kind of CPU on any machine: the layers keep their
    NF4 weights and, in float32, train exactly as our own NF4 layers do."""
    monkeypatch.setattr(bnb.nn.modules, "has_avx512bf16", lambda: cpu_has_avx512_bf16)
    torch.manual_seed(0)
    model = TinyBlock()
    ours = quantize_model(copy.deepcopy(model), backend="scratch", double_quant=False)
    theirs = quantize_model(copy.deepcopy(model), backend="bitsandbytes", double_quant=False)
    before = {name: dequantized_weight(getattr(theirs, name)) for name in DEFAULT_TARGETS}
    x = torch.randn(2, 3, 64, dtype=torch.float32)
    for got, expected in zip(train_evaluate_train(theirs, x), train_evaluate_train(ours, x),
                             strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for name in DEFAULT_TARGETS:  # the frozen base is what it was, bit for bit
        assert torch.equal(dequantized_weight(getattr(theirs, name)), before[name]), name


def test_quantize_model_errors():
    with pytest.raises(ValueError, match="backend"):
        quantize_model(TinyBlock(), backend="gptq")
    with pytest.raises(ValueError, match="no module named"):
        quantize_model(TinyBlock(), targets=("q_proj",))
    with pytest.raises(ValueError, match="before apply_lora"):
        quantize_model(apply_lora(TinyBlock()))
    with pytest.raises(ValueError, match="merge"):
        apply_lora(quantize_model(TinyBlock())).qkv.merge()


def test_missing_bitsandbytes_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` fail
    with pytest.raises(ImportError, match="pip install"):
        quantize_model(TinyBlock(), backend="bitsandbytes")


def test_kernels_community_warning_is_silenced(bnb, caplog):
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING):
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: x")
        logger.warning("some other warning")
    assert "kernels-community" not in caplog.text and "some other warning" in caplog.text


@pytest.mark.parametrize("backend", ["scratch", "bitsandbytes"])
def test_qlora_on_the_gpt_model(bnb, backend):
    model = tiny_gpt().eval()
    idx = torch.randint(0, 64, (2, 12))
    expected = model(idx)
    base_params = sum(p.numel() for p in model.parameters())
    quantize_model(model, backend=backend)
    assert model.lm_head.weight is model.tok_emb.weight  # tied head: never quantized
    logits = model(idx)
    assert (logits - expected).abs().max() < 0.1 * expected.abs().max()
    report = quantized_nbytes(model)
    assert report["layers"] == 8 and report["stored"] <= 0.15 * report["fp32"]

    apply_lora(model, r=4)
    assert torch.equal(model(idx), logits)  # fresh adapters change nothing
    freeze_all_but_lora(model)
    trainable, total = count_parameters(model)
    assert trainable == 2 * 4 * ((32 + 96) + (32 + 32) + (32 + 128) + (128 + 32))
    assert total == base_params + trainable  # 4-bit weights count as parameters
    cached, _ = model(idx, use_cache=True)
    torch.testing.assert_close(cached, logits)
