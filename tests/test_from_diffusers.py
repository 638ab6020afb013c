"""Loading diffusers UNet2DModel folders: parity with diffusers' own numbers, and the loader's rules.

The golden files in tests/data were written by diffusers 0.42.1 / torch 2.13.0 CPU
(tests/data/make_tiny_unet.py): two tiny UNet2DModel folders with random weights and diffusers'
outputs for fixed inputs. No PyTorch is needed here.
"""
import json
import os

import numpy as np
import pytest
from safetensors.numpy import save_file

import refdiff as rd
from refdiff.models.diffusers_io import diffusers_config_from_unet_kwargs, unet_kwargs_from_diffusers_config
from refdiff.models.unet import UNet

DATA = os.path.join(os.path.dirname(__file__), "data")
GOLDEN = np.load(os.path.join(DATA, "tiny_ddpm_unet_io.npz"))
FOLDERS = ["tiny_ddpm_unet", "tiny_cond_unet"]


def run(model, name, dtype):
    x = GOLDEN[f"{name}/x"].astype(dtype)
    y = GOLDEN[f"{name}/y"] if f"{name}/y" in GOLDEN else None
    with rd.no_grad():
        return model(x, GOLDEN[f"{name}/t"], y).numpy()


@pytest.mark.parametrize("name", FOLDERS)
def test_float32_output_matches_diffusers(name):
    model = UNet.from_diffusers(os.path.join(DATA, name))
    out = run(model, name, np.float32)
    expected = GOLDEN[f"{name}/out_float32"]
    # Measured max |diff|: 2.2e-6 (ddpm) and 1.5e-6 (cond) for outputs of size ~1. Both sides
    # are float32 (unit roundoff 6e-8) through ~30 layers with different summation orders, and
    # diffusers rounds the embedding angle t * freq to float32 (error up to 999 * 6e-8 = 6e-5 rad)
    # where refdiff rounds once from float64; 2e-5 leaves 10x headroom.
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-5)


@pytest.mark.parametrize("name", FOLDERS)
def test_float64_output_matches_diffusers_float64(name):
    model = UNet.from_diffusers(os.path.join(DATA, name)).to(dtype=np.float64)
    out = run(model, name, np.float64)
    assert out.dtype == np.float64
    # Measured max |diff|: 2.0e-6 and 6.0e-7. Everything is float64 on both sides except the
    # sinusoidal embedding, which diffusers computes in float32 (see above): that difference
    # alone is ~1e-6 after the network; 1e-5 bounds it.
    np.testing.assert_allclose(out, GOLDEN[f"{name}/out_float64"], rtol=0, atol=1e-5)


def test_ddpm_port_config_translates_to_the_expected_arguments():
    with open(os.path.join(DATA, "tiny_ddpm_unet", "config.json")) as f:
        kwargs = unet_kwargs_from_diffusers_config(json.load(f))
    assert kwargs["base_channels"] == 16 and kwargs["channel_mults"] == [1, 2]
    assert kwargs["attention_resolutions"] == [8]  # AttnDownBlock2D on level 1 of sample_size 16
    assert kwargs["flip_sin_to_cos"] is False and kwargs["freq_shift"] == 1.0
    assert kwargs["downsample_padding"] == 0 and kwargs["norm_eps"] == 1e-6 and kwargs["num_classes"] is None


def test_class_embeds_load_as_num_classes_minus_one_plus_null_label():
    model = UNet.from_diffusers(os.path.join(DATA, "tiny_cond_unet"))
    assert model.config["num_classes"] == 3 and model.class_embedding.weight.shape[0] == 4


def hand_made_folder(tmp_path, config, seed=0):
    """A diffusers folder written by hand: our own config.json and weights drawn per key."""
    kwargs = unet_kwargs_from_diffusers_config(config)
    shapes = {k: v.shape for k, v in UNet(**kwargs).state_dict().items()}
    rng = np.random.default_rng(seed)
    weights = {k: (0.2 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}
    for k in weights:
        if k.endswith("norm.weight") or "norm1.weight" in k or "norm2.weight" in k or "norm_out.weight" in k:
            weights[k] += 1.0
    tmp_path.mkdir(parents=True, exist_ok=True)
    with open(tmp_path / "config.json", "w") as f:
        json.dump(config, f)
    save_file(weights, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    return kwargs, weights


HAND_CONFIG = {
    "_class_name": "UNet2DModel", "_diffusers_version": "0.42.1", "sample_size": 8, "in_channels": 2,
    "out_channels": 1, "block_out_channels": [8, 16], "layers_per_block": 1,
    "down_block_types": ["AttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "AttnUpBlock2D"],
    "norm_num_groups": 4, "attention_head_dim": 4, "num_class_embeds": 3, "freq_shift": 1, "flip_sin_to_cos": False,
}


def test_from_diffusers_equals_load_state_dict_with_the_same_weights(tmp_path):
    kwargs, weights = hand_made_folder(tmp_path, HAND_CONFIG)
    loaded = UNet.from_diffusers(tmp_path)
    by_hand = UNet(**kwargs, seed=7)
    by_hand.load_state_dict(weights)
    x = np.random.default_rng(0).standard_normal((2, 2, 8, 8)).astype(np.float32)
    t, y = np.array([3, 800]), np.array([0, 2])
    with rd.no_grad():
        np.testing.assert_array_equal(loaded(x, t, y).numpy(), by_hand(x, t, y).numpy())


def test_a_saved_pipeline_folder_loads_from_its_unet_subfolder(tmp_path):
    hand_made_folder(tmp_path / "unet", HAND_CONFIG)
    assert UNet.from_diffusers(tmp_path).config["num_classes"] == 2


def test_old_attention_names_query_key_value_proj_attn_load_like_the_new_ones(tmp_path):
    kwargs, weights = hand_made_folder(tmp_path / "new", HAND_CONFIG)
    renames = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    old = {}
    for key, value in weights.items():
        for new, deprecated in renames.items():
            if ".attentions." in key and new in key:
                key = key.replace(new, deprecated)
        old[key] = value
    assert any(".proj_attn." in k for k in old)
    (tmp_path / "old").mkdir()
    with open(tmp_path / "old" / "config.json", "w") as f:
        json.dump(HAND_CONFIG, f)
    save_file(old, str(tmp_path / "old" / "diffusion_pytorch_model.safetensors"))
    a, b = UNet.from_diffusers(tmp_path / "new"), UNet.from_diffusers(tmp_path / "old")
    for key, value in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[key], value)


def test_save_then_load_round_trips_config_and_weights(tmp_path):
    model = UNet(in_channels=1, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
                 sample_size=8, norm_groups=4, num_classes=2, resnet_time_scale_shift="scale_shift", seed=3)
    model.save_diffusers(tmp_path)
    loaded = UNet.from_diffusers(tmp_path)
    assert {k: v for k, v in loaded.config.items() if k != "seed"} == {
        k: v for k, v in model.config.items() if k != "seed"}
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key], value)


def test_config_translation_is_invertible():
    kwargs = unet_kwargs_from_diffusers_config(HAND_CONFIG)
    again = unet_kwargs_from_diffusers_config(diffusers_config_from_unet_kwargs(UNet(**kwargs).config))
    assert again == kwargs


@pytest.mark.parametrize("option, value, named", [
    ("time_embedding_type", "fourier", "time_embedding_type='fourier'"),
    ("class_embed_type", "timestep", "class_embed_type='timestep'"),
    ("downsample_type", "resnet", "downsample_type='resnet'"),
    ("act_fn", "gelu", "act_fn='gelu'"),
    ("resnet_time_scale_shift", "spatial", "resnet_time_scale_shift='spatial'"),
    ("down_block_types", ["CrossAttnDownBlock2D", "DownBlock2D"], "down_block_types ['CrossAttnDownBlock2D']"),
    ("up_block_types", ["AttnUpBlock2D", "AttnUpBlock2D"], "do not mirror"),
    ("block_out_channels", [8, 12], "block_out_channels=[8, 12]"),
    ("cross_attention_dim", 32, "unknown options ['cross_attention_dim']"),
])
def test_unsupported_options_are_refused_by_name(option, value, named):
    with pytest.raises(ValueError) as err:
        unet_kwargs_from_diffusers_config({**HAND_CONFIG, option: value})
    assert named in str(err.value)


def test_every_unsupported_option_is_named_at_once():
    config = {**HAND_CONFIG, "time_embedding_type": "fourier", "act_fn": "mish"}
    with pytest.raises(ValueError, match="time_embedding_type='fourier'.*act_fn='mish'"):
        unet_kwargs_from_diffusers_config(config)


def test_missing_weights_and_pickle_only_folders_are_refused(tmp_path):
    with open(tmp_path / "config.json", "w") as f:
        json.dump(HAND_CONFIG, f)
    (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"\x80")
    with pytest.raises(FileNotFoundError, match="pickle files are never loaded"):
        UNet.from_diffusers(tmp_path)


def test_corrupt_weights_file_is_refused_with_its_name(tmp_path):
    with open(tmp_path / "config.json", "w") as f:
        json.dump(HAND_CONFIG, f)
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read .*diffusion_pytorch_model.safetensors"):
        UNet.from_diffusers(tmp_path)


def test_weights_of_another_architecture_are_refused_naming_the_keys(tmp_path):
    hand_made_folder(tmp_path, HAND_CONFIG)
    with open(tmp_path / "config.json", "w") as f:
        json.dump({**HAND_CONFIG, "layers_per_block": 2}, f)
    with pytest.raises(ValueError, match=r"missing keys .*down_blocks\.0\.resnets\.1\.conv1\.weight"):
        UNet.from_diffusers(tmp_path)


def test_a_folder_without_config_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        UNet.from_diffusers(tmp_path)


# The config.json of google/ddpm-cifar10-32 (Ho et al.'s CIFAR-10 model as ported to diffusers).
DDPM_CIFAR10_CONFIG = {
    "_class_name": "UNet2DModel", "_diffusers_version": "0.0.4", "act_fn": "silu", "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256], "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"], "downsample_padding": 0,
    "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3, "layers_per_block": 2, "mid_block_scale_factor": 1,
    "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3, "sample_size": 32,
    "time_embedding_type": "positional", "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}


def test_ddpm_cifar10_config_builds_the_papers_35_7_million_parameter_network():
    """Ho et al. 2020, sec. 4: "Our CIFAR10 model has 35.7 million parameters"; diffusers' port
    has exactly 35,746,307, so every layer shape agrees (the checkpoint loads strictly by name)."""
    model = UNet(**unet_kwargs_from_diffusers_config(DDPM_CIFAR10_CONFIG))
    assert model.num_parameters() == 35_746_307
    assert model.config["attention_resolutions"] == [16]
