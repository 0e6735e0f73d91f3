#!/bin/sh
# The serving image's entrypoint (serving/Dockerfile runs it under tini, which reaps TorchServe's
# workers and passes SIGTERM to the whole process group).
#   serve [ARGS...]  (the default) TorchServe in the foreground with the image's config.properties,
#                    its model store and the shipped log4j2.xml; ARGS go to torchserve, e.g.
#                    --models champion=champion.mar. Token authorization as the config says (on),
#                    unless CTLOOP_TS_INFERENCE_KEY and CTLOOP_TS_MANAGEMENT_KEY are set: then the
#                    pod's `proxy` container checks those fixed keys on 8080/8081 and TorchServe
#                    listens on 127.0.0.1:18080/18081 behind it (serving/proxy.py says why).
#   proxy            nginx in the foreground, in front of a `serve` container of the same pod
#   anything else    run as a command, e.g. `python -c "import torch"`
set -eu
home=/home/model-server
case "${1:-serve}" in
serve)
    [ "$#" -gt 0 ] && shift
    # Size-capped logs (log4j2.xml writes under $LOG_LOCATION); TorchServe's metrics beside them.
    export LOG_LOCATION="${LOG_LOCATION:-$home/logs}"
    export METRICS_LOCATION="${METRICS_LOCATION:-$LOG_LOCATION}"
    mkdir -p "$LOG_LOCATION" "$home/model-store"
    behind_proxy=""
    if [ -n "${CTLOOP_TS_INFERENCE_KEY:-}" ] && [ -n "${CTLOOP_TS_MANAGEMENT_KEY:-}" ]; then
        behind_proxy="inference_address=http://127.0.0.1:18080 management_address=http://127.0.0.1:18081 disable_token_authorization=true"
    fi
    # The versions the desired state lists, with their defaults (serving/state.py): the
    # serving-state.json in CTLOOP_SERVING_STATE_DIR if there is one (on the cluster the ConfigMap
    # the deploy stage writes, serving/rollout.py), else the model store's (what `ctloop install`
    # wrote); without either, every archive in the store (load_models=all). --ncs: TorchServe
    # writes no snapshots of its own.
    state_dir="$home/model-store"
    if [ -f "${CTLOOP_SERVING_STATE_DIR:-/nonexistent}/serving-state.json" ]; then
        state_dir="$CTLOOP_SERVING_STATE_DIR"
    fi
    # shellcheck disable=SC2086  # the settings are words on purpose
    python "$home/ctloop_state.py" config "$home/config.properties" "$state_dir" \
        /tmp/ctloop-config.properties $behind_proxy
    exec torchserve --start --foreground --ncs \
        --ts-config /tmp/ctloop-config.properties \
        --log-config "$home/log4j2.xml" \
        "$@"
    ;;
proxy)
    exec python "$home/ctloop_proxy.py"
    ;;
esac
exec "$@"
