"""A PyTorch module derived from a Keras network's own layer list, for fast training on the GPU machine.

Keras 3 on its torch backend trains the ``cam.models`` builders directly, but measured 1.7-3.4 times slower than
hand-written PyTorch twins (``benchmarks/bench_gpu_training.py``, H200, bfloat16). Rather than writing each network
twice, ``TorchTwin`` reads the layers of the built Keras model (a chain: input -> ... -> ``logits``), makes the
PyTorch layer for each with the same hyper-parameters, copies the weights in, and copies them back out with
``copy_to``; the Keras builder stays the one definition. Needs torch and numpy; works under any Keras backend,
since it reads the layers' configurations and weights as numpy arrays.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

LOGITS = "logits"  # the layer whose output the twin returns (pre-softmax scores)


def _conv(layer) -> nn.Conv2d:
    config = layer.get_config()
    (kernel_h, kernel_w), (dilation, _) = config["kernel_size"], config["dilation_rate"]
    same = config["padding"] == "same" or (kernel_h, kernel_w) == (1, 1)  # a 1x1 'valid' one pads nothing either
    if not same or tuple(config["strides"]) != (1, 1):
        raise ValueError(f"{layer.name}: only stride-1 'same' convolutions have a twin")
    weights = layer.get_weights()
    conv = nn.Conv2d(weights[0].shape[2], config["filters"], (kernel_h, kernel_w), dilation=dilation,
                     padding=(dilation * (kernel_h - 1) // 2, dilation * (kernel_w - 1) // 2),
                     bias=config["use_bias"])
    conv.weight.data = torch.from_numpy(weights[0].transpose(3, 2, 0, 1).copy())
    if config["use_bias"]:
        conv.bias.data = torch.from_numpy(weights[1].copy())
    conv.requires_grad_(layer.trainable)
    return conv


def _batch_norm(layer, pooled: bool) -> nn.Module:
    config = layer.get_config()
    gamma, beta, mean, variance = layer.get_weights()
    norm = (nn.BatchNorm1d if pooled else nn.BatchNorm2d)(len(mean), eps=config["epsilon"],
                                                          momentum=1 - config["momentum"])
    for name, value in zip(("weight", "bias", "running_mean", "running_var"), (gamma, beta, mean, variance),
                           strict=True):
        getattr(norm, name).data = torch.from_numpy(value.copy())
    return norm


def _dense(layer) -> nn.Linear:
    weights = layer.get_weights()
    linear = nn.Linear(*weights[0].shape, bias=len(weights) > 1)
    linear.weight.data = torch.from_numpy(weights[0].T.copy())
    if len(weights) > 1:
        linear.bias.data = torch.from_numpy(weights[1].copy())
    return linear


class Activation(nn.Module):
    def __init__(self, name: str) -> None:
        super().__init__()
        if name not in ("relu", "linear"):
            raise ValueError(f"no twin for the activation {name!r}")
        self.relu = name == "relu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) if self.relu else x


class Rescale(nn.Module):
    def __init__(self, scale: float, offset: float) -> None:
        super().__init__()
        self.scale, self.offset = scale, offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.offset


class MaxPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.max_pool2d(x, 2)


class GlobalAverage(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class TorchTwin(nn.Module):
    """``model``'s layers up to LOGITS as PyTorch modules (same names), taking (B, H, W, 3) like the Keras model and
    running channels-last NCHW inside. Supported: Conv2D (stride 1, 'same', any dilation, relu or linear),
    BatchNormalization, ReLU, Activation, Rescaling, MaxPooling2D(2), GlobalAveragePooling2D, Dropout, Dense."""

    def __init__(self, model) -> None:
        super().__init__()
        self.layers = nn.ModuleDict()
        pooled = False
        for layer in model.layers[1:]:
            kind, config = type(layer).__name__, layer.get_config()
            if kind == "Conv2D":
                self.layers[layer.name] = nn.Sequential(_conv(layer), Activation(config["activation"]))
            elif kind == "BatchNormalization":
                self.layers[layer.name] = _batch_norm(layer, pooled)
            elif kind == "ReLU":
                self.layers[layer.name] = Activation("relu")
            elif kind == "Activation":
                self.layers[layer.name] = Activation(config["activation"])
            elif kind == "Rescaling":
                self.layers[layer.name] = Rescale(config["scale"], config["offset"])
            elif kind == "MaxPooling2D":
                if tuple(config["pool_size"]) != (2, 2) or tuple(config["strides"]) != (2, 2):
                    raise ValueError(f"{layer.name}: only 2x2 pooling has a twin")
                self.layers[layer.name] = MaxPool()
            elif kind == "GlobalAveragePooling2D":
                self.layers[layer.name], pooled = GlobalAverage(), True
            elif kind == "Dropout":
                self.layers[layer.name] = nn.Dropout(config["rate"])
            elif kind == "Dense":
                self.layers[layer.name] = nn.Sequential(_dense(layer), Activation(config["activation"]))
            else:
                raise ValueError(f"no twin for {layer.name} ({kind})")
            if layer.name == LOGITS:
                break
        else:
            raise ValueError(f"the model has no layer {LOGITS!r}")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        for module in self.layers.values():
            x = module(x)
        return x

    def copy_to(self, model) -> None:
        """Write the twin's weights (and BatchNorm statistics) back into the Keras ``model`` it was made from."""
        for name, module in self.layers.items():
            inner = module[0] if isinstance(module, nn.Sequential) else module
            if isinstance(inner, nn.Conv2d):
                values = [inner.weight.detach().cpu().numpy().transpose(2, 3, 1, 0)]
            elif isinstance(inner, nn.Linear):
                values = [inner.weight.detach().cpu().numpy().T]
            elif isinstance(inner, (nn.BatchNorm1d, nn.BatchNorm2d)):
                values = [getattr(inner, key).detach().cpu().numpy()
                          for key in ("weight", "bias", "running_mean", "running_var")]
            else:
                continue
            if isinstance(inner, (nn.Conv2d, nn.Linear)) and inner.bias is not None:
                values.append(inner.bias.detach().cpu().numpy())
            model.get_layer(name).set_weights([np.ascontiguousarray(v, np.float32) for v in values])
