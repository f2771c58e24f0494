# A torch-free CPU grader: the `serve` extra only (ONNX Runtime, Starlette, uvicorn), one experiment's ONNX files
# mounted at /models. One container is the unit to replicate behind a load balancer or an orchestrator.
#   retinopathy export-onnx --config aptos_cpu                          # writes models/aptos_cpu/fold*/model*.onnx
#   docker build -t retinopathy-serve .
#   docker run -p 8000:8000 -v "$PWD/models/aptos_cpu:/models:ro" retinopathy-serve
#   curl -F file=@photo.jpeg http://127.0.0.1:8000/predict
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN pip install ".[serve]" && rm -rf /app/src /root/.cache \
    && useradd --create-home --uid 10001 grader

USER grader
EXPOSE 8000
# The experiment's folder (fold*/model.onnx, onnx.json, config.yaml, tuning.json); ENGINE=int8 serves 8-bit
# files only where their export found them grading as PyTorch does.
ENV ENGINE=onnx WORKERS=2
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"
CMD ["sh", "-c", "exec retinopathy serve --models-dir /models --engine \"$ENGINE\" --workers \"$WORKERS\" --host 0.0.0.0 --port 8000"]
