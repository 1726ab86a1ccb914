"""The core, below everything else: names and settings (``catalog``, no TensorFlow), images in and out, the one
bilinear resampler, boxes and mosaics, display names, the device, batched prediction and Ray workers."""
