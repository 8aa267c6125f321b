# bspgate: docker build -t bspgate . && docker run -p 8080:8080 \
#   -v $PWD/config.yaml:/app/config.yaml:ro -v bspgate-data:/app/data -e BSPGATE_API_KEY … bspgate
# (docs/deployment.md)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    BSPGATE_CONFIG=/app/config.yaml \
    BSPGATE_STORAGE=sqlite:////app/data/bspgate.db
WORKDIR /app

# The provider mappings are built into the package (setup.py copies mappings/ into the wheel).
COPY pyproject.toml setup.py MANIFEST.in README.md LICENSE ./
COPY src ./src
COPY mappings ./mappings
RUN pip install --no-cache-dir . && rm -rf src mappings build \
    && useradd --system --uid 10001 --home /app bspgate \
    && mkdir -p /app/data && chown -R bspgate /app/data

# The shipped config: one demo channel per provider. Mount your own over it.
COPY config.yaml ./config.yaml

USER bspgate
# The SQLite file ($BSPGATE_STORAGE) lives here: mount a volume to keep the data.
WORKDIR /app/data
EXPOSE 8080
# /healthz: the process answers (load balancers should use /readyz: store reachable, migrated)
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
# A container must listen on every interface. With the shipped development credentials
# (dev-…) still in effect bspgate refuses that and names the variables to set; add
# --insecure-dev to the command only for a throwaway local try-out.
CMD ["bspgate", "serve", "--host", "0.0.0.0"]
