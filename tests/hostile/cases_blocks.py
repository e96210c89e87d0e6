"""Hostile inputs to blocks and models: configs, inputs, and parameter trees that do not fit."""

from __future__ import annotations

import torch

from deepfn import interop, nn, testing
from deepfn.models import MLP, AdvancedCNN, Transformer

from .case import Case, apply, init, x

_D = nn.Dense(4, 3)
_D_OTHER = init(nn.Dense(4, 5))[0]
_CONV = nn.Conv2d(3, 8, 3)
_BN = nn.BatchNorm(4)
_LN = nn.LayerNorm(4)
_EMB = nn.Embedding(5, 2)
_MHA = nn.MultiHeadAttention(8, 2)
_ENC = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0)
_DEC = nn.TransformerDecoderLayer(8, 2, 16, dropout=0.0)
_IMG = x(2, 3, 6, 6)
_SEQ = x(2, 5, 8)


def _without(tree: dict, key: str) -> dict:
    return {name: value for name, value in tree.items() if name != key}


DENSE = [
    Case("Dense in_features 0", lambda: nn.Dense(0, 3), ValueError, r"Dense: in_features must be a positive int; got 0"),
    Case("Dense out_features float", lambda: nn.Dense(4, 3.0), ValueError, r"Dense: out_features must be a positive int; got 3\.0"),
    Case("Dense int x", lambda: apply(_D, torch.ones(2, 4, dtype=torch.int64)), TypeError,
         r"Dense\(in_features=4.*\.apply: x must be floating point; got int64 \[2, 4\]"),
    Case("Dense x of 5 features", lambda: apply(_D, x(2, 5)), ValueError,
         r"Dense\(.*\.apply: x must have size 4 \(in_features\) in axis -1; got float32 \[2, 5\]"),
    Case("Dense params of a wider Dense", lambda: apply(_D, x(2, 4), params=_D_OTHER), ValueError,
         r"Dense\(in_features=4, out_features=3, bias=True\)\.apply: params\['weight'\] must be \[3, 4\]; got float32 \[5, 4\]"),
    Case("Dense params without bias", lambda: apply(_D, x(2, 4), params=_without(init(_D)[0], "bias")), ValueError,
         r"Dense\(.*\.apply: params is missing 'bias'; expected keys \['weight', 'bias'\]"),
    Case("Dense(bias=False) params with bias", lambda: apply(nn.Dense(4, 3, bias=False), x(2, 4), params=init(_D)[0]),
         ValueError, r"Dense\(.*bias=False\)\.apply: params has unexpected 'bias'"),
    Case("Dense params a tensor", lambda: apply(_D, x(2, 4), params=x(3, 4)), TypeError,
         r"Dense\(.*\.apply: params must be a dict with keys \['weight', 'bias'\].*got float32 \[3, 4\]"),
    Case("Dense params leaf a list", lambda: apply(_D, x(2, 4), params={"weight": [[0.0] * 4] * 3, "bias": x(3)}), TypeError,
         r"Dense\(.*\.apply: params\['weight'\] must be a tensor of shape \[3, 4\]; got list"),
    Case("Dense float64 params, float32 x", lambda: apply(_D, x(2, 4), params={n: p.double() for n, p in init(_D)[0].items()}),
         TypeError, r"Dense\(.*\.apply: params\['weight'\] must have the input's dtype float32.*got float64 \[3, 4\]"),
    Case("Dense params on another device", lambda: apply(_D, x(2, 4), params={n: p.to("meta") for n, p in init(_D)[0].items()}),
         ValueError, r"Dense\(.*\.apply: params\['weight'\] must be on the input's device cpu; got float32 \[3, 4\] on meta"),
]

CONV = [
    Case("Conv2d kernel 0", lambda: nn.Conv2d(3, 8, 0), ValueError, r"Conv2d: kernel_size must be an int >= 1 or a pair of them; got 0"),
    Case("Conv2d groups do not divide", lambda: nn.Conv2d(3, 8, 3, groups=2), ValueError,
         r"Conv2d: in_channels \(3\) and out_channels \(8\) must both be divisible by groups \(2\)"),
    Case("Conv2d padding full", lambda: nn.Conv2d(3, 8, 3, padding="full"), ValueError,
         r"Conv2d: padding must be an int, a pair, 'valid' or 'same'; got 'full'"),
    Case("Conv2d same with stride 2", lambda: nn.Conv2d(3, 8, 3, stride=2, padding="same"), ValueError,
         r"Conv2d: padding='same' needs stride 1"),
    Case("Conv2d 2-d x", lambda: apply(_CONV, x(3, 6)), ValueError, r"Conv2d\(.*\.apply: x must be 3-d or 4-d \[B, C, H, W\]"),
    Case("Conv2d 4 channels", lambda: apply(_CONV, x(2, 4, 6, 6)), ValueError,
         r"Conv2d\(.*\.apply: x must have size 3 \(in_channels\) in axis -3; got float32 \[2, 4, 6, 6\]"),
    Case("Conv2d image smaller than kernel", lambda: apply(_CONV, x(2, 3, 2, 2)), ValueError,
         r"Conv2d\(.*\.apply: x is too small for kernel_size=3"),
    Case("Conv2d params of a 5x5 kernel", lambda: apply(_CONV, _IMG, params=init(nn.Conv2d(3, 8, 5))[0]), ValueError,
         r"Conv2d\(.*\.apply: params\['weight'\] must be \[8, 3, 3, 3\]; got float32 \[8, 3, 5, 5\]"),
    Case("Conv2d bfloat16 params, float32 x",
         lambda: apply(_CONV, _IMG, params={n: p.bfloat16() for n, p in init(_CONV)[0].items()}), TypeError,
         r"Conv2d\(.*\.apply: params\['weight'\] must have the input's dtype float32.*got bfloat16"),
]

NORMS = [
    Case("BatchNorm 0 features", lambda: nn.BatchNorm(0), ValueError, r"BatchNorm: num_features must be a positive int; got 0"),
    Case("BatchNorm momentum 1.5", lambda: nn.BatchNorm(4, momentum=1.5), ValueError,
         r"BatchNorm: momentum must be a float in \[0, 1\] or None; got 1\.5"),
    Case("BatchNorm eps 0", lambda: nn.BatchNorm(4, eps=0.0), ValueError, r"BatchNorm: eps must be a float > 0; got 0\.0"),
    Case("BatchNorm 1-d x", lambda: apply(_BN, x(4)), ValueError, r"BatchNorm\(.*\.apply: x must be 2-d or 3-d or 4-d or 5-d"),
    Case("BatchNorm 3 channels", lambda: apply(_BN, x(2, 3)), ValueError,
         r"BatchNorm\(.*\.apply: x must have size 4 \(num_features\) in axis 1; got float32 \[2, 3\]"),
    Case("BatchNorm train on one value per channel", lambda: apply(_BN, x(1, 4), train=True), ValueError,
         r"BatchNorm\(.*\.apply: train=True needs more than 1 value per channel"),
    Case("BatchNorm params of 5 features", lambda: apply(_BN, x(2, 4), params=init(nn.BatchNorm(5))[0]), ValueError,
         r"BatchNorm\(.*\.apply: params\['weight'\] must be \[4\]; got float32 \[5\]"),
    Case("BatchNorm state without counter", lambda: apply(_BN, x(2, 4), state=_without(init(_BN)[1], "num_batches_tracked")),
         ValueError, r"BatchNorm\(.*\.apply: state is missing 'num_batches_tracked'"),
    Case("BatchNorm state of 5 features", lambda: apply(_BN, x(2, 4), state=init(nn.BatchNorm(5))[1]), ValueError,
         r"BatchNorm\(.*\.apply: state\['running_mean'\] must be \[4\]; got float32 \[5\]"),
    Case("BatchNorm params on another device", lambda: apply(_BN, x(2, 4), params={n: p.to("meta") for n, p in init(_BN)[0].items()}),
         ValueError, r"BatchNorm\(.*params\['weight'\] must be on the input's device cpu; got .* on meta"),
    Case("LayerNorm shape 0", lambda: nn.LayerNorm(0), ValueError, r"LayerNorm: normalized_shape\[0\] must be a positive int; got 0"),
    Case("LayerNorm eps negative", lambda: nn.LayerNorm(4, eps=-1.0), ValueError, r"LayerNorm: eps must be > 0; got -1\.0"),
    Case("LayerNorm x ending in 5", lambda: apply(_LN, x(2, 5)), ValueError,
         r"LayerNorm\(.*\.apply: x must end in \[4\] \(normalized_shape\); got float32 \[2, 5\]"),
    Case("LayerNorm params of shape 5", lambda: apply(_LN, x(2, 4), params=init(nn.LayerNorm(5))[0]), ValueError,
         r"LayerNorm\(.*\.apply: params\['weight'\] must be \[4\]; got float32 \[5\]"),
    Case("LayerNorm float64 params, float32 x", lambda: apply(_LN, x(2, 4), params={n: p.double() for n, p in init(_LN)[0].items()}),
         TypeError, r"LayerNorm\(.*params\['weight'\] must have the input's dtype float32.*got float64"),
]

SMALL_LAYERS = [
    Case("Dropout rate 1", lambda: nn.Dropout(1.0), ValueError, r"Dropout: rate must be a float in \[0, 1\); got 1\.0"),
    Case("Dropout rate negative", lambda: nn.Dropout(-0.1), ValueError, r"Dropout: rate must be a float in \[0, 1\); got -0\.1"),
    Case("Dropout train without key", lambda: apply(nn.Dropout(0.5), x(2, 4), train=True), ValueError,
         r"Dropout\(rate=0\.5\)\.apply: train=True needs a random key for dropout; pass key=deepfn\.random\.key"),
    Case("Dropout float key", lambda: apply(nn.Dropout(0.5), x(2, 4), train=True, key=x(2)), TypeError,
         r"Dropout\(.*\.apply: key must be an int64 tensor \[2\] from deepfn\.random\.key; got float32 \[2\]"),
    Case("Embedding 0 rows", lambda: nn.Embedding(0, 4), ValueError, r"Embedding: num_embeddings must be a positive int; got 0"),
    Case("Embedding padding_idx out of range", lambda: nn.Embedding(5, 2, padding_idx=5), ValueError,
         r"Embedding: padding_idx must be None or an int in \[-5, 5\) \(num_embeddings\); got 5"),
    Case("Embedding float ids", lambda: apply(_EMB, x(3)), TypeError,
         r"Embedding\(.*\.apply: ids must be an integer tensor \(int64 ids\); got float32 \[3\]"),
    Case("Embedding id 5 of 5", lambda: apply(_EMB, torch.tensor([1, 5])), ValueError,
         r"Embedding\(.*\.apply: ids must lie in \[0, 5\) \(num_embeddings\); got id 5 in int64 \[2\]"),
    Case("Embedding negative id", lambda: apply(_EMB, torch.tensor([-1, 2])), ValueError,
         r"Embedding\(.*\.apply: ids must lie in \[0, 5\) \(num_embeddings\); got id -1"),
    Case("Embedding table of 6 rows", lambda: apply(_EMB, torch.tensor([1]), params=init(nn.Embedding(6, 2))[0]), ValueError,
         r"Embedding\(.*\.apply: params\['weight'\] must be \[5, 2\]; got float32 \[6, 2\]"),
    Case("Embedding int table", lambda: apply(_EMB, torch.tensor([1]), params={"weight": torch.zeros(5, 2, dtype=torch.int64)}),
         TypeError, r"Embedding\(.*\.apply: params\['weight'\] must be floating point; got int64 \[5, 2\]"),
    Case("PositionalEncoding d_model 0", lambda: nn.PositionalEncoding(0), ValueError,
         r"PositionalEncoding: d_model must be a positive int; got 0"),
    Case("PositionalEncoding longer than max_len", lambda: apply(nn.PositionalEncoding(8, max_len=4), x(1, 5, 8)), ValueError,
         r"PositionalEncoding\(.*max_len"),
    Case("PositionalEncoding d_model 6 x", lambda: apply(nn.PositionalEncoding(8), x(1, 5, 6)), ValueError,
         r"PositionalEncoding\(.*d_model"),
    Case("activations unknown name", lambda: nn.activations.get("swishy"), ValueError, r"swishy"),
    Case("activations.register twice", lambda: nn.activations.register("relu", torch.relu), ValueError,
         r"activations\.register: 'relu' is already registered"),
    Case("activations.register non-callable", lambda: nn.activations.register("mine", 3), TypeError,
         r"activations\.register: fn must be callable; got int"),
    Case("causal_mask length 0", lambda: nn.causal_mask(0), ValueError, r"causal_mask: length must be a positive int; got 0"),
    Case("padding_mask float pad id", lambda: nn.padding_mask(torch.tensor([[1, 0]]), 0.5), TypeError,
         r"padding_mask: pad_id must be an int; got float 0\.5"),
    Case("combine a float mask", lambda: nn.combine(torch.ones(1, 1, 2, 2)), TypeError,
         r"combine: mask 0 must be a bool tensor \(True = may attend\)"),
]

ATTENTION = [
    Case("MHA d_model not divisible", lambda: nn.MultiHeadAttention(8, 3), ValueError,
         r"MultiHeadAttention: d_model must be divisible by n_heads; got d_model=8, n_heads=3"),
    Case("MHA dropout 1", lambda: nn.MultiHeadAttention(8, 2, dropout=1.0), ValueError,
         r"MultiHeadAttention: dropout must be a float in \[0, 1\); got 1\.0"),
    Case("MHA impl flash", lambda: nn.MultiHeadAttention(8, 2, impl="flash"), ValueError,
         r"MultiHeadAttention: impl must be one of \['auto', 'sdpa', 'math'\]; got 'flash'"),
    Case("MHA 4-d query", lambda: apply(_MHA, x(1, 2, 5, 8)), ValueError, r"MultiHeadAttention\(.*\.apply: query must be 2-d or 3-d"),
    Case("MHA key_value of 6 features", lambda: apply(_MHA, _SEQ, x(2, 4, 6)), ValueError,
         r"MultiHeadAttention\(.*\.apply: key_value must have size 8 \(d_model\) in axis -1"),
    Case("MHA key_value other batch", lambda: apply(_MHA, _SEQ, x(3, 4, 8)), ValueError,
         r"MultiHeadAttention\(.*\.apply: key_value must have query's batch size 2"),
    Case("MHA float mask", lambda: apply(_MHA, _SEQ, None, torch.ones(2, 1, 5, 5)), TypeError,
         r"MultiHeadAttention\(.*\.apply: mask must be bool \(True = may attend\).*got float32 \[2, 1, 5, 5\]\. Float masks are ambiguous"),
    Case("MHA mask of another length", lambda: apply(_MHA, _SEQ, None, torch.ones(2, 1, 5, 7, dtype=torch.bool)), ValueError,
         r"MultiHeadAttention\(.*mask must be bool and broadcastable to \[2, 2, 5, 5\]"),
    Case("MHA params of d_model 16", lambda: apply(_MHA, _SEQ, params=init(nn.MultiHeadAttention(16, 2))[0]), ValueError,
         r"MultiHeadAttention\(.*\.apply: params\['in_proj_weight'\] must be \[24, 8\]; got float32 \[48, 16\]"),
    Case("MHA out_proj without bias",
         lambda: apply(_MHA, _SEQ, params={**init(_MHA)[0], "out_proj": {"weight": torch.zeros(8, 8)}}), ValueError,
         r"MultiHeadAttention\(.*\.apply: params\['out_proj'\] is missing 'bias'"),
    Case("MHA train with dropout, no key", lambda: apply(nn.MultiHeadAttention(8, 2, dropout=0.1), _SEQ, train=True),
         ValueError, r"MultiHeadAttention\(.*train=True needs a random key"),
    Case("MHA.attend k of 3 heads", lambda: _MHA.attend(init(_MHA)[0], _SEQ, x(2, 3, 5, 4), x(2, 3, 5, 4)), ValueError,
         r"MultiHeadAttention\(.*\.attend: k must be \[2, 2, S, 4\]; got float32 \[2, 3, 5, 4\]"),
    Case("Encoder layer d_model 8, 3 heads", lambda: nn.TransformerEncoderLayer(8, 3, 16), ValueError,
         r"TransformerEncoderLayer: d_model must be divisible by n_heads"),
    Case("Encoder layer unknown activation", lambda: nn.TransformerEncoderLayer(8, 2, 16, activation="swishy"), ValueError,
         r"TransformerEncoderLayer: .*swishy"),
    Case("Encoder layer 2-d x", lambda: apply(_ENC, x(5, 8)), ValueError,
         r"TransformerEncoderLayer\(.*\.apply: x must be 3-d \[B, T, d_model\]"),
    Case("Encoder layer given decoder params", lambda: apply(_ENC, _SEQ, params=init(_DEC)[0]), ValueError,
         r"TransformerEncoderLayer\(.*\.apply: params has unexpected 'multihead_attn', 'norm3'"),
    Case("Decoder layer memory float64", lambda: apply(_DEC, _SEQ, _SEQ.double()), TypeError,
         r"TransformerDecoderLayer\(.*\.apply: memory must have dtype float32 like x; got float64"),
    Case("Decoder layer memory other batch", lambda: apply(_DEC, _SEQ, x(3, 4, 8)), ValueError,
         r"TransformerDecoderLayer\(.*\.apply: memory must have x's batch size 2"),
    Case("Decoder layer given encoder params", lambda: apply(_DEC, _SEQ, _SEQ, params=init(_ENC)[0]), ValueError,
         r"TransformerDecoderLayer\(.*\.apply: params is missing 'multihead_attn', 'norm3'"),
    Case("Decoder decode_step bad cache", lambda: _DEC.decode_step(init(_DEC)[0], _SEQ, (x(2, 2, 5, 4), x(2, 2, 5, 4)), cache=x(2)),
         ValueError, r"TransformerDecoderLayer\(.*\.decode_step: cache must be a \(k, v\) tuple"),
]

CONV_BLOCKS = [
    Case("ConvBlock dropout 1", lambda: nn.ConvBlock(3, 8, dropout_rate=1.0), ValueError,
         r"ConvBlock: dropout_rate must be a float in \[0, 1\); got 1\.0"),
    Case("ConvBlock params of batch-norm-free block", lambda: apply(nn.ConvBlock(3, 8), _IMG, params=init(nn.ConvBlock(3, 8, batch_norm=False))[0]),
         ValueError, r"ConvBlock\(.*\.apply: params is missing 'batch_norm'"),
    Case("ResidualBlock 0 channels", lambda: nn.ResidualBlock(0, 8), ValueError,
         r"ResidualBlock: in_channels must be a positive int; got 0"),
    Case("ResidualBlock 4-channel x", lambda: apply(nn.ResidualBlock(3, 8), x(2, 4, 6, 6)), ValueError,
         r"ResidualBlock\(.*\.apply: x must have size 3 \(in_channels\) in axis 1"),
    Case("ResidualBlock params without downsample", lambda: apply(nn.ResidualBlock(3, 8), _IMG, params=_without(init(nn.ResidualBlock(3, 8))[0], "downsample")),
         ValueError, r"ResidualBlock\(.*\.apply: params is missing 'downsample'"),
    Case("ResidualBlock state of an identity block", lambda: apply(nn.ResidualBlock(3, 8), _IMG, state=init(nn.ResidualBlock(8, 8))[1]),
         ValueError, r"ResidualBlock\(.*\.apply: state is missing 'downsample'"),
    Case("SEBlock bottleneck 0", lambda: nn.SEBlock(8, 16), ValueError, r"SEBlock: channels // reduction must be >= 1"),
    Case("SEBlock params of 32 channels", lambda: apply(nn.SEBlock(16, 4), x(2, 16, 3, 3), params=init(nn.SEBlock(32, 4))[0]),
         ValueError, r"SEBlock\(.*\.apply: params\['excitation'\]\['0'\]\['weight'\] must be \[4, 16\]; got float32 \[8, 32\]"),
    Case("SpatialAttention even kernel", lambda: nn.SpatialAttention(kernel_size=4), ValueError,
         r"SpatialAttention: kernel_size must be a positive odd int"),
    Case("SpatialAttention params of a block", lambda: apply(nn.SpatialAttention(), _IMG, params=init(nn.SEBlock(16))[0]),
         ValueError, r"SpatialAttention\(.*\.apply: params is missing 'conv' and has unexpected 'excitation'"),
]

_MLP = MLP(10, (8,), 5, batch_norm=True)
_TR = Transformer(vocab_size=20, d_model=8, n_heads=2, n_layers=1, d_ff=16, dropout=0.0, max_seq_len=6)
_SRC = torch.tensor([[3, 4, 5, 0]])

MODELS = [
    Case("MLP hidden_dims a str", lambda: MLP(10, "64", 5), ValueError, r"MLP: hidden_dims must be a sequence of positive ints; got '64'"),
    Case("MLP hidden width 0", lambda: MLP(10, (0,), 5), ValueError, r"MLP: hidden_dims\[0\] must be a positive int; got 0"),
    Case("MLP unknown activation", lambda: MLP(10, (8,), 5, activation="swishy"), ValueError,
         r"MLP: activation must be one of .* got 'swishy'"),
    Case("MLP unknown weight_init", lambda: MLP(10, (8,), 5, weight_init="zeros?"), ValueError,
         r"MLP: weight_init must be one of .* got 'zeros\?'"),
    Case("MLP 3-d x", lambda: apply(_MLP, x(2, 3, 10)), ValueError, r"MLP\(.*\.apply: x must be 2-d \[b, input_dim\]"),
    Case("MLP x of 9 features", lambda: apply(_MLP, x(2, 9)), ValueError, r"MLP\(.*\.apply: x must have size 10 \(input_dim\)"),
    Case("MLP params of another head", lambda: apply(_MLP, x(2, 10), params=init(MLP(10, (8,), 3, batch_norm=True))[0]),
         ValueError, r"Dense\(in_features=8, out_features=5, bias=True\)\.apply: params\['weight'\] must be \[5, 8\]; got float32 \[3, 8\]"),
    Case("MLP params of a deeper MLP", lambda: apply(_MLP, x(2, 10), params=init(MLP(10, (8, 8), 5, batch_norm=True))[0]),
         ValueError, r"MLP\(.*\.apply: params\['network'\] has unexpected '4', '6'"),
    Case("MLP with batch norm, empty state", lambda: apply(_MLP, x(2, 10), state={}), ValueError,
         r"MLP\(.*\.apply: state is missing 'network'"),
    Case("MLP dropout train without key", lambda: apply(MLP(10, (8,), 5, dropout_rate=0.5), x(2, 10), train=True), ValueError,
         r"MLP\(.*train=True needs a random key"),
    Case("AdvancedCNN 3 stages", lambda: AdvancedCNN(num_blocks=(2, 2, 2)), ValueError,
         r"AdvancedCNN: num_blocks must be 4 positive ints"),
    Case("AdvancedCNN stem tiny", lambda: AdvancedCNN(stem="tiny"), ValueError, r"AdvancedCNN: stem must be one of"),
    Case("AdvancedCNN 1-channel x for 3", lambda: apply(AdvancedCNN(3, 10, 16, (1, 1, 1, 1)), x(1, 1, 8, 8)), ValueError,
         r"AdvancedCNN\(.*\.apply: x must have size 3 \(input_channels\) in axis 1"),
    Case("AdvancedCNN params of a deeper stage",
         lambda: apply(AdvancedCNN(1, 10, 16, (1, 1, 1, 1), stem="cifar"), x(2, 1, 8, 8),
                       params=init(AdvancedCNN(1, 10, 16, (2, 1, 1, 1), stem="cifar"))[0],
                       state=init(AdvancedCNN(1, 10, 16, (1, 1, 1, 1), stem="cifar"))[1]),
         ValueError, r"AdvancedCNN\(.*\.apply: params\['layer1'\] has unexpected '1'"),
    Case("Transformer d_model not divisible", lambda: Transformer(20, 8, 3), ValueError,
         r"Transformer: d_model=8 must be divisible by n_heads=3"),
    Case("Transformer pad id outside vocab", lambda: Transformer(20, 8, 2, pad_token_id=20), ValueError,
         r"Transformer: pad_token_id must be an int in \[0, 20\) \(vocab_size\); got 20"),
    Case("Transformer float src", lambda: apply(_TR, _SRC.float(), _SRC), TypeError,
         r"Transformer\(.*\.apply: src must be an integer tensor"),
    Case("Transformer src id outside vocab", lambda: apply(_TR, torch.tensor([[3, 25]]), _SRC[:, :2]), ValueError,
         r"Transformer\(.*\.apply: src must lie in \[0, 20\) \(vocab_size\); got id 25"),
    Case("Transformer src too long", lambda: apply(_TR, torch.ones(1, 7, dtype=torch.int64), _SRC), ValueError,
         r"Transformer\(.*\.apply: src must have 1 to 6 positions \(max_seq_len=6\); got 7"),
    Case("Transformer batch sizes differ", lambda: apply(_TR, _SRC, torch.ones(2, 3, dtype=torch.int64)), ValueError,
         r"Transformer\(.*\.apply: batch sizes must agree"),
    Case("Transformer params of 2 layers", lambda: apply(_TR, _SRC, _SRC, params=init(Transformer(20, 8, 2, 2, 16, 0.0, 6))[0]),
         ValueError, r"Transformer\(.*\.apply: params\['encoder'\]\['layers'\] has unexpected '1'"),
    Case("Transformer params without output layer",
         lambda: apply(_TR, _SRC, _SRC, params={n: p for n, p in init(_TR)[0].items() if n != "output_layer"}), ValueError,
         r"Transformer\(.*\.apply: params is missing 'output_layer'"),
    Case("greedy_decode max_len 0", lambda: _TR.greedy_decode(*init(_TR), _SRC, 0), ValueError,
         r"Transformer\(.*\.greedy_decode: max_len must be an int in \[1, 6\] \(max_seq_len\); got 0"),
    Case("beam_search eos outside vocab", lambda: _TR.beam_search(*init(_TR), _SRC, 3, eos_id=99), ValueError,
         r"Transformer\(.*\.beam_search: eos_id must be an int in \[0, 20\) \(vocab_size\); got 99"),
    Case("beam_search beam 0", lambda: _TR.beam_search(*init(_TR), _SRC, 3, beam_size=0), ValueError,
         r"Transformer\(.*\.beam_search: beam_size must be"),
]

INTEROP = [
    Case("from_torch Linear of another width", lambda: interop.from_torch(_D, torch.nn.Linear(4, 5)), ValueError,
         r"interop\.from_torch\(Dense\(.*\)\): weight has shape \[5, 4\], expected \[3, 4\] for weight"),
    Case("from_torch a Conv2d for a Dense", lambda: interop.from_torch(_D, torch.nn.Conv2d(4, 3, 1)), ValueError,
         r"interop\.from_torch\(Dense\(.*"),
    Case("from_torch not a module", lambda: interop.from_torch(_D, {"weight": x(3, 4)}), TypeError,
         r"interop\.from_torch: module must be a torch\.nn\.Module; got dict"),
    Case("from_torch Linear without bias", lambda: interop.from_torch(_D, torch.nn.Linear(4, 3, bias=False)), ValueError,
         r"interop\.from_torch\(Dense\(.*state_dict names do not match; missing in module: \['bias'\]"),
    Case("to_torch params of another Dense", lambda: interop.to_torch(_D, _D_OTHER, {}, torch.nn.Linear(4, 3)), ValueError,
         r"interop\.to_torch\(Dense\(.*weight is float32 \[5, 4\] but the module's weight has shape \[3, 4\]"),
]

TESTING = [
    Case("check_block unknown check", lambda: testing.check_block(_D, x(2, 4), checks=["fast"]), ValueError, r"check.*'fast'"),
    Case("check_block input of 5 features", lambda: testing.check_block(_D, x(2, 5)), ValueError,
         r"x must have size 4 \(in_features\)"),
    Case("check_causal fn not callable", lambda: testing.check_causal(3, x(2, 3, 4)), TypeError,
         r"testing\.check_causal: fn must be callable fn\(x\) -> y; got int"),
    Case("check_causal 1-d x", lambda: testing.check_causal(lambda t: t, x(3)), ValueError,
         r"testing\.check_causal: x must be at least 2-d \[B, T, \.\.\.\]"),
    Case("check_mask_invariance float valid", lambda: testing.check_mask_invariance(lambda t: t, x(2, 3, 4), x(2, 3)), TypeError,
         r"check_mask_invariance: valid must be"),
]

CASES = DENSE + CONV + NORMS + SMALL_LAYERS + ATTENTION + CONV_BLOCKS + MODELS + INTEROP + TESTING
