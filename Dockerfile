# Image for compose.yaml's api and sync services (not used by the local ./dev flow).
FROM python:3.11-slim
WORKDIR /app
COPY requirements.lock pyproject.toml README.md ./
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.lock
COPY . .
RUN pip install --no-cache-dir --no-deps . && useradd --system --create-home opendisco
USER opendisco
ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
EXPOSE 8000
CMD ["opendisco", "serve"]
