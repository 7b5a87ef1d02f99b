"""Small 28x28 models covering the structures fxprune prunes: residual stages, a plain VGG
stack, MobileNetV2 inverted residuals (depthwise), Inception branches (concat), and an MLP."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn(cin: int, cout: int, stride: int = 1, groups: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = conv_bn(cin, cout, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                   nn.BatchNorm2d(cout))
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                    nn.BatchNorm2d(cout)) if stride != 1 or cin != cout
                      else nn.Identity())

    def forward(self, x):
        return F.relu(self.conv2(self.conv1(x)) + self.short(x))


class ResNetSmall(nn.Module):
    def __init__(self, width: int = 16, classes: int = 10):
        super().__init__()
        self.stem = conv_bn(1, width)
        self.stages = nn.Sequential(BasicBlock(width, width, 1), BasicBlock(width, width, 1),
                                    BasicBlock(width, 2 * width, 2),
                                    BasicBlock(2 * width, 2 * width, 1),
                                    BasicBlock(2 * width, 4 * width, 2))
        self.fc = nn.Linear(4 * width, classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1).flatten(1))


class VGGSmall(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(conv_bn(1, 32), conv_bn(32, 32), nn.MaxPool2d(2),
                                      conv_bn(32, 64), conv_bn(64, 64), nn.MaxPool2d(2),
                                      conv_bn(64, 128), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(128 * 3 * 3, 128), nn.ReLU(inplace=True),
                                        nn.Linear(128, classes))

    def forward(self, x):
        return self.classifier(self.features(x).view(-1, 128 * 3 * 3))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4):
        super().__init__()
        hidden = cin * expand
        self.block = nn.Sequential(conv_bn(cin, hidden, k=1), conv_bn(hidden, hidden, stride,
                                                                       groups=hidden),
                                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2Small(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = conv_bn(1, 16)
        self.blocks = nn.Sequential(InvertedResidual(16, 16, 1), InvertedResidual(16, 24, 2),
                                    InvertedResidual(24, 24, 1), InvertedResidual(24, 32, 2),
                                    InvertedResidual(32, 32, 1))
        self.head = conv_bn(32, 128, k=1)
        self.fc = nn.Linear(128, classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.head(self.blocks(self.stem(x))), 1).flatten(1))


class Inception(nn.Module):
    def __init__(self, cin: int, b1: int, b3: int, b5: int, bp: int):
        super().__init__()
        self.b1 = conv_bn(cin, b1, k=1)
        self.b3 = nn.Sequential(conv_bn(cin, b3 // 2, k=1), conv_bn(b3 // 2, b3))
        self.b5 = nn.Sequential(conv_bn(cin, b5 // 2, k=1), conv_bn(b5 // 2, b5),
                                conv_bn(b5, b5))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(cin, bp, k=1))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)


class InceptionSmall(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = conv_bn(1, 32)
        self.i1 = Inception(32, 16, 32, 8, 8)
        self.i2 = Inception(64, 32, 48, 16, 16)
        self.fc = nn.Linear(112, classes)

    def forward(self, x):
        x = F.max_pool2d(self.i1(self.stem(x)), 2)
        return self.fc(F.adaptive_avg_pool2d(self.i2(x), 1).flatten(1))


class MLP(nn.Module):
    """784-300-100-10 (LeNet-300-100)."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(784, 300), nn.Linear(300, 100), nn.Linear(100,
                                                                                           classes)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x.flatten(1))))))


MODELS = {"resnet": ResNetSmall, "vgg": VGGSmall, "mobilenet": MobileNetV2Small,
          "inception": InceptionSmall, "mlp": MLP}
