# DCTP image: Apache Airflow 3.3.2 + the DCTP package, DAGs, plugins and default config.
#
#   docker build -t dctp-airflow .                                                      # CPU torch
#   docker build -t dctp-airflow-gpu --build-arg TORCH_INDEX_URL=https://pypi.org/simple .  # CUDA torch
#
# torch comes first, from TORCH_INDEX_URL: the CPU wheel index keeps the image ~2 GB smaller; PyPI's
# Linux wheels are the CUDA builds (for the GPU worker). `torch==2.13.0` in requirements/constraints
# is then already satisfied (a local version such as 2.13.0+cpu matches ==2.13.0).
FROM apache/airflow:3.3.2-python3.11

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

USER airflow
WORKDIR /opt/airflow

COPY --chown=airflow:0 requirements.txt constraints.txt /opt/dctp/
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple \
        torch==2.13.0 -c /opt/dctp/constraints.txt \
 && pip install --no-cache-dir -r /opt/dctp/requirements.txt -c /opt/dctp/constraints.txt

# The library, installed without dependencies (they are all pinned above).
COPY --chown=airflow:0 pyproject.toml /opt/dctp/
COPY --chown=airflow:0 dctp_tasks /opt/dctp/dctp_tasks
RUN pip install --no-cache-dir --no-deps /opt/dctp

COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins
COPY --chown=airflow:0 include /opt/airflow/include

# Mount point of the mlflow service's volume: created here so the volume inherits the owner.
RUN mkdir -p /opt/airflow/mlflow && chmod g+rwx /opt/airflow/mlflow

ENV DCTP_CONFIG=/opt/airflow/include/config/dctp.yaml
