"""Draw the app icon once with Pillow and write assets/icon.png, icon.ico (Windows) and icon.icns (macOS).

Run it only when the drawing changes: the three files are committed, so a build needs no drawing step.
The motif is the app itself: two nodes joined by a link on a dark rounded tile.
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

ASSETS = Path(__file__).resolve().parents[1] / "assets"
SIZE = 1024  # drawn large and scaled down, so small sizes stay smooth


def _bezier(p0, p1, p2, p3, steps: int = 256) -> list[tuple[float, float]]:
    points = []
    for i in range(steps + 1):
        t = i / steps
        u = 1 - t
        points.append((u**3 * p0[0] + 3 * u * u * t * p1[0] + 3 * u * t * t * p2[0] + t**3 * p3[0],
                       u**3 * p0[1] + 3 * u * u * t * p1[1] + 3 * u * t * t * p2[1] + t**3 * p3[1]))
    return points


def draw() -> Image.Image:
    s = SIZE / 256  # coordinates below are on a 256 grid
    image = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    d = ImageDraw.Draw(image)
    d.rounded_rectangle([8 * s, 8 * s, 248 * s, 248 * s], radius=44 * s, fill=(30, 34, 44, 255))
    # the link first, so the nodes cover its ends
    # a thick stroke as overlapping discs: ImageDraw's wide polylines leave ragged joints
    for x, y in _bezier((92 * s, 92 * s), (150 * s, 92 * s), (106 * s, 164 * s), (164 * s, 164 * s)):
        d.ellipse([x - 6 * s, y - 6 * s, x + 6 * s, y + 6 * s], fill=(240, 180, 60, 255))
    for x, y, colour in ((36, 56, (42, 111, 219)), (148, 128, (96, 190, 120))):
        d.rounded_rectangle([x * s, y * s, (x + 72) * s, (y + 72) * s], radius=14 * s, fill=colour)
        d.rounded_rectangle([x * s, y * s, (x + 72) * s, (y + 20) * s], radius=14 * s, fill=(235, 238, 245, 255),
                            corners=(True, True, False, False))
    for cx, cy in ((92, 92), (164, 164)):  # the pins the link joins
        d.ellipse([(cx - 10) * s, (cy - 10) * s, (cx + 10) * s, (cy + 10) * s], fill=(240, 180, 60, 255),
                  outline=(30, 34, 44, 255), width=int(3 * s))
    return image


def main() -> None:
    ASSETS.mkdir(exist_ok=True)
    icon = draw()
    icon.resize((256, 256), Image.LANCZOS).save(ASSETS / "icon.png", optimize=True)
    icon.save(ASSETS / "icon.ico", sizes=[(16, 16), (32, 32), (48, 48), (64, 64), (128, 128), (256, 256)])
    # Pillow writes every icns size (16..1024) from this one; a 512 source gives the smallest file
    icon.resize((512, 512), Image.LANCZOS).save(ASSETS / "icon.icns")


if __name__ == "__main__":
    main()
