"""Deployment: each variant exported to edge runtimes (ONNX / onnxruntime, .tflite / LiteRT), checked against PyTorch, measured.

    dcase-effdl export runs/int8 --format onnx          # <run>/<variant>/export/model.onnx + export.json
    dcase-effdl export runs/int8 --format tflite        # <run>/<variant>/export/model.tflite (same export.json)
    python benchmarks/deploy.py runs/int8                # size, latency, peak RSS, MACs -> <run>/deploy.json

Needs the optional extras `pip install -e ".[deploy]"` (onnx, onnxruntime, onnxscript) and, for
.tflite, `".[litert]"` (tensorflow-cpu: its LiteRT interpreter); the core install stays without them.
"""
