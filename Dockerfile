FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOST=0.0.0.0 PORT=5000
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY backend/ backend/
COPY migrations/ migrations/
COPY gunicorn.conf.py .
# The spool must survive a container restart: mount a volume here (docs/reliability.md).
VOLUME ["/app/data"]
EXPOSE 5000
CMD ["python", "-m", "backend", "serve"]
