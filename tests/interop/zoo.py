"""The issue #20 acceptance zoo: PyTorch modules with torchvision's module and key names, each
with a Keras 3 twin and a hand-written numpy mapping between them.

The PyTorch modules copy torchvision's *structure and key names* (`features.28.weight`,
`layer3.0.downsample.1.running_var`, `features.4.conv.1.0.weight`, `classifier.6.bias`);
torchvision itself is not installed (its only wheel here is a CUDA build) and none of its code
is used. Recurrent models follow `torch.nn.LSTM`/`GRU` key names (`weight_ih_l1_reverse`).

Each Keras twin is functional, flat (no nested models), NHWC, and deliberately uses its own
layer names (never the torch ones), so a port has to work from structure. Where torch pads a
stride-2 convolution or pooling symmetrically and Keras's ``padding="same"`` would pad
asymmetrically (0 before, 1 after), the twin uses ``ZeroPadding2D`` + ``"valid"`` (the
max-pool after a ReLU pads with zeros, which equals torch's -inf padding on non-negative
values). Every BatchNormalization has ``epsilon=1e-5`` (torch's default). GRUs use
``reset_after=True`` (torch's formulation).

VGG16 runs at ``VGG16_SIZE`` x ``VGG16_SIZE`` inputs, 96 here: ``VGG16(image_size=224)`` is
exactly torchvision's VGG16 (the ``AdaptiveAvgPool2d((7, 7))`` sees a 7x7 map and is an
identity; ``classifier.0`` is ``Linear(25088, 4096)``), but its 138M parameters cost about two
minutes per test file on 2 shared cores. At 96 the same layer stack is kept and the adaptive
pool's output size is the map's own (``size // 32`` = 3), so it is still an identity and the
twin goes straight from the last max-pool to Flatten; only ``classifier.0``'s input width
changes (512 * 3 * 3 = 4608), and the flatten-row order still matters (a 3x3x512 map).

`load_into` is the independent reference for the port: it fills a twin from a state dict with
np.transpose and the LSTM/GRU gate and bias handling written out here, without `surgery`.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Callable

import keras
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from surgery.sample_models.tasks import VOCAB, make_motifs, make_shapes

L = keras.layers
EPS = 1e-5  # torch's BatchNorm eps, used on both sides
NUM_CLASSES = 10
VGG16_SIZE = 96  # 224 is torchvision's exact VGG16; see the module docstring
IMAGE_SIZE = 64  # ResNets, MobileNetV2: drawn at 64x64 so that layer4 still sees a 2x2 map
AUDIO_LENGTH = 2048
EMBED, HIDDEN = 32, 48

# ---------------------------------------------------------------------------------------------
# PyTorch modules (torchvision's module names)
# ---------------------------------------------------------------------------------------------

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
             512, 512, 512, "M")


class VGG16(nn.Module):
    """torchvision's `vgg16` layout: `features.N` (conv, ReLU, max-pool), `avgpool`,
    `classifier.{0,3,6}` (Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear)."""

    def __init__(self, num_classes: int = NUM_CLASSES, image_size: int = VGG16_SIZE):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = v
        self.features = nn.Sequential(*layers)
        side = image_size // 32
        self.avgpool = nn.AdaptiveAvgPool2d((side, side))
        self.classifier = nn.Sequential(
            nn.Linear(512 * side * side, 4096), nn.ReLU(True), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(),
            nn.Linear(4096, num_classes))

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck: the stride sits on the 3x3 `conv2`."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ResNet: conv1, bn1, relu, maxpool, layer1..4 (blocks with
    `downsample.0`/`.1`), avgpool, fc."""

    def __init__(self, block, layers, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = NUM_CLASSES) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes)


def resnet50(num_classes: int = NUM_CLASSES) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes)


class ConvBNReLU6(nn.Sequential):
    """torchvision's Conv2dNormActivation with ReLU6: keys `.0` conv, `.1` BatchNorm."""

    def __init__(self, inp: int, out: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(inp, out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(inp, hidden, kernel=1))
        layers += [ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


MOBILENET_V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                         (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))  # t, c, n, s


class MobileNetV2(nn.Module):
    """torchvision's `mobilenet_v2` (width 1.0): `features.0` stem, `features.1..17` inverted
    residuals (`conv.N`), `features.18` 1x1 to 1280, `classifier.1` Linear."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        features: list[nn.Module] = [ConvBNReLU6(3, 32, stride=2)]
        inp = 32
        for t, c, n, s in MOBILENET_V2_SETTINGS:
            for i in range(n):
                features.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                inp = c
        features.append(ConvBNReLU6(inp, 1280, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


class BiLSTMClassifier(nn.Module):
    """Embedding -> 2-layer bidirectional LSTM -> Linear on both directions' final states."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, EMBED)
        self.lstm = nn.LSTM(EMBED, HIDDEN, num_layers=2, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * HIDDEN, num_classes)

    def forward(self, ids):
        _, (h, _) = self.lstm(self.embedding(ids))
        return self.fc(torch.cat([h[-2], h[-1]], dim=1))  # last layer: forward, reverse


class GRUClassifier(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, EMBED)
        self.gru = nn.GRU(EMBED, HIDDEN, batch_first=True)
        self.fc = nn.Linear(HIDDEN, num_classes)

    def forward(self, ids):
        _, h = self.gru(self.embedding(ids))
        return self.fc(h[-1])


class AudioCNN(nn.Module):
    """A small 1-D CNN on raw waveforms (N, 1, T): `features.N`, global average, `classifier`."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, 16, 9, stride=2, padding=4), nn.BatchNorm1d(16), nn.ReLU(inplace=True),
            nn.MaxPool1d(2),
            nn.Conv1d(16, 32, 5, padding=2), nn.BatchNorm1d(32), nn.ReLU(inplace=True),
            nn.MaxPool1d(2),
            nn.Conv1d(32, 64, 3, padding=1), nn.BatchNorm1d(64), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class TwoBranch(nn.Module):
    """The ambiguous model: two same-shaped parallel convolutions under unrelated names,
    combined asymmetrically (only `left` has a ReLU), so swapping them changes the function."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.left = nn.Conv2d(16, 16, 3, padding=1)
        self.right = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(self.left(x)) + self.right(x)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ---------------------------------------------------------------------------------------------
# Keras twins; each records its hand-written mapping while it is built
# ---------------------------------------------------------------------------------------------

class Twin:
    """Builds a Keras twin and records, for each weighted Keras layer, the torch module whose
    parameters it takes: ``(keras layer name, kind, torch module prefix, options)``."""

    def __init__(self):
        self.mapping: list[tuple[str, str, str, dict]] = []

    def __call__(self, keras_layer, kind: str, torch_prefix: str, **options):
        self.mapping.append((keras_layer.name, kind, torch_prefix, options))
        return keras_layer


def _conv_bn(t: Twin, x, filters: int, kernel: int, stride: int, name: str, conv: str, bn: str,
             relu: float | None = 0.0, depthwise: bool = False):
    """Conv (no bias) + BatchNorm (+ ReLU / ReLU6); stride 2 with a kernel > 1 pads
    explicitly like torch (pad (k-1)//2 on every side) instead of Keras's asymmetric 'same'."""
    if stride > 1 and kernel > 1:
        x = L.ZeroPadding2D((kernel - 1) // 2, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    if depthwise:
        layer = t(L.DepthwiseConv2D(kernel, strides=stride, padding=padding, use_bias=False,
                                    name=name), "depthwise", conv)
    else:
        layer = t(L.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=False,
                           name=name), "conv2d", conv)
    x = t(L.BatchNormalization(epsilon=EPS, name=f"{name}_norm"), "bn", bn)(layer(x))
    if relu is None:
        return x
    return L.ReLU(max_value=relu or None, name=f"{name}_act")(x)


def vgg16_keras(num_classes: int = NUM_CLASSES, image_size: int = VGG16_SIZE):
    t = Twin()
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x, block, index, torch_index = inputs, 1, 1, 0
    for v in VGG16_CFG:
        if v == "M":
            x = L.MaxPooling2D(2, name=f"stage{block}_pool")(x)
            block, index, torch_index = block + 1, 1, torch_index + 1
            continue
        x = t(L.Conv2D(v, 3, padding="same", activation="relu", name=f"stage{block}_c{index}"),
              "conv2d", f"features.{torch_index}")(x)
        index, torch_index = index + 1, torch_index + 2
    side = image_size // 32
    x = L.Flatten(name="flat")(x)
    x = t(L.Dense(4096, activation="relu", name="dense_a"), "linear_flat", "classifier.0",
          feature_shape=(side, side, 512))(x)
    x = L.Dropout(0.5, name="drop_a")(x)
    x = t(L.Dense(4096, activation="relu", name="dense_b"), "linear", "classifier.3")(x)
    x = L.Dropout(0.5, name="drop_b")(x)
    outputs = t(L.Dense(num_classes, name="logits"), "linear", "classifier.6")(x)
    return keras.Model(inputs, outputs, name="vgg16_twin"), t.mapping


def _resnet_block(t: Twin, x, inplanes: int, planes: int, stride: int, bottleneck: bool,
                  name: str, torch_prefix: str, shortcut_first: bool):
    out_planes = planes * (4 if bottleneck else 1)
    shortcut = x
    project = stride != 1 or inplanes != out_planes

    def proj(inp):
        return _conv_bn(t, inp, out_planes, 1, stride, f"{name}_proj", f"{torch_prefix}"
                        ".downsample.0", f"{torch_prefix}.downsample.1", relu=None)
    if project and shortcut_first:
        shortcut = proj(x)
    p = torch_prefix
    if bottleneck:
        y = _conv_bn(t, x, planes, 1, 1, f"{name}_reduce", f"{p}.conv1", f"{p}.bn1")
        y = _conv_bn(t, y, planes, 3, stride, f"{name}_spatial", f"{p}.conv2", f"{p}.bn2")
        y = _conv_bn(t, y, out_planes, 1, 1, f"{name}_expand", f"{p}.conv3", f"{p}.bn3",
                     relu=None)
    else:
        y = _conv_bn(t, x, planes, 3, stride, f"{name}_a", f"{p}.conv1", f"{p}.bn1")
        y = _conv_bn(t, y, planes, 3, 1, f"{name}_b", f"{p}.conv2", f"{p}.bn2", relu=None)
    if project and not shortcut_first:
        shortcut = proj(x)
    y = L.Add(name=f"{name}_sum")([y, shortcut])
    return L.ReLU(name=f"{name}_out")(y), out_planes


def resnet_keras(blocks=(2, 2, 2, 2), bottleneck: bool = False,
                 num_classes: int = NUM_CLASSES, image_size: int = IMAGE_SIZE,
                 shortcut_first: bool = False):
    """ResNet twin; `shortcut_first` builds each projection shortcut before the main path
    (as keras.applications does), so graph order differs from torch's key order."""
    t = Twin()
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = _conv_bn(t, inputs, 64, 7, 2, "root", "conv1", "bn1")
    x = L.ZeroPadding2D(1, name="root_pool_pad")(x)
    x = L.MaxPooling2D(3, strides=2, name="root_pool")(x)
    inplanes = 64
    for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks), 1):
        for i in range(n):
            stride = 2 if stage > 1 and i == 0 else 1
            x, inplanes = _resnet_block(t, x, inplanes, planes, stride, bottleneck,
                                        f"s{stage}u{i}", f"layer{stage}.{i}", shortcut_first)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    outputs = t(L.Dense(num_classes, name="logits"), "linear", "fc")(x)
    return keras.Model(inputs, outputs, name="resnet_twin"), t.mapping


def resnet18_keras(**kw):
    return resnet_keras((2, 2, 2, 2), False, **kw)


def resnet50_keras(**kw):
    return resnet_keras((3, 4, 6, 3), True, **kw)


def mobilenet_v2_keras(num_classes: int = NUM_CLASSES, image_size: int = IMAGE_SIZE):
    t = Twin()
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = _conv_bn(t, inputs, 32, 3, 2, "entry", "features.0.0", "features.0.1", relu=6.0)
    inp, index = 32, 1
    for expand, c, n, s in MOBILENET_V2_SETTINGS:
        for i in range(n):
            stride, hidden, name = (s if i == 0 else 1), inp * expand, f"ir{index}"
            p, k, y = f"features.{index}.conv", 0, x
            if expand != 1:
                y = _conv_bn(t, y, hidden, 1, 1, f"{name}_wide", f"{p}.0.0", f"{p}.0.1", relu=6.0)
                k = 1
            y = _conv_bn(t, y, hidden, 3, stride, f"{name}_dw", f"{p}.{k}.0", f"{p}.{k}.1",
                         relu=6.0, depthwise=True)
            y = _conv_bn(t, y, c, 1, 1, f"{name}_narrow", f"{p}.{k + 1}", f"{p}.{k + 2}",
                         relu=None)
            x = L.Add(name=f"{name}_res")([x, y]) if stride == 1 and inp == c else y
            inp, index = c, index + 1
    x = _conv_bn(t, x, 1280, 1, 1, "top", f"features.{index}.0", f"features.{index}.1",
                 relu=6.0)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dropout(0.2, name="drop")(x)
    outputs = t(L.Dense(num_classes, name="logits"), "linear", "classifier.1")(x)
    return keras.Model(inputs, outputs, name="mobilenet_v2_twin"), t.mapping


def bilstm_keras(num_classes: int = NUM_CLASSES):
    t = Twin()
    inputs = keras.Input((None,), dtype="int32", name="tokens")
    x = t(L.Embedding(VOCAB, EMBED, name="vocab"), "embedding", "embedding")(inputs)
    x = t(L.Bidirectional(L.LSTM(HIDDEN, return_sequences=True), name="enc_lower"),
          "bilstm", "lstm", layer=0)(x)
    x = t(L.Bidirectional(L.LSTM(HIDDEN), name="enc_upper"), "bilstm", "lstm", layer=1)(x)
    outputs = t(L.Dense(num_classes, name="logits"), "linear", "fc")(x)
    return keras.Model(inputs, outputs, name="bilstm_twin"), t.mapping


def gru_keras(num_classes: int = NUM_CLASSES):
    t = Twin()
    inputs = keras.Input((None,), dtype="int32", name="tokens")
    x = t(L.Embedding(VOCAB, EMBED, name="vocab"), "embedding", "embedding")(inputs)
    x = t(L.GRU(HIDDEN, reset_after=True, name="recurrent"), "gru", "gru", layer=0)(x)
    outputs = t(L.Dense(num_classes, name="logits"), "linear", "fc")(x)
    return keras.Model(inputs, outputs, name="gru_twin"), t.mapping


def audio_cnn_keras(num_classes: int = NUM_CLASSES, length: int = AUDIO_LENGTH,
                    epsilon: float = EPS):
    t = Twin()
    inputs = keras.Input((length, 1), name="wave")
    x = L.ZeroPadding1D(4, name="front_pad")(inputs)  # torch pads 4 both sides at stride 2
    for i, (filters, kernel, stride, pad, torch_index) in enumerate(
            ((16, 9, 2, "valid", 0), (32, 5, 1, "same", 4), (64, 3, 1, "same", 8))):
        x = t(L.Conv1D(filters, kernel, strides=stride, padding=pad, name=f"tap{i}"), "conv1d",
              f"features.{torch_index}")(x)
        x = t(L.BatchNormalization(epsilon=epsilon, name=f"tap{i}_norm"), "bn",
              f"features.{torch_index + 1}")(x)
        x = L.ReLU(name=f"tap{i}_act")(x)
        if i < 2:
            x = L.MaxPooling1D(2, name=f"tap{i}_pool")(x)
    x = L.GlobalAveragePooling1D(name="gap")(x)
    outputs = t(L.Dense(num_classes, name="logits"), "linear", "classifier")(x)
    return keras.Model(inputs, outputs, name="audio_twin"), t.mapping


def two_branch_keras(num_classes: int = NUM_CLASSES, image_size: int = 32):
    t = Twin()
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = t(L.Conv2D(16, 3, padding="same", activation="relu", name="trunk"), "conv2d",
          "stem")(inputs)
    a = t(L.Conv2D(16, 3, padding="same", activation="relu", name="path_p"), "conv2d",
          "left")(x)
    b = t(L.Conv2D(16, 3, padding="same", name="path_q"), "conv2d", "right")(x)
    x = L.GlobalAveragePooling2D(name="gap")(L.Add(name="merge")([a, b]))
    outputs = t(L.Dense(num_classes, name="logits"), "linear", "head")(x)
    return keras.Model(inputs, outputs, name="two_branch_twin"), t.mapping


# ---------------------------------------------------------------------------------------------
# The hand-written mapping: torch state dict -> Keras set_weights, per layer
# ---------------------------------------------------------------------------------------------

def _conv2d(state, p, opts):  # OIHW -> HWIO
    out = [np.transpose(state[f"{p}.weight"], (2, 3, 1, 0))]
    return out + ([state[f"{p}.bias"]] if f"{p}.bias" in state else [])


def _conv1d(state, p, opts):  # (out, in, k) -> (k, in, out)
    out = [np.transpose(state[f"{p}.weight"], (2, 1, 0))]
    return out + ([state[f"{p}.bias"]] if f"{p}.bias" in state else [])


def _depthwise(state, p, opts):  # (C, 1, kh, kw) -> (kh, kw, C, 1)
    out = [np.transpose(state[f"{p}.weight"], (2, 3, 0, 1))]
    return out + ([state[f"{p}.bias"]] if f"{p}.bias" in state else [])


def _bn(state, p, opts):  # Keras order: gamma, beta, moving_mean, moving_variance
    return [state[f"{p}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]


def _linear(state, p, opts):
    return [state[f"{p}.weight"].T, state[f"{p}.bias"]]


def _linear_flat(state, p, opts):
    """Linear after a flatten: torch's input index is c*H*W + h*W + w (NCHW), Keras's row is
    h*W*C + w*C + c (NHWC), so the rows are permuted, not just transposed."""
    h, w, c = opts["feature_shape"]
    weight = state[f"{p}.weight"]  # (out, C*H*W)
    kernel = weight.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, -1)
    return [kernel, state[f"{p}.bias"]]


def _embedding(state, p, opts):
    return [state[f"{p}.weight"]]


def _lstm_direction(state, p, layer, reverse):
    """torch (w_ih (4u, in), w_hh (4u, u), b_ih, b_hh), gates i, f, g, o, the same order as
    Keras's i, f, c, o: kernel = w_ih.T, recurrent = w_hh.T, one bias = b_ih + b_hh."""
    s = f"_l{layer}" + ("_reverse" if reverse else "")
    return [state[f"{p}.weight_ih{s}"].T, state[f"{p}.weight_hh{s}"].T,
            state[f"{p}.bias_ih{s}"] + state[f"{p}.bias_hh{s}"]]


def _lstm(state, p, opts):
    return _lstm_direction(state, p, opts["layer"], False)


def _bilstm(state, p, opts):  # Bidirectional.set_weights: forward's, then backward's
    return (_lstm_direction(state, p, opts["layer"], False)
            + _lstm_direction(state, p, opts["layer"], True))


def _zrh(m):
    """torch GRU gate blocks r, z, n (along axis 0) -> Keras's z, r, h."""
    r, z, n = np.split(m, 3, axis=0)
    return np.concatenate([z, r, n], axis=0)


def _gru(state, p, opts):
    """Keras GRU(reset_after=True): kernel (in, 3u), recurrent (u, 3u), bias (2, 3u) whose
    rows are the input bias and the recurrent bias (torch's b_ih, b_hh), gates z, r, h."""
    s = f"_l{opts['layer']}"
    return [_zrh(state[f"{p}.weight_ih{s}"]).T, _zrh(state[f"{p}.weight_hh{s}"]).T,
            np.stack([_zrh(state[f"{p}.bias_ih{s}"]), _zrh(state[f"{p}.bias_hh{s}"])])]


KINDS: dict[str, Callable] = {
    "conv2d": _conv2d, "conv1d": _conv1d, "depthwise": _depthwise, "bn": _bn,
    "linear": _linear, "linear_flat": _linear_flat, "embedding": _embedding, "lstm": _lstm,
    "bilstm": _bilstm, "gru": _gru}


def state_arrays(module: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def _used_keys(state, p, kind, opts) -> set[str]:
    if kind in ("lstm", "bilstm", "gru"):
        s = f"_l{opts['layer']}"
        sfx = (s, s + "_reverse") if kind == "bilstm" else (s,)
        return {f"{p}.{r}{x}" for r in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                for x in sfx}
    return {k for k in state if k.startswith(p + ".") and "." not in k[len(p) + 1:]}


def load_into(model, state: dict[str, np.ndarray], mapping) -> None:
    """Fills the Keras twin `model` from a torch state dict (numpy) by the hand-written
    mapping; every torch tensor but `num_batches_tracked` and every Keras weight must be used
    exactly once, with the same shapes."""
    used: set[str] = set()
    filled: set[str] = set()
    for name, kind, prefix, opts in mapping:
        layer = model.get_layer(name)
        arrays = KINDS[kind](state, prefix, opts)
        have = [tuple(w.shape) for w in layer.get_weights()]
        got = [tuple(a.shape) for a in arrays]
        if have != got:
            raise AssertionError(f"{name} <- {prefix}: Keras {have} vs mapped {got}")
        layer.set_weights([np.ascontiguousarray(a, dtype=np.float32) for a in arrays])
        used |= _used_keys(state, prefix, kind, opts)
        filled.add(name)
    unused = sorted(k for k in state if k not in used and not k.endswith("num_batches_tracked"))
    unfilled = sorted(layer.name for layer in model.layers
                      if layer.weights and layer.name not in filled)
    if unused or unfilled:
        raise AssertionError(f"mapping incomplete: torch keys {unused}, Keras layers {unfilled}")


# ---------------------------------------------------------------------------------------------
# Random weights, realistic inputs
# ---------------------------------------------------------------------------------------------

def randomize(module: nn.Module, seed: int, calibration: np.ndarray | None = None):
    """Every parameter random (He-scaled convolutions and linears, so deep stacks keep O(1)
    activations); every BatchNorm's weight, bias, running_mean and running_var random. With a
    `calibration` batch (torch layout) the running statistics are first measured on it (so
    deep networks stay in range) and then perturbed at random. Returns the module in eval
    mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                m.weight.normal_(0.0, math.sqrt(2.0 / m.weight[0].numel()), generator=g)
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.1, generator=g)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.2, generator=g)
                m.running_mean.normal_(0.0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
            elif isinstance(m, nn.Embedding):
                m.weight.normal_(0.0, 1.0, generator=g)
            elif isinstance(m, nn.RNNBase):
                k = 2.0 / math.sqrt(m.hidden_size)  # twice torch's default: livelier gates
                for p in m.parameters():
                    p.uniform_(-k, k, generator=g)
    if calibration is not None:
        _calibrate(module, calibration, g)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.num_batches_tracked.fill_(1000)
    return module.eval()


def _calibrate(module: nn.Module, x: np.ndarray, g: torch.Generator) -> None:
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    module.eval()
    for m in norms:
        m.momentum = None  # cumulative average: one batch sets the batch statistics
        m.reset_running_stats()
        m.train()
    with torch.no_grad():
        module(torch.from_numpy(x))
        for m in norms:
            m.momentum = 0.1
            m.eval()
            std = m.running_var.sqrt()
            m.running_mean.add_(torch.randn(m.running_mean.shape, generator=g) * 0.2 * std)
            m.running_var.mul_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)


def make_tones(n: int, *, seed: int = 0, length: int = AUDIO_LENGTH) -> np.ndarray:
    """`n` waveforms (n, length, 1): one to three decaying tones plus noise (no task data
    exists for audio, so this stands in for it)."""
    rng = np.random.default_rng(seed)
    t = np.arange(length, dtype=np.float64) / 8000.0
    waves = np.empty((n, length, 1), np.float32)
    for i in range(n):
        w = np.zeros(length)
        for _ in range(int(rng.integers(1, 4))):
            f, a, d = rng.uniform(80, 2000), rng.uniform(0.2, 1.0), rng.uniform(2, 20)
            w += a * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) * np.exp(-d * t)
        waves[i, :, 0] = w + rng.normal(0, 0.05, length)
    return waves


def _images(size: int):
    def make(n: int, seed: int) -> np.ndarray:
        return make_shapes(n, seed=seed, size=size)[0]
    return make


def _tokens(n: int, seed: int) -> np.ndarray:
    return make_motifs(n, seed=seed)[0]


def _tones(n: int, seed: int) -> np.ndarray:
    return make_tones(n, seed=seed)


def to_torch_layout(x: np.ndarray) -> np.ndarray:
    """Keras-layout inputs -> torch layout: NHWC -> NCHW, (N, T, 1) -> (N, 1, T), ids int64."""
    if x.dtype.kind in "iu":
        return x.astype(np.int64)
    axes = (0, x.ndim - 1) + tuple(range(1, x.ndim - 1))
    return np.ascontiguousarray(np.transpose(x, axes))


@dataclass(frozen=True)
class Entry:
    """One zoo model: its torch module, its Keras twin (model, mapping), realistic inputs
    (Keras layout, `inputs(n, seed)`), and how many inputs a check uses."""

    name: str
    torch: Callable[[], nn.Module]
    keras: Callable[[], tuple]
    inputs: Callable[[int, int], np.ndarray]
    batch: int = 16
    calibrate: bool = True


ZOO: dict[str, Entry] = {e.name: e for e in (
    Entry("vgg16", VGG16, vgg16_keras, _images(VGG16_SIZE), batch=8, calibrate=False),
    Entry("resnet18", resnet18, resnet18_keras, _images(IMAGE_SIZE)),
    Entry("resnet50", resnet50, resnet50_keras, _images(IMAGE_SIZE), batch=8),
    Entry("mobilenet_v2", MobileNetV2, mobilenet_v2_keras, _images(IMAGE_SIZE)),
    Entry("bilstm", BiLSTMClassifier, bilstm_keras, _tokens, batch=32, calibrate=False),
    Entry("gru", GRUClassifier, gru_keras, _tokens, batch=32, calibrate=False),
    Entry("audio_cnn", AudioCNN, audio_cnn_keras, _tones),
    Entry("two_branch", TwoBranch, two_branch_keras, _images(32), calibrate=False),
)}


def random_module(name: str, seed: int) -> nn.Module:
    """The zoo's torch module `name`, every weight and BatchNorm statistic random (`seed`),
    in eval mode."""
    entry = ZOO[name]
    calib = to_torch_layout(entry.inputs(16, 10_000 + seed)) if entry.calibrate else None
    torch.manual_seed(seed)  # the default initialization, before it is overwritten
    return randomize(entry.torch(), seed, calib)


def torch_logits(module: nn.Module, x: np.ndarray) -> np.ndarray:
    """`module`'s outputs on Keras-layout inputs `x`."""
    with torch.no_grad():
        return module(torch.from_numpy(to_torch_layout(x))).numpy()


def keras_logits(model, x: np.ndarray) -> np.ndarray:
    return np.asarray(model(x, training=False))


# ---------------------------------------------------------------------------------------------
# float64: both frameworks on the same weights, without float32 rounding
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def float64_defaults():
    """Keras's default float type *and* default dtype policy set to float64 while a twin is
    built, both restored afterwards (the policy is cached from floatx on first use, so setting
    floatx alone would leave the layers in float32)."""
    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        yield
    finally:
        keras.config.set_floatx(floatx)
        keras.config.set_dtype_policy(policy)


def float64_twin(build: Callable[[], tuple]):
    """The twin `build()` makes, built with float64 inputs, variables and computations."""
    with float64_defaults():
        model, _ = build()
    wrong = [v.path for v in model.weights if v.dtype != "float64"]
    if wrong:
        raise AssertionError(f"float64 twin has other variables: {wrong}")
    return model


def copy_weights(source, target) -> None:
    """Every weight of `source` into the layer of the same name in `target` (the same twin
    architecture), cast to the target's dtype; both must have the same weighted layers."""
    have = sorted(layer.name for layer in source.layers if layer.weights)
    want = sorted(layer.name for layer in target.layers if layer.weights)
    if have != want:
        raise AssertionError(f"different weighted layers: {have} vs {want}")
    for layer in target.layers:
        if layer.weights:
            dtype = layer.weights[0].dtype
            layer.set_weights([np.asarray(w, dtype=dtype)
                               for w in source.get_layer(layer.name).get_weights()])


def _float64(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) if x.dtype.kind == "f" else x


def keras_logits64(model, x: np.ndarray) -> np.ndarray:
    """A float64 model's outputs on `x` (floats cast to float64, token ids unchanged)."""
    out = np.asarray(model(_float64(x), training=False))
    if out.dtype != np.float64:
        raise AssertionError(f"{model.name}: outputs are {out.dtype}, not float64")
    return out


def torch_logits64(module: nn.Module, x: np.ndarray) -> np.ndarray:
    """`module`'s outputs in float64: a deep copy `.double()` on float64 inputs (the float32
    weights cast exactly, every operation in float64)."""
    with torch.no_grad():
        out = copy.deepcopy(module).double()(torch.from_numpy(to_torch_layout(_float64(x))))
    return out.numpy()
