"""Utility image nodes on real PNGs: values read back from the files the nodes wrote."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from services.stores.images import read_embedded


def _run(invoker, nodes, links=()):
    session = invoker.create_session({"nodes": nodes, "links": list(links)})
    invoker.invoke(session)
    assert invoker.wait(session.id, 20)
    return session


def _link(a, af, b, bf):
    return {"from_node": a, "from_field": af, "to_node": b, "to_field": bf}


def _pixels(services, session, node_id):
    name = session.results[node_id][0].outputs["image"]["image_name"]
    return np.asarray(Image.open(services.images.path(name)))


def test_load_resize_crop_save(invoker, services, tmp_path):
    services.settings.allowed_write_dirs = [tmp_path]  # a folder outside the outputs folder, allowed by the user
    source = tmp_path / "in.png"
    gradient = np.tile(np.arange(64, dtype=np.uint8)[None, :, None] * 4, (32, 1, 3))
    Image.fromarray(gradient).save(source)
    out_dir = tmp_path / "saved"
    session = _run(invoker, [
        {"id": "load", "type": "load_image", "path": str(source)},
        {"id": "half", "type": "resize", "width": 32, "height": 16, "resample": "nearest"},
        {"id": "crop", "type": "crop", "x": 8, "y": 0, "width": 8, "height": 4},
        {"id": "save", "type": "save_image", "folder": str(out_dir), "filename": "crop"},
    ], [_link("load", "image", "half", "image"), _link("half", "image", "crop", "image"), _link("crop", "image", "save", "image")])
    assert session.results["load"][0].outputs["width"] == 64
    half = _pixels(services, session, "half")
    assert half.shape == (16, 32, 3) and half[0, 1, 0] == gradient[0, 3, 0]  # nearest samples pixel centres
    crop = _pixels(services, session, "crop")
    assert crop.shape == (4, 8, 3) and crop[0, 0, 0] == half[0, 8, 0]
    saved = out_dir / "crop.png"
    assert np.array_equal(np.asarray(Image.open(saved)), crop)
    assert read_embedded(saved)["node_id"] == "crop", "the saved file carries the graph that made it"


def test_load_image_runs_again_when_the_file_changes(invoker, services, tmp_path):
    source = tmp_path / "in.png"
    Image.new("RGB", (4, 4), "red").save(source)
    graph = [{"id": "load", "type": "load_image", "path": str(source)}]
    first = _run(invoker, graph)
    assert _run(invoker, graph).node_state("load") == "cached"
    Image.new("RGB", (4, 4), "blue").save(source)
    os.utime(source, ns=(1, 1))
    changed = _run(invoker, graph)
    assert changed.node_state("load") == "completed"
    assert tuple(_pixels(services, changed, "load")[0, 0]) == (0, 0, 255)
    assert first.results["load"][0].outputs != changed.results["load"][0].outputs


def test_blend_and_paste_values(invoker, services):
    session = _run(invoker, [
        {"id": "black", "type": "solid_color", "width": 8, "height": 8, "color": "#000000"},
        {"id": "white", "type": "solid_color", "width": 4, "height": 4, "color": "#ffffff"},
        {"id": "mix", "type": "blend", "alpha": 0.25},
        {"id": "paste", "type": "paste", "x": 2, "y": 2},
    ], [_link("black", "image", "mix", "base"), _link("white", "image", "mix", "top"),
        _link("black", "image", "paste", "base"), _link("white", "image", "paste", "image")])
    mix = _pixels(services, session, "mix")
    assert mix.shape == (8, 8, 3) and abs(int(mix[0, 0, 0]) - 64) <= 1
    paste = _pixels(services, session, "paste")
    assert paste[0, 0].tolist() == [0, 0, 0] and paste[3, 3].tolist() == [255, 255, 255] and paste[6, 6].tolist() == [0, 0, 0]


def test_bad_inputs_fail_naming_the_field(invoker, tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    session = _run(invoker, [
        {"id": "missing", "type": "load_image", "path": str(tmp_path / "nope.png")},
        {"id": "junk", "type": "load_image", "path": str(junk)},
        {"id": "empty", "type": "load_image"},
        {"id": "colour", "type": "solid_color", "color": "not-a-colour"},
        {"id": "div", "type": "math", "operation": "div", "a": 1, "b": 0},
    ])
    errors = {n: session.results[n][0].error for n in ("missing", "junk", "empty", "colour", "div")}
    assert errors["missing"].startswith("node 'missing' (load_image), field 'path': no such file")
    assert errors["junk"].startswith("node 'junk' (load_image), field 'path': cannot open")
    assert errors["empty"] == "node 'empty' (load_image), field 'path': give a file path or an image_name"
    assert errors["colour"].startswith("node 'colour' (solid_color), field 'color': not a colour")
    assert errors["div"] == "node 'div' (math), field 'b': division by zero"


def test_noise_is_reproducible_from_its_seed(invoker, services):
    a = _run(invoker, [{"id": "n", "type": "noise_image", "width": 16, "height": 16, "scale": 2, "seed": 9}])
    services.cache.clear()
    b = _run(invoker, [{"id": "n", "type": "noise_image", "width": 16, "height": 16, "scale": 2, "seed": 9}])
    assert b.node_state("n") == "completed"
    assert np.array_equal(_pixels(services, a, "n"), _pixels(services, b, "n"))
