"""Sparse CNNs for continual learning: ResNet-18 (CIFAR stem) and MobileNetV2.

Each builds the dense torchvision-style model and converts it with ``sparsecl.sparsify`` (global
``density``, ``init`` "erk" | "er" | "uniform", ``structure`` "unstructured" | "block"), so the sparse
model computes exactly the dense model with the same effective weights. In MobileNetV2 the depthwise
3x3 convs (groups = channels) stay dense ``nn.Conv2d`` (sparsity does not pay there). The stem conv
is kept dense by default (``exclude``). density=1.0 returns the dense model.
"""
from torch import nn

from ..sparsify import sparsify


class _BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.bn1(self.conv1(x)).relu()
        return (self.bn2(self.conv2(y)) + self.shortcut(x)).relu()


class ResNet18(nn.Module):
    """ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool)."""

    def __init__(self, num_classes=10, width=64):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(3, w, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        layers, cin = [], w
        for i, cout in enumerate((w, 2 * w, 4 * w, 8 * w)):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.bn1(self.conv1(x)).relu()
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean((2, 3)))


class _InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        layers = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                   nn.ReLU6(), nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.conv(x)
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0) with a CIFAR-size stem (stride 1 first conv, first stride-2 stage at 1)."""

    CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes=10):
        super().__init__()
        layers, cin = [nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()], 32
        for t, c, n, s in self.CFG:
            for i in range(n):
                layers.append(_InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


def _sparse(model, density, init, structure, block_size, exclude):
    if density >= 1.0:
        return model
    return sparsify(model, density=density, init=init, structure=structure, block_size=block_size, exclude=exclude)


def resnet18(num_classes=10, density=0.1, init="erk", structure="unstructured", block_size=16, width=64,
             exclude=("conv1",)):
    """Sparse ResNet-18 (CIFAR stem): every conv and the fc are SparseConv2d / SparseLinear except ``exclude``."""
    return _sparse(ResNet18(num_classes, width), density, init, structure, block_size, exclude)


def mobilenet_v2(num_classes=10, density=0.1, init="erk", structure="unstructured", block_size=16,
                 exclude=("features.0",)):
    """Sparse MobileNetV2: pointwise convs and the classifier sparse, depthwise convs dense."""
    return _sparse(MobileNetV2(num_classes), density, init, structure, block_size, exclude)
