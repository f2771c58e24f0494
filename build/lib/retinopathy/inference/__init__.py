"""Stage 4, inference: out-of-fold predictions and their tuning into a grade rule, test-set prediction and the
submission, ensembles of experiments, the CPU serving engines (PyTorch, ONNX Runtime), ONNX export and the web app."""
