"""Tiny random-weight models written as real files, so every node can run without downloads.

`invoke-nodes make-demo-models DIR` writes them; the tests build theirs with the same functions.
Random weights make noise images: these exist to try the nodes and to test loading, not to draw.

The SD 1.x models have the real architecture shape (UNet, VAE, CLIP text encoder with the real
CLIP tokenizer) at a tiny width.  A single file is written in the original SD key layout with a
"<name>.config/" diffusers config folder beside it, because its sizes are not SD 1.5's own.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from services.models.configs import ASSETS, write_clip_tokenizer

TINY_TEXT_WIDTH = 32


def _seeded(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def tiny_unet(seed: int = 0, in_channels: int = 4, cross_attention_dim: int = TINY_TEXT_WIDTH) -> Any:
    from diffusers import UNet2DConditionModel

    _seeded(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=32)


def tiny_vae(seed: int = 0) -> Any:
    """Four levels like SD's VAE, so latents are 1/8 of the image size."""
    from diffusers import AutoencoderKL

    _seeded(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=8, sample_size=64, scaling_factor=0.18215)


def tiny_text_encoder(seed: int = 0) -> Any:
    """CLIP-L's layout (quick_gelu, 77 positions, the full 49408-token vocabulary) at width 32."""
    from transformers import CLIPTextConfig, CLIPTextModel

    _seeded(seed)
    config = CLIPTextConfig(vocab_size=49408, hidden_size=TINY_TEXT_WIDTH, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                            projection_dim=TINY_TEXT_WIDTH, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    return CLIPTextModel(config).eval()


def tiny_sd1_modules(seed: int = 0, inpaint: bool = False) -> dict[str, Any]:
    return {"unet": tiny_unet(seed, in_channels=9 if inpaint else 4), "vae": tiny_vae(seed + 1),
            "text_encoder": tiny_text_encoder(seed + 2)}


def _write_configs(folder: Path, modules: dict[str, Any]) -> None:
    """Everything of a diffusers SD 1.x folder except the weights: model_index, configs, tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ASSETS / "sd1" / "model_index.json", folder / "model_index.json")
    shutil.copytree(ASSETS / "sd1" / "scheduler", folder / "scheduler", dirs_exist_ok=True)
    modules["unet"].save_config(folder / "unet")
    modules["vae"].save_config(folder / "vae")
    modules["text_encoder"].config.save_pretrained(folder / "text_encoder")
    write_clip_tokenizer(folder / "tokenizer")


def write_tiny_sd1_diffusers(folder: Path | str, seed: int = 0, inpaint: bool = False) -> Path:
    """A diffusers pipeline folder (safetensors weights) of a tiny SD 1.x model."""
    folder = Path(folder)
    modules = tiny_sd1_modules(seed, inpaint)
    _write_configs(folder, modules)
    for name, module in modules.items():
        module.save_pretrained(folder / name, safe_serialization=True)
    return folder


def sidecar_folder(path: Path) -> Path:
    return path.with_name(path.stem + ".config")


def write_tiny_sd1_single_file(path: Path | str, seed: int = 0) -> Path:
    """One file in the original SD key layout (.safetensors, or a tensors-only .ckpt) plus its config folder."""
    import torch

    from services.models.checkpoints import sd1_to_ldm

    path = Path(path)
    modules = tiny_sd1_modules(seed)
    state = sd1_to_ldm(**modules)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path), metadata={"format": "pt"})
    else:
        torch.save({"state_dict": state, "global_step": 0}, path)
    _write_configs(sidecar_folder(path), modules)
    return path


def write_tiny_sdxl_diffusers(folder: Path | str, seed: int = 20) -> Path:
    """A diffusers SDXL pipeline folder: two text encoders (the second with a projection) and
    a UNet with SDXL's size/crop conditioning, all tiny."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    folder = Path(folder)
    text_encoder = tiny_text_encoder(seed)
    _seeded(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(tiny_text_encoder(seed + 1).config)
    time_embed_dim = 8  # SDXL adds 6 size/crop numbers, each embedded this wide, to the pooled text
    _seeded(seed + 2)
    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=2 * TINY_TEXT_WIDTH, attention_head_dim=8, norm_num_groups=32, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=6 * time_embed_dim + TINY_TEXT_WIDTH)
    tokenizers = []
    for name, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
        write_clip_tokenizer(folder / "staging" / name, pad_token=pad)
        tokenizers.append(CLIPTokenizer.from_pretrained(folder / "staging" / name))
    shutil.rmtree(folder / "staging")
    scheduler = EulerDiscreteScheduler.from_pretrained(ASSETS / "sdxl" / "scheduler")
    StableDiffusionXLPipeline(vae=tiny_vae(seed + 3), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                              tokenizer=tokenizers[0], tokenizer_2=tokenizers[1], unet=unet,
                              scheduler=scheduler).save_pretrained(folder, safe_serialization=True)
    return folder


def write_tiny_sdxl_refiner_diffusers(folder: Path | str, seed: int = 25) -> Path:
    """A diffusers SDXL refiner folder: only the second text encoder, and a UNet that embeds
    (original size, crop, aesthetic score) beside the pooled text, all tiny."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    folder = Path(folder)
    _seeded(seed)
    text_encoder_2 = CLIPTextModelWithProjection(tiny_text_encoder(seed).config)
    time_embed_dim = 8
    _seeded(seed + 1)
    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TINY_TEXT_WIDTH, attention_head_dim=8, norm_num_groups=32, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=5 * time_embed_dim + TINY_TEXT_WIDTH)
    write_clip_tokenizer(folder / "staging", pad_token="!")
    tokenizer_2 = CLIPTokenizer.from_pretrained(folder / "staging")
    shutil.rmtree(folder / "staging")
    scheduler = EulerDiscreteScheduler.from_pretrained(ASSETS / "sdxl" / "scheduler")
    StableDiffusionXLImg2ImgPipeline(vae=tiny_vae(seed + 2), text_encoder=None, text_encoder_2=text_encoder_2, tokenizer=None,
                                     tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
                                     requires_aesthetics_score=True).save_pretrained(folder, safe_serialization=True)
    return folder


def write_tiny_vae_folder(folder: Path | str, seed: int = 10) -> Path:
    """A diffusers AutoencoderKL folder (config.json + weights)."""
    folder = Path(folder)
    tiny_vae(seed).save_pretrained(folder, safe_serialization=True)
    return folder


# --------------------------------------------------------------------------------------------
# LoRAs and embeddings for the tiny models

LORA_UNET_LAYERS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
                    "attn2.to_out.0", "proj_in", "resnets.0.conv1")  # the last: a LoCon convolution layer
LORA_TEXT_LAYERS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")


def _lora_layers(model: Any, suffixes: tuple[str, ...]) -> dict[str, Any]:
    import torch

    return {name: m for name, m in model.named_modules()
            if name.endswith(suffixes) and isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}


def tiny_lora_state(modules: dict[str, Any], layout: str, rank: int = 4, seed: int = 30, ldm_names: bool = False) -> dict[str, Any]:
    """A random LoRA over the attention (and one convolution) layers of `modules` ("unet",
    "text_encoder", "text_encoder_2"), in the kohya (alpha = rank / 2) or the PEFT layout (no alpha).
    ldm_names: kohya's SDXL naming of UNet modules (original LDM names)."""
    import torch

    from services.models.checkpoints import UNET_PREFIX, unet_to_ldm

    generator = torch.Generator().manual_seed(seed)
    state: dict[str, Any] = {}
    kohya_prefix = {"unet": "lora_unet_", "text_encoder": "lora_te1_" if "text_encoder_2" in modules else "lora_te_",
                    "text_encoder_2": "lora_te2_"}
    for component, model in modules.items():
        layers = _lora_layers(model, LORA_UNET_LAYERS if component == "unet" else LORA_TEXT_LAYERS)
        names = {name: name for name in layers}
        if component == "unet" and ldm_names:
            ldm = unet_to_ldm({f"{n}.weight": n for n in layers}, model.config)
            names = {n: k[len(UNET_PREFIX):].rsplit(".", 1)[0] for k, n in ldm.items()}
        for name, module in layers.items():
            weight = module.weight
            if weight.ndim == 4:  # LoCon: a k x k down convolution and a 1 x 1 up one
                down = torch.randn(rank, weight.shape[1], *weight.shape[2:], generator=generator) * 0.1
                up = torch.randn(weight.shape[0], rank, 1, 1, generator=generator) * 0.1
            else:
                down = torch.randn(rank, weight.shape[1], generator=generator) * 0.1
                up = torch.randn(weight.shape[0], rank, generator=generator) * 0.1
            if layout == "kohya":
                text_name = names[name] if component == "unet" or name.startswith("text_model.") else "text_model." + name
                key = kohya_prefix[component] + text_name.replace(".", "_")
                state.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                              f"{key}.alpha": torch.tensor(rank / 2)})
            else:
                key = f"{component}.{name}"
                state.update({f"{key}.lora_A.weight": down, f"{key}.lora_B.weight": up})
    return state


def write_tiny_lora(path: Path | str, modules: dict[str, Any], layout: str = "kohya", **options: Any) -> Path:
    """A LoRA file for the tiny models (see tiny_lora_state); `modules` fixes the layer shapes."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tiny_lora_state(modules, layout, **options).items()}, str(path))
    return path


def write_tiny_embedding(path: Path | str, width: int = TINY_TEXT_WIDTH, vectors: int = 2, seed: int = 40,
                         sdxl: bool = False) -> Path:
    """A textual-inversion embedding: .pt (A1111), .bin (diffusers, one vector), .safetensors
    (emb_params, or clip_l + clip_g for SDXL)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    data = torch.randn(vectors, width, generator=generator)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        tensors = {"clip_l": data, "clip_g": torch.randn(vectors, width, generator=generator)} if sdxl else {"emb_params": data}
        save_file(tensors, str(path))
    elif path.suffix == ".bin":
        torch.save({f"<{path.stem}>": data[0]}, path)
    else:
        torch.save({"string_to_param": {"*": data}, "name": path.stem, "step": 0}, path)
    return path


def write_demo_models(target: Path) -> list[Path]:
    sd1 = tiny_sd1_modules()  # the layer shapes of tiny-sd1, for its LoRA
    written = [
        write_tiny_sd1_diffusers(target / "tiny-sd1"),
        write_tiny_sd1_single_file(target / "tiny-sd1-single.safetensors", seed=1),
        write_tiny_vae_folder(target / "tiny-vae"),
        write_tiny_lora(target / "loras" / "tiny-lora.safetensors", {"unet": sd1["unet"], "text_encoder": sd1["text_encoder"]}),
        write_tiny_embedding(target / "embeddings" / "tiny-style.pt"),
        *write_demo_control_models(target),
    ]
    try:
        import spandrel  # noqa: F401 - restoration models need it (and it needs torchvision)
    except Exception as exc:  # noqa: BLE001 - e.g. the CPU desktop build, which has no torchvision
        print(f"skipping the upscaler and face restorer: restoration nodes are not available here ({exc})")
        return written
    from services.models.restoration_files import write_tiny_face_restorer, write_tiny_upscaler

    return [*written, write_tiny_upscaler(target / "tiny-upscaler-x4.pth"),
            write_tiny_face_restorer(target / "tiny-face-restorer.pth")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="invoke-nodes make-demo-models",
                                     description="Write tiny random-weight models to try every node without downloads.")
    parser.add_argument("dir", type=Path, help="folder to write into (e.g. your models folder)")
    args = parser.parse_args(argv)
    written = write_demo_models(args.dir.expanduser())
    for path in written:
        print(f"wrote {path}")
    print("\nThese models have RANDOM weights: generation and restoration nodes run with them, "
          "but their images are noise.\nPut real model files in your models folder for real images.")
    index = args.dir.expanduser() / "DEMO-MODELS.json"
    index.write_text(json.dumps({"random_weights": True, "files": [p.name for p in written]}, indent=2))
    return 0


# --------------------------------------------------------------------------------------------
# Control models for the tiny models: ControlNet, T2I-Adapter, IP-Adapter and its CLIP vision encoder

TINY_IMAGE_WIDTH = 32  # the tiny CLIP vision encoder's projection width


def tiny_controlnet(unet: Any = None, seed: int = 50) -> Any:
    """A ControlNet made from a UNet (as ControlNetModel.from_unet) whose zero convolutions get random
    weights: trained ControlNets' are far from zero, and zeros would make every strength the same."""
    import torch
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(unet if unet is not None else tiny_unet())
    generator = torch.Generator().manual_seed(seed)
    zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                  controlnet.controlnet_cond_embedding.conv_out]
    with torch.no_grad():
        for conv in zero_convs:
            for parameter in conv.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return controlnet.eval()


def write_tiny_controlnet(path: Path | str, controlnet: Any, layout: str = "diffusers") -> Path:
    """layout: "diffusers" (a folder), "ldm" (one file in the original control_model.* layout) or
    "diffusers-file" (one file of diffusers names); single files get a "<stem>.config/" beside them."""
    from safetensors.torch import save_file

    from services.models.checkpoints import controlnet_to_ldm

    path = Path(path)
    if layout == "diffusers":
        controlnet.save_pretrained(path, safe_serialization=True)
        return path
    state = controlnet.state_dict()
    if layout == "ldm":
        state = controlnet_to_ldm(state, controlnet.config)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(path))
    controlnet.save_config(sidecar_folder(path))
    return path


def tiny_t2i_adapter(seed: int = 60, channels: tuple[int, ...] = (32, 64)) -> Any:
    """A full T2I-Adapter whose features fit the tiny SD 1.x UNet's down blocks (random weights)."""
    from diffusers import T2IAdapter

    _seeded(seed)
    return T2IAdapter(in_channels=3, channels=list(channels), num_res_blocks=1, downscale_factor=8,
                      adapter_type="full_adapter").eval()


def write_tiny_t2i_adapter(path: Path | str, adapter: Any, layout: str = "diffusers") -> Path:
    """layout: "diffusers" (a folder), "diffusers-file" or "original" (TencentARC's key names) single files."""
    import re

    from safetensors.torch import save_file

    path = Path(path)
    if layout == "diffusers":
        adapter.save_pretrained(path, safe_serialization=True)
        return path
    state = {k: v.detach().contiguous() for k, v in adapter.state_dict().items()}
    if layout == "original":  # body.<level>.resnets.<block> -> body.<level * blocks + block>, no "adapter." prefix
        blocks = adapter.config.num_res_blocks
        renamed = {}
        for key, value in state.items():
            key = key[len("adapter."):]
            m = re.match(r"body\.(\d+)\.(resnets\.(\d+)\.)?(.*)$", key)
            if m:
                index = int(m.group(1)) * blocks + int(m.group(3) or 0)
                key = f"body.{index}.{m.group(4)}"
            renamed[key] = value
        state = renamed
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def tiny_clip_vision(seed: int = 70) -> Any:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    _seeded(seed)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=TINY_IMAGE_WIDTH)
    return CLIPVisionModelWithProjection(config).eval()


def write_tiny_clip_vision(folder: Path | str, seed: int = 70) -> Path:
    folder = Path(folder)
    tiny_clip_vision(seed).save_pretrained(folder, safe_serialization=True)
    return folder


def tiny_ip_adapter_state(unet: Any, image_width: int = TINY_IMAGE_WIDTH, seed: int = 80) -> dict[str, dict[str, Any]]:
    """An IP-Adapter for `unet` as h94/IP-Adapter lays it out: image_proj (CLIP embedding -> 4 tokens)
    and ip_adapter.<n>.to_k_ip / to_v_ip for each cross-attention layer (n = 1, 3, 5, ... in the
    order of the UNet's attention processors)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    context = unet.config.cross_attention_dim
    image_proj = {"proj.weight": torch.randn(4 * context, image_width, generator=generator) * 0.1,
                  "proj.bias": torch.zeros(4 * context), "norm.weight": torch.ones(context), "norm.bias": torch.zeros(context)}
    ip_adapter = {}
    for n, name in enumerate(k for k in unet.attn_processors if k.endswith("attn2.processor")):
        width = unet.get_submodule(name.rsplit(".", 1)[0]).to_k.out_features
        for part in ("to_k_ip", "to_v_ip"):
            ip_adapter[f"{2 * n + 1}.{part}.weight"] = torch.randn(width, context, generator=generator) * 0.1
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def write_tiny_ip_adapter(path: Path | str, unet: Any, seed: int = 80) -> Path:
    """.safetensors with flat image_proj.* / ip_adapter.* keys, or a .bin holding the two dicts."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = tiny_ip_adapter_state(unet, seed=seed)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({f"{part}.{k}": v.contiguous() for part, tensors in state.items() for k, v in tensors.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def write_demo_control_models(target: Path) -> list[Path]:
    """A ControlNet and a T2I-Adapter (original single-file layouts, as users download them) and an
    IP-Adapter with its image encoder, all for tiny-sd1."""
    unet = tiny_unet()  # tiny-sd1's UNet
    return [write_tiny_controlnet(target / "controlnet" / "tiny-controlnet.safetensors", tiny_controlnet(unet), "ldm"),
            write_tiny_t2i_adapter(target / "t2i_adapter" / "tiny-t2i-adapter.safetensors", tiny_t2i_adapter(), "original"),
            write_tiny_ip_adapter(target / "ip_adapter" / "tiny-ip-adapter.safetensors", unet),
            write_tiny_clip_vision(target / "clip_vision" / "tiny-image-encoder")]
