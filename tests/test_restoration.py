"""Restoration models and nodes: tiny random-weight Real-ESRGAN / RestoreFormer / RetinaFace files are
written in their projects' original layouts into a temporary models folder and go through the same
probe -> scan -> load -> run path as a user's downloads."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from nodes.core.face_detection import RetinaFaceDetector, decode, priors
from nodes.core.faces import FFHQ_TEMPLATE, Face, align_face, paste_face, similarity_transform
from nodes.core.restoration import image_to_tensor, restore_face, upscale_image
from nodes.core.tiling import run_tiled, tile_starts
from services.engine.events import NODE_PROGRESS
from services.models.face_detectors import DETECTOR_DIR, DETECTOR_FILES, load_detector, write_random_detector
from services.models.restoration_files import (load_restoration_model, probe_restoration_file, write_tiny_face_restorer,
                                               write_tiny_upscaler)
from services.engine.session import COMPLETED, FAILED


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, height // 4), max(1, width // 4), 3), dtype=np.uint8)
    return Image.fromarray(small, "RGB").resize((width, height), Image.Resampling.BICUBIC)


class EvilPayload:
    """Unpickling this would create a folder: the proof that pickled code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


# --------------------------------------------------------------------------------------------
# Probing and loading files


@pytest.mark.parametrize("scale, name", [(4, "x4.pth"), (2, "x2.pth"), (4, "x4.safetensors")])
def test_real_esrgan_files_are_detected_and_loaded(tmp_path, scale, name):
    path = write_tiny_upscaler(tmp_path / name, scale=scale)
    assert probe_restoration_file(path) == ("upscaler", "ESRGAN")
    model = load_restoration_model(path)
    assert model.scale == scale and model.dtype == torch.float32 and not model.model.training
    out = model(torch.rand(1, 3, 12, 16))
    assert out.shape == (1, 3, 12 * scale, 16 * scale)


def test_release_layout_is_wrapped_in_params_ema(tmp_path):
    path = write_tiny_upscaler(tmp_path / "x4.pth")
    raw = torch.load(path, weights_only=True)
    assert list(raw) == ["params_ema"] and "body.0.rdb1.conv1.weight" in raw["params_ema"]


def test_restoreformer_file_is_a_face_restorer(tmp_path):
    path = write_tiny_face_restorer(tmp_path / "RestoreFormer.pth")
    assert probe_restoration_file(path) == ("face_restore", "RestoreFormer")


def test_gfpgan_layout_is_detected_and_a_misfit_is_explained(tmp_path):
    from spandrel.architectures.GFPGAN import GFPGAN

    # the GFPGAN v1.x "clean" key layout at a toy size: detected, but not the size spandrel builds
    small = GFPGAN(out_size=32, num_style_feat=16, channel_multiplier=1, narrow=0.0625, num_mlp=2)
    path = tmp_path / "GFPGANv1.4.pth"
    torch.save({"params_ema": small.state_dict()}, path)
    assert probe_restoration_file(path) == ("face_restore", "GFPGAN")
    with pytest.raises(ValueError, match=r"GFPGANv1.4.pth: looks like GFPGAN but its tensors do not fit that network \(.*Missing key"):
        load_restoration_model(path)


def test_pickle_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save({"params_ema": {"conv_first.weight": torch.zeros(1)}, "x": EvilPayload(str(marker))}, path)
    for read in (probe_restoration_file, load_restoration_model):
        with pytest.raises(ValueError, match="evil.pth: refused, the file needs pickled code"):
            read(path)
    assert not marker.exists()


def test_unrecognised_files_say_why(tmp_path):
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"encoder.weight": torch.zeros(4, 4)}, str(foreign))
    with pytest.raises(ValueError, match="foreign.safetensors: not a model spandrel recognises"):
        probe_restoration_file(foreign)
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="broken.pth: not a readable PyTorch file"):
        probe_restoration_file(broken)
    with pytest.raises(ValueError, match="unsupported file type '.onnx'"):
        probe_restoration_file(tmp_path / "model.onnx")


# --------------------------------------------------------------------------------------------
# Tiling


def test_tile_starts_cover_the_axis_with_the_last_tile_flush():
    assert tile_starts(50, 64, 8) == [0]
    assert tile_starts(100, 32, 8) == [0, 24, 48, 68]
    with pytest.raises(ValueError):
        tile_starts(100, 32, 32)


def _pointwise_x2(image: torch.Tensor) -> torch.Tensor:
    """A 1x1-conv + pixel-shuffle upscaler: each output pixel depends on one input pixel only."""
    weight = torch.linspace(-1, 1, 12 * 3).reshape(12, 3, 1, 1)
    return torch.nn.functional.pixel_shuffle(torch.nn.functional.conv2d(image, weight), 2)


def test_tiles_blend_back_into_the_untiled_result():
    image = torch.rand(1, 3, 45, 70)
    calls = []
    tiled = run_tiled(_pointwise_x2, image, 2, tile=24, overlap=6, on_tile=lambda done, total: calls.append((done, total)))
    # every tile computes the same values where they overlap, so blending and assembly must be exact
    assert tiled.shape == (1, 3, 90, 140)
    assert torch.allclose(tiled, _pointwise_x2(image), atol=1e-6)
    assert calls == [(n, 12) for n in range(1, 13)]  # 3 rows x 4 columns of tiles, one callback each


def test_an_exception_from_the_tile_callback_stops_the_run():
    calls = []

    def model(tile: torch.Tensor) -> torch.Tensor:
        calls.append(tile.shape)
        return _pointwise_x2(tile)

    def cancel(done: int, total: int) -> None:
        raise RuntimeError("canceled")  # what context.progress does once the session is canceled

    with pytest.raises(RuntimeError, match="canceled"):
        run_tiled(model, torch.rand(1, 3, 64, 64), 2, tile=32, overlap=4, on_tile=cancel)
    assert len(calls) == 1  # stopped after the first of 9 tiles


def test_an_image_within_one_tile_is_exactly_the_untiled_result(tmp_path):
    model = load_restoration_model(write_tiny_upscaler(tmp_path / "x4.pth"))
    image = torch.rand(1, 3, 20, 28)
    assert torch.equal(run_tiled(model, image, 4, tile=32, overlap=8), model(image))


def test_real_esrgan_tiled_is_close_to_untiled(tmp_path):
    model = load_restoration_model(write_tiny_upscaler(tmp_path / "x2.pth", scale=2))
    image = image_to_tensor(noise_image(56, 48), 3, torch.device("cpu"), torch.float32)
    tiled = run_tiled(model, image, 2, tile=32, overlap=12)  # 2 x 2 tiles
    whole = model(image)
    assert tiled.shape == whole.shape == (1, 3, 96, 112)
    assert (tiled - whole).abs().mean() < 0.01  # ~20 conv layers see past the overlap only a little


def test_upscale_image_keeps_alpha_and_grey(tmp_path):
    model = load_restoration_model(write_tiny_upscaler(tmp_path / "x2.pth", scale=2))
    rgba = noise_image(20, 12).convert("RGBA")
    rgba.putalpha(128)
    out = upscale_image(model, rgba, 16, 4)
    assert out.mode == "RGBA" and out.size == (40, 24) and out.getchannel("A").getextrema() == (128, 128)
    assert upscale_image(model, rgba.convert("L"), 16, 4).mode == "L"


# --------------------------------------------------------------------------------------------
# Faces: alignment, paste-back, detection


def test_similarity_transform_recovers_rotation_scale_and_shift():
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -5.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    target = FFHQ_TEMPLATE @ rotation.T + shift
    matrix = similarity_transform(FFHQ_TEMPLATE, target)
    assert np.allclose(matrix[:, :2], rotation) and np.allclose(matrix[:, 2], shift)


def test_align_then_paste_back_restores_the_face_region():
    image = noise_image(300, 260, seed=3)
    landmarks = (FFHQ_TEMPLATE - 256) * 0.4 + np.array([150.0, 130.0])  # a ~200 px face in the middle
    face = Face((50, 30, 250, 230), 0.99, landmarks)
    crop, matrix = align_face(image, face)
    assert crop.size == (512, 512)
    # pasting the untouched crop back changes the image only by resampling
    pasted = np.asarray(paste_face(image, crop, matrix), dtype=np.float32)
    original = np.asarray(image, dtype=np.float32)
    assert np.abs(pasted - original).mean() < 4
    # pasting a black face darkens the face and leaves the corners alone
    dark = np.asarray(paste_face(image, Image.new("RGB", (512, 512)), matrix), dtype=np.float32)
    assert dark[130, 150].max() == 0 and np.array_equal(dark[:10, :10], original[:10, :10])


def test_decode_finds_the_one_confident_anchor():
    height, width = 64, 96
    anchors = priors(height, width)
    scores = torch.zeros(len(anchors), 2)
    scores[:, 0] = 1
    pick = 7
    scores[pick] = torch.tensor([0.01, 0.99])
    faces = decode(torch.zeros(len(anchors), 4), scores, torch.zeros(len(anchors), 10), height, width)
    assert len(faces) == 1 and faces[0].score == pytest.approx(0.99)
    cx, cy, w, h = (anchors[pick] * torch.tensor([width, height, width, height])).tolist()
    assert faces[0].box == pytest.approx((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), abs=1e-4)
    assert np.allclose(faces[0].landmarks, [[cx, cy]] * 5)


@pytest.fixture(scope="module")
def detector_file(tmp_path_factory):
    """One random RetinaFace file (~100 MB) for the whole module."""
    return write_random_detector(tmp_path_factory.mktemp("detector") / DETECTOR_FILES["retinaface_resnet50"])


def test_detector_loads_facexlib_layout_and_runs(detector_file):
    path = detector_file
    assert {"body.layer4.2.conv3.weight", "fpn.merge1.0.weight", "ssh3.conv7x7_3.1.running_var",
            "ClassHead.0.conv1x1.bias", "LandmarkHead.2.conv1x1.weight"} <= set(torch.load(path, weights_only=True))
    assert load_detector(path).detect(noise_image(64, 48)) == []  # its class heads say "no face"


# --------------------------------------------------------------------------------------------
# Nodes, through the model manager


@pytest.fixture
def models_dir(user_root, tmp_path, monkeypatch):  # after user_root, which clears INVOKE_NODES_MODELS
    folder = tmp_path / "models"
    write_tiny_upscaler(folder / "upscalers" / "tiny-x2.pth", scale=2)
    write_tiny_face_restorer(folder / "faces" / "tiny-restoreformer.pth")
    monkeypatch.setenv("INVOKE_NODES_MODELS", str(folder))
    return folder


def model_id(services, kind: str) -> str:
    (info,) = services.models.list(kind)
    return info.id


def run_node(invoker, node: dict, width: int, height: int, progress: list | None = None):
    """noise_image -> node; returns (the node's result row, the input image read back from the store).
    progress: receives the node's (step, total) progress reports."""
    if progress is not None:
        def record(event) -> None:
            if event.type == NODE_PROGRESS and event.node_id == "2":
                progress.append((event.data["step"], event.data["total"]))

        invoker.services.events.subscribe(record)
    session = invoker.create_session()
    session.add_node({"type": "noise_image", "width": width, "height": height, "scale": 4, "seed": 7})
    session.add_node(node, [(-1, "image", "image")])
    invoker.invoke(session)
    assert invoker.wait(session.id, 60)
    source = session.results["1"][0].outputs["image"]["image_name"]
    return session.results["2"][0], invoker.services.images.get(source)


def test_upscale_node_end_to_end(models_dir, services, invoker):
    upscaler = model_id(services, "upscaler")
    progress: list = []
    row, source = run_node(invoker, {"type": "upscale", "model": upscaler, "tile_size": 32, "tile_overlap": 8}, 40, 36,
                           progress)
    assert row.state == COMPLETED, row.error
    assert progress == [(1, 4), (2, 4), (3, 4), (4, 4)]  # one report per tile: 2 x 2 tiles
    assert (row.outputs["width"], row.outputs["height"]) == (80, 72)
    stored = services.images.get(row.outputs["image"]["image_name"])  # read back from the PNG
    expected = upscale_image(services.models.load(upscaler), source, 32, 8)  # the manager's copy: same device
    assert np.array_equal(np.asarray(stored), np.asarray(expected))  # deterministic to the pixel
    assert np.asarray(stored).std() > 2  # a real picture, not a flat fill


def test_upscale_node_target_scale_and_bad_overlap(models_dir, services, invoker):
    upscaler = model_id(services, "upscaler")
    row, _ = run_node(invoker, {"type": "upscale", "model": upscaler, "scale": 3, "tile_size": 64}, 20, 16)
    assert row.state == COMPLETED, row.error
    assert (row.outputs["width"], row.outputs["height"]) == (60, 48)
    row, _ = run_node(invoker, {"type": "upscale", "model": upscaler, "tile_size": 32, "tile_overlap": 17}, 20, 16)
    assert row.state == FAILED and "field 'tile_overlap'" in row.error and "half the tile size" in row.error


def test_upscale_node_refuses_a_face_model(models_dir, services, invoker):
    row, _ = run_node(invoker, {"type": "upscale", "model": model_id(services, "face_restore")}, 16, 16)
    assert row.state == FAILED and "field 'model'" in row.error and "is a face restore model, not an upscaler model" in row.error


def test_face_restore_aligned_512_without_detector(models_dir, services, invoker):
    restorer = model_id(services, "face_restore")
    row, source = run_node(invoker, {"type": "face_restore", "model": restorer, "aligned": True, "fidelity": 0.25},
                           512, 512)
    assert row.state == COMPLETED, row.error
    assert (row.outputs["width"], row.outputs["height"]) == (512, 512)
    stored = np.asarray(services.images.get(row.outputs["image"]["image_name"]), dtype=np.int16)
    assert stored.shape == (512, 512, 3)
    assert np.abs(stored - np.asarray(source, dtype=np.int16)).mean() > 1  # the face was restored


def test_face_restore_names_the_missing_detector(models_dir, services, invoker):
    row, _ = run_node(invoker, {"type": "face_restore", "model": model_id(services, "face_restore"),
                                "detector": "retinaface_resnet50"}, 64, 64)
    expected = models_dir / DETECTOR_DIR / DETECTOR_FILES["retinaface_resnet50"]
    assert row.state == FAILED and "field 'detector'" in row.error
    assert str(expected) in row.error and "aligned=true" in row.error


def install_detector(models_dir, detector_file):
    target = models_dir / DETECTOR_DIR / DETECTOR_FILES["retinaface_resnet50"]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(detector_file)


def test_face_restore_with_a_detector_that_finds_no_face(models_dir, services, invoker, detector_file):
    install_detector(models_dir, detector_file)
    row, source = run_node(invoker, {"type": "face_restore", "model": model_id(services, "face_restore")}, 64, 48)
    assert row.state == COMPLETED, row.error
    stored = services.images.get(row.outputs["image"]["image_name"])
    assert np.array_equal(np.asarray(stored), np.asarray(source))  # nothing detected: image unchanged


def test_face_restore_pastes_a_detected_face_back(models_dir, services, invoker, monkeypatch, detector_file):
    install_detector(models_dir, detector_file)
    # random detector weights find nothing real: stand in one face in the middle of the picture
    landmarks = (FFHQ_TEMPLATE - 256) * 0.15 + np.array([60.0, 50.0])
    face = Face((30.0, 20.0, 90.0, 80.0), 0.99, landmarks)
    monkeypatch.setattr(RetinaFaceDetector, "detect", lambda self, image: [face])
    row, source = run_node(invoker, {"type": "face_restore", "model": model_id(services, "face_restore")}, 120, 100)
    assert row.state == COMPLETED, row.error
    stored = np.asarray(services.images.get(row.outputs["image"]["image_name"]), dtype=np.int16)
    original = np.asarray(source, dtype=np.int16)
    assert stored.shape == original.shape
    assert np.abs(stored[45:55, 55:65] - original[45:55, 55:65]).mean() > 1  # the face changed
    # the crop maps back onto about x 22..98, y 12..88: outside it the picture is untouched
    assert np.array_equal(stored[:10], original[:10]) and np.array_equal(stored[:, 101:], original[:, 101:])


def test_scan_lists_restoration_models_and_reports_pickle_files(models_dir, services):
    torch.save({"x": EvilPayload(str(models_dir / "ran"))}, models_dir / "evil.pth")
    services.models.rescan()
    kinds = {m.kind: m.architecture for m in services.models.list() if m.kind in ("upscaler", "face_restore")}
    assert kinds == {"upscaler": "ESRGAN", "face_restore": "RestoreFormer"}
    (bad,) = [u for u in services.models.unrecognized() if u.path.endswith("evil.pth")]
    assert "pickled code" in bad.reason and not (models_dir / "ran").exists()


# --------------------------------------------------------------------------------------------
# GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_on_cuda_matches_cpu(tmp_path):
    path = write_tiny_upscaler(tmp_path / "x4.pth")
    gpu = load_restoration_model(path, "cuda")
    assert gpu.dtype == torch.float16 and gpu.device.type == "cuda"
    image = noise_image(96, 80)
    on_gpu = np.asarray(upscale_image(gpu, image, 48, 8), dtype=np.int16)
    on_cpu = np.asarray(upscale_image(load_restoration_model(path), image, 48, 8), dtype=np.int16)
    assert np.abs(on_gpu - on_cpu).mean() < 1.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_release_size_gfpgan_restores_a_face_on_cuda(tmp_path):
    from spandrel.architectures.GFPGAN import GFPGAN

    with torch.device("cuda"):
        network = GFPGAN(out_size=512, num_style_feat=512, channel_multiplier=2, num_mlp=8, input_is_latent=True,
                         different_w=True, narrow=1, sft_half=True)  # GFPGAN v1.3/v1.4's configuration
    path = tmp_path / "GFPGANv1.4.pth"
    torch.save({"params_ema": network.state_dict()}, path)
    assert probe_restoration_file(path) == ("face_restore", "GFPGAN")
    model = load_restoration_model(path, "cuda")
    assert model.dtype == torch.bfloat16  # GFPGAN has no fp16 support in spandrel
    face = noise_image(512, 512)
    first, second = restore_face(model, face), restore_face(model, face)
    assert first.size == (512, 512) and np.array_equal(np.asarray(first), np.asarray(second))
