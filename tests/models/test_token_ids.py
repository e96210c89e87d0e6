"""The token-id check GPT and Transformer share: one wording, each naming its model and hyperparameter."""

import pytest
import torch

from deepfn.models import GPT, Transformer
from deepfn.models._checks import check_token_ids

GPT_TINY = GPT(vocab_size=7, max_len=4, d_model=8, n_layers=1, n_heads=2)
TRANSFORMER_TINY = Transformer(vocab_size=7, d_model=8, n_heads=2, n_layers=1, d_ff=16, dropout=0.0,
                               max_seq_len=4)
CHECKS = [
    (lambda ids: GPT_TINY.check_ids("ids", ids, "apply"), r"GPT\(.*\)\.apply: ids", "max_len"),
    (lambda ids: TRANSFORMER_TINY.check_tokens("src", ids, "encode"), r"Transformer\(.*\)\.encode: src",
     "max_seq_len"),
]


@pytest.mark.parametrize("check, who, hyper", CHECKS)
def test_an_id_out_of_range_is_named_with_the_model(check, who, hyper):
    with pytest.raises(ValueError, match=who + r" must lie in \[0, 7\) \(vocab_size\); got id 7 in int64 \[1, 2\]"):
        check(torch.tensor([[1, 7]]))


@pytest.mark.parametrize("check, who, hyper", CHECKS)
def test_a_negative_id_is_named_with_the_model(check, who, hyper):
    with pytest.raises(ValueError, match=who + r" must lie in \[0, 7\) \(vocab_size\); got id -1"):
        check(torch.tensor([[-1, 2]]))


@pytest.mark.parametrize("check, who, hyper", CHECKS)
def test_too_many_positions_name_the_length_hyperparameter(check, who, hyper):
    with pytest.raises(ValueError, match=who + rf" must have 1 to 4 positions \({hyper}=4\); got 5 positions"):
        check(torch.zeros(1, 5, dtype=torch.int64))


@pytest.mark.parametrize("check, who, hyper", CHECKS)
def test_no_positions_are_rejected(check, who, hyper):
    with pytest.raises(ValueError, match=who + r" must have 1 to 4 positions.*got 0 positions"):
        check(torch.zeros(1, 0, dtype=torch.int64))


@pytest.mark.parametrize("check, who, hyper", CHECKS)
def test_float_ids_are_a_type_error(check, who, hyper):
    with pytest.raises(TypeError, match=who):
        check(torch.zeros(1, 2))


@pytest.mark.parametrize("check, who, hyper", CHECKS)
def test_ids_of_rank_one_are_rejected(check, who, hyper):
    with pytest.raises(ValueError, match=who):
        check(torch.zeros(3, dtype=torch.int64))


def test_ids_in_range_pass_and_the_range_is_not_read_under_vmap():
    ids = torch.tensor([[0, 6], [3, 5]])
    check_token_ids(GPT_TINY, "ids", ids, "apply", vocab_size=7, max_len=4, max_len_name="max_len")
    # Under vmap the values cannot be read: the range check is skipped (an out-of-range id passes).
    torch.func.vmap(lambda row: check_token_ids(GPT_TINY, "ids", row, "apply", vocab_size=7, max_len=4,
                                                max_len_name="max_len") or row.sum())(torch.tensor([[[9]]]))
