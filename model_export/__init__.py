"""Offline half of mailrec: data, protocols, MAIL co-training, evaluation and ONNX export."""
