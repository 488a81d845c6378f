"""Online half of mailrec: the FastAPI recommendation service (onnxruntime, no torch)."""
