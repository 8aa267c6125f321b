# bspgate: docker build -t bspgate . && docker run -p 8080:8080 -v $PWD/config.yaml:/app/config.yaml bspgate
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 BSPGATE_CONFIG=/app/config.yaml
WORKDIR /app

COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir . && useradd --system --uid 10001 --home /app bspgate

COPY mappings ./mappings
COPY config.yaml ./config.yaml
RUN mkdir -p /app/data && chown -R bspgate /app/data

USER bspgate
# The shipped config keeps its SQLite file in the working folder: a writable one (mount a volume
# here to keep the data). Mappings are found next to the config file.
WORKDIR /app/data
EXPOSE 8080
# The shipped config listens on 127.0.0.1; in a container listen on every interface.
CMD ["bspgate", "serve", "--host", "0.0.0.0"]
