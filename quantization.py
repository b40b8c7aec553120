"""4-bit NormalFloat (NF4) weight quantization, from scratch and via bitsandbytes.

QLoRA (Dettmers et al., 2023) finetunes a model whose base weights are frozen in 4 bits. Three
ideas make 4 bits enough:

1. Blockwise absmax scaling. The weight is cut into blocks of 64 values; each block is divided
   by its largest magnitude (its "absmax"), so every value lands in [-1, 1] and one outlier
   only costs precision inside its own block.
2. The NF4 data type. Pretrained weights are roughly normally distributed, so the 16 code
   values are quantiles of N(0, 1) (scaled to [-1, 1]): each code is used about equally often.
   There is an exact zero, and one more positive than negative code. Each value is replaced
   by the index of the nearest code, and two 4-bit indices are packed into one byte.
3. Double quantization. One fp32 absmax per 64 weights costs 32 / 64 = 0.5 bits per weight.
   Quantizing the absmax values themselves to 8 bits (after subtracting their mean, in blocks
   of 256 with one fp32 scale each) brings that to 8 / 64 + 32 / (64 * 256) = 0.127 bits, for
   4.127 bits per weight in total: about 0.13 x the fp32 size.

Dequantizing is a table lookup times the block's absmax, done on the fly in the forward pass
(`Linear4bit`), so only the packed bytes stay in memory. The algorithm follows bitsandbytes
step for step; the tests check the 4-bit codes, absmax statistics and dequantized weights
against `bitsandbytes.functional.quantize_4bit` bit for bit (see _quantize_absmax_8bit for the
one documented difference in double quantization).

`quantize_model(model, backend="scratch" | "bitsandbytes")` swaps a model's target linears
for 4-bit ones; apply LoRA (lora.py) afterwards to get QLoRA. ``dense_state_dict`` turns
such a model back into plain weights (each NF4 one dequantized, each LoRA update merged).
``quantization_report`` measures what quantizing saved (bytes) and cost (error).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from checkpoint import model_shapes
from lora import DEFAULT_TARGETS, LoRALayer, find_targets
from memory import quant_state_tensors
from model import GPTModel
from support.checks import check_quantizable, check_quantize_request
from support.optional_packages import import_bitsandbytes

BACKENDS = ("scratch", "bitsandbytes")
DQ_BLOCKSIZE = 256  # block size for double-quantizing the absmax constants (QLoRA paper)

# The 16 NF4 code values, exactly as bitsandbytes stores them (bitsandbytes.functional
# .get_4bit_type("nf4")). `normal_float_code()` below derives them from the normal quantiles.
NF4_CODE = torch.tensor(
    [
        -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
        -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
        0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
        0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
    ],
    dtype=torch.float32,
)


def normal_float_code(offset: float = 1 - (1 / 30 + 1 / 32) / 2) -> torch.Tensor:
    """Derive the NF4 values: equal-probability quantiles of N(0, 1), scaled to [-1, 1].

    8 positive quantiles, 7 negative ones and an exact zero. The outermost quantile of a
    normal is infinite, so the probability grid stops at `offset` = 1 - (1/30 + 1/32) / 2
    (0.9677083, the midpoint of the last bins of a 15- and a 16-value grid), as in the paper.
    """
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    values = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    return (values / values.max()).float()


def dynamic_map_8bit() -> torch.Tensor:
    """The 256 values of bitsandbytes' signed 8-bit "dynamic" data type, sorted.

    Used for the double quantization of the absmax constants. Like a float, it spends its
    codes on a range of magnitudes: for each decade 10^-6 ... 10^0 there are 2^i evenly spaced
    values (i = 0 ... 6), both signs, plus 0 and 1. Computed with the same float32 steps as
    bitsandbytes' create_dynamic_map(), so the table matches it bit for bit.
    """
    values = [0.0, 1.0]
    for i in range(7):
        boundaries = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        decade = (10 ** (i - 6)) * means
        values += decade.tolist() + (-decade).tolist()
    return torch.tensor(sorted(values), dtype=torch.float32)


DYNAMIC_CODE = dynamic_map_8bit()

_tables_on_device: dict[tuple[str, torch.device], torch.Tensor] = {}


def _table(name: str, device: torch.device) -> torch.Tensor:
    """A code table on `device`, copied there once rather than on every forward pass."""
    key = (name, torch.device(device))
    if key not in _tables_on_device:
        _tables_on_device[key] = {"nf4": NF4_CODE, "dynamic": DYNAMIC_CODE}[name].to(device)
    return _tables_on_device[key]


# ----------------------------------------------------------------------------------------
# Quantize / dequantize a tensor


@dataclass
class NF4Tensor:
    """A tensor in NF4: packed 4-bit codes plus per-block scales.

    packed: uint8 [ceil(numel / 2)], element 2k in the high nibble of byte k, 2k+1 in the low.
    Without double quantization `absmax` holds one fp32 scale per block. With it, the scales
    are stored as `absmax_codes` (uint8 indices into the dynamic 8-bit map, one per block),
    `absmax_scales` (fp32, one per 256 blocks) and `absmax_offset` (the fp32 mean that was
    subtracted first).
    """

    packed: torch.Tensor
    shape: torch.Size
    dtype: torch.dtype
    blocksize: int
    absmax: torch.Tensor | None = None
    absmax_codes: torch.Tensor | None = None
    absmax_scales: torch.Tensor | None = None
    absmax_offset: torch.Tensor | None = None

    @property
    def double_quant(self) -> bool:
        return self.absmax_codes is not None

    @property
    def numel(self) -> int:
        return self.shape.numel()

    def tensors(self) -> dict[str, torch.Tensor]:
        """The stored tensors by field name (what a module keeps as buffers)."""
        return {
            f.name: getattr(self, f.name) for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }

    @property
    def nbytes(self) -> int:
        """Bytes held by this tensor. The code tables are shared constants and not counted."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())


def _blocks(flat: torch.Tensor, blocksize: int) -> torch.Tensor:
    """[n] -> [n_blocks, blocksize], zero-padding the last block (zeros never change an absmax)."""
    n_blocks = math.ceil(flat.numel() / blocksize)
    return F.pad(flat, (0, n_blocks * blocksize - flat.numel())).view(n_blocks, blocksize)


def pack_4bit(codes: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit codes (uint8 in 0..15) two per byte, first in the high nibble. Odd length
    is padded with code 7 (NF4's zero), as bitsandbytes does."""
    codes = codes.reshape(-1).to(torch.uint8)
    if codes.numel() % 2:
        codes = torch.cat([codes, codes.new_full((1,), 7)])
    return (codes[0::2] << 4) | codes[1::2]


def unpack_4bit(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of pack_4bit: the first `numel` codes as uint8."""
    return torch.stack([packed >> 4, packed & 0x0F], dim=-1).reshape(-1)[:numel]


def _quantize_absmax_8bit(absmax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise 8-bit quantization of the (mean-centred) absmax values: scale each block of
    256 by its own absmax, then store the index of the nearest entry of the dynamic map.

    Same scheme as bitsandbytes' quantize_blockwise. Its CPU kernel (0.50) first rounds each
    scaled value to a grid of 65536 points in [-1, 1] and looks the code up in a table, so for
    the few values (a fraction of a percent) within 1/65535 of a decision boundary it can pick
    the neighbouring code; here the nearest code is taken exactly (the tests show both).
    """
    blocks = _blocks(absmax, DQ_BLOCKSIZE)
    scales = blocks.abs().amax(dim=1)
    # A block of all zeros (e.g. a single block minus its own mean) has scale 0: keep it 0.
    normed = torch.where(scales[:, None] > 0, blocks / scales[:, None], torch.zeros_like(blocks))
    code = _table("dynamic", absmax.device)
    midpoints = (code[:-1] + code[1:]) / 2
    codes = torch.bucketize(normed, midpoints).to(torch.uint8)  # ties go to the lower code
    # clone: a slice would keep the padded block's memory alive (and in every checkpoint)
    return codes.reshape(-1)[: absmax.numel()].clone(), scales


def _dequantize_absmax_8bit(q: NF4Tensor) -> torch.Tensor:
    n_blocks = q.absmax_codes.numel()
    values = _table("dynamic", q.absmax_codes.device)[q.absmax_codes.long()]
    scales = q.absmax_scales.float()[:, None]
    absmax = (_blocks(values, DQ_BLOCKSIZE) * scales).reshape(-1)[:n_blocks]
    return absmax + q.absmax_offset.float()


def quantize_nf4(weight: torch.Tensor, blocksize: int = 64, double_quant: bool = True) -> NF4Tensor:
    """Quantize `weight` (any shape, fp32/fp16/bf16) to NF4 in blocks of `blocksize` values.

    Blocks run over the flattened tensor, so a shape need not be a multiple of the block size:
    the last block is simply shorter.
    """
    check_quantizable(weight, blocksize)
    flat = weight.detach().reshape(-1).float()
    blocks = _blocks(flat, blocksize)
    absmax = blocks.abs().amax(dim=1)
    # Scale each block into [-1, 1]. Multiplying by the reciprocal (as bitsandbytes does)
    # rather than dividing keeps the codes bit-identical to its; the clamp keeps an all-zero
    # block (absmax 0) at 0 instead of 0/0.
    scaled = (blocks * (1.0 / absmax.clamp(min=1e-38))[:, None]).clamp(-1, 1)
    # Nearest NF4 value = how many midpoints between neighbouring codes lie below the value
    # (a value exactly on a midpoint goes to the lower code).
    code = _table("nf4", flat.device)
    midpoints = (code[:-1] + code[1:]) / 2
    codes = torch.bucketize(scaled, midpoints).to(torch.uint8).reshape(-1)[: flat.numel()]

    q = NF4Tensor(pack_4bit(codes), weight.shape, weight.dtype, blocksize)
    if double_quant:
        # Centre the absmax values (all positive) so the signed 8-bit map is used fully.
        offset = absmax.mean()
        q.absmax_codes, q.absmax_scales = _quantize_absmax_8bit(absmax - offset)
        q.absmax_offset = offset
    else:
        q.absmax = absmax
    return q


def dequantize_nf4(q: NF4Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Rebuild the tensor: NF4 value of each code times its block's absmax (in fp32), cast to
    `dtype` (default: the original tensor's dtype)."""
    absmax = (_dequantize_absmax_8bit(q) if q.double_quant else q.absmax).float()
    codes = unpack_4bit(q.packed, q.numel)
    values = _table("nf4", codes.device)[codes.long()]
    weight = (_blocks(values, q.blocksize) * absmax[:, None]).reshape(-1)[: q.numel]
    return weight.reshape(q.shape).to(dtype or q.dtype)


def nf4_nbytes(numel: int, blocksize: int = 64, double_quant: bool = True) -> int:
    """Bytes an NF4 tensor of `numel` values takes (what NF4Tensor.nbytes reports)."""
    n_blocks = math.ceil(numel / blocksize)
    packed = math.ceil(numel / 2)
    if not double_quant:
        return packed + 4 * n_blocks
    return packed + n_blocks + 4 * math.ceil(n_blocks / DQ_BLOCKSIZE) + 4


# ----------------------------------------------------------------------------------------
# A 4-bit linear layer


class _NF4Matmul(torch.autograd.Function):
    """x @ W.T for a 4-bit layer's W, dequantized in the forward pass and again in backward.

    F.linear would save the dense W for the backward pass (the gradient of x is grad @ W), so
    every 4-bit layer's fp32 weight would stay in memory from forward to backward, and QLoRA
    would save nothing while training. Dequantizing twice costs a table lookup; it is what
    bitsandbytes does too.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: Linear4bit, bias: torch.Tensor | None
                ) -> torch.Tensor:
        ctx.layer = layer
        return F.linear(x, layer.dequantized_weight(), bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return grad @ ctx.layer.dequantized_weight(grad.dtype), None, None  # bias is frozen


class Linear4bit(nn.Module):
    """A frozen nn.Linear whose weight is stored in NF4 and dequantized in every forward.

    The packed weight and its statistics are buffers (they move with .to() and appear in the
    state dict, but are not parameters); the bias stays in full precision, frozen.
    """

    def __init__(
        self,
        linear: nn.Linear,
        blocksize: int = 64,
        double_quant: bool = True,
        compute_dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        if not isinstance(linear, nn.Linear) or is_quantized(linear):
            raise ValueError(f"Linear4bit is built from an nn.Linear, got {type(linear).__name__}")
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.compute_dtype = compute_dtype
        q = quantize_nf4(linear.weight, blocksize=blocksize, double_quant=double_quant)
        self.weight_shape, self.weight_dtype, self.blocksize = q.shape, q.dtype, q.blocksize
        self._stored = tuple(q.tensors())
        for name, tensor in q.tensors().items():
            self.register_buffer(f"weight_{name}", tensor)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @property
    def quantized_weight(self) -> NF4Tensor:
        stored = {name: getattr(self, f"weight_{name}") for name in self._stored}
        return NF4Tensor(shape=self.weight_shape, dtype=self.weight_dtype,
                         blocksize=self.blocksize, **stored)

    @property
    def double_quant(self) -> bool:
        return "absmax_codes" in self._stored

    @property
    def quantized_numel(self) -> int:
        """Logical number of weights (lora.count_parameters counts these as parameters)."""
        return self.weight_shape.numel()

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return dequantize_nf4(self.quantized_weight, dtype=dtype or self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The dense weight exists only for this matmul (_NF4Matmul: and again in backward);
        # autograd still reaches x, and any LoRA adapter around this layer.
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        return _NF4Matmul.apply(x.to(self.compute_dtype), self, bias).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"blocksize={self.blocksize}, double_quant={self.double_quant}, "
                f"compute_dtype={self.compute_dtype}")


# ----------------------------------------------------------------------------------------
# bitsandbytes backend

def _bitsandbytes_linear4bit(
    linear: nn.Linear, blocksize: int, double_quant: bool, compute_dtype: torch.dtype
) -> nn.Module:
    bnb = import_bitsandbytes()
    device = linear.weight.device
    layer = bnb.nn.Linear4bit(
        linear.in_features, linear.out_features, bias=linear.bias is not None,
        compute_dtype=compute_dtype, compress_statistics=double_quant, quant_type="nf4",
    )
    layer.weight = bnb.nn.Params4bit(
        linear.weight.detach().clone(), requires_grad=False, quant_type="nf4",
        compress_statistics=double_quant, blocksize=blocksize, module=layer,
    )
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
    # On an AVX512-BF16 CPU bitsandbytes repacks the weight in place for a bf16 inference
    # kernel at the first eval-mode forward without grad. The next training forward then
    # takes that inference path and fails; unpacking is lossy (absmax goes through bf16 and
    # is quantized again), so the frozen base would drift with every evaluation; and the
    # kernel computes in bf16 whatever the compute dtype. So the layer keeps its NF4 weight
    # as quantized and computes as on every other CPU: dequantize, then a plain matmul.
    layer.support_avx512bf16_for_cpu = False
    # Params4bit quantizes only when moved to a device; without this its forward fails with a
    # bare AssertionError.
    layer = layer.to(device)
    if getattr(layer.weight, "quant_state", None) is None:
        raise RuntimeError("bitsandbytes did not quantize the layer when moved to " + str(device))
    return layer


# ----------------------------------------------------------------------------------------
# Whole models


def is_quantized(module: nn.Module) -> bool:
    """True for our Linear4bit and for bitsandbytes' (whose weight carries a quant_state)."""
    if isinstance(module, Linear4bit):
        return True
    return hasattr(getattr(module, "weight", None), "quant_state")


def quantize_model(
    model: nn.Module,
    backend: str = "scratch",
    targets: tuple[str, ...] = DEFAULT_TARGETS,
    double_quant: bool = True,
    compute_dtype: torch.dtype = torch.float32,
    blocksize: int = 64,
) -> nn.Module:
    """Replace each nn.Linear named in `targets` by a frozen 4-bit layer, in place.

    Idempotent: already-quantized layers (from either backend) are left alone. Quantize
    before apply_lora; a LoRA-wrapped dense layer is refused rather than silently changed.
    Returns the model.
    """
    targets, found = find_targets(model, targets)
    to_replace: list[tuple[nn.Module, str, nn.Linear]] = []
    dense_lora = []  # LoRA on a dense weight: quantizing under it would change what it learned
    for parent, child_name, full_name, child in found:
        if is_quantized(parent) or is_quantized(child):
            continue
        if isinstance(child, LoRALayer):
            if not is_quantized(child.linear):
                dense_lora.append(full_name)
        elif isinstance(child, nn.Linear):
            to_replace.append((parent, child_name, child))
    check_quantize_request(backend, BACKENDS, targets, bool(found), dense_lora)
    for parent, child_name, linear in to_replace:
        if backend == "scratch":
            layer = Linear4bit(linear, blocksize, double_quant, compute_dtype)
        else:
            layer = _bitsandbytes_linear4bit(linear, blocksize, double_quant, compute_dtype)
        setattr(parent, child_name, layer)
    return model


def dequantized_weight(module: nn.Module) -> torch.Tensor:
    """The fp32 weight [out, in] a 4-bit layer (either backend) computes with."""
    if isinstance(module, LoRALayer):
        module = module.linear
    if isinstance(module, Linear4bit):
        return module.dequantized_weight(torch.float32)
    if is_quantized(module):
        bnb = import_bitsandbytes()
        weight = module.weight
        if getattr(weight.quant_state, "packing_format_for_cpu", False):
            raise ValueError("this bitsandbytes layer was repacked for CPU inference; "
                             "dequantize it before its first eval-mode forward")
        return bnb.functional.dequantize_4bit(weight.data, weight.quant_state).float()
    raise ValueError(f"{type(module).__name__} is not a 4-bit layer")


def effective_weight(layer: nn.Module) -> torch.Tensor:
    """The dense [out, in] weight a layer computes with: LoRA's update and NF4 included."""
    if isinstance(layer, LoRALayer):
        base = effective_weight(layer.linear)
        return base if layer.merged else base + layer.delta_weight().to(base.dtype)
    if is_quantized(layer):
        return dequantized_weight(layer)
    return layer.weight


def dense_state_dict(gpt: GPTModel) -> dict[str, torch.Tensor]:
    """The state dict of a plain GPTModel that computes what ``gpt`` (LoRA, QLoRA) computes:
    each LoRA weight merged (W + B A alpha / r, ``merge_lora``'s sum), each 4-bit one
    dequantized. instructions.py answers with it; export_hf.py writes it."""
    state = {}
    for name in model_shapes(gpt.config):  # a plain GPTModel's names, built on the meta device
        module_name, leaf = name.rsplit(".", 1)
        module = gpt.get_submodule(module_name)
        if leaf == "weight":
            tensor = effective_weight(module)
        else:  # a bias stays where the adapter found it
            tensor = (module.linear if isinstance(module, LoRALayer) else module).bias
        state[name] = tensor.detach().float().cpu()
    return state


# ----------------------------------------------------------------------------------------
# What quantizing saved and cost


def _stored_nbytes(module: nn.Module) -> int:
    if isinstance(module, Linear4bit):
        return module.quantized_weight.nbytes
    stored = [module.weight.data, *quant_state_tensors(module.weight)]
    return sum(t.numel() * t.element_size() for t in stored)


def quantized_nbytes(model: nn.Module) -> dict[str, int]:
    """Memory accounting for the 4-bit layers of a model (LoRA-wrapped ones included).

    Returns the number of layers and weights, the bytes those weights take in fp32, in NF4
    (fp32 absmax) and in NF4 with double quantization, and the bytes actually stored now.
    Biases, embeddings and norms are not counted: they stay in full precision either way.
    """
    report = {"layers": 0, "params": 0, "fp32": 0, "nf4": 0, "nf4_dq": 0, "stored": 0}
    for module in model.modules():
        if not is_quantized(module):
            continue
        if isinstance(module, Linear4bit):
            numel, blocksize = module.quantized_numel, module.blocksize
        else:
            numel = module.weight.quant_state.shape.numel()
            blocksize = module.weight.quant_state.blocksize
        report["layers"] += 1
        report["params"] += numel
        report["fp32"] += 4 * numel
        report["nf4"] += nf4_nbytes(numel, blocksize, double_quant=False)
        report["nf4_dq"] += nf4_nbytes(numel, blocksize, double_quant=True)
        report["stored"] += _stored_nbytes(module)
    return report



def dense_weights(model: nn.Module, targets: tuple[str, ...] = DEFAULT_TARGETS
                  ) -> dict[str, torch.Tensor]:
    """A copy of the weights ``quantize_model`` will quantize, to measure what it lost."""
    return {name: m.weight.detach().float().cpu().clone() for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in targets}


def quantization_error(dense: dict[str, torch.Tensor], model: nn.Module) -> float:
    """||W - dequant(quant(W))|| / ||W|| over all quantized weights (Frobenius norms)."""
    err = ref = 0.0
    for name, weight in dense.items():
        diff = dequantized_weight(model.get_submodule(name)).cpu() - weight
        err += diff.pow(2).sum().item()
        ref += weight.pow(2).sum().item()
    return math.sqrt(err / ref)


def quantization_report(model: nn.Module, dense: dict[str, torch.Tensor]) -> dict:
    """What quantizing ``model`` saved and cost: {"quantized_bytes": ``quantized_nbytes``,
    "quantization_error": ``quantization_error`` against ``dense`` (NaN without it)}."""
    return {"quantized_bytes": quantized_nbytes(model),
            "quantization_error": quantization_error(dense, model) if dense else math.nan}


def quantization_line(backend: str, report: dict) -> str:
    """A ``quantization_report`` as the QLoRA script prints it."""
    nbytes, q_error = report["quantized_bytes"], report["quantization_error"]
    return (f"NF4 ({backend}) on {nbytes['layers']} linear layers, {nbytes['params']:,} "
            f"weights: fp32 {nbytes['fp32'] / 2**20:.2f} MB -> NF4 {nbytes['nf4'] / 2**20:.2f} MB "
            f"-> NF4+DQ {nbytes['nf4_dq'] / 2**20:.2f} MB ({nbytes['nf4_dq'] / nbytes['fp32']:.3f}"
            f" x fp32, {8 * nbytes['nf4_dq'] / nbytes['params']:.3f} bits/weight); relative "
            f"weight error {q_error:.4f}")
