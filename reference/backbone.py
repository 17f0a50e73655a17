"""ResNet backbone and FPN neck, written for the project (no downloadable weights)."""
import torch
from torch import nn
import torch.nn.functional as F


def _conv_bn(cin, cout, k, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, width, stride):
        super().__init__()
        self.c1 = _conv_bn(cin, width, 3, stride)
        self.c2 = _conv_bn(width, width, 3)
        out = width * self.expansion
        self.down = _conv_bn(cin, out, 1, stride) if stride != 1 or cin != out else nn.Identity()

    def forward(self, x):
        return F.relu(self.c2(F.relu(self.c1(x))) + self.down(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, width, stride):
        super().__init__()
        out = width * self.expansion
        self.c1 = _conv_bn(cin, width, 1)
        self.c2 = _conv_bn(width, width, 3, stride)  # stride on the 3x3 (the "ResNet v1b" layout)
        self.c3 = _conv_bn(width, out, 1)
        self.down = _conv_bn(cin, out, 1, stride) if stride != 1 or cin != out else nn.Identity()

    def forward(self, x):
        return F.relu(self.c3(F.relu(self.c2(F.relu(self.c1(x))))) + self.down(x))


ARCH = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)),
        50: (Bottleneck, (3, 4, 6, 3)), 101: (Bottleneck, (3, 4, 23, 3))}


class ResNet(nn.Module):
    """ResNet-{18,34,50,101}; returns C3, C4, C5 (strides 8, 16, 32).
    base_width scales every layer (64 is the standard network)."""

    def __init__(self, depth=50, base_width=64, frozen_stages=-1, norm_eval=False):
        super().__init__()
        # MMDetection's options for an ImageNet-initialised backbone (its GFL
        # config: frozen_stages=1, norm_eval=True): the stem and the first
        # `frozen_stages` stages are not trained, and BatchNorm keeps its
        # running statistics (eval mode) while its affine weights train.
        self.frozen_stages, self.norm_eval = frozen_stages, norm_eval
        if depth not in ARCH:
            raise ValueError(f"ResNet depth must be one of {sorted(ARCH)}, got {depth}")
        block, counts = ARCH[depth]
        self.stem = nn.Sequential(nn.Conv2d(3, base_width, 7, 2, 3, bias=False), nn.BatchNorm2d(base_width),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        cin, layers, self.out_channels = base_width, [], []
        for i, n in enumerate(counts):
            width = base_width * 2 ** i
            blocks = []
            for j in range(n):
                blocks.append(block(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = width * block.expansion
            layers.append(nn.Sequential(*blocks))
            self.out_channels.append(cin)
        self.layers = nn.ModuleList(layers)
        self.out_channels = self.out_channels[1:]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

        self._freeze()

    def _freeze(self):
        frozen = ([self.stem] if self.frozen_stages >= 0 else []) + list(self.layers[:max(self.frozen_stages, 0)])
        for m in frozen:
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)

    def train(self, mode=True):
        super().train(mode)
        self._freeze()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def forward(self, x):
        x = self.stem(x)
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i > 0:
                outs.append(x)
        return outs


class FPN(nn.Module):
    """P3-P5 from C3-C5 (lateral 1x1, top-down nearest upsampling, 3x3 output
    convs), P6 = 3x3 stride-2 conv on P5's output, P7 = the same on P6."""

    def __init__(self, in_channels, channels=256):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels)
        self.extra = nn.ModuleList(nn.Conv2d(channels, channels, 3, 2, 1) for _ in range(2))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, feats):
        lat = [conv(f) for conv, f in zip(self.lateral, feats)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[-2:], mode="nearest")
        outs = [conv(x) for conv, x in zip(self.output, lat)]
        outs.append(self.extra[0](outs[-1]))
        outs.append(self.extra[1](outs[-1]))
        return outs
