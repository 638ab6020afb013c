"""refdiff.nn: parameter bookkeeping, state dicts, and each layer against an independent NumPy formula."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refdiff as rd
from refdiff import nn
from refdiff.nn.autograd import Tensor


def f64(module):
    """The module in float64, so forward values can be compared with NumPy float64 to ~1e-12."""
    return module.to(dtype=np.float64)


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(3, 4, rng=1)
        self.blocks = nn.ModuleList([nn.Linear(4, 4, rng=2), nn.GroupNorm(2, 4)])
        self.register_buffer("running", np.arange(4, dtype=np.float32))

    def forward(self, x):
        return self.blocks[1](self.blocks[0](self.first(x)).reshape(-1, 4, 1, 1))


# ---- bookkeeping --------------------------------------------------------------------------------


def test_named_parameters_are_dotted_paths_in_definition_order():
    names = [n for n, _ in Pair().named_parameters()]
    assert names == ["first.weight", "first.bias", "blocks.0.weight", "blocks.0.bias", "blocks.1.weight", "blocks.1.bias"]


def test_state_dict_holds_parameters_and_buffers_as_numpy_copies():
    m = Pair()
    sd = m.state_dict()
    assert set(sd) == {n for n, _ in m.named_parameters()} | {"running"}
    sd["first.weight"][...] = 123.0  # writing the copy leaves the model alone
    assert not np.any(m.first.weight.data == 123.0)


def test_state_dict_round_trip_reproduces_outputs():
    a, b = Pair(), Pair()
    b.first = nn.Linear(3, 4, rng=99)  # different weights, same names
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    assert not np.allclose(a(x).numpy(), b(x).numpy())
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())
    for key, value in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[key], value)


def test_load_state_dict_names_missing_unexpected_and_misshaped_keys():
    m = Pair()
    sd = m.state_dict()
    del sd["first.bias"]
    sd["extra.weight"] = np.zeros(2, np.float32)
    sd["blocks.0.weight"] = np.zeros((4, 5), np.float32)
    with pytest.raises(ValueError) as err:
        m.load_state_dict(sd)
    message = str(err.value)
    assert "missing keys (1): first.bias" in message
    assert "unexpected keys (1): extra.weight" in message
    assert "blocks.0.weight: checkpoint (4, 5) vs model (4, 4)" in message


def test_load_state_dict_non_strict_skips_missing_and_unexpected_keys():
    m = Pair()
    before = m.first.bias.data.copy()
    sd = {"first.weight": np.ones((4, 3), np.float32), "nonsense": np.zeros(1)}
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert unexpected == ["nonsense"] and "first.bias" in missing
    np.testing.assert_array_equal(m.first.weight.data, 1.0)
    np.testing.assert_array_equal(m.first.bias.data, before)


def test_load_state_dict_rejects_nan():
    m = Pair()
    sd = m.state_dict()
    sd["first.weight"][0, 0] = np.nan
    with pytest.raises(ValueError, match="first.weight contains NaN"):
        m.load_state_dict(sd)


def test_load_state_dict_keeps_parameter_dtype():
    m = Pair()
    sd = {k: v.astype(np.float64) for k, v in m.state_dict().items()}
    m.load_state_dict(sd)
    assert all(p.dtype == np.float32 for p in m.parameters())


def test_train_and_eval_reach_every_submodule():
    m = Pair().eval()
    assert not any(sub.training for _, sub in m.named_modules())
    m.train()
    assert all(sub.training for _, sub in m.named_modules())


def test_to_float64_casts_parameters_and_buffers():
    m = Pair().to(dtype=np.float64)
    assert all(p.dtype == np.float64 for p in m.parameters())
    assert m.running.dtype == np.float64


def test_to_numpy_backend_keeps_values():
    m = Pair()
    before = m.state_dict()
    m.to("numpy")
    for key, value in m.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


# ---- layers against NumPy ---------------------------------------------------------------------


@given(st.integers(1, 5), st.integers(1, 6), st.integers(1, 6), st.integers(0, 2**16))
def test_linear_equals_x_times_w_transpose_plus_b(batch, fan_in, fan_out, seed):
    layer = f64(nn.Linear(fan_in, fan_out, rng=seed))
    x = np.random.default_rng(seed).standard_normal((batch, fan_in))
    expected = x @ layer.weight.data.T + layer.bias.data
    # float64 on both sides: the only difference is summation order (~1e-15 relative)
    np.testing.assert_allclose(layer(Tensor(x)).numpy(), expected, rtol=1e-12, atol=1e-12)


def test_linear_and_conv_init_is_uniform_within_one_over_sqrt_fan_in():
    conv = nn.Conv2d(8, 16, 3, rng=0)
    bound = 1 / np.sqrt(8 * 9)
    w = conv.weight.data
    assert w.dtype == np.float32 and np.abs(w).max() <= bound
    # U(-b, b) has standard deviation b / sqrt(3); with 1152 draws the sample std is within 5%
    assert abs(w.std() - bound / np.sqrt(3)) < 0.05 * bound / np.sqrt(3)


def test_same_seed_same_parameters_different_seed_different_parameters():
    a, b, c = nn.Linear(5, 5, rng=3), nn.Linear(5, 5, rng=3), nn.Linear(5, 5, rng=4)
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    assert not np.array_equal(a.weight.data, c.weight.data)


def naive_conv2d(x, w, b, stride, padding):
    """Direct loop over output pixels (the definition of cross-correlation)."""
    N, C, H, W = x.shape
    O, _, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    Ho, Wo = (H + 2 * padding - k) // stride + 1, (W + 2 * padding - k) // stride + 1
    out = np.zeros((N, O, Ho, Wo))
    for i in range(Ho):
        for j in range(Wo):
            patch = xp[:, :, i * stride : i * stride + k, j * stride : j * stride + k]
            out[:, :, i, j] = np.einsum("nchw,ochw->no", patch, w) + b
    return out


@given(st.integers(1, 3), st.sampled_from([1, 3]), st.integers(1, 2), st.integers(0, 1), st.integers(3, 7))
def test_conv2d_layer_matches_naive_loop(channels, k, stride, padding, size):
    conv = f64(nn.Conv2d(channels, 2, k, stride=stride, padding=padding, rng=0))
    x = np.random.default_rng(1).standard_normal((2, channels, size, size))
    expected = naive_conv2d(x, conv.weight.data, conv.bias.data, stride, padding)
    np.testing.assert_allclose(conv(Tensor(x)).numpy(), expected, rtol=1e-12, atol=1e-12)  # float64 both sides


def test_group_norm_layer_matches_formula():
    gn = f64(nn.GroupNorm(2, 6, eps=1e-6))
    gn.weight.data[...] = np.arange(6)
    gn.bias.data[...] = -np.arange(6)
    x = np.random.default_rng(0).standard_normal((3, 6, 4, 5))
    g = x.reshape(3, 2, -1)
    xhat = ((g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + 1e-6)).reshape(x.shape)
    expected = xhat * np.arange(6)[None, :, None, None] - np.arange(6)[None, :, None, None]
    np.testing.assert_allclose(gn(Tensor(x)).numpy(), expected, rtol=1e-10, atol=1e-10)  # float64 both sides


def test_group_norm_rejects_indivisible_channels():
    with pytest.raises(ValueError, match="num_channels=6 is not divisible by num_groups=4"):
        nn.GroupNorm(4, 6)


def test_embedding_picks_rows_and_rejects_out_of_range_indices():
    emb = nn.Embedding(5, 3, rng=0)
    np.testing.assert_array_equal(emb(np.array([4, 0])).numpy(), emb.weight.data[[4, 0]])
    with pytest.raises(ValueError, match=r"indices must be in \[0, 4\]"):
        emb(np.array([5]))


def test_dropout_is_identity_in_eval_and_masks_in_train():
    drop = nn.Dropout(0.5, seed=0)
    x = Tensor(np.ones((1000,), np.float32))
    out = drop(x).numpy()
    assert set(np.unique(out)) <= {0.0, 2.0}  # inverted dropout: kept entries scaled by 1/(1-p)
    assert 400 < (out == 0).sum() < 600  # Binomial(1000, 0.5): 6 standard deviations either side
    np.testing.assert_array_equal(drop.eval()(x).numpy(), x.numpy())


def naive_attention(x, m):
    """Self-attention with explicit loops over batch, heads and query positions (float64)."""
    B, C, H, W = x.shape
    g = x.reshape(B, m.group_norm.num_groups, -1)
    xhat = ((g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + m.group_norm.eps)).reshape(x.shape)
    h = xhat * m.group_norm.weight.data[None, :, None, None] + m.group_norm.bias.data[None, :, None, None]
    h = h.reshape(B, C, H * W).transpose(0, 2, 1)  # (B, N, C)

    def lin(layer, a):
        return a @ layer.weight.data.T + layer.bias.data

    q, k, v = lin(m.to_q, h), lin(m.to_k, h), lin(m.to_v, h)
    d = m.head_dim
    out = np.zeros_like(q)
    for b in range(B):
        for head in range(m.heads):
            cols = slice(head * d, (head + 1) * d)
            for i in range(H * W):
                scores = np.array([q[b, i, cols] @ k[b, j, cols] / np.sqrt(d) for j in range(H * W)])
                weights = np.exp(scores - scores.max())
                weights /= weights.sum()
                out[b, i, cols] = sum(weights[j] * v[b, j, cols] for j in range(H * W))
    out = lin(m.to_out[0], out).transpose(0, 2, 1).reshape(B, C, H, W)
    return (x + out) / m.rescale_output_factor


@given(st.sampled_from([(8, None), (8, 4), (8, 2)]), st.integers(1, 3), st.integers(1, 3), st.sampled_from([1.0, 2.0]))
def test_attention_matches_naive_loop(channels_head_dim, H, W, rescale):
    channels, head_dim = channels_head_dim
    attn = f64(nn.Attention(channels, head_dim=head_dim, norm_groups=4, eps=1e-6, rescale_output_factor=rescale, rng=0))
    attn.group_norm.weight.data[...] = np.linspace(0.5, 1.5, channels)  # not the identity
    x = np.random.default_rng(H * 10 + W).standard_normal((2, channels, H, W))
    # float64 both sides; only summation order differs
    np.testing.assert_allclose(attn(Tensor(x)).numpy(), naive_attention(x, attn), rtol=1e-10, atol=1e-10)


def test_attention_parameter_names_follow_diffusers():
    names = [n for n, _ in nn.Attention(8, norm_groups=4).named_parameters()]
    assert names == ["group_norm.weight", "group_norm.bias", "to_q.weight", "to_q.bias", "to_k.weight", "to_k.bias",
                     "to_v.weight", "to_v.bias", "to_out.0.weight", "to_out.0.bias"]


def test_resnet_block_parameter_names_follow_diffusers():
    names = {n.rsplit(".", 1)[0] for n, _ in nn.ResnetBlock(4, 8, temb_channels=16, groups=2).named_parameters()}
    assert names == {"norm1", "conv1", "time_emb_proj", "norm2", "conv2", "conv_shortcut"}
    assert nn.ResnetBlock(8, 8, temb_channels=16, groups=2).conv_shortcut is None


def test_resnet_block_scale_shift_with_zero_projection_ignores_the_embedding():
    """With time_emb_proj = 0, scale = shift = 0 and norm2(h) (1 + 0) + 0 = norm2(h): emb has no effect."""
    block = nn.ResnetBlock(4, 4, temb_channels=6, groups=2, time_embedding_norm="scale_shift", rng=0)
    block.time_emb_proj.weight.data[...] = 0
    block.time_emb_proj.bias.data[...] = 0
    x = np.random.default_rng(0).standard_normal((2, 4, 3, 3)).astype(np.float32)
    e1, e2 = (np.random.default_rng(s).standard_normal((2, 6)).astype(np.float32) for s in (1, 2))
    np.testing.assert_array_equal(block(Tensor(x), Tensor(e1)).numpy(), block(Tensor(x), Tensor(e2)).numpy())


def test_resnet_block_scale_shift_applies_one_plus_scale_and_shift():
    """Projection bias only: scale = s, shift = c, so the block equals the default block whose
    norm2 has gamma * (1 + s) and beta * (1 + s) + c."""
    C = 4
    ss = f64(nn.ResnetBlock(C, C, temb_channels=3, groups=2, time_embedding_norm="scale_shift", rng=0))
    ss.time_emb_proj.weight.data[...] = 0
    s, c = np.linspace(-0.5, 0.5, C), np.linspace(1.0, 2.0, C)
    ss.time_emb_proj.bias.data[...] = np.concatenate([s, c])
    plain = f64(nn.ResnetBlock(C, C, temb_channels=None, groups=2, rng=0))
    state = {k: v for k, v in ss.state_dict().items() if not k.startswith("time_emb_proj")}
    state["norm2.weight"] = state["norm2.weight"] * (1 + s)
    state["norm2.bias"] = state["norm2.bias"] * (1 + s) + c
    plain.load_state_dict(state)
    x = np.random.default_rng(0).standard_normal((2, C, 3, 3))
    emb = np.random.default_rng(1).standard_normal((2, 3))
    np.testing.assert_allclose(ss(Tensor(x), Tensor(emb)).numpy(), plain(Tensor(x)).numpy(), rtol=1e-12, atol=1e-12)


def test_downsample_padding_zero_pads_right_and_bottom_only():
    down = f64(nn.Downsample(2, padding=0, rng=0))
    x = np.random.default_rng(0).standard_normal((1, 2, 6, 6))
    padded = np.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1)))  # TensorFlow "SAME" for stride 2
    expected = naive_conv2d(padded, down.conv.weight.data, down.conv.bias.data, stride=2, padding=0)
    assert expected.shape == (1, 2, 3, 3)
    np.testing.assert_allclose(down(Tensor(x)).numpy(), expected, rtol=1e-12, atol=1e-12)


def test_upsample_is_nearest_repeat_then_conv():
    up = f64(nn.Upsample(2, rng=0))
    x = np.random.default_rng(0).standard_normal((1, 2, 3, 3))
    repeated = x.repeat(2, axis=2).repeat(2, axis=3)
    expected = naive_conv2d(repeated, up.conv.weight.data, up.conv.bias.data, stride=1, padding=1)
    np.testing.assert_allclose(up(Tensor(x)).numpy(), expected, rtol=1e-12, atol=1e-12)


def test_gradients_reach_every_parameter_of_a_resnet_block():
    block = nn.ResnetBlock(2, 4, temb_channels=3, groups=2, rng=0)
    x = Tensor(np.random.default_rng(0).standard_normal((2, 2, 4, 4)).astype(np.float32))
    emb = Tensor(np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32))
    (block(x, emb) ** 2).mean().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape and np.any(p.grad != 0), name


def test_module_is_reachable_as_refdiff_nn():
    assert rd.nn.Linear is nn.Linear
