# DCTP CPU image: Apache Airflow 3.3.2 + the DCTP package, DAGs, plugins and SmolLM2, offline.
#
#   docker compose build            # or: docker build -t dctp-airflow:3.3.2 .
#
# Base: the official apache/airflow image, not python:3.11-slim. It already carries Airflow 3.3.2 with its
# system libraries, the `airflow` user (UID 50000, GID 0, works under any UID with GID 0), dumb-init and the
# entrypoint that waits for the database and broker — everything docker-compose.yaml relies on, kept up to
# date by the Airflow project. The GPU worker's image (Dockerfile.gpu) needs a CUDA base instead.
FROM apache/airflow:3.3.2-python3.11

# torch first, from the CPU wheel index (~2 GB smaller than PyPI's CUDA build); `torch==2.13.0` in
# requirements/constraints is then already satisfied (2.13.0+cpu matches ==2.13.0).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

USER root
RUN mkdir -p /opt/dctp/models /opt/airflow/auth \
 && chown -R airflow:0 /opt/dctp /opt/airflow/auth && chmod -R g+rwX /opt/dctp /opt/airflow/auth
USER airflow
WORKDIR /opt/airflow

COPY --chown=airflow:0 requirements.txt constraints.txt /opt/dctp/
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple \
        torch==2.13.0 -c /opt/dctp/constraints.txt \
 && pip install --no-cache-dir -r /opt/dctp/requirements.txt -c /opt/dctp/constraints.txt

# The library, without dependencies (all pinned above).
COPY --chown=airflow:0 pyproject.toml README.md /opt/dctp/
COPY --chown=airflow:0 dctp_tasks /opt/dctp/dctp_tasks
RUN pip install --no-cache-dir --no-deps /opt/dctp

# SmolLM2-135M prepared at build time (~520 MB), so workers never download it. The compose volume
# `model-cache` mounted here is seeded from this folder on first use and shared by the workers.
ENV DCTP_MODEL_CACHE=/opt/dctp/models HF_HOME=/opt/dctp/models/huggingface
COPY --chown=airflow:0 include/prepare_models.py /opt/dctp/prepare_models.py
RUN python /opt/dctp/prepare_models.py && chmod -R g+rwX /opt/dctp/models

# airflow.cfg is rendered from the template at container start (include/compose/entrypoint.sh).
COPY --chown=airflow:0 airflow.cfg.template /opt/dctp/airflow.cfg.template
COPY --chown=airflow:0 include/render_airflow_cfg.py include/compose/entrypoint.sh /opt/dctp/

COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins
COPY --chown=airflow:0 include /opt/airflow/include

ENV DCTP_HOME=/opt/airflow DCTP_CONFIG=/opt/airflow/include/config/dctp.yaml
ENTRYPOINT ["/usr/bin/dumb-init", "--", "/opt/dctp/entrypoint.sh"]
CMD []
