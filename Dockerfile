# AgentKavach backend with the dashboard built in.
# Stage 1 builds the Svelte dashboard (ui/) into backend/static; stage 2 installs the
# Python package (server and redis extras) and serves both on port 8000.

FROM node:22-slim AS dashboard
WORKDIR /src/ui
COPY ui/package.json ui/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY ui/ ./
# vite.config.ts writes the build to ../backend/static
RUN npm run build

FROM python:3.12-slim AS backend
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md hatch_build.py ./
COPY kavach ./kavach
COPY kavach_integrations ./kavach_integrations
COPY backend ./backend
# Built above; the wheel's build hook skips npm here (no ui/ in this stage) and ships it.
COPY --from=dashboard /src/backend/static ./backend/static
RUN pip install ".[server,redis]" && useradd --system --uid 10001 kavach
USER kavach
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=5 \
  CMD python -c "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/v1/status', timeout=2).status == 200 else 1)"
# serve runs the migrations first (safe to repeat), then uvicorn.
CMD ["python", "-m", "backend", "serve", "--host", "0.0.0.0", "--port", "8000"]
