#!/bin/sh
# The serving image's entrypoint (serving/Dockerfile runs it under tini, which reaps TorchServe's
# workers and passes SIGTERM to the whole process group).
#   serve [ARGS...]  (the default) TorchServe in the foreground with the image's config.properties,
#                    its model store and the shipped log4j2.xml; token authorization as the config
#                    says (on); ARGS go to torchserve, e.g. --models champion=champion.mar
#   anything else    run as a command, e.g. `python -c "import torch"`
set -eu
home=/home/model-server
if [ "${1:-serve}" = serve ]; then
    [ "$#" -gt 0 ] && shift
    # Size-capped logs (log4j2.xml writes under $LOG_LOCATION); TorchServe's metrics beside them.
    export LOG_LOCATION="${LOG_LOCATION:-$home/logs}"
    export METRICS_LOCATION="${METRICS_LOCATION:-$LOG_LOCATION}"
    mkdir -p "$LOG_LOCATION" "$home/model-store"
    # The versions the store's desired state lists, with their defaults (serving/state.py); a
    # store without one loads every archive in it (load_models=all). --ncs: TorchServe writes no
    # snapshots of its own.
    python "$home/ctloop_state.py" config "$home/config.properties" "$home/model-store" /tmp/ctloop-config.properties
    exec torchserve --start --foreground --ncs \
        --ts-config /tmp/ctloop-config.properties \
        --log-config "$home/log4j2.xml" \
        "$@"
fi
exec "$@"
