#!/usr/bin/env bash
# Runs one caller/callee scenario pair from this folder around a proxy (or
# directly, when PROXY is the callee's own address), for debugging by hand.
# Prints both sipp command lines and both exit codes; exits 0 only if both
# sides exited 0. The tests do the same through tests/common/mod.rs.
#
#   sip-scenarios/run-pair.sh PAIR PROXY [options]
#
# PAIR:  basic callee-bye cancel busy early-media hold callee-hold late-offer
#        outgoing load dialog refer prack compact early-update
# PROXY: where the caller sends, e.g. 127.0.0.1:5060 for
#        callrec run --listen 127.0.0.1:5060 --pbx 127.0.0.2:5060 --trunk 127.0.0.3:5060
# Options:
#   --reverse        swap the sides (incoming <-> outgoing)
#   --caller ADDR    caller's own SIP address (default side IP :5060)
#   --callee ADDR    callee's SIP address (default side IP :5060)
#   -m N  -r RATE    calls and calls/s (load: 200 at 20/s)
#   -t u1|t1         UDP (default) or TCP
#   --timeout SEC    sipp's global timeout (default 30, load 90)
#   --trace DIR      where logs go (default a new folder under /tmp)
# Incoming (trunk -> PBX): caller 127.0.0.3, callee 127.0.0.2; outgoing the reverse.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
(($# >= 2)) || usage
pair="$1" proxy="$2"
shift 2

dir="$pair" direction=incoming calls=1 rate="" timeout=30
case "$pair" in
    basic | callee-bye | cancel | busy | early-media | hold | callee-hold | late-offer) ;;
    dialog | refer | prack | compact | early-update) ;;
    outgoing) dir=basic direction=outgoing ;;
    load) calls=200 rate=20 timeout=90 ;;
    *) echo "unknown pair: $pair" >&2; usage ;;
esac

caller="" callee="" transport=u1 trace=""
while (($#)); do
    case "$1" in
        --reverse) [[ $direction == incoming ]] && direction=outgoing || direction=incoming ;;
        --caller) caller="$2"; shift ;;
        --callee) callee="$2"; shift ;;
        -m) calls="$2"; shift ;;
        -r) rate="$2"; shift ;;
        -t) transport="$2"; shift ;;
        --timeout) timeout="$2"; shift ;;
        --trace) trace="$2"; shift ;;
        -h | --help) usage ;;
        *) echo "unknown option: $1" >&2; usage ;;
    esac
    shift
done

if [[ $direction == incoming ]]; then
    caller_ip=127.0.0.3 callee_ip=127.0.0.2 from=03012345678 to=200
else
    caller_ip=127.0.0.2 callee_ip=127.0.0.3 from=201 to=004989123456
fi
caller="${caller:-$caller_ip:5060}"
callee="${callee:-$callee_ip:5060}"
trace="${trace:-$(mktemp -d "/tmp/callrec-pair-$pair-XXXX")}"
mkdir -p "$trace"

common=(-t "$transport" -m "$calls" -timeout "${timeout}s" -timeout_error -nostdin -bind_local -trace_err -trace_logs)
[[ $calls -le 20 ]] && common+=(-trace_msg)

callee_cmd=(sipp -sf "$dir/callee.xml" -i "${callee%:*}" -p "${callee##*:}"
    -mi "${callee%:*}" -mp 18000 "${common[@]}"
    -error_file "$trace/callee_errors.log" -log_file "$trace/callee_logs.log"
    -message_file "$trace/callee_messages.log")
caller_cmd=(sipp "$proxy" -sf "$dir/caller.xml" -i "${caller%:*}" -p "${caller##*:}"
    -mi "${caller%:*}" -mp 16000 -key caller "$from" -s "$to" ${rate:+-r "$rate"} "${common[@]}"
    -error_file "$trace/caller_errors.log" -log_file "$trace/caller_logs.log"
    -message_file "$trace/caller_messages.log")

cd "$here" # the scenarios name their audio files relative to this folder
echo "pair $pair ($direction): caller $caller -> $proxy, callee at $callee; logs in $trace"
echo "callee: ${callee_cmd[*]}"
echo "caller: ${caller_cmd[*]}"

"${callee_cmd[@]}" >"$trace/callee_stdout.log" 2>&1 &
callee_pid=$!
trap 'kill "$callee_pid" 2>/dev/null || true' EXIT
# wait until the callee's own SIP socket is bound (not someone else's)
proto=$([[ $transport == t* ]] && echo t || echo u)
for _ in $(seq 50); do
    ss -Hlnp"$proto" "src = ${callee}" 2>/dev/null | grep -q "pid=$callee_pid," && break
    sleep 0.1
done
if ! kill -0 "$callee_pid" 2>/dev/null; then
    callee_rc=0
    wait "$callee_pid" || callee_rc=$?
    trap - EXIT
    echo "callee exited before the call (exit code $callee_rc); is $callee in use?" >&2
    cat "$trace/callee_errors.log" >&2 2>/dev/null || true
    exit 1
fi

caller_rc=0
"${caller_cmd[@]}" >"$trace/caller_stdout.log" 2>&1 || caller_rc=$?
killed=""
if ((caller_rc != 0)); then
    # the callee may wait for a call that never comes; give it a moment
    for _ in $(seq 30); do kill -0 "$callee_pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$callee_pid" 2>/dev/null; then
        kill "$callee_pid" 2>/dev/null || true
        killed=" (killed: still waiting after the caller failed)"
    fi
fi
callee_rc=0
wait "$callee_pid" || callee_rc=$?
trap - EXIT
[[ -n $killed ]] && ((callee_rc == 0)) && callee_rc=143

for side in caller callee; do
    grep -E '^\s+(Successful|Failed) call' "$trace/${side}_stdout.log" | sed "s/^/$side: /" || true
done
echo "caller exit code: $caller_rc"
echo "callee exit code: $callee_rc$killed"
if ((caller_rc != 0 || callee_rc != 0)); then
    for f in "$trace"/*_errors.log; do [[ -s $f ]] && { echo "--- $f"; tail -20 "$f"; }; done
    exit 1
fi
