"""Deployment: each variant exported to an edge runtime (ONNX, run by onnxruntime), checked against PyTorch, measured.

    dcase-effdl export runs/int8 --format onnx          # <run>/<variant>/export/model.onnx + export.json
    python benchmarks/deploy.py runs/int8                # size, latency, peak RSS, MACs -> <run>/deploy.json

Needs the optional extra `pip install -e ".[deploy]"` (onnx, onnxruntime, onnxscript); the core
install stays without it.
"""
