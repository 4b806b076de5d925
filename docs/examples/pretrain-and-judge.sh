#!/usr/bin/env bash
# Pretrain a tiny run on the embedded synthetic shapes, then judge and export it, chaining the
# commands through their --json results. Each step prints one line; the commands' progress and
# notes (their stderr) go to WORK/sslcli.log.
#
#   bash docs/examples/pretrain-and-judge.sh [WORK]
#
# WORK is the working folder (default: a new temporary folder). Rerunning with the same WORK
# replaces what an earlier run wrote there (--force). Needs sslcli on PATH and python3. The ONNX
# step needs pip install "sslcli[onnx]"; without it the step says so and the script goes on.
set -euo pipefail

WORK="${1:-$(mktemp -d "${TMPDIR:-/tmp}/sslcli-example.XXXXXX")}"
mkdir -p "$WORK"
LOG="$WORK/sslcli.log"
: >"$LOG"

# run ARGS...: run `sslcli ARGS... --json` and print its JSON; return its exit code. Its stderr
# is kept in $WORK/stderr.txt and appended to $LOG.
run() {
    local code=0
    sslcli "$@" --json 2>"$WORK/stderr.txt" || code=$?
    cat "$WORK/stderr.txt" >>"$LOG"
    return "$code"
}

# fail COMMAND CODE: show the end of the failed command's stderr and stop with its exit code.
fail() {
    echo "sslcli $1 failed (exit code $2):" >&2
    tail -n 3 "$WORK/stderr.txt" >&2
    exit "$2"
}

# ssl ARGS...: run, stopping the script if the command fails.
ssl() {
    run "$@" || fail "$1" "$?"
}

# show FORMAT: FORMAT filled in from the JSON object on stdin, named r ({r[top1]:.3f}, str.format).
show() {
    python3 -c 'import json, sys; print(sys.argv[1].format(r=json.load(sys.stdin)))' "$1"
}

# 1. Pretrain: rotation prediction, 96 training images of 32 px, one epoch.
result=$(ssl pretrain --method rotation \
    --set data.synthetic_train=96 --set data.synthetic_val=40 \
    --set data.image_size=32 --set backbone.small_input=false \
    --batch-size 32 --epochs 1 --out "$WORK/run" --force)
RUN=$(show '{r[out]}' <<<"$result")
show 'pretrain: {r[out]} ({r[method]}, {r[epochs]} epoch, {r[steps]} steps, loss {r[final][loss]:.3f}, {r[seconds]:.0f} s)' <<<"$result"

# 2. Weighted kNN from the train to the val split.
result=$(ssl knn "$RUN" --data synthetic:shapes)
show 'knn: top1 {r[top1]:.3f} (k={r[k]}, {r[n_train]} train and {r[n_val]} val images)' <<<"$result"

# 3. A linear probe on the frozen pooled features (layer "last"), 2 epochs.
result=$(ssl probe "$RUN" --data synthetic:shapes --layers last --epochs 2)
show 'probe: {r[layers][0][layer]} top1 {r[layers][0][top1]:.3f} ({r[layers][0][dims]} features)' <<<"$result"

# 4. Export to ONNX (skipped, saying why, without the onnx extra) and to TorchScript.
code=0
result=$(run export "$RUN" --format onnx --out "$WORK/backbone.onnx" --force) || code=$?
if [ "$code" -eq 0 ]; then
    show 'export onnx: {r[out]} (input {r[input]}, output {r[output_dim]}, max error {r[max_abs_error]:.1g})' <<<"$result"
elif [ "$code" -eq 2 ] && grep -q 'sslcli\[onnx\]' "$WORK/stderr.txt"; then
    echo "export onnx: skipped: $(sed -n 's/^error: //p' "$WORK/stderr.txt")"
else
    fail export "$code"
fi
result=$(ssl export "$RUN" --format torchscript --out "$WORK/backbone.pt" --force)
show 'export torchscript: {r[out]} (input {r[input]}, output {r[output_dim]}, max error {r[max_abs_error]:.1g})' <<<"$result"

# 5. A picture: 4 val images, each followed by its 5 nearest training images.
result=$(ssl visualize-neighbours "$RUN" --data synthetic:shapes --out "$WORK/neighbours.png" --queries 4 --k 5)
show 'neighbours: {r[out]} ({r[queries]} queries x {r[k]}; {r[same_class_fraction]:.0%} of neighbours share the query class)' <<<"$result"

# 6. What the run folder holds.
result=$(ssl info "$RUN")
show 'info: {r[method]} on {r[backbone]}, {r[epochs_done]} of {r[epochs_planned]} epochs, {r[steps]} steps; resume: {r[resume]}' <<<"$result"
rm -f "$WORK/stderr.txt"
