"""The shipped BlazeFace detector on real photos (scikit-image's sample data): faces found, their
eyes, nose and mouth where a person marked them, nothing found where there is no face, and
face_restore changing the face region only."""
from __future__ import annotations

import typing

import numpy as np
import pytest
from PIL import Image

from skimage import data as skimage_data

from nodes.core.blazeface import GraphOp, TfliteGraph, TfliteNet, _same_padding, five_points
from nodes.core.faces import FFHQ_TEMPLATE, align_face
from nodes.restoration import FaceRestoreInvocation
from services.config import Settings
from services.container import IN_PROCESS, WORKER, Services
from services.engine.events import NODE_PROGRESS
from services.engine.session import COMPLETED
from services.invoker import Invoker
from services.models.face_detectors import BLAZEFACE_DIR, BLAZEFACE_FILES, DETECTORS, load_blazeface
from services.models.restoration_files import write_tiny_face_restorer
from services.models.tflite_graph import read_tflite

# Marked by eye on a 6x enlargement of data.astronaut() (512x512), in pixels: the pupils (image
# left, image right), the nose tip, the mouth centre (between the lips), the mouth corners.
ASTRONAUT = np.array([[203, 101], [245, 103], [223, 127], [223, 146]], dtype=np.float64)
ASTRONAUT_MOUTH_CORNERS = np.array([[203, 140], [243, 142]], dtype=np.float64)
TOLERANCE = 5.0  # px: an eighth of the 42 px between the eyes
CORNER_TOLERANCE = 10.0  # derived from BlazeFace's mouth centre (the lips', lower in a smile) and the eye line

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def detector():
    return load_blazeface()


def astronaut() -> Image.Image:
    return Image.fromarray(skimage_data.astronaut())


def assert_landmarks(found: np.ndarray, expected: np.ndarray, corners: np.ndarray | None = None,
                     tolerance: float = TOLERANCE) -> None:
    """found: the five FFHQ points; expected: eyes, nose, mouth centre (the corners' midpoint)."""
    measured = np.vstack([found[:3], found[3:].mean(0)])
    errors = np.linalg.norm(measured - expected, axis=1)
    assert errors.max() <= tolerance, errors
    if corners is not None:
        assert np.linalg.norm(found[3:] - corners, axis=1).max() <= CORNER_TOLERANCE, found[3:]


def test_finds_the_astronauts_face_and_its_landmarks(detector):
    (face,) = detector.detect(astronaut())
    assert face.score > 0.9
    x0, y0, x1, y1 = face.box
    assert 165 <= x0 <= 185 and 65 <= y0 <= 90 and 265 <= x1 <= 285 and 165 <= y1 <= 190  # forehead to chin
    assert_landmarks(face.landmarks, ASTRONAUT, ASTRONAUT_MOUTH_CORNERS)


def test_mirrored_face_keeps_the_image_left_eye_first(detector):
    (face,) = detector.detect(astronaut().transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    mirrored = np.column_stack([511 - ASTRONAUT[:, 0], ASTRONAUT[:, 1]])[[1, 0, 2, 3]]
    assert_landmarks(face.landmarks, mirrored)


@pytest.mark.parametrize("angle", [-25, 25])
def test_rotated_face(detector, angle):
    (face,) = detector.detect(astronaut().rotate(angle, resample=Image.Resampling.BICUBIC))
    theta = np.radians(angle)  # PIL turns the picture counter-clockwise about its centre
    rotation = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
    expected = (ASTRONAUT - 256) @ rotation.T + 256
    assert_landmarks(face.landmarks, expected)


def test_no_face_in_the_coffee_photo(detector):
    assert detector.detect(Image.fromarray(skimage_data.coffee())) == []


def test_lfw_faces_are_found_and_non_faces_are_not(detector):
    """lfw_subset: 100 face crops then 100 non-face crops, 25x25 grey; enlarged to a small photo."""
    crops = skimage_data.lfw_subset()

    def found(crop: np.ndarray) -> bool:
        image = Image.fromarray((crop * 255).astype(np.uint8)).convert("RGB").resize((100, 100), Image.Resampling.BICUBIC)
        return bool(detector.detect(image))

    faces = sum(found(c) for c in crops[:100])
    false = sum(found(c) for c in crops[100:])
    assert faces >= 95 and false <= 2, (faces, false)  # measured: 97 and 0


def test_several_faces_of_different_sizes(detector):
    """Four astronauts in a 1640x700 picture, faces of 117 down to 47 px (2.9% of the width)."""
    group = Image.new("RGB", (1640, 700), (70, 90, 110))
    sizes, lefts, top = (600, 400, 300, 240), (20, 640, 1060, 1380), 40
    for size, left in zip(sizes, lefts):
        group.paste(astronaut().resize((size, size), Image.Resampling.LANCZOS), (left, top))
    faces = sorted(detector.detect(group), key=lambda f: f.box[0])
    assert len(faces) == 4
    for face, size, left in zip(faces, sizes, lefts):
        scale = size / 512
        assert_landmarks(face.landmarks, ASTRONAUT * scale + (left, top), tolerance=TOLERANCE * max(scale, 0.7))


def test_five_points_put_the_mouth_corners_at_the_template_proportion():
    eyes_nose_mouth = np.array([[0.0, 0.0], [10.0, 0.0], [5.0, 5.0], [5.0, 10.0]])
    corners = five_points(np.vstack([eyes_nose_mouth, [[-3.0, 2.0], [13.0, 2.0]]]))[3:]
    template_ratio = np.linalg.norm(FFHQ_TEMPLATE[4] - FFHQ_TEMPLATE[3]) / np.linalg.norm(FFHQ_TEMPLATE[1] - FFHQ_TEMPLATE[0])
    assert np.allclose(corners, [[5 - 5 * template_ratio, 10], [5 + 5 * template_ratio, 10]])


# --------------------------------------------------------------------------------------------
# The .tflite reader and the operators' TensorFlow semantics


def test_tflite_files_read_into_graphs_of_known_operators():
    for name, file in BLAZEFACE_FILES.items():
        graph = read_tflite(BLAZEFACE_DIR / file)
        assert graph.input_size == {"short_range": 128, "full_range": 192}[name]
        assert {op.kind for op in graph.ops} <= TfliteNet.SUPPORTED  # DEQUANTIZE folded into float32 weights
        assert all(c.dtype in (np.float32, np.int32) for c in graph.constants.values())


def test_a_file_that_is_not_tflite_is_refused(tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="model.tflite: not a TensorFlow Lite file"):
        read_tflite(path)


def test_same_padding_puts_the_odd_pixel_after():
    assert _same_padding(128, 5, 2) == (1, 2)  # TensorFlow: 2 before would shift the stride-2 grid
    assert _same_padding(64, 3, 1) == (1, 1)
    assert _same_padding(64, 2, 2) == (0, 0)


def test_a_graph_with_operators_not_implemented_is_refused():
    graph = TfliteGraph([GraphOp("SOFTMAX", (0,), (1,))], {}, 0, (1,), 128)
    with pytest.raises(ValueError, match="other.tflite: unsupported TFLite operators SOFTMAX"):
        TfliteNet(graph, "other.tflite")
    resize = GraphOp("RESIZE_BILINEAR", (0, 1), (2,), {"align_corners": True, "half_pixel_centers": False})
    with pytest.raises(ValueError, match="other.tflite: only half-pixel-centre bilinear resizing"):
        TfliteNet(TfliteGraph([resize], {1: np.array([4, 4], np.int32)}, 0, (2,), 128), "other.tflite")


# --------------------------------------------------------------------------------------------
# face_restore on the astronaut


def test_detector_choices_match_the_node_field():
    assert typing.get_args(FaceRestoreInvocation.model_fields["detector"].annotation) == DETECTORS


def test_sessions_saved_before_blazeface_get_the_auto_detector():
    old = {"model": "gfpgan", "detector": "retinaface_resnet50", "max_faces": 2}
    assert FaceRestoreInvocation.migrate(old, "1.0.0") == {"model": "gfpgan", "detector": "auto", "max_faces": 2}
    with pytest.raises(ValueError, match="saved with version 0.9.0"):
        FaceRestoreInvocation.migrate(old, "0.9.0")


@pytest.fixture(scope="module", params=[IN_PROCESS, WORKER])
def invoker(tmp_path_factory, request):
    """Both executors: face_restore runs in the AI worker process in the app."""
    root = tmp_path_factory.mktemp("faces")
    models = root / "models"
    write_tiny_face_restorer(models / "faces" / "tiny-restoreformer.pth")
    settings = Settings(data_dir=root, config_dir=root / "config", models_dir=models, outputs_dir=root / "outputs",
                        sessions_dir=root / "sessions", plugins_dir=root / "plugins", device="cpu")
    invoker = Invoker(Services.local(settings, executor=request.param))
    yield invoker
    invoker.shutdown()


def restore(invoker, image: Image.Image, **fields):
    services = invoker.services
    (model,) = services.models.list("face_restore")
    messages: list[str] = []
    session = invoker.create_session()
    token = services.events.subscribe(lambda e: messages.append(e.data.get("message", ""))
                                      if e.type == NODE_PROGRESS and e.node_id == "2" else None, session.id)
    session.add_node({"type": "load_image", "image_name": services.images.save(image).image_name})
    session.add_node({"type": "face_restore", "model": model.id, **fields}, [(-1, "image", "image")])
    invoker.invoke(session)
    assert invoker.wait(session.id, 120)
    services.events.unsubscribe(token)
    row = session.results["2"][0]
    assert row.state == COMPLETED, row.error
    return row.outputs, np.asarray(services.images.get(row.outputs["image"]["image_name"]), dtype=np.int16), messages


def test_face_restore_changes_only_the_astronauts_face(invoker, detector):
    source = astronaut()
    outputs, result, messages = restore(invoker, source)
    original = np.asarray(source, dtype=np.int16)
    assert result.shape == original.shape and (outputs["width"], outputs["height"]) == source.size
    (box,) = outputs["faces"]
    assert 165 <= box["x"] <= 185 and 65 <= box["y"] <= 90 and 90 <= box["width"] <= 110 and box["score"] > 0.9
    changed = np.abs(result - original).max(2) > 0
    assert changed[ASTRONAUT[:, 1].astype(int), ASTRONAUT[:, 0].astype(int)].all()  # eyes, nose, mouth restored
    # the feathered paste stays inside the aligned 512 crop mapped back onto the photo
    (face,) = detector.detect(source)
    _, matrix = align_face(source, face)
    crop_corners = np.array([[0, 0], [512, 0], [0, 512], [512, 512]], dtype=np.float64)
    back = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
    corners = crop_corners @ back[:, :2].T + back[:, 2]
    x0, y0 = np.floor(corners.min(0)).astype(int) - 1
    x1, y1 = np.ceil(corners.max(0)).astype(int) + 1
    assert 0 < x0 and 0 < y0 and x1 < 511 and y1 < 511  # the crop lies inside the photo: a real test
    outside = np.ones_like(changed)
    outside[y0:y1, x0:x1] = False
    assert not changed[outside].any() and changed[y0:y1, x0:x1].sum() > 5000
    assert messages[-1] == "1 face restored"


def test_face_restore_without_a_face_passes_the_image_through(invoker):
    source = Image.fromarray(skimage_data.coffee())
    outputs, result, messages = restore(invoker, source)
    assert outputs["faces"] == [] and np.array_equal(result, np.asarray(source))
    assert messages[-1] == "no face found: image unchanged"


def test_face_restore_skips_faces_below_the_minimum_size(invoker):
    source = astronaut()
    outputs, result, messages = restore(invoker, source, min_face_size=150)
    assert outputs["faces"] == [] and np.array_equal(result, np.asarray(source))
    assert messages[-1] == "no face found (1 smaller than 150 px): image unchanged"
