"""Preprocessors that run a network: HED soft edges and lineart (the nets of lllyasviel/Annotators'
ControlNetHED.pth and sk_model.pth / sk_model2.pth, as controlnet_aux defines them), and how each
turns an image into a control image."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


class _DoubleConvBlock(torch.nn.Module):
    def __init__(self, channels_in: int, channels_out: int, layers: int) -> None:
        super().__init__()
        self.convs = torch.nn.Sequential(*[torch.nn.Conv2d(channels_in if i == 0 else channels_out, channels_out, 3, padding=1)
                                           for i in range(layers)])
        self.projection = torch.nn.Conv2d(channels_out, 1, 1)

    def forward(self, x: torch.Tensor, down_sampling: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        if down_sampling:
            x = F.max_pool2d(x, kernel_size=2, stride=2)
        for conv in self.convs:
            x = F.relu(conv(x))
        return x, self.projection(x)


class HED(torch.nn.Module):
    """ControlNetHED_Apache2: five VGG-like blocks, each projected to one edge map."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.block1 = _DoubleConvBlock(3, 64, 2)
        self.block2 = _DoubleConvBlock(64, 128, 2)
        self.block3 = _DoubleConvBlock(128, 256, 3)
        self.block4 = _DoubleConvBlock(256, 512, 3)
        self.block5 = _DoubleConvBlock(512, 512, 3)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = x - self.norm
        projections = []
        for index, block in enumerate((self.block1, self.block2, self.block3, self.block4, self.block5)):
            h, projection = block(h, down_sampling=index > 0)
            projections.append(projection)
        return projections


class _ResidualBlock(torch.nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_block = torch.nn.Sequential(
            torch.nn.ReflectionPad2d(1), torch.nn.Conv2d(channels, channels, 3), torch.nn.InstanceNorm2d(channels),
            torch.nn.ReLU(), torch.nn.ReflectionPad2d(1), torch.nn.Conv2d(channels, channels, 3),
            torch.nn.InstanceNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class Lineart(torch.nn.Module):
    """The informative-drawings generator (3 residual blocks) of sk_model.pth / sk_model2.pth."""

    def __init__(self, residual_blocks: int = 3) -> None:
        super().__init__()
        nn = torch.nn
        self.model0 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(3, 64, 7), nn.InstanceNorm2d(64), nn.ReLU())
        self.model1 = nn.Sequential(nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.InstanceNorm2d(128), nn.ReLU(),
                                    nn.Conv2d(128, 256, 3, stride=2, padding=1), nn.InstanceNorm2d(256), nn.ReLU())
        self.model2 = nn.Sequential(*[_ResidualBlock(256) for _ in range(residual_blocks)])
        self.model3 = nn.Sequential(
            nn.ConvTranspose2d(256, 128, 3, stride=2, padding=1, output_padding=1), nn.InstanceNorm2d(128), nn.ReLU(),
            nn.ConvTranspose2d(128, 64, 3, stride=2, padding=1, output_padding=1), nn.InstanceNorm2d(64), nn.ReLU())
        self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(64, 1, 7), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model4(self.model3(self.model2(self.model1(self.model0(x)))))


def detect_size(size: tuple[int, int], resolution: int, multiple: int) -> tuple[int, int]:
    """The image's size with its shorter side at `resolution`, rounded to `multiple` pixels."""
    scale = resolution / min(size)
    return tuple(max(multiple, int(round(v * scale / multiple)) * multiple) for v in size)  # type: ignore[return-value]


def _input(image: Image.Image, size: tuple[int, int], net: torch.nn.Module) -> torch.Tensor:
    pixels = np.asarray(image.convert("RGB").resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
    parameter = next(net.parameters())
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].to(parameter.device, parameter.dtype)


def _output(values: torch.Tensor, size: tuple[int, int]) -> Image.Image:
    """[h, w] in [0, 1] -> an RGB image of `size`."""
    grey = (values.float().cpu().numpy() * 255.0).clip(0, 255).astype(np.uint8)
    return Image.fromarray(grey, "L").resize(size, Image.Resampling.BILINEAR).convert("RGB")


@torch.inference_mode()
def run_hed(net: HED, image: Image.Image, resolution: int) -> Image.Image:
    """Soft edges: the sigmoid of the mean of the five edge maps (each resized to the input), as controlnet_aux."""
    size = detect_size(image.size, resolution, 16)
    x = _input(image, size, net)  # HED takes 0..255 pixels
    maps = [F.interpolate(p.float(), size=x.shape[2:], mode="bilinear", align_corners=False) for p in net(x)]
    edges = torch.sigmoid(torch.cat(maps, dim=1).mean(dim=1))[0]
    return _output(edges, image.size)


@torch.inference_mode()
def run_lineart(net: Lineart, image: Image.Image, resolution: int) -> Image.Image:
    """White lines on black (the net draws black lines on white; ControlNet lineart wants them inverted)."""
    size = detect_size(image.size, resolution, 8)
    lines = net(_input(image, size, net) / 255.0)[0, 0]
    return _output(1.0 - lines, image.size)
