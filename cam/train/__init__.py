"""Training: the one photo augmentation (``augment``), tf.data pipelines, training here (``training``), the GPU
machine's route (``gpu_training``, ``torch_twin``), the CPU route for VGG16's head (``head_training``) and the
teacher's soft labels (``teacher``)."""
