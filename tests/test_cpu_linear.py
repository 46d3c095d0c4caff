"""PackedLinear: the oneDNN-packed CPU path computes what F.linear does and follows its weight."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pp_sarathi.model.cpu_linear import PackedLinear, onednn_linear_available

pytestmark = pytest.mark.skipif(not onednn_linear_available(), reason="torch built without oneDNN")


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 7, 144])
def test_matches_f_linear(bias, rows):
    torch.manual_seed(0)
    lin = PackedLinear(96, 80, bias=bias)
    x = torch.randn(rows, 96)
    with torch.inference_mode():
        got = lin(x)
        assert lin.packed_weight() is not None  # the packed path ran
        torch.testing.assert_close(got, F.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-6)
        # A non-contiguous input (rows of a larger tensor) is fine too.
        wide = torch.randn(rows, 2 * 96)[:, ::2]
        torch.testing.assert_close(lin(wide), F.linear(wide, lin.weight, lin.bias), rtol=1e-5, atol=1e-6)


def test_repacks_when_the_weight_changes():
    torch.manual_seed(0)
    lin = PackedLinear(32, 16, bias=False)
    x = torch.randn(4, 32)
    with torch.inference_mode():
        before = lin(x)
    with torch.no_grad():
        lin.weight.mul_(2.0)  # in place: same storage, new version
    with torch.inference_mode():
        torch.testing.assert_close(lin(x), 2.0 * before, rtol=1e-5, atol=1e-6)
    lin.load_state_dict({"weight": torch.randn(16, 32)})
    with torch.inference_mode():
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight), rtol=1e-5, atol=1e-6)


def test_bfloat16_and_fallbacks():
    torch.manual_seed(0)
    lin = PackedLinear(64, 48, bias=True).to(torch.bfloat16)
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    with torch.inference_mode():
        torch.testing.assert_close(lin(x).float(), F.linear(x, lin.weight, lin.bias).float(),
                                   rtol=2e-2, atol=2e-2)
    half = PackedLinear(64, 48).to(torch.float16)
    assert half.packed_weight() is None  # no packed path: plain F.linear
    try:
        PackedLinear.enabled = False
        assert PackedLinear(8, 8).packed_weight() is None
    finally:
        PackedLinear.enabled = True


def test_weights_made_under_inference_mode():
    with torch.inference_mode():
        lin = PackedLinear(16, 8)
        x = torch.randn(3, 16)
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-6)
