"""The model manager: scanning real files, ids, safe loading, single-file layout, shipped configs, cache."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from services.config import Settings
from services.models.manager import LocalModelManager, ModelCache, ModelNotFoundError

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("torch_one_thread")

class Evil:
    """Unpickling this creates a file: proof that the loader ran pickled code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def models_root(tmp_path_factory) -> Path:
    import torch

    from services.models import demo as demo_models

    root = tmp_path_factory.mktemp("models")
    demo_models.write_tiny_sd1_diffusers(root / "sd" / "tiny-sd1")
    demo_models.write_tiny_sd1_single_file(root / "tiny-single.safetensors", seed=1)
    demo_models.write_tiny_sd1_single_file(root / "tiny-ckpt.ckpt", seed=1)
    demo_models.write_tiny_vae_folder(root / "vae" / "tiny-vae")
    torch.save({"state_dict": {"x": torch.zeros(1)}, "callback": Evil(root / "PWNED")}, root / "evil.ckpt")
    (root / "notes.gguf").write_bytes(b"GGUF")
    (root / "README.md").write_text("not a model, not reported")
    from safetensors.torch import save_file

    save_file({"linear.weight": torch.zeros(2, 2)}, str(root / "random-tensors.safetensors"))
    return root


def _settings(tmp_path: Path, models: Path, **overrides) -> Settings:
    settings = Settings(data_dir=tmp_path / "data", config_dir=tmp_path / "config", models_dir=models,
                        outputs_dir=tmp_path / "out", sessions_dir=tmp_path / "sessions", plugins_dir=tmp_path / "plugins",
                        device="cpu")
    for key, value in overrides.items():
        setattr(settings, key, value)
    return settings


@pytest.fixture(scope="module")
def manager(models_root, tmp_path_factory) -> LocalModelManager:
    return LocalModelManager(_settings(tmp_path_factory.mktemp("user"), models_root))


def test_importing_the_manager_and_scanning_safetensors_does_not_import_torch(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    header = json.dumps({"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight":
                         {"dtype": "F16", "shape": [320, 768], "data_offsets": [0, 0]}}).encode()
    (folder / "sd15.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    code = (
        "import sys; from pathlib import Path; import services.models.manager as m, nodes.generation, services.models.demo;"
        "from services.config import Settings; s = Settings.load(); s.models_dir = Path(sys.argv[1]);"
        "found = m.LocalModelManager(s).list();"
        "assert [(i.id, i.kind, i.base) for i in found] == [('sd15', 'main', 'sd1')], found;"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    result = subprocess.run([sys.executable, "-c", code, str(folder)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_scan_finds_every_format_with_stable_ids(manager, models_root, tmp_path):
    found = {m.id: m for m in manager.list()}
    assert {i: (m.kind, m.base, m.format) for i, m in found.items()} == {
        "sd-tiny-sd1": ("main", "sd1", "diffusers"),
        "tiny-single": ("main", "sd1", "safetensors"),
        "tiny-ckpt": ("main", "sd1", "ckpt"),
        "vae-tiny-vae": ("vae", None, "diffusers"),
    }
    assert found["tiny-single"].config_path.endswith("tiny-single.config")
    assert all(m.size_bytes > 10_000 for m in found.values())
    assert [m.id for m in manager.list("vae")] == ["vae-tiny-vae"]
    # the same files give the same ids from another manager (ids are saved in graphs)
    again = LocalModelManager(_settings(tmp_path, models_root))
    assert sorted(m.id for m in again.list()) == sorted(found)


def test_unrecognised_files_are_listed_with_a_reason(manager, models_root):
    reasons = {Path(u.path).name: u.reason for u in manager.unrecognized()}
    assert set(reasons) == {"evil.ckpt", "notes.gguf", "random-tensors.safetensors"}
    assert "not a model file" in reasons["notes.gguf"]
    assert "not a Stable Diffusion checkpoint" in reasons["random-tensors.safetensors"]
    assert "pickled code" in reasons["evil.ckpt"] and "refused" in reasons["evil.ckpt"]


def test_pickle_code_checkpoint_is_refused_and_never_run(manager, models_root):
    from services.models.checkpoints import UnsafeCheckpointError, load_pickle_state_dict
    from services.models.loading import load_from_disk
    from services.models.manager import ModelInfo

    with pytest.raises(UnsafeCheckpointError, match="pickled code"):
        load_pickle_state_dict(models_root / "evil.ckpt")
    # the diffusers loading path refuses it too (as if the scan had been fooled)
    info = ModelInfo("evil", "evil", "main", "sd1", "ckpt", str(models_root / "evil.ckpt"), 1,
                     config_path=str(models_root / "tiny-ckpt.config"))
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        load_from_disk(info, "float32", manager.cache_dir)
    assert not (models_root / "PWNED").exists()


def test_single_files_load_to_the_weights_they_were_written_from(manager):
    from services.models.demo import tiny_sd1_modules

    reference = tiny_sd1_modules(seed=1)
    for model_id in ("tiny-single", "tiny-ckpt"):
        pipe = manager.load(model_id)
        for name, module in reference.items():
            expected, loaded = module.state_dict(), getattr(pipe, name).state_dict()
            assert set(expected) == set(loaded), (model_id, name)
            assert all(expected[k].equal(loaded[k]) for k in expected), (model_id, name)


def test_checkpoint_classification_from_key_shapes():
    from services.models.checkpoints import classify_sd_checkpoint

    def attn(dim: int) -> dict:
        return {"model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (640, dim),
                "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}

    assert classify_sd_checkpoint(attn(768)).base == "sd1"
    assert classify_sd_checkpoint(attn(1024)).base == "sd2"
    assert classify_sd_checkpoint(attn(2048)).base == "sdxl"
    inpaint = {**attn(768), "model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3)}
    assert classify_sd_checkpoint(inpaint).variant == "inpaint"
    with pytest.raises(ValueError, match="1280"):
        classify_sd_checkpoint(attn(1280))  # an SDXL refiner
    vae = {"encoder.conv_in.weight": (128, 3, 3, 3), "decoder.conv_out.weight": (3, 128, 3, 3),
           "quant_conv.weight": (8, 8, 1, 1), "post_quant_conv.weight": (4, 4, 1, 1)}
    assert classify_sd_checkpoint(vae).kind == "vae"
    vq = {**vae, "quant_conv.weight": (256, 256, 1, 1), "post_quant_conv.weight": (256, 256, 1, 1),
          "quantize.embedding.weight": (1024, 256)}
    assert classify_sd_checkpoint(vq) is None  # RestoreFormer-style VQ models are not SD VAEs


def test_unknown_id_names_the_known_ones(manager):
    with pytest.raises(ModelNotFoundError, match="no main model with id 'nope'.*tiny-single"):
        manager.get("nope", kind="main")
    with pytest.raises(ModelNotFoundError, match="no vae model with id 'tiny-single'"):
        manager.get("tiny-single", kind="vae")


def test_ram_cache_evicts_least_recently_used_over_budget(models_root, tmp_path):
    settings = _settings(tmp_path, models_root, ram_cache_gb=0.0)  # nothing fits: only the last used stays
    small = LocalModelManager(settings)
    vae = small.load("vae-tiny-vae")
    assert small.load("vae-tiny-vae") is vae  # a hit while it is the only one
    small.load("tiny-single")
    assert small.cache_stats().ids_in_ram == ["tiny-single"]
    assert small.load("vae-tiny-vae") is not vae  # evicted, so read again from disk
    roomy = LocalModelManager(_settings(tmp_path, models_root, ram_cache_gb=1.0))
    first = roomy.load("vae-tiny-vae")
    roomy.load("tiny-single")
    assert roomy.load("vae-tiny-vae") is first
    assert roomy.cache_stats().ids_in_ram == ["tiny-single", "vae-tiny-vae"]  # least recently used first


def test_model_cache_moves_lru_to_ram_over_vram_budget_and_keeps_pinned():
    moves: list[tuple[str, bool]] = []

    def move(model, to_gpu):
        moves.append((model, to_gpu))
        return model

    cache = ModelCache(ram_budget=250, vram_budget=250, move=move)
    for key in ("a", "b", "c"):
        cache.put(key, key, 100)
        cache.to_gpu(key)
    # c needed room: a (least recently used) went back to RAM
    assert cache.stats().ids_on_gpu == ["b", "c"] and cache.stats().ids_in_ram == ["a"]
    cache.get("b").pins += 1  # in use
    cache.get("a")
    cache.to_gpu("a")  # evicts c (b is pinned even though it is older)
    assert sorted(cache.stats().ids_on_gpu) == ["a", "b"] and cache.stats().ids_in_ram == ["c"]
    cache.put("d", "d", 200)  # RAM over budget: c (unpinned, on the CPU) is dropped
    assert cache.get("c") is None and cache.stats().ids_in_ram == ["d"]
    assert ("a", False) in moves and ("c", False) in moves


def test_shipped_configs_build_real_architectures_offline(tmp_path):
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTokenizer

    from services.models.configs import config_folder

    expected_unet = {"sd1": 859_520_964, "sd2": 865_910_724, "sdxl": 2_567_463_684}
    for base, params in expected_unet.items():
        folder = config_folder(base, tmp_path)
        index = json.loads((folder / "model_index.json").read_text())
        parts = [k for k, v in index.items() if isinstance(v, list) and v[0] is not None]
        assert all((folder / part).is_dir() for part in parts), base
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        assert sum(p.numel() for p in unet.parameters()) == params, base
        assert sum(p.numel() for p in vae.parameters()) == 83_653_863, base
    tokenizer = CLIPTokenizer.from_pretrained(config_folder("sd1", tmp_path) / "tokenizer")
    # ids as OpenAI CLIP / open_clip tokenize them
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert CLIPTokenizer.from_pretrained(config_folder("sdxl", tmp_path) / "tokenizer_2").pad_token == "!"


def test_make_demo_models_command_writes_loadable_models(tmp_path, capsys):
    from services.models.demo import main

    assert main([str(tmp_path / "demo")]) == 0
    assert "RANDOM weights" in capsys.readouterr().out
    found = LocalModelManager(_settings(tmp_path, tmp_path / "demo"))
    kinds = sorted((m.id, m.kind) for m in found.list())
    assert kinds == [("clip-vision-tiny-image-encoder", "clip_vision"), ("controlnet-tiny-controlnet", "controlnet"),
                     ("embeddings-tiny-style", "embedding"), ("ip-adapter-tiny-ip-adapter", "ip_adapter"),
                     ("loras-tiny-lora", "lora"), ("t2i-adapter-tiny-t2i-adapter", "t2i_adapter"),
                     ("tiny-face-restorer", "face_restore"), ("tiny-sd1", "main"), ("tiny-sd1-single", "main"),
                     ("tiny-upscaler-x4", "upscaler"), ("tiny-vae", "vae")], found.unrecognized()
    upscaler = found.load("tiny-upscaler-x4")
    assert upscaler.scale == 4


@pytest.mark.gpu
def test_models_load_in_half_precision_on_the_gpu(models_root, tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    gpu = LocalModelManager(_settings(tmp_path, models_root, device="cuda"))
    pipe = gpu.load("tiny-single")
    assert pipe.unet.device.type == "cuda" and pipe.unet.dtype == torch.float16
    assert gpu.cache_stats().ids_on_gpu == ["tiny-single"]


def test_a_single_file_vae_named_for_sdxl_gets_sdxls_latent_scale(tmp_path):
    """SD 1.x/2.x and SDXL VAEs share one architecture, so the file's name picks the config (as InvokeAI's
    probe does): an SDXL model's latents (scaled by 0.13025) decode through `sdxl_vae.safetensors` to
    the pixels the same weights give SD 1.x latents (0.18215) under any other name."""
    import os

    import numpy as np
    import torch
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    from nodes.core.diffusion import decode_latents
    from services.models.checkpoints import vae_to_ldm
    from services.models.configs import config_folder

    models = tmp_path / "models"
    models.mkdir()
    config = AutoencoderKL.load_config(config_folder("sd1", tmp_path / "configs") / "vae")
    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(config)  # full size: the shipped configs are what a single file is read with
    save_file({k: v.half().contiguous() for k, v in vae_to_ldm(vae.state_dict(), config).items()},
              str(models / "sdxl_vae.safetensors"))
    os.link(models / "sdxl_vae.safetensors", models / "vae-ft-mse.safetensors")  # the same weights, another name
    manager = LocalModelManager(_settings(tmp_path, models))
    assert sorted(m.id for m in manager.list("vae")) == ["sdxl-vae", "vae-ft-mse"]
    sdxl, sd1 = manager.load("sdxl-vae"), manager.load("vae-ft-mse")
    assert (sdxl.config.scaling_factor, sdxl.config.force_upcast) == (0.13025, True)
    assert sd1.config.scaling_factor == 0.18215
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    drawn = [np.asarray(decode_latents(v, latents * v.config.scaling_factor)[0], dtype=int) for v in (sdxl, sd1)]
    assert np.abs(drawn[0] - drawn[1]).max() <= 1 and drawn[0].std() > 5
