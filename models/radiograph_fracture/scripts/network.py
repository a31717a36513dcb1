"""FracAtlasNet: one shared encoder, three heads (fracture probability, fracture-region mask, body region).

Built from MONAI blocks so the bundle needs nothing beyond MONAI and PyTorch. The multi-task idea
follows MTL-DlinkNet: the segmentation head makes the encoder attend to the fracture line itself,
which helps the image-level classifier on a small dataset trained from scratch.

forward(x) with x of shape (N, 1, H, W), H and W divisible by 32 × input_scale, returns
  fracture_logit (N,), region_logits (N, 1, H, W), body_region_logits (N, n_regions).

input_scale 2 reads an image of twice the size at the cost of one more stem layer: the stem's
output is halved again (an average plus a learned strided convolution that starts at zero), so
everything after it sees the feature map size of input_scale 1 and a network trained at that
scale can be fine-tuned at the finer one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn

from .efficientnet_lite import IMAGENET_MEAN, IMAGENET_STD, EfficientNetLite


class FracAtlasNet(nn.Module):
    fine_tune_new = ("stem_reduce",)  # layers that weights trained at input_scale 1 do not have

    def __init__(
        self,
        in_channels: int = 1,
        channels: tuple[int, ...] = (24, 32, 64, 128, 256),
        n_body_regions: int = 4,
        fpn_channels: int = 64,
        dropout: float = 0.3,
        input_scale: int = 1,
    ) -> None:
        super().__init__()
        if input_scale not in (1, 2):
            raise ValueError(f"input_scale {input_scale}: use 1 or 2")
        self.stem = Convolution(2, in_channels, channels[0], strides=2, kernel_size=5, act="relu", norm="batch")
        self.stem_reduce = _StemReduce(channels[0]) if input_scale == 2 else nn.Identity()
        self.stages = nn.ModuleList()
        previous = channels[0]
        for width in channels[1:]:
            self.stages.append(
                nn.Sequential(
                    ResidualUnit(2, previous, width, strides=2, subunits=2, act="relu", norm="batch"),
                    ResidualUnit(2, width, width, strides=1, subunits=2, act="relu", norm="batch"),
                )
            )
            previous = width
        # A light feature pyramid over the 1/8, 1/16 and 1/32 stages feeds the region head.
        self.lateral = nn.ModuleList(nn.Conv2d(width, fpn_channels, 1) for width in channels[2:])
        self.region_head = nn.Sequential(
            Convolution(2, fpn_channels, fpn_channels, act="relu", norm="batch"),
            nn.Conv2d(fpn_channels, 1, 1),
        )
        self.dropout = nn.Dropout(dropout)
        self.fracture_head = nn.Linear(2 * channels[-1], 1)
        self.body_region_head = nn.Linear(2 * channels[-1], n_body_regions)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        size = x.shape[-2:]
        features = []
        f = self.stem_reduce(self.stem(x))
        for stage in self.stages:
            f = stage(f)
            features.append(f)
        pyramid = None
        for lateral, feature in zip(reversed(self.lateral), reversed(features[1:]), strict=True):
            level = lateral(feature)
            if pyramid is not None:
                level = level + F.interpolate(pyramid, size=level.shape[-2:], mode="nearest")
            pyramid = level
        regions = F.interpolate(self.region_head(pyramid), size=size, mode="bilinear", align_corners=False)
        deepest = features[-1]
        pooled = self.dropout(torch.cat([deepest.mean(dim=(2, 3)), deepest.amax(dim=(2, 3))], dim=1))
        return self.fracture_head(pooled)[:, 0], regions, self.body_region_head(pooled)


class _StemReduce(nn.Module):
    """Halves the stem's output: a 2×2 average plus a strided 3×3 convolution whose batch-norm scale
    starts at zero, so at first the block is the average alone."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(2)
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.norm.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x) + self.norm(self.conv(x))


class FracAtlasEnsemble(nn.Module):
    """Several networks of one kind (`member`: FracAtlasNet or FracAtlasLiteNet), trained independently
    (other training seeds), run as one network.

    Each output is the mean of the members' outputs, so the bundle's contract (outputs, sigmoid
    postprocessing) is that of a single member. Weights are one state dict (`members.K.…`).
    """

    def __init__(self, members: int = 2, member: str = "FracAtlasNet", **member_arguments) -> None:
        super().__init__()
        if members < 1:
            raise ValueError(f"an ensemble needs at least one member, got {members}")
        kinds: dict[str, type[nn.Module]] = {"FracAtlasNet": FracAtlasNet, "FracAtlasLiteNet": FracAtlasLiteNet}
        if member not in kinds:
            raise ValueError(f"ensemble member {member!r}: use one of {', '.join(kinds)}")
        self.members = nn.ModuleList(kinds[member](**member_arguments) for _ in range(members))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = [member(x) for member in self.members]
        return tuple(torch.stack(parts).mean(dim=0) for parts in zip(*outputs, strict=True))  # type: ignore[return-value]


class FracAtlasLiteNet(nn.Module):
    """An EfficientNet-Lite encoder (ImageNet-pretrained at training time) with the same three heads.

    forward(x) takes x of shape (N, 1, H, W), a grayscale radiograph scaled to [0, 1] (H and W
    multiples of 32), and returns fracture_logit (N,), region_logits (N, 1, H, W),
    body_region_logits (N, n_regions), like FracAtlasNet, and atypicality (N,). The gray channel is
    repeated to RGB and normalized with the ImageNet mean and standard deviation inside the network,
    so preprocessing stays "letterbox to [0, 1]" and training, ONNX export and inference cannot
    disagree on it.

    Region map: a feature pyramid over the encoder's stride 4, 8, 16 and 32 outputs, decoded at
    stride 4 and upsampled. Fracture and body region: mean and max pooling of the 1280-channel head.

    Two things are fitted after training and kept as buffers, so the weights file carries them:
    - `calibration` (scale, bias): Platt scaling of the fracture logit, fitted on the validation split;
    - the typicality model: mean and (shrunk) inverse covariance of the spatial mean and standard
      deviation of the encoder's stride-32 stage output (320 channels in lite0) over the training images.
      `atypicality` is the image's squared Mahalanobis distance in that space per dimension (about 1
      for a typical training image), so an image unlike the training radiographs (a chest film, a CT
      slice) scores high. That stage, not the 1280-channel head, because the head's features are tuned
      to fracture and body region and place a chest film among the shoulders, while the earlier stages
      react to acquisition texture (a 12-bit CR of a tibia from another device scores like a CT slice).
    """

    typicality_shrinkage = 0.1  # covariance shrunk towards its mean variance: 640 dimensions, ~2200 images

    def __init__(
        self,
        variant: str = "lite0",
        n_body_regions: int = 4,
        fpn_channels: int = 64,
        dropout: float = 0.3,
        drop_path: float = 0.1,
    ) -> None:
        super().__init__()
        self.encoder = EfficientNetLite(variant, drop_path=drop_path)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.lateral = nn.ModuleList(nn.Conv2d(width, fpn_channels, 1) for width in self.encoder.channels)
        self.smooth = nn.Sequential(
            nn.Conv2d(fpn_channels, fpn_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(fpn_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(fpn_channels, fpn_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(fpn_channels),
            nn.ReLU(inplace=True),
        )
        self.region_head = nn.Conv2d(fpn_channels, 1, 1)
        self.dropout = nn.Dropout(dropout)
        width = 2 * self.encoder.head[0].out_channels
        self.fracture_head = nn.Linear(width, 1)
        self.body_region_head = nn.Linear(width, n_body_regions)
        features = 2 * self.encoder.channels[-1]
        self.register_buffer("calibration", torch.tensor([1.0, 0.0]))
        self.register_buffer("feature_mean", torch.zeros(features))
        self.register_buffer("feature_precision", torch.eye(features))

    @staticmethod
    def typicality_features(taps: list[torch.Tensor]) -> torch.Tensor:
        """Spatial mean and standard deviation of the stride-32 stage output (N, 2 × its channels)."""
        deepest = taps[-1]
        mean = deepest.mean(dim=(2, 3))
        spread = ((deepest * deepest).mean(dim=(2, 3)) - mean * mean).clamp(min=0).sqrt()  # exports to ONNX
        return torch.cat([mean, spread], dim=1)

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """The features the typicality model describes, for [0, 1] input x."""
        taps, _ = self.encoder.features((x - self.mean) / self.std)
        return self.typicality_features(taps)

    def atypicality(self, features: torch.Tensor) -> torch.Tensor:
        centred = features - self.feature_mean
        return ((centred @ self.feature_precision) * centred).sum(dim=1) / features.shape[1]

    def decoder_and_heads(self) -> list[nn.Module]:
        """Everything that does not come from the pretrained encoder (trained from the start)."""
        return [self.lateral, self.smooth, self.region_head, self.fracture_head, self.body_region_head]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        size = x.shape[-2:]
        taps, head = self.encoder.features((x - self.mean) / self.std)
        pyramid = None
        for lateral, feature in zip(reversed(self.lateral), reversed(taps), strict=True):
            level = lateral(feature)
            if pyramid is not None:
                level = level + F.interpolate(pyramid, size=level.shape[-2:], mode="nearest")
            pyramid = level
        assert pyramid is not None
        regions = F.interpolate(self.region_head(self.smooth(pyramid)), size=size, mode="bilinear", align_corners=False)
        pooled = self.dropout(torch.cat([head.mean(dim=(2, 3)), head.amax(dim=(2, 3))], dim=1))
        fracture = self.fracture_head(pooled)[:, 0] * self.calibration[0] + self.calibration[1]
        return fracture, regions, self.body_region_head(pooled), self.atypicality(self.typicality_features(taps))
