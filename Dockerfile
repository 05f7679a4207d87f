FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY workers ./workers
RUN pip install --no-cache-dir . && useradd --system sessionrec
USER sessionrec
ENV SESSIONREC_HOST=0.0.0.0
EXPOSE 8000
CMD ["sessionrec", "serve"]
