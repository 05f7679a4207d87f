# Build stage: the scoring kernel (service/kernel/native/*.c) needs a C compiler; the image does not.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY service ./service
COPY workers ./workers
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels && useradd --system sessionrec
USER sessionrec
ENV SESSIONREC_HOST=0.0.0.0
EXPOSE 8000
CMD ["sessionrec", "serve"]
