"""Hostile inputs to the language-model pieces and their neighbours: GPT, generate and the
sampling masks, random.categorical, initializer arguments, GPT-2 interop, amp.Policy's
keep_float32 rule, and sharded training states."""

from __future__ import annotations

import importlib.util

import torch

from deepfn import amp, distributed, interop, losses, nn, optim, random
from deepfn.models import GPT, MLP, generate
from deepfn.models.sampling import sample_logits, top_k_mask, top_p_mask
from deepfn.train import TrainState, make_train_step

from .case import Case, apply, init, k, x

_GPT = GPT(vocab_size=16, max_len=8, d_model=8, n_layers=1, n_heads=2)
_GPT_DROP = GPT(vocab_size=16, max_len=8, d_model=8, n_layers=1, n_heads=2, dropout=0.1)
_IDS = torch.tensor([[1, 2, 3]])
_WHO = r"GPT\(vocab_size=16, max_len=8.*\)"


def _generate(prompt: torch.Tensor = _IDS, **kw):
    options = {"max_new_tokens": 2, "compile": False, **kw}
    return generate(_GPT, init(_GPT)[0], prompt, k(), **options)


def _returns(shape: tuple[int, ...], dtype: torch.dtype = torch.float32):
    """An initializer that ignores the shape it is asked for."""
    return lambda key, want, dt=torch.float32: torch.zeros(shape, dtype=dtype)


GPT_CASES = [
    Case("GPT vocab_size 0", lambda: GPT(vocab_size=0), ValueError, r"GPT: vocab_size must be a positive int; got 0"),
    Case("GPT vocab_size float", lambda: GPT(vocab_size=16.0), ValueError,
         r"GPT: vocab_size must be a positive int; got 16\.0"),
    Case("GPT d_model not divisible by n_heads", lambda: GPT(vocab_size=16, d_model=10, n_heads=3), ValueError,
         r"GPT: d_model must be divisible by n_heads; got d_model=10, n_heads=3"),
    Case("GPT dropout 1.5", lambda: GPT(vocab_size=16, dropout=1.5), ValueError, r"GPT: dropout must be"),
    Case("GPT T > max_len", lambda: apply(_GPT, torch.zeros(1, 9, dtype=torch.int64)), ValueError,
         _WHO + r"\.apply: ids must have 1 to 8 positions \(max_len=8\); got 9 positions"),
    Case("GPT float ids", lambda: apply(_GPT, _IDS.float()), TypeError,
         _WHO + r"\.apply: ids must be an integer tensor \(int64 ids\); got float32 \[1, 3\]"),
    Case("GPT 1-d ids", lambda: apply(_GPT, _IDS[0]), ValueError, _WHO + r"\.apply: ids must be 2-d \[B, T\]"),
    Case("GPT id = vocab_size", lambda: apply(_GPT, torch.tensor([[1, 16]])), ValueError,
         _WHO + r"\.apply: ids must lie in \[0, 16\) \(vocab_size\); got id 16"),
    Case("GPT negative id", lambda: apply(_GPT, torch.tensor([[1, -1]])), ValueError,
         _WHO + r"\.apply: ids must lie in \[0, 16\) \(vocab_size\); got id -1"),
    Case("GPT train with dropout and no key", lambda: apply(_GPT_DROP, _IDS, train=True), ValueError,
         r"GPT\(.*dropout=0\.1.*\)\.apply: train=True needs a random key for dropout"),
    Case("GPT params of an untied GPT", lambda: apply(_GPT, _IDS, params=init(GPT(16, 8, 8, 1, 2, tie_embeddings=False))[0]),
         ValueError, _WHO + r"\.apply: params has unexpected 'lm_head'"),
    Case("GPT prefill cache of another head_dim", lambda: _GPT.prefill(init(_GPT)[0], _IDS, torch.zeros(1, 2, 1, 2, 8, 3)),
         ValueError, _WHO + r"\.prefill: cache must be float32 \[1, 2, 1, 2, 8, 4\].*got float32 \[1, 2, 1, 2, 8, 3\]"),
    Case("GPT decode_step pos = max_len", lambda: _GPT.decode_step(init(_GPT)[0], _IDS[:, 0], _GPT.init_cache(1), 8),
         ValueError, _WHO + r"\.decode_step: pos must lie in \[0, 8\) \(max_len\); got 8"),
    Case("GPT decode_step float pos", lambda: _GPT.decode_step(init(_GPT)[0], _IDS[:, 0], _GPT.init_cache(1), 1.0),
         TypeError, _WHO + r"\.decode_step: pos must be an int or a 0-d integer tensor; got float 1\.0"),
    Case("GPT decode_step 2-d token", lambda: _GPT.decode_step(init(_GPT)[0], _IDS, _GPT.init_cache(1), 0), ValueError,
         _WHO + r"\.decode_step: token must be 1-d \[B\]"),
    Case("GPT init_cache batch 0", lambda: _GPT.init_cache(0), ValueError, r"GPT: batch must be a positive int; got 0"),
]

GENERATE = [
    Case("generate temperature < 0", lambda: _generate(temperature=-1.0), ValueError,
         r"generate: temperature must be a float >= 0 \(0 is greedy\); got -1\.0"),
    Case("generate temperature NaN", lambda: _generate(temperature=float("nan")), ValueError,
         r"generate: temperature must be a float >= 0.*got nan"),
    Case("generate temperature inf", lambda: _generate(temperature=float("inf")), ValueError,
         r"generate: temperature must be finite; got inf"),
    Case("generate top_k 0", lambda: _generate(top_k=0), ValueError, r"generate: top_k must be None or an int >= 1; got 0"),
    Case("generate top_k float", lambda: _generate(top_k=2.0), ValueError,
         r"generate: top_k must be None or an int >= 1; got 2\.0"),
    Case("generate top_p 0", lambda: _generate(top_p=0.0), ValueError,
         r"generate: top_p must be None or a float in \(0, 1\]; got 0\.0"),
    Case("generate top_p 1.5", lambda: _generate(top_p=1.5), ValueError,
         r"generate: top_p must be None or a float in \(0, 1\]; got 1\.5"),
    Case("generate float prompt", lambda: _generate(_IDS.float()), TypeError,
         r"generate: prompt must be an integer tensor \(int64 ids\); got float32 \[1, 3\]"),
    Case("generate bool prompt", lambda: _generate(_IDS > 1), TypeError,
         r"generate: prompt must be an integer tensor \(int64 ids\); got bool \[1, 3\]"),
    Case("generate 1-d prompt", lambda: _generate(_IDS[0]), ValueError, r"generate: prompt must be 2-d \[B, T0\]"),
    Case("generate prompt a list", lambda: _generate([[1, 2]]), TypeError, r"generate: prompt must be a torch\.Tensor; got list"),
    Case("generate empty prompt", lambda: _generate(_IDS[:, :0]), ValueError,
         r"generate: prompt must have at least one row and one token; got int64 \[1, 0\]"),
    Case("generate prompt id out of range", lambda: _generate(torch.tensor([[1, 99]])), ValueError,
         r"GPT\(.*\)\.generate: prompt must lie in \[0, 16\) \(vocab_size\); got id 99"),
    Case("generate prompt + new > max_len", lambda: _generate(max_new_tokens=6), ValueError,
         r"generate: the prompt's 3 tokens plus max_new_tokens=6 exceed the model's max_len=8"),
    Case("generate max_new_tokens 0", lambda: _generate(max_new_tokens=0), ValueError,
         r"generate: max_new_tokens must be a positive int; got 0"),
    Case("generate eos_id = vocab_size", lambda: _generate(eos_id=16), ValueError,
         r"generate: eos_id must be None or an int in \[0, 16\) \(vocab_size\); got 16"),
    Case("generate eos_id negative", lambda: _generate(eos_id=-1), ValueError,
         r"generate: eos_id must be None or an int in \[0, 16\) \(vocab_size\); got -1"),
    Case("generate key an int", lambda: generate(_GPT, init(_GPT)[0], _IDS, 0, max_new_tokens=2), TypeError,
         r"generate: key must be an int64 tensor \[2\] from deepfn\.random\.key; got int 0"),
    Case("top_k_mask k 0", lambda: top_k_mask(x(2, 4), 0), ValueError, r"top_k_mask: k must be a positive int; got 0"),
    Case("top_k_mask integer logits", lambda: top_k_mask(torch.zeros(2, 4, dtype=torch.int64), 2), TypeError,
         r"top_k_mask: logits must be a floating tensor; got int64 \[2, 4\]"),
    Case("top_p_mask p 0", lambda: top_p_mask(x(2, 4), 0.0), ValueError, r"top_p_mask: p must be a float in \(0, 1\]; got 0\.0"),
    Case("top_p_mask integer logits", lambda: top_p_mask(torch.zeros(2, 4, dtype=torch.int64), 0.5), TypeError,
         r"top_p_mask: logits must be a floating tensor; got int64 \[2, 4\]"),
    Case("sample_logits temperature < 0", lambda: sample_logits(k(), x(2, 4), -1.0), ValueError,
         r"sample_logits: temperature must be a finite float >= 0 \(0 is greedy\); got -1\.0"),
    Case("sample_logits integer logits", lambda: sample_logits(k(), torch.zeros(2, 4, dtype=torch.int64), 1.0), TypeError,
         r"sample_logits: logits must be a floating tensor; got int64 \[2, 4\]"),
]

CATEGORICAL = [
    Case("categorical axis out of range", lambda: random.categorical(k(), x(2, 3), axis=2), ValueError,
         r"categorical: axis must lie in \[-2, 2\) for logits float32 \[2, 3\]; got axis=2"),
    Case("categorical axis float", lambda: random.categorical(k(), x(2, 3), axis=1.0), TypeError,
         r"categorical: axis must be an int; got float 1\.0"),
    Case("categorical integer logits", lambda: random.categorical(k(), torch.zeros(2, 3, dtype=torch.int64)), TypeError,
         r"categorical: logits must be a floating tensor; got int64 \[2, 3\]"),
    Case("categorical no category", lambda: random.categorical(k(), x(2, 0)), ValueError,
         r"categorical: logits need at least one category along axis -1; got float32 \[2, 0\]"),
    Case("categorical 0-d logits", lambda: random.categorical(k(), torch.tensor(1.0)), ValueError,
         r"categorical: axis must lie in \[0, 0\) for logits float32 \[\]"),
]

_INIT_KINDS = r"must be None, a callable \(key, shape, dtype\) -> Tensor"

INITIALIZERS = [
    Case("Dense kernel_init an int", lambda: nn.Dense(4, 3, kernel_init=3), TypeError, r"Dense: kernel_init " + _INIT_KINDS),
    Case("Dense kernel_init unknown name", lambda: nn.Dense(4, 3, kernel_init="glorot"), ValueError,
         r"Dense: kernel_init " + _INIT_KINDS + r" or one of \[.*'xavier'.*\]; got 'glorot'"),
    Case("Dense kernel_init of no arguments", lambda: nn.Dense(4, 3, kernel_init=lambda: None), TypeError,
         r"Dense: kernel_init must take \(key, shape, dtype\)"),
    Case("Dense kernel_init wrong shape", lambda: init(nn.Dense(4, 3, kernel_init=_returns((2, 2)))), ValueError,
         r"Dense\(.*\)\.init: kernel_init must return shape \[3, 4\]; got float32 \[2, 2\]"),
    Case("Dense bias_init float64", lambda: init(nn.Dense(4, 3, bias_init=_returns((3,), torch.float64))), TypeError,
         r"Dense\(.*\)\.init: bias_init must return a float32 tensor of shape \[3\]; got float64 \[3\]"),
    Case("Conv2d kernel_init a str list", lambda: nn.Conv2d(3, 8, 3, kernel_init=["he"]), TypeError,
         r"Conv2d: kernel_init " + _INIT_KINDS),
    Case("Conv2d bias_init unknown name", lambda: nn.Conv2d(3, 8, 3, bias_init="nope"), ValueError,
         r"Conv2d: bias_init " + _INIT_KINDS + r" or one of .*got 'nope'"),
    Case("Conv2d kernel_init wrong shape", lambda: init(nn.Conv2d(3, 8, 3, kernel_init=_returns((8, 3)))), ValueError,
         r"Conv2d\(.*\)\.init: kernel_init must return shape \[8, 3, 3, 3\]; got float32 \[8, 3\]"),
    Case("Embedding embedding_init an int", lambda: nn.Embedding(5, 2, embedding_init=3), TypeError,
         r"Embedding: embedding_init " + _INIT_KINDS),
    Case("Embedding embedding_init unknown name", lambda: nn.Embedding(5, 2, embedding_init="nope"), ValueError,
         r"Embedding: embedding_init " + _INIT_KINDS + r" or one of .*got 'nope'"),
    Case("Embedding embedding_init transposed", lambda: init(nn.Embedding(5, 2, embedding_init=_returns((2, 5)))), ValueError,
         r"Embedding\(.*\)\.init: embedding_init must return shape \[5, 2\]; got float32 \[2, 5\]"),
    Case("LayerNorm scale_init an int", lambda: nn.LayerNorm(4, scale_init=3), TypeError, r"LayerNorm: scale_init " + _INIT_KINDS),
    Case("LayerNorm bias_init unknown name", lambda: nn.LayerNorm(4, bias_init="nope"), ValueError,
         r"LayerNorm: bias_init " + _INIT_KINDS + r" or one of .*got 'nope'"),
    Case("LayerNorm scale_init wrong shape", lambda: init(nn.LayerNorm(4, scale_init=_returns((5,)))), ValueError,
         r"LayerNorm\(.*\)\.init: scale_init must return shape \[4\]; got float32 \[5\]"),
]

_POLICY_PARAMS = {"norm": {"weight": torch.ones(2), "bias": torch.zeros(2)}}

AMP = [
    Case("Policy keep_float32 a str", lambda: amp.Policy(keep_float32="norm"), TypeError,
         r"Policy: keep_float32 must be None or a callable \(path, node\) -> bool; got str 'norm'"),
    Case("Policy keep_float32 True", lambda: amp.Policy(keep_float32=True), TypeError,
         r"Policy: keep_float32 must be None or a callable \(path, node\) -> bool; got bool True"),
    Case("Policy keep_float32 of one argument", lambda: amp.Policy(keep_float32=lambda path: True), TypeError,
         r"Policy: keep_float32 must take \(path, node\)"),
    Case("Policy keep_float32 returns the node",
         lambda: amp.Policy("bf16", keep_float32=lambda path, node: node).cast_to_param(_POLICY_PARAMS), TypeError,
         r"keep_float32 must return a bool; got dict for path ''"),
]

_MLP = MLP(4, (8,), 3)
_OPT = optim.sgd(0.1)
_XY = (x(2, 4), torch.tensor([0, 1]))


def _train_state() -> TrainState:
    return TrainState.create(_MLP, _OPT, k())


def _sharded_step(sharding, **kw):
    return make_train_step(_MLP, losses.cross_entropy, kw.pop("optimizer", _OPT), sharding=sharding,
                           **{"compile": False, **kw})


SHARDING = [
    Case("shard unknown sharding", lambda: distributed.shard(_train_state(), "zero"), ValueError,
         r"distributed\.shard: sharding must be one of \('optimizer', 'full'\); got 'zero'"),
    Case("shard sharding None", lambda: distributed.shard(_train_state(), None), ValueError,
         r"distributed\.shard: sharding must be one of \('optimizer', 'full'\); got None"),
    Case("shard a sharded state", lambda: distributed.shard(distributed.shard(_train_state(), "full"), "full"), TypeError,
         r"distributed\.shard: the train state is sharded already \(sharding='full'"),
    Case("shard params", lambda: distributed.shard(_train_state().params, "full"), TypeError,
         r"distributed\.shard: expected a deepfn\.train\.TrainState; got dict"),
    Case("make_train_step sharding unknown", lambda: _sharded_step("zero3"), ValueError,
         r"make_train_step: sharding must be None or one of \('optimizer', 'full'\); got 'zero3'"),
    Case("make_train_step sharding an int", lambda: _sharded_step(3), ValueError,
         r"make_train_step: sharding must be None or one of \('optimizer', 'full'\); got 3"),
    Case("make_train_step sharding with all_reduce",
         lambda: _sharded_step("full", all_reduce=distributed.all_reduce_mean), ValueError,
         r"make_train_step: a sharded step averages gradients itself.*leave all_reduce None with sharding='full'"),
    Case("make_train_step sharding with compile split", lambda: _sharded_step("optimizer", compile="split"), ValueError,
         r"make_train_step: sharding='optimizer' compiles with compile=True or runs eagerly"),
    Case("make_train_step sharding with a clip_by_global_norm chain",
         lambda: _sharded_step("full", optimizer=optim.chain(optim.clip_by_global_norm(1.0), _OPT)), ValueError,
         r"make_train_step: sharded steps run the optimizer on each rank's chunk.*clip_by_global_norm"),
    Case("sharded step given a full state", lambda: _sharded_step("full")(_train_state(), _XY, k()), TypeError,
         r"make_train_step: a step made with sharding='full' needs this rank's ShardedTrainState"),
    Case("sharded step given another sharding",
         lambda: _sharded_step("optimizer")(distributed.shard(_train_state(), "full"), _XY, k()), ValueError,
         r"make_train_step: the step was made with sharding='optimizer' but the state is sharded with 'full'"),
    Case("plain step given a sharded state",
         lambda: make_train_step(_MLP, losses.cross_entropy, _OPT, compile=False)(distributed.shard(_train_state(), "full"),
                                                                                  _XY, k()),
         TypeError, r"make_train_step: the train state is sharded \('full'\); make the step with make_train_step"),
]


def _gpt2(**config):
    """A small ``GPT2LMHeadModel`` of ``_GPT``'s config, with ``config``'s fields changed."""
    from transformers import GPT2Config, GPT2LMHeadModel

    fields = {"vocab_size": 16, "n_positions": 8, "n_embd": 8, "n_layer": 1, "n_head": 2, "bos_token_id": 0,
              "eos_token_id": 0, **config}
    return GPT2LMHeadModel(GPT2Config(**fields))


_FROM = r"interop\.from_torch\(GPT\(vocab_size=16.*\), GPT2LMHeadModel\): "

GPT2_INTEROP = [
    Case("from_torch GPT-2 of another vocabulary", lambda: interop.from_torch(_GPT, _gpt2(vocab_size=17)), ValueError,
         _FROM + r"vocab_size=16 but the model's config has vocab_size=17"),
    Case("from_torch GPT-2 of more positions", lambda: interop.from_torch(_GPT, _gpt2(n_positions=9)), ValueError,
         _FROM + r"max_len=8 but the model's config has n_positions=9"),
    Case("from_torch GPT-2 of more layers", lambda: interop.from_torch(_GPT, _gpt2(n_layer=2)), ValueError,
         _FROM + r"n_layers=1 but the model's config has n_layer=2"),
    Case("from_torch GPT-2 of more heads", lambda: interop.from_torch(_GPT, _gpt2(n_head=4)), ValueError,
         _FROM + r"n_heads=2 but the model's config has n_head=4"),
    Case("from_torch GPT-2 untied", lambda: interop.from_torch(_GPT, _gpt2(tie_word_embeddings=False)), ValueError,
         _FROM + r"tie_embeddings=True but the model's config has tie_word_embeddings=False"),
    Case("from_torch GPT-2 with ReLU", lambda: interop.from_torch(_GPT, _gpt2(activation_function="relu")), ValueError,
         r"interop\.from_torch: GPT uses GELU with the tanh approximation; .*activation_function='relu'"),
    Case("from_torch GPT-2 scaled by layer index",
         lambda: interop.from_torch(_GPT, _gpt2(scale_attn_by_inverse_layer_idx=True)), ValueError,
         r"interop\.from_torch: GPT scales attention scores by 1/sqrt\(head_dim\) only"),
    Case("to_torch GPT-2 of another eps", lambda: interop.to_torch(_GPT, init(_GPT)[0], {}, _gpt2(layer_norm_epsilon=1e-6)),
         ValueError, r"interop\.to_torch\(GPT\(.*\), GPT2LMHeadModel\): layer_norm_eps=1e-05 but the model's config "
                     r"has layer_norm_epsilon=1e-06"),
    Case("to_torch params of an untied GPT",
         lambda: interop.to_torch(_GPT, init(GPT(16, 8, 8, 1, 2, tie_embeddings=False))[0], {}, _gpt2()), ValueError,
         r"interop\.to_torch\(GPT\(.*\)\): params names do not match the block; missing \[\], unexpected \['lm_head\.weight'\]"),
    Case("to_torch params of a wider GPT",
         lambda: interop.to_torch(_GPT, init(GPT(16, 8, 16, 1, 2))[0], {}, _gpt2()), ValueError,
         r"interop\.to_torch\(GPT\(.*\)\): wte\.weight is float32 \[16, 16\] but the model's transformer\.wte\.weight "
         r"has shape \[16, 8\]"),
]

HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None

CASES = GPT_CASES + GENERATE + CATEGORICAL + INITIALIZERS + AMP + SHARDING + (GPT2_INTEROP if HAS_TRANSFORMERS else [])
