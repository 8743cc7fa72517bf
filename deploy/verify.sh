#!/bin/sh
# verify.sh: checks callrec sealed sets with only openssl, base64 and
# shasum (or sha256sum): the SHA256withRSA signature of each checksum file
# against a certificate, then every checksum line.
#
# Usage: verify.sh --cert cert.pem F.sha256 [F.sha256 ...]
# Exit: 0 all sets hold; 1 one line per problem on stdout; 2 usage or setup error.

usage() {
    echo "usage: $0 --cert cert.pem FILE.sha256..." >&2
    exit 2
}

cert=""
while [ $# -gt 0 ]; do
    case "$1" in
        --cert) [ $# -ge 2 ] || usage; cert="$2"; shift 2 ;;
        --cert=*) cert="${1#--cert=}"; shift ;;
        -h|--help) usage ;;
        --) shift; break ;;
        -*) echo "unknown option: $1" >&2; usage ;;
        *) break ;;
    esac
done
[ -n "$cert" ] && [ $# -ge 1 ] || usage

for tool in openssl; do
    command -v "$tool" >/dev/null 2>&1 || { echo "$tool not found" >&2; exit 2; }
done
if command -v sha256sum >/dev/null 2>&1; then
    sumcheck() { sha256sum -c "$1"; }
elif command -v shasum >/dev/null 2>&1; then
    sumcheck() { shasum -a 256 -c "$1"; }
else
    echo "neither sha256sum nor shasum found" >&2; exit 2
fi
if command -v base64 >/dev/null 2>&1; then
    b64d() { base64 -d < "$1"; }
else
    b64d() { openssl base64 -d < "$1"; }
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/callrec-verify.XXXXXX") || exit 2
trap 'rm -rf "$work"' EXIT INT TERM
if ! openssl x509 -in "$cert" -pubkey -noout > "$work/pub.pem" 2>/dev/null; then
    echo "$cert: cannot read as a PEM certificate" >&2
    exit 2
fi

failed=0
count=0
problem() {
    echo "$1"
    failed=1
    count=$((count + 1))
}

for sums in "$@"; do
    if [ ! -f "$sums" ]; then
        problem "$sums: checksum file missing"
        continue
    fi
    dir=$(dirname -- "$sums")
    name=$(basename -- "$sums")
    sig="$sums.SHA256withRSA.sig"
    signed=no
    if [ ! -f "$sig" ]; then
        problem "$sig: signature missing (set incomplete or signature deleted)"
    elif ! b64d "$sig" > "$work/sig.bin" 2>/dev/null; then
        problem "$sig: signature is not valid base64 (signature file altered)"
    elif ! openssl dgst -sha256 -verify "$work/pub.pem" -signature "$work/sig.bin" "$sums" >/dev/null 2>&1; then
        problem "$sig: signature does not verify for $name with $cert ($name or the signature altered, or another instance signed it)"
    else
        signed=yes
    fi
    if [ "$signed" = yes ]; then
        culprit="altered"
    else
        culprit="the file or the unsigned $name altered"
    fi
    # Checksum lines, run in the set's folder as the names are relative to it.
    before=$count
    (cd "$dir" && sumcheck "$name") > "$work/out" 2> "$work/err"
    status=$?
    while IFS= read -r line; do
        case "$line" in
            *": OK") ;;
            *": FAILED open or read") problem "$dir/${line%: FAILED open or read}: missing or unreadable (listed in $name)" ;;
            *": FAILED") problem "$dir/${line%: FAILED}: content differs from its SHA-256 in $name ($culprit)" ;;
            *) [ -n "$line" ] && problem "$sums: $line" ;;
        esac
    done < "$work/out"
    while IFS= read -r line; do
        case "$line" in
            *"computed checksum did NOT match"*|*"listed file could not be read"*|*"No such file"*) ;;
            *) [ -n "$line" ] && problem "$sums: $line" ;;
        esac
    done < "$work/err"
    if [ "$status" -ne 0 ] && [ "$count" -eq "$before" ]; then
        problem "$sums: checksum check failed (exit $status)"
    fi
done
exit "$failed"
