# Sourced by the scripts/gpu_*_check.sh drivers (LOGS must be set):
# step NAME SECONDS CMD...: run CMD with a time limit, its output in $LOGS/NAME.log, then
# say its exit status and time and show the log's last $TAIL lines (14 by default) that
# match $SHOW (an extended regex; every line by default), leaving out INFO, DEBUG and
# WARNING lines and lines matching $HIDE.
step() {
    local name="$1" limit="$2" t=$SECONDS
    shift 2
    timeout "$limit" "$@" > "$LOGS/$name.log" 2>&1
    echo "== $name: exit $? [$((SECONDS - t)) s]"
    grep -E "${SHOW:-}" "$LOGS/$name.log" | grep -v -E "^(INFO|DEBUG|WARNING)${HIDE:+|$HIDE}" \
        | tail -"${TAIL:-14}"
}
