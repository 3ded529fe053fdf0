# The portal image: web (gunicorn), worker and beat all run from it.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    DJANGO_SETTINGS_MODULE=hypervisor_web.settings.prod \
    PORTAL_VAR_DIR=/var/lib/portal

RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libvirt-dev libvirt-clients pkg-config gcc libc6-dev \
      cryptsetup-bin qemu-utils nftables softhsm2 tpm2-tools curl \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
RUN SECRET_KEY=build-only-not-used-at-runtime-0123456789-abcdefghijklmnop \
    DJANGO_SETTINGS_MODULE=hypervisor_web.settings.prod \
    python manage.py collectstatic --noinput \
 && useradd --system --home /var/lib/portal portal \
 && install -d -o portal -m 0700 /var/lib/portal /etc/hypervisor-portal

USER portal
EXPOSE 8000
CMD ["gunicorn", "hypervisor_web.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "3", "--timeout", "60"]
