"""Export a trained experiment's folds for fast CPU serving: fold<K>/model.onnx (float32) and model-int8.onnx
(8-bit, calibrated on the fold's training images), each checked against PyTorch on the fold's validation images
(same grade on what share of them, largest output difference, QWK); the figures go to fold<K>/onnx.json.

The same as ``retinopathy export-onnx``; --help lists the options."""

from retinopathy import cli
from retinopathy.commands.export_onnx import main

if __name__ == "__main__":
    cli.run(main)
