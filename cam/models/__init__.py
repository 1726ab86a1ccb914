"""The networks: their builders (``architectures``), checkpoints with model cards (``checkpoints``), what can go
wrong loading them (``errors``), and the ImageNet network of the "not sure" screen (``imagenet_net``)."""
