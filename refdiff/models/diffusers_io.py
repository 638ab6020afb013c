"""Reading and writing diffusers UNet2DModel and AutoencoderKL folders without PyTorch.

A diffusers model folder holds config.json (the constructor arguments of UNet2DModel) and
diffusion_pytorch_model.safetensors (the state dict). refdiff's UNet names its parameters
exactly like UNet2DModel, so loading is two steps:
  1. translate the config into UNet arguments (unet_kwargs_from_diffusers_config), refusing
     every option refdiff does not implement with an error that names it;
  2. read the tensors with safetensors.numpy and call UNet.load_state_dict (strict).
Old checkpoints name the attention weights query/key/value/proj_attn; they are renamed to
to_q/to_k/to_v/to_out.0 as diffusers itself does when it loads them.

Class labels: diffusers' class embedding has num_class_embeds rows; refdiff's has
num_classes + 1 (the last row is the null label of classifier-free guidance), so a checkpoint
with num_class_embeds = K loads as num_classes = K - 1 and every label 0..K-1 stays valid.

AutoencoderKL folders (a pipeline's vae/) load the same way: refdiff.models.autoencoder's
AutoencoderKL takes diffusers' own argument names, so the translation
(autoencoder_kwargs_from_diffusers_config) only checks the values and refuses what refdiff
does not implement (other block types, act_fn other than silu, shift_factor, latents_mean /
latents_std), naming every such option at once.

This is plumbing: file formats and names, no math.
"""
import json
import os
import re

import numpy as np

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"

# UNet2DModel.__init__'s defaults (diffusers 0.42), used for keys a config.json leaves out
DIFFUSERS_DEFAULTS = dict(
    sample_size=None, in_channels=3, out_channels=3, center_input_sample=False, time_embedding_type="positional",
    time_embedding_dim=None, freq_shift=0, flip_sin_to_cos=True,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    mid_block_type="UNetMidBlock2D", up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(224, 448, 672, 896), layers_per_block=2, mid_block_scale_factor=1, downsample_padding=1,
    downsample_type="conv", upsample_type="conv", dropout=0.0, act_fn="silu", attention_head_dim=8,
    norm_num_groups=32, attn_norm_num_groups=None, norm_eps=1e-5, resnet_time_scale_shift="default",
    add_attention=True, class_embed_type=None, num_class_embeds=None, num_train_timesteps=None,
)
DOWN_TYPES = {"DownBlock2D": False, "AttnDownBlock2D": True}  # block type -> has attention
UP_TYPES = {"UpBlock2D": False, "AttnUpBlock2D": True}


def unet_kwargs_from_diffusers_config(config):
    """UNet(**kwargs) arguments for a UNet2DModel config dict; ValueError naming every unsupported option."""
    config = dict(config)
    class_name = config.get("_class_name", "UNet2DModel")
    unknown = sorted(k for k in config if not k.startswith("_") and k not in DIFFUSERS_DEFAULTS)
    c = {**DIFFUSERS_DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}
    problems = []
    if class_name != "UNet2DModel":
        problems.append(f"_class_name={class_name!r} (only 'UNet2DModel' is supported)")
    if unknown:
        problems.append(f"unknown options {unknown}")

    def require(key, allowed):
        if c[key] not in allowed:
            problems.append(f"{key}={c[key]!r} (supported: {', '.join(repr(a) for a in allowed)})")

    _check_values(c, problems)
    if problems and any("must" in p for p in problems):  # wrong types or ranges: nothing below is safe
        raise ValueError("unsupported diffusers UNet2DModel config: " + "; ".join(problems))
    require("time_embedding_type", ["positional"])
    require("mid_block_type", ["UNetMidBlock2D"])
    require("downsample_type", ["conv"])
    require("upsample_type", ["conv"])
    require("act_fn", ["silu", "swish"])
    require("resnet_time_scale_shift", ["default", "scale_shift"])
    require("class_embed_type", [None])
    require("downsample_padding", [0, 1])
    if c["norm_num_groups"] is None:
        problems.append("norm_num_groups=None (refdiff needs an explicit group count)")

    down, up = list(c["down_block_types"]), list(c["up_block_types"])
    bad_down = [b for b in down if b not in DOWN_TYPES]
    bad_up = [b for b in up if b not in UP_TYPES]
    if bad_down:
        problems.append(f"down_block_types {bad_down} (supported: {sorted(DOWN_TYPES)})")
    if bad_up:
        problems.append(f"up_block_types {bad_up} (supported: {sorted(UP_TYPES)})")
    channels = [int(ch) for ch in c["block_out_channels"]]
    L = len(channels)
    if len(down) != L or len(up) != L:
        problems.append(f"{len(down)} down_block_types and {len(up)} up_block_types for {L} block_out_channels")
    elif not bad_down and not bad_up:
        attn_down = [DOWN_TYPES[b] for b in down]
        attn_up = [UP_TYPES[b] for b in up]
        if attn_up != attn_down[::-1]:
            problems.append(f"up_block_types {up} do not mirror down_block_types {down} (refdiff's U-Net puts "
                            "attention on the same levels in both paths)")
    base = channels[0] if channels else 0
    if base <= 0 or any(ch % base for ch in channels):
        problems.append(f"block_out_channels={channels} (each must be a multiple of the first: "
                        "refdiff builds them as base_channels * channel_mults)")
    K = c["num_class_embeds"]
    if K is not None and int(K) < 2:
        problems.append(f"num_class_embeds={K} (need at least 2: the classes and refdiff's null label)")
    if problems:
        raise ValueError("unsupported diffusers UNet2DModel config: " + "; ".join(problems))

    sample_size = c["sample_size"]
    if isinstance(sample_size, (list, tuple)):
        if len(set(sample_size)) != 1:
            raise ValueError(f"unsupported diffusers UNet2DModel config: non-square sample_size={list(sample_size)}")
        sample_size = sample_size[0]
    if sample_size is None or int(sample_size) % 2 ** (L - 1):
        # only used to name the attention levels: any size with L distinct level sides will do
        sample_size = 2 ** (L - 1)
    sample_size = int(sample_size)
    sides = [sample_size // 2**i for i in range(L)]
    return dict(
        in_channels=int(c["in_channels"]), out_channels=int(c["out_channels"]), base_channels=base,
        channel_mults=[ch // base for ch in channels], num_res_blocks=int(c["layers_per_block"]),
        attention_resolutions=[side for side, b in zip(sides, down) if DOWN_TYPES[b]], sample_size=sample_size,
        dropout=float(c["dropout"]), num_classes=None if K is None else int(K) - 1,
        norm_groups=int(c["norm_num_groups"]),
        attention_head_dim=None if c["attention_head_dim"] is None else int(c["attention_head_dim"]),
        norm_eps=float(c["norm_eps"]), flip_sin_to_cos=bool(c["flip_sin_to_cos"]), freq_shift=float(c["freq_shift"]),
        time_embedding_dim=None if c["time_embedding_dim"] is None else int(c["time_embedding_dim"]),
        downsample_padding=int(c["downsample_padding"]), resnet_time_scale_shift=c["resnet_time_scale_shift"],
        mid_block_scale_factor=float(c["mid_block_scale_factor"]), mid_attention=bool(c["add_attention"]),
        attn_norm_groups=None if c["attn_norm_num_groups"] is None else int(c["attn_norm_num_groups"]),
        center_input_sample=bool(c["center_input_sample"]),
    )


def _check_values(c, problems):
    """Types and ranges of the config's values, with diffusers' key names: sizes are positive
    integers (not floats, bools or 0), flags are booleans, the reals finite. Appends to `problems`."""
    from ..checks import (check_bool, check_optional_positive_int, check_positive_int, check_positive_ints,
                          check_positive_real, check_probability, check_real)

    def collect(check, *args):
        try:
            check(*args)
        except (TypeError, ValueError) as e:
            problems.append(str(e))

    for key in ("in_channels", "out_channels", "layers_per_block"):
        collect(check_positive_int, c[key], key)
    for key in ("time_embedding_dim", "attention_head_dim", "attn_norm_num_groups", "norm_num_groups"):
        collect(check_optional_positive_int, c[key], key)
    collect(check_optional_positive_int, c["num_class_embeds"], "num_class_embeds")
    collect(check_positive_ints, c["block_out_channels"], "block_out_channels")
    sample_size = c["sample_size"]
    if isinstance(sample_size, (list, tuple)):
        collect(check_positive_ints, sample_size, "sample_size")
    else:
        collect(check_optional_positive_int, sample_size, "sample_size")
    for key in ("flip_sin_to_cos", "center_input_sample", "add_attention"):
        collect(check_bool, c[key], key)
    collect(check_probability, c["dropout"], "dropout", True)
    collect(check_positive_real, c["norm_eps"], "norm_eps")
    collect(check_positive_real, c["mid_block_scale_factor"], "mid_block_scale_factor")
    collect(check_real, c["freq_shift"], "freq_shift")
    for key in ("down_block_types", "up_block_types"):
        if isinstance(c[key], (str, bytes)) or not isinstance(c[key], (list, tuple)):
            problems.append(f"{key} must be a list of block type names, got {c[key]!r}")


def diffusers_config_from_unet_kwargs(config):
    """The UNet2DModel config.json dict for a refdiff UNet config (inverse of the above)."""
    L = len(config["channel_mults"])
    sides = [config["sample_size"] // 2**i for i in range(L)]
    attn = [side in config["attention_resolutions"] for side in sides]
    shift = config["freq_shift"]
    K = config["num_classes"]
    return {
        "_class_name": "UNet2DModel",
        "sample_size": config["sample_size"], "in_channels": config["in_channels"],
        "out_channels": config["out_channels"], "center_input_sample": config["center_input_sample"],
        "time_embedding_type": "positional", "time_embedding_dim": config["time_embedding_dim"],
        "freq_shift": int(shift) if float(shift).is_integer() else shift, "flip_sin_to_cos": config["flip_sin_to_cos"],
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "mid_block_type": "UNetMidBlock2D",
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in attn[::-1]],
        "block_out_channels": [config["base_channels"] * m for m in config["channel_mults"]],
        "layers_per_block": config["num_res_blocks"], "mid_block_scale_factor": config["mid_block_scale_factor"],
        "downsample_padding": config["downsample_padding"], "downsample_type": "conv", "upsample_type": "conv",
        "dropout": config["dropout"], "act_fn": "silu", "attention_head_dim": config["attention_head_dim"],
        "norm_num_groups": config["norm_groups"], "attn_norm_num_groups": config["attn_norm_groups"],
        "norm_eps": config["norm_eps"], "resnet_time_scale_shift": config["resnet_time_scale_shift"],
        "add_attention": config["mid_attention"], "class_embed_type": None,
        "num_class_embeds": None if K is None else K + 1, "num_train_timesteps": None,
    }


_DEPRECATED_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_DEPRECATED_KEY = re.compile(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")


def rename_deprecated_attention_keys(state_dict):
    """query/key/value/proj_attn -> to_q/to_k/to_v/to_out.0 (old diffusers attention blocks).

    Very old checkpoints stored these projections as 1x1 convolutions (C, C, 1, 1): squeezed to (C, C).
    """
    out = {}
    for key, value in state_dict.items():
        m = _DEPRECATED_KEY.match(key)
        if m:
            key = f"{m.group(1)}.{_DEPRECATED_ATTENTION_NAMES[m.group(2)]}.{m.group(3)}"
            if value.ndim == 4:
                value = value[:, :, 0, 0]
        out[key] = value
    return out


def resolve_folder(path, subfolder="unet", kind="UNet2DModel"):
    """The folder holding config.json: `path` itself, or `path`/`subfolder` for a saved pipeline."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path!r} is not a folder (expected a diffusers {kind} folder)")
    if os.path.exists(os.path.join(path, CONFIG_NAME)):
        return path
    if os.path.exists(os.path.join(path, subfolder, CONFIG_NAME)):
        return os.path.join(path, subfolder)
    raise FileNotFoundError(f"no {CONFIG_NAME} in {path!r} (nor in {path!r}/{subfolder})")


def read_config(folder):
    file = os.path.join(folder, CONFIG_NAME)
    try:
        with open(file) as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{file} must hold a JSON object, got {type(config).__name__}")
    return config


def read_weights(folder):
    """{name: float32 NumPy array} from the folder's safetensors file (never a pickle)."""
    from safetensors.numpy import load_file

    file = os.path.join(folder, WEIGHTS_NAME)
    if not os.path.exists(file):
        candidates = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
        if len(candidates) != 1:
            pickles = [f for f in os.listdir(folder) if f.endswith(".bin")]
            hint = (f" (found {pickles}: PyTorch pickle files are never loaded; convert them to safetensors)"
                    if pickles else f" (found {candidates})")
            raise FileNotFoundError(f"no {WEIGHTS_NAME} in {folder!r}{hint}")
        file = os.path.join(folder, candidates[0])
    try:
        tensors = load_file(file)
    except Exception as e:  # safetensors raises its own error types for corrupt or bf16 files
        raise ValueError(f"cannot read {file}: {e}") from None
    return {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}


def load_unet2d(path, backend="numpy"):
    """A refdiff UNet with the weights of the diffusers UNet2DModel folder at `path`."""
    from .unet import UNet

    return load_folder(resolve_folder(path), UNet, unet_kwargs_from_diffusers_config, backend)


def save_unet2d(model, path):
    """Write `model` as a diffusers UNet2DModel folder (config.json + safetensors weights)."""
    return save_folder(model, path, diffusers_config_from_unet_kwargs(model.config))


def load_folder(folder, model_class, kwargs_from_config, backend="numpy"):
    """A `model_class` built from the config.json of the diffusers folder `folder` (translated by
    kwargs_from_config; an error names the file) with its safetensors weights, strictly by name."""
    try:
        kwargs = kwargs_from_config(read_config(folder))
    except ValueError as e:
        if str(e).startswith(folder):
            raise
        raise ValueError(f"{os.path.join(folder, CONFIG_NAME)}: {e}") from None
    model = model_class(**kwargs)
    model.load_state_dict(rename_deprecated_attention_keys(read_weights(folder)), strict=True)
    if get_backend_name(backend) != "numpy":
        model.to(backend)
    return model


def save_folder(model, path, config):
    """Write a diffusers model folder: `config` as config.json, the model's weights as float32 safetensors."""
    from safetensors.numpy import save_file

    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, CONFIG_NAME), "w") as f:
        json.dump(config, f, indent=2)
    state = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in model.state_dict().items()}
    save_file(state, os.path.join(path, WEIGHTS_NAME))
    return path


def get_backend_name(backend):
    return backend if isinstance(backend, str) else backend.name


# ---- AutoencoderKL ---------------------------------------------------------------------------

# AutoencoderKL.__init__'s defaults (diffusers 0.42), used for keys a config.json leaves out
AUTOENCODER_KL_DEFAULTS = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
    block_out_channels=(64,), layers_per_block=1, act_fn="silu", latent_channels=4, norm_num_groups=32,
    sample_size=32, scaling_factor=0.18215, shift_factor=None, latents_mean=None, latents_std=None,
    force_upcast=True, use_quant_conv=True, use_post_quant_conv=True, mid_block_add_attention=True,
)


def autoencoder_kwargs_from_diffusers_config(config):
    """AutoencoderKL(**kwargs) arguments for a diffusers AutoencoderKL config dict; ValueError
    naming every unsupported option."""
    from ..checks import check_bool, check_positive_int, check_positive_ints, check_positive_real

    config = dict(config)
    class_name = config.get("_class_name", "AutoencoderKL")
    unknown = sorted(k for k in config if not k.startswith("_") and k not in AUTOENCODER_KL_DEFAULTS)
    c = {**AUTOENCODER_KL_DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}
    problems = []
    if class_name != "AutoencoderKL":
        problems.append(f"_class_name={class_name!r} (only 'AutoencoderKL' is supported)")
    if unknown:
        problems.append(f"unknown options {unknown}")

    def collect(check, *args):
        try:
            check(*args)
        except (TypeError, ValueError) as e:
            problems.append(str(e))

    for key in ("in_channels", "out_channels", "layers_per_block", "latent_channels", "norm_num_groups"):
        collect(check_positive_int, c[key], key)
    collect(check_positive_ints, c["block_out_channels"], "block_out_channels")
    if isinstance(c["sample_size"], (list, tuple)):
        collect(check_positive_ints, c["sample_size"], "sample_size")
    else:
        collect(check_positive_int, c["sample_size"], "sample_size")
    collect(check_positive_real, c["scaling_factor"], "scaling_factor")
    for key in ("force_upcast", "use_quant_conv", "use_post_quant_conv", "mid_block_add_attention"):
        collect(check_bool, c[key], key)
    for key in ("down_block_types", "up_block_types"):
        if isinstance(c[key], (str, bytes)) or not isinstance(c[key], (list, tuple)):
            problems.append(f"{key} must be a list of block type names, got {c[key]!r}")
    if problems:  # wrong types: nothing below is safe to read
        raise ValueError("unsupported diffusers AutoencoderKL config: " + "; ".join(problems))

    if c["act_fn"] not in ("silu", "swish"):
        problems.append(f"act_fn={c['act_fn']!r} (supported: 'silu', 'swish')")
    for key in ("shift_factor", "latents_mean", "latents_std"):
        if c[key] is not None:
            problems.append(f"{key}={c[key]!r} (supported: None; refdiff scales latents by scaling_factor only)")
    down, up = list(c["down_block_types"]), list(c["up_block_types"])
    bad_down = [b for b in down if b != "DownEncoderBlock2D"]
    bad_up = [b for b in up if b != "UpDecoderBlock2D"]
    if bad_down:
        problems.append(f"down_block_types {bad_down} (supported: ['DownEncoderBlock2D'])")
    if bad_up:
        problems.append(f"up_block_types {bad_up} (supported: ['UpDecoderBlock2D'])")
    L = len(c["block_out_channels"])
    if len(down) != L or len(up) != L:
        problems.append(f"{len(down)} down_block_types and {len(up)} up_block_types for {L} block_out_channels")
    if problems:
        raise ValueError("unsupported diffusers AutoencoderKL config: " + "; ".join(problems))
    sample_size = c["sample_size"]
    return dict(
        in_channels=int(c["in_channels"]), out_channels=int(c["out_channels"]),
        block_out_channels=[int(ch) for ch in c["block_out_channels"]], layers_per_block=int(c["layers_per_block"]),
        latent_channels=int(c["latent_channels"]), norm_num_groups=int(c["norm_num_groups"]),
        sample_size=[int(s) for s in sample_size] if isinstance(sample_size, (list, tuple)) else int(sample_size),
        scaling_factor=float(c["scaling_factor"]), use_quant_conv=bool(c["use_quant_conv"]),
        use_post_quant_conv=bool(c["use_post_quant_conv"]),
        mid_block_add_attention=bool(c["mid_block_add_attention"]), force_upcast=bool(c["force_upcast"]),
    )


def diffusers_config_from_autoencoder_kwargs(config):
    """The AutoencoderKL config.json dict for a refdiff AutoencoderKL config (inverse of the above)."""
    L = len(config["block_out_channels"])
    out = {"_class_name": "AutoencoderKL"}
    for key in AUTOENCODER_KL_DEFAULTS:
        out[key] = config.get(key, AUTOENCODER_KL_DEFAULTS[key])
    out.update(down_block_types=["DownEncoderBlock2D"] * L, up_block_types=["UpDecoderBlock2D"] * L, act_fn="silu",
               block_out_channels=list(config["block_out_channels"]))
    return out


def load_autoencoder_kl(path, backend="numpy"):
    """A refdiff AutoencoderKL with the weights of the diffusers AutoencoderKL folder at `path`
    (or at `path`/vae for a saved pipeline)."""
    from .autoencoder import AutoencoderKL

    folder = resolve_folder(path, subfolder="vae", kind="AutoencoderKL")
    return load_folder(folder, AutoencoderKL, autoencoder_kwargs_from_diffusers_config, backend)


def save_autoencoder_kl(model, path):
    """Write `model` as a diffusers AutoencoderKL folder (config.json + safetensors weights)."""
    return save_folder(model, path, diffusers_config_from_autoencoder_kwargs(model.config))
